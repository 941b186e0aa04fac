//! The shared backend's state as this sidecar sees it: kept by a light background ping and
//! by the outcome of every real call, shown by `/readyz`'s body and `dkn_auth_backend_up`,
//! and logged once per change (a warning when it stops answering, an info line when it is
//! back, with the length of the outage).

use std::fmt::Display;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::Metrics;

/// Time between two background pings of the backend (each bounded by the backend timeout).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Once the backend that answered is seen down, only calls started this long after count as
/// "back": a dying backend answers some calls and fails others for a moment (PostgreSQL's
/// backends outlive a killed postmaster), which would otherwise log a flurry of changes.
pub const SETTLE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// Not asked yet (the first ping runs at start).
    Unknown,
    Up,
    Down,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Unknown => "unknown",
            BackendState::Up => "up",
            BackendState::Down => "down",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => BackendState::Up,
            2 => BackendState::Down,
            _ => BackendState::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            BackendState::Unknown => 0,
            BackendState::Up => 1,
            BackendState::Down => 2,
        }
    }
}

struct Times {
    /// When the state last changed (or the start).
    changed: Instant,
    /// While down: calls started before this do not count as "back".
    settled: Instant,
}

pub struct BackendHealth {
    /// The state as a number, read without a lock on every request.
    state: AtomicU8,
    /// Changes happen under this lock.
    times: Mutex<Times>,
    metrics: Arc<Metrics>,
}

impl BackendHealth {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        metrics.backend_up.set(0);
        BackendHealth {
            state: AtomicU8::new(BackendState::Unknown.to_u8()),
            times: Mutex::new(Times {
                changed: Instant::now(),
                settled: Instant::now(),
            }),
            metrics,
        }
    }

    pub fn state(&self) -> BackendState {
        BackendState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Time since the state last changed (or since the start).
    pub fn since_change(&self) -> Duration {
        self.times.lock().changed.elapsed()
    }

    /// A call that started at `started` reached the backend (whatever it answered).
    pub fn reached(&self, started: Instant) {
        self.set(BackendState::Up, started, None);
    }

    /// A call that started at `started` could not reach the backend or timed out.
    pub fn unreachable(&self, started: Instant, error: &dyn Display) {
        self.set(BackendState::Down, started, Some(error));
    }

    fn set(&self, to: BackendState, started: Instant, error: Option<&dyn Display>) {
        if self.state() == to {
            return;
        }
        let mut times = self.times.lock();
        let from = self.state();
        // A call that began before the last change says nothing new: a request answered
        // just before the backend died, or one that timed out across its return, must
        // not flip the state back (and log once more).
        if from == to || started < times.changed {
            return;
        }
        if from == BackendState::Down && started < times.settled {
            return;
        }
        self.state.store(to.to_u8(), Ordering::Release);
        let now = Instant::now();
        let lasted = now.duration_since(times.changed);
        times.changed = now;
        times.settled = if from == BackendState::Up {
            now + SETTLE
        } else {
            now
        };
        drop(times);
        let m = &self.metrics;
        m.backend_up.set(i64::from(to == BackendState::Up));
        if from != BackendState::Unknown {
            m.backend_transitions.inc();
        }
        let secs = lasted.as_secs_f64();
        let error = error.map(|e| e.to_string()).unwrap_or_default();
        match (from, to) {
            (BackendState::Down, BackendState::Up) => tracing::info!(
                down_seconds = secs,
                "backend reachable again after {secs:.1} s"
            ),
            (_, BackendState::Up) => tracing::info!("backend reachable"),
            (BackendState::Up, _) => tracing::warn!(
                error,
                up_seconds = secs,
                "backend unreachable: session requests answer 503 until it is back"
            ),
            _ => tracing::warn!(
                error,
                "backend unreachable since the start: session requests answer 503 until it answers"
            ),
        }
    }
}
