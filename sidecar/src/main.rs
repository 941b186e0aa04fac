use std::process::ExitCode;

use clap::Parser;
use tokio::net::{TcpListener, UnixListener};

use odoo_session_sidecar::config::{Args, Listen, LogFormat, Settings};
use odoo_session_sidecar::http::{health_router, router, AppState};
use odoo_session_sidecar::store;

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("odoo-session-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings);
    // Redis and PostgreSQL TLS both use rustls; one provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("odoo-session-sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("odoo-session-sidecar: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Serve(e)) => {
            eprintln!("odoo-session-sidecar: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// A setting the backend driver refused: same exit code as other setting errors.
    Config(String),
    Serve(String),
}

async fn run(settings: Settings) -> Result<(), Failure> {
    let store = store::open(&settings).map_err(Failure::Config)?;
    let state = AppState::new(store, &settings);
    let driver = state.store.driver_name();
    if let Some(addr) = settings.health_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Failure::Serve(format!("DKN_AUTH_HEALTH_LISTEN={addr}: cannot listen: {e}"))
        })?;
        tracing::info!(%addr, "serving health, readiness and metrics");
        let health = health_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, health).await {
                tracing::error!(error = %e, "health listener stopped");
            }
        });
    }
    let app = router(state);
    match &settings.listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                Failure::Serve(format!("DKN_AUTH_LISTEN={addr}: cannot listen: {e}"))
            })?;
            tracing::info!(%addr, driver, "serving");
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(|e| Failure::Serve(e.to_string()))
        }
        Listen::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path).map_err(|e| {
                    Failure::Serve(format!(
                        "DKN_AUTH_SOCKET={}: cannot replace: {e}",
                        path.display()
                    ))
                })?;
            }
            let listener = UnixListener::bind(path).map_err(|e| {
                Failure::Serve(format!(
                    "DKN_AUTH_SOCKET={}: cannot listen: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(socket = %path.display(), driver, "serving");
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(|e| Failure::Serve(e.to_string()));
            let _ = std::fs::remove_file(path);
            served
        }
    }
}
