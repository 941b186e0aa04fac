//! odoo-session-operator: the controller for `OdooSessionStore` and the sidecar injector.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use clap::{Parser, ValueEnum};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Client;
use tracing::{error, info, warn};

use odoo_session_operator::builders::{sidecar, Defaults};
use odoo_session_operator::crd::OdooSessionStore;
use odoo_session_operator::leader::Elector;
use odoo_session_operator::metrics::Metrics;
use odoo_session_operator::reconcile::{self, apply::ssa, Context};
use odoo_session_operator::watch::{self, Scope};
use odoo_session_operator::webhook::{certs, config, server};
use odoo_session_operator::{Error, Result};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CertMode {
    /// Generate a CA and serving certificate, keep them in a Secret, patch the caBundle.
    Generate,
    /// Read tls.crt/tls.key from --cert-dir (cert-manager); the caBundle is left to cert-manager.
    Files,
}

/// What the operator writes of its MutatingWebhookConfiguration (one writer per field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WebhookConfigMode {
    /// The chart owns the configuration; the operator server-side applies only its
    /// webhook's `clientConfig.caBundle` (cert mode `generate`, or a `ca.crt` in --cert-dir).
    CaBundle,
    /// The operator applies the whole configuration from its flags (run without the chart,
    /// e.g. outside the cluster with --webhook-url).
    Full,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

/// Operator for OdooSessionStore objects and injector of the odoo-ha-session sidecar.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Namespace the operator runs in (TLS Secret, Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "odoo-ha-system")]
    namespace: String,
    /// Namespaces whose stores the operator reconciles, comma-separated (namespaced
    /// install: it then needs Roles there only). Empty: every namespace.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Seconds the webhook keeps serving after SIGTERM (readiness already failing), so the
    /// API server's calls in flight and those routed before the endpoint drops are answered.
    #[arg(long, env = "SHUTDOWN_DRAIN_SECONDS", default_value_t = 5)]
    shutdown_drain_seconds: u64,
    /// This replica's identity in leader election.
    #[arg(long, env = "POD_NAME", default_value = "odoo-session-operator")]
    pod_name: String,
    /// Address of the webhook's HTTPS listener.
    #[arg(long, env = "WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    webhook_listen: SocketAddr,
    /// Address of the /metrics, /healthz and /readyz listener (plain HTTP).
    #[arg(long, env = "METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    metrics_listen: SocketAddr,
    /// Do not serve the webhook (controller only).
    #[arg(long, env = "DISABLE_WEBHOOK")]
    disable_webhook: bool,
    /// Do not run the controller (webhook only).
    #[arg(long, env = "DISABLE_CONTROLLER")]
    disable_controller: bool,
    /// Name of the MutatingWebhookConfiguration the operator patches (or applies).
    #[arg(
        long,
        env = "WEBHOOK_CONFIG_NAME",
        default_value = "odoo-session-operator"
    )]
    webhook_config_name: String,
    /// Write nothing of the MutatingWebhookConfiguration (cert-manager fills its caBundle).
    #[arg(long, env = "UNMANAGED_WEBHOOK_CONFIG")]
    unmanaged_webhook_config: bool,
    /// What the operator writes of the MutatingWebhookConfiguration: `ca-bundle` (the chart
    /// owns the rest) or `full` (no chart; the failure policy and timeout flags apply).
    #[arg(
        long,
        env = "WEBHOOK_CONFIG_MODE",
        value_enum,
        default_value = "ca-bundle"
    )]
    webhook_config_mode: WebhookConfigMode,
    /// Service in front of the webhook (in --namespace).
    #[arg(long, env = "WEBHOOK_SERVICE", default_value = "odoo-session-operator")]
    webhook_service: String,
    /// Port of that Service.
    #[arg(long, env = "WEBHOOK_SERVICE_PORT", default_value_t = 443)]
    webhook_service_port: i32,
    /// Use this URL instead of the Service (operator run outside the cluster).
    #[arg(long, env = "WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// failurePolicy of the webhook (mode `full` only): Ignore (Pods start without the sidecar
    /// if the webhook is down; the operator reports them) or Fail.
    #[arg(long, env = "WEBHOOK_FAILURE_POLICY", default_value = "Ignore", value_parser = ["Ignore", "Fail"])]
    webhook_failure_policy: String,
    /// timeoutSeconds of the webhook (mode `full` only; 1 to 10).
    #[arg(long, env = "WEBHOOK_TIMEOUT_SECONDS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=10))]
    webhook_timeout_seconds: i32,
    /// Where the serving certificate comes from.
    #[arg(long, env = "CERT_MODE", value_enum, default_value = "generate")]
    cert_mode: CertMode,
    /// Directory with tls.crt and tls.key (cert mode `files`).
    #[arg(long, env = "CERT_DIR", default_value = "/tls")]
    cert_dir: PathBuf,
    /// `<namespace>/<Certificate>` for cert-manager's CA injection (cert mode `files`).
    #[arg(long, env = "CERT_MANAGER_CERTIFICATE")]
    cert_manager_certificate: Option<String>,
    /// Secret keeping the generated CA and certificate (cert mode `generate`).
    #[arg(
        long,
        env = "WEBHOOK_TLS_SECRET",
        default_value = "odoo-session-operator-webhook-tls"
    )]
    webhook_tls_secret: String,
    /// Sidecar image used when a store names none.
    #[arg(long, env = "DEFAULT_SIDECAR_IMAGE", default_value_t = Defaults::default().sidecar_image)]
    default_sidecar_image: String,
    /// Redis image of managed Redis backends.
    #[arg(long, env = "DEFAULT_REDIS_IMAGE", default_value_t = Defaults::default().redis_image)]
    default_redis_image: String,
    /// PostgreSQL image of managed PostgreSQL backends.
    #[arg(long, env = "DEFAULT_POSTGRES_IMAGE", default_value_t = Defaults::default().postgres_image)]
    default_postgres_image: String,
    /// Run the controller without leader election (single replica only).
    #[arg(long, env = "DISABLE_LEADER_ELECTION")]
    disable_leader_election: bool,
    /// Name of the leader election Lease (in --namespace).
    #[arg(long, env = "LEASE_NAME", default_value = "odoo-session-operator")]
    lease_name: String,
    /// Lease duration in seconds.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

