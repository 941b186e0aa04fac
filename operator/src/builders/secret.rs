//! The Secret with the managed backend's generated credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use rand::distr::{Alphanumeric, SampleString};

use super::{labels, ValidStore};
use crate::crd::Driver;

/// Key of the password in the backend Secret.
pub const PASSWORD_KEY: &str = "password";
/// Key of the user name in the backend Secret (PostgreSQL).
pub const USERNAME_KEY: &str = "username";
/// Database and role of the managed PostgreSQL.
pub const PG_USER: &str = "odoo_sessions";
pub const PG_DATABASE: &str = "odoo_sessions";

/// Length of generated passwords: 32 alphanumerics is about 190 bits.
pub const PASSWORD_LEN: usize = 32;

/// A fresh random password (alphanumeric, safe inside a URI without escaping).
pub fn generate_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN)
}

/// Reads the password kept in an existing Secret, so reconciles never rotate it.
pub fn existing_password(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(PASSWORD_KEY)?;
    let password = String::from_utf8(bytes.0.clone()).ok()?;
    (!password.is_empty()).then_some(password)
}

/// The credentials Secret of a managed backend, named like its Service.
pub fn build(store: &ValidStore, password: &str) -> Secret {
    let (name, app) = super::connection::managed_names(store);
    let mut data = BTreeMap::from([(
        PASSWORD_KEY.to_string(),
        ByteString(password.as_bytes().to_vec()),
    )]);
    if store.spec.driver == Driver::Db {
        data.insert(USERNAME_KEY.into(), ByteString(PG_USER.as_bytes().to_vec()));
    }
    Secret {
        metadata: store.owned_meta(&name, labels(&store.name, app, "session-backend")),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::fixtures;

    #[test]
    fn generated_passwords_are_long_random_and_uri_safe() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), PASSWORD_LEN);
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn password_survives_a_round_trip_through_the_secret() {
        let store = fixtures::managed_redis();
        let secret = build(&store, "s3cret");
        assert_eq!(secret.metadata.name.as_deref(), Some("sessions-redis"));
        assert_eq!(existing_password(&secret).as_deref(), Some("s3cret"));
        assert!(secret
            .data
            .as_ref()
            .is_some_and(|d| !d.contains_key(USERNAME_KEY)));
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "OdooSessionStore");
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn postgres_secret_has_the_user() {
        let secret = build(&fixtures::managed_postgres(), "pw");
        assert_eq!(secret.metadata.name.as_deref(), Some("sessions-postgres"));
        let data = secret.data.expect("data");
        assert_eq!(data[USERNAME_KEY].0, PG_USER.as_bytes());
    }

    #[test]
    fn empty_password_is_not_reused() {
        let mut secret = build(&fixtures::managed_redis(), "");
        assert_eq!(existing_password(&secret), None);
        secret.data = None;
        assert_eq!(existing_password(&secret), None);
    }
}
