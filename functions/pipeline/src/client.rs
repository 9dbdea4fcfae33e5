//! `CoreClient`: the function's HTTP/1 client for the makenaide-core extension on 127.0.0.1.
//!
//! It owns the transport concerns of talking to a sidecar inside a Lambda environment:
//! - keep-alive: one pooled loopback connection is reused across invocations (the client lives for the whole
//!   environment, created once in `main`);
//! - short retries on connection refused (the very first invoke can race the extension's listener in local
//!   emulators) and, for reads, on a reset/closed pooled socket (a keep-alive socket can die while Lambda has the
//!   environment frozen between invocations); a write whose socket broke is `CoreOutcomeUnknown`, never resent
//!   here (exactly once: only the idempotent writes resend, in `db`);
//! - the `X-Makenaide-Deadline-Ms` header, so the extension never works past the Lambda deadline;
//! - turning the extension's and Upbit's error bodies into typed [`PipelineError`]s.
//!
//! Deliberately no TLS, no proxy handling and no DNS: the only peer is the loopback extension.

use crate::error::{CoreError, PipelineError};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
// The runtime API client's body type: using it (rather than `Full<Bytes>`) lets hyper-util's client and pool
// code be shared with lambda_runtime's own client instead of compiled twice (~100 KB of the binary).
use crate::deadline;
pub use crate::deadline::now_ms;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use lambda_runtime_api_client::body::Body;
use makenaide_contract::env::Token;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

pub use makenaide_contract::env::{
    AWS_SESSION_TOKEN as ENV_AWS_SESSION_TOKEN, CORE_PORT as ENV_CORE_PORT, CORE_TOKEN as ENV_CORE_TOKEN,
    DEFAULT_CORE_PORT,
};
pub use makenaide_contract::headers::{DEADLINE as DEADLINE_HEADER, SOURCE as SOURCE_HEADER, TOKEN as TOKEN_HEADER};

/// How long we keep retrying "connection refused" (extension not listening yet).
const CONNECT_RETRY_BUDGET: Duration = Duration::from_secs(2);
/// Idle keep-alive sockets older than this are not reused.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type HttpClient = Client<HttpConnector, Body>;

/// Client for the extension. Cheap to clone (the connection pool is shared); create it once per environment.
#[derive(Clone)]
pub struct CoreClient {
    http: HttpClient,
    base: Arc<str>,
    port: u16,
    token: Option<HeaderValue>,
    deadline_ms: Option<u64>,
}

impl std::fmt::Debug for CoreClient {
    // Hand-written so the token can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("deadline_ms", &self.deadline_ms)
            .finish()
    }
}

/// A raw reply from the extension.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Value of `X-Makenaide-Source`, if present.
    pub source: Option<String>,
    /// Whole body.
    pub body: Bytes,
}

impl CoreClient {
    /// A client for `http://127.0.0.1:{port}` sending `token` (an empty token sends no header).
    pub fn new(port: u16, token: impl Into<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A request that never got written on a pooled connection that turned out dead is safe to resend.
            .retry_canceled_requests(true)
            .build(connector);
        let token = token.into();
        let token = if token.is_empty() {
            None
        } else {
            HeaderValue::from_str(&token).ok().map(|mut v| {
                v.set_sensitive(true);
                v
            })
        };
        Self {
            http,
            base: format!("http://127.0.0.1:{port}").into(),
            port,
            token,
            deadline_ms: None,
        }
    }

