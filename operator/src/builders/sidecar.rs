//! The sidecar container and the dkn_auth variables the webhook injects into opted-in Pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, Probe,
    ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::connection::connection;
use super::{hardened_security_context, Defaults, ValidStore};
use crate::crd::{Driver, NativeSidecarMode, SIDECAR_CONTAINER};

/// uid of the sidecar image's non-root user (distroless "nonroot").
pub const SIDECAR_UID: i64 = 65532;
/// Kubernetes minor version from which native sidecars are on by default (beta in 1.29).
pub const NATIVE_SIDECAR_MIN_MINOR: u32 = 29;

/// Pod annotation choosing how the Odoo containers reach the sidecar: `socket` (the
/// default) or `loopback`.
pub const ADDRESS_ANNOTATION: &str = "odoo-ha.io/sidecar-address";
/// The emptyDir holding the sidecar's Unix socket, mounted in the sidecar and in every
/// container that gets the addon variables (and in no other: only they can connect).
pub const SOCKET_VOLUME: &str = "dkn-auth-socket";
/// Where [`SOCKET_VOLUME`] is mounted, in the sidecar and in the Odoo containers.
pub const SOCKET_DIR: &str = "/run/dkn-auth";
/// The socket: DKN_AUTH_SOCKET of the sidecar and of the addon.
pub const SOCKET_PATH: &str = "/run/dkn-auth/sidecar.sock";

/// How the Odoo containers reach the session API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Address {
    /// A Unix socket in [`SOCKET_VOLUME`] (the default): no TCP stack on the request path,
    /// and only the containers that mount the volume can connect.
    Socket,
    /// TCP on the Pod's loopback, `spec.sidecar.port` (annotation `loopback`).
    Loopback,
}

impl Address {
    /// From the Pod's [`ADDRESS_ANNOTATION`]; an unknown value is an error naming it.
    pub fn from_annotation(value: Option<&str>) -> Result<Address, String> {
        match value {
            None | Some("socket") => Ok(Address::Socket),
            Some("loopback") => Ok(Address::Loopback),
            Some(other) => Err(format!(
                "annotation {ADDRESS_ANNOTATION}={other:?} is invalid: expected socket (the default) or loopback"
            )),
        }
    }
}

/// Everything the webhook adds to a Pod for one store.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Injection {
    pub sidecar: Container,
    /// Native sidecar (init container with restartPolicy Always) or regular container.
    pub native: bool,
    /// The address (DKN_AUTH_SOCKET or DKN_AUTH_URL), DKN_AUTH_EXPIRY and
    /// DKN_AUTH_ANONYMOUS_EXPIRY for the Odoo containers.
    pub addon_env: Vec<EnvVar>,
    /// With [`Address::Socket`]: the Pod volume of the socket, and its mount for the
    /// containers that get `addon_env` (the sidecar has its own already).
    pub socket: Option<(Volume, VolumeMount)>,
    /// The Pod volume of the external backend's CA Secret, when the store names one; only
    /// the sidecar mounts it (its mount is in `sidecar` already).
    pub ca_volume: Option<Volume>,
    /// Containers that get `addon_env`; empty means all regular containers.
    pub target_containers: Vec<String>,
    /// Hash of the injected settings (independent of `native`).
    pub config_hash: String,
}

/// Default `terminationGracePeriodSeconds` of a Pod.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;
/// Name of the drain variable injected into regular-container sidecars.
pub const DRAIN_VAR: &str = "DKN_AUTH_DRAIN_SECONDS";
/// How the drain time is derived from the Pod (part of the config hash: a change of the
/// rule rolls the workloads).
const DRAIN_RULE: &str =
    "regular-container: DKN_AUTH_DRAIN_SECONDS = terminationGracePeriodSeconds - 2, at least 1";

/// Seconds a regular-container sidecar keeps serving after SIGTERM: the Pod's grace period
/// minus 2 (so it stops before the kubelet's SIGKILL), at least 1.
pub fn drain_seconds(termination_grace_seconds: Option<i64>) -> i64 {
    (termination_grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS) - 2).max(1)
}

