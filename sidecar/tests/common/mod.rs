//! Starts a real sidecar (the library's router on a loopback port) over a real backend.
#![allow(dead_code)]

pub mod process;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use clap::Parser;
use odoo_ha_testkit::{Client, PostgresServer, RedisCluster, RedisServer};
use odoo_session_sidecar::config::{Args, Settings};
use odoo_session_sidecar::http::{router, AppState};
use odoo_session_sidecar::store;
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Memory,
    Redis,
    /// Six nodes, started once per test binary that uses it.
    RedisCluster,
    Postgres,
}

static REDIS: OnceLock<RedisServer> = OnceLock::new();
static POSTGRES: OnceLock<PostgresServer> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn shared_redis() -> &'static RedisServer {
    REDIS.get_or_init(RedisServer::start)
}

pub fn shared_cluster() -> &'static RedisCluster {
    CLUSTER.get_or_init(RedisCluster::start)
}

pub fn shared_postgres() -> &'static PostgresServer {
    POSTGRES.get_or_init(PostgresServer::start)
}

pub struct Harness {
    pub addr: String,
    pub state: AppState,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    watch: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Flags for a backend; each harness gets its own prefix so tests sharing a server never
/// see each other's keys.
pub fn backend_flags(backend: Backend) -> Vec<String> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let mut flags = vec![format!("--prefix=t{pid}x{n}:")];
    match backend {
        Backend::Memory => flags.push("--driver=memory".into()),
        Backend::Redis => {
            flags.push("--driver=redis".into());
            flags.push(format!("--redis-uri={}", shared_redis().url()));
        }
        Backend::RedisCluster => {
            flags.push("--driver=redis".into());
            flags.push(format!("--redis-uri={}", shared_cluster().uri()));
        }
        Backend::Postgres => {
            flags.push("--driver=db".into());
            flags.push(format!("--db-uri={}", shared_postgres().url()));
        }
    }
    flags
}

impl Harness {
    pub async fn start(backend: Backend) -> Self {
        Self::with_flags(backend_flags(backend)).await
    }

    pub async fn with_flags(flags: Vec<String>) -> Self {
        let h = Self::serving(flags).await;
        h.wait_ready().await;
        h
    }

    /// Serving, without waiting for the backend (which may be down).
    pub async fn serving(flags: Vec<String>) -> Self {
        let mut argv = vec!["odoo-session-sidecar".to_string()];
        argv.extend(flags);
        let settings = Settings::from_args(&Args::parse_from(argv)).expect("settings");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            ))
            .with_test_writer()
            .try_init();
        let store = store::open(&settings).expect("store");
        let state = AppState::new(store, &settings);
        // As the binary does: the backend state is known without requests.
        let watch = state.spawn_backend_watch();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Harness {
            addr,
            state,
            _shutdown: tx,
            watch,
        }
    }

    /// Waits for the backend (a PostgreSQL schema is created in the background): plain
    /// `/readyz` does not, it says only that the sidecar serves.
    pub async fn wait_ready(&self) {
        let mut c = self.client();
        for _ in 0..200 {
            if let Ok(r) = c.get("/readyz?backend=1").await {
                if r.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("sidecar never became ready");
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr.clone())
    }
}

/// A fresh Odoo 14-17 style sid (40 lowercase hex).
pub fn legacy_sid() -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u64;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:016x}{:016x}{:08x}",
        t,
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        std::process::id()
    )
}

/// A fresh 42-character identifier.
pub fn identifier() -> String {
    let hex = legacy_sid();
    format!("{}Ab", hex)
}

/// An Odoo 18 style sid under the given identifier.
pub fn modern_sid(identifier: &str) -> String {
    let tail = format!("{}-_", legacy_sid());
    format!("{identifier}{tail}")
}

pub fn s(path: &str, sid: &str) -> String {
    format!("/v1/sessions/{sid}{path}")
}

pub fn data_of(reply: &odoo_ha_testkit::Reply) -> Value {
    reply.json()["data"].clone()
}
