//! Reliability: Upbit faults served by the simulated Upbit, seen through the real extension and
//! the real data-collector binary. For every fault the collector's result says exactly what was stored and what
//! failed, and the database agrees with it and with what the simulator delivered: rows per market == `stored` ==
//! candles the simulator delivered undamaged; failed markets have no rows at all (not even a first page); nothing
//! is stored twice. Under normal load (several collectors at once through one extension, the simulator enforcing
//! Upbit's 10/s) our traffic provokes no 429, no 418 and never sends `Origin`.
//!
//! Figures go to the reliability report (`makenaide_tests::report`, section `reliability_upbit`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use makenaide_tests::lambda_env::LambdaEnv;
use makenaide_tests::pg::TestDb;
use makenaide_tests::report;
use makenaide_tests::upbit_sim::{Fault, FaultRule, SimHandle};
use serde_json::{json, Value};

const SECTION: &str = "reliability_upbit";

/// `(candle_date_time_utc, trade_price, timestamp)` per market, as stored for `interval`.
async fn stored_rows(db: &TestDb, interval: &str) -> BTreeMap<String, BTreeMap<String, (f64, f64, i64)>> {
    let client = db.connect().await.unwrap();
    let rows = client
        .query(
            "select market, to_char(candle_date_time_utc, 'YYYY-MM-DD\"T\"HH24:MI:SS'), opening_price, trade_price,
                    timestamp
               from ohlcv where interval = $1",
            &[&interval],
        )
        .await
        .unwrap();
    let mut out: BTreeMap<String, BTreeMap<String, (f64, f64, i64)>> = BTreeMap::new();
    for r in rows {
        let prev = out
            .entry(r.get(0))
            .or_default()
            .insert(r.get(1), (r.get(2), r.get(3), r.get(4)));
        assert!(prev.is_none(), "a candle is stored twice");
    }
    out
}

/// What the simulator delivered undamaged (last version of each candle), per market, for `interval`.
fn delivered(sim: &SimHandle, interval: &str) -> BTreeMap<String, BTreeMap<String, (f64, f64, i64)>> {
    let mut out: BTreeMap<String, BTreeMap<String, (f64, f64, i64)>> = BTreeMap::new();
    for ((market, iv, utc), c) in sim.served_latest() {
        if iv == interval {
            out.entry(market)
                .or_default()
                .insert(utc, (c.opening_price, c.trade_price, c.timestamp));
        }
    }
    out
}

/// Asserts result ⇔ database ⇔ simulator for the markets of one collector result. `not_delivered` lists failed
/// markets whose candles the simulator did send but the client could not have used (e.g. a reply that came after
/// the caller's deadline): they must have no rows either.
fn assert_result_matches(
    result: &Value,
    stored: &BTreeMap<String, BTreeMap<String, (f64, f64, i64)>>,
    delivered: &BTreeMap<String, BTreeMap<String, (f64, f64, i64)>>,
    markets: &[String],
) {
    let res_stored: BTreeMap<String, u64> = serde_json::from_value(result["stored"].clone()).unwrap();
    let res_failed: BTreeMap<String, Value> = serde_json::from_value(result["failed"].clone()).unwrap();
    let mut sum = 0;
    for m in markets {
        let rows = stored.get(m).map_or(0, BTreeMap::len) as u64;
        match (res_stored.get(m), res_failed.get(m)) {
            (Some(n), None) => {
                assert_eq!(rows, *n, "{m}: result says {n} stored, the table has {rows}");
                let want = delivered.get(m).cloned().unwrap_or_default();
                assert_eq!(
                    stored.get(m).cloned().unwrap_or_default(),
                    want,
                    "{m}: stored rows differ from the candles the simulator delivered"
                );
                sum += n;
            }
            (None, Some(f)) => {
                assert_eq!(
                    rows, 0,
                    "{m} is reported failed ({f}) but has {rows} rows: partial data"
                );
            }
            other => panic!("{m} must be either stored or failed, got {other:?} in {result}"),
        }
    }
    assert_eq!(result["rows_stored"], json!(sum), "{result}");
}

fn krw_markets(sim: &SimHandle) -> Vec<String> {
    sim.catalog()
        .codes()
        .into_iter()
        .filter(|c| c.starts_with("KRW-"))
        .collect()
}

fn faults_injected(sim: &SimHandle, name: &str) -> u64 {
    sim.stats().faults_injected.get(name).copied().unwrap_or(0)
}

