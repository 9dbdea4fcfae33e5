//! Function-side tests against a small in-process fake of the extension's localhost API (docs/contracts.md):
//! Upbit mirror routes with newest-first candles, exclusive `to` and 404 `Code not found`, and `/db/*` routes
//! that record statements and answer the shapes the real extension gives. The real end-to-end tests (real
//! extension, real PostgreSQL, simulated Upbit) live in /tests; these pin down the client and the business
//! logic's use of the API.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use makenaide_pipeline::{
    run_collector, run_migrations, run_orchestrator, run_scanner, CollectEvent, CoreClient, OrchestrateEvent,
    PipelineError, ScanEvent,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

const TOKEN: &str = "test-token";
/// Days of history the fake Upbit has for KRW-BTC (others have 5).
const BTC_HISTORY: usize = 250;

#[derive(Default)]
struct State {
    requests: Vec<(String, Option<String>, Option<String>)>, // (path+query, token, deadline)
    statements: Vec<(String, Vec<Value>)>,
    db_down: bool,
    /// The next this many `/db/*` requests are recorded (as if applied) but answered 503 `db_outcome_unknown`.
    outcome_unknown: usize,
    connections: usize,
}

type Shared = Arc<Mutex<State>>;

fn day(i: usize) -> String {
    // Day i back from 2026-11-24 (i = 0 is the newest); plain arithmetic over a 30-day month is fine for a fake.
    let n = 2026 * 360 + 10 * 30 + 23 - i;
    format!("{:04}-{:02}-{:02}T00:00:00", n / 360, n % 360 / 30 + 1, n % 30 + 1)
}

fn candles(market: &str, count: usize, to: Option<&str>) -> Vec<Value> {
    let history = if market == "KRW-BTC" { BTC_HISTORY } else { 5 };
    (0..history)
        .map(day)
        .filter(|d| to.is_none_or(|t| d.as_str() < t.trim_end_matches('Z')))
        .take(count.min(200))
        .map(|d| {
            json!({"market": market, "candle_date_time_utc": d, "candle_date_time_kst": d.replace("T00", "T09"),
                   "opening_price": 1.0, "high_price": 2.0, "low_price": 0.5, "trade_price": 1.5,
                   "timestamp": 1_700_000_000_000i64, "candle_acc_trade_price": 10.0, "candle_acc_trade_volume": 5.0})
        })
        .collect()
}

