//! Benchmark: webhook admission latency and operator memory with 100 stores, on a real
//! Kubernetes 1.20.2 control plane. Asserts the targets (webhook p99 <= 10 ms, RSS <= 50 MB).
//!
//! `tests/operator-bench.sh` runs it (release build); by hand:
//! `ODOO_HA_KUBECONFIG=... cargo test --release -p odoo-session-operator --test bench -- --ignored --nocapture`

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use odoo_session_operator::crd::{OdooSessionStore, STORE_LABEL};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;

const STORES: usize = 100;
const REQUESTS_PER_CONN: usize = 500;
const CONNECTIONS: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("operator /proc status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS line")
}

fn review(i: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{i}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "bench", "operation": "CREATE",
            "userInfo": {"username": "bench"},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "odoo-", "namespace": "bench",
                             "labels": {STORE_LABEL: format!("store-{}", i % STORES), "app": "odoo"}},
                "spec": {"containers": [
                    {"name": "odoo", "image": "odoo:18", "env": [{"name": "HOST", "value": "db"}]},
                    {"name": "nginx", "image": "nginx"}
                ]}
            },
            "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .expect("review json")
}

/// One keep-alive HTTPS connection (as the API server keeps one), `n` sequential reviews.
async fn connection_run(tls: Arc<rustls::ClientConfig>, offset: usize, n: usize) -> Vec<Duration> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", webhook_port()))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the webhook");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let body = review(offset + i);
        let req = http::Request::post("/mutate-pods")
            .header("content-type", "application/json")
            .header("host", "localhost")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        sender.ready().await.expect("connection kept alive");
        let started = Instant::now();
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        out.push(started.elapsed());
        assert!(status.is_success(), "webhook answered {status}");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("review JSON");
        assert_eq!(v["response"]["allowed"], true, "{v}");
        assert_eq!(v["response"]["patchType"], "JSONPatch", "{v}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: needs a test cluster (tests/operator-bench.sh)"]
async fn webhook_latency_and_operator_memory_with_100_stores() {
    let client = client().await;
    let op = start_operator(&client).await;
    let pid = op.0.id();
    fresh_namespace(&client, "bench").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "bench");
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "redis-uri"}, "stringData": {"uri": "redis://:pw@redis:6379/0"}}))
            .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");

    // Half managed (each: StatefulSet, Service, Secret, NetworkPolicy), half external.
    let started = Instant::now();
    for i in 0..STORES {
        let spec = if i % 2 == 0 {
            json!({"driver": "redis", "backend": {"managed": {"storageSize": "64Mi"}}})
        } else {
            json!({"driver": "redis", "backend": {"external": {"uriSecretRef": {"name": "redis-uri"}}}})
        };
        create_store(&client, "bench", &format!("store-{i}"), spec).await;
    }
    let stores: Api<OdooSessionStore> = Api::namespaced(client.clone(), "bench");
    eventually("every store to have a status", 300, || async {
        let list = stores.list(&Default::default()).await.ok()?;
        let done = list
            .items
            .iter()
            .filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| !st.conditions.is_empty())
            })
            .count();
        (done == STORES).then_some(())
    })
    .await;
    let reconcile_all = started.elapsed();
    // Let the watches settle before reading memory.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_idle = rss_kib(pid, "VmRSS:");

    let tls_secret: Api<Secret> = Api::namespaced(client.clone(), OPERATOR_NS);
    let ca = tls_secret
        .get("odoo-session-operator-webhook-tls")
        .await
        .expect("TLS secret");
    let ca_pem = ca
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .0
        .clone();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA added");
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );

    connection_run(tls.clone(), 0, 200).await; // warm-up
    let mut tasks = Vec::new();
    for c in 0..CONNECTIONS {
        tasks.push(tokio::spawn(connection_run(
            tls.clone(),
            c * REQUESTS_PER_CONN,
            REQUESTS_PER_CONN,
        )));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("connection task"));
    }
    lat.sort();

    // Through the API server: dry-run Pod creates, each calls the webhook.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "bench");
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut e2e = Vec::new();
    for i in 0..200 {
        let pod = labelled_pod(&format!("p-{i}"), &format!("store-{}", i % STORES));
        let t = Instant::now();
        let created = pods.create(&dry, &pod).await.expect("dry-run create");
        e2e.push(t.elapsed());
        assert!(
            created.spec.is_some_and(|s| s.containers.len() == 2),
            "sidecar injected"
        );
    }
    e2e.sort();
    let rss_after = rss_kib(pid, "VmRSS:");
    let hwm = rss_kib(pid, "VmHWM:");

    let p99 = percentile(&lat, 0.99);
    let report = format!(
        "| measure | value |\n|---|---|\n\
         | stores (50 managed Redis, 50 external) | {STORES} |\n\
         | time until all 100 had a status | {:.1} s |\n\
         | webhook requests (direct HTTPS, {CONNECTIONS} keep-alive connections) | {} |\n\
         | webhook latency p50 / p90 / p99 / max | {} / {} / {} / {} |\n\
         | Pod create through the API server (dry run, webhook included) p50 / p99 | {} / {} |\n\
         | operator RSS idle with 100 stores | {:.1} MiB |\n\
         | operator RSS after the load / peak (VmHWM) | {:.1} MiB / {:.1} MiB |\n",
        reconcile_all.as_secs_f64(),
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(p99),
        ms(*lat.last().expect("latencies")),
        ms(percentile(&e2e, 0.5)),
        ms(percentile(&e2e, 0.99)),
        rss_idle as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    println!("{report}");
    if let Ok(path) = std::env::var("BENCH_OUT") {
        std::fs::write(&path, &report).expect("write report");
    }
    assert!(
        p99 <= Duration::from_millis(10),
        "webhook p99 {} over 10 ms",
        ms(p99)
    );
    assert!(hwm <= 50 * 1024, "operator peak RSS {hwm} KiB over 50 MiB");
    drop(op);
    let _ = kube::api::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete("bench", &Default::default())
        .await;
}
