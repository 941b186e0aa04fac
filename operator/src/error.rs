//! The operator's one error type.

use thiserror::Error;

/// Every failure the operator can meet; `metric_label` names it in metrics and logs.
#[derive(Error, Debug)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),

    #[error("object has no {0}")]
    MissingField(&'static str),

    #[error("serialisation failed: {0}")]
    Serialization(#[source] serde_json::Error),

    #[error("finalizer failed: {0}")]
    Finalizer(String),

    #[error("certificate generation failed: {0}")]
    Certificate(String),

    #[error("TLS setup failed: {0}")]
    Tls(String),

    #[error("I/O error: {0}")]
    Io(#[source] std::io::Error),

    #[error("leader election lost: {0}")]
    LeaderLost(String),

    #[error("configuration error: {0}")]
    Config(String),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialization(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl Error {
    /// Low-cardinality label for the `error` label of the failure metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingField(_) => "missing_field",
            Error::Serialization(_) => "serialization",
            Error::Finalizer(_) => "finalizer",
            Error::Certificate(_) => "certificate",
            Error::Tls(_) => "tls",
            Error::Io(_) => "io",
            Error::LeaderLost(_) => "leader_lost",
            Error::Config(_) => "config",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_snake_case() {
        let errors = [
            Error::MissingField("name"),
            Error::Finalizer("x".into()),
            Error::Certificate("x".into()),
            Error::Tls("x".into()),
            Error::LeaderLost("x".into()),
            Error::Config("x".into()),
        ];
        let labels: std::collections::HashSet<_> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels.len(), errors.len());
        assert!(labels
            .iter()
            .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
    }
}
