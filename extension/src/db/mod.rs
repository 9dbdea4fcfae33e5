//! PostgreSQL: the warm pool and the two database operations of the localhost API (`/db/query`,
//! `/db/transaction`). No HTTP types here: the server module parses requests into [`StatementRequest`]s and renders
//! [`QueryResult`]s.
//!
//! - `pool`: connection manager (TLS, keepalives, zero-round-trip stale detection, statement cache).
//! - `exec`: one transaction per request, pipelined to few round trips, retried once on a fresh connection when a
//!   stale connection fails before anything could have been committed.
//! - `convert`: JSON <-> PostgreSQL binary values, driven by the types PostgreSQL infers.
//! - `text`: PostgreSQL's text output of binary values, and text parameters (Neon's wire format, `POST /sql`).
//!
//! Availability is tracked for `/ping` (`connecting` → `ready` | `unavailable`). When the database is unreachable a
//! background task keeps trying (with backoff) so the pool is warm again as soon as it comes back; requests
//! meanwhile get a JSON 503 `db_unavailable` within the connect timeout. Nothing here ever makes the process exit.

pub mod convert;
pub mod credentials;
mod exec;
pub mod pool;
pub(crate) mod sql;
pub mod text;

use crate::config::Config;
use crate::error::Error;
use bb8::{ErrorSink, Pool, RunError};
use credentials::{SecretCredentials, Source, Target};
use pool::{ConnectError, LiveConnections, Manager};
use serde_json::value::RawValue;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Idle pooled connections older than this are closed by bb8's reaper: below the 350 s idle timeout of AWS NAT
/// gateways / Network Firewall, so we rarely hold a connection a middlebox has already forgotten.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections are recycled after this, so server-side memory (plan caches, prepared statements) stays bounded.
const POOL_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Background reconnection backoff bounds while the database is down.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// How long warm-up waits for the first read of `MAKENAIDE_DATABASE_SECRET_ID` (it runs in the background).
const SECRET_WARM_UP_WAIT: Duration = Duration::from_secs(15);

/// One statement of a request.
#[derive(Clone, Debug)]
pub struct StatementRequest {
    /// SQL text with `$n` placeholders.
    pub sql: String,
    /// Parameters as the caller's raw JSON text (bound, never interpolated): kept as text, not as
    /// `serde_json::Value` trees, so numbers keep every digit and a large request costs its size once.
    pub params: Vec<Box<RawValue>>,
}

impl StatementRequest {
    /// A statement from parsed JSON values (tests and in-process callers; the server keeps the raw text).
    #[must_use]
    pub fn from_values(sql: impl Into<String>, params: &[Value]) -> Self {
        Self {
            sql: sql.into(),
            params: params
                .iter()
                .filter_map(|v| serde_json::value::to_raw_value(v).ok())
                .collect(),
        }
    }
}

/// Per-request bounds on what a result may hold: the request fails with `row_limit_exceeded` /
/// `response_too_large` as soon as a bound is crossed, while the rows are being read (never after holding them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rows over all the request's statements.
    pub max_rows: u64,
    /// Bytes of the rows' JSON over all the request's statements.
    pub max_response_bytes: u64,
}

/// Per-request transaction settings (`/db/transaction`'s `read_only`, `isolation`, `deferrable`; `/sql`'s batch
/// headers) and how values travel.
#[derive(Clone, Copy, Debug, Default)]
pub struct TxOptions {
    /// `Some(true)`: `READ ONLY`; `Some(false)` is refused under `MAKENAIDE_DB_READ_ONLY=true`.
    pub read_only: Option<bool>,
    /// `ISOLATION LEVEL ...` (absent: the database's default).
    pub isolation: Option<makenaide_contract::Isolation>,
    /// `DEFERRABLE`.
    pub deferrable: bool,
    /// How parameters are bound and cells rendered.
    pub values: Values,
}