/// Every fault kind, transient (fewer than the extension's 4 attempts: must recover) and persistent (must be
/// reported failed with the right status), in one collector run paging through 2 pages per market. One market
/// fails on its *second* page: its first page was delivered, yet nothing of it may be stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_reported_exactly_and_the_database_agrees() {
    let b = Backends::start().await;
    b.init_schema().await;
    let sim = b.upbit.sim();
    let env = b.start_env(COLLECTOR).await;
    let m = krw_markets(sim);
    // (market, rules, expected failure status or None when it must be stored)
    let plan: Vec<(&str, Vec<FaultRule>, Option<u16>)> = vec![
        (&m[0], vec![], None),
        (&m[1], vec![FaultRule::times(Fault::TooManyRequests, 2)], None),
        (&m[2], vec![FaultRule::times(Fault::TooManyRequests, 4)], Some(429)),
        (
            &m[3],
            vec![FaultRule::times(Fault::ServerError { status: 500 }, 2)],
            None,
        ),
        (
            &m[4],
            vec![FaultRule::times(Fault::ServerError { status: 503 }, 4)],
            Some(502),
        ),
        (&m[5], vec![FaultRule::times(Fault::Reset, 1)], None),
        (&m[6], vec![FaultRule::times(Fault::Reset, 4)], Some(502)),
        (&m[7], vec![FaultRule::times(Fault::MalformedJson, 2)], None),
        (&m[8], vec![FaultRule::times(Fault::MalformedJson, 4)], Some(502)),
        (&m[9], vec![FaultRule::times(Fault::TruncatedBody, 1)], None),
        (&m[10], vec![FaultRule::times(Fault::TruncatedBody, 4)], Some(502)),
        (&m[11], vec![FaultRule::times(Fault::Slow { ms: 300 }, 1)], None),
        (
            &m[12],
            vec![FaultRule::times(Fault::ServerError { status: 502 }, 3)],
            None,
        ),
        // Page 1 normal (a zero-delay "slow" rule just consumes it), page 2 fails persistently.
        (
            &m[13],
            vec![
                FaultRule::times(Fault::Slow { ms: 0 }, 1),
                FaultRule::times(Fault::ServerError { status: 500 }, 4),
            ],
            Some(502),
        ),
    ];
    for (market, rules, _) in &plan {
        for r in rules {
            sim.push_fault(r.clone().for_market(market));
        }
    }
    let markets: Vec<String> = plan.iter().map(|(m, _, _)| m.to_string()).collect();
    let started = Instant::now();
    let out = env
        .invoke(json!({"markets": markets, "interval": "days", "count": 201}))
        .await
        .unwrap();
    let took = started.elapsed();
    let result = result_of(out.ok().unwrap()).clone();

    for (market, _, want) in &plan {
        match want {
            None => assert!(
                result["stored"][*market].as_u64().is_some_and(|n| n > 0),
                "{market} should have recovered: {result}"
            ),
            Some(status) => {
                assert_eq!(result["failed"][*market]["status"], json!(status), "{market}: {result}");
                let msg = result["failed"][*market]["message"].as_str().unwrap();
                if *status == 502 {
                    assert!(
                        msg.starts_with(makenaide_contract::ErrorCode::UpstreamError.as_str()),
                        "{market}: {msg}"
                    );
                } else {
                    assert!(msg.contains("Too many API requests"), "{market}: {msg}");
                }
            }
        }
    }
    let stored = stored_rows(&b.db, "days").await;
    assert_result_matches(&result, &stored, &delivered(sim, "days"), &markets);
    let total: usize = stored.values().map(BTreeMap::len).sum();
    assert_eq!(result["rows_stored"], json!(total), "rows in ohlcv != rows_stored");
    // The first page of the market that failed on page 2 really was delivered, and still nothing is stored.
    assert!(
        sim.served_log().iter().any(|s| s.market == m[13] && s.delivered),
        "test set-up: page 1 of {} was not delivered",
        m[13]
    );

    let stats = sim.stats();
    assert!(
        sim.pending_faults().is_empty(),
        "unused fault rules: {:?}",
        sim.pending_faults()
    );
    let injected_429 = faults_injected(sim, "too_many_requests");
    assert_eq!(
        stats.responses_429, injected_429,
        "429s beyond the injected ones: our pacing provoked Upbit's limit"
    );
    assert_eq!(stats.responses_418, 0);
    assert_eq!(stats.origin_requests, 0, "an Origin header was sent");

    let failed = result["failed"].as_object().unwrap().len();
    report::record(SECTION, &format!(
        "- fault mix (429 burst x2/x4, 500 x2, 503 x4, 502 x3, reset x1/x4, malformed JSON x2/x4, truncated body x1/x4, \
         slow 300 ms, page-2 failure), {} markets x 201 day candles (2 pages): {} stored ({} rows), {} reported failed \
         with the right status; rows in ohlcv = result.stored = candles delivered; failed markets: 0 rows; \
         {} requests, faults injected {:?}, unprovoked 429: 0, 418: 0, Origin: 0; run {:.1} s",
        markets.len(),
        markets.len() - failed,
        total,
        failed,
        stats.requests_total,
        stats.faults_injected,
        took.as_secs_f64()
    ));
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// A 418 blocks the group for the time Upbit gave: the market that got it is reported failed (status 418), and
/// during the block nothing leaves the extension (the next collector run waits for the block to end instead of
/// provoking more 418s), then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_418_block_is_honoured_without_further_418s() {
    let b = Backends::start().await;
    b.init_schema().await;
    let sim = b.upbit.sim();
    let env = b.start_env(COLLECTOR).await;
    let m = krw_markets(sim);
    let block = Duration::from_secs(2);
    sim.push_fault(FaultRule::once(Fault::Blocked { secs: block.as_secs() }).for_market(&m[0]));

    let out = env.invoke(json!({"markets": [m[0]], "count": 3})).await.unwrap();
    let blocked_at = Instant::now();
    let r1 = result_of(out.ok().unwrap()).clone();
    assert_eq!(r1["failed"][&m[0]]["status"], json!(418), "{r1}");
    assert!(
        r1["failed"][&m[0]]["message"].as_str().unwrap().contains("Blocked for"),
        "Upbit's 418 message should be surfaced: {r1}"
    );
    let requests_after_418 = sim.stats().requests_total;

    let out = env.invoke(json!({"markets": [m[1], m[2]], "count": 3})).await.unwrap();
    let waited = blocked_at.elapsed();
    let r2 = result_of(out.ok().unwrap()).clone();
    assert_eq!(r2["stored"], json!({&m[1]: 3, &m[2]: 3}), "{r2}");
    let stats = sim.stats();
    assert_eq!(stats.responses_418, 1, "requests were sent during the block");
    assert_eq!(stats.requests_total, requests_after_418 + 2);
    // The second run could only have succeeded after the block: the simulator answers 418 to anything earlier.
    assert!(waited >= block - Duration::from_millis(1100), "{waited:?}");
    let stored = stored_rows(&b.db, "days").await;
    let markets = [m[0].clone(), m[1].clone(), m[2].clone()];
    assert_result_matches(&r1, &stored, &delivered(sim, "days"), &markets[..1]);
    assert_result_matches(&r2, &stored, &delivered(sim, "days"), &markets[1..]);
    report::record(
        SECTION,
        &format!(
        "- 418 \"Blocked for {} seconds\": market reported failed with status 418; next run waited {:.1} s for the \
         block, then stored 6/6 rows; 418s sent by the simulator: 1 (no request during the block)",
        block.as_secs(),
        waited.as_secs_f64()
    ),
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// A reply slower than the invocation's deadline: the extension gives up at the deadline the function passed
/// (`upstream_deadline`, 504), the market is reported failed, the other markets are stored, and the invocation
/// still returns in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_slower_than_the_deadline_fails_only_its_market() {
    let b = Backends::start().await;
    b.init_schema().await;
    let sim = b.upbit.sim();
    let timeout = Duration::from_secs(5);
    let env = LambdaEnv::start(b.env_config(COLLECTOR).timeout(timeout))
        .await
        .unwrap();
    let m = krw_markets(sim);
    sim.push_fault(FaultRule::once(Fault::Slow { ms: 30_000 }).for_market(&m[0]));
    let started = Instant::now();
    let out = env
        .invoke(json!({"markets": [m[0], m[1], m[2]], "count": 3}))
        .await
        .unwrap();
    let took = started.elapsed();
    let result = result_of(out.ok().unwrap()).clone();
    assert!(took < timeout, "{took:?}");
    assert_eq!(result["failed"][&m[0]]["status"], json!(504), "{result}");
    assert!(
        result["failed"][&m[0]]["message"]
            .as_str()
            .unwrap()
            .starts_with(makenaide_contract::ErrorCode::UpstreamDeadline.as_str()),
        "{result}"
    );
    assert_eq!(result["stored"], json!({&m[1]: 3, &m[2]: 3}), "{result}");
    let stored = stored_rows(&b.db, "days").await;
    assert!(!stored.contains_key(&m[0]));
    let mut want = delivered(sim, "days");
    want.remove(&m[0]); // the slow reply may still be "sent" after the caller gave up
    assert_result_matches(&result, &stored, &want, &[m[0].clone(), m[1].clone(), m[2].clone()]);
    report::record(
        SECTION,
        &format!(
            "- reply slower than the deadline (30 s vs a {} s function timeout): market failed with 504 \
         upstream_deadline, 2 others stored (6 rows), invocation returned after {:.2} s",
            timeout.as_secs(),
            took.as_secs_f64()
        ),
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// Normal operation never provokes a 429 or a 418: in one environment (Lambda Managed Instances, no freeze) the
/// real collector binary is invoked 3 times at once while 3 more collector runs (the same library code) go through
/// the same extension concurrently; the simulator enforces 10 requests/s per group per IP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_collectors_in_one_environment_stay_under_the_limit() {
    let b = Backends::start().await;
    b.init_schema().await;
    let sim = b.upbit.sim();
    assert!(sim.rate_limit().enabled && sim.rate_limit().per_second == 10);
    let env = LambdaEnv::start(b.env_config(COLLECTOR).managed_instances(8))
        .await
        .unwrap();
    let codes: Vec<String> = sim.catalog().codes();
    let groups: Vec<Vec<String>> = codes.chunks(codes.len().div_ceil(6)).map(<[String]>::to_vec).collect();
    assert_eq!(groups.len(), 6);
    sim.reset();

    let started = Instant::now();
    let mut pending = Vec::new();
    for g in &groups[..3] {
        pending.push(
            env.start_invoke(json!({"markets": g, "interval": "days", "count": 3}))
                .await
                .unwrap(),
        );
    }
    let client = makenaide_pipeline::CoreClient::new(env.core_port(), env.core_token());
    let ev = |g: &Vec<String>| {
        makenaide_pipeline::CollectEvent::from_value(&json!({"markets": g, "interval": "days", "count": 3})).unwrap()
    };
    // Polled concurrently on this task (the collector future is not `Send`-general, so no spawn).
    let (d1, d2, d3) = tokio::join!(
        makenaide_pipeline::run_collector(&client, ev(&groups[3])),
        makenaide_pipeline::run_collector(&client, ev(&groups[4])),
        makenaide_pipeline::run_collector(&client, ev(&groups[5])),
    );
    let direct = [d1, d2, d3];
    let mut results: Vec<Value> = Vec::new();
    for p in &pending {
        let out = env.wait_invoke(p).await.unwrap();
        results.push(result_of(out.ok().unwrap()).clone());
    }
    for d in direct {
        results.push(serde_json::to_value(d.unwrap()).unwrap());
    }
    let took = started.elapsed();

    let stats = sim.stats();
    let stored = stored_rows(&b.db, "days").await;
    let want = delivered(sim, "days");
    for (g, r) in groups.iter().zip(&results) {
        assert!(r["failed"].as_object().unwrap().is_empty(), "{r}");
        assert_result_matches(r, &stored, &want, g);
    }
    let rows: usize = stored.values().map(BTreeMap::len).sum();
    let markets: BTreeSet<&String> = stored.keys().collect();
    assert_eq!(markets.len(), codes.len());
    assert_eq!(stats.responses_429, 0, "our traffic provoked 429s: {stats:?}");
    assert_eq!(stats.responses_418, 0, "our traffic provoked 418s: {stats:?}");
    assert_eq!(stats.bans, 0);
    assert_eq!(stats.origin_requests, 0, "Origin sent: {:?}", stats.origins);
    let candle_requests = stats.group("candles");
    report::record(
        SECTION,
        &format!(
            "- 6 collectors at once in one environment (3 concurrent invokes under Managed Instances + 3 concurrent \
         runs through the same extension), {} markets, {} candle requests in {:.1} s against the simulator's limit \
         of 10 per sliding 1 s window: {} rows stored, 429: {}, 418: {}, Origin requests: {}",
            codes.len(),
            candle_requests,
            took.as_secs_f64(),
            rows,
            stats.responses_429,
            stats.responses_418,
            stats.origin_requests
        ),
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}
