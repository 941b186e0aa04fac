//! Mutating admission webhook: injects the session sidecar into opted-in Pods.

pub mod certs;
pub mod config;
pub mod patch;
pub mod server;
