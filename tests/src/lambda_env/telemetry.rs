//! The emulated Telemetry API (`PUT /2022-07-01/telemetry`), served by the front instead of lambda-simulator.
//!
//! lambda-simulator 0.2 has a Telemetry API, but it cannot stand in for Lambda's here: its `platform.initStart`
//! is broadcast when the simulator is built, before anyone can subscribe, so no subscriber ever gets it; its
//! reports carry no `initDurationMs` and a made-up `maxMemoryUsedMB` (half the memory size); a timed-out
//! invocation gets no report at all (the simulator enforces no timeout); and it accepts any schema, also under
//! Managed Instances. So the front answers the subscription itself and this module emits the events, with times
//! and durations from the harness's own clock:
//!
//! - `platform.initStart` when the environment starts (before any process is spawned) and `platform.initRuntimeDone`
//!   + `platform.initReport` (`durationMs` = the harness's Init duration) when Init ends;
//! - per invocation (on demand only: Lambda Managed Instances has no per-invocation events): `platform.start` when
//!   the runtime receives it, `platform.runtimeDone` when it answers, and `platform.report` once the invocation is
//!   over (runtime answered and every INVOKE-subscribed extension called `next` again), with `durationMs` = invoke
//!   to that moment, `billedDurationMs` = its ceiling, `initDurationMs` on the first invocation, and
//!   `maxMemoryUsedMB` = the peak RSS (`VmHWM`) of the environment's processes, summed; a timeout gets
//!   `status: "timeout"` and the function timeout as its duration;
//! - events that happened before a subscription (`platform.initStart`) are delivered to it first, as Lambda does;
//! - delivery as Lambda does it: HTTP POSTs of a JSON array to the subscribed URI, batched by the subscription's
//!   `timeoutMs` / `maxItems`, one batch at a time per subscriber (so a frozen listener holds the next batch until
//!   the thaw), retried with backoff while the listener is not there.
//!
//! The subscription is checked as Lambda would: a registered extension id, schema `2022-07-01`, `2022-12-13` or
//! `2025-01-29` (only `2025-01-29` under Managed Instances), protocol `HTTP`, a destination inside the sandbox
//! (`sandbox.localdomain`, `sandbox`, `127.0.0.1` or `localhost`: here the sandbox is this machine's loopback, so
//! `sandbox.localdomain` is delivered to 127.0.0.1), and the documented buffering ranges. With
//! [`super::EnvConfig::without_telemetry_api`] it answers like the Runtime Interface Emulator instead (202
//! `Telemetry.NotSupported`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::journal::{lock, ApiEventKind, Journal};

/// Port of the extension's telemetry listener (the extension's contract). The harness sets `0` (any free port,
/// from the kernel's ephemeral range), since every environment shares this machine's loopback; a test may set its
/// own.
pub const TELEMETRY_PORT_ENV: &str = "MAKENAIDE_TELEMETRY_PORT";
/// Schemas Lambda accepts.
pub const SCHEMAS: [&str; 3] = ["2022-07-01", "2022-12-13", "2025-01-29"];
/// The only schema accepted under Lambda Managed Instances.
pub const SCHEMA_MANAGED_INSTANCES: &str = "2025-01-29";

/// How the Telemetry API behaves.
#[derive(Debug, Clone)]
pub(crate) struct TelemetrySettings {
    pub enabled: bool,
    pub managed_instances: bool,
    pub function_name: String,
    pub memory_mb: u32,
}

/// A subscription as it was accepted.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub extension_id: String,
    pub extension_name: String,
    pub schema_version: String,
    pub types: Vec<String>,
    /// The URI as the extension sent it.
    pub destination: String,
    /// Where the harness delivers (the URI with the sandbox name mapped to 127.0.0.1).
    pub delivered_to: String,
}

/// How an invocation ended, for its `platform.runtimeDone` / `platform.report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Success,
    Error,
    Timeout,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Error => "error",
            Self::Timeout => "timeout",
        }
    }
}

