//! The SQL path against a real PostgreSQL (the machine's on 127.0.0.1:5432, or `MAKENAIDE_TEST_PG`): JSON ↔
//! PostgreSQL conversions by inferred type, transactions and their rollback, statement timeouts and deadlines,
//! read-only mode, the statement cache across schema changes, stale pooled connections, shutdown. Each test has
//! its own throwaway database (`makenaide_tests::pg::TestDb`), dropped afterwards even when the test fails.

#![allow(clippy::unwrap_used)]

use makenaide_core::config::{parse_database_url, Config, Secret};
use makenaide_core::db::{Db, DbStatus, QueryResult, StatementRequest};
use makenaide_core::Error;
use makenaide_tests::pg::TestDb;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// The extension's configuration for `db` (token and timeouts of a test).
fn config(db: &TestDb) -> Config {
    Config {
        token: Secret::new("t"),
        database: Some(parse_database_url(db.url()).unwrap()),
        db_connect_timeout: Duration::from_millis(2000),
        ..Config::default()
    }
}

fn stmt(sql: &str, params: serde_json::Value) -> StatementRequest {
    StatementRequest::from_values(sql, params.as_array().map_or(&[][..], Vec::as_slice))
}

async fn q(db: &Db, sql: &str, params: serde_json::Value) -> Result<QueryResult, Error> {
    db.query(stmt(sql, params), None, None).await
}

#[tokio::test]
async fn scalar_conversions_follow_inferred_types() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    let r = q(
        &db,
        "select $1::bool b, $2::int2 s, $3::int4 i, $4::int8 l, $5::float4 f, $6::float8 d, $7::numeric n, \
         $8::text t, $9::varchar v, $10::jsonb j, $11::json js, $12::uuid u, $13::date dt, $14::timestamp ts, \
         $15::timestamptz tz, $16::bytea by, $17::numeric n2, $18::time tm",
        json!([true, 7, 70000, 9_007_199_254_740_993_i64, 1.5, 2.25, "123456789012345678901234567890.000000001",
            "héllo", "v", {"a": [1, "x"]}, [1, 2], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2024-02-29",
            "2024-01-31T09:00:00.123456", "2024-01-31T09:00:00+09:00", "\\x00ff", 12.5, "09:30:00"]),
    )
    .await
    .unwrap();
    assert_eq!(r.row_count, 1);
    let types: Vec<&str> = r.columns.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "bool",
            "int2",
            "int4",
            "int8",
            "float4",
            "float8",
            "numeric",
            "text",
            "varchar",
            "jsonb",
            "json",
            "uuid",
            "date",
            "timestamp",
            "timestamptz",
            "bytea",
            "numeric",
            "time"
        ]
    );
    assert_eq!(
        serde_json::Value::Array(r.rows()[0].clone()),
        json!([true, 7, 70000, 9_007_199_254_740_993_i64, 1.5, 2.25, "123456789012345678901234567890.000000001",
            "héllo", "v", {"a": [1, "x"]}, [1, 2], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2024-02-29",
            "2024-01-31T09:00:00.123456", "2024-01-31T00:00:00+00:00", "\\x00ff", "12.5", "09:30:00"])
    );
}

#[tokio::test]
async fn nulls_arrays_and_inference() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    // `$1 + 1` makes PostgreSQL infer int4 for $1; `= any($2)` infers text[].
    let r = q(
        &db,
        "select $1 + 1 as x, 'b' = any($2) as found, $3::int8[] as arr, null::text as n",
        json!([41, ["a", "b"], [1, null, 3]]),
    )
    .await
    .unwrap();
    assert_eq!(
        r.rows()[0],
        vec![json!(42), json!(true), json!([1, null, 3]), json!(null)]
    );
    assert_eq!(r.columns[2].1, "int8[]");

    let e = q(&db, "select $1 + 1", json!(["x"])).await.unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::InvalidParam.as_str());
    assert!(e.to_string().contains("$1") && e.to_string().contains("int4"), "{e}");
    assert!(e.statement_index().is_none(), "no index for /db/query");

    let e = q(&db, "select $1::int4, $2::int4", json!([1])).await.unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::InvalidRequest.as_str());
    assert!(e.to_string().contains("2 parameter"), "{e}");

    // 2-D arrays come out nested.
    let r = q(&db, "select '{{1,2},{3,4}}'::int4[] as m, '{}'::text[] as e", json!([]))
        .await
        .unwrap();
    assert_eq!(r.rows()[0], vec![json!([[1, 2], [3, 4]]), json!([])]);
}

