//! Server tests over a real socket (port 0): auth, refusal rules, routing, body limit, connection cap.

#![allow(clippy::unwrap_used)]

use crate::config::{Config, Secret};
use crate::state::AppState;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(config).unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(super::serve(state, listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

fn config() -> Config {
    // Upbit at a closed port: these tests never reach it.
    Config {
        token: Secret::new("s3cret"),
        upbit_base_url: "http://127.0.0.1:9".into(),
        ..Config::default()
    }
}

async fn call(req: reqwest::RequestBuilder) -> (u16, Value, reqwest::header::HeaderMap) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, body, headers)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn auth_and_refusals() {
    let s = Server::start(config()).await;
    let c = reqwest::Client::new();

    let (status, body, headers) = call(c.get(s.url("/ping"))).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"status": "ok", "db": "not_configured", "upbit": "cold"}));
    assert_eq!(headers[makenaide_contract::headers::SOURCE], "core");

    let (status, body, _) = call(c.post(s.url("/db/query")).body("{}")).await;
    assert_eq!(
        (status, code(&body)),
        (401, makenaide_contract::ErrorCode::MissingToken.as_str())
    );
    let (status, body, _) = call(
        c.post(s.url("/db/query"))
            .header(makenaide_contract::headers::TOKEN, "wrong")
            .body("{}"),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (403, makenaide_contract::ErrorCode::InvalidToken.as_str())
    );
    let (status, body, _) = call(c.get(s.url("/v1/ticker?markets=KRW-BTC"))).await;
    assert_eq!(
        (status, code(&body)),
        (401, makenaide_contract::ErrorCode::MissingToken.as_str())
    );

    // X-Forwarded-For is refused everywhere, even with a good token and on /ping.
    let (status, body, _) = call(
        c.get(s.url("/ping"))
            .header(makenaide_contract::headers::FORWARDED_FOR, "1.2.3.4"),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, makenaide_contract::ErrorCode::ForwardedRequest.as_str())
    );
    let (status, body, _) = call(
        c.post(s.url("/db/query"))
            .header(makenaide_contract::headers::TOKEN, "s3cret")
            .header(makenaide_contract::headers::FORWARDED_FOR, "1.2.3.4")
            .body("{}"),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, makenaide_contract::ErrorCode::ForwardedRequest.as_str())
    );
    s.stop().await;
}