async fn metrics_handler(
    State(h): State<Health>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn")
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_tracing(args.log_format);
    // kube's rustls client panics without a process-wide provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, label = e.metric_label(), "operator stopped");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Current serving certificate, key and (when the operator owns the caBundle) CA.
async fn load_certs(args: &Args, client: &Client) -> Result<(String, String, Option<String>)> {
    match args.cert_mode {
        CertMode::Generate => {
            let names = certs::service_names(&args.webhook_service, &args.namespace);
            let bundle =
                certs::ensure(client, &args.namespace, &args.webhook_tls_secret, &names).await?;
            Ok((bundle.cert_pem, bundle.key_pem, Some(bundle.ca_pem)))
        }
        CertMode::Files => {
            let read = |f: &str| {
                std::fs::read_to_string(args.cert_dir.join(f)).map_err(|e| {
                    Error::Config(format!(
                        "cannot read {}: {e}",
                        args.cert_dir.join(f).display()
                    ))
                })
            };
            let ca = read("ca.crt")
                .ok()
                .filter(|_| args.cert_manager_certificate.is_none());
            Ok((read("tls.crt")?, read("tls.key")?, ca))
        }
    }
}

/// Writes this operator's share of the webhook configuration (see `WebhookConfigMode`).
async fn apply_webhook_config(
    args: &Args,
    client: &Client,
    ca_bundle: Option<String>,
) -> Result<()> {
    if args.webhook_config_mode == WebhookConfigMode::CaBundle {
        let Some(ca) = ca_bundle else {
            return Ok(());
        };
        config::patch_ca_bundle(client, &args.webhook_config_name, &ca).await?;
        tracing::debug!(name = %args.webhook_config_name, "applied the caBundle of the MutatingWebhookConfiguration");
        return Ok(());
    }
    let params = config::Params {
        name: args.webhook_config_name.clone(),
        target: match &args.webhook_url {
            Some(u) => config::Target::Url(u.clone()),
            None => config::Target::Service {
                namespace: args.namespace.clone(),
                name: args.webhook_service.clone(),
                port: args.webhook_service_port,
            },
        },
        ca_bundle,
        failure_policy: args.webhook_failure_policy.clone(),
        operator_namespace: args.namespace.clone(),
        cert_manager_certificate: args.cert_manager_certificate.clone(),
        timeout_seconds: args.webhook_timeout_seconds,
        watch_namespaces: Scope::parse(&args.watch_namespaces)?.namespaces().to_vec(),
    };
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.patch(
        &args.webhook_config_name,
        &ssa(),
        &Patch::Apply(&config::build(&params)),
    )
    .await?;
    info!(name = %args.webhook_config_name, "applied MutatingWebhookConfiguration");
    Ok(())
}

/// Picks up renewed certificates (our own renewal, another replica's, or cert-manager's)
/// without a restart, and keeps the caBundle in step: re-applied every minute even when
/// unchanged (a no-op for the API server), so a configuration re-created by the chart
/// (`helm upgrade --force`, a reinstall) or not there yet at start gets it back.
async fn refresh_certs(
    args: Arc<Args>,
    client: Client,
    cert: Arc<certs::ReloadableCert>,
    mut applied_ca: Option<String>,
) {
    let period = Duration::from_secs(60);
    loop {
        tokio::time::sleep(period).await;
        let (crt, key, ca) = match load_certs(&args, &client).await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "could not refresh the webhook certificate");
                continue;
            }
        };
        let reapply = args.webhook_config_mode == WebhookConfigMode::CaBundle;
        if !args.unmanaged_webhook_config && ca.is_some() && (reapply || ca != applied_ca) {
            match apply_webhook_config(&args, &client, ca.clone()).await {
                Ok(()) => {
                    if ca != applied_ca {
                        info!(name = %args.webhook_config_name, "caBundle of the webhook configuration updated");
                    }
                    applied_ca = ca
                }
                Err(e) => warn!(error = %e, "could not update the caBundle"),
            }
        }
        match cert.set(&crt, &key) {
            Ok(true) => info!("serving a renewed webhook certificate"),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "renewed webhook certificate unusable; keeping the current one")
            }
        }
    }
}

