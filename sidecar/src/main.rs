use std::fmt::Debug;
use std::io::IsTerminal;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::serve::Listener;
use axum::Router;
use clap::Parser;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::EnvFilter;

use odoo_session_sidecar::config::{Args, Listen, LogFormat, Settings};
use odoo_session_sidecar::http::{health_router, router, AppState};
use odoo_session_sidecar::store;

/// During a drain (`DKN_AUTH_DRAIN_SECONDS` > 0), this long without any client connection
/// to the session listener ends it: the app of the Pod has closed its connections.
const QUIET: Duration = Duration::from_secs(2);

/// Once the sidecar stops serving, the longest wait for requests still in flight (a long
/// lease wait, a client that sent half a request and went silent) before exiting anyway.
const FINISH_LIMIT: Duration = Duration::from_secs(5);

/// How often a drain looks at the connection count.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// The filter of `DKN_AUTH_LOG_LEVEL`. Stricter than tracing's own syntax: a bare word must
/// be a level, as `verbose` or `warning` would otherwise mean "the target of that name at
/// every level" and hide every other line.
fn log_filter(text: &str) -> Result<EnvFilter, String> {
    let invalid = |why: String| {
        format!(
            "DKN_AUTH_LOG_LEVEL={text:?} is invalid: expected a level (off, error, warn, info, debug, trace) or target=level directives separated by commas{why}"
        )
    };
    for directive in text.split(',').map(str::trim) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if directive.is_empty() || (bare && directive.parse::<LevelFilter>().is_err()) {
            return Err(invalid(String::new()));
        }
    }
    EnvFilter::builder()
        .parse(text)
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
    let args = Args::parse();
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

/// Client connections open on the session listener, and when that number last changed.
struct Connections {
    open: AtomicUsize,
    last_change: Mutex<Instant>,
}

impl Connections {
    fn new() -> Self {
        Connections {
            open: AtomicUsize::new(0),
            last_change: Mutex::new(Instant::now()),
        }
    }

    fn opened(&self) {
        let mut t = self.last_change.lock();
        self.open.fetch_add(1, Ordering::AcqRel);
        *t = Instant::now();
    }

    fn closed(&self) {
        let mut t = self.last_change.lock();
        self.open.fetch_sub(1, Ordering::AcqRel);
        *t = Instant::now();
    }

    /// Open connections, and how long none has been open (zero while some are).
    fn quiet_for(&self, not_before: Instant) -> (usize, Duration) {
        let t = self.last_change.lock();
        let open = self.open.load(Ordering::Acquire);
        if open > 0 {
            return (open, Duration::ZERO);
        }
        (0, Instant::now().duration_since((*t).max(not_before)))
    }
}

/// A listener that counts the connections it accepted and that are still open.
struct Counted<L> {
    inner: L,
    conns: Arc<Connections>,
}

impl<L: Listener> Listener for Counted<L> {
    type Io = CountedIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        self.conns.opened();
        let io = CountedIo {
            io,
            conns: self.conns.clone(),
        };
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that is counted as closed when the server drops it.
struct CountedIo<I> {
    io: I,
    conns: Arc<Connections>,
}

impl<I> Drop for CountedIo<I> {
    fn drop(&mut self) {
        self.conns.closed();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// SIGTERM and SIGINT, registered at start so an early signal is not lost.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                None
            }
        };
        Signals {
            term: listen(SignalKind::terminate(), "SIGTERM"),
            int: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The next SIGTERM or SIGINT, by name.
    async fn next(&mut self) -> &'static str {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => "SIGTERM",
            _ = one(&mut self.int) => "SIGINT",
        }
    }
}

