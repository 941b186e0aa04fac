//! Prometheus metrics: reconciles, failures by error label, webhook requests and latency.

use std::time::Duration;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `injected`, `unchanged`, `denied` or `error`.
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_failures: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub webhook_requests: Family<WebhookLabels, Counter>,
    pub webhook_duration: Histogram,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("odoo_session_operator");
        let reconciles = Counter::default();
        let reconcile_failures = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let webhook_requests = Family::<WebhookLabels, Counter>::default();
        let webhook_duration =
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]);
        let leader = Gauge::default();
        registry.register("reconciles", "Reconciliations started", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciliations that failed, by error",
            reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            reconcile_duration.clone(),
        );
        registry.register(
            "webhook_requests",
            "Admission requests answered, by result",
            webhook_requests.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Time to answer an admission request",
            webhook_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_failures,
            reconcile_duration,
            webhook_requests,
            webhook_duration,
            leader,
        }
    }
}

impl Metrics {
    pub fn reconcile_failed(&self, label: &str) {
        self.reconcile_failures
            .get_or_create(&ErrorLabels {
                error: label.to_string(),
            })
            .inc();
    }

    pub fn webhook_answered(&self, result: &str, took: Duration) {
        self.webhook_requests
            .get_or_create(&WebhookLabels {
                result: result.to_string(),
            })
            .inc();
        self.webhook_duration.observe(took.as_secs_f64());
    }

    /// OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.reconcile_failed("kube");
        m.webhook_answered("injected", Duration::from_micros(800));
        let text = m.render();
        for needle in [
            "odoo_session_operator_reconciles_total 1",
            "odoo_session_operator_reconcile_failures_total{error=\"kube\"} 1",
            "odoo_session_operator_webhook_requests_total{result=\"injected\"} 1",
            "odoo_session_operator_webhook_duration_seconds_bucket{le=\"0.001\"} 1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
