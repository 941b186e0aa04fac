//! SIGTERM and SIGINT, and the drain between the signal and the stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use odoo_session_sidecar::http::AppState;

use crate::serve::Connections;

/// During a drain (`DKN_AUTH_DRAIN_SECONDS` > 0), this long without any client connection
/// to the session listener ends it: the app of the Pod has closed its connections.
pub const QUIET: Duration = Duration::from_secs(2);

/// How often a drain looks at the connection count.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// SIGTERM and SIGINT, registered at start so an early signal is not lost.
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Self {
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
pub async fn lifecycle(
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
