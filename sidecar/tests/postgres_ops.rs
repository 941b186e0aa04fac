//! PostgreSQL housekeeping: expired rows removed in batches, UNLOGGED on request, schema
//! version checks.

mod common;

use std::time::Duration;

use common::{legacy_sid, s, shared_postgres, Harness};
use http::Method;
use serde_json::json;

async fn psql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(conn);
    client
}

async fn scalar(db: &tokio_postgres::Client, sql: &str) -> String {
    let row = db
        .query_one(&format!("SELECT ({sql})::text"), &[])
        .await
        .unwrap();
    row.get::<_, String>(0)
}

async fn flags(table: &str, extra: &[&str]) -> Vec<String> {
    let mut f = vec![
        "--driver=db".to_string(),
        format!("--db-uri={}", shared_postgres().url()),
        format!("--db-table={table}"),
    ];
    f.extend(extra.iter().map(|s| s.to_string()));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rows_are_collected() {
    let table = "gc_sessions";
    let h =
        Harness::with_flags(flags(table, &["--db-gc-interval=1", "--tombstone-ttl=1"]).await).await;
    let mut c = h.client();
    let keep = legacy_sid();
    c.json(Method::PUT, &s("", &keep), &[], &json!({"data": {}}))
        .await
        .unwrap();
    for _ in 0..1_500 {
        let sid = legacy_sid();
        c.json(
            Method::PUT,
            &s("", &sid),
            &[],
            &json!({"data": {}, "ttl": 1}),
        )
        .await
        .unwrap();
    }
    let gone = legacy_sid();
    c.send(Method::DELETE, &s("", &gone), &[], None)
        .await
        .unwrap();
    let db = psql(&shared_postgres().url()).await;
    let mut left = i64::MAX;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = scalar(&db, &format!("SELECT count(*) FROM {table}"))
            .await
            .parse::<i64>()
            .unwrap();
        if left == 1 {
            break;
        }
    }
    assert_eq!(
        left, 1,
        "expired sessions and tombstones removed (more than one batch), the live one kept"
    );
    assert_eq!(c.get(&s("", &keep)).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_follows_the_setting() {
    let table = "unlogged_sessions";
    let db = psql(&shared_postgres().url()).await;
    let h = Harness::with_flags(flags(table, &["--db-unlogged=true"]).await).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT relpersistence::text FROM pg_class WHERE relname = 'unlogged_sessions'"
        )
        .await,
        "u"
    );
    let sid = legacy_sid();
    h.client()
        .json(Method::PUT, &s("", &sid), &[], &json!({"data": {"a": 1}}))
        .await
        .unwrap();
    drop(h);
    let h = Harness::with_flags(flags(table, &[]).await).await;
    assert_eq!(
        scalar(
            &db,
            "SELECT relpersistence::text FROM pg_class WHERE relname = 'unlogged_sessions'"
        )
        .await,
        "p",
        "turned back into a logged table"
    );
    assert_eq!(
        h.client().get(&s("", &sid)).await.unwrap().status,
        200,
        "data kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let table = "future_sessions";
    let h = Harness::with_flags(flags(table, &[]).await).await;
    drop(h);
    let db = psql(&shared_postgres().url()).await;
    db.execute(
        &format!("UPDATE {table}_meta SET value = '99' WHERE key = 'schema'"),
        &[],
    )
    .await
    .unwrap();
    let h = Harness::with_flags(flags(table, &[]).await);
    let ready = tokio::time::timeout(Duration::from_secs(3), h).await;
    assert!(
        ready.is_err(),
        "a sidecar older than the schema must not serve it"
    );
}