/// How a request's values travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Values {
    /// `/db/*`: JSON parameters converted to the inferred types (binary), cells as JSON.
    #[default]
    Json,
    /// `/sql`: parameters sent as text for PostgreSQL to parse, cells as PostgreSQL's text output (`raw`), or as
    /// Neon's proxy types them (booleans, int2/int4, floats, json and arrays as JSON, the rest as text).
    Text {
        /// `Neon-Raw-Text-Output: true`.
        raw: bool,
    },
}

/// A result column's wire metadata (Neon's `fields`), filled in [`Values::Text`] mode only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColumnMeta {
    /// Type OID.
    pub type_oid: u32,
    /// Source table OID (0 when not a plain column).
    pub table_oid: u32,
    /// Attribute number in that table (0 when none).
    pub column_id: i16,
    /// `pg_type.typlen`, for the built-in types we know (-1 = variable length, as for unknown ones).
    pub type_size: i16,
    /// Type modifier (e.g. varchar length + 4), -1 when none.
    pub type_modifier: i32,
}

/// Result of one statement: the `/db/query` response shape.
#[derive(Clone, Debug, Default)]
pub struct QueryResult {
    /// (name, type) per column.
    pub columns: Vec<(String, String)>,
    /// The rows as JSON text (`[[...],...]`, empty for statements returning none), written while they were read:
    /// exact (jsonb digits included) and far smaller than a `serde_json::Value` per cell.
    pub rows_json: Vec<u8>,
    /// Rows returned, or rows affected for statements that return none.
    pub row_count: u64,
    /// Per column, in [`Values::Text`] mode (empty otherwise).
    pub meta: Vec<ColumnMeta>,
}

impl QueryResult {
    /// Appends `{"columns":[{"name","type"}],"rows":[[...]],"row_count":n}`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"columns\":");
        let columns: Vec<Value> = self
            .columns
            .iter()
            .map(|(n, t)| serde_json::json!({"name": n, "type": t}))
            .collect();
        let _ = serde_json::to_writer(&mut *out, &columns);
        out.extend_from_slice(b",\"rows\":");
        if self.rows_json.is_empty() {
            out.extend_from_slice(b"[]");
        } else {
            out.extend_from_slice(&self.rows_json);
        }
        out.extend_from_slice(b",\"row_count\":");
        out.extend_from_slice(self.row_count.to_string().as_bytes());
        out.push(b'}');
    }

    /// The rows parsed back into JSON values (for tests and in-process callers: numbers beyond f64 lose digits
    /// here, never in [`QueryResult::rows_json`]).
    #[must_use]
    pub fn rows(&self) -> Vec<Vec<Value>> {
        if self.rows_json.is_empty() {
            return Vec::new();
        }
        serde_json::from_slice(&self.rows_json).unwrap_or_default()
    }
}

/// Availability as shown by `/ping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbStatus {
    /// No `MAKENAIDE_DATABASE_URL` nor `MAKENAIDE_DATABASE_SECRET_ID`.
    NotConfigured,
    /// Started, no connection yet.
    Connecting,
    /// Last attempt succeeded.
    Ready,
    /// Last attempt failed; reconnecting in the background.
    Unavailable,
}

impl DbStatus {
    /// The `/ping` string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Handle to the database side (cheap to clone).
#[derive(Clone)]
pub struct Db {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// Taken out at shutdown, which drops every idle connection (each sends Terminate).
    pool: RwLock<Option<Pool<Manager>>>,
    status: AtomicU8,
    /// Last connect failure seen by bb8 (it retries connects internally and would otherwise only say "timed out").
    last_error: Arc<Mutex<Option<(Instant, ConnectError)>>>,
    reconnecting: AtomicBool,
    live: Arc<LiveConnections>,
    kill: watch::Sender<bool>,
    opts: exec::Options,
    pool_size: u32,
    target: String,
    /// `MAKENAIDE_DATABASE_SECRET_ID`: requests wait for (or fail on) its credentials first.
    secret: Option<Arc<SecretCredentials>>,
}

#[derive(Clone)]
struct LastErrorSink(Arc<Mutex<Option<(Instant, ConnectError)>>>);

impl std::fmt::Debug for LastErrorSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastErrorSink")
    }
}