struct Subscriber {
    tx: mpsc::UnboundedSender<Value>,
    platform: bool,
}

#[derive(Default)]
struct Inner {
    /// Every event emitted, in order.
    history: Vec<Value>,
    subscriptions: Vec<Subscription>,
    subscribers: Vec<Subscriber>,
    tasks: Vec<JoinHandle<()>>,
    init_duration_ms: Option<f64>,
    reports: usize,
    /// platform.start instants by request id.
    starts: HashMap<String, Instant>,
    /// Request ids that already got their runtimeDone (a timeout's comes from the harness).
    runtime_done: Vec<String>,
}

/// The Telemetry API of one environment.
pub struct TelemetryApi {
    settings: TelemetrySettings,
    journal: Arc<Journal>,
    inner: Mutex<Inner>,
    client: Client<HttpConnector, Full<Bytes>>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Milliseconds with two decimals, as Lambda writes them.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

fn init_type(managed: bool) -> &'static str {
    if managed {
        "lambda-managed-instances"
    } else {
        "on-demand"
    }
}

/// Peak resident set (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl TelemetryApi {
    pub(crate) fn new(settings: TelemetrySettings, journal: Arc<Journal>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            journal,
            inner: Mutex::new(Inner::default()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Every platform event emitted so far (delivered or not), in order.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.inner).history.clone()
    }

    /// The `platform.report` record of an invocation, once emitted.
    pub fn report_of(&self, request_id: &str) -> Option<Value> {
        lock(&self.inner).history.iter().find_map(|e| {
            (e["type"] == "platform.report" && e["record"]["requestId"] == request_id).then(|| e["record"].clone())
        })
    }

    /// The subscriptions accepted so far.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        lock(&self.inner).subscriptions.clone()
    }

    fn emit(&self, kind: &str, record: Value) {
        let event = json!({"time": now_rfc3339(), "type": kind, "record": record});
        let mut inner = lock(&self.inner);
        inner.history.push(event.clone());
        inner
            .subscribers
            .retain(|s| !s.platform || s.tx.send(event.clone()).is_ok());
    }

    pub(crate) fn init_start(&self) {
        self.emit(
            "platform.initStart",
            json!({
                "initializationType": init_type(self.settings.managed_instances),
                "phase": "init",
                "functionName": self.settings.function_name,
                "functionVersion": "$LATEST",
                "instanceMaxMemory": self.settings.memory_mb,
            }),
        );
    }

    pub(crate) fn init_done(&self, duration: Duration) {
        let init_type = init_type(self.settings.managed_instances);
        lock(&self.inner).init_duration_ms = Some(ms(duration));
        self.emit(
            "platform.initRuntimeDone",
            json!({"initializationType": init_type, "phase": "init", "status": "success"}),
        );
        self.emit(
            "platform.initReport",
            json!({"initializationType": init_type, "phase": "init", "status": "success",
                   "metrics": {"durationMs": ms(duration)}}),
        );
    }

    /// The runtime received the invocation.
    pub(crate) fn start(&self, request_id: &str) {
        if self.settings.managed_instances {
            return;
        }
        lock(&self.inner).starts.insert(request_id.to_string(), Instant::now());
        self.emit("platform.start", json!({"requestId": request_id, "version": "$LATEST"}));
    }

    /// The runtime answered (or, for a timeout, the harness gave up on it).
    pub(crate) fn runtime_done(&self, request_id: &str, status: Status, error_type: Option<&str>) {
        if self.settings.managed_instances {
            return;
        }
        let started = {
            let mut inner = lock(&self.inner);
            if inner.runtime_done.iter().any(|r| r == request_id) {
                return;
            }
            inner.runtime_done.push(request_id.to_string());
            inner.starts.get(request_id).copied()
        };
        let mut record = json!({
            "requestId": request_id,
            "status": status.as_str(),
            "metrics": {"durationMs": started.map_or(0.0, |t| ms(t.elapsed()))},
        });
        if let Some(t) = error_type {
            record["errorType"] = json!(t);
        }
        self.emit("platform.runtimeDone", record);
    }

    /// The invocation is over: `platform.report` (on demand only), with `duration` from invoke to the end of the
    /// invoke phase and the peak memory of `pids`.
    pub(crate) fn emit_report(
        &self,
        request_id: &str,
        status: Status,
        error_type: Option<&str>,
        duration: Duration,
        pids: &[u32],
    ) {
        if self.settings.managed_instances {
            return;
        }
        if status == Status::Timeout {
            self.runtime_done(request_id, status, error_type);
        }
        let duration_ms = ms(duration);
        let peak_kib: u64 = pids.iter().filter_map(|p| peak_rss_kib(*p)).sum();
        let mut metrics = json!({
            "durationMs": duration_ms,
            "billedDurationMs": duration_ms.ceil() as u64,
            "memorySizeMB": self.settings.memory_mb,
            "maxMemoryUsedMB": peak_kib.div_ceil(1024),
        });
        {
            let mut inner = lock(&self.inner);
            if inner.reports == 0 {
                if let Some(init) = inner.init_duration_ms {
                    metrics["initDurationMs"] = json!(init);
                }
            }
            inner.reports += 1;
        }
        let mut record = json!({"requestId": request_id, "status": status.as_str(), "metrics": metrics});
        if let Some(t) = error_type {
            record["errorType"] = json!(t);
        }
        self.emit("platform.report", record);
    }

    /// `PUT /2022-07-01/telemetry` from extension `id` (`name` when registered).
    pub(crate) fn subscribe(&self, id: Option<String>, name: Option<String>, body: &[u8]) -> (StatusCode, Value) {
        if !self.settings.enabled {
            // What the Runtime Interface Emulator answers.
            return (
                StatusCode::ACCEPTED,
                json!({"errorMessage": "Telemetry API is not supported", "errorType": "Telemetry.NotSupported"}),
            );
        }
        let refuse = |status: StatusCode, error_type: &str, message: String| {
            self.journal.push(ApiEventKind::TelemetrySubscribeRejected {
                id: id.clone(),
                status: status.as_u16(),
                reason: message.clone(),
            });
            (status, json!({"errorMessage": message, "errorType": error_type}))
        };
        let (Some(id), Some(name)) = (id.clone(), name) else {
            return refuse(
                StatusCode::FORBIDDEN,
                "Extension.UnknownExtensionIdentifier",
                "Lambda-Extension-Identifier is missing or not a registered extension".into(),
            );
        };
        let Ok(sub) = serde_json::from_slice::<Value>(body) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "the body is not JSON".into(),
            );
        };
        let schema = sub["schemaVersion"].as_str().unwrap_or_default().to_string();
        if !SCHEMAS.contains(&schema.as_str()) {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                format!("schemaVersion {schema:?} is not one of {SCHEMAS:?}"),
            );
        }
        if self.settings.managed_instances && schema != SCHEMA_MANAGED_INSTANCES {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                format!("Lambda Managed Instances accepts schemaVersion {SCHEMA_MANAGED_INSTANCES} only, not {schema}"),
            );
        }
        let types: Vec<String> = sub["types"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if types.is_empty()
            || types
                .iter()
                .any(|t| !["platform", "function", "extension"].contains(&t.as_str()))
        {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                format!("types {types:?} must be a non-empty subset of platform, function, extension"),
            );
        }
        let b = &sub["buffering"];
        let range = |key: &str, lo: u64, hi: u64, default: u64| match b.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or(format!("buffering.{key} must be {lo}..={hi}")),
        };
        let buffering = (|| -> Result<(u64, u64), String> {
            range("maxBytes", 262_144, 1_048_576, 262_144)?;
            Ok((
                range("timeoutMs", 25, 30_000, 1000)?,
                range("maxItems", 1000, 10_000, 10_000)?,
            ))
        })();
        let (timeout_ms, max_items) = match buffering {
            Ok(b) => b,
            Err(m) => return refuse(StatusCode::BAD_REQUEST, "ValidationError", m),
        };
        if sub["destination"]["protocol"] != "HTTP" {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                "destination.protocol must be HTTP (the harness does not do TCP)".into(),
            );
        }
        let uri = sub["destination"]["URI"].as_str().unwrap_or_default().to_string();
        let Some(delivered_to) = sandbox_uri(&uri) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "ValidationError",
                format!(
                    "destination.URI {uri:?} is not an http:// address inside the sandbox (sandbox.localdomain:PORT)"
                ),
            );
        };
        let platform = types.iter().any(|t| t == "platform");
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = lock(&self.inner);
        if platform {
            // What happened before the subscription (platform.initStart) comes first.
            for e in &inner.history {
                let _ = tx.send(e.clone());
            }
        }
        let task = tokio::spawn(deliver(
            self.client.clone(),
            delivered_to.clone(),
            rx,
            Duration::from_millis(timeout_ms),
            max_items as usize,
        ));
        inner.tasks.push(task);
        inner.subscribers.push(Subscriber { tx, platform });
        let subscription = Subscription {
            extension_id: id.clone(),
            extension_name: name.clone(),
            schema_version: schema.clone(),
            types: types.clone(),
            destination: uri.clone(),
            delivered_to,
        };
        inner.subscriptions.push(subscription);
        drop(inner);
        self.journal.push(ApiEventKind::TelemetrySubscribed {
            id,
            name,
            schema_version: schema,
            types,
            destination: uri,
        });
        (StatusCode::OK, json!("OK"))
    }

    /// Stops every delivery.
    pub(crate) fn close(&self) {
        let mut inner = lock(&self.inner);
        inner.subscribers.clear();
        for t in inner.tasks.drain(..) {
            t.abort();
        }
    }
}

