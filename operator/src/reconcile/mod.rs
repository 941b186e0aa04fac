//! Reconcile: dereference -> validate -> build -> apply -> status.

pub mod validate;
