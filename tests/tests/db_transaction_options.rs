//! `/db/transaction`'s per-request `isolation`, `read_only` and `deferrable`, and PostgreSQL's error fields in the
//! error body (`detail`, `hint`, `position`, `schema`, `table`, `column`, `constraint`), on the real extension under
//! the emulated Lambda with a throwaway PostgreSQL database. Bodies are built from the contract's types.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::borrow::Cow;
use std::time::Duration;

use makenaide_contract::{routes, ErrorBody, ErrorCode, Isolation, Statement, TransactionRequest};
use makenaide_tests::lambda_env::{free_port, CoreClient, EnvConfig, LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use serde_json::{json, Value};

async fn start(db: &TestDb, read_only: bool) -> (LambdaEnv, CoreClient) {
    let cfg = EnvConfig::new(format!("{}/fixtures/fixture-fn", env!("CARGO_MANIFEST_DIR")))
        .extension(EXTENSION)
        .env("MAKENAIDE_DATABASE_URL", db.url())
        .env("MAKENAIDE_DB_READ_ONLY", if read_only { "true" } else { "false" })
        .env("MAKENAIDE_UPBIT_BASE_URL", format!("http://127.0.0.1:{}", free_port()))
        .timeout(Duration::from_secs(60));
    let env = LambdaEnv::start(cfg).await.unwrap();
    let core = env.core();
    core.wait_ready(true, Duration::from_secs(10)).await.unwrap();
    (env, core)
}

const SETTINGS: &str = "select current_setting('transaction_isolation') iso, \
     current_setting('transaction_read_only') ro, current_setting('transaction_deferrable') df";

fn request(stmts: &[Statement], f: impl FnOnce(&mut TransactionRequest<'_>)) -> Value {
    let mut t = TransactionRequest {
        statements: Cow::Borrowed(stmts),
        ..TransactionRequest::default()
    };
    f(&mut t);
    serde_json::to_value(&t).unwrap()
}

#[tokio::test]
async fn db_transaction_applies_isolation_read_only_and_deferrable() {
    let db = TestDb::create().await.unwrap();
    let (env, core) = start(&db, false).await;
    let _thawed = env.thaw();
    let settings = [Statement::sql(SETTINGS)];
    let rows = |v: Value| v["results"][0]["rows"][0].clone();

    // A plain read runs READ ONLY unless the request says otherwise (one round trip, safe to resend).
    let r = core
        .post_json(routes::DB_TRANSACTION, &request(&settings, |_| {}))
        .await
        .unwrap();
    assert_eq!(rows(r.json()), json!(["read committed", "on", "off"]));
    let r = core
        .post_json(
            routes::DB_TRANSACTION,
            &request(&settings, |t| t.read_only = Some(false)),
        )
        .await
        .unwrap();
    assert_eq!(rows(r.json()), json!(["read committed", "off", "off"]));
    let r = core
        .post_json(
            routes::DB_TRANSACTION,
            &request(&settings, |t| {
                t.isolation = Some(Isolation::Serializable);
                t.read_only = Some(true);
                t.deferrable = Some(true);
            }),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(rows(r.json()), json!(["serializable", "on", "on"]));
    for (level, shown) in [
        (Isolation::RepeatableRead, "repeatable read"),
        (Isolation::ReadCommitted, "read committed"),
    ] {
        let r = core
            .post_json(
                routes::DB_TRANSACTION,
                &request(&settings, |t| {
                    t.isolation = Some(level);
                    t.read_only = Some(false);
                }),
            )
            .await
            .unwrap();
        assert_eq!(rows(r.json()), json!([shown, "off", "off"]));
    }

    // read_only: true refuses writes with the contract's code, and nothing is written.
    let write = [
        Statement::sql("create table t (id int primary key)"),
        Statement::sql("insert into t values (1)"),
    ];
    let r = core
        .post_json(routes::DB_TRANSACTION, &request(&write, |t| t.read_only = Some(true)))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some(ErrorCode::ReadOnly.as_str()))
    );
    assert_eq!(r.json()["error"]["statement_index"], 0);
    let r = core
        .post_json(routes::DB_TRANSACTION, &request(&write, |t| t.read_only = Some(false)))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());

    // Bad values name the field and the accepted values.
    let r = core
        .post_json(
            routes::DB_TRANSACTION,
            &json!({"statements": [{"sql": "select 1"}], "isolation": "snapshot"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (400, Some(ErrorCode::InvalidRequest.as_str()))
    );
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("read_committed, repeatable_read, serializable"),
        "{message}"
    );
    let r = core
        .post_json(
            routes::DB_TRANSACTION,
            &json!({"statements": [{"sql": "select 1"}], "deferrable": "yes"}),
        )
        .await
        .unwrap();
    assert_eq!(r.error_code().as_deref(), Some(ErrorCode::InvalidRequest.as_str()));
}

#[tokio::test]
async fn db_read_only_mode_refuses_read_only_false() {
    let db = TestDb::create().await.unwrap();
    let (env, core) = start(&db, true).await;
    let _thawed = env.thaw();
    let settings = [Statement::sql(SETTINGS)];
    let r = core
        .post_json(
            routes::DB_TRANSACTION,
            &request(&settings, |t| t.read_only = Some(false)),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (403, Some(ErrorCode::ReadOnly.as_str()))
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("MAKENAIDE_DB_READ_ONLY=true"),
        "{:?}",
        r.json()
    );
    // Asking for what the mode gives anyway is fine, and combines with the isolation level.
    let r = core
        .post_json(
            routes::DB_TRANSACTION,
            &request(&settings, |t| {
                t.read_only = Some(true);
                t.isolation = Some(Isolation::RepeatableRead);
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        r.json()["results"][0]["rows"][0],
        json!(["repeatable read", "on", "off"])
    );
}

#[tokio::test]
async fn db_error_body_carries_postgresql_fields() {
    let db = TestDb::create().await.unwrap();
    let (env, core) = start(&db, false).await;
    let _thawed = env.thaw();
    let setup = [Statement::sql(
        "create table items (name text constraint items_name_key unique, qty int4 not null)",
    )];
    assert_eq!(
        core.post_json(routes::DB_TRANSACTION, &request(&setup, |_| {}))
            .await
            .unwrap()
            .status,
        200
    );

    let dup = [
        Statement::new("insert into items values ($1, 1)", vec![json!("apple")]),
        Statement::new("insert into items values ($1, 2)", vec![json!("apple")]),
    ];
    let r = core
        .post_json(routes::DB_TRANSACTION, &request(&dup, |_| {}))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let body: ErrorBody = serde_json::from_slice(&r.body).unwrap();
    let e = body.error;
    assert_eq!(
        (e.code.as_str(), e.sqlstate.as_deref()),
        (ErrorCode::SqlError.as_str(), Some("23505"))
    );
    assert_eq!(e.statement_index, Some(1));
    assert_eq!(e.pg.constraint.as_deref(), Some("items_name_key"));
    assert_eq!(e.pg.detail.as_deref(), Some("Key (name)=(apple) already exists."));
    assert_eq!(
        (e.pg.schema.as_deref(), e.pg.table.as_deref()),
        (Some("public"), Some("items"))
    );
    assert_eq!(e.pg.position, None);

    let r = core
        .query_raw("insert into items (name) values ('pear')", json!([]))
        .await
        .unwrap();
    let e = serde_json::from_slice::<ErrorBody>(&r.body).unwrap().error;
    assert_eq!(
        (e.sqlstate.as_deref(), e.pg.column.as_deref()),
        (Some("23502"), Some("qty"))
    );

    let r = core.query_raw("select * fromm items", json!([])).await.unwrap();
    let e = serde_json::from_slice::<ErrorBody>(&r.body).unwrap().error;
    assert_eq!((e.sqlstate.as_deref(), e.pg.position), (Some("42601"), Some(10)));

    let r = core
        .query_raw("select nosuchcolumn from items", json!([]))
        .await
        .unwrap();
    let v = r.json();
    assert_eq!(v["error"]["position"], 8, "{v}");
    assert!(
        v["error"].get("constraint").is_none() && v["error"].get("detail").is_none(),
        "absent fields are omitted: {v}"
    );

    let r = core
        .query_raw("select 1 from items where nme = 'x'", json!([]))
        .await
        .unwrap();
    let hint = serde_json::from_slice::<ErrorBody>(&r.body).unwrap().error.pg.hint;
    assert!(hint.as_deref().is_some_and(|h| h.contains("name")), "{hint:?}");

    // Nothing of the failed transaction was committed.
    let r = core.query("select count(*)::int4 from items", json!([])).await.unwrap();
    assert_eq!(r["rows"], json!([[0]]));
}
