//! The sidecar's own parser (`odoo_session_sidecar::config::Settings::from_args`) against
//! the contract table: every value the table accepts, the sidecar accepts; the boundary
//! values and characters the table refuses, the sidecar refuses too; and the sidecar reads
//! no `DKN_AUTH_*` variable the table does not list. Values go in through an odoo.conf
//! file, so the `odoo.conf` keys of the contract are checked on the way.

use std::path::PathBuf;

use clap::CommandFactory;
use odoo_ha_contract::{Format, Reader, Setting, SETTINGS};
use odoo_session_sidecar::config::{Args, Settings};

struct Conf(PathBuf);

impl Drop for Conf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What the sidecar says of `env = value` in odoo.conf: Ok, or its one-line error.
fn sidecar(setting: &Setting, value: &str) -> Result<(), String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "contract-{}-{}.conf",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(
        &path,
        format!("[options]\n{} = {value}\n", setting.odoo_conf_key()),
    )
    .expect("write odoo.conf");
    let conf = Conf(path);
    let args = Args {
        config: Some(conf.0.clone()),
        driver: (setting.env != "DKN_AUTH_DRIVER").then(|| "memory".to_string()),
        // DKN_AUTH_DRIVER=db needs a URI (a free-format setting, not checked here).
        db_uri: Some("postgresql://u@localhost:5432/sessions".to_string()),
        ..Args::default()
    };
    match Settings::from_args(&args) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.0),
    }
}

fn accepts(s: &Setting, v: &str) {
    if let Err(e) = sidecar(s, v) {
        panic!(
            "the contract accepts {}={v:?}, the sidecar refuses: {e}",
            s.env
        );
    }
}

fn refuses(s: &Setting, v: &str) {
    match sidecar(s, v) {
        Ok(()) => panic!(
            "the contract refuses {}={v:?}, the sidecar accepts it",
            s.env
        ),
        Err(e) => assert!(
            e.contains(s.env),
            "the sidecar's error names the setting: {e}"
        ),
    }
}

#[test]
fn the_sidecar_accepts_and_refuses_what_the_contract_says() {
    let mut checked = 0;
    for s in SETTINGS.iter().filter(|s| s.read_by(Reader::Sidecar)) {
        if let Some(d) = s.default {
            accepts(s, d);
        }
        match s.format {
            Format::Integer { min, max } => {
                accepts(s, &min.to_string());
                accepts(s, &max.to_string());
                refuses(s, &(max + 1).to_string());
                refuses(s, "12abc");
                refuses(s, &(min - 1).to_string());
            }
            Format::Text {
                min_len, max_len, ..
            } => {
                let base = s.default.expect("text settings have a default");
                let fill = base.chars().last().expect("non-empty default");
                let longest: String = base
                    .chars()
                    .chain(std::iter::repeat(fill))
                    .take(max_len)
                    .collect();
                accepts(s, &longest);
                refuses(s, &format!("{longest}{fill}"));
                assert!(min_len >= 1);
                // Every printable ASCII character, space and a control character, in the
                // middle and first: accepted exactly when the contract accepts it.
                for c in (' '..='~').chain(['\u{1}', '\u{7f}']) {
                    for v in [format!("{base}{c}{fill}"), format!("{c}{base}")] {
                        // A value read from odoo.conf is trimmed and cut at no other
                        // character; a leading space would be trimmed away.
                        if v.starts_with(' ') || v.starts_with(';') || v.starts_with('#') {
                            continue;
                        }
                        if s.check_text(&v).is_ok() {
                            accepts(s, &v);
                        } else {
                            refuses(s, &v);
                        }
                    }
                }
            }
            Format::Choice(words) => {
                for w in words {
                    accepts(s, w);
                }
                refuses(s, "not-a-choice");
            }
            Format::Boolean => {
                accepts(s, "true");
                accepts(s, "false");
                refuses(s, "maybe");
            }
            Format::Decimal { .. } | Format::Free(_) => continue,
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} settings checked");
}

#[test]
fn the_bad_values_of_issue_13_are_refused_by_both() {
    let prefix = odoo_ha_contract::PREFIX;
    assert!(prefix.check_text("a{b").is_err());
    refuses(&prefix, "a{b");
    let expiry = odoo_ha_contract::EXPIRY;
    assert!(expiry.check_int(40_000_000).is_err());
    refuses(&expiry, "40000000");
}

#[test]
fn every_variable_the_sidecar_reads_is_in_the_contract() {
    let sidecar_vars: Vec<String> = Args::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    assert!(sidecar_vars.len() > 10, "{sidecar_vars:?}");
    for v in &sidecar_vars {
        let s = odoo_ha_contract::setting(v).unwrap_or_else(|| {
            panic!("the sidecar reads {v}, which contract/src/lib.rs does not list")
        });
        assert!(s.read_by(Reader::Sidecar), "{v} is read by the sidecar");
    }
    for s in SETTINGS.iter().filter(|s| s.read_by(Reader::Sidecar)) {
        assert!(
            sidecar_vars.iter().any(|v| v == s.env),
            "the contract says the sidecar reads {}, it does not",
            s.env
        );
    }
}
