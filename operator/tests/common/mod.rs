//! Helpers shared by the integration tests and the benchmark (a running test cluster,
//! the operator binary as a child process).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use odoo_session_operator::crd::{OdooSessionStore, STORE_LABEL};
use serde_json::{json, Value};

pub const OPERATOR_NS: &str = "odoo-ha-system";

/// A host port of an operator process the tests start: `default` (18080 and up, 18443 and
/// up) plus `ODOO_HA_IT_PORT_OFFSET`, so that two suites can run side by side on one
/// machine (each with its own control plane: `ODOO_HA_K8S_STATE`, `ODOO_HA_K8S_*_PORT`).
pub fn port(default: u16) -> u16 {
    let offset = std::env::var("ODOO_HA_IT_PORT_OFFSET")
        .ok()
        .map(|v| {
            v.parse::<u16>()
                .expect("ODOO_HA_IT_PORT_OFFSET must be a number of ports")
        })
        .unwrap_or(0);
    default
        .checked_add(offset)
        .expect("ODOO_HA_IT_PORT_OFFSET moves the ports past 65535")
}

/// The webhook port of the main test operator.
pub fn webhook_port() -> u16 {
    port(18443)
}

/// The metrics port of the main test operator.
pub fn metrics_port() -> u16 {
    port(18080)
}

pub fn kubeconfig() -> PathBuf {
    PathBuf::from(std::env::var("ODOO_HA_KUBECONFIG").expect(
        "ODOO_HA_KUBECONFIG must name the admin kubeconfig of a test cluster (tests/operator-integration.sh sets it)",
    ))
}

pub async fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig()).expect("kubeconfig readable");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

pub fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Polls `f` until it returns Some, or panics with `what` after `secs`.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The operator process; killed when dropped.
pub struct Operator(pub Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn install_crd(client: &Client) {
    let path = odoo_ha_contract::repo_path(
        env!("CARGO_MANIFEST_DIR"),
        "crds/odoosessionstores.odoo-ha.io.yaml",
    );
    let (ok, out) = kubectl(&["apply", "-f", &path.to_string_lossy()]);
    assert!(ok, "kubectl apply of the committed CRD failed: {out}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    eventually("CRD Established", 30, || async {
        let crd = crds.get_opt("odoosessionstores.odoo-ha.io").await.ok()??;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
}

pub async fn start_operator(client: &Client) -> Operator {
    start_named_operator(client, "it-operator", webhook_port(), metrics_port()).await
}

/// Fetches the operator's /metrics text.
pub fn metrics_text(metrics_port: u16) -> String {
    let out = Command::new("curl")
        .args(["-fsS", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An operator replica with its own identity and ports.
pub async fn start_named_operator(
    client: &Client,
    name: &str,
    webhook_port: u16,
    metrics_port: u16,
) -> Operator {
    install_crd(client).await;
    ensure_namespace(client, OPERATOR_NS).await;
    let log = std::fs::File::create(
        std::env::temp_dir().join(format!("odoo-session-operator-{name}.log")),
    )
    .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_odoo-session-operator"))
        .env("KUBECONFIG", kubeconfig())
        .env("RUST_LOG", "info,odoo_session_operator=debug")
        .args([
            "--namespace",
            OPERATOR_NS,
            "--pod-name",
            name,
            "--log-format",
            "text",
        ])
        .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args([
            "--webhook-url",
            &format!("https://127.0.0.1:{webhook_port}/mutate-pods"),
        ])
        // No chart here: the operator owns the whole configuration.
        .args(["--webhook-config-mode", "full"])
        .args([
            "--default-sidecar-image",
            "localhost/odoo-session-sidecar:test",
        ])
        .args(["--lease-duration-seconds", "6"])
        .stdout(Stdio::from(log.try_clone().expect("log fd")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("operator binary starts");
    let op = Operator(child);
    eventually("operator /readyz", 60, || async {
        let out = Command::new("curl")
            .args(["-fsS", &format!("http://127.0.0.1:{metrics_port}/readyz")])
            .output()
            .ok()?;
        out.status.success().then_some(())
    })
    .await;
    // The API server picks up a new webhook configuration a moment later: probe it with a
    // dry-run Pod that the webhook must deny.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let probe = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually("the API server to call the webhook", 60, || async {
        match pods
            .create(&probe, &labelled_pod("webhook-probe", "no-such-store"))
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains("does not exist") => Some(()),
            _ => None,
        }
    })
    .await;
    op
}

pub async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("cannot create namespace {name}: {e}"),
    }
    // Pods need the namespace's default ServiceAccount (made by the controller-manager).
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    eventually("default ServiceAccount", 30, || async {
        sas.get_opt("default").await.ok()?.map(|_| ())
    })
    .await;
}

/// A fresh namespace per test, so tests do not see each other's objects.
pub async fn fresh_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.expect("get ns").is_some() {
        let _ = api.delete(name, &DeleteParams::default()).await;
        eventually("old namespace gone", 90, || async {
            api.get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    ensure_namespace(client, name).await;
}

pub async fn create_store(client: &Client, ns: &str, name: &str, spec: Value) -> OdooSessionStore {
    let api: Api<OdooSessionStore> = Api::namespaced(client.clone(), ns);
    let obj: OdooSessionStore = serde_json::from_value(json!({
        "apiVersion": "odoo-ha.io/v1alpha1", "kind": "OdooSessionStore",
        "metadata": {"name": name, "namespace": ns}, "spec": spec
    }))
    .expect("store json");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("store created")
}

pub fn condition<'a>(
    store: &'a OdooSessionStore,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    store
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: &str,
) -> OdooSessionStore {
    let api: Api<OdooSessionStore> = Api::namespaced(client.clone(), ns);
    eventually(
        &format!("{ns}/{name} {type_}={status} ({reason})"),
        60,
        || async {
            let s = api.get(name).await.ok()?;
            let c = condition(&s, type_)?;
            (c.status == status && c.reason == reason).then_some(s.clone())
        },
    )
    .await
}

pub fn owned_by(meta: &kube::api::ObjectMeta, store: &OdooSessionStore) -> bool {
    meta.owner_references.as_ref().is_some_and(|o| {
        o.iter().any(|r| {
            r.kind == "OdooSessionStore"
                && Some(&r.uid) == store.metadata.uid.as_ref()
                && r.controller == Some(true)
        })
    })
}

/// No token mounted: in a namespace just made, the 1.20 ServiceAccount admission refuses
/// Pods until the token controller has made the default token, which would race the test.
pub fn labelled_pod(name: &str, store: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {STORE_LABEL: store}},
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "odoo", "image": "localhost/odoo:test"}]}
    }))
    .expect("pod")
}
