//! Managed Redis with Sentinel (spec.backend.managed.replicas > 1): one StatefulSet of N
//! Pods, each running the official `redis` image twice (`redis` and `sentinel`), a headless
//! Service for the Pods' stable DNS names, and a Service for Sentinel clients.
//!
//! The configuration files are written at start by an init container ([`INIT_SCRIPT`]) into
//! an in-memory `emptyDir`: the password comes from the Secret as an environment variable
//! and never appears in the Pod spec. The init script also decides the Pod's role (see the
//! script's comments): a restarted former primary never comes back as primary while the
//! Sentinels can fail over to a replica, so it cannot overwrite acknowledged logouts with
//! its older data.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::Lifecycle;
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::connection::{
    headless_name, managed_names, redis_pod_hosts, REDIS_PORT, SENTINEL_MASTER, SENTINEL_PORT,
};
use super::managed::{backend_pod_security, claim_retention, BACKEND_UID};
use super::secret::PASSWORD_KEY;
use super::{hardened_security_context, labels, selector_labels, Defaults, ValidStore};
use crate::crd::{ManagedBackend, PvcRetention};

/// Milliseconds without an answer before a Sentinel calls the primary down: with the
/// election that follows, a failover finishes within about 5 seconds.
pub const DOWN_AFTER_MS: u32 = 1500;
/// Longest wait of a restarted former primary for the Sentinels to promote another Pod.
pub const FORMER_PRIMARY_WAIT_SECONDS: u32 = 30;
/// Grace period of the Redis Pods; the preStop failover is bounded well below it.
pub const TERMINATION_GRACE_SECONDS: i64 = 30;
/// Longest time the preStop hook waits for the failover it asked for.
pub const PRESTOP_WAIT_SECONDS: u32 = 15;
/// Where the init container writes redis.conf and sentinel.conf.
pub const CONF_DIR: &str = "/conf";
pub const DATA_DIR: &str = "/data";

/// Sentinels that must agree the primary is down: a majority of the N Pods.
pub fn quorum(replicas: i32) -> i32 {
    replicas / 2 + 1
}