    /// A client configured from [`ENV_CORE_PORT`], [`ENV_CORE_TOKEN`] / [`ENV_AWS_SESSION_TOKEN`].
    pub fn from_env() -> Result<Self, PipelineError> {
        let port = match std::env::var(ENV_CORE_PORT) {
            Ok(v) if !v.trim().is_empty() => v.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                PipelineError::CoreUnavailable(format!("{ENV_CORE_PORT}={v:?} is not a valid port (1-65535)"))
            })?,
            _ => DEFAULT_CORE_PORT,
        };
        // The same rule as the extension's; with no token the request goes without one and the extension's
        // `missing_token` answer says what to set.
        let token = match Token::resolve(
            std::env::var(ENV_CORE_TOKEN).ok().as_deref(),
            std::env::var(ENV_AWS_SESSION_TOKEN).ok().as_deref(),
        ) {
            Token::Found { value, .. } => value,
            Token::Missing { .. } => String::new(),
        };
        Ok(Self::new(port, token))
    }

    /// The same client (same pool) with an absolute deadline (unix epoch ms) sent to the extension.
    pub fn with_deadline_ms(&self, deadline_ms: Option<u64>) -> Self {
        Self {
            deadline_ms,
            ..self.clone()
        }
    }

    /// The same client with the deadline derived from the Runtime API's deadline for this invocation
    /// ([`deadline::for_invocation`]: implausible emulator values are replaced, a margin is kept).
    pub fn for_lambda_deadline(&self, lambda_deadline_ms: u64) -> Self {
        self.with_deadline_ms(deadline::for_invocation(lambda_deadline_ms))
    }

    /// Port of the extension this client talks to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The deadline sent to the extension, if any (unix epoch ms).
    pub fn deadline_ms(&self) -> Option<u64> {
        self.deadline_ms
    }

    /// `GET /ping` (no token needed). Returns the status object.
    pub async fn ping(&self) -> Result<serde_json::Value, PipelineError> {
        let reply = self.send(Method::GET, "/ping", None).await?;
        if !reply.status.is_success() {
            return Err(core_error(&reply));
        }
        decode(&reply.body, "core")
    }

    /// GET an Upbit quotation path through the extension's mirror (e.g. `/v1/ticker?markets=KRW-BTC`) and
    /// decode the JSON reply. Upbit error statuses become [`PipelineError::Upbit`], the extension's own errors
    /// [`PipelineError::Core`].
    pub async fn upbit_get<T: DeserializeOwned>(&self, path_and_query: &str) -> Result<T, PipelineError> {
        let reply = self.send(Method::GET, path_and_query, None).await?;
        if reply.status.is_success() {
            return decode(&reply.body, "upbit");
        }
        Err(upbit_or_core_error(&reply))
    }

    /// POST a JSON body to an extension route (`/db/query`, `/db/transaction`) and decode the JSON reply.
    pub async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, PipelineError> {
        let body = serde_json::to_vec(body).map_err(|e| PipelineError::BadReply {
            source_name: "core",
            message: format!("cannot encode request: {e}"),
        })?;
        let reply = self.send(Method::POST, path, Some(Bytes::from(body))).await?;
        if reply.status.is_success() {
            return decode(&reply.body, "core");
        }
        Err(core_error(&reply))
    }

    /// Send one request with the token and deadline headers, retrying transport failures briefly.
    pub async fn send(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply, PipelineError> {
        let uri = format!("{}{}", self.base, path);
        let started = std::time::Instant::now();
        let mut attempt: u32 = 0;
        let mut stale_retry_used = false;
        loop {
            attempt += 1;
            let req = self.build_request(&method, &uri, body.clone())?;
            let timeout = self.request_timeout();
            let outcome = tokio::time::timeout(timeout, self.http.request(req)).await;
            let err = match outcome {
                Err(_) => {
                    return Err(PipelineError::CoreUnavailable(format!(
                        "no answer to {method} {path} within {} ms",
                        timeout.as_millis()
                    )))
                }
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    let source = resp
                        .headers()
                        .get(SOURCE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let left = self.request_timeout();
                    let body = match tokio::time::timeout(left, resp.into_body().collect()).await {
                        Ok(Ok(b)) => b.to_bytes(),
                        Ok(Err(e)) => {
                            return Err(PipelineError::CoreUnavailable(format!(
                                "reading the reply to {method} {path}: {e}"
                            )))
                        }
                        Err(_) => {
                            return Err(PipelineError::CoreUnavailable(format!(
                                "reply body of {method} {path} not received in time"
                            )))
                        }
                    };
                    return Ok(Reply { status, source, body });
                }
                Ok(Err(e)) => e,
            };
            let detail = error_chain(&err);
            let retry = match classify(&err) {
                TransportFailure::Refused => {
                    started.elapsed() + backoff(attempt) < CONNECT_RETRY_BUDGET && self.time_left() > backoff(attempt)
                }
                // A pooled keep-alive socket that died during a freeze: one immediate retry on a fresh connection,
                // for reads only. A write may already have reached the extension before the socket broke (hyper
                // itself resends only requests it never wrote: `retry_canceled_requests`), so resending it here
                // could apply it twice: its outcome is unknown, which only the idempotent writes may resend.
                TransportFailure::Stale if !stale_retry_used && method == Method::GET => {
                    stale_retry_used = true;
                    true
                }
                TransportFailure::Stale => {
                    return Err(PipelineError::CoreOutcomeUnknown(format!(
                        "{method} {path}: the connection to the extension broke after the request may have been \
                         sent ({detail}): it may or may not have been applied (not resent)"
                    )))
                }
                _ => false,
            };
            if !retry {
                return Err(PipelineError::CoreUnavailable(format!(
                    "{method} {path} failed after {attempt} attempt(s): {detail} (is the makenaide-core layer attached and listening on 127.0.0.1:{}?)",
                    self.port
                )));
            }
            tracing::debug!(attempt, %detail, "retrying request to makenaide-core");
            if matches!(classify(&err), TransportFailure::Refused) {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }

    fn build_request(&self, method: &Method, uri: &str, body: Option<Bytes>) -> Result<Request<Body>, PipelineError> {
        let mut b = Request::builder().method(method.clone()).uri(uri);
        if let Some(t) = &self.token {
            b = b.header(TOKEN_HEADER, t.clone());
        }
        if let Some(d) = self.deadline_ms {
            b = b.header(DEADLINE_HEADER, d);
        }
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        b.body(body.map(Body::from).unwrap_or_default())
            .map_err(|e| PipelineError::CoreUnavailable(format!("cannot build request for {uri}: {e}")))
    }

    fn request_timeout(&self) -> Duration {
        deadline::request_timeout(self.deadline_ms)
    }

    fn time_left(&self) -> Duration {
        deadline::time_left(self.deadline_ms)
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(25u64 << attempt.min(5))
}

#[derive(Debug, PartialEq, Eq)]
enum TransportFailure {
    /// Nothing listening (yet): safe to retry, the request never left.
    Refused,
    /// The connection was reset or closed under us: likely a keep-alive socket that died while frozen.
    Stale,
    Other,
}

fn classify(err: &hyper_util::client::legacy::Error) -> TransportFailure {
    let mut src: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return TransportFailure::Refused,
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof => return TransportFailure::Stale,
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() || h.is_canceled() || h.is_closed() {
                return TransportFailure::Stale;
            }
        }
        src = e.source();
    }
    if err.is_connect() {
        // Connect errors without an io kind we recognise (e.g. the connect timeout): retry like a refusal.
        TransportFailure::Refused
    } else {
        TransportFailure::Other
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

fn decode<T: DeserializeOwned>(body: &[u8], source_name: &'static str) -> Result<T, PipelineError> {
    serde_json::from_slice(body).map_err(|e| PipelineError::BadReply {
        source_name,
        message: format!("{e} (body starts with {:?})", snippet(body)),
    })
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    s.into_owned()
}

/// Parse the extension's error body, or describe the reply when it is not one.
pub(crate) fn core_error(reply: &Reply) -> PipelineError {
    match parse_core_error(reply.status.as_u16(), &reply.body) {
        Some(e) => PipelineError::Core(e),
        None => PipelineError::BadReply {
            source_name: "core",
            message: format!("HTTP {} with body {:?}", reply.status.as_u16(), snippet(&reply.body)),
        },
    }
}

fn parse_core_error(status: u16, body: &[u8]) -> Option<CoreError> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?;
    let code = e.get("code")?.as_str()?.to_owned();
    Some(CoreError {
        status,
        code,
        message: e.get("message").and_then(|m| m.as_str()).unwrap_or_default().to_owned(),
        sqlstate: e.get("sqlstate").and_then(|m| m.as_str()).map(str::to_owned),
        statement_index: e
            .get("statement_index")
            .or_else(|| v.get("statement_index"))
            .and_then(|m| m.as_u64())
            .map(|i| i as usize),
    })
}

/// An error reply on an Upbit mirror path: Upbit's own (passed through) or the extension's.
fn upbit_or_core_error(reply: &Reply) -> PipelineError {
    let from_core = reply.source.as_deref() == Some(makenaide_contract::headers::SOURCE_CORE);
    if from_core {
        return core_error(reply);
    }
    // Without the header, tell them apart by shape: the extension's errors carry a string `code`.
    if reply.source.is_none() {
        if let Some(e) = parse_core_error(reply.status.as_u16(), &reply.body) {
            return PipelineError::Core(e);
        }
    }
    let v: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let err = v.as_ref().and_then(|v| v.get("error"));
    let name = err.and_then(|e| e.get("name")).map(|n| match n {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let message = err
        .and_then(|e| e.get("message"))
        .and_then(|m| m.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| snippet(&reply.body));
    PipelineError::Upbit {
        status: reply.status.as_u16(),
        name,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u16, source: Option<&str>, body: &str) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("status"),
            source: source.map(str::to_owned),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn upbit_404_is_kept_verbatim() {
        let r = reply(
            404,
            Some("upbit"),
            r#"{"error":{"name":404,"message":"Code not found"}}"#,
        );
        match upbit_or_core_error(&r) {
            PipelineError::Upbit { status, name, message } => {
                assert_eq!(status, 404);
                assert_eq!(name.as_deref(), Some("404"));
                assert_eq!(message, "Code not found");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn core_error_on_upbit_path_is_core() {
        let body = r#"{"error":{"code":"upstream_deadline","message":"no rate slot"}}"#;
        for source in [Some("core"), None] {
            match upbit_or_core_error(&reply(504, source, body)) {
                PipelineError::Core(e) => {
                    assert_eq!(e.code, makenaide_contract::ErrorCode::UpstreamDeadline.as_str());
                    assert_eq!(e.status, 504);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn db_error_keeps_sqlstate_and_index() {
        let body = r#"{"error":{"code":"sql_error","message":"relation \"x\" does not exist","sqlstate":"42P01","statement_index":2}}"#;
        match core_error(&reply(400, Some("core"), body)) {
            PipelineError::Core(e) => {
                assert_eq!(e.sqlstate.as_deref(), Some("42P01"));
                assert_eq!(e.statement_index, Some(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            core_error(&reply(502, None, "<html>")),
            PipelineError::BadReply { .. }
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = CoreClient::new(1, "s3cr3t-token");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
    }

    #[test]
    fn lambda_deadline_gets_a_margin() {
        let c = CoreClient::new(1, "");
        let lambda_deadline = now_ms() + 10_000;
        assert_eq!(
            c.for_lambda_deadline(lambda_deadline).deadline_ms(),
            Some(lambda_deadline - 750)
        );
    }
}
