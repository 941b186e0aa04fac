//! odoo-session-sidecar: Odoo's session store as a local HTTP service over Redis, PostgreSQL
//! or memory. See `docs/sidecar-api.md` for the contract.

pub mod config;
pub mod http;
pub mod metrics;
pub mod model;
pub mod store;
