//! The front of the emulated Lambda APIs: a small HTTP proxy in front of `lambda-simulator` that the processes
//! see as `AWS_LAMBDA_RUNTIME_API`. It forwards everything to the simulator and adds what the simulator (0.2)
//! lacks or does differently from Lambda:
//!
//! - `POST /extension/init/error` and `/extension/exit/error` (the simulator has no route: 404) are answered
//!   202 here and recorded, so an extension's "invalid configuration" report can be asserted;
//! - `POST /runtime/init/error` is answered here (the simulator requires a JSON content type that
//!   `lambda_runtime` does not send);
//! - `GET /runtime/invocation/next` carries `Content-Type: application/json`, as on Lambda (the simulator says
//!   `text/plain`, and awslambdaric then hands the handler raw bytes instead of the decoded event);
//! - `Lambda-Extension-Name` must be one of the spawned extension files (Lambda's rule), and under Lambda Managed
//!   Instances registering `INVOKE` is refused with 403 `Extension.InvalidEventType` (the RIE's rule);
//! - SHUTDOWN events get Lambda's upper-case `shutdownReason` (`SPINDOWN`; the simulator sends `spindown`) and the
//!   harness's own `deadlineMs` (the simulator's is fixed when it is built);
//! - a `next` after SHUTDOWN is held forever and recorded: the extension is done and Lambda would now kill it;
//! - the `Lambda-Extension-Event-Identifier` header that Lambda sets on events;
//! - an optional path prefix, so `AWS_LAMBDA_RUNTIME_API` can take the `http://host:port/prefix` form that
//!   `cargo lambda watch` uses;
//! - the Telemetry API (`PUT /2022-07-01/telemetry`) is answered here, and its events emitted and delivered by
//!   `telemetry.rs` (the simulator's cannot deliver `platform.initStart` nor report timeouts);
//! - a journal entry with the instant of every lifecycle call (registration, `next`, response), which gives the
//!   readiness signals and the timings (spawn to registered, post-runtime extension overhead).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::journal::{lock, ApiEventKind, Journal};
use super::telemetry::{Status, TelemetryApi};

const EXT_BASE: &str = "/2020-01-01/extension";
const RT_BASE: &str = "/2018-06-01/runtime";
const TELEMETRY_PATH: &str = "/2022-07-01/telemetry";

/// Settings of the front.
pub(crate) struct FrontConfig {
    /// Simulator address.
    pub upstream: SocketAddr,
    /// File names of the spawned extensions (the only names that may register).
    pub extension_names: Vec<String>,
    /// Lambda Managed Instances rules (SHUTDOWN-only registration).
    pub managed_instances: bool,
    /// Path prefix that the processes use (`""` or e.g. `"/.rt"`).
    pub prefix: String,
    /// The Telemetry API of the environment.
    pub telemetry: Arc<TelemetryApi>,
}

/// Mutable state the harness shares with the front.
#[derive(Default)]
pub(crate) struct FrontShared {
    /// extension id → name
    names: Mutex<HashMap<String, String>>,
    /// extensions that already received SHUTDOWN
    shutdown_delivered: Mutex<HashSet<String>>,
    /// (reason, deadline_ms) written into SHUTDOWN events
    shutdown_override: Mutex<Option<(String, i64)>>,
    /// extensions that posted init/exit error: later calls fail, as on Lambda
    errored: Mutex<HashSet<String>>,
}

impl FrontShared {
    pub(crate) fn set_shutdown(&self, reason: &str, deadline_ms: i64) {
        *lock(&self.shutdown_override) = Some((reason.to_string(), deadline_ms));
    }
}

/// The running front.
pub(crate) struct Front {
    pub addr: SocketAddr,
    pub shared: Arc<FrontShared>,
    pub telemetry: Arc<TelemetryApi>,
    close: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Front {
    pub(crate) async fn start(cfg: FrontConfig, journal: Arc<Journal>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(FrontShared::default());
        let telemetry = cfg.telemetry.clone();
        let (close, close_rx) = watch::channel(false);
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let ctx = Arc::new(Ctx {
            cfg,
            journal,
            shared: shared.clone(),
            client,
            event_seq: AtomicU64::new(0),
        });
        let task = tokio::spawn(async move {
            let mut close_accept = close_rx.clone();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = close_accept.changed() => break,
                };
                let Ok((stream, _)) = accepted else { continue };
                let ctx = ctx.clone();
                let mut close_conn = close_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = close_conn.changed() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            shared,
            telemetry,
            close,
            task,
        })
    }

    pub(crate) fn close(&self) {
        let _ = self.close.send(true);
        self.task.abort();
        self.telemetry.close();
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.close();
    }
}