/// Waits for the signal, drains if configured, then tells the server to stop.
async fn lifecycle(
    mut signals: Signals,
    state: AppState,
    conns: Arc<Connections>,
    drain: Duration,
    stop: watch::Sender<bool>,
) {
    let name = signals.next().await;
    state.start_draining();
    if drain.is_zero() {
        tracing::info!("{name}: shutting down: finishing requests in flight");
        let _ = stop.send(true);
        return;
    }
    let start = Instant::now();
    let deadline = start + drain;
    let (open, _) = conns.quiet_for(start);
    tracing::info!(
        signal = name,
        open_connections = open,
        drain_seconds = drain.as_secs(),
        "{name}: draining: still serving until no client has been connected for {} s, at most {} s",
        QUIET.as_secs(),
        drain.as_secs()
    );
    loop {
        let (open, quiet) = conns.quiet_for(start);
        let elapsed = start.elapsed().as_secs_f64();
        if open == 0 && quiet >= QUIET {
            tracing::info!(
                reason = "quiet",
                drain_elapsed_seconds = elapsed,
                "drain over after {elapsed:.1} s: no client connected for {} s; finishing requests in flight",
                QUIET.as_secs()
            );
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                reason = "deadline",
                open_connections = open,
                drain_elapsed_seconds = elapsed,
                "drain over: DKN_AUTH_DRAIN_SECONDS={} reached with {open} client connections open; closing them after the requests in flight",
                drain.as_secs()
            );
            break;
        }
        tokio::select! {
            again = signals.next() => {
                tracing::info!(
                    reason = "signal",
                    open_connections = open,
                    drain_elapsed_seconds = elapsed,
                    "drain over: second signal ({again}); finishing requests in flight"
                );
                break;
            }
            _ = tokio::time::sleep(DRAIN_POLL) => {}
        }
    }
    let _ = stop.send(true);
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: stop too.
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves the session API until told to stop, then for at most `FINISH_LIMIT` more while
/// requests in flight finish.
async fn serve_session_api<L>(
    listener: L,
    app: Router,
    stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    L: Listener,
    L::Addr: Debug,
{
    let server = axum::serve(listener, app).with_graceful_shutdown(stopped(stop.clone()));
    let bound = async {
        stopped(stop).await;
        tokio::time::sleep(FINISH_LIMIT).await;
    };
    tokio::select! {
        r = server => r,
        _ = bound => {
            tracing::warn!(
                "requests still unfinished {} s after the stop (a long lease wait, or a client that sent half a request): exiting without them",
                FINISH_LIMIT.as_secs()
            );
            Ok(())
        }
    }
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

async fn run(settings: Settings) -> Result<(), Failure> {
    let signals = Signals::new();
    if let Listen::Unix(path) = &settings.listen {
        clear_socket_path(path)?;
    }
    let store = store::open(&settings).map_err(Failure::Config)?;
    let state = AppState::new(store, &settings);
    let driver = state.store.driver_name();
    let conns = Arc::new(Connections::new());
    // Bind everything before serving anything: ready means every listener is up.
    let session_listener = match &settings.listen {
        Listen::Tcp(addr) => {
            SessionListener::Tcp(TcpListener::bind(addr).await.map_err(|e| {
                Failure::Serve(format!("DKN_AUTH_LISTEN={addr}: cannot listen: {e}"))
            })?)
        }
        Listen::Unix(path) => SessionListener::Unix(UnixListener::bind(path).map_err(|e| {
            Failure::Serve(format!(
                "DKN_AUTH_SOCKET={}: cannot listen: {e}",
                path.display()
            ))
        })?),
    };
    if let Some(addr) = settings.health_listen {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Failure::Serve(format!("DKN_AUTH_HEALTH_LISTEN={addr}: cannot listen: {e}"))
        })?;
        tracing::info!(%addr, "serving health, readiness and metrics");
        let health = health_router(state.clone());
        // Serves through the drain; ends with the process.
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, health).await {
                tracing::error!(error = %e, "health listener stopped");
            }
        });
    }
    state.spawn_backend_watch();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(lifecycle(
        signals,
        state.clone(),
        conns.clone(),
        settings.drain,
        stop_tx,
    ));
    let app = router(state);
    match session_listener {
        SessionListener::Tcp(listener) => {
            tracing::info!(addr = %listen_text(&settings.listen), driver, "serving");
            let listener = Counted {
                inner: listener,
                conns,
            };
            serve_session_api(listener, app, stop_rx)
                .await
                .map_err(|e| Failure::Serve(e.to_string()))
        }
        SessionListener::Unix(listener) => {
            tracing::info!(socket = %listen_text(&settings.listen), driver, "serving");
            let listener = Counted {
                inner: listener,
                conns,
            };
            let served = serve_session_api(listener, app, stop_rx)
                .await
                .map_err(|e| Failure::Serve(e.to_string()));
            if let Listen::Unix(path) = &settings.listen {
                let ours = std::fs::symlink_metadata(path)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false);
                if ours {
                    let _ = std::fs::remove_file(path);
                }
            }
            served
        }
    }
}

enum SessionListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

fn listen_text(listen: &Listen) -> String {
    match listen {
        Listen::Tcp(addr) => addr.to_string(),
        Listen::Unix(path) => path.display().to_string(),
    }
}
