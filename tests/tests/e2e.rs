//! End-to-end tests of the real binaries (`makenaide-core` + a function) under the emulated Lambda environment,
//! against a real PostgreSQL database and the simulated Upbit. They assert outcomes: rows in the database compared
//! with what Upbit served, backend pids and upstream connection counts, exit statuses, function errors.
//!
//! The binaries come from the workspace target dir (build them first: `cargo build --workspace`), or from
//! `MAKENAIDE_BIN_DIR` (binaries unpacked from the layer and function zips).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use makenaide_tests::lambda_env::{LambdaEnv, RuntimeApiForm};
use serde_json::{json, Value};

fn assert_same_candles(stored: &BTreeMap<(String, String), Value>, served: &BTreeMap<(String, String), Value>) {
    let stored_keys: BTreeSet<_> = stored.keys().collect();
    let served_keys: BTreeSet<_> = served.keys().collect();
    let missing: Vec<_> = served_keys.difference(&stored_keys).collect();
    let extra: Vec<_> = stored_keys.difference(&served_keys).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served but not stored: {missing:?}; stored but never served: {extra:?}"
    );
    for (key, want) in served {
        assert_eq!(&stored[key], want, "row {key:?} differs from the candle Upbit served");
    }
}

#[tokio::test]
async fn orchestrator_stores_exactly_what_upbit_served_and_reuses_warm_connections() {
    let b = Backends::start().await;
    // A password in the URL (trust auth ignores it) so the log grep below has a secret to look for.
    let password = "pw-never-logged-7f3a";
    let db_url = b.db.url().replacen("postgres@", &format!("postgres:{password}@"), 1);
    let env = LambdaEnv::start(b.env_config(ORCHESTRATOR).env("MAKENAIDE_DATABASE_URL", db_url))
        .await
        .unwrap();

    // --- invocation 1 ---
    let out1 = env.invoke(json!({})).await.unwrap();
    let result1 = result_of(out1.ok().unwrap()).clone();
    assert!(out1.frozen, "environment not frozen after invocation 1");
    let steps: Vec<&str> = result1["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["init", "scan", "collect"], "{result1}");
    for s in result1["steps"].as_array().unwrap() {
        assert!(s["duration_ms"].as_f64().is_some(), "step without duration_ms: {s}");
    }
    let stored1 = stored_candles(&b.db, "days").await;
    let served1 = served(b.upbit.sim(), "days");
    assert!(!served1.is_empty(), "Upbit served no day candles");
    assert_same_candles(&stored1, &served1);

    // Warm connections after invocation 1 (environment frozen).
    let sessions1 = b.db.sessions(Some(CORE_APP_NAME)).await.unwrap();
    assert!(
        !sessions1.is_empty(),
        "no PostgreSQL session of the extension after invocation 1"
    );
    let upstream1 = b.upbit.connections();
    assert!(upstream1 >= 1);
    let pid_before = {
        let _thawed = env.thaw();
        env.core().backend_pid().await.unwrap()
    };
    assert!(
        sessions1.iter().any(|s| i64::from(s.pid) == pid_before),
        "pid {pid_before} not among {sessions1:?}"
    );
    let upstream_between = b.upbit.connections();

    // --- invocation 2: thawed, run, frozen again ---
    let out2 = env.invoke(json!({})).await.unwrap();
    let result2 = result_of(out2.ok().unwrap()).clone();
    assert!(out2.frozen, "environment not frozen after invocation 2");
    let pid_after = {
        let _thawed = env.thaw();
        env.core().backend_pid().await.unwrap()
    };
    let sessions2 = b.db.sessions(Some(CORE_APP_NAME)).await.unwrap();
    for s in &sessions1 {
        assert!(
            sessions2.contains(s),
            "backend {} of invocation 1 is gone or was replaced: {sessions2:?}",
            s.pid
        );
    }
    assert!(
        sessions2.len() == sessions1.len(),
        "new PostgreSQL connections in invocation 2: {sessions1:?} -> {sessions2:?}"
    );
    assert!(
        sessions1.iter().any(|s| i64::from(s.pid) == pid_after),
        "pid after {pid_after} not a warm backend"
    );
    assert_eq!(
        upstream_between, upstream1,
        "looking at the database opened an Upbit connection"
    );
    assert_eq!(
        b.upbit.connections(),
        upstream1,
        "invocation 2 opened new TCP connections to Upbit"
    );
    // Invocation 2 re-collected the same candles: still exactly what was served (updated in place, not duplicated).
    assert_same_candles(&stored_candles(&b.db, "days").await, &served(b.upbit.sim(), "days"));
    assert_eq!(result2["steps"].as_array().unwrap().len(), 3);

    // --- SHUTDOWN ---
    let token = env.core_token().to_string();
    let report = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let core = report.extension("makenaide-core").unwrap();
    assert!(core.received_shutdown, "{core:?}");
    assert!(
        core.exit.is_some_and(|e| e.success()),
        "extension did not exit 0: {core:?}"
    );
    assert!(
        core.exited_within_deadline && !core.killed,
        "extension missed the {SHUTDOWN_BUDGET:?} budget: {core:?}"
    );
    let left =
        b.db.wait_no_sessions(Some(CORE_APP_NAME), Duration::from_secs(5))
            .await
            .unwrap();
    assert!(
        left.is_empty(),
        "database sessions of the extension left after SHUTDOWN: {left:?}"
    );

    // No secret in any log line of any process.
    for l in &report.logs {
        assert!(
            !l.line.contains(password),
            "{} logged the database password: {}",
            l.process,
            l.line
        );
        assert!(!l.line.contains(&token), "{} logged the token: {}", l.process, l.line);
    }
}

#[tokio::test]
async fn one_bad_market_is_reported_without_failing_the_others() {
    let b = Backends::start().await;
    b.init_schema().await;
    let env = b.start_env(COLLECTOR).await;
    let out = env
        .invoke(json!({"markets": ["KRW-BTC", "KRW-NOTACOIN", "KRW-ETH"], "interval": "days", "count": 3}))
        .await
        .unwrap();
    let result = result_of(out.ok().unwrap());
    assert_eq!(result["stored"], json!({"KRW-BTC": 3, "KRW-ETH": 3}), "{result}");
    assert_eq!(result["rows_stored"], json!(6), "{result}");
    assert_eq!(result["failed"]["KRW-NOTACOIN"]["status"], json!(404), "{result}");
    assert_eq!(
        result["failed"]["KRW-NOTACOIN"]["message"],
        json!("Code not found"),
        "{result}"
    );
    let stored = stored_candles(&b.db, "days").await;
    let markets: BTreeSet<&str> = stored.keys().map(|(m, _)| m.as_str()).collect();
    assert_eq!(markets, BTreeSet::from(["KRW-BTC", "KRW-ETH"]));
    assert_same_candles(&stored, &served(b.upbit.sim(), "days"));
}

#[tokio::test]
async fn runtime_api_in_url_form_with_a_path_prefix() {
    // `cargo lambda watch` passes AWS_LAMBDA_RUNTIME_API as http://host:port/prefix.
    let b = Backends::start().await;
    b.init_schema().await;
    let env = LambdaEnv::start(b.env_config(COLLECTOR).runtime_api_form(RuntimeApiForm::UrlWithPrefix))
        .await
        .unwrap();
    let out = env.invoke(json!({"markets": ["KRW-ETH"], "count": 1})).await.unwrap();
    result_of(out.ok().unwrap());
    let report = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    assert!(report
        .extension("makenaide-core")
        .unwrap()
        .exit
        .is_some_and(|e| e.success()));
}
