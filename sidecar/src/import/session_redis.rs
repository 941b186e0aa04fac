//! camptocamp `session_redis`: one string key per session, `<prefix><sid>`, holding
//! `json.dumps(dict(session), cls=SessionEncoder)` (dates, datetimes and, from 16.0 on, sets
//! tagged as `{"_type": ..., "value": ...}`, the tags `dkn_auth` reads back), with an
//! `EXPIRE` of the session's lifetime set after each save. The prefix is `session:`, or
//! `session::<ODOO_SESSION_REDIS_PREFIX>:` when that variable is set.
//!
//! Keys are listed with `SCAN` (never `KEYS`), then read 500 at a time in one pipeline of
//! `GET` and `PTTL` (and `OBJECT IDLETIME` with `--since`). The remaining lifetime is the
//! key's own TTL; a key without one (the `SET` happened, the `EXPIRE` did not) gets
//! `--max-age`.

use std::time::{Duration, SystemTime};

use redis::Value;

use super::{fields_from_json, Fatal, Found, Importer};

const BATCH: usize = 500;

/// `prefix` with the glob characters of `SCAN MATCH` escaped.
fn pattern(prefix: &str) -> String {
    let mut out = String::new();
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('*');
    out
}

pub async fn read(uri: &str, prefix: &str, imp: &mut Importer) -> Result<(), Fatal> {
    let source = |e: redis::RedisError| Fatal::Source(format!("Redis {}: {e}", shown(uri)));
    let client = redis::Client::open(uri).map_err(source)?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| Fatal::Source(format!("Redis {}: no answer within 10 s", shown(uri))))?
    .map_err(source)?;
    let pattern = pattern(prefix);
    let mut cursor: u64 = 0;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(source)?;
        pending.extend(keys);
        while pending.len() >= BATCH {
            let batch: Vec<Vec<u8>> = pending.drain(..BATCH).collect();
            read_batch(&mut conn, prefix, batch, imp).await?;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    if !pending.is_empty() {
        read_batch(&mut conn, prefix, pending, imp).await?;
    }
    Ok(())
}

async fn read_batch(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    keys: Vec<Vec<u8>>,
    imp: &mut Importer,
) -> Result<(), Fatal> {
    let with_idle = imp.since.is_some();
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for key in &keys {
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        if with_idle {
            pipe.cmd("OBJECT").arg("IDLETIME").arg(key);
        }
    }
    let replies: Vec<redis::RedisResult<Value>> = pipe
        .query_async(conn)
        .await
        .map_err(|e| Fatal::Source(format!("Redis: {e}")))?;
    let per_key = if with_idle { 3 } else { 2 };
    let now = SystemTime::now();
    for (key, reply) in keys.iter().zip(replies.chunks(per_key)) {
        let sid = String::from_utf8_lossy(&key[prefix.len().min(key.len())..]).into_owned();
        let data = match &reply[0] {
            Ok(Value::BulkString(b)) => Some(b.clone()),
            // Gone between SCAN and GET, or not a string key (another application's).
            _ => None,
        };
        let pttl = match &reply[1] {
            Ok(Value::Int(n)) => *n,
            _ => -2,
        };
        let remaining_ms = match (data.is_some(), pttl) {
            (false, _) | (_, -2) => 0,
            (true, -1) => i64::try_from(imp.max_age.as_millis()).unwrap_or(i64::MAX),
            (true, n) => n.max(0),
        };
        // OBJECT IDLETIME: seconds since the key was last read or written (unknown under an
        // LFU eviction policy, which refuses the command: then the key counts as used).
        let touched = match reply.get(2) {
            Some(Ok(Value::Int(secs))) => {
                now.checked_sub(Duration::from_secs((*secs).max(0) as u64))
            }
            _ => None,
        };
        let place = format!(
            "key {}...",
            String::from_utf8_lossy(&key[..(prefix.len() + 8).min(key.len())])
        );
        let found = Found {
            sid: &sid,
            remaining_ms,
            touched,
            place: &place,
        };
        imp.offer(found, || {
            fields_from_json(data.as_deref().unwrap_or_default())
        })
        .await?;
    }
    Ok(())
}

/// The URI without its password, for messages.
fn shown(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "(the --from URI)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(pattern("session:"), "session:*");
        assert_eq!(pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(shown("redis://:secret@h:6379/2"), "redis://:***@h:6379/2");
    }
}
