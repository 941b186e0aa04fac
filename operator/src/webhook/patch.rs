//! The JSON patch the webhook returns, built on the raw Pod JSON.
//!
//! Working on the raw object (never a re-serialised typed Pod) keeps fields this operator's
//! types do not know. The patch is idempotent: run on an already injected Pod (webhook
//! reinvocation) it is empty.

use serde_json::{json, Value};

use crate::builders::sidecar::Injection;

/// The addon's address variables: a container that sets either (its user chose an address)
/// gets neither from the injection.
const ADDRESS_VARS: [&str; 2] = ["DKN_AUTH_SOCKET", "DKN_AUTH_URL"];
use crate::crd::{CONFIG_HASH_ANNOTATION, INJECTED_ANNOTATION, SIDECAR_CONTAINER};
use crate::error::{Error, Result};

/// The patch plus warnings for the user (shown by kubectl on 1.19+).
#[derive(Debug, Default)]
pub struct Plan {
    pub ops: Vec<Value>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn into_patch(self) -> Result<json_patch::Patch> {
        Ok(serde_json::from_value(Value::Array(self.ops))?)
    }
}

/// RFC 6901 escaping of one path token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap_or("")).collect())
        .unwrap_or_default()
}

pub fn build(pod: &Value, inj: &Injection, store: &str) -> Result<Plan> {
    let spec = pod
        .get("spec")
        .filter(|s| s.is_object())
        .ok_or(Error::MissingField("spec"))?;
    let containers = spec
        .get("containers")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or(Error::MissingField("spec.containers"))?;
    let mut plan = Plan::default();

    // 1. Addon variables, on the original indices (the sidecar insertion comes after).
    let wanted = |name: &str| {
        if inj.target_containers.is_empty() {
            name != SIDECAR_CONTAINER
        } else {
            inj.target_containers.iter().any(|t| t == name)
        }
    };
    for (i, c) in containers.iter().enumerate() {
        let name = c["name"].as_str().unwrap_or("");
        if !wanted(name) {
            continue;
        }
        let existing: Vec<&str> = names(c.get("env"));
        let own_address = ADDRESS_VARS.iter().any(|v| existing.contains(v));
        let missing: Vec<Value> = inj
            .addon_env
            .iter()
            .filter(|e| !existing.contains(&e.name.as_str()))
            .filter(|e| !(own_address && ADDRESS_VARS.contains(&e.name.as_str())))
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        if let Some((volume, mount)) = &inj.socket {
            let mounted = names(c.get("volumeMounts")).contains(&volume.name.as_str());
            if !mounted {
                let mount = serde_json::to_value(mount)?;
                if c.get("volumeMounts").and_then(Value::as_array).is_some() {
                    plan.ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts/-"), "value": mount}));
                } else {
                    plan.ops.push(json!({"op": "add", "path": format!("/spec/containers/{i}/volumeMounts"), "value": [mount]}));
                }
            }
        }
        if missing.is_empty() {
            continue;
        }
        if c.get("env").and_then(Value::as_array).is_some() {
            for e in missing {
                plan.ops.push(
                    json!({"op": "add", "path": format!("/spec/containers/{i}/env/-"), "value": e}),
                );
            }
        } else {
            plan.ops.push(
                json!({"op": "add", "path": format!("/spec/containers/{i}/env"), "value": missing}),
            );
        }
    }
    let present: Vec<&str> = containers
        .iter()
        .map(|c| c["name"].as_str().unwrap_or(""))
        .collect();
    for t in &inj.target_containers {
        if !present.contains(&t.as_str()) {
            plan.warnings.push(format!(
                "odoo-ha.io: container {t:?} named in OdooSessionStore {store} spec.injection.containers is not in this Pod"
            ));
        }
    }

    // 2. The Pod volumes, the socket's and the CA Secret's (mounted by the sidecar alone),
    // each unless present (a previous invocation).
    let present_volumes = names(spec.get("volumes"));
    let new_volumes: Vec<Value> = inj
        .socket
        .iter()
        .map(|(volume, _)| volume)
        .chain(&inj.ca_volume)
        .filter(|v| !present_volumes.contains(&v.name.as_str()))
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    if spec.get("volumes").and_then(Value::as_array).is_some() {
        for volume in new_volumes {
            plan.ops
                .push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
        }
    } else if !new_volumes.is_empty() {
        // One op for all: a second `add /spec/volumes` would replace the first.
        plan.ops
            .push(json!({"op": "add", "path": "/spec/volumes", "value": new_volumes}));
    }

    // 3. The sidecar, unless a previous invocation (or the user) already added it.
    let init = spec.get("initContainers").and_then(Value::as_array);
    let has_sidecar = names(spec.get("containers")).contains(&SIDECAR_CONTAINER)
        || names(spec.get("initContainers")).contains(&SIDECAR_CONTAINER);
    if !has_sidecar {
        let sidecar = serde_json::to_value(&inj.sidecar)?;
        if inj.native {
            // First init container: it runs during the other init containers too.
            match init {
                Some(list) if !list.is_empty() => {
                    plan.ops.push(
                        json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar}),
                    );
                }
                _ => plan
                    .ops
                    .push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})),
            }
        } else {
            // First container: the kubelet starts containers in order.
            plan.ops
                .push(json!({"op": "add", "path": "/spec/containers/0", "value": sidecar}));
        }
    }

    // 4. Marker and config hash annotations.
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let desired = [
        (INJECTED_ANNOTATION, store),
        (CONFIG_HASH_ANNOTATION, inj.config_hash.as_str()),
    ];
    match annotations {
        None => {
            let map: serde_json::Map<String, Value> = desired
                .iter()
                .map(|(k, v)| ((*k).to_string(), json!(v)))
                .collect();
            if pod.get("metadata").is_some_and(Value::is_object) {
                plan.ops
                    .push(json!({"op": "add", "path": "/metadata/annotations", "value": map}));
            } else {
                plan.ops
                    .push(json!({"op": "add", "path": "/metadata", "value": {"annotations": map}}));
            }
        }
        Some(existing) => {
            for (k, v) in desired {
                if existing.get(k).and_then(Value::as_str) != Some(v) {
                    plan.ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(k)), "value": v}));
                }
            }
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::{fixtures, sidecar, Defaults};

    fn injection(native: bool) -> Injection {
        sidecar::build(&fixtures::managed_redis(), &Defaults::default(), native)
    }

    fn apply(pod: &Value, plan: Plan) -> Value {
        let mut out = pod.clone();
        json_patch::patch(&mut out, &plan.into_patch().expect("valid patch"))
            .expect("patch applies");
        out
    }

    fn odoo_pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "odoo-", "labels": {"odoo-ha.io/session-store": "sessions"}},
            "spec": {
                "containers": [
                    {"name": "odoo", "image": "odoo:18", "env": [{"name": "HOST", "value": "db"}],
                     "someFutureField": {"kept": true}},
                    {"name": "nginx", "image": "nginx"}
                ],
                "someFuturePodField": 1
            }
        })
    }

    #[test]
    fn regular_sidecar_goes_first_and_every_container_gets_the_variables() {
        let pod = odoo_pod();
        let out = apply(
            &pod,
            build(&pod, &injection(false), "sessions").expect("plan"),
        );
        let cs = out["spec"]["containers"].as_array().expect("containers");
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0]["name"], SIDECAR_CONTAINER);
        assert_eq!(cs[1]["name"], "odoo");
        let odoo_env: Vec<&str> = cs[1]["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| e["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            odoo_env,
            [
                "HOST",
                "DKN_AUTH_SOCKET",
                "DKN_AUTH_EXPIRY",
                "DKN_AUTH_ANONYMOUS_EXPIRY"
            ]
        );
        assert_eq!(cs[2]["env"][0]["name"], "DKN_AUTH_SOCKET");
        assert_eq!(
            cs[1]["someFutureField"]["kept"], true,
            "unknown fields survive"
        );
        assert_eq!(out["spec"]["someFuturePodField"], 1);
        assert!(out["spec"].get("initContainers").is_none());
        assert_eq!(
            out["metadata"]["annotations"][INJECTED_ANNOTATION],
            "sessions"
        );
        assert_eq!(
            out["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
                .as_str()
                .map(str::len),
            Some(16)
        );
        // The sidecar's own env is not polluted with the addon variables.
        assert!(!cs[0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "DKN_AUTH_URL"));
    }

    fn env_value<'a>(c: &'a Value, name: &str) -> Option<&'a str> {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
    }

    fn mounts(c: &Value) -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["name"].as_str().unwrap_or("").to_owned(),
                            m["mountPath"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn by_default_odoo_reaches_the_sidecar_over_a_unix_socket_in_a_shared_empty_dir() {
        use crate::builders::sidecar::{SOCKET_DIR, SOCKET_PATH, SOCKET_VOLUME};
        for native in [false, true] {
            let mut pod = odoo_pod();
            // Volumes and mounts of the user's are kept, ours appended.
            pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
            pod["spec"]["containers"][0]["volumeMounts"] =
                json!([{"name": "data", "mountPath": "/var/lib/odoo"}]);
            let out = apply(
                &pod,
                build(&pod, &injection(native), "sessions").expect("plan"),
            );
            let spec = &out["spec"];
            let volumes = spec["volumes"].as_array().expect("volumes");
            assert_eq!(volumes.len(), 2);
            assert_eq!(volumes[0]["name"], "data");
            assert_eq!(volumes[1]["name"], SOCKET_VOLUME);
            assert_eq!(volumes[1]["emptyDir"]["medium"], "Memory");
            let sidecar = if native {
                &spec["initContainers"][0]
            } else {
                &spec["containers"][0]
            };
            let (odoo, nginx) = if native {
                (&spec["containers"][0], &spec["containers"][1])
            } else {
                (&spec["containers"][1], &spec["containers"][2])
            };
            let ours = (SOCKET_VOLUME.to_owned(), SOCKET_DIR.to_owned());
            assert_eq!(mounts(sidecar), std::slice::from_ref(&ours));
            assert_eq!(
                mounts(odoo),
                [
                    ("data".to_owned(), "/var/lib/odoo".to_owned()),
                    ours.clone()
                ]
            );
            assert_eq!(mounts(nginx), [ours]);
            // The sidecar serves the socket, not TCP; the addon connects to it.
            assert_eq!(env_value(sidecar, "DKN_AUTH_SOCKET"), Some(SOCKET_PATH));
            assert_eq!(env_value(sidecar, "DKN_AUTH_LISTEN"), None);
            assert_eq!(env_value(odoo, "DKN_AUTH_SOCKET"), Some(SOCKET_PATH));
            assert_eq!(env_value(odoo, "DKN_AUTH_URL"), None);
            // The kubelet still probes the health listener over the Pod IP.
            assert_eq!(
                env_value(sidecar, "DKN_AUTH_HEALTH_LISTEN"),
                Some("0.0.0.0:7071")
            );
            assert_eq!(sidecar["readinessProbe"]["httpGet"]["port"], 7071);
            assert_eq!(sidecar["livenessProbe"]["httpGet"]["port"], 7071);
            assert_eq!(sidecar["ports"][0]["containerPort"], 7071);
            assert_eq!(sidecar["ports"].as_array().map(Vec::len), Some(1));
            let again = build(&out, &injection(native), "sessions").expect("plan");
            assert!(again.ops.is_empty(), "reinvocation: {:?}", again.ops);
        }
    }

    /// Issue 9 item 3: the CA Secret's volume is added once, next to the socket's (or alone
    /// with the loopback address), and only the sidecar mounts it.
    #[test]
    fn the_ca_volume_is_added_once_and_mounted_by_the_sidecar_only() {
        use crate::builders::connection::{CA_DIR, CA_VOLUME};
        use crate::builders::sidecar::{build_for, Address, SOCKET_VOLUME};
        let store = fixtures::store(json!({
            "driver": "redis",
            "backend": {"external": {"uriSecretRef": {"name": "r"}, "caSecretRef": {"name": "ca"}}}
        }));
        for (address, volumes) in [
            (Address::Socket, vec![SOCKET_VOLUME, CA_VOLUME]),
            (Address::Loopback, vec![CA_VOLUME]),
        ] {
            for native in [false, true] {
                let inj = build_for(&store, &Defaults::default(), native, address);
                for user_volumes in [None, Some(json!([{"name": "data", "emptyDir": {}}]))] {
                    let mut pod = odoo_pod();
                    let mut want: Vec<&str> = volumes.clone();
                    if let Some(v) = &user_volumes {
                        pod["spec"]["volumes"] = v.clone();
                        want.insert(0, "data");
                    }
                    let out = apply(&pod, build(&pod, &inj, "sessions").expect("plan"));
                    let spec = &out["spec"];
                    let got: Vec<&str> = names(spec.get("volumes"));
                    assert_eq!(got, want, "{address:?} native {native}");
                    let ca = &spec["volumes"][want.len() - 1];
                    assert_eq!(ca["secret"]["secretName"], "ca");
                    assert_eq!(ca["secret"]["items"][0]["key"], "ca.crt");
                    let sidecar = if native {
                        &spec["initContainers"][0]
                    } else {
                        &spec["containers"][0]
                    };
                    assert!(
                        mounts(sidecar).contains(&(CA_VOLUME.to_owned(), CA_DIR.to_owned())),
                        "{:?}",
                        mounts(sidecar)
                    );
                    assert_eq!(sidecar["name"], SIDECAR_CONTAINER);
                    let others: Vec<&Value> = spec["containers"]
                        .as_array()
                        .expect("containers")
                        .iter()
                        .filter(|c| c["name"] != SIDECAR_CONTAINER)
                        .collect();
                    assert_eq!(others.len(), 2);
                    for c in others {
                        assert!(
                            !mounts(c).iter().any(|(name, _)| name == CA_VOLUME),
                            "{} mounts the CA",
                            c["name"]
                        );
                    }
                    let again = build(&out, &inj, "sessions").expect("plan");
                    assert!(again.ops.is_empty(), "reinvocation: {:?}", again.ops);
                }
            }
        }
    }

    #[test]
    fn only_the_named_containers_mount_the_socket() {
        let store = fixtures::store(json!({
            "driver": "redis", "backend": {"managed": {}},
            "injection": {"containers": ["odoo"]}
        }));
        let inj = sidecar::build(&store, &Defaults::default(), false);
        let pod = odoo_pod();
        let out = apply(&pod, build(&pod, &inj, "sessions").expect("plan"));
        assert_eq!(mounts(&out["spec"]["containers"][1]).len(), 1);
        assert!(out["spec"]["containers"][2].get("volumeMounts").is_none());
    }

    #[test]
    fn loopback_address_is_tcp_without_a_volume() {
        use crate::builders::sidecar::{build_for, Address};
        let store = fixtures::managed_redis();
        let inj = build_for(&store, &Defaults::default(), false, Address::Loopback);
        assert_eq!(inj.config_hash, injection(false).config_hash);
        let pod = odoo_pod();
        let out = apply(&pod, build(&pod, &inj, "sessions").expect("plan"));
        let cs = out["spec"]["containers"].as_array().expect("containers");
        assert!(out["spec"].get("volumes").is_none());
        assert!(cs.iter().all(|c| c.get("volumeMounts").is_none()));
        assert_eq!(env_value(&cs[0], "DKN_AUTH_LISTEN"), Some("127.0.0.1:7070"));
        assert_eq!(env_value(&cs[0], "DKN_AUTH_SOCKET"), None);
        assert_eq!(
            env_value(&cs[1], "DKN_AUTH_URL"),
            Some("http://127.0.0.1:7070")
        );
        assert_eq!(env_value(&cs[1], "DKN_AUTH_SOCKET"), None);
        let again = build(&out, &inj, "sessions").expect("plan");
        assert!(again.ops.is_empty(), "reinvocation: {:?}", again.ops);
    }

    #[test]
    fn a_users_own_address_gets_no_second_one() {
        let mut pod = odoo_pod();
        pod["spec"]["containers"][0]["env"] =
            json!([{"name": "DKN_AUTH_URL", "value": "http://127.0.0.1:9000"}]);
        let out = apply(
            &pod,
            build(&pod, &injection(false), "sessions").expect("plan"),
        );
        let odoo = &out["spec"]["containers"][1];
        assert_eq!(
            env_value(odoo, "DKN_AUTH_URL"),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(env_value(odoo, "DKN_AUTH_SOCKET"), None);
        assert_eq!(env_value(odoo, "DKN_AUTH_EXPIRY"), Some("604800"));
        // The other container takes the default.
        assert!(env_value(&out["spec"]["containers"][2], "DKN_AUTH_SOCKET").is_some());
    }

    #[test]
    fn native_sidecar_is_the_first_init_container() {
        let mut pod = odoo_pod();
        pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "odoo:18"}]);
        let out = apply(
            &pod,
            build(&pod, &injection(true), "sessions").expect("plan"),
        );
        let init = out["spec"]["initContainers"].as_array().expect("init");
        assert_eq!(init[0]["name"], SIDECAR_CONTAINER);
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["startupProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(init[1]["name"], "migrate");
        assert!(
            init[1].get("env").is_none(),
            "init containers do not get the addon variables"
        );
        assert_eq!(out["spec"]["containers"].as_array().map(Vec::len), Some(2));

        let pod = odoo_pod();
        let out = apply(
            &pod,
            build(&pod, &injection(true), "sessions").expect("plan"),
        );
        assert_eq!(out["spec"]["initContainers"][0]["name"], SIDECAR_CONTAINER);
    }

    #[test]
    fn reinvocation_is_a_no_op() {
        for native in [false, true] {
            let pod = odoo_pod();
            let once = apply(
                &pod,
                build(&pod, &injection(native), "sessions").expect("plan"),
            );
            let again = build(&once, &injection(native), "sessions").expect("plan");
            assert!(
                again.ops.is_empty(),
                "second pass must not patch: {:?}",
                again.ops
            );
        }
    }

    #[test]
    fn only_the_named_containers_get_the_variables() {
        let store = fixtures::store(json!({
            "driver": "redis", "backend": {"managed": {}},
            "injection": {"containers": ["odoo", "ghost"]}
        }));
        let inj = sidecar::build(&store, &Defaults::default(), false);
        let pod = odoo_pod();
        let plan = build(&pod, &inj, "sessions").expect("plan");
        assert_eq!(plan.warnings.len(), 1);
        assert!(plan.warnings[0].contains("ghost"));
        let out = apply(&pod, plan);
        assert_eq!(
            out["spec"]["containers"][1]["env"].as_array().map(Vec::len),
            Some(4)
        );
        assert!(out["spec"]["containers"][2].get("env").is_none());
    }

    #[test]
    fn user_values_win_and_annotations_are_escaped() {
        let mut pod = odoo_pod();
        pod["spec"]["containers"][0]["env"] =
            json!([{"name": "DKN_AUTH_URL", "value": "unix:///run/dkn.sock"}]);
        pod["metadata"]["annotations"] = json!({"other": "x"});
        let plan = build(&pod, &injection(false), "sessions").expect("plan");
        assert!(plan
            .ops
            .iter()
            .any(|o| o["path"] == "/metadata/annotations/odoo-ha.io~1injected"));
        let out = apply(&pod, plan);
        let env = out["spec"]["containers"][1]["env"].as_array().expect("env");
        assert_eq!(
            env.iter().filter(|e| e["name"] == "DKN_AUTH_URL").count(),
            1
        );
        assert_eq!(env[0]["value"], "unix:///run/dkn.sock");
        assert_eq!(out["metadata"]["annotations"]["other"], "x");
    }

    #[test]
    fn secrets_reach_the_pod_only_as_references() {
        let pod = odoo_pod();
        let out = apply(
            &pod,
            build(&pod, &injection(false), "sessions").expect("plan"),
        );
        let env = out["spec"]["containers"][0]["env"]
            .as_array()
            .expect("sidecar env");
        let pw = env
            .iter()
            .find(|e| e["name"] == "DKN_AUTH_REDIS_PASSWORD")
            .expect("password var");
        assert!(pw.get("value").is_none());
        assert_eq!(pw["valueFrom"]["secretKeyRef"]["name"], "sessions-redis");
    }

    #[test]
    fn malformed_pods_are_errors_not_panics() {
        assert!(build(&json!({}), &injection(false), "s").is_err());
        assert!(build(&json!({"spec": {"containers": []}}), &injection(false), "s").is_err());
        assert!(build(&json!({"spec": "x"}), &injection(false), "s").is_err());
        let plan = build(
            &json!({"spec": {"containers": [{"name": "a"}]}}),
            &injection(false),
            "s",
        )
        .expect("no metadata is fine");
        assert!(plan.ops.iter().any(|o| o["path"] == "/metadata"));
    }
}
