//! Reliability: hostile input to the real extension's localhost API and to the functions'
//! events. Every request gets the contract's status and error code (never a 500, never a dropped connection,
//! never a crash); PostgreSQL's own message and SQLSTATE come back for invalid SQL; parameters are always bound,
//! so injection attempts are stored literally and harm nothing; Upbit's own errors for bad market codes are
//! passed through unchanged. The extension is still healthy afterwards and logged no panic.
//!
//! The parsers themselves are property-tested in their crates (`extension/src/**/proptests.rs`,
//! `functions/pipeline/tests/proptest_events.rs`); this file is the end-to-end view. Figures go to the
//! reliability report (section `reliability_input`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use makenaide_tests::lambda_env::LambdaEnv;
use makenaide_tests::report;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECTION: &str = "reliability_input";
/// The contract's default body limit (6 MiB).
const DEFAULT_MAX_BODY: usize = 6 * 1024 * 1024;

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    sent: usize,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
    fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or("").to_string()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Api {
    fn new(env: &LambdaEnv) -> Self {
        makenaide_tests::lambda_env::CoreClient::new(env.core_port(), ""); // installs the crypto provider
        Self {
            base: format!("http://127.0.0.1:{}", env.core_port()),
            token: env.core_token().to_string(),
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            sent: 0,
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Reply {
        self.sent += 1;
        let r = req.send().await.expect("the extension must answer every request");
        Reply {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.bytes().await.unwrap().to_vec(),
        }
    }

    async fn post(&mut self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(makenaide_contract::headers::TOKEN, &self.token)
            .header("Content-Type", "application/json")
            .body(body);
        self.send(req).await
    }

    async fn query(&mut self, sql: &str, params: Value) -> Reply {
        self.post("/db/query", json!({"sql": sql, "params": params}).to_string())
            .await
    }

    async fn get(&mut self, path: &str) -> Reply {
        let req = self
            .http
            .get(format!("{}{path}", self.base))
            .header(makenaide_contract::headers::TOKEN, &self.token);
        self.send(req).await
    }
}

fn assert_error(r: &Reply, status: u16, code: &str, what: &str) {
    assert_eq!((r.status, r.code().as_str()), (status, code), "{what}: {}", r.text());
    assert_eq!(
        r.headers
            .get(makenaide_contract::headers::SOURCE)
            .map(|v| v.to_str().unwrap()),
        Some("core"),
        "{what}"
    );
}

/// Sends raw bytes on a fresh connection and returns what came back before the server closed it (or 2 s passed).
async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 100") {
                    // Headers complete; read the rest of a short body if any arrives promptly.
                    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        out.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_the_contract_answers_and_nothing_breaks() {
    let b = Backends::start().await;
    b.init_schema().await;
    let env = LambdaEnv::start(b.env_config(COLLECTOR).freeze(false)).await.unwrap();
    env.core().wait_ready(true, Duration::from_secs(10)).await.unwrap();
    let mut api = Api::new(&env);

    // --- malformed JSON ---
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [
        &b""[..],
        b"{",
        b"not json",
        br#"{"sql": "select 1",}"#,
        b"\xff\xfe\x00garbage",
        br#"{"sql": "select 1"} trailing"#,
        deep.as_bytes(),
    ] {
        for path in ["/db/query", "/db/transaction"] {
            let r = api.post(path, body.to_vec()).await;
            assert_error(
                &r,
                400,
                makenaide_contract::ErrorCode::InvalidJson.as_str(),
                &format!("{path} {:?}", String::from_utf8_lossy(&body[..body.len().min(30)])),
            );
        }
    }
    // --- wrong shapes and types (the message names the field) ---
    for (path, body, field) in [
        ("/db/query", json!(null), "JSON object"),
        ("/db/query", json!([1, 2]), "JSON object"),
        ("/db/query", json!("select 1"), "JSON object"),
        ("/db/query", json!({}), "sql"),
        ("/db/query", json!({"sql": 1}), "sql"),
        ("/db/query", json!({"sql": ""}), "sql"),
        ("/db/query", json!({"sql": "select 1", "params": "x"}), "params"),
        ("/db/query", json!({"sql": "select 1", "params": {"a": 1}}), "params"),
        ("/db/query", json!({"sql": "select 1", "timeout_ms": "5"}), "timeout_ms"),
        ("/db/query", json!({"sql": "select 1", "timeout_ms": -1}), "timeout_ms"),
        ("/db/query", json!({"sql": "select 1", "timeout_ms": 1.5}), "timeout_ms"),
        (
            "/db/query",
            json!({"sql": "select 1", "timeout_ms": 1e300}),
            "timeout_ms",
        ),
        ("/db/query", json!({"sql": "select 1", "parms": []}), "parms"),
        ("/db/transaction", json!({"statements": {}}), "statements"),
        ("/db/transaction", json!({"statements": []}), "statements"),
        ("/db/transaction", json!({"statements": [1]}), "statements[0]"),
        (
            "/db/transaction",
            json!({"statements": [{"sql": "select 1"}, {"sql": null}]}),
            "statements[1].sql",
        ),
        ("/db/transaction", json!({"sql": "select 1"}), "sql"),
    ] {
        let r = api.post(path, body.to_string()).await;
        assert_error(
            &r,
            400,
            makenaide_contract::ErrorCode::InvalidRequest.as_str(),
            &format!("{path} {body}"),
        );
        assert!(
            r.message().contains(field),
            "{path} {body}: message should name {field}: {}",
            r.text()
        );
    }
    // --- parameters that cannot be bound to the inferred type ---
    for (sql, params, needle) in [
        ("select $1::int4", json!(["abc"]), "$1"),
        ("select $1::int4", json!([1.5]), "int4"),
        ("select $1::int4", json!([1_i64 << 40]), "int4"),
        ("select $1::int2", json!([40000]), "int2"),
        ("select $1::bool", json!([1]), "bool"),
        ("select $1::uuid", json!(["not-a-uuid"]), "uuid"),
        // Not "yesterday": PostgreSQL reads that one (midnight yesterday), and parameters are read as PostgreSQL reads them.
        ("select $1::timestamptz", json!(["yesterday noon"]), "timestamp"),
        ("select $1::int4[]", json!([[1, "x"]]), "$1"),
        ("select $1::text", json!([{"a": 1}]), "$1"),
        ("select $1::numeric", json!(["12abc"]), "numeric"),
    ] {
        let r = api.query(sql, params.clone()).await;
        assert_error(
            &r,
            400,
            makenaide_contract::ErrorCode::InvalidParam.as_str(),
            &format!("{sql} {params}"),
        );
        assert!(r.message().contains(needle), "{sql} {params}: {}", r.text());
    }
    let r = api.query("select $1::int4, $2::int4", json!([1])).await;
    assert_error(
        &r,
        400,
        makenaide_contract::ErrorCode::InvalidRequest.as_str(),
        "too few params",
    );
    let r = api.query("select 1", json!([1, 2])).await;
    assert_error(
        &r,
        400,
        makenaide_contract::ErrorCode::InvalidRequest.as_str(),
        "too many params",
    );

    // --- oversized bodies: declared and streamed ---
    let big = vec![b' '; DEFAULT_MAX_BODY + 1];
    let r = api.post("/db/query", big.clone()).await;
    assert_error(
        &r,
        413,
        makenaide_contract::ErrorCode::BodyTooLarge.as_str(),
        "6 MiB + 1 with Content-Length",
    );
    api.sent += 1;
    let head = post_chunked(env.core_port(), &api.token, "/db/transaction", DEFAULT_MAX_BODY + 1).await;
    assert!(head.starts_with("HTTP/1.1 413"), "6 MiB + 1 chunked: {head:?}");
    let r = api
        .query(
            &format!("select '{}' as x", "y".repeat(DEFAULT_MAX_BODY - 100)),
            json!([]),
        )
        .await;
    assert_eq!(r.status, 200, "a body just under the limit is served");

    // --- unknown routes and wrong methods ---
    for path in [
        "/",
        "/nope",
        "/db",
        "/db/query/",
        "//db/query",
        "/DB/QUERY",
        "/v1",
        "/v1/accounts",
        "/v1/orders",
        "/v1/orders/chance?market=KRW-BTC",
        "/v1/withdraws",
        "/v1/candles/minutes/1/../../../accounts",
        "/v1/candles/minutes/%2e%2e/accounts",
        "/v1/candles/minutes/99999",
        "/v2/ticker",
        "/__sim/stats",
    ] {
        let r = api.get(path).await;
        assert_error(&r, 404, makenaide_contract::ErrorCode::NotFound.as_str(), path);
    }
    for (method, path, allow) in [
        (reqwest::Method::DELETE, "/db/query", "POST"),
        (reqwest::Method::GET, "/db/transaction", "POST"),
        (reqwest::Method::PUT, "/v1/ticker?markets=KRW-BTC", "GET"),
        (reqwest::Method::POST, "/v1/candles/days?market=KRW-BTC", "GET"),
        (reqwest::Method::POST, "/ping", "GET"),
    ] {
        let req = api
            .http
            .request(method.clone(), format!("{}{path}", api.base))
            .header(makenaide_contract::headers::TOKEN, &api.token);
        let r = api.send(req).await;
        assert_error(
            &r,
            405,
            makenaide_contract::ErrorCode::MethodNotAllowed.as_str(),
            &format!("{method} {path}"),
        );
        assert_eq!(r.headers["allow"], allow);
    }

    // --- invalid SQL: PostgreSQL's message and SQLSTATE ---
    for (sql, sqlstate, needle) in [
        ("selec 1", "42601", "syntax error at or near \"selec\""),
        (
            "select * from no_such_table",
            "42P01",
            "relation \"no_such_table\" does not exist",
        ),
        ("select 1/0", "22012", "division by zero"),
        ("select nope from ohlcv", "42703", "column \"nope\" does not exist"),
        (
            "select 1; drop table ohlcv",
            "42601",
            "cannot insert multiple commands into a prepared statement",
        ),
    ] {
        let r = api.query(sql, json!([])).await;
        assert_error(&r, 400, makenaide_contract::ErrorCode::SqlError.as_str(), sql);
        assert_eq!(r.json()["error"]["sqlstate"], json!(sqlstate), "{sql}: {}", r.text());
        assert!(r.message().contains(needle), "{sql}: {}", r.text());
    }
    // A constraint violation in a transaction: the failing statement's index, and the earlier insert rolled back.
    let insert = "insert into markets (market, korean_name, english_name, warning, caution, updated_at) \
                  values ($1, 'k', 'e', false, '{}'::jsonb, now())";
    let r = api
        .post(
            "/db/transaction",
            json!({"statements": [
                {"sql": insert, "params": ["KRW-TXTEST"]},
                {"sql": insert, "params": ["KRW-TXTEST"]},
            ]})
            .to_string(),
        )
        .await;
    assert_error(
        &r,
        400,
        makenaide_contract::ErrorCode::SqlError.as_str(),
        "duplicate key",
    );
    assert_eq!(r.json()["error"]["sqlstate"], json!("23505"));
    assert_eq!(r.json()["error"]["statement_index"], json!(1));
    let r = api
        .query(
            "select count(*) as n from markets where market = 'KRW-TXTEST'",
            json!([]),
        )
        .await;
    assert_eq!(
        r.json()["rows"],
        json!([[0]]),
        "statement 0 was not rolled back: {}",
        r.text()
    );

    // --- injection attempts through parameters: bound, stored literally, harmless ---
    let hostile = [
        "'; drop table ohlcv; --",
        "Robert'); DROP TABLE markets;--",
        "x' OR '1'='1",
        "$1; select pg_sleep(10)",
        "\\'; truncate ohlcv; --",
        "\u{0}nul",
        "🚀' || (select version()) || '",
    ];
    for (i, evil) in hostile.iter().enumerate() {
        let evil = evil.replace('\u{0}', ""); // PostgreSQL text cannot hold NUL: tested separately below
        let r = api
            .query(
                "insert into ohlcv (market, interval, candle_date_time_utc, candle_date_time_kst, opening_price, \
                 high_price, low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, timestamp) \
                 values ($1, $2, $3, $3, 1, 1, 1, 1, 1, 1, 1) returning market, interval",
                json!([evil, evil, format!("2001-01-0{}T00:00:00", i + 1)]),
            )
            .await;
        assert_eq!(r.status, 200, "{evil}: {}", r.text());
        assert_eq!(r.json()["rows"], json!([[evil, evil]]), "{evil}");
        let r = api
            .query("select count(*) as n from ohlcv where market = $1", json!([evil]))
            .await;
        assert_eq!(r.json()["rows"], json!([[1]]), "{evil}: {}", r.text());
    }
    let r = api.query("select $1::text", json!(["a\u{0}b"])).await;
    assert!(
        r.status == 400
            && [
                makenaide_contract::ErrorCode::InvalidParam.as_str(),
                makenaide_contract::ErrorCode::SqlError.as_str()
            ]
            .contains(&r.code().as_str()),
        "NUL: {}",
        r.text()
    );
    let r = api
        .query(
            "select to_regclass('ohlcv') is not null as a, to_regclass('markets') is not null as b, \
                (select count(*) from ohlcv) as n",
            json!([]),
        )
        .await;
    assert_eq!(r.json()["rows"], json!([[true, true, hostile.len()]]), "{}", r.text());

    // --- the Upbit mirror: invalid market codes and parameters are Upbit's answers, passed through ---
    let r = api.get("/v1/candles/days?market=KRW-NOTACOIN&count=3").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error": {"name": 404, "message": "Code not found"}}));
    assert_eq!(r.headers[makenaide_contract::headers::SOURCE], "upbit");
    assert!(r.headers.contains_key("remaining-req"));
    for (path, status, needle) in [
        (
            "/v1/ticker?markets=KRW-BTC%27%3B%20drop%20table%20ohlcv%3B--",
            404,
            "Code not found",
        ),
        ("/v1/candles/days?market=KRW-BTC&count=abc", 400, ""),
        ("/v1/candles/days", 400, ""),
        (
            "/v1/candles/minutes/7?market=KRW-BTC",
            400,
            "specified unit is not valid",
        ),
        ("/v1/orderbook?markets=", 0, ""),
    ] {
        let r = api.get(path).await;
        if status != 0 {
            assert_eq!(r.status, status, "{path}: {}", r.text());
        }
        assert!((400..500).contains(&r.status), "{path}: {}", r.text());
        assert_eq!(r.headers[makenaide_contract::headers::SOURCE], "upbit", "{path}");
        assert!(
            r.json()["error"]["message"].as_str().unwrap_or("").contains(needle),
            "{path}: {}",
            r.text()
        );
    }

    // --- headers: deadline and token values that are not what they should be ---
    for bad in ["soon", "-1", "1e3", "", "18446744073709551616", "0x10"] {
        let req = api
            .http
            .get(format!("{}/v1/ticker?markets=KRW-BTC", api.base))
            .header(makenaide_contract::headers::TOKEN, &api.token)
            .header(makenaide_contract::headers::DEADLINE, bad);
        let r = api.send(req).await;
        assert_error(
            &r,
            400,
            makenaide_contract::ErrorCode::InvalidRequest.as_str(),
            &format!("deadline {bad:?}"),
        );
    }
    // Numbers that are not a plausible absolute deadline (0, cargo-lambda's duration 600000, an expired time, far
    // future): ignored, the default bounds apply, the request is served.
    for implausible in ["0".to_string(), "600000".into(), "1".into(), u64::MAX.to_string()] {
        let req = api
            .http
            .get(format!("{}/v1/ticker?markets=KRW-ETH", api.base))
            .header(makenaide_contract::headers::TOKEN, &api.token)
            .header(makenaide_contract::headers::DEADLINE, &implausible);
        let r = api.send(req).await;
        assert_eq!(r.status, 200, "deadline {implausible}: {}", r.text());
    }

    // --- raw protocol garbage: an HTTP error or a close, never a crash ---
    let port = env.core_port();
    let mut raw_sent = 0;
    for bytes in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /ping HTTP/9.9\r\n\r\n",
        b"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /db/query HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /db/query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
        b"GET /ping HTTP/1.1\r\nHost: x\r\nX: \xff\xfe\r\n\r\n",
    ] {
        raw_sent += 1;
        let reply = raw(port, bytes).await;
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 4") || reply.starts_with("HTTP/1.1 200"),
            "{:?} → {reply:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(200_000));
    raw_sent += 1;
    let reply = raw(port, long_path.as_bytes()).await;
    assert!(reply.is_empty() || reply.starts_with("HTTP/1.1 4"), "{reply:.200}");

    // --- still healthy: /ping, a query, a real invocation; no panic in any log ---
    let ping = env.core().ping().await.unwrap();
    assert_eq!(ping["db"], "ready", "{ping}");
    let out = env.invoke(json!({"markets": ["KRW-BTC"], "count": 2})).await.unwrap();
    assert_eq!(result_of(out.ok().unwrap())["stored"], json!({"KRW-BTC": 2}));

    // --- hostile function events: InvalidEvent, nothing sent to Upbit ---
    let upstream_before = b.upbit.sim().stats().requests_total;
    let mut events = 0;
    for ev in [
        json!({"markets": ["krw-btc"]}),
        json!({"markets": ["KRW-BTC&count=200"]}),
        json!({"markets": ["KRW-BTC/../../v1/accounts"]}),
        json!({"markets": "KRW-BTC"}),
        json!({"markets": [1]}),
        json!({"interval": "../../accounts"}),
        json!({"interval": "minutes/7"}),
        json!({"count": "3"}),
        json!({"count": 0}),
        json!({"count": 10001}),
        json!({"count": -1}),
        json!({"count": 1.5}),
        json!([1, 2, 3]),
        json!("markets"),
        // A long non-ASCII value: the error message quoting it once panicked on a char boundary.
        json!({"count": "한".repeat(100)}),
    ] {
        events += 1;
        let out = env.invoke(ev.clone()).await.unwrap();
        assert_eq!(out.error_type(), Some("InvalidEvent"), "{ev}: {:?}", out.ok());
    }
    assert_eq!(
        b.upbit.sim().stats().requests_total,
        upstream_before,
        "an invalid event reached Upbit"
    );

    let report_ = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let core = report_.extension("makenaide-core").unwrap();
    assert!(core.exit.is_some_and(|e| e.success()), "{core:?}");
    for l in &report_.logs {
        assert!(!l.line.contains("panicked"), "{}: {}", l.process, l.line);
    }
    report::record(
        SECTION,
        &format!(
        "- {} hostile HTTP requests (malformed JSON incl. 100k-deep nesting, wrong types, unbindable params, 6 MiB+1 \
         bodies declared and chunked, unknown routes incl. Upbit exchange paths and traversal, wrong methods, invalid \
         SQL, 7 injection strings, bad market codes, bad deadline headers) + {} raw-protocol garbage connections + {} \
         hostile function events: every one answered with the contract's status/code (no 500, no crash, no panic \
         line); SQL errors carry PostgreSQL's message and SQLSTATE (42601, 42P01, 22012, 42703, 23505); injection \
         strings stored literally, tables intact; Upbit 404 `Code not found` passed through unchanged",
        api.sent, raw_sent, events
    ),
    );
}

/// POSTs `len` bytes chunked (no Content-Length) on a raw connection, writing while reading, and returns the
/// status line and headers of the reply (the server may answer before the body is complete).
async fn post_chunked(port: u16, token: &str, path: &str, len: usize) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Makenaide-Token: {token}\r\nTransfer-Encoding: chunked\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 65536];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            wr.write_all(&chunk[..n]).await?;
            wr.write_all(b"\r\n").await?;
            left -= n;
        }
        wr.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(wr)
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}
