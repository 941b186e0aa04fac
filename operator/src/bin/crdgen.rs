//! Writes the CRD YAML generated from the Rust types.
//!
//! `crdgen` writes `crds/odoosessionstores.odoo-ha.io.yaml` under the workspace root (or the
//! directory given as first argument); `crdgen --check` fails when the committed file differs.

use std::path::PathBuf;
use std::process::ExitCode;

use odoo_session_operator::crd::OdooSessionStore;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = odoo_ha_contract::repo_path(env!("CARGO_MANIFEST_DIR"), "crds");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "--stdout" => {
                return match odoo_session_operator::crd::crd_yaml() {
                    Ok(y) => {
                        print!("{y}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("crdgen: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [--stdout] [DIR]");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let yaml = match odoo_session_operator::crd::crd_yaml() {
        Ok(y) => y,
        Err(e) => {
            eprintln!("crdgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = dir.join(format!(
        "{}.yaml",
        <OdooSessionStore as kube::CustomResourceExt>::crd_name()
    ));
    if check {
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == yaml => {
                println!("crdgen: {} is up to date", path.display());
                ExitCode::SUCCESS
            }
            Ok(_) => {
                eprintln!("crdgen: {} differs from the Rust types; run `cargo run -p odoo-session-operator --bin crdgen`", path.display());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("crdgen: cannot read {}: {e}", path.display());
                ExitCode::FAILURE
            }
        }
    } else {
        if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &yaml)) {
            eprintln!("crdgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("crdgen: wrote {}", path.display());
        ExitCode::SUCCESS
    }
}
