//! Odoo's filesystem session store (`<data_dir>/sessions`).
//!
//! Layouts: Odoo 14 and 15 (werkzeug's store) write `werkzeug_<sid>.sess` in the directory
//! itself; Odoo 16 and later write `<sid[:2]>/<sid>` (and move a `werkzeug_` file there when
//! they read it). Contents: a pickle (`pickle.HIGHEST_PROTOCOL`: 4 on Python 3.6/3.7, 5
//! after) on 14 to 17, JSON on 18 and later; the format is told from the first byte, so a
//! directory left over from an upgrade is read whatever it holds. A session lives until
//! Odoo's clean-up removes files older than 7 days by modification time (`--max-age`).
//!
//! Pickles are read as data only: [`check_pickle`] walks the opcodes first and refuses every
//! pickle that names a Python global (other than the builtin `set`/`frozenset` of old
//! protocols), builds an object or calls anything, so the decoder never sees one; the
//! decoder (`serde-pickle`) cannot import or run Python code in any case. Values are mapped
//! the way `dkn_auth` stores them on Odoo 14 to 17 (`addons/dkn_auth/client/codec.py`): sets
//! as `{"_type": "set", "value": [...]}` sorted by their JSON text, tuples as lists, dict
//! keys that are numbers, booleans or None as their JSON text.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Map, Value as Json};
use serde_pickle::{HashableValue, Value as Pickle};

use super::{fields_from_json, remaining_ms, Fatal, Found, Importer, Refused, Skip};
use odoo_session_sidecar::model::Fields;

/// Larger files are not sessions (Odoo's are a few KiB).
const MAX_FILE_BYTES: u64 = 16 << 20;
/// Nesting deeper than this is refused rather than followed.
const MAX_DEPTH: usize = 200;

/// Temporary files of a save in progress (werkzeug's and Odoo 18's).
fn is_temporary(name: &str) -> bool {
    name.ends_with(".__wz_sess") || name.ends_with(".__tx_sess__")
}

pub async fn read(path: &Path, imp: &mut Importer) -> Result<(), Fatal> {
    // `<data_dir>` given instead of `<data_dir>/sessions`.
    let dir = if path.join("sessions").is_dir() {
        path.join("sessions")
    } else {
        path.to_path_buf()
    };
    let mut nested: Vec<(String, PathBuf)> = Vec::new();
    let mut flat: Vec<(String, PathBuf)> = Vec::new();
    let entries =
        std::fs::read_dir(&dir).map_err(|e| Fatal::Source(format!("{}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && name.chars().count() == 2 {
            let Ok(inner) = std::fs::read_dir(entry.path()) else {
                continue;
            };
            for file in inner.flatten() {
                let fname = file.file_name().to_string_lossy().into_owned();
                if !is_temporary(&fname) && file.file_type().is_ok_and(|t| t.is_file()) {
                    nested.push((fname, file.path()));
                }
            }
        } else if kind.is_file() {
            if let Some(sid) = name
                .strip_prefix("werkzeug_")
                .and_then(|n| n.strip_suffix(".sess"))
            {
                flat.push((sid.to_owned(), entry.path()));
            }
        }
    }
    nested.sort();
    flat.sort();
    // Odoo 16+ reads `<sid[:2]>/<sid>` first: a `werkzeug_` file beside it is stale.
    let seen: HashSet<String> = nested.iter().map(|(s, _)| s.clone()).collect();
    let now = SystemTime::now();
    for (sid, file) in nested
        .into_iter()
        .chain(flat.into_iter().filter(|(s, _)| !seen.contains(s)))
    {
        let Ok(meta) = std::fs::symlink_metadata(&file) else {
            continue;
        };
        let Ok(mtime) = meta.modified() else { continue };
        let age_ms = match now.duration_since(mtime) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Err(ahead) => -i64::try_from(ahead.duration().as_millis()).unwrap_or(i64::MAX),
        };
        let place = file
            .strip_prefix(&dir)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let place: String = shorten(&place);
        let found = Found {
            sid: &sid,
            remaining_ms: remaining_ms(imp.max_age, age_ms),
            touched: Some(mtime),
            place: &place,
        };
        let size = meta.len();
        imp.offer(found, || {
            if size > MAX_FILE_BYTES {
                return Err(Refused::new(
                    Skip::Unreadable,
                    format!("{size} bytes: not a session file"),
                ));
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| Refused::new(Skip::Unreadable, format!("cannot read: {e}")))?;
            decode_file(&bytes)
        })
        .await?;
    }
    Ok(())
}

