//! Validated identifiers and the value types every driver speaks.
//!
//! Session data is kept as one JSON text per top-level key: drivers store and compare those
//! texts without parsing them, which keeps floats, nesting and empty arrays exactly as the
//! client sent them and lets a partial update touch only the keys it names.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Length of an Odoo 18+ device identifier: the first 42 characters of an 84-character sid
/// (Odoo 18 and 19) or of an 86-character one (Odoo after 19: `secrets.token_urlsafe(64)`; its
/// `STORED_SESSION_BYTES` is still 42).
pub const IDENTIFIER_LEN: usize = 42;
const LEGACY_SID_LEN: usize = 40;
/// The URL-safe lengths Odoo generates: 84 (18, 19) and 86 (after 19). Odoo's own check after
/// 19 also lets 85 through, a length it never generates: here it stays `invalid_sid`.
const MODERN_SID_LENS: [usize; 2] = [84, 86];
const MAX_KEY_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("invalid session id: expected 40 lowercase hex characters (Odoo 14-17), or 84 (Odoo 18, 19) or 86 (after 19) URL-safe base64 characters")]
    Sid,
    #[error(
        "invalid identifier {0:?}: expected exactly 42 URL-safe base64 characters [A-Za-z0-9_-]"
    )]
    Identifier(String),
    #[error("invalid {0}")]
    Body(String),
}

impl InputError {
    pub fn code(&self) -> &'static str {
        match self {
            InputError::Sid => "invalid_sid",
            InputError::Identifier(_) => "invalid_identifier",
            InputError::Body(_) => "invalid_body",
        }
    }
}

fn is_urlsafe_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// An Odoo session key, checked against the formats Odoo itself generates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(String);

