//! Prints, as JSON, exactly what the operator server-side applies to the chart's
//! MutatingWebhookConfiguration (`webhook::config::ca_bundle_patch`), for
//! tests/chart/test_chart.py to check that no field of it is one the chart renders.
//!
//! `webhookgen [NAME]` (NAME: the configuration's name; a placeholder CA).

use odoo_session_operator::webhook::config;

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "odoo-session-operator".into());
    let patch = config::ca_bundle_patch(&name, "-----BEGIN CERTIFICATE-----\n");
    println!("{patch}");
}
