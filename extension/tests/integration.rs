//! The extension's HTTP API end to end, without Lambda: `serve()` on a port-0 listener, a fake Upbit (hyper) and
//! the real PostgreSQL.

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, FakeUpbit, Running, TestDb, TOKEN};
use serde_json::{json, Value};
use std::time::Duration;

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }
}

/// Sends `request` with the token and collects the whole reply.
async fn send(request: reqwest::RequestBuilder) -> Reply {
    let r = request
        .header(makenaide_contract::headers::TOKEN, TOKEN)
        .send()
        .await
        .unwrap();
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap(),
    }
}

async fn get(c: &reqwest::Client, url: String) -> Reply {
    send(c.get(url)).await
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> Reply {
    send(c.post(url).json(&body)).await
}

/// `/ping`'s JSON body. Sent without the token on purpose: the health check needs none.
async fn get_ping(c: &reqwest::Client, ext: &Running) -> Value {
    c.get(ext.url("/ping")).send().await.unwrap().json().await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().build().unwrap()
}

#[tokio::test]
async fn upbit_mirror_passthrough_cache_retries_and_warm_connection() {
    let upbit = FakeUpbit::start().await;
    let ext = Running::start(config(&upbit, None)).await;
    let c = client();

    // Warm-up opens the connection without touching a rate-limited route.
    ext.state.warm_up().await;
    assert_eq!(upbit.seen.hits("/"), 1);
    let ping = get_ping(&c, &ext).await;
    assert_eq!(ping, json!({"status": "ok", "db": "not_configured", "upbit": "ready"}));

    // Passthrough: status, body, Remaining-Req, content type, source.
    let r = get(&c, ext.url("/v1/ticker?markets=KRW-BTC")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, r#"[{"market":"KRW-BTC","trade_price":95000000.0}]"#);
    assert_eq!(r.header("remaining-req"), "group=ticker; min=600; sec=9");
    assert_eq!(r.header("content-type"), "application/json;charset=UTF-8");
    assert_eq!(r.header(makenaide_contract::headers::SOURCE), "upbit");
    // Identical GET within the TTL: from the cache, Upbit not called again.
    let r = get(&c, ext.url("/v1/ticker?markets=KRW-BTC")).await;
    assert_eq!(
        (r.status, r.header(makenaide_contract::headers::SOURCE)),
        (200, "cache")
    );
    assert_eq!(upbit.seen.hits("/v1/ticker?markets=KRW-BTC"), 1);

    // Upbit's 404 is passed through unchanged and not retried.
    let r = get(&c, ext.url("/v1/candles/days?market=KRW-XXX&count=3")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error": {"name": 404, "message": "Code not found"}}));
    assert_eq!(r.header(makenaide_contract::headers::SOURCE), "upbit");
    assert_eq!(upbit.seen.hits("/v1/candles/days?market=KRW-XXX&count=3"), 1);

    // 5xx is retried with backoff until it succeeds.
    let r = get(&c, ext.url("/v1/trades/ticks?market=KRW-BTC")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upbit.seen.hits("/v1/trades/ticks?market=KRW-BTC"), 3);

    // 429 pauses the group and is retried.
    let r = get(&c, ext.url("/v1/candles/weeks?market=KRW-BTC")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(upbit.seen.hits("/v1/candles/weeks?market=KRW-BTC"), 2);

    // Malformed JSON is never passed on: 502 after the retries.
    let r = get(&c, ext.url("/v1/orderbook?markets=KRW-BTC")).await;
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["error"]["code"],
        makenaide_contract::ErrorCode::UpstreamError.as_str()
    );
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));

    // Concurrent identical GETs are coalesced into one upstream request.
    let calls = (0..5).map(|_| get(&c, ext.url("/v1/market/all?is_details=true")));
    let replies = futures_util::future::join_all(calls).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(upbit.seen.hits("/v1/market/all?is_details=true"), 1);

    // Sequential traffic kept using the warm keep-alive connection.
    assert_eq!(
        upbit.seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one TCP connection to Upbit"
    );
    assert!(
        !upbit.seen.origin_header.load(std::sync::atomic::Ordering::SeqCst),
        "never an Origin header"
    );

    // The caller's deadline bounds everything: the slow route cannot answer within 100 ms.
    let deadline = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 100;
    let r = c
        .get(ext.url("/v1/market/all?is_details=false"))
        .header(makenaide_contract::headers::TOKEN, TOKEN)
        .header(makenaide_contract::headers::DEADLINE, deadline.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["code"],
        makenaide_contract::ErrorCode::UpstreamDeadline.as_str()
    );
}

#[tokio::test]
async fn database_routes_over_http() {
    let upbit = FakeUpbit::start().await;
    let db = TestDb::create().await.unwrap();
    let ext = Running::start(config(&upbit, Some(&db))).await;
    ext.state.warm_up().await;
    let c = client();
    let ping = get_ping(&c, &ext).await;
    assert_eq!(ping["db"], "ready");

    let r = post(&c, ext.url("/db/transaction"), json!({"statements": [
        {"sql": "create table ohlcv (market text, interval text, candle_date_time_utc timestamp, trade_price float8, \
                 primary key (market, interval, candle_date_time_utc))"},
        {"sql": "insert into ohlcv values ($1, $2, $3, $4), ($1, $2, $5, $6) \
                 on conflict (market, interval, candle_date_time_utc) do update set trade_price = excluded.trade_price",
         "params": ["KRW-BTC", "days", "2024-01-01T00:00:00", 1.0, "2024-01-02T00:00:00", 2.5]}
    ]}))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"][1]["row_count"], 2);

    let r = post(
        &c,
        ext.url("/db/query"),
        json!({
        "sql": "select market, trade_price, candle_date_time_utc from ohlcv where market = $1 order by 3 limit $2",
        "params": ["KRW-BTC", 5], "timeout_ms": 5000}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header(makenaide_contract::headers::SOURCE), "core");
    assert_eq!(
        r.json(),
        json!({"columns": [{"name": "market", "type": "text"}, {"name": "trade_price", "type": "float8"},
                           {"name": "candle_date_time_utc", "type": "timestamp"}],
               "rows": [["KRW-BTC", 1.0, "2024-01-01T00:00:00"], ["KRW-BTC", 2.5, "2024-01-02T00:00:00"]],
               "row_count": 2})
    );

    let r = post(&c, ext.url("/db/query"), json!({"sql": "select * from nope"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"]["code"],
        makenaide_contract::ErrorCode::SqlError.as_str()
    );
    assert_eq!(r.json()["error"]["sqlstate"], "42P01");

    let r = post(
        &c,
        ext.url("/db/transaction"),
        json!({"statements": [
        {"sql": "delete from ohlcv"}, {"sql": "select 1/0"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["statement_index"], 1);
    assert_eq!(r.json()["error"]["sqlstate"], "22012");
    let r = post(
        &c,
        ext.url("/db/query"),
        json!({"sql": "select count(*) as n from ohlcv"}),
    )
    .await;
    assert_eq!(r.json()["rows"][0][0], 2, "the delete was rolled back");
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_refuses() {
    let upbit = FakeUpbit::start().await;
    let db = TestDb::create().await.unwrap();
    let mut ext = Running::start(config(&upbit, Some(&db))).await;
    let c = client();
    let slow = tokio::spawn({
        let c = c.clone();
        let url = ext.url("/db/query");
        async move { post(&c, url, json!({"sql": "select pg_sleep(0.5) is null as slept"})).await }
    });
    // Wait until the query is really running on the server before shutting down.
    let admin = db.connect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = admin
            .query_one("select count(*) from pg_stat_activity where query like '%pg_sleep(0.5)%' and state = 'active' and pid <> pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "query never started");
        tokio::task::yield_now().await;
    }
    let drained = ext.shutdown();
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request completed: {}", r.body);
    assert_eq!(r.json()["rows"][0][0], false);
    tokio::time::timeout(Duration::from_secs(2), drained)
        .await
        .unwrap()
        .unwrap();
    ext.state.close(Duration::from_millis(500)).await;
    assert!(c.get(ext.url("/ping")).send().await.is_err(), "listener closed");
    // Terminate was sent for every pooled connection: the sessions disappear (the server needs a moment).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let n: i64 = admin
            .query_one("select count(*) from pg_stat_activity where application_name = 'makenaide-core' and datname = current_database()", &[])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool closed but {n} session(s) left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A keep-alive connection that dies under the next request (what a freeze does when Upbit or a NAT dropped the
/// idle connection meanwhile) is retried at once on a new connection, invisibly to the caller.
#[tokio::test]
async fn dead_keepalive_connection_is_retried_transparently() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                let mut served = 0;
                loop {
                    // Read one request head.
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    // The first connection answers once, then dies under the second request.
                    if n == 0 && served == 1 {
                        return;
                    }
                    let body = r#"[{"market":"KRW-BTC"}]"#;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nremaining-req: group=ticker; min=600; sec=9\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
                    stream.get_mut().write_all(body.as_bytes()).await.unwrap();
                    served += 1;
                }
            });
        }
    });
    let upbit_base = format!("http://{addr}");
    let cfg = makenaide_core::Config {
        port: 0,
        token: makenaide_core::config::Secret::new(TOKEN),
        upbit_base_url: upbit_base,
        upbit_cache_ttl: Duration::ZERO,
        ..makenaide_core::Config::default()
    };
    let ext = Running::start(cfg).await;
    let c = client();
    let r = get(&c, ext.url("/v1/ticker?markets=KRW-BTC")).await;
    assert_eq!(r.status, 200);
    let r = get(&c, ext.url("/v1/ticker?markets=KRW-BTC")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header(makenaide_contract::headers::SOURCE), "upbit");
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the retry used a new connection"
    );
}