impl Sid {
    pub fn parse(s: &str) -> Result<Self, InputError> {
        let b = s.as_bytes();
        let ok = match b.len() {
            LEGACY_SID_LEN => b
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)),
            n if MODERN_SID_LENS.contains(&n) => b.iter().all(|&c| is_urlsafe_b64(c)),
            _ => false,
        };
        if ok {
            Ok(Sid(s.to_owned()))
        } else {
            Err(InputError::Sid)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Odoo 18+ device identifier (first 42 characters), for 84- and 86-character keys only.
    pub fn identifier(&self) -> Option<&str> {
        MODERN_SID_LENS
            .contains(&self.0.len())
            .then(|| &self.0[..IDENTIFIER_LEN])
    }

    /// What groups this session's keys together (Redis Cluster hash tag, index bucket).
    pub fn group(&self) -> &str {
        self.identifier().unwrap_or(&self.0)
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identifier(String);

impl Identifier {
    pub fn parse(s: &str) -> Result<Self, InputError> {
        if s.len() == IDENTIFIER_LEN && s.bytes().all(is_urlsafe_b64) {
            Ok(Identifier(s.to_owned()))
        } else {
            let shown: String = s.chars().take(100).collect();
            Err(InputError::Identifier(shown))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Session data: top-level key -> compact JSON text of its value.
pub type Fields = BTreeMap<String, String>;

/// Checks a session data key: non-empty, bounded, no control characters.
pub fn check_key(key: &str) -> Result<(), InputError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(InputError::Body(format!(
            "session key {:?}: expected 1 to {MAX_KEY_LEN} bytes without control characters",
            key.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

/// Turns a parsed JSON object into stored fields, checking every key.
pub fn fields_from_object(
    obj: serde_json::Map<String, serde_json::Value>,
) -> Result<Fields, InputError> {
    let mut fields = Fields::new();
    for (k, v) in obj {
        check_key(&k)?;
        fields.insert(k, v.to_string());
    }
    Ok(fields)
}

/// Writes stored fields back as one JSON object, without re-parsing the values.
pub fn write_object(fields: &Fields, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // A String always serialises.
        out.push_str(&serde_json::to_string(k).unwrap_or_default());
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub version: u64,
    pub fields: Fields,
    /// Time left before the session expires.
    pub ttl: Duration,
}

/// The version condition of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Unconditional,
    CreateOnly,
    IfMatch(u64),
}

/// What a client read for each key of a conditional `PATCH`: the JSON text it held, or
/// `None` when the key was absent.
pub type Expect = BTreeMap<String, Option<String>>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    pub set: Fields,
    pub remove: Vec<String>,
    /// Per-key conditions, checked atomically with the write (`PATCH` only).
    pub expect: Expect,
}

impl Patch {
    pub fn new(set: Fields, remove: Vec<String>) -> Result<Self, InputError> {
        for k in &remove {
            check_key(k)?;
            if set.contains_key(k) {
                return Err(InputError::Body(format!(
                    "key {k:?} is both in set and in remove"
                )));
            }
        }
        Ok(Patch {
            set,
            remove,
            expect: Expect::new(),
        })
    }

    /// The `expect` keys in conflict with `fields` (sorted): a key conflicts when its stored
    /// value is not the one the client read. A concurrent write of the very value this patch
    /// writes is a conflict too: the client computed it from what it read (a counter read
    /// at 5 by two requests must end at 7, not 6).
    pub fn conflicts(&self, fields: &Fields) -> Vec<String> {
        self.expect
            .iter()
            .filter(|(k, want)| fields.get(k.as_str()).map(String::as_str) != want.as_deref())
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn apply(&self, fields: &mut Fields) -> bool {
        let mut changed = false;
        for (k, v) in &self.set {
            if fields.get(k) != Some(v) {
                fields.insert(k.clone(), v.clone());
                changed = true;
            }
        }
        for k in &self.remove {
            changed |= fields.remove(k).is_some();
        }
        changed
    }
}

/// Where the new session's data comes from in a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateSource {
    /// The stored old session with a patch applied; the old session must exist.
    Stored(Patch),
    /// Data given by the client (a session never stored before).
    Given(Fields),
}

/// Odoo 19 soft rotation: the old session stays readable for a while, with a few keys set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepOld {
    pub ttl: Duration,
    pub set: Fields,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub new_sid: Sid,
    pub source: RotateSource,
    pub ttl: Duration,
    pub keep_old: Option<KeepOld>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub version: u64,
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_formats() {
        assert!(Sid::parse(&"a".repeat(40)).is_ok());
        assert!(Sid::parse(&"0123456789abcdef".repeat(5)[..40]).is_ok());
        assert!(
            Sid::parse(&"A".repeat(40)).is_err(),
            "legacy keys are lowercase hex"
        );
        assert!(Sid::parse(&"g".repeat(40)).is_err());
        assert!(Sid::parse(&"A-_z".repeat(21)).is_ok());
        assert!(Sid::parse(&"*".repeat(84)).is_err());
        assert!(Sid::parse(&format!("{}\n", "a".repeat(83))).is_err());
        assert!(Sid::parse("").is_err());
        assert!(Sid::parse(&"a".repeat(41)).is_err());
        // Odoo after 19: secrets.token_urlsafe(64) is 86 characters.
        assert!(Sid::parse(&"A-_z".repeat(22)[..86]).is_ok());
        assert!(
            Sid::parse(&"A-_z".repeat(22)[..85]).is_err(),
            "never generated"
        );
        assert!(Sid::parse(&"A".repeat(83)).is_err());
        assert!(Sid::parse(&"A".repeat(87)).is_err());
        assert!(Sid::parse(&format!("{}=", "A".repeat(85))).is_err());
        assert!(Sid::parse(&format!("{}*", "A".repeat(85))).is_err());
    }

    #[test]
    fn identifier_of_86_character_sid() {
        for tail in [42, 44] {
            let sid = Sid::parse(&format!("{}{}", "x".repeat(42), "y".repeat(tail))).unwrap();
            assert_eq!(sid.identifier(), Some("x".repeat(42).as_str()));
            assert_eq!(sid.group(), "x".repeat(42));
        }
    }

    #[test]
    fn identifier_of_modern_sid_only() {
        let modern = Sid::parse(&format!("{}{}", "x".repeat(42), "y".repeat(42))).unwrap();
        assert_eq!(modern.identifier(), Some("x".repeat(42).as_str()));
        assert_eq!(modern.group(), "x".repeat(42));
        let legacy = Sid::parse(&"a".repeat(40)).unwrap();
        assert_eq!(legacy.identifier(), None);
        assert_eq!(legacy.group(), "a".repeat(40));
    }

    #[test]
    fn identifiers() {
        assert!(Identifier::parse(&"a".repeat(42)).is_ok());
        assert!(Identifier::parse(&"a".repeat(41)).is_err());
        assert!(Identifier::parse(&format!("{}*", "a".repeat(41))).is_err());
        assert!(Identifier::parse(&format!("{}?", "a".repeat(41))).is_err());
    }

    #[test]
    fn patch_rejects_key_in_both() {
        let set: Fields = [("a".to_string(), "1".to_string())].into();
        assert!(Patch::new(set, vec!["a".into()]).is_err());
    }

    #[test]
    fn patch_reports_change() {
        let mut f: Fields = [("a".to_string(), "1".to_string())].into();
        let same = Patch::new([("a".to_string(), "1".to_string())].into(), vec![]).unwrap();
        assert!(!same.apply(&mut f));
        let other = Patch::new(Fields::new(), vec!["a".into()]).unwrap();
        assert!(other.apply(&mut f));
        assert!(f.is_empty());
    }

    #[test]
    fn patch_conflicts() {
        let stored: Fields = [
            ("a".to_string(), "2".to_string()),
            ("b".to_string(), "5".to_string()),
        ]
        .into();
        let mut p = Patch::new(
            [("a".to_string(), "3".to_string())].into(),
            vec!["c".into()],
        )
        .unwrap();
        p.expect.insert("a".into(), Some("1".into()));
        p.expect.insert("c".into(), None);
        assert_eq!(p.conflicts(&stored), vec!["a".to_string()]);
        p.expect.insert("a".into(), Some("2".into()));
        assert!(p.conflicts(&stored).is_empty());
        // Another writer already wrote what this patch writes: still a conflict.
        p.expect.insert("a".into(), Some("0".into()));
        p.set.insert("a".into(), "2".into());
        assert_eq!(p.conflicts(&stored), vec!["a".to_string()]);
        p.expect.insert("a".into(), Some("2".into()));
        // A key only read (not written) must be as read.
        p.expect.insert("b".into(), None);
        assert_eq!(p.conflicts(&stored), vec!["b".to_string()]);
    }

    #[test]
    fn object_round_trip() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":[],"a":1.5e300,"c":{"x":"\"q\""}}"#).unwrap();
        let fields = fields_from_object(v.as_object().unwrap().clone()).unwrap();
        let mut out = String::new();
        write_object(&fields, &mut out);
        let back: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back, v);
    }
}
