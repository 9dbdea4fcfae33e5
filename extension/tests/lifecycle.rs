//! The Lambda lifecycle of `run()` against a minimal fake Extensions API served under a path prefix, the way
//! `cargo lambda watch` passes `AWS_LAMBDA_RUNTIME_API=http://127.0.0.1:9000/.rt`. (The full harness with real
//! processes and freezing lives in the `tests/` crate.) One test function: the env var is process-wide.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const PREFIX: &str = "/.rt";

#[derive(Default)]
struct Recorded {
    registrations: Vec<(String, Value)>,
    next_calls: usize,
    init_errors: Vec<(String, Value)>,
}

struct FakeLambda {
    base: String,
    recorded: Arc<Mutex<Recorded>>,
    events: mpsc::UnboundedSender<Value>,
    next_called: tokio::sync::watch::Receiver<usize>,
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    recorded: Arc<Mutex<Recorded>>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Value>>>,
    next_tx: Arc<tokio::sync::watch::Sender<usize>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let name = header("lambda-extension-name");
    let error_type = header("lambda-extension-function-error-type");
    let ext_id = header("lambda-extension-identifier");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ok = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("Lambda-Extension-Identifier", "ext-1")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    let Some(api) = path.strip_prefix(PREFIX) else {
        return Ok(ok(404, json!({"error": "no prefix"})));
    };
    Ok(match api {
        "/2020-01-01/extension/register" => {
            recorded.lock().unwrap().registrations.push((name, body));
            ok(
                200,
                json!({"functionName": "fn", "functionVersion": "$LATEST", "handler": "bootstrap"}),
            )
        }
        "/2020-01-01/extension/event/next" => {
            assert_eq!(ext_id, "ext-1");
            let n = {
                let mut r = recorded.lock().unwrap();
                r.next_calls += 1;
                r.next_calls
            };
            next_tx.send_replace(n);
            let event = events.lock().await.recv().await.unwrap_or_else(|| json!({}));
            ok(200, event)
        }
        "/2020-01-01/extension/init/error" => {
            recorded.lock().unwrap().init_errors.push((error_type, body));
            ok(202, json!({"status": "OK"}))
        }
        _ => ok(404, json!({"error": api})),
    })
}

impl FakeLambda {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}{PREFIX}", listener.local_addr().unwrap());
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let (events, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let (next_tx, next_called) = tokio::sync::watch::channel(0);
        let next_tx = Arc::new(next_tx);
        let rec = recorded.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (rec, rx, next_tx) = (rec.clone(), rx.clone(), next_tx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, rec.clone(), rx.clone(), next_tx.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            base,
            recorded,
            events,
            next_called,
        }
    }

    async fn wait_next_calls(&mut self, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), self.next_called.wait_for(|c| *c >= n))
            .await
            .unwrap()
            .unwrap();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_register_invoke_shutdown_and_init_error() {
    let mut lambda = FakeLambda::start().await;
    // Edition 2021: set_var is safe; this test binary has a single test, so no other thread reads the env.
    std::env::set_var("AWS_LAMBDA_RUNTIME_API", &lambda.base);
    let upbit = common::FakeUpbit::start().await;
    let expected_name = std::env::args()
        .next()
        .map(|a| {
            std::path::Path::new(&a)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .unwrap();

    // --- on-demand: INVOKE then SHUTDOWN ---
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = common::config(&upbit, None);
    let run = tokio::spawn(makenaide_core::run(config.clone(), listener, std::time::Instant::now()));
    lambda.wait_next_calls(1).await;
    {
        let r = lambda.recorded.lock().unwrap();
        assert_eq!(r.registrations.len(), 1);
        assert_eq!(
            r.registrations[0].0, expected_name,
            "Lambda-Extension-Name = executable file name"
        );
        assert_eq!(r.registrations[0].1, json!({"events": ["INVOKE", "SHUTDOWN"]}));
    }
    // The server answers while the extension waits in `next`.
    let ping: Value = reqwest::get(format!("http://{addr}/ping"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ping["status"], "ok");
    // INVOKE is acknowledged at once: the next `next` follows immediately.
    lambda
        .events
        .send(
            json!({"eventType": "INVOKE", "deadlineMs": now_ms() + 3000, "requestId": "r1",
        "invokedFunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:fn"}),
        )
        .unwrap();
    lambda.wait_next_calls(2).await;
    let started = std::time::Instant::now();
    lambda
        .events
        .send(json!({"eventType": "SHUTDOWN", "shutdownReason": "SPINDOWN", "deadlineMs": now_ms() + 2000}))
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(
        lambda.recorded.lock().unwrap().next_calls,
        2,
        "no `next` after SHUTDOWN"
    );
    assert!(
        reqwest::get(format!("http://{addr}/ping")).await.is_err(),
        "listener closed"
    );

    // --- Lambda Managed Instances: SHUTDOWN only ---
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let run = tokio::spawn(makenaide_core::run(
        makenaide_core::Config {
            managed_instances: true,
            ..config
        },
        listener,
        std::time::Instant::now(),
    ));
    lambda.wait_next_calls(3).await;
    assert_eq!(
        lambda.recorded.lock().unwrap().registrations[1].1,
        json!({"events": ["SHUTDOWN"]})
    );
    lambda
        .events
        .send(json!({"eventType": "SHUTDOWN", "shutdownReason": "SPINDOWN", "deadlineMs": now_ms() + 2000}))
        .unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .unwrap()
        .unwrap()
        .is_ok());

    // --- invalid configuration: reported through /extension/init/error ---
    makenaide_core::lambda::fail_init(
        "Extension.ConfigInvalid",
        "invalid configuration: MAKENAIDE_CORE_PORT: \"abc\" is not a port number",
    )
    .await;
    let r = lambda.recorded.lock().unwrap();
    assert_eq!(r.init_errors.len(), 1);
    assert_eq!(r.init_errors[0].0, "Extension.ConfigInvalid");
    assert_eq!(r.init_errors[0].1["errorType"], "Extension.ConfigInvalid");
    assert!(r.init_errors[0].1["errorMessage"]
        .as_str()
        .unwrap()
        .contains("MAKENAIDE_CORE_PORT"));
}