/// SIGTERM (the kubelet stopping the Pod) or Ctrl-C.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn run(args: Args) -> Result<()> {
    let args = Arc::new(args);
    let scope = Scope::parse(&args.watch_namespaces)?;
    match &scope {
        Scope::Cluster => info!("watching stores in every namespace"),
        Scope::Namespaces(list) => {
            info!(namespaces = ?list, "watching stores in these namespaces only")
        }
    }
    let client = Client::try_default().await?;
    let server_version = match client.apiserver_version().await {
        Ok(info) => sidecar::parse_version(&info.major, &info.minor),
        Err(e) => {
            warn!(error = %e, "cannot read the API server version; native sidecars only where a store says `always`");
            None
        }
    };
    info!(?server_version, "connected to the API server");
    let defaults = Defaults {
        sidecar_image: args.default_sidecar_image.clone(),
        redis_image: args.default_redis_image.clone(),
        postgres_image: args.default_postgres_image.clone(),
        server_version,
        operator_namespace: Some(args.namespace.clone()),
    };
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let webhook_ready = Arc::new(AtomicBool::new(false));

    let health = Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let health_router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let health_listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    info!(addr = %args.metrics_listen, "metrics and health listening");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(health_listener, health_router).await {
            error!(error = %e, "metrics server stopped");
        }
    });

    if !args.disable_webhook {
        // One cache per watched namespace: a namespaced operator may not list cluster-wide.
        let mut readers = Vec::new();
        for namespace in scope.targets() {
            let (reader, writer) = reflector::store::<OdooSessionStore>();
            let stream = reflector(
                writer,
                watcher(
                    watch::api::<OdooSessionStore>(&client, namespace),
                    watcher::Config::default().any_semantic(),
                ),
            )
            .default_backoff()
            .touched_objects();
            let ns = namespace.unwrap_or("*").to_string();
            tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(item) = stream.next().await {
                    if let Err(e) = item {
                        warn!(error = %e, namespace = %ns, "store watch error");
                    }
                }
            });
            readers.push(reader);
        }
        let (crt, key, ca_bundle) = load_certs(&args, &client).await?;
        let cert = certs::ReloadableCert::new(&crt, &key)?;
        let tls = certs::server_config(cert.clone())?;
        let state = Arc::new(server::WebhookState {
            client: client.clone(),
            stores: readers.clone(),
            defaults: defaults.clone(),
            metrics: metrics.clone(),
            scope: scope.clone(),
        });
        let listener = server::bind(args.webhook_listen).await?;
        tokio::spawn(server::serve_tls(listener, tls, server::router(state)));
        let mut applied_ca = None;
        if !args.unmanaged_webhook_config {
            // The chart creates the configuration in the same release as this Deployment: it
            // may land a moment after the operator starts. The refresh loop keeps trying.
            for attempt in 1..=10 {
                match apply_webhook_config(&args, &client, ca_bundle.clone()).await {
                    Ok(()) => {
                        info!(name = %args.webhook_config_name, mode = ?args.webhook_config_mode, "wrote the webhook configuration");
                        applied_ca = ca_bundle.clone();
                        break;
                    }
                    Err(e) if attempt < 10 => {
                        warn!(error = %e, attempt, "cannot write the webhook configuration yet; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot write the webhook configuration; retrying every minute")
                    }
                }
            }
        }
        tokio::spawn(refresh_certs(
            args.clone(),
            client.clone(),
            cert,
            applied_ca,
        ));
        // Pods created before the cache filled would be looked up one by one: wait for it.
        let filled = futures::future::join_all(readers.iter().map(|r| r.wait_until_ready()));
        if tokio::time::timeout(Duration::from_secs(30), filled)
            .await
            .is_err()
        {
            warn!("store cache not ready after 30s; serving with API lookups");
        }
        webhook_ready.store(true, Ordering::Relaxed);
    }
    ready.store(true, Ordering::Relaxed);

    if args.disable_controller {
        shutdown_signal().await;
        drain(&args, &ready).await;
        return Ok(());
    }
    let reporter = Reporter {
        controller: "odoo-session-operator".into(),
        instance: Some(args.pod_name.clone()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        defaults,
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        webhook_ready: if args.disable_webhook {
            Arc::new(AtomicBool::new(true))
        } else {
            webhook_ready
        },
    });
    // One controller per watched namespace (or one for all); each stops on SIGTERM after
    // its reconciles in flight.
    let controllers = futures::future::join_all(
        scope
            .targets()
            .into_iter()
            .map(|namespace| reconcile::run(ctx.clone(), namespace)),
    )
    .map(|_| ());
    let outcome = if args.disable_leader_election {
        controllers.await;
        Ok(())
    } else {
        let elector = Elector::new(
            client.clone(),
            &args.namespace,
            &args.lease_name,
            &args.pod_name,
            Duration::from_secs(args.lease_duration_seconds.max(3)),
        );
        tokio::select! {
            () = elector.acquire() => {
                metrics.leader.set(1);
                let outcome = tokio::select! {
                    () = controllers => Ok(()),
                    lost = elector.keep() => Err(lost),
                };
                metrics.leader.set(0);
                if outcome.is_ok() {
                    elector.release().await;
                }
                outcome
            }
            // A replica waiting for the Lease stops too (and drains its webhook).
            () = shutdown_signal() => Ok(()),
        }
    };
    if outcome.is_ok() {
        drain(&args, &ready).await;
    }
    outcome
}

/// After SIGTERM: readiness fails (the endpoint goes), the webhook keeps answering for
/// `--shutdown-drain-seconds`, so no admission call meets a closed port during a rollout.
async fn drain(args: &Args, ready: &AtomicBool) {
    ready.store(false, Ordering::Relaxed);
    if args.disable_webhook || args.shutdown_drain_seconds == 0 {
        return;
    }
    info!(
        seconds = args.shutdown_drain_seconds,
        "stopping: the webhook serves while its endpoint drains"
    );
    tokio::time::sleep(Duration::from_secs(args.shutdown_drain_seconds)).await;
}
