//! Test helpers: a tiny fake Upbit (hyper) that counts requests and TCP connections, a throwaway PostgreSQL
//! database, and a started extension server.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use makenaide_core::config::{parse_database_url, Config, Secret};
use makenaide_core::AppState;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-token-9f8e";

/// What the fake has seen.
#[derive(Default)]
pub struct Seen {
    pub hits: Mutex<HashMap<String, usize>>,
    pub connections: AtomicUsize,
    pub origin_header: AtomicBool,
}

impl Seen {
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

pub struct FakeUpbit {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

fn reply(status: u16, body: &str, remaining: Option<&str>) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json;charset=UTF-8");
    if let Some(r) = remaining {
        b = b.header("Remaining-Req", r);
    }
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

async fn upbit(seen: Arc<Seen>, req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let key = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if req.headers().contains_key("origin") {
        seen.origin_header.store(true, Ordering::SeqCst);
    }
    let n = {
        let mut hits = seen.hits.lock().unwrap();
        let n = {
            let e = hits.entry(key.clone()).or_default();
            *e += 1;
            *e
        };
        if key != path {
            *hits.entry(path.clone()).or_default() += 1;
        }
        n
    };
    let group = |g: &str| format!("group={g}; min=600; sec=9");
    Ok(match path.as_str() {
        "/" => reply(
            404,
            r#"{"error":{"name":"not_found","message":"no Route matched with those values"}}"#,
            None,
        ),
        "/v1/ticker" => reply(
            200,
            r#"[{"market":"KRW-BTC","trade_price":95000000.0}]"#,
            Some(&group("ticker")),
        ),
        "/v1/candles/days" if key.contains("KRW-XXX") => reply(
            404,
            r#"{"error":{"name":404,"message":"Code not found"}}"#,
            Some(&group("candles")),
        ),
        "/v1/candles/days" => reply(
            200,
            r#"[{"market":"KRW-BTC","candle_date_time_utc":"2024-01-01T00:00:00"}]"#,
            Some(&group("candles")),
        ),
        "/v1/market/all" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reply(
                200,
                r#"[{"market":"KRW-BTC","korean_name":"비트코인","english_name":"Bitcoin"}]"#,
                Some(&group("market")),
            )
        }
        "/v1/trades/ticks" if n <= 2 => reply(500, r#"{"error":{"name":500,"message":"internal"}}"#, None),
        "/v1/trades/ticks" => reply(
            200,
            r#"[{"market":"KRW-BTC","trade_price":1.0}]"#,
            Some(&group("trade")),
        ),
        "/v1/orderbook" => reply(
            200,
            r#"[{"market":"KRW-BTC","orderbook_units":["#,
            Some(&group("orderbook")),
        ),
        "/v1/candles/weeks" if n == 1 => reply(429, "Too many API requests.", Some("group=candles; min=600; sec=0")),
        "/v1/candles/weeks" => reply(200, "[]", Some(&group("candles"))),
        _ => reply(
            404,
            r#"{"error":{"name":"not_found","message":"no Route matched with those values"}}"#,
            None,
        ),
    })
}

impl FakeUpbit {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upbit(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The one test database type of the workspace.
pub use makenaide_tests::pg::TestDb;

pub fn config(upbit: &FakeUpbit, db: Option<&TestDb>) -> Config {
    Config {
        port: 0,
        token: Secret::new(TOKEN),
        database: db.map(|d| parse_database_url(d.url()).unwrap()),
        upbit_base_url: upbit.base(),
        ..Config::default()
    }
}

/// A running `serve()` on port 0.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn start(config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(config).unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(makenaide_core::serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Triggers the shutdown and returns the serve task (resolves when drained).
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }
}
