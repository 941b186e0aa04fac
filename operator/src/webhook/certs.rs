//! Webhook TLS: a CA and a serving certificate generated in-process (rcgen), kept in a
//! Secret so every replica serves the same certificate, or files given by cert-manager.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};
use tracing::info;

use crate::error::{Error, Result};

pub const CA_KEY: &str = "ca.crt";
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
/// Unix time after which the stored certificate is renewed.
pub const RENEW_AFTER_ANNOTATION: &str = "odoo-ha.io/renew-after";
/// Names the stored certificate is valid for (comma separated), to notice a changed Service.
pub const NAMES_ANNOTATION: &str = "odoo-ha.io/names";

const VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;

/// PEM CA, certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

/// DNS names of the webhook Service, plus loopback for a process run outside the cluster.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_string(),
    ]
}

/// Generates a CA and a serving certificate signed by it.
pub fn generate(dns_names: &[String], now: OffsetDateTime) -> Result<Bundle> {
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "odoo-session-operator webhook CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = now - Duration::hours(1);
    ca_params.not_after = now + Duration::days(VALIDITY_DAYS);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::new(dns_names.to_vec()).map_err(cert_err)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    params.distinguished_name.push(
        DnType::CommonName,
        dns_names
            .first()
            .map(String::as_str)
            .unwrap_or("odoo-session-operator"),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(VALIDITY_DAYS);
    let leaf = params.signed_by(&leaf_key, &issuer).map_err(cert_err)?;
    Ok(Bundle {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// The first certificate of a PEM bundle.
fn first_cert_pem(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = pem.find(END)? + END.len();
    let start = pem[..end].find("-----BEGIN CERTIFICATE-----")?;
    Some(format!("{}\n", &pem[start..end]))
}

fn get(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|s| !s.is_empty())
}

/// The bundle kept in a Secret, if complete, for these names and not due for renewal.
pub fn usable(secret: &Secret, names: &[String], now: OffsetDateTime) -> Option<Bundle> {
    let ann = secret.metadata.annotations.as_ref()?;
    let renew_after: i64 = ann.get(RENEW_AFTER_ANNOTATION)?.parse().ok()?;
    if now.unix_timestamp() >= renew_after || ann.get(NAMES_ANNOTATION)? != &names.join(",") {
        return None;
    }
    Some(Bundle {
        ca_pem: get(secret, CA_KEY)?,
        cert_pem: get(secret, CERT_KEY)?,
        key_pem: get(secret, KEY_KEY)?,
    })
}

pub fn to_secret(
    bundle: &Bundle,
    name: &str,
    namespace: &str,
    names: &[String],
    now: OffsetDateTime,
) -> Secret {
    let renew_after = (now + Duration::days(VALIDITY_DAYS - RENEW_BEFORE_DAYS)).unix_timestamp();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            annotations: Some(BTreeMap::from([
                (RENEW_AFTER_ANNOTATION.to_string(), renew_after.to_string()),
                (NAMES_ANNOTATION.to_string(), names.join(",")),
            ])),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "odoo-session-operator-webhook".to_string(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                CA_KEY.to_string(),
                ByteString(bundle.ca_pem.clone().into_bytes()),
            ),
            (
                CERT_KEY.to_string(),
                ByteString(bundle.cert_pem.clone().into_bytes()),
            ),
            (
                KEY_KEY.to_string(),
                ByteString(bundle.key_pem.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Reads the Secret's bundle, or generates one and stores it. Replicas racing here all end
/// up with the winner's bundle: a lost create or replace (409) re-reads.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    secret_name: &str,
    names: &[String],
) -> Result<Bundle> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..5 {
        let now = OffsetDateTime::now_utc();
        let existing = api.get_opt(secret_name).await?;
        if let Some(bundle) = existing.as_ref().and_then(|s| usable(s, names, now)) {
            return Ok(bundle);
        }
        let mut bundle = generate(names, now)?;
        // Keep trusting the previous CA for a while: replicas still serving the old
        // certificate stay valid until they reload the new one.
        if let Some(previous_ca) = existing
            .as_ref()
            .and_then(|s| get(s, CA_KEY))
            .and_then(|pem| first_cert_pem(&pem))
        {
            bundle.ca_pem = format!("{}{previous_ca}", bundle.ca_pem);
        }
        let mut secret = to_secret(&bundle, secret_name, namespace, names, now);
        let result = match existing {
            None => api.create(&PostParams::default(), &secret).await,
            Some(old) => {
                secret.metadata.resource_version = old.metadata.resource_version;
                api.replace(secret_name, &PostParams::default(), &secret)
                    .await
            }
        };
        match result {
            Ok(_) => {
                info!(
                    secret = secret_name,
                    namespace, "generated webhook CA and serving certificate"
                );
                return Ok(bundle);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Certificate(format!(
        "could not settle Secret {namespace}/{secret_name} after 5 attempts"
    )))
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| Error::Tls(format!("bad key PEM: {e}")))?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| Error::Tls(format!("certificate and key do not fit: {e}")))
}

/// The serving certificate, swappable while the server runs (renewal, cert-manager rotation).
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<(String, Arc<CertifiedKey>)>,
}

impl ReloadableCert {
    pub fn new(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>> {
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        Ok(Arc::new(ReloadableCert {
            current: RwLock::new((cert_pem.to_string(), key)),
        }))
    }

    /// Installs a new certificate; returns false when it is the one already served.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<bool> {
        if self
            .current
            .read()
            .map(|c| c.0 == cert_pem)
            .unwrap_or(false)
        {
            return Ok(false);
        }
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        let mut guard = self
            .current
            .write()
            .map_err(|_| Error::Tls("certificate lock poisoned".into()))?;
        *guard = (cert_pem.to_string(), key);
        Ok(true)
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

/// rustls server configuration serving whatever `cert` currently holds.
pub fn server_config(cert: Arc<ReloadableCert>) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_bundle_loads_into_rustls_and_round_trips_through_the_secret() {
        let names = service_names("odoo-session-operator", "odoo-ha-system");
        let now = OffsetDateTime::now_utc();
        let b = generate(&names, now).expect("generate");
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(b.key_pem.contains("PRIVATE KEY"));
        let cert = ReloadableCert::new(&b.cert_pem, &b.key_pem).expect("rustls accepts it");
        server_config(cert.clone()).expect("server config");
        assert!(
            !cert.set(&b.cert_pem, &b.key_pem).expect("same cert"),
            "same certificate is not a change"
        );
        let other = generate(&names, now).expect("generate");
        assert!(cert.set(&other.cert_pem, &other.key_pem).expect("new cert"));
        let secret = to_secret(&b, "tls", "ns", &names, now);
        assert_eq!(usable(&secret, &names, now), Some(b.clone()));
        // Renewal is due 30 days before expiry; other names mean a new certificate.
        assert_eq!(
            usable(
                &secret,
                &names,
                now + Duration::days(VALIDITY_DAYS - RENEW_BEFORE_DAYS + 1)
            ),
            None
        );
        assert_eq!(usable(&secret, &names[..2], now), None);
    }

    #[test]
    fn garbage_pem_is_an_error() {
        assert!(ReloadableCert::new("nope", "nope").is_err());
    }

    #[test]
    fn first_certificate_of_a_bundle() {
        let now = OffsetDateTime::now_utc();
        let a = generate(&["a".to_string()], now).expect("a");
        let b = generate(&["b".to_string()], now).expect("b");
        let both = format!("{}{}", a.ca_pem, b.ca_pem);
        assert_eq!(
            first_cert_pem(&both).map(|p| p.trim().to_string()),
            Some(a.ca_pem.trim().to_string())
        );
        assert_eq!(first_cert_pem("junk"), None);
    }
}