impl ErrorSink<ConnectError> for LastErrorSink {
    fn sink(&self, e: ConnectError) {
        if e.message == pool::DISCARDED {
            crate::metrics::inc(crate::metrics::Counter::DbDeadConnectionsReplaced);
            tracing::debug!("stale postgres connection discarded at checkout (closed while idle or frozen)");
            return;
        }
        tracing::debug!(error = %e, "postgres connect failed");
        if let Ok(mut last) = self.0.lock() {
            *last = Some((Instant::now(), e));
        }
    }
    fn boxed_clone(&self) -> Box<dyn ErrorSink<ConnectError>> {
        Box::new(self.clone())
    }
}

const ST_CONNECTING: u8 = 1;
const ST_READY: u8 = 2;
const ST_UNAVAILABLE: u8 = 3;

impl Db {
    /// Builds the pool without connecting (warm-up does that in the background). With a secret, this builds its own
    /// HTTP client: the extension passes its shared one through [`Db::with_http`].
    ///
    /// # Errors
    /// TLS setup failed (e.g. an unreadable `sslrootcert`).
    pub fn new(config: &Config) -> Result<Self, Error> {
        let http = match &config.database_secret {
            Some(_) => Some(crate::upbit::http_client()?),
            None => None,
        };
        Self::with_http(config, http)
    }

    /// [`Db::new`] with the HTTP client for Secrets Manager (`None` without `MAKENAIDE_DATABASE_SECRET_ID`).
    ///
    /// # Errors
    /// TLS setup failed (e.g. an unreadable `sslrootcert`), or a secret is configured without a client.
    pub fn with_http(config: &Config, http: Option<reqwest::Client>) -> Result<Self, Error> {
        let connect_timeout = config.db_connect_timeout;
        let adjust = move |pg: &mut tokio_postgres::Config| pool::adjust(pg, connect_timeout);
        let (source, target, secret) = match (&config.database, &config.database_secret) {
            (Some(db), _) => {
                let target = Target::new(db, 0, adjust).map_err(|m| {
                    Error::Config(crate::config::ConfigError {
                        var: crate::config::ENV_DATABASE_URL,
                        message: m,
                    })
                })?;
                (Source::Fixed(Arc::new(target)), db.display.clone(), None)
            }
            (None, Some(src)) => {
                let http = http.ok_or_else(|| Error::Internal("no HTTP client for Secrets Manager".into()))?;
                let secret = SecretCredentials::new(src.clone(), http, adjust);
                (
                    Source::Secret(secret.clone()),
                    format!("secret {}", src.secret_id),
                    Some(secret),
                )
            }
            (None, None) => return Ok(Self { inner: None }),
        };
        let live = Arc::new(LiveConnections::default());
        let (kill, kill_rx) = watch::channel(false);
        let opts = exec::Options {
            read_only: config.db_read_only,
            cache: config.db_statement_cache,
            connect_timeout: config.db_connect_timeout,
            default_timeout: config.db_statement_timeout,
            limits: Limits {
                max_rows: config.db_max_rows,
                max_response_bytes: config.db_max_response_bytes,
            },
        };
        let manager = Manager::new(
            source,
            config.db_connect_timeout,
            opts.session_timeout(),
            live.clone(),
            kill_rx,
        );
        let last_error = Arc::new(Mutex::new(None));
        let pool = Pool::builder()
            .max_size(config.db_pool_size)
            .min_idle(None)
            // Our is_valid costs no round trip (see pool.rs), so testing on checkout is free.
            .test_on_check_out(true)
            // Bounds checkout too: with the database down, a request fails within this, not bb8's 30 s default.
            .connection_timeout(config.db_connect_timeout)
            .retry_connection(true)
            .idle_timeout(Some(POOL_IDLE_TIMEOUT))
            .max_lifetime(Some(POOL_MAX_LIFETIME))
            .error_sink(Box::new(LastErrorSink(last_error.clone())))
            .build_unchecked(manager);
        Ok(Self {
            inner: Some(Arc::new(Inner {
                pool: RwLock::new(Some(pool)),
                status: AtomicU8::new(ST_CONNECTING),
                last_error,
                reconnecting: AtomicBool::new(false),
                live,
                kill,
                opts,
                pool_size: config.db_pool_size,
                target,
                secret,
            })),
        })
    }

