//! A small client for the extension's localhost API (`docs/contracts.md`), used by tests to look inside a running
//! environment: `/ping`, `/db/query`, `/db/transaction` and the Upbit mirror, with the token header.
//!
//! It opens a fresh connection per request (no idle keep-alive): a test connection parked in the extension's
//! accept loop must not influence its connection cap, its graceful shutdown or a freeze.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{HarnessError, Result};

/// Header carrying the shared secret (contract).
pub const TOKEN_HEADER: &str = makenaide_contract::headers::TOKEN;
/// Header carrying the caller's absolute deadline in epoch ms (contract).
pub const DEADLINE_HEADER: &str = makenaide_contract::headers::DEADLINE;

/// A reply from the extension.
#[derive(Debug, Clone)]
pub struct CoreReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl CoreReply {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `error.code` of an error reply.
    pub fn error_code(&self) -> Option<String> {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

/// Client for `http://127.0.0.1:<port>`.
#[derive(Clone)]
pub struct CoreClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl CoreClient {
    pub fn new(port: u16, token: impl Into<String>) -> Self {
        // Plain HTTP only, but a workspace build unifies reqwest's features with the extension's
        // `rustls-no-provider`, and building a client without a process-wide crypto provider then panics.
        lambda_simulator::ensure_default_crypto_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            base: format!("http://127.0.0.1:{port}"),
            token: token.into(),
            http,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The token this client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `GET /ping` (no token).
    pub async fn ping(&self) -> Result<Value> {
        let r = self.http.get(format!("{}/ping", self.base)).send().await?;
        Ok(r.json().await?)
    }

    /// Waits until `/ping` answers and, with `db_ready`, reports `"db":"ready"`. Polls the readiness signal with a
    /// short backoff (5 ms doubling to 100 ms); `timeout` bounds the wait.
    pub async fn wait_ready(&self, db_ready: bool, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(5);
        let mut last = Value::Null;
        loop {
            if let Ok(v) = self.ping().await {
                if !db_ready || v.get("db").and_then(Value::as_str) == Some("ready") {
                    return Ok(v);
                }
                last = v;
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(HarnessError::Timeout {
                    what: format!("extension ready (last /ping: {last})"),
                    after: timeout,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    /// Any GET with the token (e.g. `/v1/candles/days?market=KRW-BTC&count=3`).
    pub async fn get(&self, path_and_query: &str) -> Result<CoreReply> {
        let r = self
            .http
            .get(format!("{}{}", self.base, path_and_query))
            .header(TOKEN_HEADER, &self.token)
            .send()
            .await?;
        reply(r).await
    }

    /// Any POST of JSON with the token.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<CoreReply> {
        let r = self
            .http
            .post(format!("{}{}", self.base, path))
            .header(TOKEN_HEADER, &self.token)
            .json(body)
            .send()
            .await?;
        reply(r).await
    }

    /// `POST /db/query`, raw reply.
    pub async fn query_raw(&self, sql: &str, params: Value) -> Result<CoreReply> {
        self.post_json("/db/query", &json!({"sql": sql, "params": params}))
            .await
    }

    /// `POST /db/query`, expecting 200: the result object (`columns`, `rows`, `row_count`).
    pub async fn query(&self, sql: &str, params: Value) -> Result<Value> {
        let r = self.query_raw(sql, params).await?;
        if r.status != 200 {
            return Err(HarnessError::State(format!(
                "/db/query `{sql}` answered {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )));
        }
        Ok(r.json())
    }

    /// The backend pid of the connection the extension used for one `/db/query`.
    pub async fn backend_pid(&self) -> Result<i64> {
        let v = self.query("select pg_backend_pid() as pid", json!([])).await?;
        v.pointer("/rows/0/0")
            .and_then(Value::as_i64)
            .ok_or_else(|| HarnessError::State(format!("unexpected /db/query reply: {v}")))
    }
}

async fn reply(r: reqwest::Response) -> Result<CoreReply> {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await?;
    Ok(CoreReply { status, headers, body })
}