impl Injection {
    /// Completes the injection for one Pod. A regular-container sidecar gets SIGTERM together
    /// with the app, so it drains (keeps serving while the app still holds connections) for
    /// the Pod's grace period; a native sidecar is stopped after the app by the kubelet and
    /// needs no drain.
    pub fn for_pod(mut self, termination_grace_seconds: Option<i64>) -> Injection {
        if !self.native {
            let env = self.sidecar.env.get_or_insert_with(Vec::new);
            env.retain(|e| e.name != DRAIN_VAR);
            env.push(var(
                DRAIN_VAR,
                drain_seconds(termination_grace_seconds).to_string(),
            ));
        }
        self
    }
}

/// Decides native vs regular from the spec's mode and the API server's version.
pub fn use_native(mode: NativeSidecarMode, server: Option<(u32, u32)>) -> bool {
    match mode {
        NativeSidecarMode::Always => true,
        NativeSidecarMode::Never => false,
        NativeSidecarMode::Auto => {
            matches!(server, Some((major, minor)) if major > 1 || (major == 1 && minor >= NATIVE_SIDECAR_MIN_MINOR))
        }
    }
}

/// Parses the `major`/`minor` fields of `/version` ("1", "29+").
pub fn parse_version(major: &str, minor: &str) -> Option<(u32, u32)> {
    let digits = |s: &str| {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    Some((digits(major)?, digits(minor)?))
}

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn http_probe(path: &str, port: i32, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(port),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("10m".into())),
            ("memory".to_string(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity("128Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn socket_mount() -> VolumeMount {
    VolumeMount {
        name: SOCKET_VOLUME.into(),
        mount_path: SOCKET_DIR.into(),
        ..VolumeMount::default()
    }
}

/// The injection with the default address ([`Address::Socket`]); its `config_hash` is the
/// store's, whatever address a Pod chooses.
pub fn build(store: &ValidStore, defaults: &Defaults, native: bool) -> Injection {
    build_for(store, defaults, native, Address::Socket)
}

pub fn build_for(
    store: &ValidStore,
    defaults: &Defaults,
    native: bool,
    address: Address,
) -> Injection {
    let spec = &store.spec;
    let side = &spec.sidecar;
    let listen = match address {
        Address::Socket => var("DKN_AUTH_SOCKET", SOCKET_PATH),
        Address::Loopback => var("DKN_AUTH_LISTEN", format!("127.0.0.1:{}", side.port)),
    };
    let mut env = vec![
        var("DKN_AUTH_DRIVER", spec.driver.as_str()),
        var("DKN_AUTH_PREFIX", spec.prefix.clone()),
        var("DKN_AUTH_EXPIRY", spec.expiry_seconds.to_string()),
        listen,
        var(
            "DKN_AUTH_HEALTH_LISTEN",
            format!("0.0.0.0:{}", side.health_port),
        ),
        var("DKN_AUTH_LOG_FORMAT", "json"),
    ];
    if spec.driver == Driver::Redis {
        env.push(var(
            "DKN_AUTH_REDIS_MAX_CONN",
            spec.redis_pool_size.to_string(),
        ));
    }
    if let (Driver::Db, Some(commit)) = (spec.driver, &spec.db_synchronous_commit) {
        env.push(var(
            odoo_ha_contract::DB_SYNCHRONOUS_COMMIT.env,
            commit.clone(),
        ));
    }
    let backend = connection(store);
    env.extend(backend.env);
    let (ca_volume, ca_mount) = backend.ca.unzip();
    let mounts: Vec<VolumeMount> = (address == Address::Socket)
        .then(socket_mount)
        .into_iter()
        .chain(ca_mount)
        .collect();

    let mut sidecar = Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(
            side.image
                .clone()
                .unwrap_or_else(|| defaults.sidecar_image.clone()),
        ),
        image_pull_policy: side.image_pull_policy.clone(),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("dkn-health".into()),
            container_port: side.health_port,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // /readyz means "this sidecar is up and configured", not "the shared backend
        // answers" (that is /metrics dkn_auth_backend_up): a backend failover must not take
        // every Odoo Pod out of its Service at once.
        readiness_probe: Some(http_probe("/readyz", side.health_port, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", side.health_port, 10, 3)),
        resources: Some(side.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(hardened_security_context(Some(SIDECAR_UID))),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };

    let addon_address = match address {
        Address::Socket => var("DKN_AUTH_SOCKET", SOCKET_PATH),
        Address::Loopback => var("DKN_AUTH_URL", format!("http://127.0.0.1:{}", side.port)),
    };
    let socket = (address == Address::Socket).then(|| {
        let volume = Volume {
            name: SOCKET_VOLUME.into(),
            // Memory: the socket is a name, not data; nothing of the node's disk is used.
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        };
        (volume, socket_mount())
    });
    let addon_env = vec![
        addon_address,
        var("DKN_AUTH_EXPIRY", spec.expiry_seconds.to_string()),
        var(
            "DKN_AUTH_ANONYMOUS_EXPIRY",
            spec.anonymous_expiry_seconds.to_string(),
        ),
    ];
    let target_containers = spec.injection.containers.clone();
    // The store's hash is the default address's: a Pod's annotation does not change it.
    // The CA volume is hashed too: the sidecar's CA path is fixed, so another Secret or
    // key leaves the container as it was. Only when set, so that stores without one keep
    // the hash they had (no roll of their workloads on an operator upgrade).
    let config_hash = match (address, &ca_volume) {
        (Address::Socket, None) => hash(&(&sidecar, &addon_env, &target_containers, DRAIN_RULE)),
        (Address::Socket, Some(ca)) => {
            hash(&(&sidecar, &addon_env, &target_containers, DRAIN_RULE, ca))
        }
        (Address::Loopback, _) => build_for(store, defaults, native, Address::Socket).config_hash,
    };

    if native {
        // Started before the app containers, kept running, and its startup probe holds
        // the next containers until the sidecar serves.
        sidecar.restart_policy = Some("Always".into());
        sidecar.startup_probe = Some(http_probe("/healthz", side.health_port, 1, 60));
    }
    Injection {
        sidecar,
        native,
        addon_env,
        socket,
        ca_volume,
        target_containers,
        config_hash,
    }
}

fn hash(value: &impl Serialize) -> String {
    // Serialising plain k8s-openapi structs to JSON cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;

    fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn native_decision() {
        use NativeSidecarMode::*;
        assert!(use_native(Auto, Some((1, 29))));
        assert!(use_native(Auto, Some((1, 33))));
        assert!(!use_native(Auto, Some((1, 28))));
        assert!(!use_native(Auto, Some((1, 20))));
        assert!(!use_native(Auto, None));
        assert!(use_native(Always, Some((1, 20))));
        assert!(!use_native(Never, Some((1, 33))));
        assert_eq!(parse_version("1", "29+"), Some((1, 29)));
        assert_eq!(parse_version("1", "20"), Some((1, 20)));
        assert_eq!(parse_version("", "20"), None);
    }

    #[test]
    fn sidecar_env_contract() {
        let inj = build(&fixtures::managed_redis(), &Defaults::default(), false);
        let env = env_of(&inj.sidecar);
        assert_eq!(env["DKN_AUTH_DRIVER"].value.as_deref(), Some("redis"));
        assert_eq!(env["DKN_AUTH_PREFIX"].value.as_deref(), Some("session:"));
        assert_eq!(env["DKN_AUTH_EXPIRY"].value.as_deref(), Some("604800"));
        assert_eq!(env["DKN_AUTH_SOCKET"].value.as_deref(), Some(SOCKET_PATH));
        assert!(!env.contains_key("DKN_AUTH_LISTEN"));
        assert!(SOCKET_PATH.starts_with(&format!("{SOCKET_DIR}/")));
        let loopback = build_for(
            &fixtures::managed_redis(),
            &Defaults::default(),
            false,
            Address::Loopback,
        );
        let tcp = env_of(&loopback.sidecar);
        assert_eq!(
            tcp["DKN_AUTH_LISTEN"].value.as_deref(),
            Some("127.0.0.1:7070")
        );
        assert!(!tcp.contains_key("DKN_AUTH_SOCKET"));
        assert_eq!(loopback.sidecar.volume_mounts, None);
        assert_eq!(loopback.socket, None);
        assert_eq!(env["DKN_AUTH_LOG_FORMAT"].value.as_deref(), Some("json"));
        assert_eq!(env["DKN_AUTH_REDIS_MAX_CONN"].value.as_deref(), Some("64"));
        assert!(env["DKN_AUTH_REDIS_PASSWORD"].value_from.is_some());
        assert_eq!(env["DKN_AUTH_REDIS_PASSWORD"].value, None);
        assert_eq!(
            inj.sidecar.image.as_deref(),
            Some(Defaults::default().sidecar_image.as_str())
        );
        assert_eq!(inj.sidecar.restart_policy, None);
        assert_eq!(inj.sidecar.startup_probe, None);
    }

    #[test]
    fn drain_follows_the_grace_period_in_regular_mode_only() {
        assert_eq!(drain_seconds(None), 28);
        assert_eq!(drain_seconds(Some(60)), 58);
        assert_eq!(drain_seconds(Some(3)), 1);
        assert_eq!(drain_seconds(Some(2)), 1);
        assert_eq!(drain_seconds(Some(0)), 1);
        let store = fixtures::managed_redis();
        let regular = build(&store, &Defaults::default(), false).for_pod(Some(45));
        assert_eq!(
            env_of(&regular.sidecar)[DRAIN_VAR].value.as_deref(),
            Some("43")
        );
        let default = build(&store, &Defaults::default(), false).for_pod(None);
        assert_eq!(
            env_of(&default.sidecar)[DRAIN_VAR].value.as_deref(),
            Some("28")
        );
        // Applied twice (reinvocation): one variable.
        let twice = default.clone().for_pod(Some(10));
        let n = twice
            .sidecar
            .env
            .as_ref()
            .map(|e| e.iter().filter(|v| v.name == DRAIN_VAR).count());
        assert_eq!(n, Some(1));
        // Native sidecars stop after the app: no drain.
        let native = build(&store, &Defaults::default(), true).for_pod(Some(45));
        assert!(!env_of(&native.sidecar).contains_key(DRAIN_VAR));
        assert_eq!(native.config_hash, regular.config_hash);
    }

    #[test]
    fn sentinel_settings_enter_the_hash() {
        let one = fixtures::single_redis();
        let three = fixtures::managed_redis();
        let five = fixtures::store(
            serde_json::json!({"driver": "redis", "backend": {"managed": {"replicas": 5}}}),
        );
        let h = |s: &ValidStore| build(s, &Defaults::default(), false).config_hash;
        assert_ne!(h(&one), h(&three));
        assert_ne!(h(&three), h(&five));
        let env = env_of(&build(&three, &Defaults::default(), false).sidecar);
        assert_eq!(
            env["DKN_AUTH_REDIS_MIN_REPLICAS"].value.as_deref(),
            Some("1")
        );
        assert!(env["DKN_AUTH_REDIS_URI"]
            .value
            .as_deref()
            .is_some_and(|u| u.starts_with("redis+sentinel://sessions-redis-0.")));
    }

    #[test]
    fn probes_are_what_the_docs_say() {
        let c = build(&fixtures::managed_redis(), &Defaults::default(), true).sidecar;
        let probe = |p: &Option<Probe>| {
            let p = p.as_ref().expect("probe");
            let h = p.http_get.as_ref().expect("http");
            (
                h.path.clone().unwrap_or_default(),
                h.port.clone(),
                p.period_seconds,
                p.failure_threshold,
                p.timeout_seconds,
            )
        };
        let port = IntOrString::Int(7071);
        assert_eq!(
            probe(&c.readiness_probe),
            ("/readyz".into(), port.clone(), Some(5), Some(3), Some(2))
        );
        assert_eq!(
            probe(&c.liveness_probe),
            ("/healthz".into(), port.clone(), Some(10), Some(3), Some(2))
        );
        assert_eq!(
            probe(&c.startup_probe),
            ("/healthz".into(), port, Some(1), Some(60), Some(2))
        );
    }

    #[test]
    fn no_secret_value_is_ever_literal() {
        for store in [
            fixtures::managed_redis(),
            fixtures::managed_postgres(),
            fixtures::store(
                serde_json::json!({"driver": "redis", "backend": {"external": {"uriSecretRef": {"name": "r"}}}}),
            ),
        ] {
            let inj = build(&store, &Defaults::default(), true);
            for e in inj.sidecar.env.as_ref().expect("env") {
                if e.name.ends_with("_PASSWORD")
                    || (e.name.ends_with("_URI")
                        && !matches!(store.spec.backend, crate::crd::Backend::Managed(_)))
                {
                    assert!(
                        e.value.is_none() && e.value_from.is_some(),
                        "{} must use secretKeyRef",
                        e.name
                    );
                }
                if let Some(v) = &e.value {
                    // user:password@ in a literal URI would put the secret in the Pod spec.
                    let userinfo = v
                        .split("://")
                        .nth(1)
                        .and_then(|rest| rest.split_once('@'))
                        .map(|(u, _)| u);
                    assert!(
                        !userinfo.is_some_and(|u| u.contains(':')),
                        "credentials in {}: {v}",
                        e.name
                    );
                }
            }
        }
    }

    #[test]
    fn hardened_and_probed() {
        let inj = build(&fixtures::managed_postgres(), &Defaults::default(), true);
        let c = &inj.sidecar;
        let sc = c.security_context.as_ref().expect("sc");
        assert_eq!(sc.run_as_user, Some(SIDECAR_UID));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("RuntimeDefault")
        );
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone())
        };
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.startup_probe).as_deref(), Some("/healthz"));
        assert_eq!(c.restart_policy.as_deref(), Some("Always"));
        assert!(!env_of(c).contains_key("DKN_AUTH_REDIS_MAX_CONN"));
    }

    #[test]
    fn db_synchronous_commit_reaches_the_sidecar_and_the_hash() {
        let with = |v: Option<&str>| {
            let mut spec = serde_json::json!({"driver": "db", "backend": {"managed": {}}});
            if let Some(v) = v {
                spec["dbSynchronousCommit"] = v.into();
            }
            build(&fixtures::store(spec), &Defaults::default(), false)
        };
        let unset = with(None);
        assert!(!env_of(&unset.sidecar).contains_key("DKN_AUTH_DB_SYNCHRONOUS_COMMIT"));
        let off = with(Some("off"));
        assert_eq!(
            env_of(&off.sidecar)["DKN_AUTH_DB_SYNCHRONOUS_COMMIT"]
                .value
                .as_deref(),
            Some("off")
        );
        assert_ne!(off.config_hash, unset.config_hash);
    }

    /// Issue 9 item 3: the external backend's CA Secret and minReplicas reach the sidecar
    /// (variables, read-only mount, Pod volume) and the hash; a store without them keeps
    /// the hash it had.
    #[test]
    fn external_ca_and_min_replicas_reach_the_sidecar_and_the_hash() {
        use crate::builders::connection::{CA_DIR, CA_VOLUME};
        let with = |driver: &str, extra: serde_json::Value| {
            build(
                &fixtures::external(driver, extra),
                &Defaults::default(),
                false,
            )
        };
        let plain = with("redis", serde_json::json!({}));
        assert_eq!(plain.ca_volume, None);
        assert_eq!(
            plain.sidecar.volume_mounts,
            Some(vec![socket_mount()]),
            "no CA, the socket alone"
        );
        let ca = with("redis", serde_json::json!({"caSecretRef": {"name": "ca"}}));
        let env = env_of(&ca.sidecar);
        assert_eq!(
            env["DKN_AUTH_REDIS_CA_FILE"].value.as_deref(),
            Some("/etc/dkn-auth/ca/ca.crt")
        );
        assert!(!env.contains_key("DKN_AUTH_REDIS_MIN_REPLICAS"));
        let mounts = ca.sidecar.volume_mounts.clone().expect("mounts");
        assert_eq!(mounts[0], socket_mount());
        assert_eq!(
            (mounts[1].name.as_str(), mounts[1].mount_path.as_str()),
            (CA_VOLUME, CA_DIR)
        );
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(
            ca.ca_volume
                .as_ref()
                .and_then(|v| v.secret.as_ref())
                .and_then(|s| s.secret_name.as_deref()),
            Some("ca")
        );
        // With the loopback address the sidecar mounts the CA alone.
        let store = fixtures::store(serde_json::json!({"driver": "redis",
            "backend": {"external": {"uriSecretRef": {"name": "r"}, "caSecretRef": {"name": "ca"}}}}));
        let loopback = build_for(&store, &Defaults::default(), false, Address::Loopback);
        assert_eq!(
            loopback.sidecar.volume_mounts,
            Some(vec![mounts[1].clone()])
        );
        assert_eq!(loopback.ca_volume, ca.ca_volume);
        assert_eq!(loopback.config_hash, ca.config_hash);
        // The read-only root filesystem stays: the CA is a mount, not a write.
        assert_eq!(
            ca.sidecar
                .security_context
                .as_ref()
                .and_then(|s| s.read_only_root_filesystem),
            Some(true)
        );
        let db = with("db", serde_json::json!({"caSecretRef": {"name": "ca"}}));
        assert_eq!(
            env_of(&db.sidecar)["DKN_AUTH_DB_CA_FILE"].value.as_deref(),
            Some("/etc/dkn-auth/ca/ca.crt")
        );
        let min = with("redis", serde_json::json!({"minReplicas": 2}));
        assert_eq!(
            env_of(&min.sidecar)["DKN_AUTH_REDIS_MIN_REPLICAS"]
                .value
                .as_deref(),
            Some("2")
        );
        // Every change rolls the Pods: a field set, another Secret, another key, another count.
        let hashes = [
            plain.config_hash,
            ca.config_hash,
            with(
                "redis",
                serde_json::json!({"caSecretRef": {"name": "other"}}),
            )
            .config_hash,
            with(
                "redis",
                serde_json::json!({"caSecretRef": {"name": "ca", "key": "pem"}}),
            )
            .config_hash,
            min.config_hash,
            with("redis", serde_json::json!({"minReplicas": 1})).config_hash,
        ];
        let distinct: std::collections::BTreeSet<_> = hashes.iter().collect();
        assert_eq!(distinct.len(), hashes.len(), "{hashes:?}");
    }

    #[test]
    fn addon_env_and_hash() {
        let store = fixtures::store(serde_json::json!({
            "driver": "redis", "expirySeconds": 3600, "anonymousExpirySeconds": 600,
            "backend": {"managed": {}}, "sidecar": {"port": 7171}
        }));
        let inj = build(&store, &Defaults::default(), false);
        let names: Vec<_> = inj
            .addon_env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
            .collect();
        assert_eq!(
            names,
            [
                ("DKN_AUTH_SOCKET", SOCKET_PATH),
                ("DKN_AUTH_EXPIRY", "3600"),
                ("DKN_AUTH_ANONYMOUS_EXPIRY", "600")
            ]
        );
        let loopback = build_for(&store, &Defaults::default(), false, Address::Loopback);
        assert_eq!(
            loopback.addon_env[0].value.as_deref(),
            Some("http://127.0.0.1:7171")
        );
        assert_eq!(loopback.addon_env[0].name, "DKN_AUTH_URL");
        assert_eq!(loopback.config_hash, inj.config_hash);
        assert_eq!(
            Address::from_annotation(Some("loopback")),
            Ok(Address::Loopback)
        );
        assert_eq!(Address::from_annotation(None), Ok(Address::Socket));
        assert!(Address::from_annotation(Some("Socket")).is_err());
        assert_eq!(inj.config_hash.len(), 16);
        // Same settings, same hash, whatever the sidecar mode; other settings, other hash.
        assert_eq!(
            build(&store, &Defaults::default(), true).config_hash,
            inj.config_hash
        );
        assert_ne!(
            build(&fixtures::managed_redis(), &Defaults::default(), false).config_hash,
            inj.config_hash
        );
    }
}