#[tokio::test]
async fn routing_methods_and_bodies() {
    let s = Server::start(Config {
        max_body_bytes: 1024,
        ..config()
    })
    .await;
    let c = reqwest::Client::new();
    let authed = |r: reqwest::RequestBuilder| r.header(makenaide_contract::headers::TOKEN, "s3cret");

    for path in ["/nope", "/v1/accounts", "/v1/orders", "/v1/candles/minutes/x", "/db"] {
        let (status, body, _) = call(authed(c.get(s.url(path)))).await;
        assert_eq!(
            (status, code(&body)),
            (404, makenaide_contract::ErrorCode::NotFound.as_str()),
            "{path}"
        );
    }
    let (status, body, headers) = call(authed(c.get(s.url("/db/query")))).await;
    assert_eq!(
        (status, code(&body)),
        (405, makenaide_contract::ErrorCode::MethodNotAllowed.as_str())
    );
    assert_eq!(headers["allow"], "POST");
    let (status, body, headers) = call(authed(c.post(s.url("/v1/ticker")))).await;
    assert_eq!(
        (status, code(&body)),
        (405, makenaide_contract::ErrorCode::MethodNotAllowed.as_str())
    );
    assert_eq!(headers["allow"], "GET");
    let (status, _, _) = call(c.post(s.url("/ping"))).await;
    assert_eq!(status, 405);

    let (status, body, _) = call(authed(c.post(s.url("/db/query"))).body("{oops")).await;
    assert_eq!(
        (status, code(&body)),
        (400, makenaide_contract::ErrorCode::InvalidJson.as_str())
    );
    let (status, body, _) = call(authed(c.post(s.url("/db/query"))).body(r#"{"sql": 1}"#)).await;
    assert_eq!(
        (status, code(&body)),
        (400, makenaide_contract::ErrorCode::InvalidRequest.as_str())
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("sql"));
    let (status, body, _) = call(authed(c.post(s.url("/db/query"))).body(r#"{"sql": "select 1"}"#)).await;
    assert_eq!(
        (status, code(&body)),
        (503, makenaide_contract::ErrorCode::DbNotConfigured.as_str())
    );

    // Over the limit, declared by Content-Length or streamed (chunked).
    let big = "x".repeat(2048);
    let (status, body, _) = call(authed(c.post(s.url("/db/query"))).body(big.clone())).await;
    assert_eq!(
        (status, code(&body)),
        (413, makenaide_contract::ErrorCode::BodyTooLarge.as_str())
    );
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    let head =
        "POST /db/transaction HTTP/1.1\r\nHost: x\r\nX-Makenaide-Token: s3cret\r\nTransfer-Encoding: chunked\r\n\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        reply.starts_with("HTTP/1.1 413") && reply.contains(makenaide_contract::ErrorCode::BodyTooLarge.as_str()),
        "{reply}"
    );

    let (status, body, _) =
        call(authed(c.get(s.url("/v1/ticker"))).header(makenaide_contract::headers::DEADLINE, "soon")).await;
    assert_eq!(
        (status, code(&body)),
        (400, makenaide_contract::ErrorCode::InvalidRequest.as_str())
    );
    s.stop().await;
}

/// Reads until the peer closes (bounded), returning everything.
async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection whose request is being served: a `POST` whose body is announced and never sent, once hyper's
/// `100 Continue` shows the handler is reading it.
async fn request_in_progress(addr: SocketAddr) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        b"POST /db/query HTTP/1.1\r\nHost: x\r\nX-Makenaide-Token: s3cret\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        &buf[..n]
    );
    conn
}

async fn served_ping(conn: &mut TcpStream) -> bool {
    if conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(conn.read(&mut buf).await, Ok(n) if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"))
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_makes_room() {
    let s = Server::start(Config {
        max_connections: 2,
        ..config()
    })
    .await;
    let mut first = TcpStream::connect(s.addr).await.unwrap();
    assert!(served_ping(&mut first).await);
    let mut second = TcpStream::connect(s.addr).await.unwrap();
    assert!(served_ping(&mut second).await);
    // A third connection is served; the longest-idle one (the first) is closed for it.
    let mut third = TcpStream::connect(s.addr).await.unwrap();
    assert!(served_ping(&mut third).await);
    assert_eq!(
        read_to_close(&mut first).await,
        "",
        "the first connection is closed without a reply"
    );
    assert!(served_ping(&mut second).await);
    s.stop().await;
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_one_gets_429_at_once() {
    let s = Server::start(Config {
        max_connections: 2,
        ..config()
    })
    .await;
    // Two requests in progress: their bodies are announced and never sent. hyper's `100 Continue` says the
    // service is reading the body, i.e. the request is being served.
    let mut busy = Vec::new();
    for _ in 0..2 {
        busy.push(request_in_progress(s.addr).await);
    }
    // More than any fixed allowance of overflow answers: each gets its 429 without sending a byte.
    for _ in 0..100 {
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        let reply = read_to_close(&mut conn).await;
        assert!(reply.starts_with("HTTP/1.1 429 "), "{reply}");
        let body: Value = serde_json::from_str(reply.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(code(&body), makenaide_contract::ErrorCode::TooManyConnections.as_str());
    }
    drop(busy);
    s.stop().await;
}

#[tokio::test]
async fn hyper_level_failures_get_the_json_error_body() {
    let s = Server::start(config()).await;
    let big_header = format!("X-Big: {}\r\n", "a".repeat(100 * 1024));
    let long_uri = format!("/v1/ticker?markets={}", "A".repeat(10 * 1024));
    for (request, status, code_want) in [
        (
            "GARBAGE\r\n\r\n".to_string(),
            400,
            makenaide_contract::ErrorCode::InvalidRequest,
        ),
        (
            "GET /ping HTTP/1.1\r\nBad Header\r\n\r\n".to_string(),
            400,
            makenaide_contract::ErrorCode::InvalidRequest,
        ),
        (
            format!("GET /ping HTTP/1.1\r\nHost: x\r\n{big_header}\r\n"),
            431,
            makenaide_contract::ErrorCode::HeadersTooLarge,
        ),
        (
            format!("GET {long_uri} HTTP/1.1\r\nHost: x\r\n\r\n"),
            414,
            makenaide_contract::ErrorCode::UriTooLong,
        ),
        (
            format!("GET /ping?{} HTTP/1.1\r\nHost: x\r\n\r\n", "q".repeat(70 * 1024)),
            431,
            makenaide_contract::ErrorCode::HeadersTooLarge,
        ),
        (
            "GET /ping HTTP/1.1\r\nHost: x\r\nForwarded: for=1.2.3.4\r\n\r\n".to_string(),
            400,
            makenaide_contract::ErrorCode::ForwardedRequest,
        ),
    ] {
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        // The 414 and the Forwarded refusal come from the router on a kept-alive connection: ask it to close.
        let _ = conn.shutdown().await;
        let reply = read_to_close(&mut conn).await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}: {head}",
            &request[..20]
        );
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert_eq!(code(&body), code_want.as_str(), "{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
    }
    // Our own replies are never mistaken for hyper's: after a served request, a HEAD (a head with no body),
    // pipelined requests, and a bad request pipelined behind a good one.
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    assert!(served_ping(&mut conn).await);
    conn.write_all(b"HEAD /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /ping HTTP/1.1\r\nHost: x\r\n\r\nBAD\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut conn).await;
    let statuses: Vec<&str> = reply
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &reply[i + 9..i + 12])
        .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(statuses, ["200", "200", "400"], "{reply}");
    assert!(reply.contains(r#""status":"ok""#), "{reply}");
    assert!(reply.ends_with(r#""}}"#), "the 400 carries the JSON body too: {reply}");
    s.stop().await;
}

#[tokio::test]
async fn stalled_heads_and_idle_connections_are_closed_after_their_timeouts() {
    let s = Server::start(Config {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..config()
    })
    .await;
    let mut slow = TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /pi").await.unwrap();
    let mut idle = TcpStream::connect(s.addr).await.unwrap();
    assert!(served_ping(&mut idle).await);
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // Each is closed by the server (the reads end) without a reply, well within the 5 s bound of read_to_close.
    let started = tokio::time::Instant::now();
    assert_eq!(read_to_close(&mut slow).await, "");
    assert_eq!(read_to_close(&mut idle).await, "");
    assert_eq!(read_to_close(&mut silent).await, "");
    assert!(started.elapsed() < Duration::from_secs(5));
    s.stop().await;
}
