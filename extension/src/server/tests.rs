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

#[tokio::test]
async fn connection_cap_answers_429() {
    let s = Server::start(Config {
        max_connections: 2,
        ..config()
    })
    .await;
    // Two idle connections hold the cap (a served request proves each one is accepted and counted).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = TcpStream::connect(s.addr).await.unwrap();
        conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(conn);
    }
    let (status, body, _) = call(reqwest::Client::new().get(s.url("/ping"))).await;
    assert_eq!(
        (status, code(&body)),
        (429, makenaide_contract::ErrorCode::TooManyConnections.as_str())
    );
    drop(held);
    // Freed slots are reusable (the server notices the closes asynchronously: retry until it does).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = call(reqwest::Client::new().get(s.url("/ping"))).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::task::yield_now().await;
    }
    s.stop().await;
}