    /// `/ping`'s view.
    #[must_use]
    pub fn status(&self) -> DbStatus {
        let Some(inner) = &self.inner else {
            return DbStatus::NotConfigured;
        };
        match inner.status.load(Ordering::SeqCst) {
            ST_READY => DbStatus::Ready,
            ST_UNAVAILABLE => DbStatus::Unavailable,
            _ => DbStatus::Connecting,
        }
    }

    /// Opens one connection so the first request finds it warm (after reading the secret, with
    /// `MAKENAIDE_DATABASE_SECRET_ID`). Never fails: the outcome shows in [`Db::status`].
    pub async fn warm_up(&self) {
        let Some(inner) = &self.inner else { return };
        let Some(pool) = inner.pool() else { return };
        let started = Instant::now();
        if let Some(secret) = &inner.secret {
            secret.start();
            if let Err(e) = secret.ready(SECRET_WARM_UP_WAIT).await {
                inner.status.store(ST_UNAVAILABLE, Ordering::SeqCst);
                tracing::warn!(target_db = %inner.target, error = %e, "postgres warm-up failed");
                return;
            }
        }
        let outcome = inner.checkout(&pool, started).await.map(drop);
        match outcome {
            Ok(()) => {
                tracing::info!(target_db = %inner.target, elapsed_us = started.elapsed().as_micros() as u64, "postgres connection warm")
            }
            Err(e) => {
                tracing::warn!(target_db = %inner.target, error = %e, "postgres warm-up failed")
            }
        }
    }

