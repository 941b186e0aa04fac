//! Writes `docs/settings-contract.json` from the table in `contract/src/lib.rs`;
//! `contractgen --check` fails when the committed file differs, `--stdout` prints it,
//! `--markdown` prints the contract as a Markdown table.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let text = odoo_ha_contract::contract_text();
    let mut path =
        odoo_ha_contract::repo_path(env!("CARGO_MANIFEST_DIR"), odoo_ha_contract::JSON_PATH);
    let mut check = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "--stdout" => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            "--markdown" => {
                print!("{}", odoo_ha_contract::markdown_table());
                return ExitCode::SUCCESS;
            }
            "-h" | "--help" => {
                println!("usage: contractgen [--check] [--stdout] [--markdown] [FILE]");
                return ExitCode::SUCCESS;
            }
            other => path = PathBuf::from(other),
        }
    }
    if check {
        return match std::fs::read_to_string(&path) {
            Ok(existing) if existing == text => {
                println!("contractgen: {} is up to date", path.display());
                ExitCode::SUCCESS
            }
            Ok(_) => {
                eprintln!(
                    "contractgen: {} differs from contract/src/lib.rs; run `cargo run -p odoo-ha-contract --bin contractgen`",
                    path.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("contractgen: cannot read {}: {e}", path.display());
                ExitCode::FAILURE
            }
        };
    }
    match std::fs::write(&path, text) {
        Ok(()) => {
            println!("contractgen: wrote {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("contractgen: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
