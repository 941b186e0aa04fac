//! odoo-session-operator: reconciles `OdooSessionStore` objects and injects the session
//! sidecar into opted-in Pods through a mutating admission webhook.

pub mod builders;
pub mod crd;
pub mod error;
pub mod reconcile;

pub use error::{Error, Result};
