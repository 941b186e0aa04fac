//! The `odoo-session-sidecar` binary: settings, logging, and the listeners' lifetime.

mod drain;
mod import;
mod serve;

use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use odoo_session_sidecar::config::{Args, Driver, Listen, LogFormat, Settings};
use odoo_session_sidecar::http::{health_router, router, AppState};
use odoo_session_sidecar::store;

use serve::{Connections, Listener};

/// See the dependency's comment in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Once the sidecar stops serving, the longest wait for requests still in flight (a large
/// identifier batch, a client that sent half a request and went silent) before exiting anyway.
const FINISH_LIMIT: Duration = Duration::from_secs(5);

/// Crates whose debug and trace lines show what clients sent (SQL statements with their
/// parameters, Redis commands, request bytes), hence sids and session data. With a
/// `debug` or `trace` default level they stay at `info` unless a directive names them.
const CAPPED_TARGETS: &[&str] = &[
    "tokio_postgres",
    "postgres_protocol",
    "deadpool_postgres",
    "redis",
    "hyper",
    "hyper_util",
    "axum",
    "tower",
];

/// The filter of `DKN_AUTH_LOG_LEVEL`. Stricter than tracing's own syntax: a bare word must
/// be a level, as `verbose` or `warning` would otherwise mean "the target of that name at
/// every level" and hide every other line. A default level above `info` leaves
/// `CAPPED_TARGETS` at `info` unless the text names them (`debug,tokio_postgres=debug`).
fn log_filter(text: &str) -> Result<EnvFilter, String> {
    let invalid = |why: String| {
        format!(
            "DKN_AUTH_LOG_LEVEL={text:?} is invalid: expected a level (off, error, warn, info, debug, trace) or target=level directives separated by commas{why}"
        )
    };
    let mut default_level: Option<LevelFilter> = None;
    let mut named: Vec<&str> = Vec::new();
    for directive in text.split(',').map(str::trim) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if directive.is_empty() {
            return Err(invalid(String::new()));
        }
        if bare {
            let level = directive
                .parse::<LevelFilter>()
                .map_err(|_| invalid(String::new()))?;
            default_level = Some(level);
        } else {
            let end = directive.find(['=', '[']).unwrap_or(directive.len());
            named.push(&directive[..end]);
        }
    }
    let mut full = text.to_owned();
    if default_level.is_some_and(|l| l > LevelFilter::INFO) {
        for target in CAPPED_TARGETS.iter().filter(|t| !named.contains(t)) {
            full.push_str(&format!(",{target}=info"));
        }
    }
    EnvFilter::builder()
        .parse(&full)
        .map_err(|e| invalid(format!(" ({e})")))
}

fn init_tracing(settings: &Settings, filter: EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "import") {
        return import::main(argv[1..].to_vec());
    }
    let args = Args::parse_from(argv);
    let settings = match Settings::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("odoo-session-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match log_filter(&settings.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("odoo-session-sidecar: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings, filter);
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
    let outcome = runtime.block_on(run(settings));
    // A backend connect blocked in a name look-up must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
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
    /// A setting refused (by the driver, or a socket path that is not ours to replace):
    /// same exit code as other setting errors.
    Config(String),
    Serve(String),
}

/// A Unix socket path may be replaced only when it is a stale socket: never a regular
/// file, a directory or a link, and never a socket another process still serves.
fn clear_socket_path(path: &Path) -> Result<(), Failure> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Failure::Config(format!(
            "DKN_AUTH_SOCKET={shown}: cannot inspect the path: {e}"
        ))),
        Ok(meta) if !meta.file_type().is_socket() => Err(Failure::Config(format!(
            "DKN_AUTH_SOCKET={shown}: the path exists and is not a socket; refusing to replace it (remove it or choose another path)"
        ))),
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(Failure::Config(format!(
                    "DKN_AUTH_SOCKET={shown}: another process is serving on this socket"
                )));
            }
            std::fs::remove_file(path).map_err(|e| {
                Failure::Serve(format!("DKN_AUTH_SOCKET={shown}: cannot replace: {e}"))
            })
        }
    }
}

