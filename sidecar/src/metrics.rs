//! Prometheus metrics served at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// A route as the router declares it (`/v1/sessions/{sid}`), or `unmatched`.
    pub route: &'static str,
    /// A standard method, or `other`: a closed set, so made-up methods add no series.
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `session` or `health`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub listener: &'static str,
    /// `header_timeout`, `idle` or `write_timeout`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Histogram>,
    pub backend_errors: Family<KindLabels, Counter>,
    pub writes: Family<KindLabels, Counter>,
    pub conflicts: Family<KindLabels, Counter>,
    pub backend_connections: Gauge,
    /// Client connections open, by listener.
    pub connections: Family<ListenerLabels, Gauge>,
    /// Connections refused because the listener's budget was full.
    pub connections_refused: Family<ListenerLabels, Counter>,
    /// Connections the sidecar closed for a time limit.
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// 1 while the backend answers, 0 while it does not or before the first answer.
    pub backend_up: Gauge,
    /// Changes between up and down since the start (the first state is not counted).
    pub backend_transitions: Counter,
    /// Seconds since the backend state last changed (or since the start); set when encoded.
    pub backend_state_seconds: Gauge<f64, AtomicU64>,
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~1.6 s: the request path is sub-millisecond when healthy.
    Histogram::new([
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 1.6,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        // The request metrics are `dkn_sidecar_*`; the backend state is `dkn_auth_backend_*`.
        let mut registry = Registry::default();
        let requests =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let backend_errors = Family::<KindLabels, Counter>::default();
        let writes = Family::<KindLabels, Counter>::default();
        let conflicts = Family::<KindLabels, Counter>::default();
        let backend_connections = Gauge::default();
        let connections = Family::<ListenerLabels, Gauge>::default();
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        let backend_up = Gauge::default();
        let backend_transitions = Counter::default();
        let backend_state_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "dkn_auth_backend_up",
            "1 while the shared backend answers this sidecar, 0 while it does not (or before its first answer)",
            backend_up.clone(),
        );
        registry.register(
            "dkn_auth_backend_transitions",
            "Changes of dkn_auth_backend_up between 1 and 0 since the sidecar started",
            backend_transitions.clone(),
        );
        registry.register(
            "dkn_auth_backend_state_seconds",
            "Seconds since dkn_auth_backend_up last changed (or since the sidecar started)",
            backend_state_seconds.clone(),
        );
        let sidecar = registry.sub_registry_with_prefix("dkn_sidecar");
        sidecar.register(
            "request_duration_seconds",
            "Time to answer a request, by route, method and status",
            requests.clone(),
        );
        sidecar.register(
            "backend_errors",
            "Backend operations that failed (unavailable = timeout or connection error)",
            backend_errors.clone(),
        );
        sidecar.register(
            "writes",
            "Session writes acknowledged, by kind",
            writes.clone(),
        );
        sidecar.register(
            "conflicts",
            "Writes refused by a version condition or a tombstone",
            conflicts.clone(),
        );
        sidecar.register(
            "backend_connections",
            "Backend connections open (Redis) or checked out (PostgreSQL)",
            backend_connections.clone(),
        );
        sidecar.register(
            "connections",
            "Client connections open, by listener (session or health)",
            connections.clone(),
        );
        sidecar.register(
            "connections_refused",
            "Connections answered 503 too_many_connections: the listener's budget was full",
            connections_refused.clone(),
        );
        sidecar.register(
            "connections_closed",
            "Connections closed by the sidecar for a time limit (header_timeout, idle, write_timeout)",
            connections_closed.clone(),
        );
        Metrics {
            registry,
            requests,
            backend_errors,
            writes,
            conflicts,
            backend_connections,
            connections,
            connections_refused,
            connections_closed,
            backend_up,
            backend_transitions,
            backend_state_seconds,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