/// The file name with the sid cut to 8 characters (a sid is a bearer token).
fn shorten(place: &str) -> String {
    match place.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{}...", name.chars().take(8).collect::<String>()),
        None => format!("{}...", place.chars().take(17).collect::<String>()),
    }
}

/// A session file of any Odoo version: pickle (14-17) or JSON (18+).
pub fn decode_file(bytes: &[u8]) -> Result<Fields, Refused> {
    match bytes.first() {
        Some(0x80) => decode_pickle(bytes),
        _ if bytes.trim_ascii_start().starts_with(b"{") => fields_from_json(bytes),
        _ => Err(Refused::new(
            Skip::Unreadable,
            "neither a pickle nor a JSON object",
        )),
    }
}

pub fn decode_pickle(bytes: &[u8]) -> Result<Fields, Refused> {
    check_pickle(bytes)?;
    let value = serde_pickle::value_from_slice(bytes, serde_pickle::DeOptions::new())
        .map_err(|e| Refused::new(Skip::Unreadable, format!("not a readable pickle: {e}")))?;
    let Pickle::Dict(map) = value else {
        return Err(Refused::new(Skip::Unreadable, "the pickle is not a dict"));
    };
    let mut fields = Fields::new();
    for (k, v) in map {
        let HashableValue::String(key) = k else {
            return Err(Refused::new(
                Skip::NotStorable,
                "a top-level key is not a string",
            ));
        };
        let json = to_json(v, 0)
            .map_err(|why| Refused::new(Skip::NotStorable, format!("key {key:?}: {why}")))?;
        fields.insert(key, json.to_string());
    }
    Ok(fields)
}

/// What an opcode carries after it.
enum Arg {
    None,
    Fixed(usize),
    /// A length of this many bytes (little-endian), then that many bytes.
    Counted(usize),
    Line,
    TwoLines,
}

/// Walks the opcodes of a pickle and refuses anything that is not plain data.
pub fn check_pickle(bytes: &[u8]) -> Result<(), Refused> {
    let refuse = |why: String| Err(Refused::new(Skip::PickleGlobal, why));
    let unreadable = || {
        Err(Refused::new(
            Skip::Unreadable,
            "a truncated or malformed pickle",
        ))
    };
    let mut i = 0;
    // The last two strings pushed right before a STACK_GLOBAL, for its name.
    let mut strings: [Option<String>; 2] = [None, None];
    while i < bytes.len() {
        let op = bytes[i];
        i += 1;
        let arg = match op {
            b'(' | b'.' | b'0' | b'1' | b'2' | b'N' | b'a' | b'd' | b'}' | b'e' | b'l' | b']'
            | b's' | b't' | b')' | b'u' | 0x85 | 0x86 | 0x87 | 0x88 | 0x89 | 0x8f | 0x90 | 0x91
            | 0x94 => Arg::None,
            b'K' | b'h' | b'q' | 0x80 => Arg::Fixed(1),
            b'M' => Arg::Fixed(2),
            b'J' | b'j' | b'r' => Arg::Fixed(4),
            b'G' | 0x95 => Arg::Fixed(8),
            b'U' | b'C' | 0x8c | 0x8a => Arg::Counted(1),
            b'T' | b'X' | b'B' | 0x8b => Arg::Counted(4),
            0x8d | 0x8e | 0x96 => Arg::Counted(8),
            b'F' | b'I' | b'L' | b'S' | b'V' | b'g' | b'p' => Arg::Line,
            b'c' => Arg::TwoLines,
            0x93 => {
                let name = match &strings {
                    [Some(m), Some(n)] => format!("{m}.{n}"),
                    _ => "a global".into(),
                };
                if !allowed_global(&name) {
                    return refuse(format!("needs the Python global {name}: never loaded"));
                }
                strings = [None, None];
                continue;
            }
            // Calls the global on the stack: only the ones allowed above get here.
            b'R' => Arg::None,
            b'i' | b'o' | b'b' | 0x81 | 0x92 => {
                return refuse("builds an instance of a Python class: never loaded".into())
            }
            0x82..=0x84 => {
                return refuse("names a registered Python global (extension code)".into())
            }
            b'P' | b'Q' => return refuse("holds a persistent id".into()),
            0x97 | 0x98 => return refuse("uses an out-of-band buffer".into()),
            _ => return unreadable(),
        };
        let start = i;
        let mut pushed: Option<String> = None;
        match arg {
            Arg::None => {}
            Arg::Fixed(n) => i += n,
            Arg::Counted(width) => {
                let Some(len) = bytes.get(i..i + width) else {
                    return unreadable();
                };
                let mut n: u64 = 0;
                for (shift, b) in len.iter().enumerate() {
                    n |= u64::from(*b) << (8 * shift);
                }
                let Ok(n) = usize::try_from(n) else {
                    return unreadable();
                };
                i += width;
                let Some(end) = i.checked_add(n) else {
                    return unreadable();
                };
                if matches!(op, b'X' | 0x8c | 0x8d) {
                    pushed = bytes
                        .get(i..end)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .map(str::to_owned);
                }
                i = end;
            }
            Arg::Line | Arg::TwoLines => {
                let lines = if matches!(arg, Arg::TwoLines) { 2 } else { 1 };
                let mut parts = Vec::new();
                for _ in 0..lines {
                    let Some(nl) = bytes[i.min(bytes.len())..].iter().position(|&b| b == b'\n')
                    else {
                        return unreadable();
                    };
                    parts.push(String::from_utf8_lossy(&bytes[i..i + nl]).into_owned());
                    i += nl + 1;
                }
                if op == b'c' {
                    let name = parts.join(".");
                    if !allowed_global(&name) {
                        return refuse(format!("needs the Python global {name}: never loaded"));
                    }
                }
                if op == b'V' {
                    pushed = parts.pop();
                }
            }
        }
        if i > bytes.len() || start > bytes.len() {
            return unreadable();
        }
        match op {
            // Memoizing and framing leave the stack as it is.
            0x94 | b'q' | b'r' | b'p' | 0x95 | 0x80 => {}
            _ => strings = [strings[1].take(), pushed],
        }
        if op == b'.' {
            return Ok(());
        }
    }
    unreadable()
}