/// Init container script: writes `$REDIS_HA_CONF/redis.conf` and `sentinel.conf`.
///
/// Role decision (asking the Sentinels of the *other* Pods, each with a time limit):
/// 1. a Sentinel names another Pod as primary: start as its replica;
/// 2. every Sentinel that answers names THIS Pod (it was the primary and restarted, e.g.
///    after a forced deletion): wait, at most `REDIS_HA_WAIT_SECONDS`, until they promote
///    another Pod, and replicate that one; if none is promoted in time (no replica fit to
///    take over), start as primary with the data on this Pod's volume;
/// 3. no Sentinel answers (first start of the whole set): ordinal 0 is primary, the others
///    replicate ordinal 0.
///
/// Environment: REDISCLI_AUTH (password, from the Secret), POD_NAME, REDIS_HA_HOSTS (the
/// Pods' host names by ordinal), REDIS_HA_MASTER, REDIS_HA_QUORUM, REDIS_PORT,
/// SENTINEL_PORT, REDIS_HA_CONF, REDIS_HA_DATA, REDIS_HA_DOWN_AFTER_MS,
/// REDIS_HA_WAIT_SECONDS, and optionally REDIS_HA_BIND (tests on loopback).
pub const INIT_SCRIPT: &str = r#"set -eu
umask 077
conf=${REDIS_HA_CONF:-/conf}
data=${REDIS_HA_DATA:-/data}
port=${REDIS_PORT:-6379}
sport=${SENTINEL_PORT:-26379}
name=${REDIS_HA_MASTER:?}
quorum=${REDIS_HA_QUORUM:?}
down=${REDIS_HA_DOWN_AFTER_MS:-1500}
wait_s=${REDIS_HA_WAIT_SECONDS:-30}
pw=${REDISCLI_AUTH:?the Redis password from the Secret is not set}
ordinal=${POD_NAME##*-}
me=""
first=""
i=0
for h in $REDIS_HA_HOSTS; do
  [ -n "$first" ] || first=$h
  [ "$i" = "$ordinal" ] && me=$h
  i=$((i + 1))
done
[ -n "$me" ] || { echo "redis-ha: ordinal $ordinal of $POD_NAME is not in REDIS_HA_HOSTS" >&2; exit 1; }
if command -v timeout >/dev/null 2>&1; then t="timeout 2"; else t=""; fi

# The primary named by the Sentinel on host $1, or nothing when it does not answer.
ask() {
  out=$($t redis-cli -h "$1" -p "$sport" --raw SENTINEL get-master-addr-by-name "$name" 2>/dev/null) || return 0
  set -- $out
  if [ $# -eq 2 ] && [ "$2" = "$port" ]; then echo "$1"; fi
}

# Answers of the other Pods' Sentinels, space separated.
answers() {
  for h in $REDIS_HA_HOSTS; do
    [ "$h" = "$me" ] && continue
    ask "$h"
  done | tr '\n' ' '
}

# The primary most answers name, not counting this Pod.
other_primary() {
  best=""
  bestn=0
  for a in $1; do
    [ "$a" = "$me" ] && continue
    n=0
    for b in $1; do [ "$a" = "$b" ] && n=$((n + 1)); done
    if [ "$n" -gt "$bestn" ]; then best=$a; bestn=$n; fi
  done
  echo "$best"
}

master=""
waited=0
while :; do
  seen=$(answers)
  if [ -z "$(echo $seen)" ]; then
    if [ "$ordinal" = 0 ]; then
      echo "redis-ha: no Sentinel answers: first start, $me is the primary"
    else
      master=$first
      echo "redis-ha: no Sentinel answers: first start, replicating $master"
    fi
    break
  fi
  master=$(other_primary "$seen")
  if [ -n "$master" ]; then
    echo "redis-ha: the Sentinels name $master as primary: replicating it"
    break
  fi
  if [ "$waited" -ge "$wait_s" ]; then
    echo "redis-ha: the Sentinels still name this Pod ($me) after ${wait_s}s and promoted no replica: starting as primary with this Pod's data" >&2
    break
  fi
  [ "$waited" = 0 ] && echo "redis-ha: the Sentinels name this Pod ($me), the former primary: waiting for them to promote a replica"
  sleep 1
  waited=$((waited + 1))
done

# Quoted for the config parser; printf, not echo: some shells' echo eats backslashes.
qpw=$(printf '%s' "$pw" | sed 's/\\/\\\\/g; s/"/\\"/g')
{
  [ -z "${REDIS_HA_BIND:-}" ] || echo "bind $REDIS_HA_BIND"
  echo "port $port"
  echo "dir $data"
  echo "appendonly yes"
  echo "appendfsync everysec"
  echo "maxmemory-policy noeviction"
  echo "protected-mode no"
  printf 'requirepass "%s"\n' "$qpw"
  printf 'masterauth "%s"\n' "$qpw"
  echo "replica-announce-ip $me"
  echo "replica-announce-port $port"
  [ -z "$master" ] || echo "replicaof $master $port"
} >"$conf/redis.conf"

myid=""
if command -v sha1sum >/dev/null 2>&1; then
  myid=$(printf '%s' "$POD_NAME" | sha1sum | cut -c1-40)
fi
{
  [ -z "${REDIS_HA_BIND:-}" ] || echo "bind $REDIS_HA_BIND"
  echo "port $sport"
  echo "dir $conf"
  echo "protected-mode no"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $me"
  echo "sentinel announce-port $sport"
  [ -z "$myid" ] || echo "sentinel myid $myid"
  printf 'requirepass "%s"\n' "$qpw"
  printf 'sentinel sentinel-pass "%s"\n' "$qpw"
  echo "sentinel monitor $name ${master:-$me} $port $quorum"
  printf 'sentinel auth-pass %s "%s"\n' "$name" "$qpw"
  echo "sentinel down-after-milliseconds $name $down"
  # A split vote is retried after twice this: keep the tail of a failover short.
  echo "sentinel failover-timeout $name 4000"
  echo "sentinel parallel-syncs $name 1"
} >"$conf/sentinel.conf"
echo "redis-ha: configuration written for $me (primary: ${master:-this Pod})"
"#;

/// preStop hook of the `redis` container: when this Pod is the primary, ask a Sentinel
/// (another Pod's first: this Pod's own one is stopping too) for a failover and wait, at
/// most `PRESTOP_WAIT_SECONDS`, until this Pod is a replica. A graceful deletion of the
/// primary then costs about a second of writes answered with a retry.
pub const PRESTOP_SCRIPT: &str = r#"port=${REDIS_PORT:-6379}
sport=${SENTINEL_PORT:-26379}
name=${REDIS_HA_MASTER:?}
limit=${REDIS_HA_PRESTOP_SECONDS:-15}
ordinal=${POD_NAME##*-}
me=""
i=0
for h in $REDIS_HA_HOSTS; do
  [ "$i" = "$ordinal" ] && me=$h
  i=$((i + 1))
done
[ -n "$me" ] || exit 0
if command -v timeout >/dev/null 2>&1; then t="timeout 2"; else t=""; fi
role() { $t redis-cli -h "$me" -p "$port" --raw ROLE 2>/dev/null | head -n 1; }
[ "$(role)" = master ] || exit 0
others=$(for x in $REDIS_HA_HOSTS; do [ "$x" = "$me" ] || echo "$x"; done)
# Only when the Sentinels name this Pod: a former primary not yet turned into a replica
# must not start another failover.
cur=""
for h in $others $me; do
  cur=$($t redis-cli -h "$h" -p "$sport" --raw SENTINEL get-master-addr-by-name "$name" 2>/dev/null | head -n 1) || cur=""
  [ -n "$cur" ] && break
done
[ "$cur" = "$me" ] || exit 0
ok=""
asked=""
for h in $others $me; do
  ok=$($t redis-cli -h "$h" -p "$sport" --raw SENTINEL failover "$name" 2>/dev/null) || ok=""
  if [ "$ok" = OK ]; then asked=$h; break; fi
done
[ -n "$asked" ] || exit 0
echo "redis-ha: failover asked from the Sentinel on $asked"
# Done once the Sentinels name another primary: writes this Pod still takes cannot reach a
# majority of replicas any more, so the sidecars never acknowledge them.
n=0
while [ "$n" -lt "$limit" ]; do
  now=$($t redis-cli -h "$asked" -p "$sport" --raw SENTINEL get-master-addr-by-name "$name" 2>/dev/null | head -n 1) || now=""
  if [ -n "$now" ] && [ "$now" != "$me" ]; then exit 0; fi
  [ "$(role)" = slave ] && exit 0
  sleep 1
  n=$((n + 1))
done
exit 0
"#;

/// Command of the `sentinel` container: a replica watch in the background, then Sentinel.
///
/// Why the watch: a Sentinel learns the replicas only from the primary's `INFO` (every 10
/// seconds), and each Pod's Sentinel starts with a fresh configuration. When the primary
/// fails before the Sentinel that leads the failover has seen a replica, that replica is
/// never told about the new primary: it keeps following the old primary's host name, and
/// once the old Pod comes back as a replica it is chained behind it, where no Sentinel can
/// see it (observed on real processes: 2 Pods x 3 Sentinels listed 1 replica for minutes,
/// so `WAIT` for N/2 replicas could not be met when one more Pod failed).
///
/// Every `REDIS_HA_WATCH_SECONDS`, when this Pod's Redis is a replica whose primary is not
/// a primary (a replica itself, or gone), while at least `REDIS_HA_QUORUM` Sentinels name
/// the same other Pod and that Pod answers `ROLE master`, twice in a row: `REPLICAOF` it
/// (and `CONFIG REWRITE`, as Sentinel does). It never touches a primary, never acts while
/// the Sentinels disagree, and never moves a replica away from a working primary, so it
/// cannot undo what a Sentinel leading a failover just did.
///
/// Why Sentinel waits for this Pod's Redis (at most `REDIS_HA_SENTINEL_WAIT_SECONDS`, until
/// it is a primary or a replica with its link up): a Sentinel learns the replicas from the
/// primary's `INFO` when it connects and then only every 10 seconds. Started before its own
/// Redis had connected, a Sentinel knew no replica at all; when the primary then failed, it
/// was elected leader at every attempt (it asked first, the other voted for it) and aborted
/// each one with `-failover-abort-no-good-slave`: no promotion in 30 s (seen on real
/// processes, operator/tests/redis_ha_processes.rs). Started after, its first look at the
/// primary lists at least its own Pod's replica, which is alive whenever this Sentinel is.
pub const SENTINEL_SCRIPT: &str = r#"port=${REDIS_PORT:-6379}
sport=${SENTINEL_PORT:-26379}
name=${REDIS_HA_MASTER:?}
quorum=${REDIS_HA_QUORUM:?}
conf=${REDIS_HA_CONF:-/conf}
period=${REDIS_HA_WATCH_SECONDS:-2}
ordinal=${POD_NAME##*-}
me=""
i=0
for h in $REDIS_HA_HOSTS; do
  [ "$i" = "$ordinal" ] && me=$h
  i=$((i + 1))
done
if command -v timeout >/dev/null 2>&1; then t="timeout 2"; else t=""; fi
# Field $2 of INFO replication of the Redis on host $1 (nothing when it does not answer).
field() {
  [ -n "$1" ] || return 0
  $t redis-cli -h "$1" -p "$port" --raw INFO replication 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"
}
# The primary that at least $quorum Sentinels name, or nothing.
named() {
  all=$(for h in $REDIS_HA_HOSTS; do
    $t redis-cli -h "$h" -p "$sport" --raw SENTINEL get-master-addr-by-name "$name" 2>/dev/null | head -n 1
  done | tr '\n' ' ')
  for a in $all; do
    n=0
    for b in $all; do [ "$a" = "$b" ] && n=$((n + 1)); done
    if [ "$n" -ge "$quorum" ]; then echo "$a"; return 0; fi
  done
}
watch() {
  suspect=""
  while sleep "$period"; do
    [ "$(field "$me" role)" = slave ] || { suspect=""; continue; }
    cur=$(field "$me" master_host)
    want=$(named)
    if [ -z "$want" ] || [ "$want" = "$cur" ] || [ "$want" = "$me" ] ||
      [ "$(field "$want" role)" != master ] || [ "$(field "$cur" role)" = master ]; then
      suspect=""
      continue
    fi
    if [ "$suspect" != "$want" ]; then suspect=$want; continue; fi
    echo "redis-ha: this replica follows $cur, which is not a primary, while the Sentinels name $want: replicating $want"
    $t redis-cli -h "$me" -p "$port" REPLICAOF "$want" "$port" >/dev/null 2>&1 &&
      $t redis-cli -h "$me" -p "$port" CONFIG REWRITE >/dev/null 2>&1
    suspect=""
  done
}
if [ -n "$me" ]; then
  n=0
  while [ "$n" -lt "${REDIS_HA_SENTINEL_WAIT_SECONDS:-30}" ]; do
    r=$(field "$me" role)
    [ "$r" = master ] && break
    [ "$r" = slave ] && [ "$(field "$me" master_link_status)" = up ] && break
    [ "$n" = 0 ] && echo "redis-ha: waiting for this Pod's Redis to be a primary or a replica in sync before starting Sentinel"
    sleep 1
    n=$((n + 1))
  done
  watch &
fi
exec redis-server "$conf/sentinel.conf" --sentinel
"#;

fn literal(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The environment the scripts read (the password only as a Secret reference).
fn script_env(store: &ValidStore, replicas: i32) -> Vec<EnvVar> {
    let (secret, _) = managed_names(store);
    vec![
        EnvVar {
            name: "REDISCLI_AUTH".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret,
                    key: PASSWORD_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        EnvVar {
            name: "POD_NAME".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        literal("REDIS_HA_HOSTS", redis_pod_hosts(store, replicas).join(" ")),
        literal("REDIS_HA_MASTER", SENTINEL_MASTER),
        literal("REDIS_HA_QUORUM", quorum(replicas).to_string()),
        literal("REDIS_PORT", REDIS_PORT.to_string()),
        literal("SENTINEL_PORT", SENTINEL_PORT.to_string()),
        literal("REDIS_HA_CONF", CONF_DIR),
        literal("REDIS_HA_DATA", DATA_DIR),
        literal("REDIS_HA_DOWN_AFTER_MS", DOWN_AFTER_MS.to_string()),
        literal(
            "REDIS_HA_WAIT_SECONDS",
            FORMER_PRIMARY_WAIT_SECONDS.to_string(),
        ),
        literal("REDIS_HA_PRESTOP_SECONDS", PRESTOP_WAIT_SECONDS.to_string()),
    ]
}

fn tcp_probe(port: i32, initial: i32, period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            host: None,
        }),
        initial_delay_seconds: (initial > 0).then_some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn default_resources(cpu: &str, memory: &str, limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// The StatefulSet, the Sentinel client Service `<store>-redis` and the headless Service.
pub fn build(
    store: &ValidStore,
    managed_spec: &ManagedBackend,
    defaults: &Defaults,
    replicas: i32,
) -> (StatefulSet, Service, Service) {
    let (name, app) = managed_names(store);
    let all_labels = labels(&store.name, app, "session-backend");
    let selector = selector_labels(&store.name, app);
    let image = managed_spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.redis_image.clone());
    let env = script_env(store, replicas);
    let hardened = hardened_security_context(Some(BACKEND_UID));

    let init = Container {
        name: "config".into(),
        image: Some(image.clone()),
        command: Some(sh(INIT_SCRIPT)),
        env: Some(env.clone()),
        resources: Some(default_resources("10m", "16Mi", "64Mi")),
        security_context: Some(hardened.clone()),
        volume_mounts: Some(vec![mount("conf", CONF_DIR), mount("scratch-0", "/tmp")]),
        ..Container::default()
    };
    let redis = Container {
        name: "redis".into(),
        image: Some(image.clone()),
        args: Some(vec![
            "redis-server".into(),
            format!("{CONF_DIR}/redis.conf"),
        ]),
        env: Some(env.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("redis".into()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(tcp_probe(REDIS_PORT, 0, 5, 3)),
        liveness_probe: Some(tcp_probe(REDIS_PORT, 10, 10, 6)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(sh(PRESTOP_SCRIPT)),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(
            managed_spec
                .resources
                .clone()
                .unwrap_or_else(|| default_resources("50m", "64Mi", "512Mi")),
        ),
        security_context: Some(hardened.clone()),
        volume_mounts: Some(vec![
            mount("data", DATA_DIR),
            mount("conf", CONF_DIR),
            mount("scratch-0", "/tmp"),
        ]),
        ..Container::default()
    };
    let sentinel = Container {
        name: "sentinel".into(),
        image: Some(image),
        command: Some(sh(SENTINEL_SCRIPT)),
        env: Some(env.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("sentinel".into()),
            container_port: SENTINEL_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(tcp_probe(SENTINEL_PORT, 0, 5, 3)),
        liveness_probe: Some(tcp_probe(SENTINEL_PORT, 10, 10, 6)),
        resources: Some(default_resources("10m", "16Mi", "64Mi")),
        security_context: Some(hardened),
        volume_mounts: Some(vec![mount("conf", CONF_DIR), mount("scratch-0", "/tmp")]),
        ..Container::default()
    };

    let retention = match managed_spec.pvc_retention {
        PvcRetention::Delete => "Delete",
        PvcRetention::Retain => "Retain",
    };
    let sts = StatefulSet {
        metadata: store.owned_meta(&name, all_labels.clone()),
        spec: StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(headless_name(store)),
            // All Pods start together; the init script, not the start order, decides roles.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            persistent_volume_claim_retention_policy: claim_retention(
                defaults.pvc_retention_policy(),
                retention,
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(all_labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    security_context: Some(backend_pod_security()),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 100,
                                    pod_affinity_term: PodAffinityTerm {
                                        label_selector: Some(LabelSelector {
                                            match_labels: Some(selector.clone()),
                                            match_expressions: None,
                                        }),
                                        topology_key: "kubernetes.io/hostname".into(),
                                        ..PodAffinityTerm::default()
                                    },
                                },
                            ]),
                            ..PodAntiAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    init_containers: Some(vec![init]),
                    containers: vec![redis, sentinel],
                    volumes: Some(vec![
                        Volume {
                            // In memory: the rendered files carry the password.
                            name: "conf".into(),
                            empty_dir: Some(EmptyDirVolumeSource {
                                medium: Some("Memory".into()),
                                size_limit: Some(Quantity("1Mi".into())),
                                ..EmptyDirVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "scratch-0".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(all_labels.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: managed_spec.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            managed_spec.storage_size.clone(),
                        )])),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        },
        status: None,
    };

    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    };
    // Only the Sentinel port: a client of this Service could land on a replica for writes.
    let client_service = Service {
        metadata: store.owned_meta(&name, all_labels.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector.clone()),
            ports: Some(vec![port("sentinel", SENTINEL_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let headless = Service {
        metadata: store.owned_meta(&headless_name(store), all_labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // DNS names exist before readiness: replicas and Sentinels find each other at start.
            publish_not_ready_addresses: Some(true),
            selector: Some(selector),
            ports: Some(vec![
                port("redis", REDIS_PORT),
                port("sentinel", SENTINEL_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    (sts, client_service, headless)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;
    use crate::crd::Backend;

    fn three() -> (ValidStore, ManagedBackend) {
        let store = fixtures::managed_redis();
        let Backend::Managed(m) = store.spec.backend.clone() else {
            panic!("managed")
        };
        (store, m)
    }

    fn env_map(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(5), 3);
        assert_eq!(quorum(7), 4);
    }

    #[test]
    fn statefulset_has_redis_and_sentinel_and_renders_config_at_start() {
        let (store, m) = three();
        let defaults = Defaults {
            server_version: Some((1, 20)),
            ..Defaults::default()
        };
        let (sts, svc, headless) = build(&store, &m, &defaults, 3);
        assert_eq!(sts.metadata.name.as_deref(), Some("sessions-redis"));
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.service_name.as_deref(),
            Some("sessions-redis-headless")
        );
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert!(spec.persistent_volume_claim_retention_policy.is_none());
        let pod = spec.template.spec.clone().expect("pod");
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["redis", "sentinel"]);
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let init = &pod.init_containers.clone().expect("init")[0];
        assert_eq!(
            init.command.as_ref().map(|c| c[2].as_str()),
            Some(INIT_SCRIPT)
        );
        assert_eq!(
            pod.containers[0].args.as_deref(),
            Some(&["redis-server".to_string(), "/conf/redis.conf".to_string()][..])
        );
        assert_eq!(
            pod.containers[1].command.as_ref().map(|c| c[2].as_str()),
            Some(SENTINEL_SCRIPT)
        );
        assert!(SENTINEL_SCRIPT.ends_with("exec redis-server \"$conf/sentinel.conf\" --sentinel\n"));
        assert!(env_map(&pod.containers[1]).contains_key("REDIS_HA_QUORUM"));
        assert_eq!(
            pod.containers[1].ports.as_ref().expect("ports")[0].container_port,
            26379
        );
        // Password only as a Secret reference; nothing in args or literal values.
        let env = env_map(init);
        let auth = &env["REDISCLI_AUTH"];
        assert_eq!(auth.value, None);
        assert_eq!(
            auth.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|s| (s.name.as_str(), s.key.as_str())),
            Some(("sessions-redis", "password"))
        );
        assert_eq!(
            env["REDIS_HA_HOSTS"].value.as_deref(),
            Some("sessions-redis-0.sessions-redis-headless.shop.svc sessions-redis-1.sessions-redis-headless.shop.svc sessions-redis-2.sessions-redis-headless.shop.svc")
        );
        assert_eq!(env["REDIS_HA_QUORUM"].value.as_deref(), Some("2"));
        assert_eq!(
            env["REDIS_HA_MASTER"].value.as_deref(),
            Some("odoo-sessions")
        );
        for c in pod.containers.iter().chain(std::iter::once(init)) {
            let sc = c.security_context.as_ref().expect("sc");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert!(!c
                .args
                .clone()
                .unwrap_or_default()
                .join(" ")
                .contains("pass"));
        }
        let conf = pod
            .volumes
            .as_ref()
            .and_then(|v| v.iter().find(|v| v.name == "conf"))
            .and_then(|v| v.empty_dir.as_ref())
            .and_then(|e| e.medium.as_deref());
        assert_eq!(conf, Some("Memory"));
        // preStop failover, bounded below the grace period.
        let pre = pod.containers[0]
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|p| p.exec.as_ref())
            .and_then(|e| e.command.clone())
            .expect("preStop");
        assert_eq!(pre[2], PRESTOP_SCRIPT);
        assert!(i64::from(PRESTOP_WAIT_SECONDS) + 5 < TERMINATION_GRACE_SECONDS);
        // Spread over nodes, preferred.
        let anti = pod
            .affinity
            .and_then(|a| a.pod_anti_affinity)
            .and_then(|a| a.preferred_during_scheduling_ignored_during_execution)
            .expect("anti-affinity");
        assert_eq!(
            anti[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        // Selector matches the template.
        let sel = spec.selector.match_labels.clone().expect("selector");
        let tpl = spec
            .template
            .metadata
            .clone()
            .and_then(|m| m.labels)
            .expect("labels");
        assert!(sel.iter().all(|(k, v)| tpl.get(k) == Some(v)));

        let h = headless.spec.expect("headless spec");
        assert_eq!(
            headless.metadata.name.as_deref(),
            Some("sessions-redis-headless")
        );
        assert_eq!(h.cluster_ip.as_deref(), Some("None"));
        assert_eq!(h.publish_not_ready_addresses, Some(true));
        let ports: Vec<_> = h.ports.expect("ports").iter().map(|p| p.port).collect();
        assert_eq!(ports, [6379, 26379]);
        assert_eq!(h.selector.as_ref(), Some(&sel));
        let s = svc.spec.expect("svc spec");
        assert_eq!(svc.metadata.name.as_deref(), Some("sessions-redis"));
        let ports: Vec<_> = s.ports.expect("ports").iter().map(|p| p.port).collect();
        assert_eq!(
            ports,
            [26379],
            "the client Service never leads writes to a replica"
        );
    }

    #[test]
    fn claims_and_retention_follow_the_spec() {
        let store = fixtures::store(serde_json::json!({
            "driver": "redis",
            "backend": {"managed": {"replicas": 5, "pvcRetention": "Retain", "storageClassName": "fast", "storageSize": "2Gi"}}
        }));
        let Backend::Managed(m) = store.spec.backend.clone() else {
            panic!("managed")
        };
        let defaults = Defaults {
            server_version: Some((1, 30)),
            ..Defaults::default()
        };
        let (sts, _, _) = build(&store, &m, &defaults, 5);
        assert_eq!(sts.spec.replicas, Some(5));
        assert_eq!(
            sts.spec
                .persistent_volume_claim_retention_policy
                .and_then(|p| p.when_deleted)
                .as_deref(),
            Some("Retain")
        );
        let claim = &sts.spec.volume_claim_templates.expect("claims")[0];
        let cs = claim.spec.as_ref().expect("claim spec");
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        let env = env_map(&sts.spec.template.spec.expect("pod").containers[0]);
        assert_eq!(env["REDIS_HA_QUORUM"].value.as_deref(), Some("3"));
    }
}
