//! Per-invocation metrics (issue 12): the extension subscribes to the emulated Telemetry API during Init and, after
//! each `platform.report`, writes one CloudWatch EMF line to stdout. Checked here:
//! - every line is valid EMF (the specification's structure: `_aws.Timestamp`, `CloudWatchMetrics` with
//!   `Namespace`, `Dimensions` naming top-level string members, `Metrics` with names, valid units and top-level
//!   number values, at most 100 metrics);
//! - its values are what the others measured: `ColdStart` 1 on the first invocation only, `InitDuration`,
//!   `Duration`, `BilledDuration`, `MaxMemoryUsed` exactly as the harness put them in `platform.report`; Upbit
//!   requests, 429s and retries as the simulated Upbit saw them; new connections and round trips as a counting
//!   proxy in front of PostgreSQL saw them; `Requests` = the function's Upbit GETs + its `/db/*` transactions;
//! - a timed-out invocation still gets its line; `MAKENAIDE_METRICS=off` means no subscription, no listener, no
//!   line; an environment without a Telemetry API (the RIE's answer) turns metrics off with one warning;
//! - under Managed Instances (no per-invocation report) one aggregated line per interval, flushed at SHUTDOWN.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{dead_upbit, env_config, init_schema, unthrottled_sim, PgProxy, ProxyStats, COLLECTOR};
use makenaide_contract::metrics as names;
use makenaide_tests::lambda_env::telemetry::TELEMETRY_PORT_ENV;
use makenaide_tests::lambda_env::{
    free_port, ApiEventKind, CoreClient, EnvConfig, InvokeStatus, LambdaEnv, LogLine, Role,
};
use makenaide_tests::pg::TestDb;
use makenaide_tests::upbit_sim::{Fault, FaultRule, SimConfig, SimStats};
use serde_json::{json, Value};

const EXTENSION: &str = "makenaide-core";
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);
const NAMESPACE: &str = "Makenaide/test";

/// CloudWatch's units (EMF specification: "Valid values" of `Unit`).
const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The bash fixture runtime with the real extension (no database, an Upbit nobody listens on).
fn fixture_env() -> EnvConfig {
    EnvConfig::makenaide(fixture("fixture-fn"))
        .env("MAKENAIDE_UPBIT_BASE_URL", dead_upbit())
        .timeout(Duration::from_secs(20))
}

/// Every EMF object the extension wrote to stdout.
fn emf_lines(logs: &[LogLine]) -> Vec<Value> {
    logs.iter()
        .filter(|l| l.process == EXTENSION && l.role == Role::Extension)
        .filter_map(|l| serde_json::from_str::<Value>(&l.line).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect()
}

fn line_for<'a>(lines: &'a [Value], request_id: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == request_id).collect();
    assert_eq!(found.len(), 1, "one line for {request_id}: {found:?}");
    found[0]
}

/// The EMF specification's structure, member by member; returns the metric names.
fn assert_valid_emf(v: &Value) -> Vec<String> {
    let obj = v.as_object().expect("an EMF line is a JSON object");
    let aws = obj["_aws"].as_object().expect("_aws is an object");
    assert!(aws["Timestamp"].is_u64(), "_aws.Timestamp is a number of epoch ms: {v}");
    let ts = aws["Timestamp"].as_u64().unwrap();
    assert!(ts > 1_600_000_000_000, "Timestamp in ms: {ts}");
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics is an array");
    assert!(!directives.is_empty());
    let mut all = Vec::new();
    for d in directives {
        let ns = d["Namespace"].as_str().expect("Namespace is a string");
        assert!(!ns.is_empty() && ns.len() <= 255);
        let dims = d["Dimensions"].as_array().expect("Dimensions is an array");
        for set in dims {
            let set = set.as_array().expect("Dimensions holds arrays");
            assert!(set.len() <= 30, "at most 30 dimensions per set");
            for dim in set {
                let name = dim.as_str().expect("a dimension is a string");
                assert!(
                    obj.get(name).is_some_and(Value::is_string),
                    "dimension {name} names a top-level string member: {v}"
                );
            }
        }
        let metrics = d["Metrics"].as_array().expect("Metrics is an array");
        assert!(metrics.len() <= 100, "at most 100 metrics per object");
        for m in metrics {
            let name = m["Name"].as_str().expect("a metric has a Name");
            assert!(!name.is_empty() && name.len() <= 255);
            if let Some(unit) = m.get("Unit") {
                assert!(
                    UNITS.contains(&unit.as_str().unwrap_or_default()),
                    "unit {unit} of {name}"
                );
                assert_eq!(unit.as_str(), names::unit_of(name), "{name}'s unit");
            }
            if let Some(r) = m.get("StorageResolution") {
                assert!(r == 1 || r == 60, "StorageResolution 1 or 60");
            }
            assert!(
                obj.get(name).is_some_and(Value::is_number),
                "metric {name} has a top-level number value: {v}"
            );
            assert!(!all.contains(&name.to_string()), "{name} listed twice");
            all.push(name.to_string());
        }
    }
    assert!(all.len() <= 100);
    all
}

