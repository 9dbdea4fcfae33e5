//! Reliability: freeze and thaw. While Lambda has the extension and the function frozen (SIGSTOP), every
//! pooled PostgreSQL backend is terminated (`pg_terminate_backend`) and every Upbit connection is closed by the
//! server; the next invocation must still succeed. 100 such cycles, 100 successes.
//!
//! It also measures what stale-connection detection costs. The extension's database traffic goes through a
//! counting proxy ([`PgProxy`]) that parses every frontend message, so the test can show that the normal path sends
//! no validation query (only `BEGIN…` + Bind/Execute/Sync + `COMMIT`, no Parse once statements are cached), and
//! what the first request after a kill pays instead (a new connection + re-preparing), with latencies of both.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use makenaide_tests::lambda_env::{ApiEventKind, LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use makenaide_tests::upbit_sim::{SimConfig, UpbitSim};
use serde_json::json;

const STEM: &str = "reliability_freeze";
const KILL_CYCLES: usize = 100;
const NORMAL_INVOKES: usize = 20;
const DIRECT_SAMPLES: usize = 20;

/// The port of a `postgres://user@host:port/db` URL.
fn port_of(url: &str) -> u16 {
    let after_at = url.split_once('@').unwrap().1;
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit_once(':').map_or(5432, |(_, p)| p.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocation_succeeds_after_every_connection_died_during_a_freeze_100_times() {
    let db = TestDb::create().await.unwrap();
    let sim = UpbitSim::start(SimConfig::default()).await.unwrap();
    // Not the subject here: a fast loop must not wait for rate slots, and every invocation must really reach Upbit.
    sim.set_rate_limit_enabled(false);
    // Remaining-Req stays high too: the extension paces itself on it (the shared per-IP truth).
    sim.set_rate_per_second(10_000);
    init_schema(db.url()).await;
    let proxy = PgProxy::start(port_of(db.url())).await;

    let env = LambdaEnv::start(
        env_config(COLLECTOR, &proxy.url_for(db.url()), &sim.base_url())
            .env("MAKENAIDE_UPBIT_CACHE_TTL_MS", "0")
            .env("MAKENAIDE_UPBIT_RATE_PER_SEC", "1000")
            // The "discarded at checkout" line is at debug level.
            .env("RUST_LOG", "info,makenaide_core::db=debug"),
    )
    .await
    .unwrap();
    let ext_pid = env.extension(EXTENSION).unwrap().pid;
    let event = json!({"markets": ["KRW-BTC"], "interval": "days", "count": 1});
    let check = |out: &makenaide_tests::lambda_env::InvokeOutcome, what: &str| {
        let response = out.ok().unwrap_or_else(|e| panic!("{what}: {e}"));
        let result = result_of(response);
        assert_eq!(result["stored"], json!({"KRW-BTC": 1}), "{what}: {result}");
        assert!(out.frozen, "{what}: environment not frozen afterwards");
    };

    // Warm-up: connections opened, statements prepared and cached.
    for i in 0..3 {
        let out = env.invoke(event.clone()).await.unwrap();
        check(&out, &format!("warm-up {i}"));
    }

    // --- normal path: nothing killed ---
    let before = proxy.stats();
    let upbit_before = sim.stats().connections_accepted;
    let mut normal = Vec::new();
    for i in 0..NORMAL_INVOKES {
        let out = env.invoke(event.clone()).await.unwrap();
        check(&out, &format!("normal {i}"));
        normal.push(out.duration);
    }
    let normal_traffic = proxy.stats().since(&before);
    assert_eq!(
        normal_traffic.connections, 0,
        "new PostgreSQL connections on the normal path"
    );
    assert_eq!(
        sim.stats().connections_accepted,
        upbit_before,
        "new Upbit connections on the normal path"
    );
    let begins = normal_traffic
        .simple_queries
        .iter()
        .filter(|q| q.starts_with("BEGIN"))
        .count() as u64;
    for q in &normal_traffic.simple_queries {
        assert!(
            q.starts_with("BEGIN") || q == "COMMIT",
            "a query other than the request's own transaction on the normal path (validation?): {q:?}"
        );
    }
    assert!(begins >= NORMAL_INVOKES as u64, "{normal_traffic:?}");
    assert_eq!(
        normal_traffic.count('P'),
        0,
        "statements re-parsed on the normal path: {normal_traffic:?}"
    );
    assert_eq!(
        normal_traffic.count('S'),
        begins,
        "more than one extended-protocol sync per request: {normal_traffic:?}"
    );
    assert_eq!(normal_traffic.count('Q'), 2 * begins, "{normal_traffic:?}");
    // BEGIN, the upsert and COMMIT pipelined: one client turn per request.
    assert_eq!(
        normal_traffic.round_trips, begins,
        "more than one round trip per request: {normal_traffic:?}"
    );

    // --- 100 cycles: freeze, kill every connection, thaw, invoke ---
    let log_mark = env.logs().len();
    let before = proxy.stats();
    let upbit_before = sim.stats().connections_accepted;
    let mut after_kill = Vec::new();
    let mut backends_killed = 0;
    let mut kill_wait = Vec::new();
    for cycle in 0..KILL_CYCLES {
        assert!(env.is_frozen(), "cycle {cycle}: not frozen");
        let t = Instant::now();
        let n = db.terminate_sessions(Some(CORE_APP_NAME)).await.unwrap();
        assert!(n >= 1, "cycle {cycle}: no pooled backend of the extension to terminate");
        backends_killed += n;
        let left = db
            .wait_no_sessions(Some(CORE_APP_NAME), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(left.is_empty(), "cycle {cycle}: backends survived: {left:?}");
        sim.close_connections(false);
        assert!(
            sim.wait_for(Duration::from_secs(10), |s| s.connections_open == 0).await,
            "cycle {cycle}: Upbit connections still open"
        );
        kill_wait.push(t.elapsed());
        let out = env.invoke(event.clone()).await.unwrap();
        check(&out, &format!("cycle {cycle}"));
        after_kill.push(out.duration);
    }
    let kill_traffic = proxy.stats().since(&before);
    let upbit_reconnects = sim.stats().connections_accepted - upbit_before;
    let logs: Vec<String> = env.logs()[log_mark..].iter().map(|l| l.line.clone()).collect();
    let at_checkout = logs
        .iter()
        .filter(|l| l.contains("stale postgres connection discarded at checkout"))
        .count();
    let by_retry = logs.iter().filter(|l| l.contains("retrying on a fresh one")).count();
    assert!(
        kill_traffic.connections >= KILL_CYCLES as u64,
        "fewer new PostgreSQL connections than cycles: {kill_traffic:?}"
    );

    // --- direct /db/query latency: first request after a kill vs the next one vs normal ---
    let mut direct_normal = Vec::new();
    let mut direct_first = Vec::new();
    let mut direct_second = Vec::new();
    {
        let _thawed = env.thaw();
        let core = env.core();
        for _ in 0..DIRECT_SAMPLES {
            let (r, d) = timed(core.query("select 1 as one", json!([]))).await;
            r.unwrap();
            direct_normal.push(d);
        }
    }
    for i in 0..DIRECT_SAMPLES {
        db.terminate_sessions(Some(CORE_APP_NAME)).await.unwrap();
        db.wait_no_sessions(Some(CORE_APP_NAME), Duration::from_secs(10))
            .await
            .unwrap();
        let _thawed = env.thaw();
        let core = env.core();
        let (r, d) = timed(core.query("select 1 as one", json!([]))).await;
        let v = r.unwrap_or_else(|e| panic!("direct sample {i}: {e}"));
        assert_eq!(v["rows"], json!([[1]]));
        direct_first.push(d);
        let (r, d) = timed(core.query("select 1 as one", json!([]))).await;
        r.unwrap();
        direct_second.push(d);
    }

    // The extension never restarted.
    assert!(
        !env.journal()
            .events()
            .iter()
            .any(|e| matches!(e.kind, ApiEventKind::ProcessExited { .. })),
        "a process exited during the cycles"
    );
    assert_eq!(env.extension(EXTENSION).unwrap().pid, ext_pid);
    let report_sd = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let core = report_sd.extension(EXTENSION).unwrap();
    assert!(core.exit.is_some_and(|e| e.success()), "{core:?}");

    let per = |n: u64, d: u64| format!("{:.2}", n as f64 / d as f64);
    report(
        STEM,
        "Freeze and thaw",
        &[
            format!(
                "{KILL_CYCLES} cycles of freeze → `pg_terminate_backend` of every pooled backend ({backends_killed} in total) + Upbit connections closed server-side → thaw → invoke (data-collector, 1 market, count 1): **{} / {KILL_CYCLES} succeeded**",
                after_kill.len()
            ),
            format!(
                "invocation latency, normal path (nothing killed): {}",
                summary(&normal)
            ),
            format!(
                "invocation latency, first invocation after the kill: {}",
                summary(&after_kill)
            ),
            format!(
                "extra cost of a kill, median: {} per invocation (new TCP + startup/auth to PostgreSQL, re-Parse of the upsert, new Upbit connection)",
                ms(median(&after_kill).saturating_sub(median(&normal)))
            ),
            format!(
                "`/db/query select 1` direct: normal {}; first after a kill {}; the request after that {}",
                summary(&direct_normal),
                summary(&direct_first),
                summary(&direct_second)
            ),
            format!(
                "how the dead connection was detected over the {KILL_CYCLES} cycles: {at_checkout} at checkout (`Client::is_closed()`, zero round trips), {by_retry} by a failed first round trip and retried once on a fresh connection (the request raced the connection task)"
            ),
            format!(
                "normal path traffic per request (counting proxy, {begins} requests): simple queries {} (only `BEGIN` and `COMMIT`: the statement timeout is the connection's own setting), Bind {}, Execute {}, Sync {}, Parse {} → **{} round trip(s)**, no validation round trip, no new connection",
                per(normal_traffic.count('Q'), begins),
                per(normal_traffic.count('B'), begins),
                per(normal_traffic.count('E'), begins),
                per(normal_traffic.count('S'), begins),
                normal_traffic.count('P'),
                per(normal_traffic.round_trips, begins),
            ),
            format!(
                "after-kill traffic per cycle: {} new PostgreSQL connection(s), Parse {}, Sync {}; Upbit reconnections {}",
                per(kill_traffic.connections, KILL_CYCLES as u64),
                per(kill_traffic.count('P'), KILL_CYCLES as u64),
                per(kill_traffic.count('S'), KILL_CYCLES as u64),
                per(upbit_reconnects, KILL_CYCLES as u64),
            ),
            format!(
                "killing + waiting for the backends to be gone, per cycle: {}",
                summary(&kill_wait)
            ),
        ],
    );
}
