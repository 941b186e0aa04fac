//! Which writes wait for the WAL flush. By default (`DKN_AUTH_DB_SYNCHRONOUS_COMMIT=on`)
//! every write keeps the connection's own `synchronous_commit`; with `off`, data writes
//! (puts, patches, TTL refreshes) commit with `synchronous_commit = off` and endings
//! (delete, rotation, identifier revoke) still keep the connection's setting. The sidecar's
//! connections here default to `remote_apply` (set through the URI's `options`), a value
//! neither `on` nor `off`, and a deferred constraint trigger on the session table records
//! the setting each writing transaction has at its COMMIT, which is what PostgreSQL reads
//! when it decides to wait.

mod common;

use common::{identifier, legacy_sid, modern_sid, s, shared_postgres, Harness};
use http::Method;
use serde_json::json;

async fn psql() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&shared_postgres().url(), tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

/// The settings at COMMIT of the transactions since the last call, in commit order.
async fn commits(db: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let rows = db
        .query(
            &format!("DELETE FROM {table}_commits RETURNING n, mode"),
            &[],
        )
        .await
        .unwrap();
    let mut seen: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    seen.sort();
    seen.dedup_by(|a, b| a.1 == b.1 && a.0 == b.0);
    seen.into_iter().map(|(_, m)| m).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_every_write_keeps_the_connections_setting() {
    commit_modes("on", "commit_on_sessions", "remote_apply").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_off_endings_commit_durably_and_data_writes_do_not_wait() {
    commit_modes("off", "commit_off_sessions", "off").await;
}

/// `data`: the setting data writes are expected to commit with; endings always have the
/// connection's `remote_apply`.
async fn commit_modes(setting: &str, table: &str, data: &str) {
    let uri = format!(
        "{}&options=-c%20synchronous_commit%3Dremote_apply",
        shared_postgres().url()
    );
    let h = Harness::with_flags(vec![
        "--driver=db".into(),
        format!("--db-uri={uri}"),
        format!("--db-table={table}"),
        format!("--db-synchronous-commit={setting}"),
    ])
    .await;
    let db = psql().await;
    // One row per writing transaction (the trigger is deferred: it runs once per row
    // written, at COMMIT, after every statement of the transaction).
    db.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}_commits;
         CREATE TABLE {table}_commits (n bigserial, xid xid8, mode text);
         CREATE OR REPLACE FUNCTION {table}_commit_mode() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NOT EXISTS (SELECT 1 FROM {table}_commits WHERE xid = pg_current_xact_id()) THEN
             INSERT INTO {table}_commits (xid, mode)
               VALUES (pg_current_xact_id(), current_setting('synchronous_commit'));
           END IF;
           RETURN NULL;
         END $$;
         DROP TRIGGER IF EXISTS commit_mode ON {table};
         CREATE CONSTRAINT TRIGGER commit_mode AFTER INSERT OR UPDATE OR DELETE ON {table}
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_commit_mode();"
    ))
    .await
    .unwrap();
    let mut c = h.client();
    let ident = identifier();
    let (a, b, gone) = (modern_sid(&ident), legacy_sid(), legacy_sid());

    let expect = |what: &str, status: u16, got: u16| assert_eq!(got, status, "{what}");
    let r = c
        .json(Method::PUT, &s("", &a), &[], &json!({"data": {"uid": 1}}))
        .await
        .unwrap();
    expect("put (create)", 201, r.status.as_u16());
    assert_eq!(commits(&db, table).await, [data], "a put (create)");

    let r = c
        .json(
            Method::PUT,
            &s("", &a),
            &[("if-match", "\"1\"")],
            &json!({"data": {"uid": 2}}),
        )
        .await
        .unwrap();
    expect("put If-Match", 200, r.status.as_u16());
    let r = c
        .json(Method::PATCH, &s("", &a), &[], &json!({"set": {"x": 1}}))
        .await
        .unwrap();
    expect("patch", 200, r.status.as_u16());
    let r = c
        .json(Method::PATCH, &s("", &a), &[], &json!({"ttl": 60}))
        .await
        .unwrap();
    expect("TTL refresh", 200, r.status.as_u16());
    assert_eq!(
        commits(&db, table).await,
        [data, data, data],
        "conditional puts, patches and TTL refreshes"
    );

    let r = c
        .json(Method::PUT, &s("", &a), &[], &json!({"data": {"uid": 3}}))
        .await
        .unwrap();
    expect("put (unconditional)", 200, r.status.as_u16());
    let r = c
        .json(
            Method::PATCH,
            &s("", &a),
            &[],
            &json!({"set": {"y": 1}, "expect": {"uid": 3}}),
        )
        .await
        .unwrap();
    expect("patch with expect", 200, r.status.as_u16());
    assert_eq!(
        commits(&db, table).await,
        [data, data],
        "unconditional puts and patches with conditions"
    );

    // Endings.
    let r = c
        .json(Method::POST, &s("/rotate", &a), &[], &json!({"new_sid": b}))
        .await
        .unwrap();
    expect("rotation", 201, r.status.as_u16());
    assert_eq!(
        commits(&db, table).await,
        ["remote_apply"],
        "a rotation is durable"
    );
    let r = c.send(Method::DELETE, &s("", &b), &[], None).await.unwrap();
    expect("delete", 204, r.status.as_u16());
    // A delete of a session never stored writes its tombstone: durable too.
    c.send(Method::DELETE, &s("", &gone), &[], None)
        .await
        .unwrap();
    assert_eq!(
        commits(&db, table).await,
        ["remote_apply", "remote_apply"],
        "deletes are durable"
    );
    let d = modern_sid(&ident);
    c.json(Method::PUT, &s("", &d), &[], &json!({"data": {}}))
        .await
        .unwrap();
    let etag = c.get(&s("", &d)).await.unwrap().etag.expect("an ETag");
    let r = c
        .send(
            Method::DELETE,
            &s("", &d),
            &[("if-match", etag.as_str())],
            None,
        )
        .await
        .unwrap();
    expect("delete If-Match", 204, r.status.as_u16());
    assert_eq!(
        commits(&db, table).await,
        [data, "remote_apply"],
        "a conditional delete is durable"
    );
    let e = modern_sid(&ident);
    c.json(Method::PUT, &s("", &e), &[], &json!({"data": {}}))
        .await
        .unwrap();
    let r = c
        .json(
            Method::POST,
            "/v1/identifiers/delete",
            &[],
            &json!({"identifiers": [ident]}),
        )
        .await
        .unwrap();
    expect("identifier revoke", 200, r.status.as_u16());
    assert_eq!(
        commits(&db, table).await,
        [data, "remote_apply"],
        "an identifier revoke is durable"
    );
}