#[tokio::test]
async fn writes_row_counts_and_injection_is_inert() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    q(
        &db,
        "create table items (id serial primary key, name text not null, price numeric, at timestamptz)",
        json!([]),
    )
    .await
    .unwrap();
    let r = q(
        &db,
        "insert into items (name, price, at) values ($1, $2, $3), ($4, $5, $6)",
        json!(["a", "1.10", "2024-01-01T00:00:00Z", "b", 2, null]),
    )
    .await
    .unwrap();
    assert_eq!(r.row_count, 2, "rows affected");
    assert!(r.columns.is_empty() && r.rows().is_empty());
    let r = q(
        &db,
        "insert into items (name) values ($1) returning id, name",
        json!(["x'); drop table items; --"]),
    )
    .await
    .unwrap();
    assert_eq!(r.row_count, 1);
    assert_eq!(r.rows()[0][1], json!("x'); drop table items; --"));
    let r = q(&db, "select name, price from items order by id", json!([]))
        .await
        .unwrap();
    assert_eq!(r.row_count, 3, "table still there, injection stored as text");
    assert_eq!(r.rows()[0], vec![json!("a"), json!("1.10")]);
    let r = q(
        &db,
        "update items set price = price * 2 where price is not null",
        json!([]),
    )
    .await
    .unwrap();
    assert_eq!(r.row_count, 2);
}

#[tokio::test]
async fn transaction_is_all_or_nothing_with_statement_index() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    q(&db, "create table kv (k text primary key, v int)", json!([]))
        .await
        .unwrap();
    let ok = db
        .transaction(
            vec![
                stmt("insert into kv values ($1, $2)", json!(["a", 1])),
                stmt("select count(*) as n from kv", json!([])),
            ],
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(ok[1].rows()[0][0], json!(1));

    let e = db
        .transaction(
            vec![
                stmt("insert into kv values ($1, $2)", json!(["b", 2])),
                stmt("insert into kv values ($1, $2)", json!(["a", 3])),
                stmt("insert into kv values ($1, $2)", json!(["c", 4])),
            ],
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::SqlError.as_str());
    assert_eq!(e.statement_index(), Some(1));
    assert_eq!(e.to_json()["error"]["sqlstate"], "23505");
    let n = q(&db, "select count(*) from kv", json!([])).await.unwrap();
    assert_eq!(n.rows()[0][0], json!(1), "b was rolled back");

    // A conversion error is found before anything runs, with the right index.
    let e = db
        .transaction(
            vec![
                stmt("insert into kv values ($1, 1)", json!(["z"])),
                stmt("select $1::int4", json!(["nope"])),
            ],
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::InvalidParam.as_str());
    assert_eq!(e.statement_index(), Some(1));
    let e = db
        .transaction(vec![stmt("selec 1", json!([]))], None, None)
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.statement_index()),
        (makenaide_contract::ErrorCode::SqlError.as_str(), Some(0))
    );
    assert_eq!(e.to_json()["error"]["sqlstate"], "42601");
    let n = q(&db, "select count(*) from kv", json!([])).await.unwrap();
    assert_eq!(n.rows()[0][0], json!(1));
}

#[tokio::test]
async fn statement_timeout_and_deadline() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    let started = Instant::now();
    let e = db
        .query(
            stmt("select pg_sleep(5)", json!([])),
            Some(Duration::from_millis(100)),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::DbTimeout.as_str());
    assert_eq!(e.status().as_u16(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    // The deadline header caps the statement timeout.
    let e = db
        .query(
            stmt("select pg_sleep(5)", json!([])),
            None,
            Some(Instant::now() + Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::DbTimeout.as_str());
    // The connection is fine afterwards.
    assert_eq!(
        q(&db, "select 1 as one", json!([])).await.unwrap().rows()[0][0],
        json!(1)
    );
}

#[tokio::test]
async fn read_only_switch() {
    let t = TestDb::create().await.unwrap();
    let rw = Db::new(&config(&t)).unwrap();
    q(&rw, "create table t (x int)", json!([])).await.unwrap();
    let ro = Db::new(&Config {
        db_read_only: true,
        ..config(&t)
    })
    .unwrap();
    let e = q(&ro, "insert into t values (1)", json!([])).await.unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::ReadOnly.as_str());
    assert_eq!(e.status().as_u16(), 403);
    assert_eq!(e.to_json()["error"]["sqlstate"], "25006");
    assert_eq!(
        q(&ro, "select count(*) from t", json!([])).await.unwrap().rows()[0][0],
        json!(0)
    );
}

#[tokio::test]
async fn unsupported_result_type_says_how_to_cast() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    let e = q(&db, "select 'a b'::tsvector as doc", json!([])).await.unwrap_err();
    assert_eq!(e.code(), makenaide_contract::ErrorCode::InvalidRequest.as_str());
    assert!(e.to_string().contains("doc::text"), "{e}");
    let r = q(
        &db,
        "select 'a b'::tsvector::text as doc, interval '1 day 2 hours' as i",
        json!([]),
    )
    .await
    .unwrap();
    assert_eq!(r.rows()[0], vec![json!("'a' 'b'"), json!("P1DT2H")]);
}