fn u(line: &Value, name: &str) -> u64 {
    line[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} is not a whole number in {line}"))
}

fn routed(s: &SimStats) -> u64 {
    s.requests_total - s.unrouted
}

fn begins(p: &ProxyStats) -> u64 {
    p.simple_queries.iter().filter(|q| q.starts_with("BEGIN")).count() as u64
}

fn port_of(url: &str) -> u16 {
    let after_at = url.split('@').nth(1).unwrap();
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_emf_line_per_invocation_with_what_lambda_upbit_and_postgres_saw() {
    let db = TestDb::create().await.unwrap();
    init_schema(db.url()).await;
    let sim = unthrottled_sim(SimConfig::default()).await;
    let proxy = PgProxy::start(port_of(db.url())).await;
    let env = LambdaEnv::start(
        env_config(COLLECTOR, &proxy.url_for(db.url()), &sim.base_url())
            .env("MAKENAIDE_METRICS_NAMESPACE", NAMESPACE)
            // Long enough that repeating invocation 2 is served from the cache, whatever the machine's speed.
            .env("MAKENAIDE_UPBIT_CACHE_TTL_MS", "60000"),
    )
    .await
    .unwrap();
    let sub = env.telemetry().subscriptions();
    assert_eq!(sub.len(), 1, "{sub:?}");
    assert_eq!(sub[0].schema_version, "2022-12-13");
    assert_eq!(sub[0].types, ["platform"]);
    assert!(
        sub[0].destination.starts_with("http://127.0.0.1:"),
        "sandbox.localdomain does not resolve here: {}",
        sub[0].destination
    );

    // 1: cold; 2: other markets, one 429 (retried); 3: invocation 2 again, from the cache.
    let plan: [(&[&str], bool); 3] = [
        (&["KRW-BTC", "KRW-ETH"], false),
        (&["KRW-XRP", "KRW-ADA"], true),
        (&["KRW-XRP", "KRW-ADA"], false),
    ];
    let mut runs = Vec::new();
    let (mut sim_before, mut pg_before) = (SimStats::default(), ProxyStats::default());
    for (markets, fault) in plan {
        if fault {
            sim.push_fault(FaultRule::once(Fault::TooManyRequests).in_group("candles"));
        }
        let out = env
            .invoke(json!({"markets": markets, "interval": "days", "count": 3}))
            .await
            .unwrap();
        assert_eq!(out.status, InvokeStatus::Success, "{out:?}");
        assert!(out.frozen);
        // Frozen now: nothing more can happen in this invocation's window.
        let (sim_now, pg_now) = (sim.stats(), proxy.stats());
        runs.push((
            out.request_id.clone(),
            markets.len() as u64,
            sim_stats_since(&sim_now, &sim_before),
            pg_now.since(&pg_before),
        ));
        (sim_before, pg_before) = (sim_now, pg_now);
    }
    // The last report reaches the extension when SHUTDOWN thaws it.
    let report = env.telemetry_reports(&runs.iter().map(|r| r.0.clone()).collect::<Vec<_>>());
    let shutdown = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let core = shutdown.extension(EXTENSION).unwrap();
    assert!(core.exit.is_some_and(|e| e.success()) && !core.killed, "{core:?}");
    let lines = emf_lines(&shutdown.logs);
    assert_eq!(lines.len(), runs.len(), "one line per invocation: {lines:#?}");

    for (i, (rid, markets, upbit, pg)) in runs.iter().enumerate() {
        let line = line_for(&lines, rid);
        let metrics = assert_valid_emf(line);
        let directive = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], NAMESPACE);
        assert_eq!(directive["Dimensions"], json!([["function_name"]]));
        assert_eq!(line["function_name"], COLLECTOR);
        assert_eq!(line["status"], "success");
        let reported = &report[rid]["metrics"];
        // Lambda's figures, as the harness reported them.
        assert_eq!(
            u(line, names::COLD_START),
            u64::from(i == 0),
            "ColdStart of invocation {}",
            i + 1
        );
        if i == 0 {
            assert_eq!(line[names::INIT_DURATION].as_f64(), reported["initDurationMs"].as_f64());
        } else {
            assert!(
                !metrics.iter().any(|m| m == names::INIT_DURATION),
                "InitDuration on a warm invocation"
            );
        }
        assert_eq!(line[names::DURATION].as_f64(), reported["durationMs"].as_f64());
        assert_eq!(line[names::BILLED_DURATION], reported["billedDurationMs"]);
        assert_eq!(line[names::MAX_MEMORY_USED], reported["maxMemoryUsedMB"]);
        for (name, _) in names::EXTENSION {
            assert!(metrics.iter().any(|m| m == name), "{name} missing");
        }
        // Upbit, as the simulated Upbit saw it.
        assert_eq!(
            u(line, names::UPBIT_REQUESTS),
            routed(upbit),
            "UpbitRequests of invocation {}",
            i + 1
        );
        assert_eq!(
            u(line, names::UPBIT_429),
            upbit.responses_429,
            "Upbit429 of invocation {}",
            i + 1
        );
        assert_eq!(u(line, names::UPBIT_418), upbit.responses_418);
        assert_eq!(
            u(line, names::UPBIT_RETRIES),
            upbit.responses_429,
            "each 429 retried once"
        );
        let cached = u(line, names::UPBIT_CACHE_HITS);
        assert_eq!(
            cached,
            if i == 2 { *markets } else { 0 },
            "cache hits of invocation {}",
            i + 1
        );
        assert_eq!(
            routed(upbit) - upbit.responses_429 + cached,
            *markets,
            "one GET per market"
        );
        // PostgreSQL, as the counting proxy saw it.
        assert_eq!(
            u(line, names::DB_NEW_CONNECTIONS),
            pg.connections,
            "DbNewConnections of invocation {}",
            i + 1
        );
        assert_eq!(
            u(line, names::DB_ROUND_TRIPS),
            pg.round_trips,
            "DbRoundTrips of invocation {}: {pg:?}",
            i + 1
        );
        assert_eq!(u(line, names::DB_DEAD_CONNECTIONS_REPLACED), 0);
        assert_eq!(u(line, names::DB_STATEMENT_ERRORS), 0);
        // Requests: the function's Upbit GETs and its transactions.
        assert_eq!(
            u(line, names::REQUESTS),
            markets + begins(pg),
            "Requests of invocation {}",
            i + 1
        );
    }
    let first = line_for(&lines, &runs[0].0);
    assert!(
        u(first, names::DB_NEW_CONNECTIONS) >= 1,
        "the warm-up connection is on the cold start's line"
    );
    let with_429 = line_for(&lines, &runs[1].0);
    assert_eq!(u(with_429, names::UPBIT_429), 1);
    assert!(
        with_429[names::RATE_SLOT_WAIT_MS].as_f64().unwrap() > 0.0,
        "a 429 pauses the group: the retry waited for its slot"
    );
    assert_eq!(u(line_for(&lines, &runs[2].0), names::UPBIT_REQUESTS), 0);
}