    /// Runs `/db/query` (one statement in its own transaction).
    ///
    /// # Errors
    /// Any contract error (`sql_error`, `invalid_param`, `db_unavailable`, `db_timeout`, ...).
    pub async fn query(
        &self,
        stmt: StatementRequest,
        timeout: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<QueryResult, Error> {
        self.query_limited(stmt, timeout, deadline, None).await
    }

    /// [`Db::query`] with this request's own [`Limits`] (`None`: the configured defaults).
    ///
    /// # Errors
    /// Any contract error, `row_limit_exceeded` and `response_too_large` included.
    pub async fn query_limited(
        &self,
        stmt: StatementRequest,
        timeout: Option<Duration>,
        deadline: Option<Instant>,
        limits: Option<Limits>,
    ) -> Result<QueryResult, Error> {
        let mut results = self
            .transaction_limited(vec![stmt], timeout, deadline, limits)
            .await
            .map_err(Error::without_statement_index)?;
        Ok(results.pop().unwrap_or_default())
    }

    /// Runs `/db/transaction`: all statements in one transaction; the first failure rolls everything back and the
    /// error carries `statement_index`.
    ///
    /// # Errors
    /// Any contract error.
    pub async fn transaction(
        &self,
        stmts: Vec<StatementRequest>,
        timeout: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<Vec<QueryResult>, Error> {
        self.transaction_with(stmts, timeout, deadline, None, TxOptions::default())
            .await
    }

    /// [`Db::transaction`] with this request's own [`Limits`] (`None`: the configured defaults).
    ///
    /// # Errors
    /// Any contract error, `row_limit_exceeded` and `response_too_large` included.
    pub async fn transaction_limited(
        &self,
        stmts: Vec<StatementRequest>,
        timeout: Option<Duration>,
        deadline: Option<Instant>,
        limits: Option<Limits>,
    ) -> Result<Vec<QueryResult>, Error> {
        self.transaction_with(stmts, timeout, deadline, limits, TxOptions::default())
            .await
    }

    /// [`Db::transaction`] with per-request settings: [`Limits`] (`None`: the configured defaults) and the
    /// transaction's options (isolation, read-only, deferrable, text values).
    ///
    /// # Errors
    /// Any contract error, `row_limit_exceeded` and `response_too_large` included; `read_only` when
    /// `tx.read_only == Some(false)` under `MAKENAIDE_DB_READ_ONLY=true`.
    pub async fn transaction_with(
        &self,
        stmts: Vec<StatementRequest>,
        timeout: Option<Duration>,
        deadline: Option<Instant>,
        limits: Option<Limits>,
        tx: TxOptions,
    ) -> Result<Vec<QueryResult>, Error> {
        let Some(inner) = &self.inner else {
            return Err(Error::DbNotConfigured);
        };
        if inner.opts.read_only && tx.read_only == Some(false) {
            return Err(Error::ReadOnly {
                message: "read_only: false is refused: the extension runs with MAKENAIDE_DB_READ_ONLY=true".into(),
                statement_index: None,
            });
        }
        let Some(pool) = inner.pool() else {
            return Err(Error::ShuttingDown);
        };
        let started = Instant::now();
        if timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_request(
                "timeout_ms must be at least 1 (omit it for the default, MAKENAIDE_DB_STATEMENT_TIMEOUT_MS)",
            ));
        }
        // Refused before anything is sent: what would change the session beyond the request (see `sql`).
        let mut opaque = false;
        let mut plain_reads = true;
        for (i, s) in stmts.iter().enumerate() {
            match sql::check(&s.sql, inner.opts.read_only) {
                Ok(effect) => {
                    opaque |= effect.opaque;
                    plain_reads &= effect.plain_read;
                }
                Err(sql::Refusal::NotSupported(message)) => {
                    return Err(Error::StatementNotSupported {
                        message,
                        statement_index: Some(i),
                    })
                }
                Err(sql::Refusal::ReadOnly(message)) => {
                    return Err(Error::ReadOnly {
                        message,
                        statement_index: Some(i),
                    })
                }
            }
        }
        // The request's deadline: its timeout (0 in MAKENAIDE_DB_STATEMENT_TIMEOUT_MS: none) and the caller's.
        let timeout = timeout.unwrap_or(inner.opts.default_timeout);
        let mut bound = (!timeout.is_zero()).then(|| started + timeout);
        if let Some(deadline) = deadline {
            if deadline <= started {
                return Err(Error::DbTimeout {
                    message: "the caller's deadline (X-Makenaide-Deadline-Ms) has already passed".into(),
                    statement_index: None,
                });
            }
            bound = Some(bound.map_or(deadline, |b| b.min(deadline)));
        }
        if let Some(secret) = &inner.secret {
            // Within the connect timeout, as for a connection (and the caller's deadline).
            let mut wait = inner.opts.connect_timeout;
            if let Some(deadline) = deadline {
                wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = secret.ready(wait).await {
                inner.status.store(ST_UNAVAILABLE, Ordering::SeqCst);
                return Err(e);
            }
        }
        let conn = inner.checkout(&pool, Instant::now()).await?;
        let mut opts = inner.opts;
        if let Some(limits) = limits {
            opts.limits = limits;
        }
        // Plain reads run READ ONLY unless the caller chose (`read_only: false`): PostgreSQL then guarantees they
        // wrote nothing, so they take one round trip and a lost connection can be retried (see `exec`).
        let mut tx = tx;
        let auto_read_only = plain_reads && tx.read_only.is_none() && !inner.opts.read_only;
        if auto_read_only {
            tx.read_only = Some(true);
        }
        let mut result = exec::execute(conn, &pool, &stmts, bound, opaque, opts, tx).await;
        if auto_read_only {
            if let Err(Error::ReadOnly { message, .. }) = &mut result {
                message.push_str(
                    " (the extension ran this request READ ONLY because it looked like a plain read; to call \
                     something that writes, send it to /db/transaction with \"read_only\": false)",
                );
            }
        }
        match &result {
            Ok(_) => inner.status.store(ST_READY, Ordering::SeqCst),
            Err(Error::DbUnavailable { .. } | Error::DbOutcomeUnknown { .. }) => inner.mark_unavailable(),
            Err(Error::Sql { .. } | Error::ReadOnly { .. } | Error::DbTimeout { .. }) => {
                crate::metrics::inc(crate::metrics::Counter::DbStatementErrors);
            }
            Err(_) => {}
        }
        result
    }

    /// Closes the pool at shutdown: idle connections are dropped (each sends Terminate, so the server-side sessions
    /// end at once), then we wait up to `budget` for their sockets to close; stragglers are cut.
    pub async fn close(&self, budget: Duration) {
        let Some(inner) = &self.inner else { return };
        let pool = inner.pool.write().ok().and_then(|mut p| p.take());
        drop(pool);
        if !inner.live.wait_all_closed(budget).await {
            let _ = inner.kill.send(true);
            inner.live.wait_all_closed(Duration::from_millis(50)).await;
        }
        tracing::debug!(left = inner.live.count(), "postgres pool closed");
    }
}

impl Inner {
    fn pool(&self) -> Option<Pool<Manager>> {
        self.pool.read().ok().and_then(|p| p.clone())
    }