fn query_map(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn reply(status: u16, source: &str, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(makenaide_contract::headers::SOURCE, source)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

const KNOWN: [&str; 4] = ["KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-WARN"];

fn upbit(path: &str, query: &str) -> Response<Full<Bytes>> {
    let q = query_map(query);
    let not_found = || {
        reply(
            404,
            "upbit",
            json!({"error": {"name": 404, "message": "Code not found"}}),
        )
    };
    match path {
        "/v1/market/all" => reply(
            200,
            "upbit",
            json!(KNOWN
                .iter()
                .chain(["BTC-ETH"].iter())
                .map(|m| json!({"market": m, "korean_name": m, "english_name": m,
                    "market_event": {"warning": *m == "KRW-WARN", "caution": {"PRICE_FLUCTUATIONS": false}}}))
                .collect::<Vec<_>>()),
        ),
        "/v1/ticker" => {
            let markets: Vec<&str> = q.get("markets").map(|s| s.split(',').collect()).unwrap_or_default();
            if markets.iter().any(|m| !KNOWN.contains(m)) {
                return not_found();
            }
            let value = |m: &str| match m {
                "KRW-BTC" => 9e11,
                "KRW-ETH" => 5e11,
                "KRW-WARN" => 8e11,
                _ => 1e8,
            };
            reply(
                200,
                "upbit",
                json!(markets
                    .iter()
                    .map(|m| json!({"market": m, "trade_price": 1.0, "acc_trade_price_24h": value(m)}))
                    .collect::<Vec<_>>()),
            )
        }
        p if p.starts_with("/v1/candles/") => {
            let market = q.get("market").cloned().unwrap_or_default();
            if !KNOWN.contains(&market.as_str()) {
                return not_found();
            }
            let count = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
            reply(
                200,
                "upbit",
                json!(candles(&market, count, q.get("to").map(String::as_str))),
            )
        }
        _ => reply(
            404,
            "core",
            json!({"error": {"code": makenaide_contract::ErrorCode::NotFound.as_str(), "message": "unknown route"}}),
        ),
    }
}

/// Answer one statement the way the extension + PostgreSQL would for this crate's SQL.
fn db_result(sql: &str, params: &[Value]) -> Value {
    if sql.contains("WITH up AS") {
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        for m in params[1].as_array().expect("markets") {
            *counts.entry(m.as_str().expect("market").to_owned()).or_default() += 1;
        }
        let rows: Vec<Value> = counts.into_iter().map(|(m, n)| json!([m, n])).collect();
        return json!({"columns": [{"name": "market", "type": "text"}, {"name": "stored", "type": "int8"}], "row_count": rows.len(), "rows": rows});
    }
    if sql.contains("INSERT INTO scan_results") {
        return json!({"columns": [{"name": "id", "type": "int8"}], "rows": [[42]], "row_count": 1});
    }
    if sql.contains("to_json(selected)") {
        return json!({"columns": [{"name": "id", "type": "int8"}, {"name": "selected", "type": "json"}], "rows": [[41, ["KRW-ETH"]]], "row_count": 1});
    }
    if sql.contains("INSERT INTO schema_migrations") {
        return json!({"columns": [{"name": "version", "type": "int8"}], "rows": [[params[0].clone()]], "row_count": 1});
    }
    if sql.contains("SELECT version FROM schema_migrations") {
        return json!({"columns": [{"name": "version", "type": "int8"}], "rows": [[1]], "row_count": 1});
    }
    json!({"columns": [], "rows": [], "row_count": 0})
}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (token, deadline) = (
        header(makenaide_contract::headers::TOKEN),
        header(makenaide_contract::headers::DEADLINE),
    );
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    state
        .lock()
        .expect("state")
        .requests
        .push((format!("{path}?{query}"), token.clone(), deadline));
    if token.as_deref() != Some(TOKEN) {
        return Ok(reply(
            401,
            "core",
            json!({"error": {"code": makenaide_contract::ErrorCode::MissingToken.as_str(), "message": "X-Makenaide-Token required"}}),
        ));
    }
    if path.starts_with("/v1/") {
        return Ok(upbit(&path, &query));
    }
    let body: Value =
        serde_json::from_slice(&req.into_body().collect().await.expect("body").to_bytes()).expect("json body");
    if state.lock().expect("state").db_down {
        return Ok(reply(
            503,
            "core",
            json!({"error": {"code": makenaide_contract::ErrorCode::DbUnavailable.as_str(), "message": "PostgreSQL is unreachable", "sqlstate": "08006"}}),
        ));
    }
    let statements: Vec<(String, Vec<Value>)> = match path.as_str() {
        "/db/query" => vec![(
            body["sql"].as_str().expect("sql").to_owned(),
            body["params"].as_array().cloned().unwrap_or_default(),
        )],
        "/db/transaction" => body["statements"]
            .as_array()
            .expect("statements")
            .iter()
            .map(|s| {
                (
                    s["sql"].as_str().expect("sql").to_owned(),
                    s["params"].as_array().cloned().unwrap_or_default(),
                )
            })
            .collect(),
        _ => {
            return Ok(reply(
                404,
                "core",
                json!({"error": {"code": makenaide_contract::ErrorCode::NotFound.as_str(), "message": "unknown route"}}),
            ))
        }
    };
    let results: Vec<Value> = statements.iter().map(|(s, p)| db_result(s, p)).collect();
    let unknown = {
        let mut s = state.lock().expect("state");
        s.statements.extend(statements);
        let unknown = s.outcome_unknown > 0;
        s.outcome_unknown = s.outcome_unknown.saturating_sub(1);
        unknown
    };
    if unknown {
        return Ok(reply(
            503,
            "core",
            json!({"error": {"code": makenaide_contract::ErrorCode::DbOutcomeUnknown.as_str(), "message": "connection to PostgreSQL lost after COMMIT was sent and before its reply: the statements may or may not have been applied"}}),
        ));
    }
    Ok(match path.as_str() {
        "/db/query" => reply(200, "core", results[0].clone()),
        _ => reply(200, "core", json!({"results": results})),
    })
}

async fn serve(listener: TcpListener, state: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        state.lock().expect("state").connections += 1;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn start() -> (CoreClient, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let state = Shared::default();
    tokio::spawn(serve(listener, state.clone()));
    (CoreClient::new(port, TOKEN), state)
}

#[tokio::test]
async fn collector_pages_back_stops_on_empty_and_reports_bad_markets() {
    let (client, state) = start().await;
    let client = client.with_deadline_ms(Some(makenaide_pipeline::client::now_ms() + 30_000));
    let event =
        CollectEvent::from_value(&json!({"markets": ["KRW-BTC", "KRW-NOPE", "KRW-ETH"], "count": 450})).expect("event");
    let r = run_collector(&client, event).await.expect("collect");

    assert_eq!(
        r.stored.get("KRW-BTC"),
        Some(&(BTC_HISTORY as u64)),
        "history ends before 450: stop on empty page"
    );
    assert_eq!(r.stored.get("KRW-ETH"), Some(&5));
    assert_eq!(r.rows_stored, BTC_HISTORY as u64 + 5);
    let failed = &r.failed["KRW-NOPE"];
    assert_eq!((failed.status, failed.message.as_str()), (404, "Code not found"));
    assert!(!r.stored.contains_key("KRW-NOPE"));

    let s = state.lock().expect("state");
    let btc: Vec<&String> = s
        .requests
        .iter()
        .map(|r| &r.0)
        .filter(|p| p.contains("market=KRW-BTC"))
        .collect();
    assert_eq!(btc.len(), 3, "{btc:?}"); // 200 + 50 + empty page
    assert_eq!(btc[0], "/v1/candles/days?market=KRW-BTC&count=200");
    assert_eq!(
        *btc[1],
        format!("/v1/candles/days?market=KRW-BTC&count=200&to={}Z", day(199))
    );
    assert_eq!(
        *btc[2],
        format!("/v1/candles/days?market=KRW-BTC&count=200&to={}Z", day(249))
    );
    assert!(
        s.requests
            .iter()
            .all(|r| r.1.as_deref() == Some(TOKEN) && r.2.is_some()),
        "token and deadline on every request"
    );
    // One bulk upsert for everything, not one per market or per row.
    let upserts: Vec<_> = s
        .statements
        .iter()
        .filter(|(sql, _)| sql.contains("INSERT INTO ohlcv"))
        .collect();
    assert_eq!(upserts.len(), 1);
    assert_eq!(upserts[0].1[0], json!("days"));
    assert_eq!(upserts[0].1[2].as_array().expect("utc").len(), BTC_HISTORY + 5);
}

#[tokio::test]
async fn collector_defaults_to_latest_scan() {
    let (client, _state) = start().await;
    let r = run_collector(&client, CollectEvent::default()).await.expect("collect");
    assert_eq!(r.scan_id, Some(41));
    assert_eq!(r.stored.get("KRW-ETH"), Some(&3));
    assert_eq!((r.interval.as_str(), r.count), ("days", 3));
}

#[tokio::test]
async fn scanner_filters_and_stores() {
    let (client, state) = start().await;
    let r = run_scanner(&client, ScanEvent::default()).await.expect("scan");
    assert_eq!(r.selected, vec!["KRW-BTC", "KRW-ETH"]); // KRW-WARN excluded, KRW-XRP below 1e9
    assert_eq!((r.scan_id, r.candidates, r.krw_markets), (42, 2, 4));
    let s = state.lock().expect("state");
    assert!(s.requests.iter().any(|r| r.0 == "/v1/market/all?is_details=true"));
    let markets = s
        .statements
        .iter()
        .find(|(sql, _)| sql.contains("INSERT INTO markets"))
        .expect("markets upsert");
    assert_eq!(
        markets.1[0].as_array().expect("codes").len(),
        4,
        "only KRW markets are stored"
    );
}

#[tokio::test]
async fn orchestrator_runs_three_timed_steps() {
    let (client, _state) = start().await;
    let r = run_orchestrator(&client, OrchestrateEvent::default())
        .await
        .expect("orchestrate");
    let names: Vec<&str> = r.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["init", "scan", "collect"]);
    assert_eq!(r.steps[0].result["applied"], json!([2, 3, 4])); // the fake has version 1 already
    assert_eq!(r.steps[0].result["current_version"], json!(4));
    assert_eq!(r.selected, vec!["KRW-BTC", "KRW-ETH"]);
    assert_eq!(r.rows_stored, 6);
}

#[tokio::test]
async fn errors_carry_error_types() {
    let (client, state) = start().await;
    state.lock().expect("state").db_down = true;
    let e = run_migrations(&client).await.expect_err("db down");
    assert_eq!(e.error_type(), "DatabaseError");
    assert!(
        e.to_string()
            .contains(makenaide_contract::ErrorCode::DbUnavailable.as_str())
            && e.to_string().contains("08006"),
        "{e}"
    );

    let event = CollectEvent::from_value(&json!({"markets": ["KRW-BTC", "KRW-ETH"]})).expect("event");
    let e = run_collector(&client, event).await.expect_err("db down at upsert");
    assert_eq!(e.error_type(), "DatabaseError");

    let bad_token = CoreClient::new(client.port(), "wrong");
    let e = run_scanner(&bad_token, ScanEvent::default()).await.expect_err("token");
    assert_eq!(e.error_type(), "CoreUnavailable");

    // Nothing listening: retried briefly, then CoreUnavailable.
    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = run_migrations(&CoreClient::new(port, TOKEN))
        .await
        .expect_err("no extension");
    assert_eq!(e.error_type(), "CoreUnavailable");
    assert!(
        matches!(e, PipelineError::CoreUnavailable(ref m) if m.contains("attempt")),
        "{e}"
    );
}

#[tokio::test]
async fn connection_refused_is_retried_until_the_extension_listens() {
    // Reserve a port, release it, and only start listening after the client has begun (the first-invoke race).
    let probe = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let state = Shared::default();
    let late = {
        let state = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(150)).await; // the fault being injected
            let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("rebind");
            serve(listener, state).await;
        })
    };
    let r = run_migrations(&CoreClient::new(port, TOKEN))
        .await
        .expect("retried until listening");
    assert_eq!(r.current_version, 4);
    late.abort();
}