/// `http://<sandbox name or loopback>:PORT[/path]` → the URI the harness delivers to.
fn sandbox_uri(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("http://")?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host {
        "sandbox.localdomain" | "sandbox" | "localhost" | "127.0.0.1" => "127.0.0.1",
        _ => return None,
    };
    Some(format!("http://{host}:{port}/{path}"))
}

/// One subscriber's deliveries: batches of up to `max_items` events collected for `timeout` after the first,
/// POSTed one at a time; a refused connection is retried with backoff (Lambda retries too), then dropped.
async fn deliver(
    client: Client<HttpConnector, Full<Bytes>>,
    uri: String,
    mut rx: mpsc::UnboundedReceiver<Value>,
    timeout: Duration,
    max_items: usize,
) {
    const ATTEMPTS: u32 = 8;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + timeout;
        while batch.len() < max_items {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        let body = Bytes::from(Value::Array(batch).to_string());
        let mut pause = Duration::from_millis(10);
        for _ in 0..ATTEMPTS {
            let req = Request::post(&uri)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()));
            let Ok(req) = req else { break };
            // No timeout: a frozen listener answers after the thaw, and the next batch waits for it.
            match client.request(req).await {
                Ok(_) => break,
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_inside_the_sandbox_only() {
        assert_eq!(
            sandbox_uri("http://sandbox.localdomain:4572").as_deref(),
            Some("http://127.0.0.1:4572/")
        );
        assert_eq!(
            sandbox_uri("http://127.0.0.1:9/x").as_deref(),
            Some("http://127.0.0.1:9/x")
        );
        assert_eq!(sandbox_uri("http://0.0.0.0:4572"), None);
        assert_eq!(sandbox_uri("http://example.com:4572"), None);
        assert_eq!(sandbox_uri("https://sandbox:4572"), None);
        assert_eq!(sandbox_uri("http://sandbox:0"), None);
    }
}
