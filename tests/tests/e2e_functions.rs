//! End-to-end tests of the real function binaries with the real extension that need no Upbit: the schema
//! migrations, event validation of the data collector, and the extension's init error on invalid configuration.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use makenaide_tests::error::HarnessError;
use makenaide_tests::lambda_env::{free_port, EnvConfig, InvokeStatus, LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use serde_json::json;

mod common;
use common::{result_of, COLLECTOR, INITIALIZER, SHUTDOWN_BUDGET};

fn cfg(function: &str, db: &TestDb) -> EnvConfig {
    EnvConfig::makenaide(function)
        .env("MAKENAIDE_DATABASE_URL", db.url())
        // Nothing listens there: these tests must never need Upbit.
        .env("MAKENAIDE_UPBIT_BASE_URL", format!("http://127.0.0.1:{}", free_port()))
        .timeout(Duration::from_secs(30))
}

/// Shuts `env` down and asserts that the extension exited cleanly (exit 0).
async fn shutdown_cleanly(env: LambdaEnv) {
    let report = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    assert!(report.extension(EXTENSION).unwrap().exit.is_some_and(|e| e.success()));
}

#[tokio::test]
async fn db_initializer_applies_migrations_once() {
    let db = TestDb::create().await.unwrap();
    let env = LambdaEnv::start(cfg(INITIALIZER, &db)).await.unwrap();
    let first = env.invoke(json!({})).await.unwrap();
    let r1 = result_of(first.ok().unwrap()).clone();
    let applied = r1["applied"].as_array().unwrap().len();
    assert!(applied >= 1, "{r1}");
    let second = env.invoke(json!({})).await.unwrap();
    let r2 = result_of(second.ok().unwrap()).clone();
    assert_eq!(r2["applied"], json!([]), "migrations applied twice: {r2}");
    assert_eq!(r2["current_version"], r1["current_version"]);

    let client = db.connect().await.unwrap();
    for table in ["ohlcv", "markets", "scan_results", "schema_migrations"] {
        let n: i64 = client
            .query_one(
                "select count(*) from information_schema.tables where table_name = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "table {table} missing");
    }
    let versions: i64 = client
        .query_one("select count(*) from schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions as usize, applied);
    shutdown_cleanly(env).await;
}

#[tokio::test]
async fn data_collector_rejects_invalid_events_with_invalid_event_errors() {
    let db = TestDb::create().await.unwrap();
    let env = LambdaEnv::start(cfg(COLLECTOR, &db)).await.unwrap();
    let bad = [
        (json!({"markets": "KRW-BTC"}), "markets"),
        (json!({"markets": ["krw-btc"]}), "krw-btc"),
        (json!({"markets": ["KRW-BTC"], "interval": "hours"}), "interval"),
        (json!({"markets": ["KRW-BTC"], "interval": "minutes/7"}), "interval"),
        (json!({"markets": ["KRW-BTC"], "count": 0}), "count"),
        (json!({"markets": ["KRW-BTC"], "count": "3"}), "count"),
        (json!([1, 2]), "object"),
    ];
    for (event, needle) in bad {
        let out = env.invoke(event.clone()).await.unwrap();
        assert_eq!(out.status, InvokeStatus::Error, "{event} was accepted: {out:?}");
        assert_eq!(out.error_type(), Some("InvalidEvent"), "{event}: {out:?}");
        let msg = &out.error.as_ref().unwrap().message;
        assert!(
            msg.contains(needle),
            "{event}: the message does not name `{needle}`: {msg}"
        );
        assert!(out.frozen, "environment not frozen after a function error");
    }
    // Rejected before any Upbit call: nothing in the journal of the extension says it tried.
    shutdown_cleanly(env).await;
}

#[tokio::test]
async fn extension_reports_invalid_configuration_through_init_error() {
    let secret = "hunter2-secret";
    let cfg = EnvConfig::makenaide(COLLECTOR)
        .env(
            "MAKENAIDE_DATABASE_URL",
            format!("postgres://app:{secret}@127.0.0.1:5432/x?sslmode=bogus"),
        )
        .env("MAKENAIDE_UPBIT_BASE_URL", format!("http://127.0.0.1:{}", free_port()));
    let err = match LambdaEnv::start(cfg).await {
        Ok(_) => panic!("an invalid sslmode must fail Init"),
        Err(e) => e,
    };
    let HarnessError::InitFailed(failure) = err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(failure.extension_init_errors.len(), 1, "{failure}");
    let (name, error_type, body) = &failure.extension_init_errors[0];
    assert_eq!(name, EXTENSION);
    assert!(error_type.starts_with("Extension."), "{error_type}");
    assert!(
        body.contains("MAKENAIDE_DATABASE_URL"),
        "the message does not say what to fix: {body}"
    );
    assert!(
        body.contains("sslmode"),
        "the message does not name the bad part: {body}"
    );
    assert!(!body.contains(secret), "the init error leaks the password: {body}");
    assert!(failure.exits.iter().any(|(n, _)| n == EXTENSION), "{failure}");
    for l in &failure.logs {
        assert!(
            !l.line.contains(secret),
            "{} logged the password: {}",
            l.process,
            l.line
        );
    }

    // A port that is taken is also a configuration error, reported the same way.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = EnvConfig::makenaide(COLLECTOR).core_port(port);
    let Err(HarnessError::InitFailed(failure)) = LambdaEnv::start(cfg).await else {
        panic!("a taken port must fail Init")
    };
    let (_, _, body) = &failure.extension_init_errors[0];
    assert!(body.contains("MAKENAIDE_CORE_PORT"), "{body}");
}