/// Connecting to a Unix socket needs write permission on it. The sidecar and Odoo run as
/// different users (in a Pod: uid 65532 and Odoo's), so the socket is read-write for every
/// user, as PostgreSQL's is by default, whatever the umask: who can connect is decided by
/// who can reach the directory (in a Pod, the emptyDir only the Odoo containers mount).
fn open_to_every_user(path: &Path) -> Result<(), Failure> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|e| {
        Failure::Serve(format!(
            "DKN_AUTH_SOCKET={}: cannot make the socket writable for Odoo's user: {e}",
            path.display()
        ))
    })
}

async fn run(settings: Settings) -> Result<(), Failure> {
    let signals = drain::Signals::new();
    if let Listen::Unix(path) = &settings.listen {
        clear_socket_path(path)?;
    }
    let store = store::open(&settings).map_err(Failure::Config)?;
    let state = AppState::new(store, &settings);
    let driver = state.store.driver_name();
    let backend_connections = match settings.driver {
        Driver::Memory => 0,
        // Endings' own connections (an eighth, 1 to 4) and one Sentinel connection each.
        Driver::Redis => settings.redis_max_conn + 4 + 8,
        Driver::Db => settings.db_max_conn,
    };
    let open_files = serve::open_file_limit();
    let cap = serve::session_budget(open_files, backend_connections);
    if cap < 64 {
        tracing::warn!(
            open_files,
            max_connections = cap,
            "the open-file limit leaves the session listener only {cap} connections"
        );
    }
    let session_conns = Arc::new(Connections::new("session", cap, state.metrics.clone()));
    // Bind everything before serving anything: ready means every listener is up.
    let session_listener =
        match &settings.listen {
            Listen::Tcp(addr) => Listener::Tcp(TcpListener::bind(addr).await.map_err(|e| {
                Failure::Serve(format!("DKN_AUTH_LISTEN={addr}: cannot listen: {e}"))
            })?),
            Listen::Unix(path) => {
                let listener = UnixListener::bind(path).map_err(|e| {
                    Failure::Serve(format!(
                        "DKN_AUTH_SOCKET={}: cannot listen: {e}",
                        path.display()
                    ))
                })?;
                open_to_every_user(path)?;
                Listener::Unix(listener)
            }
        };
    // The health listener serves through the drain and ends with the process: its stop
    // never comes.
    let (_health_stop, health_stop_rx) = watch::channel(false);
    if let Some(addr) = settings.health_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Failure::Serve(format!("DKN_AUTH_HEALTH_LISTEN={addr}: cannot listen: {e}"))
        })?;
        tracing::info!(
            %addr,
            max_connections = serve::HEALTH_CONNECTIONS,
            "serving health, readiness and metrics"
        );
        let conns = Arc::new(Connections::new(
            "health",
            serve::HEALTH_CONNECTIONS,
            state.metrics.clone(),
        ));
        let health = health_router(state.clone());
        tokio::spawn(serve::serve(
            Listener::Tcp(listener),
            health,
            conns,
            health_stop_rx,
        ));
    }
    state.spawn_backend_watch();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(drain::lifecycle(
        signals,
        state.clone(),
        session_conns.clone(),
        settings.drain,
        stop_tx,
    ));
    let app = router(state);
    let shown = listen_text(&settings.listen);
    match &settings.listen {
        Listen::Tcp(_) => tracing::info!(addr = %shown, driver, max_connections = cap, "serving"),
        Listen::Unix(_) => {
            tracing::info!(socket = %shown, driver, max_connections = cap, "serving")
        }
    }
    serve::serve(session_listener, app, session_conns.clone(), stop_rx).await;
    if let Listen::Unix(path) = &settings.listen {
        let ours = std::fs::symlink_metadata(path)
            .map(|m| m.file_type().is_socket())
            .unwrap_or(false);
        if ours {
            let _ = std::fs::remove_file(path);
        }
    }
    if !session_conns.wait_closed(FINISH_LIMIT).await {
        tracing::warn!(
            "requests still unfinished {} s after the stop (a large identifier batch, or a client that sent half a request): exiting without them",
            FINISH_LIMIT.as_secs()
        );
    }
    Ok(())
}

fn listen_text(listen: &Listen) -> String {
    match listen {
        Listen::Tcp(addr) => addr.to_string(),
        Listen::Unix(path) => path.display().to_string(),
    }
}