struct Ctx {
    cfg: FrontConfig,
    journal: Arc<Journal>,
    shared: Arc<FrontShared>,
    client: Client<HttpConnector, Full<Bytes>>,
    event_seq: AtomicU64,
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn lambda_error(status: StatusCode, error_type: &str, message: &str) -> Resp {
    reply(
        status,
        serde_json::json!({"errorMessage": message, "errorType": error_type}).to_string(),
    )
}

fn header(req: &http::request::Parts, name: &str) -> Option<String> {
    req.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

impl Ctx {
    async fn handle(&self, req: Request<Incoming>) -> Resp {
        let (parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return reply(StatusCode::BAD_REQUEST, "body read error"),
        };
        let full_path = parts.uri.path().to_string();
        let Some(path) = full_path.strip_prefix(self.cfg.prefix.as_str()).map(str::to_string) else {
            return reply(StatusCode::NOT_FOUND, "unknown path prefix");
        };
        let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let ext_id = header(&parts, "Lambda-Extension-Identifier");

        if let Some(id) = &ext_id {
            if lock(&self.shared.errored).contains(id) {
                return lambda_error(
                    StatusCode::FORBIDDEN,
                    "Extension.ExitError",
                    "extension already reported an error",
                );
            }
        }

        match (&parts.method, path.as_str()) {
            (&Method::POST, p) if p == format!("{EXT_BASE}/register") => {
                self.register(&parts, body, &path, &query).await
            }
            (&Method::POST, p) if p == format!("{EXT_BASE}/init/error") || p == format!("{EXT_BASE}/exit/error") => {
                let name = ext_id.as_ref().and_then(|id| lock(&self.shared.names).get(id).cloned());
                let error_type = header(&parts, "Lambda-Extension-Function-Error-Type").unwrap_or_default();
                let body = String::from_utf8_lossy(&body).into_owned();
                if let Some(id) = &ext_id {
                    lock(&self.shared.errored).insert(id.clone());
                }
                let kind = if p.ends_with("init/error") {
                    ApiEventKind::ExtensionInitError {
                        id: ext_id.clone(),
                        name,
                        error_type,
                        body,
                    }
                } else {
                    ApiEventKind::ExtensionExitError {
                        id: ext_id.clone(),
                        name,
                        error_type,
                        body,
                    }
                };
                self.journal.push(kind);
                reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
            }
            (&Method::PUT, TELEMETRY_PATH) => {
                let name = ext_id.as_ref().and_then(|id| lock(&self.shared.names).get(id).cloned());
                let (status, body) = self.cfg.telemetry.subscribe(ext_id.clone(), name, &body);
                reply(status, body.to_string())
            }
            (&Method::GET, p) if p == format!("{EXT_BASE}/event/next") => {
                self.extension_next(&parts, ext_id, &path).await
            }
            (&Method::GET, p) if p == format!("{RT_BASE}/invocation/next") => {
                self.journal.push(ApiEventKind::RuntimeNext);
                let mut resp = self.forward(&parts, body, &path, &query).await;
                if resp.status() == StatusCode::OK {
                    // The event is JSON and Lambda says so; the simulator answers `text/plain`, and runtimes such
                    // as awslambdaric decode only `application/json` (they hand anything else over as raw bytes).
                    resp.headers_mut()
                        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    if let Some(rid) = resp
                        .headers()
                        .get("Lambda-Runtime-Aws-Request-Id")
                        .and_then(|v| v.to_str().ok())
                    {
                        self.journal.push(ApiEventKind::RuntimeInvocationReceived {
                            request_id: rid.to_string(),
                        });
                        self.cfg.telemetry.start(rid);
                    }
                }
                resp
            }
            (&Method::POST, p) if p == format!("{RT_BASE}/init/error") => {
                let error_type = header(&parts, "Lambda-Runtime-Function-Error-Type")
                    .or_else(|| error_type_of(&body))
                    .unwrap_or_default();
                let body = String::from_utf8_lossy(&body).into_owned();
                self.journal.push(ApiEventKind::RuntimeInitError { error_type, body });
                reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
            }
            (&Method::POST, p) if p.starts_with(&format!("{RT_BASE}/invocation/")) => {
                let rest = &p[format!("{RT_BASE}/invocation/").len()..];
                let (rid, what) = rest.split_once('/').unwrap_or((rest, ""));
                let rid = rid.to_string();
                let error_type = if what == "error" {
                    Some(
                        header(&parts, "Lambda-Runtime-Function-Error-Type")
                            .or_else(|| error_type_of(&body))
                            .unwrap_or_else(|| "Unhandled".to_string()),
                    )
                } else {
                    None
                };
                let received = std::time::Instant::now();
                let resp = self.forward(&parts, body, &path, &query).await;
                if resp.status().is_success() {
                    if what == "response" {
                        self.journal.push(ApiEventKind::RuntimeResponseForwarded {
                            request_id: rid.clone(),
                            received,
                        });
                    }
                    match error_type {
                        Some(error_type) => {
                            self.cfg.telemetry.runtime_done(&rid, Status::Error, Some(&error_type));
                            self.journal.push(ApiEventKind::RuntimeError {
                                request_id: rid,
                                error_type,
                            })
                        }
                        None if what == "response" => {
                            self.cfg.telemetry.runtime_done(&rid, Status::Success, None);
                            self.journal.push(ApiEventKind::RuntimeResponse { request_id: rid })
                        }
                        None => {}
                    }
                }
                resp
            }
            _ => self.forward(&parts, body, &path, &query).await,
        }
    }

    async fn register(&self, parts: &http::request::Parts, body: Bytes, path: &str, query: &str) -> Resp {
        let name = header(parts, "Lambda-Extension-Name").unwrap_or_default();
        let events: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("events").cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        if !self.cfg.extension_names.contains(&name) {
            let reason = format!(
                "Lambda-Extension-Name `{name}` is not the file name of an extension (expected one of {:?})",
                self.cfg.extension_names
            );
            self.journal.push(ApiEventKind::ExtensionRegisterRejected {
                name,
                status: 403,
                reason: reason.clone(),
            });
            return lambda_error(StatusCode::FORBIDDEN, "Extension.InvalidExtensionName", &reason);
        }
        if self.cfg.managed_instances && events.iter().any(|e| e.eq_ignore_ascii_case("INVOKE")) {
            let reason = "INVOKE is not a valid event on Lambda Managed Instances (register SHUTDOWN only)".to_string();
            self.journal.push(ApiEventKind::ExtensionRegisterRejected {
                name,
                status: 403,
                reason: reason.clone(),
            });
            return lambda_error(StatusCode::FORBIDDEN, "Extension.InvalidEventType", &reason);
        }
        let resp = self.forward(parts, body, path, query).await;
        if resp.status() == StatusCode::OK {
            if let Some(id) = resp
                .headers()
                .get("Lambda-Extension-Identifier")
                .and_then(|v| v.to_str().ok())
            {
                lock(&self.shared.names).insert(id.to_string(), name.clone());
                self.journal.push(ApiEventKind::ExtensionRegistered {
                    id: id.to_string(),
                    name,
                    events,
                });
            }
        } else {
            self.journal.push(ApiEventKind::ExtensionRegisterRejected {
                name,
                status: resp.status().as_u16(),
                reason: "refused by the simulator (registration closed?)".into(),
            });
        }
        resp
    }

    async fn extension_next(&self, parts: &http::request::Parts, ext_id: Option<String>, path: &str) -> Resp {
        let id = ext_id.unwrap_or_default();
        let name = lock(&self.shared.names).get(&id).cloned().unwrap_or_default();
        if lock(&self.shared.shutdown_delivered).contains(&id) {
            // Done with SHUTDOWN: Lambda never answers this; it kills the process once all are done.
            self.journal.push(ApiEventKind::ExtensionNextAfterShutdown { id, name });
            std::future::pending::<()>().await;
            unreachable!();
        }
        self.journal.push(ApiEventKind::ExtensionNext {
            id: id.clone(),
            name: name.clone(),
        });
        let resp = self.forward(parts, Bytes::new(), path, "").await;
        if resp.status() != StatusCode::OK {
            return resp;
        }
        let (mut rparts, body) = resp.into_parts();
        let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let Ok(mut event) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            return Response::from_parts(rparts, Full::new(bytes));
        };
        let event_type = event
            .get("eventType")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let request_id = event.get("requestId").and_then(|v| v.as_str()).map(str::to_string);
        if event_type == "SHUTDOWN" {
            lock(&self.shared.shutdown_delivered).insert(id.clone());
            let over = lock(&self.shared.shutdown_override).clone();
            if let Some(obj) = event.as_object_mut() {
                let reason = obj
                    .get("shutdownReason")
                    .and_then(|v| v.as_str())
                    .unwrap_or("spindown")
                    .to_uppercase();
                obj.insert("shutdownReason".into(), reason.into());
                if let Some((reason, deadline_ms)) = over {
                    obj.insert("shutdownReason".into(), reason.into());
                    obj.insert("deadlineMs".into(), deadline_ms.into());
                }
            }
        }
        self.journal.push(ApiEventKind::ExtensionEvent {
            id,
            name,
            event_type,
            request_id,
        });
        let seq = self.event_seq.fetch_add(1, Ordering::SeqCst);
        if let Ok(v) = HeaderValue::from_str(&format!("00000000-0000-4000-8000-{seq:012x}")) {
            rparts.headers.insert("Lambda-Extension-Event-Identifier", v);
        }
        let body = Bytes::from(event.to_string());
        rparts
            .headers
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Response::from_parts(rparts, Full::new(body))
    }

    async fn forward(&self, parts: &http::request::Parts, body: Bytes, path: &str, query: &str) -> Resp {
        let uri = format!("http://{}{}{}", self.cfg.upstream, path, query);
        let mut builder = Request::builder().method(parts.method.clone()).uri(uri);
        for (k, v) in &parts.headers {
            if k != http::header::HOST && k != http::header::CONTENT_TYPE {
                builder = builder.header(k, v);
            }
        }
        // Lambda does not insist on a JSON content type; the simulator's JSON extractors do (415 otherwise).
        if !body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let Ok(req) = builder.body(Full::new(body)) else {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "bad forwarded request");
        };
        match self.client.request(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                match body.collect().await {
                    Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
                    Err(_) => reply(StatusCode::BAD_GATEWAY, "simulator body error"),
                }
            }
            Err(e) => reply(StatusCode::BAD_GATEWAY, format!("simulator unreachable: {e}")),
        }
    }
}

fn error_type_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("errorType")?
        .as_str()
        .map(str::to_string)
}