fn sim_stats_since(now: &SimStats, before: &SimStats) -> SimStats {
    SimStats {
        requests_total: now.requests_total - before.requests_total,
        unrouted: now.unrouted - before.unrouted,
        responses_429: now.responses_429 - before.responses_429,
        responses_418: now.responses_418 - before.responses_418,
        ..SimStats::default()
    }
}

trait Reports {
    fn telemetry_reports(&self, rids: &[String]) -> BTreeMap<String, Value>;
}

impl Reports for LambdaEnv {
    /// The `platform.report` record the harness sent for each invocation.
    fn telemetry_reports(&self, rids: &[String]) -> BTreeMap<String, Value> {
        rids.iter()
            .map(|r| {
                (
                    r.clone(),
                    self.telemetry()
                        .report_of(r)
                        .unwrap_or_else(|| panic!("no report for {r}")),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn a_timed_out_invocation_still_gets_its_line() {
    let env = LambdaEnv::start(fixture_env().timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let pending = env.start_invoke(json!({"x": "sleep:3"})).await.unwrap();
    // One request to the extension while the function hangs: it belongs to this invocation.
    env.core().ping().await.unwrap();
    let out = env.wait_invoke(&pending).await.unwrap();
    assert_eq!(out.status, InvokeStatus::Timeout);
    // The function is still stuck; the extension gets platform.report (status timeout) and writes the line.
    let rid = out.request_id.clone();
    let seen = env
        .wait_for_log(WAIT, |l| {
            l.process == EXTENSION && l.line.contains(&rid) && l.line.contains("_aws")
        })
        .await
        .unwrap();
    let line: Value = serde_json::from_str(&seen.line).unwrap();
    assert_valid_emf(&line);
    let reported = env.telemetry().report_of(&rid).unwrap();
    assert_eq!(reported["status"], "timeout");
    assert_eq!(line["status"], "timeout");
    assert_eq!(
        line[names::DURATION].as_f64(),
        reported["metrics"]["durationMs"].as_f64()
    );
    assert_eq!(line[names::DURATION].as_f64(), Some(1000.0));
    assert_eq!(u(&line, names::COLD_START), 1);
    assert_eq!(u(&line, names::REQUESTS), 1, "the ping");
    let report = env
        .shutdown_with(makenaide_tests::lambda_env::ShutdownReason::Timeout, SHUTDOWN_BUDGET)
        .await
        .unwrap();
    let core = report.extension(EXTENSION).unwrap();
    assert!(core.exit.is_some_and(|e| e.success()), "{core:?}");
    assert_eq!(emf_lines(&report.logs).len(), 1);
}

#[tokio::test]
async fn metrics_off_means_no_subscription_no_listener_and_no_line() {
    let port = free_port();
    let env = LambdaEnv::start(
        fixture_env()
            .env("MAKENAIDE_METRICS", "off")
            .env(TELEMETRY_PORT_ENV, port.to_string()),
    )
    .await
    .unwrap();
    for n in 0..2 {
        let out = env.invoke(json!({ "n": n })).await.unwrap();
        assert_eq!(out.status, InvokeStatus::Success);
    }
    assert!(env.telemetry().subscriptions().is_empty());
    assert!(!env.journal().events().iter().any(|e| matches!(
        e.kind,
        ApiEventKind::TelemetrySubscribed { .. } | ApiEventKind::TelemetrySubscribeRejected { .. }
    )));
    // A listening socket accepts even while its process is frozen: a refused connect means there is none.
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "something listens on the telemetry port {port}");
    {
        let _thawed = env.thaw();
        let metrics = env.core().get(makenaide_contract::routes::METRICS).await.unwrap();
        assert_eq!(metrics.status, 200);
        let v: Value = serde_json::from_slice(&metrics.body).unwrap();
        assert_eq!(v["telemetry"], "off");
        for (name, _) in names::EXTENSION {
            assert!(v["counters"][name].is_number(), "{name} in /metrics: {v}");
        }
        assert!(v["counters"][names::REQUESTS].as_u64().unwrap() >= 1);
        let wrong = CoreClient::new(env.core_port(), "not-the-token");
        let refused = wrong.get(makenaide_contract::routes::METRICS).await.unwrap();
        assert_eq!(refused.status, 403, "the token is required");
    }
    let report = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    assert!(emf_lines(&report.logs).is_empty());
}

#[tokio::test]
async fn without_a_telemetry_api_metrics_turn_off_with_one_warning() {
    let port = free_port();
    let env = LambdaEnv::start(
        fixture_env()
            .without_telemetry_api()
            .env(TELEMETRY_PORT_ENV, port.to_string()),
    )
    .await
    .expect("a missing Telemetry API is no init error");
    let out = env.invoke(json!({"n": 1})).await.unwrap();
    assert_eq!(out.status, InvokeStatus::Success);
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "the listener stays up after a failed subscription");
    let report = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let warnings: Vec<&LogLine> = report
        .logs
        .iter()
        .filter(|l| l.process == EXTENSION && l.line.contains("WARN") && l.line.contains("metrics off"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].line.contains("Telemetry.NotSupported"),
        "{}",
        warnings[0].line
    );
    assert!(emf_lines(&report.logs).is_empty());
    assert!(report.extension(EXTENSION).unwrap().exit.is_some_and(|e| e.success()));
}

#[tokio::test]
async fn managed_instances_write_one_aggregated_line_per_interval() {
    let env = LambdaEnv::start(
        fixture_env()
            .managed_instances(4)
            .env("MAKENAIDE_METRICS_INTERVAL_MS", "1000"),
    )
    .await
    .unwrap();
    let sub = env.telemetry().subscriptions();
    assert_eq!(sub.len(), 1);
    assert_eq!(
        sub[0].schema_version, "2025-01-29",
        "the only schema Managed Instances accepts"
    );
    let out = env.invoke(json!({"n": 1})).await.unwrap();
    assert_eq!(out.status, InvokeStatus::Success);
    let core = env.core();
    for _ in 0..3 {
        core.ping().await.unwrap();
    }
    // Interval lines come every second once something happened (the three pings, maybe split over two).
    let total = |logs: &[LogLine]| emf_lines(logs).iter().map(|l| u(l, names::REQUESTS)).sum::<u64>();
    let deadline = tokio::time::Instant::now() + WAIT;
    let seen = env
        .journal()
        .wait_for(deadline, |_, logs| (total(logs) >= 3).then_some(()))
        .await;
    assert!(seen.is_some(), "no interval line with the three pings");
    for _ in 0..2 {
        core.ping().await.unwrap();
    }
    // The last partial interval is written at SHUTDOWN.
    let report = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let lines = emf_lines(&report.logs);
    assert_eq!(total(&report.logs), 5, "{lines:#?}");
    for line in &lines {
        let metrics = assert_valid_emf(line);
        assert!(line.get("request_id").is_none(), "aggregated lines name no invocation");
        assert!(!metrics.iter().any(|m| m == names::DURATION || m == names::COLD_START));
    }
}