async fn backend_pids(admin: &tokio_postgres::Client, db: &str) -> Vec<i32> {
    admin
        .query(
            "select pid from pg_stat_activity where datname = $1 and application_name = 'makenaide-core'",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn stale_connections_are_retried_on_a_fresh_one() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    db.warm_up().await;
    assert_eq!(db.status(), DbStatus::Ready);
    let pid1 = q(&db, "select pg_backend_pid()", json!([])).await.unwrap().rows()[0][0].clone();
    // Same backend on the next request: the pool reuses its connection.
    assert_eq!(
        q(&db, "select pg_backend_pid()", json!([])).await.unwrap().rows()[0][0],
        pid1
    );

    // Kill every backend of ours (what a freeze + server-side idle kill looks like after the thaw).
    let admin = t.connect().await.unwrap();
    for _ in 0..5 {
        admin
            .execute("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and application_name = 'makenaide-core'", &[&t.name()])
            .await
            .unwrap();
        let r = q(&db, "select pg_backend_pid()", json!([])).await.unwrap();
        assert_ne!(r.rows()[0][0], pid1, "a fresh backend answered");
    }
    assert_eq!(db.status(), DbStatus::Ready);
    assert!(backend_pids(&admin, t.name()).await.len() <= 4);
}

#[tokio::test]
async fn statement_cache_on_and_off() {
    let t = TestDb::create().await.unwrap();
    let cached = Db::new(&config(&t)).unwrap();
    for _ in 0..3 {
        q(&cached, "select $1::int4 + 1 as x", json!([1])).await.unwrap();
    }
    let r = q(&cached, "select count(*) as n from pg_prepared_statements", json!([]))
        .await
        .unwrap();
    assert_eq!(
        r.rows()[0][0],
        json!(2),
        "both statements stay prepared on the connection"
    );

    let uncached = Db::new(&Config {
        db_statement_cache: false,
        db_pool_size: 1,
        ..config(&t)
    })
    .unwrap();
    for _ in 0..3 {
        q(&uncached, "select $1::int4 + 1 as x", json!([1])).await.unwrap();
    }
    // Only the statement asking is prepared (it is closed before its own COMMIT).
    let r = q(&uncached, "select count(*) as n from pg_prepared_statements", json!([]))
        .await
        .unwrap();
    assert_eq!(r.rows()[0][0], json!(1));
    let r = uncached
        .transaction(
            vec![
                stmt("select 1", json!([])),
                stmt("select count(*) from pg_prepared_statements", json!([])),
            ],
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r[1].rows()[0][0], json!(2));
    let r = q(&uncached, "select count(*) from pg_prepared_statements", json!([]))
        .await
        .unwrap();
    assert_eq!(r.rows()[0][0], json!(1), "nothing outlived its transaction");
}

#[tokio::test]
async fn schema_change_under_a_cached_statement_is_transparent() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&Config {
        db_pool_size: 1,
        ..config(&t)
    })
    .unwrap();
    q(&db, "create table s (a int)", json!([])).await.unwrap();
    q(&db, "select * from s", json!([])).await.unwrap();
    q(&db, "alter table s add column b text", json!([])).await.unwrap();
    let r = q(&db, "select * from s", json!([])).await.unwrap();
    assert_eq!(r.columns.len(), 2);
}

#[tokio::test]
async fn unreachable_database_answers_503_within_the_connect_timeout() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = Config {
        token: Secret::new("t"),
        database: Some(parse_database_url(&format!("postgres://postgres@127.0.0.1:{port}/x?sslmode=disable")).unwrap()),
        db_connect_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let db = Db::new(&config).unwrap();
    let started = Instant::now();
    let e = q(&db, "select 1", json!([])).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.code(), makenaide_contract::ErrorCode::DbUnavailable.as_str());
    assert!(e.to_string().contains("unreachable"), "{e}");
    assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
    assert_eq!(db.status(), DbStatus::Unavailable);
    let not_configured = Db::new(&Config::default()).unwrap();
    assert_eq!(
        q(&not_configured, "select 1", json!([])).await.unwrap_err().code(),
        makenaide_contract::ErrorCode::DbNotConfigured.as_str()
    );
    assert_eq!(not_configured.status(), DbStatus::NotConfigured);
}

#[tokio::test]
async fn close_ends_every_session() {
    let t = TestDb::create().await.unwrap();
    let db = Db::new(&config(&t)).unwrap();
    let f1 = q(&db, "select pg_sleep(0.2)", json!([]));
    let f2 = q(&db, "select pg_sleep(0.2)", json!([]));
    let (a, b) = tokio::join!(f1, f2);
    a.unwrap();
    b.unwrap();
    let admin = t.connect().await.unwrap();
    assert_eq!(backend_pids(&admin, t.name()).await.len(), 2);
    db.close(Duration::from_millis(500)).await;
    // Terminate was sent: the server-side sessions go away promptly.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !backend_pids(&admin, t.name()).await.is_empty() {
        assert!(Instant::now() < deadline, "sessions still there after close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        q(&db, "select 1", json!([])).await.unwrap_err().code(),
        makenaide_contract::ErrorCode::ShuttingDown.as_str()
    );
}
