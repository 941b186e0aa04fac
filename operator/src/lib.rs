//! odoo-session-operator: reconciles `OdooSessionStore` objects and injects the session
//! sidecar into opted-in Pods through a mutating admission webhook.

pub mod builders;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod watch;
pub mod webhook;

pub use error::{Error, Result};