#[tokio::test]
async fn keep_alive_connection_is_reused() {
    let (client, state) = start().await;
    for _ in 0..20 {
        let m: Vec<makenaide_pipeline::upbit::MarketInfo> =
            client.upbit_get("/v1/market/all?is_details=true").await.expect("get");
        assert_eq!(m.len(), 5);
    }
    assert_eq!(
        state.lock().expect("state").connections,
        1,
        "sequential requests share one keep-alive connection"
    );
}

/// `/db/*` requests the fake received.
fn db_requests(state: &Shared) -> usize {
    state
        .lock()
        .expect("state")
        .requests
        .iter()
        .filter(|r| r.0.starts_with("/db/"))
        .count()
}

#[tokio::test]
async fn idempotent_writes_are_resent_once_after_an_unknown_outcome() {
    // The collector's upsert.
    let (client, state) = start().await;
    state.lock().expect("state").outcome_unknown = 1;
    let r = run_collector(
        &client,
        CollectEvent::from_value(&json!({"markets": ["KRW-ETH"]})).expect("event"),
    )
    .await
    .expect("collect after one resend");
    assert_eq!(r.stored.get("KRW-ETH"), Some(&3));
    {
        let s = state.lock().expect("state");
        let upserts: Vec<&(String, Vec<Value>)> =
            s.statements.iter().filter(|(q, _)| q.contains("WITH up AS")).collect();
        assert_eq!(upserts.len(), 2, "sent, then resent once");
        assert_eq!(upserts[0], upserts[1], "the resend is the same statement");
    }

    // The scanner's transaction: resent with the same idempotency key.
    let (client, state) = start().await;
    state.lock().expect("state").outcome_unknown = 1;
    let r = run_scanner(&client, ScanEvent::default())
        .await
        .expect("scan after one resend");
    assert_eq!(r.scan_id, 42);
    let s = state.lock().expect("state");
    let scans: Vec<&(String, Vec<Value>)> = s
        .statements
        .iter()
        .filter(|(q, _)| q.contains("INSERT INTO scan_results"))
        .collect();
    assert_eq!(scans.len(), 2, "sent, then resent once");
    assert_eq!(scans[0].1, scans[1].1, "same parameters, same idempotency key");
    assert!(
        scans[0].1[3].as_str().is_some_and(|k| k.len() == 32),
        "{:?}",
        scans[0].1
    );
}