/// The only globals plain data needs: sets as protocols 2 and 3 write them.
fn allowed_global(name: &str) -> bool {
    matches!(
        name,
        "builtins.set" | "builtins.frozenset" | "__builtin__.set" | "__builtin__.frozenset"
    )
}

/// A pickled value as `dkn_auth` would send it for Odoo 14 to 17 (`codec.encode`).
fn to_json(value: Pickle, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err("nested too deeply".into());
    }
    Ok(match value {
        Pickle::None => Json::Null,
        Pickle::Bool(b) => Json::Bool(b),
        Pickle::I64(n) => Json::from(n),
        Pickle::Int(n) => {
            let text = n.to_string();
            if let Ok(v) = text.parse::<i64>() {
                Json::from(v)
            } else if let Ok(v) = text.parse::<u64>() {
                Json::from(v)
            } else {
                return Err("an integer beyond 64 bits".into());
            }
        }
        Pickle::F64(f) => serde_json::Number::from_f64(f)
            .map(Json::Number)
            .ok_or("a float JSON has no value for (NaN or infinity)")?,
        Pickle::Bytes(_) => return Err("a bytes value (dkn_auth stores JSON values only)".into()),
        Pickle::String(s) => {
            if s.contains('\0') {
                return Err("a string holds U+0000".into());
            }
            Json::String(s)
        }
        Pickle::List(items) | Pickle::Tuple(items) => Json::Array(
            items
                .into_iter()
                .map(|v| to_json(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Pickle::Set(items) | Pickle::FrozenSet(items) => {
            let mut items: Vec<Json> = items
                .into_iter()
                .map(|v| to_json(v.into_value(), depth + 1))
                .collect::<Result<_, _>>()?;
            // codec.encode sorts a set's members by json.dumps(v, sort_keys=True).
            let mut keyed: Vec<(String, Json)> =
                items.drain(..).map(|v| (python_dumps(&v), v)).collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            let mut tag = Map::new();
            tag.insert("_type".into(), Json::String("set".into()));
            tag.insert(
                "value".into(),
                Json::Array(keyed.into_iter().map(|(_, v)| v).collect()),
            );
            Json::Object(tag)
        }
        Pickle::Dict(map) => {
            let mut obj = Map::new();
            for (k, v) in map {
                let key = match k {
                    HashableValue::String(s) => s,
                    HashableValue::None => "null".into(),
                    HashableValue::Bool(b) => b.to_string(),
                    HashableValue::I64(n) => n.to_string(),
                    HashableValue::Int(n) => n.to_string(),
                    HashableValue::F64(f) => python_float(f),
                    _ => {
                        return Err(
                            "a dict key that is not a string, number, boolean or None".into()
                        )
                    }
                };
                obj.insert(key, to_json(v, depth + 1)?);
            }
            Json::Object(obj)
        }
    })
}

/// `json.dumps(v, sort_keys=True)` with Python's defaults (", " and ": ", ASCII only).
fn python_dumps(v: &Json) -> String {
    let mut out = String::new();
    dumps_into(v, &mut out);
    out
}

fn dumps_into(v: &Json, out: &mut String) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => match n.as_f64().filter(|_| n.is_f64()) {
            Some(f) => out.push_str(&python_float(f)),
            None => out.push_str(&n.to_string()),
        },
        Json::String(s) => {
            out.push('"');
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                        let mut buf = [0u16; 2];
                        for unit in c.encode_utf16(&mut buf) {
                            out.push_str(&format!("\\u{unit:04x}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dumps_into(item, out);
            }
            out.push(']');
        }
        Json::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dumps_into(&Json::String(k.clone()), out);
                out.push_str(": ");
                dumps_into(&map[k], out);
            }
            out.push('}');
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from
/// 1e16 on.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let text = if exp >= 0 {
            let point = exp as usize + 1;
            if digits.len() > point {
                format!("{}.{}", &digits[..point], &digits[point..])
            } else {
                format!("{}{}.0", digits, "0".repeat(point - digits.len()))
            }
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{text}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr() {
        for (f, text) in [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-0.0, "-0.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "1e+16"),
            (123456789012345.6, "123456789012345.6"),
            (0.1, "0.1"),
            (1.5e300, "1.5e+300"),
        ] {
            assert_eq!(python_float(f), text, "{f}");
        }
    }

    #[test]
    fn python_dumps_escapes_like_json_dumps() {
        let v: Json = serde_json::json!({"b": [1, 2.5, "é\n"], "a": null});
        assert_eq!(
            python_dumps(&v),
            r#"{"a": null, "b": [1, 2.5, "\u00e9\n"]}"#
        );
    }

    #[test]
    fn refuses_globals_and_objects() {
        // protocol 0: cos\nsystem\n(S'true'\ntR.
        let e = check_pickle(b"cos\nsystem\n(S'true'\ntR.").unwrap_err();
        assert_eq!(e.skip, Skip::PickleGlobal);
        assert!(e.why.contains("os.system"), "{}", e.why);
        // protocol 4: STACK_GLOBAL of "posix" "system"
        let mut p = vec![0x80, 4, 0x8c, 5];
        p.extend_from_slice(b"posix");
        p.extend_from_slice(&[0x94, 0x8c, 6]);
        p.extend_from_slice(b"system");
        p.extend_from_slice(&[0x94, 0x93, 0x94, 0x8c, 4]);
        p.extend_from_slice(b"true");
        p.extend_from_slice(&[0x94, 0x85, 0x94, b'R', 0x94, b'.']);
        let e = check_pickle(&p).unwrap_err();
        assert!(e.why.contains("posix.system"), "{}", e.why);
        assert_eq!(decode_pickle(&p).unwrap_err().skip, Skip::PickleGlobal);
        // NEWOBJ without a named global is still refused.
        assert!(check_pickle(&[0x80, 4, b')', 0x81, b'.']).is_err());
        assert!(
            check_pickle(&[0x80, 4, b'}']).is_err(),
            "no STOP: truncated"
        );
        assert_eq!(
            check_pickle(&[0x80, 4, 0x8c, 200]).unwrap_err().skip,
            Skip::Unreadable
        );
    }

    #[test]
    fn old_protocol_sets_are_data() {
        // protocol 2: {'s': set([1])} as written by pickle.dumps(..., 2)
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00sq\x01c__builtin__\nset\nq\x02]q\x03K\x01a\x85q\x04Rq\x05s.";
        let f = decode_pickle(p).unwrap();
        assert_eq!(f["s"], r#"{"_type":"set","value":[1]}"#);
    }

    #[test]
    fn json_files() {
        let f = decode_file(b" {\"uid\": 2, \"context\": {\"lang\": \"en_US\"}}").unwrap();
        assert_eq!(f["uid"], "2");
        assert_eq!(decode_file(b"garbage").unwrap_err().skip, Skip::Unreadable);
    }
}
