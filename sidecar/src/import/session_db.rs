//! OCA `session_db`: the table `http_sessions(sid varchar primary key, write_date timestamp
//! without time zone, payload text)` in the database of `SESSION_DB_URI`. `write_date` is
//! the time of the last save in UTC; the payload is plain `json.dumps(dict(session))` (no
//! tags: session_db cannot save sets or datetimes). Its clean-up (`vacuum`) deletes rows
//! whose `write_date` is older than Odoo's `SESSION_LIFETIME` (7 days), so a session's
//! remaining lifetime is `write_date + --max-age - now`, on PostgreSQL's clock.
//!
//! Rows are streamed from one read-only query; nothing is written to the source.

use std::time::{Duration, UNIX_EPOCH};

use futures_util::{pin_mut, TryStreamExt};
use tokio_postgres::types::ToSql;

use super::{fields_from_json, remaining_ms, Fatal, Found, Importer};

pub async fn read(uri: &str, table: &str, imp: &mut Importer) -> Result<(), Fatal> {
    let source = |e: tokio_postgres::Error| Fatal::Source(format!("PostgreSQL: {e}"));
    let connect = async {
        if wants_tls(uri) {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(config);
            let (client, conn) = tokio_postgres::connect(uri, tls).await?;
            tokio::spawn(conn);
            Ok::<_, tokio_postgres::Error>(client)
        } else {
            let (client, conn) = tokio_postgres::connect(uri, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Ok(client)
        }
    };
    let client = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| Fatal::Source("PostgreSQL: no answer within 10 s".into()))?
        .map_err(source)?;
    // Epoch seconds of the row and of PostgreSQL's now(), so that the age follows the
    // clock session_db's own clean-up uses.
    let sql = format!(
        "SELECT sid::text, \
                (EXTRACT(EPOCH FROM now()) - EXTRACT(EPOCH FROM (write_date AT TIME ZONE 'UTC')))::float8, \
                EXTRACT(EPOCH FROM (write_date AT TIME ZONE 'UTC'))::float8, \
                payload::text \
           FROM \"{table}\""
    );
    let params: [&(dyn ToSql + Sync); 0] = [];
    let rows = client
        .query_raw(sql.as_str(), params)
        .await
        .map_err(source)?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(source)? {
        let sid: Option<String> = row.get(0);
        let age_s: Option<f64> = row.get(1);
        let written_s: Option<f64> = row.get(2);
        let payload: Option<String> = row.get(3);
        let sid = sid.unwrap_or_default();
        let age_ms = age_s.map(|a| (a * 1000.0) as i64).unwrap_or(i64::MAX);
        let touched = written_s
            .filter(|w| w.is_finite() && *w >= 0.0)
            .map(|w| UNIX_EPOCH + Duration::from_secs_f64(w));
        let found = Found {
            sid: &sid,
            remaining_ms: remaining_ms(imp.max_age, age_ms),
            touched,
            place: "row",
        };
        imp.offer(found, || {
            fields_from_json(payload.as_deref().unwrap_or("").as_bytes())
        })
        .await?;
    }
    Ok(())
}

/// `sslmode=require` in the URI: TLS verified against the public roots.
fn wants_tls(uri: &str) -> bool {
    uri.contains("sslmode=require")
}