#[tokio::test]
async fn only_idempotent_writes_are_resent_and_only_once_and_only_on_an_unknown_outcome() {
    use makenaide_pipeline::db;
    let code = |e: PipelineError| match e {
        PipelineError::Core(c) => c.code,
        other => panic!("unexpected {other:?}"),
    };
    let (client, state) = start().await;
    // Two unknown outcomes in a row: one resend, then the caller gets the error.
    state.lock().expect("state").outcome_unknown = 2;
    let e = db::query_idempotent(&client, "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", &[], None)
        .await
        .expect_err("unknown twice");
    assert_eq!(code(e), makenaide_contract::ErrorCode::DbOutcomeUnknown.as_str());
    assert_eq!(db_requests(&state), 2);
    // A plain query is never resent.
    state.lock().expect("state").outcome_unknown = 1;
    let e = db::query(&client, "INSERT INTO t VALUES (1)", &[], None)
        .await
        .expect_err("unknown");
    assert_eq!(code(e), makenaide_contract::ErrorCode::DbOutcomeUnknown.as_str());
    assert_eq!(db_requests(&state), 3);
    state.lock().expect("state").outcome_unknown = 1;
    let e = db::transaction(&client, &[db::Statement::sql("INSERT INTO t VALUES (1)")], None)
        .await
        .expect_err("unknown");
    assert_eq!(code(e), makenaide_contract::ErrorCode::DbOutcomeUnknown.as_str());
    assert_eq!(db_requests(&state), 4);
    // Any other error: nothing was applied (or it cannot be), nothing is resent.
    state.lock().expect("state").outcome_unknown = 0;
    state.lock().expect("state").db_down = true;
    let e = db::transaction_idempotent(&client, &[db::Statement::sql("SELECT 1")], None)
        .await
        .expect_err("down");
    assert_eq!(code(e), makenaide_contract::ErrorCode::DbUnavailable.as_str());
    assert_eq!(db_requests(&state), 5);
}
