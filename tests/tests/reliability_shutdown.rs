//! Reliability: shutdown.
//!
//! - SHUTDOWN while a request is in flight (a 0.5 s `pg_sleep` through `/db/query`, seen active in
//!   `pg_stat_activity` before SHUTDOWN is sent): the request completes with its result, the pool closes (no
//!   session left on the server), the extension exits 0 before the deadline.
//! - SIGKILL of the extension and the function in the middle of a collection, while the upsert batch is half done
//!   (its `INSERT` has written some rows and waits on a row another transaction holds): once that transaction
//!   ends, PostgreSQL rolls the orphaned batch back. No row of it is visible, no session is left idle in
//!   transaction, and a clean rerun stores exactly what the collector reports.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use makenaide_tests::lambda_env::{LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use makenaide_tests::upbit_sim::Interval;
use nix::sys::signal::Signal;
use serde_json::json;

const STEM: &str = "reliability_shutdown";

/// Sessions of the extension in this database: `(pid, state, wait_event_type, query)`.
async fn core_activity(client: &tokio_postgres::Client) -> Vec<(i32, Option<String>, Option<String>, String)> {
    client
        .query(
            "select pid, state, wait_event_type, query from pg_stat_activity
              where datname = current_database() and application_name = $1 and pid <> pg_backend_pid()",
            &[&CORE_APP_NAME],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_in_flight_request_completes_it_and_closes_the_pool() {
    let db = TestDb::create().await.unwrap();
    let env = LambdaEnv::start(env_config(COLLECTOR, db.url(), &dead_upbit()))
        .await
        .unwrap();
    let core = ready_core(&env).await;
    let watcher = db.connect().await.unwrap();

    let slow = core.clone();
    let request = tokio::spawn(async move {
        let t = Instant::now();
        let r = slow
            .query_raw("select 42 as answer from pg_sleep(0.5)", json!([]))
            .await;
        (r, t.elapsed())
    });
    // SHUTDOWN only once the statement is really running on the server.
    let w = &watcher;
    let running = poll(Duration::from_secs(10), move || async move {
        core_activity(w)
            .await
            .into_iter()
            .find(|(_, state, _, q)| state.as_deref() == Some("active") && q.contains("pg_sleep"))
    })
    .await;
    assert!(running.is_some(), "the slow query never showed up as active");

    let sd = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let (reply, request_took) = request.await.unwrap();
    let reply = reply.expect("the in-flight request got no HTTP reply");
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()["rows"], json!([[42]]));

    let ext = sd.extension(EXTENSION).unwrap();
    assert!(ext.received_shutdown, "{ext:?}");
    assert!(ext.exit.is_some_and(|e| e.success()), "not exit 0: {ext:?}");
    assert!(
        ext.exited_within_deadline && !ext.killed,
        "missed the deadline: {ext:?}"
    );
    let t = Instant::now();
    let left = db
        .wait_no_sessions(Some(CORE_APP_NAME), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(left.is_empty(), "sessions left after SHUTDOWN: {left:?}");
    let sessions_gone = t.elapsed();
    assert!(
        sd.logs
            .iter()
            .any(|l| l.process == EXTENSION && l.line.contains("shutdown complete")),
        "no `shutdown complete` log line"
    );

    report(
        STEM,
        "SHUTDOWN with a request in flight",
        &[
            format!(
                "`select … from pg_sleep(0.5)` in flight when SHUTDOWN was sent: completed with 200 and its row after {}",
                ms(request_took)
            ),
            format!(
                "extension exit code 0, {} after SHUTDOWN was dispatched (budget {}; whole shutdown incl. the runtime's SIGTERM: {})",
                ext.elapsed.map(ms).unwrap_or_default(),
                ms(SHUTDOWN_BUDGET),
                ms(sd.elapsed)
            ),
            format!(
                "server sessions of the extension after exit: 0 (confirmed {} after shutdown returned)",
                ms(sessions_gone)
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_collection_leaves_no_partial_transaction() {
    let db = TestDb::create().await.unwrap();
    // Fixed clock: the candles (and so the key the blocker holds) cannot change during the test.
    let sim = unthrottled_sim(fixed_clock()).await;
    init_schema(db.url()).await;
    let cfg = env_config(COLLECTOR, db.url(), &sim.base_url()).env("MAKENAIDE_UPBIT_RATE_PER_SEC", "1000");

    let krw = krw_markets(&sim);
    let mut markets: Vec<String> = vec!["KRW-BTC".into()];
    markets.extend(krw.iter().filter(|m| *m != "KRW-BTC").take(9).cloned());
    let warm_market = krw.iter().find(|m| !markets.contains(m)).unwrap().clone();
    let event = json!({"markets": markets, "interval": "days", "count": 200});

    // 1. A committed collection first (also warms the statement cache, so the killed batch takes the hot path).
    let env = LambdaEnv::start(cfg.clone()).await.unwrap();
    let out = env
        .invoke(json!({"markets": [warm_market], "interval": "days", "count": 5}))
        .await
        .unwrap();
    let committed = result_of(out.ok().unwrap())["rows_stored"].as_i64().unwrap();
    assert_eq!(committed, 5);

    // 2. Another transaction holds one key of the coming batch (KRW-BTC's newest day), uncommitted.
    let newest = sim
        .expected_candles("KRW-BTC", Interval::Days, None, 1)
        .unwrap()
        .remove(0)
        .candle_date_time_utc;
    let blocker = db.connect().await.unwrap();
    blocker
        .batch_execute(&format!(
            "BEGIN; INSERT INTO ohlcv (market, \"interval\", candle_date_time_utc, candle_date_time_kst, opening_price,
               high_price, low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, \"timestamp\")
             VALUES ('KRW-BTC', 'days', '{newest}', '{newest}', 0, 0, 0, 0, 0, 0, 0)"
        ))
        .await
        .unwrap();
    let watcher = db.connect().await.unwrap();

    // 3. The collection's upsert runs into that row: its INSERT has begun (rows before the held key written,
    //    uncommitted) and waits. Kill everything right there.
    let pending = env.start_invoke(event.clone()).await.unwrap();
    let w = &watcher;
    let blocked = poll(Duration::from_secs(30), move || async move {
        core_activity(w)
            .await
            .into_iter()
            .find(|(_, _, wait, q)| wait.as_deref() == Some("Lock") && q.contains("INSERT INTO ohlcv"))
    })
    .await
    .expect("the collector's upsert never blocked on the held row");
    let t = Instant::now();
    env.runtime().signal(Signal::SIGKILL);
    env.extension(EXTENSION).unwrap().signal(Signal::SIGKILL);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert!(env.extension(EXTENSION).unwrap().wait_exit(deadline).await.is_some());
    assert!(env.runtime().wait_exit(deadline).await.is_some());
    // (Not `wait_invoke`: with the runtime gone the harness would wait for a freeze that never comes.)
    drop(pending);

    // The orphaned backend is still inside its transaction (waiting on the lock); release the blocker.
    let during = core_activity(&watcher).await;
    assert!(during.iter().any(|(pid, ..)| *pid == blocked.0), "{during:?}");
    blocker.batch_execute("ROLLBACK").await.unwrap();

    // PostgreSQL notices the dead client: no session left, none idle in transaction.
    let w = &watcher;
    let gone = poll(Duration::from_secs(15), move || async move {
        core_activity(w).await.is_empty().then_some(())
    })
    .await;
    let cleanup = t.elapsed();
    let left = core_activity(&watcher).await;
    assert!(gone.is_some(), "sessions of the killed extension left: {left:?}");
    let idle_in_tx: i64 = watcher
        .query_one(
            "select count(*) from pg_stat_activity where datname = current_database()
               and state like 'idle in transaction%' and pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(idle_in_tx, 0, "idle-in-transaction sessions left");
    let after_kill: i64 = watcher
        .query_one("select count(*) from ohlcv", &[])
        .await
        .unwrap()
        .get(0);
    let per_market_after_kill: BTreeMap<String, i64> = watcher
        .query("select market, count(*) from ohlcv group by market", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The request had been sent whole (BEGIN, the upsert and COMMIT in one round trip), so PostgreSQL may finish
    // it after the client died: all of the batch or none of it, never part (checked below, once the batch's size
    // is known from the clean rerun).
    drop(env);

    // 4. Clean rerun: exactly what the collector reports is stored.
    let env = LambdaEnv::start(cfg).await.unwrap();
    let out = env.invoke(event).await.unwrap();
    let result = result_of(out.ok().unwrap()).clone();
    let rows_stored = result["rows_stored"].as_i64().unwrap();
    let total: i64 = watcher
        .query_one("select count(*) from ohlcv", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, committed + rows_stored, "{result}");
    // Each upsert request is one transaction: a market's candles (all in one request) are all there or none.
    for (market, n) in result["stored"].as_object().unwrap() {
        let seen = per_market_after_kill.get(market).copied().unwrap_or(0);
        assert!(
            seen == 0 || Some(seen) == n.as_i64(),
            "{market}: {seen} of its {n} candles visible after the kill (part of a transaction)"
        );
    }
    let killed_batch = if after_kill == committed {
        "none of the killed collection".to_owned()
    } else {
        format!(
            "{} of the killed collection: the upsert requests already sent whole (COMMIT travels with them) that \
             PostgreSQL finished after the client died",
            after_kill - committed
        )
    };
    for (market, n) in result["stored"].as_object().unwrap() {
        let c: i64 = watcher
            .query_one(
                "select count(*) from ohlcv where market = $1 and \"interval\" = 'days'",
                &[market],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(Some(c), n.as_i64(), "{market}: {result}");
    }
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();

    report(
        STEM,
        "SIGKILL in the middle of a collection",
        &[
            format!(
                "collection of {} markets × 200 day candles; extension + function SIGKILLed while the upsert's INSERT was half done (blocked on a row held by another transaction)",
                markets.len()
            ),
            format!(
                "orphaned backend gone {} after the kill (once the blocking transaction ended); idle-in-transaction sessions: 0",
                ms(cleanup)
            ),
            format!(
                "rows visible afterwards: {after_kill} ({committed} committed before, and {killed_batch}; never part of it)"
            ),
            format!(
                "clean rerun: collector reported rows_stored = {rows_stored}; table holds {total} = {committed} + {rows_stored}, per-market counts equal `stored`"
            ),
        ],
    );
}
