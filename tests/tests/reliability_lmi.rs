//! Reliability: Lambda Managed Instances (`AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`). The
//! extension registers for SHUTDOWN only, serves 64 concurrent requests correctly (database queries with bound
//! parameters checked value by value, Upbit GETs checked against the simulator's deterministic answers), handles
//! overlapping invocations, and nothing is ever frozen.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::*;
use makenaide_tests::lambda_env::{ApiEventKind, LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use makenaide_tests::upbit_sim::Interval;
use serde_json::{json, Value};

const STEM: &str = "reliability_lmi";
const CONCURRENT: usize = 64;
const OVERLAPPING_INVOKES: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_instances_register_shutdown_only_and_serve_64_concurrent_requests() {
    let db = TestDb::create().await.unwrap();
    // Fixed clock: every candle reply can be compared with the simulator's own answer.
    // Rate limiting is another item: let 32 GETs through at once.
    let sim = unthrottled_sim(fixed_clock()).await;
    init_schema(db.url()).await;
    let env = LambdaEnv::start(
        env_config(COLLECTOR, db.url(), &sim.base_url())
            .managed_instances(CONCURRENT as u32)
            .env("MAKENAIDE_UPBIT_RATE_PER_SEC", "1000"),
    )
    .await
    .unwrap();
    let init = env.init_report();
    assert_eq!(init.extensions[0].name, EXTENSION);
    assert_eq!(init.extensions[0].events, vec!["SHUTDOWN"], "{init:?}");
    let core = ready_core(&env).await;

    let krw = krw_markets(&sim);
    let expected: Vec<Value> = (0..CONCURRENT / 2)
        .map(|i| {
            let m = &krw[i % krw.len()];
            serde_json::to_value(sim.expected_candles(m, Interval::Days, None, 3).unwrap()).unwrap()
        })
        .collect();
    let expected = Arc::new(expected);

    // 64 requests released at once: even = /db/query with bound parameters, odd = Upbit candles of a market.
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENT));
    let mut set = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for i in 0..CONCURRENT {
        let core = core.clone();
        let barrier = barrier.clone();
        let market = krw[(i / 2) % krw.len()].clone();
        let expected = expected.clone();
        set.spawn(async move {
            barrier.wait().await;
            let t = Instant::now();
            if i % 2 == 0 {
                let r = core
                    .query_raw(
                        "select $1::int8 * 2 as doubled, $2::text as echo from pg_sleep(0.02)",
                        json!([i, format!("req-{i}")]),
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "request {i}: {:?}", r.json());
                assert_eq!(
                    r.json()["rows"],
                    json!([[2 * i, format!("req-{i}")]]),
                    "request {i} got another request's answer"
                );
            } else {
                let r = core
                    .get(&format!("/v1/candles/days?market={market}&count=3"))
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "request {i}: {:?}", r.json());
                assert_eq!(r.json(), expected[i / 2], "request {i} ({market}): wrong candles");
            }
            t.elapsed()
        });
    }
    let latencies = set.join_all().await;
    let wall = t0.elapsed();
    let db_sessions = db.sessions(Some(CORE_APP_NAME)).await.unwrap().len();

    // Overlapping invocations (Managed Instances may run several at once in one environment).
    let mut pending = Vec::new();
    for i in 0..OVERLAPPING_INVOKES {
        let m = &krw[i % krw.len()];
        pending.push(
            env.start_invoke(json!({"markets": [m], "interval": "days", "count": 2}))
                .await
                .unwrap(),
        );
    }
    let mut invoke_times = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        let out = env.wait_invoke(p).await.unwrap();
        let result = result_of(out.ok().unwrap_or_else(|e| panic!("invocation {i}: {e}"))).clone();
        assert_eq!(result["rows_stored"], json!(2), "invocation {i}: {result}");
        assert!(!out.frozen, "invocation {i}: frozen under Managed Instances");
        invoke_times.push(out.duration);
    }

    // Never frozen, never sent INVOKE.
    for p in env.processes() {
        assert_ne!(p.state(), 'T', "{} is stopped", p.name);
    }
    assert!(!env.is_frozen());
    let invokes_to_extension = env
        .journal()
        .events()
        .iter()
        .filter(|e| matches!(&e.kind, ApiEventKind::ExtensionEvent { event_type, .. } if event_type == "INVOKE"))
        .count();
    assert_eq!(invokes_to_extension, 0, "the extension received INVOKE events");

    let sd = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let ext = sd.extension(EXTENSION).unwrap();
    assert!(ext.received_shutdown, "{ext:?}");
    assert!(ext.exit.is_some_and(|e| e.success()) && !ext.killed, "{ext:?}");

    report(
        STEM,
        "Lambda Managed Instances",
        &[
            "registered events: `SHUTDOWN` only; INVOKE events delivered to the extension: 0; processes never stopped".into(),
            format!(
                "{CONCURRENT} concurrent requests ({} `/db/query` with bound parameters, {} Upbit candle GETs): all correct, wall time {}",
                CONCURRENT / 2,
                CONCURRENT / 2,
                ms(wall)
            ),
            format!("per-request latency under that load: {}", summary(&latencies)),
            format!("PostgreSQL sessions used for them: {db_sessions} (pool size 4)"),
            format!(
                "{OVERLAPPING_INVOKES} overlapping data-collector invocations: all succeeded ({})",
                summary(&invoke_times)
            ),
            format!(
                "SHUTDOWN: exit 0 after {}",
                ext.elapsed.map(ms).unwrap_or_default()
            ),
        ],
    );
}
