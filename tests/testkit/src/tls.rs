//! A throw-away certificate authority and a server certificate for 127.0.0.1 and
//! localhost, made with the openssl command line.

use std::path::PathBuf;
use std::process::Command;

pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is needed (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = |n: &str| dir.path().join(n);
        let s = |p: &PathBuf| p.to_string_lossy().into_owned();
        let (ca_key, ca_cert) = (f("ca.key"), f("ca.pem"));
        let (key, csr, cert, ext) = (
            f("server.key"),
            f("server.csr"),
            f("server.pem"),
            f("ext.cnf"),
        );
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=odoo-ha test CA",
            "-keyout",
            &s(&ca_key),
            "-out",
            &s(&ca_cert),
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &s(&key),
            "-out",
            &s(&csr),
        ]);
        std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n").expect("ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca_cert),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&cert),
        ]);
        TestCa {
            _dir: dir,
            ca_cert,
            server_cert: cert,
            server_key: key,
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