    /// Checks a connection out, bounded by the connect timeout; failures become `db_unavailable` with the real
    /// cause (bb8 itself would only say "timed out"), or `db_busy` when every connection was simply in use.
    async fn checkout<'a>(
        self: &Arc<Self>,
        pool: &'a Pool<Manager>,
        started: Instant,
    ) -> Result<bb8::PooledConnection<'a, Manager>, Error> {
        match pool.get().await {
            Ok(conn) => {
                self.status.store(ST_READY, Ordering::SeqCst);
                Ok(conn)
            }
            Err(RunError::User(e)) => {
                self.mark_unavailable();
                Err(e.unavailable())
            }
            Err(RunError::TimedOut) => {
                let recent = self
                    .last_error
                    .lock()
                    .ok()
                    .and_then(|l| l.clone())
                    .filter(|(at, _)| *at >= started);
                match recent {
                    Some((_, e)) => {
                        self.mark_unavailable();
                        Err(e.unavailable())
                    }
                    // Fewer connections than the pool size: the wait was for a new connection that did not
                    // complete in time (bb8 gives up at the same moment as the connect attempt, before its
                    // error is known), e.g. a server that accepts TCP but never answers.
                    None if pool.state().connections < self.pool_size => {
                        self.mark_unavailable();
                        Err(Error::DbUnavailable {
                            message: format!(
                                "PostgreSQL is unreachable: no connection completed within {} ms (MAKENAIDE_DB_CONNECT_TIMEOUT_MS) (retrying in the background)",
                                self.opts.connect_timeout.as_millis()
                            ),
                            sqlstate: None,
                        })
                    }
                    // Saturation, not an outage: the database is fine (status stays as it is).
                    None => Err(Error::DbBusy(format!(
                        "all {} PostgreSQL connections stayed busy for {} ms (raise MAKENAIDE_DB_POOL_SIZE or send fewer concurrent requests)",
                        self.pool_size,
                        self.opts.connect_timeout.as_millis()
                    ))),
                }
            }
        }
    }

    fn mark_unavailable(self: &Arc<Self>) {
        self.status.store(ST_UNAVAILABLE, Ordering::SeqCst);
        if self.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        // Keep trying in the background so the pool is warm again as soon as the database is back. While Lambda has
        // the environment frozen this task is frozen too, which is fine.
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = RECONNECT_MIN;
            loop {
                tokio::time::sleep(delay).await;
                let Some(pool) = this.pool() else { break };
                let started = Instant::now();
                if this.checkout(&pool, started).await.is_ok() {
                    tracing::info!(target_db = %this.target, "postgres reachable again");
                    break;
                }
                if this.status.load(Ordering::SeqCst) == ST_READY {
                    break;
                }
                delay = (delay * 2).min(RECONNECT_MAX);
            }
            this.reconnecting.store(false, Ordering::SeqCst);
        });
    }
}
