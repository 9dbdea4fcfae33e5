//! One request = one transaction, in as few round trips as is safe.
//!
//! Hot path (every statement already prepared on this connection): one round trip. `BEGIN [READ ONLY]` (plus
//! `SET LOCAL statement_timeout` only when the request needs another timeout than the connection's own setting,
//! made once at connect), every statement's Bind/Execute/Sync, and `COMMIT`, queued together. A statement that
//! fails aborts the transaction, so PostgreSQL answers that `COMMIT` as a `ROLLBACK`; later statements fail with
//! 25P02 and the first error is the one reported.
//!
//! A statement not yet in the connection's cache costs one more round trip first (Parse/Describe, pipelined with
//! `BEGIN`): we need the parameter types PostgreSQL infers to convert the JSON values.
//!
//! `COMMIT` is pipelined only when nothing the extension does after PostgreSQL ran the statements can turn the
//! request into a failure that must not commit ([`commit_early`]): a `READ ONLY` transaction, or results whose
//! every column converts to JSON. A row or size cap crossed by a read-write result then cancels the statement and
//! reads the rest of the reply, and the answer says whether the statements were applied (they were if the statement
//! had finished first). Otherwise (`/sql` rows in a read-write transaction, a column type without a JSON
//! conversion, statement cache off) `COMMIT` gets a round trip of its own after the results.
//!
//! Exactly once: once `COMMIT` is written (with the statements, or on its own), a connection failure before its
//! reply is `db_outcome_unknown`, never resent, except for a `READ ONLY` transaction (configured, requested, or a
//! plain read: `db::sql`), which is retried once on a fresh connection. Before anything is written, a dead pooled
//! connection is found at checkout (zero round trips, `pool`), and a failure of a round trip without `COMMIT` is
//! retried once on a fresh connection.
//!
//! The first reply (to `BEGIN`) must arrive within half the connect timeout: PostgreSQL flushes it at once
//! (ReadyForQuery), so waiting longer only means the socket is dead (e.g. black-holed): the connection is
//! dropped and the request retried on a fresh one with the rest of the connect timeout, so a database that
//! accepts TCP but never answers still gets its 503 within `MAKENAIDE_DB_CONNECT_TIMEOUT_MS` (the contract).
//!
//! The request's deadline (the earlier of `timeout_ms` / `MAKENAIDE_DB_STATEMENT_TIMEOUT_MS` and the caller's
//! `X-Makenaide-Deadline-Ms`) is enforced here, not only by `SET LOCAL statement_timeout` (which a statement can
//! lift with `SET LOCAL statement_timeout = 0`, and which bounds each statement, not the request): a deadline less
//! than 1 ms away fails at once (0 would mean "no limit" to PostgreSQL); shortly after the deadline the extension
//! sends PostgreSQL a cancel request, answers `db_timeout` once the statement has stopped, and retires the
//! connection if it did not stop within [`CANCEL_GRACE`] (or if the cancel may still be in flight, so that it
//! cannot land on a later request's statement).
//!
//! Cached statements recover by themselves: one that no longer exists on the server (26000, e.g. a function ran
//! `DEALLOCATE ALL`), whose result type changed ("cached plan must not change result type", 0A000) or whose
//! parameter types no longer fit (a value the old type refuses, 42804 at re-planning) after `ALTER TABLE ... TYPE`
//! makes the request flush the connection's cache and run once more with statements prepared again.
//!
//! After each request the session is checked for free ([`PgConn::session_changed`]: the parameters PostgreSQL
//! reports); a changed one, or opaque code (`DO`, `CALL`), retires the connection (see `db::sql` for the
//! statements refused up front).
//!
//! Only our `COMMIT` can make anything durable: statements that end or start a transaction are refused up front
//! (`db::sql::transaction_control`), and PostgreSQL refuses `COMMIT` inside procedures and `DO` blocks called from
//! a transaction block.
//!
//! With the statement cache off (`MAKENAIDE_DB_STATEMENT_CACHE=false`, for PgBouncer transaction pooling before
//! 1.21) statements are prepared per request and closed (and tokio-postgres' type-info statements flushed) before
//! `COMMIT`/`ROLLBACK` is sent, so no named statement ever outlives the transaction that created it.

use super::convert::{encode_param, type_name, write_value, Encoded, RawCell};
use super::pool::{Canceller, ConnectError, Manager, PgConn};
use super::text::{self, TextCell, TypedCell};
use super::{ColumnMeta, Limits, QueryResult, StatementRequest, TxOptions, Values};
use crate::error::{Error, PgReport};
use bytes::{BufMut, BytesMut};
use futures_util::future::{join, join_all, try_join_all, Either};
use futures_util::TryStreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};
use tokio_postgres::{Client, Statement};

/// Per-database execution settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Options {
    pub read_only: bool,
    pub cache: bool,
    pub connect_timeout: Duration,
    pub default_timeout: Duration,
    /// Row and response-size caps (the request's own, else the configured defaults).
    pub limits: Limits,
}

impl Options {
    /// Whether the request's transaction is `READ ONLY` (configured, asked for, or a plain read: see `db::sql`):
    /// then it cannot have written anything, whatever happened to the connection.
    fn read_only_tx(&self, tx: TxOptions) -> bool {
        self.read_only || tx.read_only == Some(true)
    }

    /// The `statement_timeout` every pooled connection gets when it opens (`None`: it is set per request), so that
    /// `SET LOCAL` is sent only when a request needs another one. With the statement cache off (PgBouncer's
    /// transaction pooling) a session setting would land on whichever server connection PgBouncer picked.
    pub fn session_timeout(&self) -> Option<Duration> {
        self.cache.then_some(self.default_timeout)
    }

    /// The `SET LOCAL statement_timeout` a request with `left` until its deadline (`None`: no deadline) needs, if
    /// any: none when the connection's own setting already stops a statement before the extension's cancel would.
    fn local_timeout(&self, left: Option<Duration>) -> Option<Duration> {
        let Some(session) = self.session_timeout() else {
            return Some(left.unwrap_or(Duration::ZERO));
        };
        match left {
            None if session.is_zero() => None,
            None => Some(Duration::ZERO),
            Some(l) if !session.is_zero() && l <= session && l + CANCEL_SLACK >= session => None,
            Some(l) => Some(l),
        }
    }

    /// How long the first reply (to `BEGIN`) may take on a pooled connection before it is presumed dead: half the
    /// connect timeout, leaving the other half for the retry on a fresh connection.
    fn begin_bound(&self) -> Duration {
        self.connect_timeout / 2
    }
}

/// After the deadline, how long before the cancel request is sent: PostgreSQL's own `statement_timeout` (set to
/// the same deadline) normally stops the statement first, which needs no cancel connection.
const CANCEL_SLACK: Duration = Duration::from_millis(20);
/// How long a canceled request may take to stop (cancel connection included) before its connection is retired
/// and the answer goes out anyway.
pub(super) const CANCEL_GRACE: Duration = Duration::from_millis(250);
/// The shortest `statement_timeout` that can be set: PostgreSQL reads 0 as "no limit".
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// How one attempt ended.
enum Outcome {
    Done(Result<Vec<QueryResult>, Error>),
    /// The first round trip failed at the connection level: nothing can have been committed; retry elsewhere.
    Stale(Error),
    /// A cached statement no longer fits the server (deallocated, result or parameter type changed): nothing was
    /// committed; flush the cache and retry once. The error is the one to report if it happens again.
    Recache(Error),
}

/// Runs a request on `conn` (the deadline `bound`, if any, enforced as described in the module docs). `opaque`:
/// the request runs code whose session changes cannot be seen (`DO`, `CALL`): the connection is retired after it.
pub(super) async fn execute(
    mut conn: bb8::PooledConnection<'_, Manager>,
    pool: &bb8::Pool<Manager>,
    stmts: &[StatementRequest],
    bound: Option<tokio::time::Instant>,
    opaque: bool,
    opts: Options,
    tx: TxOptions,
) -> Result<Vec<QueryResult>, Error> {
    let first_started = tokio::time::Instant::now();
    conn.in_request = true;
    let mut outcome = bounded(&mut conn, stmts, bound, opts, tx).await;
    if let Outcome::Recache(e) = &outcome {
        tracing::debug!(error = %e, "cached statement no longer fits the server: preparing again");
        conn.statements.clear();
        conn.client.clear_type_cache();
        outcome = bounded(&mut conn, stmts, bound, opts, tx).await;
    }
    if let Outcome::Done(Err(e @ Error::DbOutcomeUnknown { .. })) = outcome {
        // A READ ONLY transaction applied nothing, so losing its COMMIT reply is safe to retry like a stale
        // connection; any other request whose COMMIT was written is never resent (exactly once).
        outcome = if opts.read_only_tx(tx) {
            Outcome::Stale(e)
        } else {
            Outcome::Done(Err(e))
        };
    }
    conn.in_request = false;
    let first = match outcome {
        Outcome::Done(result) => {
            after_request(&mut conn, opaque);
            return result;
        }
        Outcome::Recache(e) => {
            after_request(&mut conn, opaque);
            return Err(e);
        }
        Outcome::Stale(first) => first,
    };
    crate::metrics::inc(crate::metrics::Counter::DbDeadConnectionsReplaced);
    tracing::info!(error = %first, "stale postgres connection (e.g. closed while frozen); retrying on a fresh one");
    conn.broken = true;
    drop(conn);
    // What the stale attempt left of the connect timeout (at least half of it: see `begin_bound`).
    let left = opts
        .connect_timeout
        .saturating_sub(first_started.elapsed())
        .max(opts.begin_bound());
    let fresh = tokio::time::timeout(left, pool.dedicated_connection()).await;
    let mut fresh = match fresh {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(e.unavailable()),
        Err(_) => {
            return Err(ConnectError {
                message: format!("no connection within {} ms", left.as_millis()),
                sqlstate: None,
            }
            .unavailable())
        }
    };
    fresh.in_request = true;
    let outcome = bounded(&mut fresh, stmts, bound, opts, tx).await;
    fresh.in_request = false;
    after_request(&mut fresh, opaque);
    if !fresh.broken && !fresh.retire && !fresh.client.is_closed() {
        // Donate the fresh connection to the pool (it took the dead one's slot).
        let _ = pool.add(fresh);
    }
    match outcome {
        Outcome::Done(result) => result,
        Outcome::Stale(e) | Outcome::Recache(e) => Err(e),
    }
}

/// Retires the connection when the request left its session different from a fresh one's: a reported parameter
/// changed (no round trip: see `pool`), or opaque code ran.
fn after_request(conn: &mut PgConn, opaque: bool) {
    if conn.broken {
        return;
    }
    if let Some(name) = conn.session_changed() {
        tracing::info!(
            parameter = name,
            "a request changed a session parameter: connection retired"
        );
        conn.retire = true;
    } else if opaque {
        tracing::debug!("the request ran DO / CALL: connection retired (its session changes cannot be seen)");
        conn.retire = true;
    }
}

/// One attempt within the request's deadline `bound`: fails at once when less than [`MIN_TIMEOUT`] is left;
/// cancels the running statement shortly after the deadline (see the module docs).
async fn bounded(
    conn: &mut PgConn,
    stmts: &[StatementRequest],
    bound: Option<tokio::time::Instant>,
    opts: Options,
    tx: TxOptions,
) -> Outcome {
    let Some(at) = bound else {
        // MAKENAIDE_DB_STATEMENT_TIMEOUT_MS=0 and no deadline: no limit, as configured.
        return attempt(conn, stmts, Duration::ZERO, opts.local_timeout(None), opts, tx).await;
    };
    let left = at.saturating_duration_since(tokio::time::Instant::now());
    if left < MIN_TIMEOUT {
        return Outcome::Done(Err(Error::DbTimeout {
            message: "the request's deadline is less than 1 ms away: nothing was run".into(),
            statement_index: None,
        }));
    }
    let canceller = conn.canceller();
    let (finished, cancel) = {
        let work = attempt(conn, stmts, left, opts.local_timeout(Some(left)), opts, tx);
        tokio::pin!(work);
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep_until(at + CANCEL_SLACK) => {}
        }
        cancel_and_wait(&canceller, work).await
    };
    let landed = cancel.is_ok()
        && matches!(&finished, Some(Outcome::Done(Err(Error::DbTimeout { message, .. }))) if message.contains("user request"));
    if finished.is_none() {
        // Abandoned mid-flight: the socket is dropped, the backend rolls back.
        conn.broken = true;
    } else if !landed {
        // The cancel may still be on its way and could stop a later request's statement.
        conn.retire = true;
    }
    let deadline_passed = |extra: &str| Error::DbTimeout {
        message: format!(
            "the request's deadline ({} ms) passed: the extension canceled it{extra}; the transaction was rolled back",
            left.as_millis()
        ),
        statement_index: None,
    };
    // With COMMIT in its own round trip, any end but success inside it is unknown; pipelined behind the statements,
    // only an abandoned one is (an answer that arrived says how it ended: a failed statement turns COMMIT into
    // ROLLBACK). A READ ONLY transaction wrote nothing either way.
    let unknown = if conn.commit_early {
        finished.is_none()
    } else {
        !matches!(finished, Some(Outcome::Done(Ok(_))))
    };
    if conn.commit_sent && unknown && !opts.read_only_tx(tx) {
        // The deadline caught the request inside its COMMIT round trip: PostgreSQL may have committed already, so
        // "rolled back" would be a lie (exactly once: the caller must not blindly resend).
        conn.broken = true;
        return Outcome::Done(Err(Error::DbOutcomeUnknown {
            message: format!(
                "the request's deadline ({} ms) passed while its COMMIT was in flight: the statements may or may not \
                 have been applied (not resent; resend only if they are idempotent)",
                left.as_millis()
            ),
        }));
    }
    match finished {
        None => Outcome::Done(Err(deadline_passed(&format!(
            " and closed the connection (the statement did not stop within {} ms)",
            CANCEL_GRACE.as_millis()
        )))),
        Some(Outcome::Done(Err(e @ Error::DbTimeout { .. }))) => match e.statement_index() {
            Some(i) => Outcome::Done(Err(deadline_passed("").at_statement(i))),
            None => Outcome::Done(Err(deadline_passed(""))),
        },
        // Finished on its own meanwhile (its result is the truth, e.g. committed).
        Some(other) => other,
    }
}

/// Sends the cancel request and waits (both within [`CANCEL_GRACE`]) for the work to end: `None` if it did not.
async fn cancel_and_wait<F: Future<Output = Outcome>>(
    canceller: &Canceller,
    work: std::pin::Pin<&mut F>,
) -> (Option<Outcome>, Result<(), ()>) {
    let cancel = async {
        match tokio::time::timeout(CANCEL_GRACE, canceller.cancel()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %ConnectError::from(e), "cancel request failed");
                Err(())
            }
            Err(_) => Err(()),
        }
    };
    let work = tokio::time::timeout(CANCEL_GRACE, work);
    let (cancel, work) = join(cancel, work).await;
    (work.ok(), cancel)
}

/// Connection-level failure: the socket or the backend is gone (vs. an error about the SQL).
fn is_connection_level(e: &tokio_postgres::Error) -> bool {
    match e.as_db_error() {
        None => true,
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03")
                || matches!(db.severity(), "FATAL" | "PANIC")
        }
    }
}

fn describe(db: &tokio_postgres::error::DbError) -> String {
    let mut msg = db.message().to_owned();
    if let Some(detail) = db.detail() {
        msg.push_str(" (DETAIL: ");
        msg.push_str(detail);
        msg.push(')');
    }
    if let Some(hint) = db.hint() {
        msg.push_str(" (HINT: ");
        msg.push_str(hint);
        msg.push(')');
    }
    msg
}

/// Maps a PostgreSQL error to the contract's codes.
fn map_error(e: &tokio_postgres::Error, timeout: Duration, cache: bool) -> Error {
    let Some(db) = e.as_db_error() else {
        return Error::DbUnavailable {
            message: format!("connection to PostgreSQL lost: {}", ConnectError::from_ref(e)),
            sqlstate: None,
        };
    };
    let code = db.code();
    let message = describe(db);
    if *code == SqlState::QUERY_CANCELED {
        return Error::DbTimeout {
            message: format!("statement timeout of {} ms exceeded: {message}", timeout.as_millis()),
            statement_index: None,
        };
    }
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        return Error::ReadOnly {
            message,
            statement_index: None,
        };
    }
    if is_connection_level(e) || *code == SqlState::TOO_MANY_CONNECTIONS {
        return Error::DbUnavailable {
            message: format!("PostgreSQL: {message}"),
            sqlstate: Some(code.code().to_owned()),
        };
    }
    // 26000 "prepared statement does not exist" / 42P05 "already exists": named statements do not survive
    // PgBouncer's transaction pooling before 1.21 (another server connection, or another client's statement).
    let message = if (*code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::DUPLICATE_PSTATEMENT) && cache
    {
        format!(
            "{message} (behind PgBouncer transaction pooling older than 1.21, set MAKENAIDE_DB_STATEMENT_CACHE=false)"
        )
    } else {
        message
    };
    Error::Sql {
        message,
        sqlstate: Some(code.code().to_owned()),
        statement_index: None,
        report: Some(Box::new(report(db))),
    }
}

/// Everything PostgreSQL reported besides SQLSTATE (the error bodies carry it).
fn report(db: &tokio_postgres::error::DbError) -> PgReport {
    use tokio_postgres::error::ErrorPosition;
    let owned = |s: Option<&str>| s.map(str::to_owned);
    let (position, internal_position, internal_query) = match db.position() {
        Some(ErrorPosition::Original(p)) => (Some(*p), None, None),
        Some(ErrorPosition::Internal { position, query }) => (None, Some(*position), Some(query.clone())),
        None => (None, None, None),
    };
    PgReport {
        message: db.message().to_owned(),
        fields: makenaide_contract::PgFields {
            detail: owned(db.detail()),
            hint: owned(db.hint()),
            position,
            schema: owned(db.schema()),
            table: owned(db.table()),
            column: owned(db.column()),
            constraint: owned(db.constraint()),
        },
        severity: db.severity().to_owned(),
        where_: owned(db.where_()),
        data_type: owned(db.datatype()),
        internal_position,
        internal_query,
        file: owned(db.file()),
        line: db.line(),
        routine: owned(db.routine()),
    }
}

impl ConnectError {
    fn from_ref(e: &tokio_postgres::Error) -> String {
        std::error::Error::source(e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}"))
    }
}

/// Whether an execution error of a *cached* statement means the cache is out of date (so preparing again fixes it):
/// - "cached plan must not change result type" (a statement prepared before a DDL): PostgreSQL has no SQLSTATE of
///   its own for it, it is 0A000 raised by plancache.c's `RevalidateCachedQuery`. The routine name does not depend
///   on `lc_messages`; the English message is the fallback for servers that do not report routines;
/// - 26000 "prepared statement does not exist" (`DEALLOCATE ALL` ran, e.g. inside a function);
/// - 42804 `datatype_mismatch` at re-planning: the parameter types inferred at prepare time no longer fit the
///   column after `ALTER TABLE ... TYPE` (a fresh statement gets that error at Parse, never at Execute).
fn is_stale_cache(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let code = db.code();
        (*code == SqlState::FEATURE_NOT_SUPPORTED
            && (db.routine() == Some("RevalidateCachedQuery")
                || db.message().contains("cached plan must not change result type")))
            || *code == SqlState::INVALID_SQL_STATEMENT_NAME
            || *code == SqlState::DATATYPE_MISMATCH
    })
}

enum BeginFailure {
    Db(tokio_postgres::Error),
    Timeout,
}

/// Sends `BEGIN...` and then `work` on the same connection without waiting in between (pipelining: `work`'s
/// requests are queued as soon as it is first polled, right after BEGIN's). If BEGIN fails or gets no reply within
/// `bound`, `work` is abandoned at once instead of waiting for a dead socket.
async fn with_begin<T>(
    client: &Client,
    begin_sql: &str,
    bound: Duration,
    work: impl Future<Output = T>,
) -> Result<T, BeginFailure> {
    // One round trip: BEGIN and everything pipelined behind it.
    crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
    let (failed_tx, failed_rx) = oneshot::channel::<()>();
    let begin = async {
        let res = tokio::time::timeout(bound, client.batch_execute(begin_sql)).await;
        if !matches!(res, Ok(Ok(()))) {
            let _ = failed_tx.send(());
        }
        res
    };
    let work = async move {
        tokio::select! {
            biased;
            out = work => Some(out),
            Ok(()) = failed_rx => None,
        }
    };
    // futures' `join` polls its first future first, so BEGIN is queued before the work's messages.
    match join(begin, work).await {
        (Ok(Ok(())), Some(out)) => Ok(out),
        (Ok(Ok(())), None) => Err(BeginFailure::Timeout),
        (Ok(Err(e)), _) => Err(BeginFailure::Db(e)),
        (Err(_), _) => Err(BeginFailure::Timeout),
    }
}

/// Converts every statement's JSON params to the inferred types (before anything is executed).
/// A bound parameter: converted from the caller's JSON for the inferred type (binary or text, see `convert`), or
/// text exactly as a SQL-over-HTTP driver sent it (`/sql`: the driver already rendered it as PostgreSQL text).
#[derive(Debug)]
enum Param {
    Json(Encoded),
    Text(Option<String>),
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Json(e) => e.to_sql(ty, out),
            Self::Text(None) => Ok(IsNull::Yes),
            Self::Text(Some(s)) => {
                out.put_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    fn encode_format(&self, ty: &Type) -> Format {
        match self {
            Self::Json(e) => e.encode_format(ty),
            Self::Text(_) => Format::Text,
        }
    }
    tokio_postgres::types::to_sql_checked!();
}

/// Converts every statement's params to the inferred types (before anything is executed).
fn encode_all(stmts: &[StatementRequest], prepared: &[Statement], values: Values) -> Result<Vec<Vec<Param>>, Error> {
    stmts
        .iter()
        .zip(prepared)
        .enumerate()
        .map(|(i, (req, st))| {
            let types = st.params();
            if req.params.len() != types.len() {
                return Err(Error::InvalidRequest {
                    message: format!(
                        "the statement has {} parameter(s) ($1..${}) but params has {} value(s)",
                        types.len(),
                        types.len(),
                        req.params.len()
                    ),
                    statement_index: Some(i),
                });
            }
            req.params
                .iter()
                .zip(types)
                .enumerate()
                .map(|(n, (v, ty))| match values {
                    Values::Text { .. } => serde_json::from_str(v.get())
                        .map(|v| Param::Text(text::param(&v)))
                        .map_err(|e| Error::InvalidParam {
                            message: format!("cannot bind ${}: {e}", n + 1),
                            statement_index: Some(i),
                        }),
                    Values::Json => encode_param(v, ty).map(Param::Json).map_err(|e| Error::InvalidParam {
                        message: format!("cannot bind ${} to {}: {e}", n + 1, type_name(ty)),
                        statement_index: Some(i),
                    }),
                })
                .collect()
        })
        .collect()
}

/// What a request's results have taken against its [`Limits`], shared by its statements (they are read one after
/// the other on the connection; atomics only because the request's future must be `Send`).
struct Budget {
    limits: Limits,
    rows: AtomicU64,
    bytes: AtomicU64,
}

impl Budget {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

/// Runs one statement and writes its rows as JSON while they stream in (decoding happens before COMMIT: a result
/// we cannot return rolls back). The row and size caps are checked per row, so a result over a cap is never held.
///
/// `drain`: COMMIT is already queued behind a read-write request. A cap crossed then cannot simply drop the
/// connection (PostgreSQL might finish and commit anyway): the statement is canceled and the rest of its rows read
/// and discarded, so the request's answer can say whether it was applied (`committed`: it had finished first).
async fn run_statement(
    client: &Client,
    st: &Statement,
    params: &[Param],
    budget: &Budget,
    values: Values,
    drain: Option<&Canceller>,
) -> Result<QueryResult, StmtError> {
    // `/sql` keeps PostgreSQL's own error (its SQLSTATE is the Neon error body's `code`, as the drivers expect).
    let param_error = |e: tokio_postgres::Error| match values {
        Values::Json => param_error(&e, st).unwrap_or(StmtError::Pg(e)),
        Values::Text { .. } => StmtError::Pg(e),
    };
    if st.columns().is_empty() {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let affected = client.execute(st, &refs).await.map_err(param_error)?;
        return Ok(QueryResult {
            row_count: affected,
            ..QueryResult::default()
        });
    }
    let stream = client.query_raw(st, params).await.map_err(param_error)?;
    futures_util::pin_mut!(stream);
    let columns: Vec<(String, String)> = st
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), type_name(c.type_())))
        .collect();
    let mut out = Vec::with_capacity(64);
    out.push(b'[');
    let mut count: u64 = 0;
    while let Some(row) = stream.try_next().await.map_err(StmtError::Pg)? {
        let before = out.len();
        if count > 0 {
            out.push(b',');
        }
        count += 1;
        let rows = budget.rows.fetch_add(1, Ordering::Relaxed) + 1;
        if rows > budget.limits.max_rows {
            return Err(over_cap(
                stream.as_mut(),
                drain,
                Error::RowLimitExceeded {
                    limit: budget.limits.max_rows,
                    committed: false,
                    hard: crate::config::HARD_MAX_ROWS,
                    statement_index: None,
                },
            )
            .await);
        }
        out.push(b'[');
        for (i, col) in st.columns().iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let why = |e: tokio_postgres::Error| {
                std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string)
            };
            let written = match values {
                Values::Json => match row.try_get::<_, RawCell>(i) {
                    Ok(RawCell(None)) => {
                        out.extend_from_slice(b"null");
                        Ok(())
                    }
                    Ok(RawCell(Some(raw))) => write_value(col.type_(), raw, &mut out),
                    Err(e) => Err(why(e)),
                },
                // `/sql`: PostgreSQL's text output (raw) or Neon's typed values.
                Values::Text { raw } => {
                    let cell = if raw {
                        row.try_get::<_, TextCell>(i).map(|c| c.0)
                    } else {
                        row.try_get::<_, TypedCell>(i).map(|c| c.0)
                    };
                    cell.map_err(why)
                        .and_then(|v| serde_json::to_writer(&mut out, &v).map_err(|e| e.to_string()))
                }
            };
            if let Err(why) = written {
                return Err(StmtError::Decode(format!(
                    "column {:?}: {why}; cast it in SQL, e.g. {}::text",
                    col.name(),
                    col.name()
                )));
            }
        }
        out.push(b']');
        let added = (out.len() - before) as u64;
        let bytes = budget.bytes.fetch_add(added, Ordering::Relaxed) + added;
        if bytes > budget.limits.max_response_bytes {
            return Err(over_cap(
                stream.as_mut(),
                drain,
                Error::ResponseTooLarge {
                    limit: budget.limits.max_response_bytes,
                    committed: false,
                    hard: crate::config::HARD_MAX_RESPONSE_BYTES,
                    statement_index: None,
                },
            )
            .await);
        }
    }
    out.push(b']');
    let meta = match values {
        Values::Json => Vec::new(),
        Values::Text { .. } => st
            .columns()
            .iter()
            .map(|c| ColumnMeta {
                type_oid: c.type_().oid(),
                table_oid: c.table_oid().unwrap_or(0),
                column_id: c.column_id().unwrap_or(0),
                type_size: text::type_size(c.type_()),
                type_modifier: c.type_modifier(),
            })
            .collect(),
    };
    Ok(QueryResult {
        columns,
        rows_json: out,
        row_count: count,
        meta,
    })
}

/// A cap crossed (see [`run_statement`]'s `drain`): with COMMIT queued behind a read-write request, the statement
/// is canceled and the rest of its rows read and discarded; it applied if it finished before the cancel landed.
async fn over_cap(
    mut stream: std::pin::Pin<&mut tokio_postgres::RowStream>,
    drain: Option<&Canceller>,
    e: Error,
) -> StmtError {
    let Some(canceller) = drain else {
        return StmtError::Limit(e);
    };
    if tokio::time::timeout(CANCEL_GRACE, canceller.cancel()).await.is_err() {
        tracing::warn!("the cancel request for a result over its cap got no answer");
    }
    let finished = loop {
        match stream.try_next().await {
            Ok(Some(_)) => {}
            Ok(None) => break true,
            Err(_) => break false,
        }
    };
    StmtError::Limit(e.applied(finished))
}

/// A PostgreSQL error raised while reading a parameter (its input function refused the text we sent: 22P02,
/// 22003, 22007, 22008, a domain's check...) becomes `invalid_param` naming `$n` and the type. PostgreSQL (13+)
/// puts "unnamed portal parameter $n" in the error's context for exactly those errors.
fn param_error(e: &tokio_postgres::Error, st: &Statement) -> Option<StmtError> {
    let db = e.as_db_error()?;
    let where_ = db.where_()?;
    let at = where_.find("portal parameter $")? + "portal parameter $".len();
    let digits: String = where_[at..].chars().take_while(char::is_ascii_digit).collect();
    let n: usize = digits.parse().ok()?;
    let ty = st.params().get(n.checked_sub(1)?)?;
    Some(StmtError::Param(Error::InvalidParam {
        message: format!(
            "cannot bind ${n} to {}: PostgreSQL: {} (SQLSTATE {})",
            type_name(ty),
            describe(db),
            db.code().code()
        ),
        statement_index: None,
    }))
}

/// Runs the statements pipelined (each sends its messages when first polled, in order). A cap crossed by one
/// abandons all at once (the rest of the rows are never read: the connection is then retired), unless `drain`
/// (see [`run_statement`]): then every statement's end is read, since the request's outcome depends on all of them;
/// every other outcome waits for all, so the first error reported is the first statement's.
async fn run_all(
    client: &Client,
    statements: &[Statement],
    encoded: &[Vec<Param>],
    limits: Limits,
    values: Values,
    drain: Option<&Canceller>,
) -> Vec<Result<QueryResult, StmtError>> {
    let budget = Budget::new(limits);
    let budget = &budget;
    if drain.is_some() {
        return join_all(
            statements
                .iter()
                .zip(encoded)
                .map(|(st, p)| run_statement(client, st, p, budget, values, drain)),
        )
        .await;
    }
    let all = try_join_all(
        statements
            .iter()
            .zip(encoded)
            .enumerate()
            .map(|(i, (st, p))| async move {
                match run_statement(client, st, p, budget, values, None).await {
                    Err(StmtError::Limit(e)) => Err((i, e)),
                    other => Ok(other),
                }
            }),
    )
    .await;
    match all {
        Ok(results) => results,
        Err((i, e)) => std::iter::repeat_with(|| Err(StmtError::Skipped))
            .take(i)
            .chain(std::iter::once(Err(StmtError::Limit(e))))
            .collect(),
    }
}

enum StmtError {
    Pg(tokio_postgres::Error),
    Decode(String),
    /// A parameter PostgreSQL's input function refused (`invalid_param`).
    Param(Error),
    /// A row or size cap crossed: the rows still in flight are not read, so the connection must be retired.
    Limit(Error),
    /// Abandoned because a later statement crossed a cap.
    Skipped,
}

/// `BEGIN [ISOLATION LEVEL ..., READ ONLY, DEFERRABLE][; SET LOCAL statement_timeout = n][; SELECT 1]`.
fn begin_sql(local_timeout: Option<Duration>, opts: Options, tx: TxOptions) -> String {
    let mut modes = Vec::new();
    if let Some(level) = tx.isolation {
        modes.push(format!("ISOLATION LEVEL {}", level.sql()));
    }
    if opts.read_only_tx(tx) {
        modes.push("READ ONLY".to_owned());
    }
    if tx.deferrable {
        modes.push("DEFERRABLE".to_owned());
    }
    // Read-only by configuration: the trailing `SELECT 1` takes the transaction's first snapshot, after which
    // PostgreSQL refuses `SET TRANSACTION READ WRITE` (and `SET transaction_read_only = off`) with 25001: without
    // it, a request could switch its own transaction back to read-write before its first query.
    let mut sql = String::with_capacity(64);
    sql.push_str("BEGIN");
    if !modes.is_empty() {
        sql.push(' ');
        sql.push_str(&modes.join(", "));
    }
    if let Some(t) = local_timeout {
        let _ = std::fmt::Write::write_fmt(
            &mut sql,
            format_args!(
                "; SET LOCAL statement_timeout = {}",
                t.as_millis().min(i32::MAX as u128)
            ),
        );
    }
    if opts.read_only {
        sql.push_str("; SELECT 1");
    }
    sql
}

/// Whether `COMMIT` can go in the same round trip as the statements: a `READ ONLY` transaction (nothing to
/// commit), or statements whose every result column converts to JSON (known from the prepared statement), so
/// that no cell can fail after PostgreSQL ran them. A row or size cap crossed by a read-write request is then
/// handled by canceling the statement ([`run_statement`]'s `drain`). Otherwise (`/sql`'s text rendering, a type
/// without a JSON conversion) `COMMIT` keeps a round trip of its own, after the results are known good. Not with
/// the statement cache off either: the statements' `Close` must reach the server before `COMMIT` (PgBouncer's
/// transaction pooling).
fn commit_early(statements: &[Statement], opts: Options, tx: TxOptions) -> bool {
    let convertible = |st: &Statement| {
        st.columns().is_empty()
            || (tx.values == Values::Json && st.columns().iter().all(|c| super::convert::writable(c.type_())))
    };
    opts.cache && (opts.read_only_tx(tx) || statements.iter().all(convertible))
}

/// Decides whether this attempt pipelines `COMMIT` ([`commit_early`]) and records it on the connection (the
/// deadline path reads it); with the `Canceller` a read-write request needs to cancel a statement whose result
/// crosses a cap ([`run_statement`]'s `drain`).
fn plan_commit(conn: &mut PgConn, statements: &[Statement], opts: Options, tx: TxOptions) -> (bool, Option<Canceller>) {
    let early = commit_early(statements, opts, tx);
    conn.commit_sent = early;
    conn.commit_early = early;
    (early, (early && !opts.read_only_tx(tx)).then(|| conn.canceller()))
}

/// The statements' replies, and `COMMIT`'s when it was pipelined behind them (`None`: not pipelined, or not
/// waited for because a cap abandoned the statements, whose connection is then dropped).
type Pipelined = (
    Vec<Result<QueryResult, StmtError>>,
    Option<Result<(), tokio_postgres::Error>>,
);

/// Runs the statements and, when `commit`, `COMMIT` right behind them (queued after their messages, so in the same
/// round trip). A failed statement aborts the transaction, so PostgreSQL answers that `COMMIT` as a `ROLLBACK`.
async fn run_pipeline(
    client: &Client,
    statements: &[Statement],
    encoded: &[Vec<Param>],
    limits: Limits,
    values: Values,
    commit: bool,
    drain: Option<&Canceller>,
) -> Pipelined {
    let run = run_all(client, statements, encoded, limits, values, drain);
    if !commit {
        return (run.await, None);
    }
    let commit = client.batch_execute("COMMIT");
    futures_util::pin_mut!(run, commit);
    // `select` polls `run` first, so COMMIT is queued after every statement's messages.
    match futures_util::future::select(run, commit).await {
        Either::Left((results, commit)) => {
            if drain.is_none() && results.iter().any(|r| matches!(r, Err(StmtError::Limit(_)))) {
                return (results, None);
            }
            (results, Some(commit.await))
        }
        Either::Right((reply, run)) => (run.await, Some(reply)),
    }
}

/// `db_outcome_unknown` for a request whose connection failed after its `COMMIT` was written.
fn outcome_unknown(why: &str) -> Error {
    Error::DbOutcomeUnknown {
        message: format!(
            "connection to PostgreSQL lost after COMMIT was sent and before its reply: the statements may or may not \
             have been applied (not resent; resend only if they are idempotent) ({why})"
        ),
    }
}

async fn attempt(
    conn: &mut PgConn,
    stmts: &[StatementRequest],
    timeout: Duration,
    local_timeout: Option<Duration>,
    opts: Options,
    tx: TxOptions,
) -> Outcome {
    conn.commit_sent = false;
    conn.commit_early = false;
    let begin_sql = begin_sql(local_timeout, opts, tx);
    let read_only = opts.read_only_tx(tx);
    let cached: Vec<Option<Statement>> = stmts
        .iter()
        .map(|s| {
            if opts.cache {
                conn.statements.get(&s.sql).cloned()
            } else {
                None
            }
        })
        .collect();

    let client = &conn.client;
    // BEGIN failed or went unanswered: nothing ran unless COMMIT was pipelined too (then only READ ONLY is safe).
    let stale = |f: BeginFailure, early: bool| {
        let lost = match f {
            BeginFailure::Db(e) if is_connection_level(&e) => map_error(&e, timeout, opts.cache),
            BeginFailure::Db(e) => return Outcome::Done(Err(map_error(&e, timeout, opts.cache))),
            BeginFailure::Timeout => Error::DbUnavailable {
                message: format!("PostgreSQL did not answer within {} ms", opts.begin_bound().as_millis()),
                sqlstate: None,
            },
        };
        if early && !read_only {
            Outcome::Done(Err(outcome_unknown(&lost.to_string())))
        } else {
            Outcome::Stale(lost)
        }
    };

    // Round trip 1 (cache misses only): BEGIN + Parse/Describe of the statements we have not prepared yet.
    let (statements, (results, commit_reply), early) = if cached.iter().all(Option::is_some) {
        let statements: Vec<Statement> = cached.iter().flatten().cloned().collect();
        let encoded = match encode_all(stmts, &statements, tx.values) {
            Ok(e) => e,
            // Maybe the parameter types changed since the statement was prepared (ALTER TABLE ... TYPE).
            Err(e) if opts.cache => return Outcome::Recache(e),
            Err(e) => return Outcome::Done(Err(e)),
        };
        // Hot path: BEGIN, every Execute and (when safe) COMMIT in one round trip.
        let (early, canceller) = plan_commit(conn, &statements, opts, tx);
        let client = &conn.client;
        let work = run_pipeline(
            client,
            &statements,
            &encoded,
            opts.limits,
            tx.values,
            early,
            canceller.as_ref(),
        );
        match with_begin(client, &begin_sql, opts.begin_bound(), work).await {
            Ok(results) => (statements, results, early),
            Err(f) => {
                let outcome = stale(f, early);
                // BEGIN failed: whatever was pipelined behind it was abandoned mid-flight; never reuse this
                // connection (it may even sit in an open transaction).
                conn.broken = true;
                return outcome;
            }
        }
    } else {
        let prepares = join_all(stmts.iter().zip(&cached).map(|(s, c)| async move {
            match c {
                Some(st) => Ok(st.clone()),
                None => client.prepare(&s.sql).await,
            }
        }));
        let prepared = match with_begin(client, &begin_sql, opts.begin_bound(), prepares).await {
            Ok(p) => p,
            Err(f) => {
                let outcome = stale(f, false);
                // BEGIN failed: whatever was pipelined behind it was abandoned mid-flight; never reuse this
                // connection (it may even sit in an open transaction).
                conn.broken = true;
                return outcome;
            }
        };
        let mut statements = Vec::with_capacity(prepared.len());
        let mut first_err = None;
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Ok(st) => statements.push(st),
                Err(e) if first_err.is_none() => first_err = Some((i, e)),
                Err(_) => {}
            }
        }
        if opts.cache {
            for (req, st) in stmts.iter().zip(&statements) {
                conn.cache_statement(&req.sql, st.clone());
            }
        }
        if let Some((i, e)) = first_err {
            if is_connection_level(&e) {
                conn.broken = true;
            }
            rollback(conn, statements).await;
            if i > 0 && !conn.broken {
                // Maybe the statement depends on an earlier one (CREATE TABLE then INSERT in one transaction):
                // it can only be prepared after that one ran. Redo the transaction statement by statement.
                return sequential(conn, stmts, &begin_sql, timeout, opts, tx.values).await;
            }
            return Outcome::Done(Err(map_error(&e, timeout, opts.cache).at_statement(i)));
        }
        let encoded = match encode_all(stmts, &statements, tx.values) {
            Ok(e) => e,
            Err(e) => {
                rollback(conn, statements).await;
                let was_cached = e
                    .statement_index()
                    .is_some_and(|i| cached.get(i).is_some_and(Option::is_some));
                return if was_cached {
                    Outcome::Recache(e)
                } else {
                    Outcome::Done(Err(e))
                };
            }
        };
        // Round trip 2: every Execute and (when safe) COMMIT, pipelined.
        let (early, canceller) = plan_commit(conn, &statements, opts, tx);
        crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
        let results = run_pipeline(
            &conn.client,
            &statements,
            &encoded,
            opts.limits,
            tx.values,
            early,
            canceller.as_ref(),
        )
        .await;
        (statements, results, early)
    };

    // A statement PostgreSQL refused aborts the transaction (COMMIT then rolls back).
    let aborted = results.iter().any(|r| {
        matches!(r, Err(StmtError::Pg(e)) if !is_connection_level(e)) || matches!(r, Err(StmtError::Param(_)))
    });
    let drained = early && !read_only;
    let mut out = Vec::with_capacity(results.len());
    let mut failure = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(q) => out.push(q),
            Err(_) if failure.is_some() => {}
            Err(StmtError::Pg(e)) if cached[i].is_some() && is_stale_cache(&e) => {
                failure = Some(Err(map_error(&e, timeout, opts.cache).at_statement(i)))
            }
            Err(StmtError::Pg(e)) if early && is_connection_level(&e) => {
                // Everything was written, COMMIT included: PostgreSQL may have run it all.
                conn.broken = true;
                failure = Some(Ok(outcome_unknown(&ConnectError::from_ref(&e))));
            }
            Err(StmtError::Pg(e)) => failure = Some(Ok(map_error(&e, timeout, opts.cache).at_statement(i))),
            Err(StmtError::Decode(m)) => {
                failure = Some(Ok(Error::InvalidRequest {
                    message: m,
                    statement_index: Some(i),
                }))
            }
            Err(StmtError::Param(e)) => failure = Some(Ok(e.at_statement(i))),
            Err(StmtError::Limit(e)) if drained => {
                // Read to the end, but the cancel sent may still land on a later request's statement.
                conn.retire = true;
                failure = Some(Ok(e.at_statement(i)));
            }
            Err(StmtError::Limit(e)) => {
                // Rows are still on their way: never reuse this connection (dropping it ends the server's
                // transaction, which rolls back).
                conn.broken = true;
                failure = Some(Ok(e.at_statement(i)));
            }
            Err(StmtError::Skipped) => {}
        }
    }
    if early {
        // COMMIT was pipelined: the transaction has already ended, so nothing is left to send.
        drop(statements);
        if !matches!(commit_reply, Some(Ok(()))) {
            conn.broken = true;
        }
        return match (failure, commit_reply) {
            (Some(Err(e)), _) => Outcome::Recache(e),
            // A cap crossed after the statement had finished (see `over_cap`): applied if nothing else failed and
            // COMMIT succeeded.
            (Some(Ok(err)), reply) if err.was_applied() => match reply {
                Some(Ok(())) if !aborted => Outcome::Done(Err(err)),
                Some(Err(e)) if is_connection_level(&e) || e.code() == Some(&SqlState::QUERY_CANCELED) => {
                    Outcome::Done(Err(outcome_unknown(&ConnectError::from_ref(&e))))
                }
                _ => Outcome::Done(Err(err.applied(false))),
            },
            // A statement failed: PostgreSQL ended the transaction with a ROLLBACK (or the connection went with it).
            (Some(Ok(err)), _) => Outcome::Done(Err(err)),
            (None, Some(Ok(()))) => Outcome::Done(Ok(out)),
            (None, Some(Err(e))) if is_connection_level(&e) => {
                Outcome::Done(Err(outcome_unknown(&ConnectError::from_ref(&e))))
            }
            // A cancel that reached COMMIT itself could have come after the commit was durable.
            (None, Some(Err(e))) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
                Outcome::Done(Err(outcome_unknown("COMMIT was canceled")))
            }
            // Deferred constraints and serialization failures fail at COMMIT, which then rolls back.
            (None, Some(Err(e))) => Outcome::Done(Err(map_error(&e, Duration::ZERO, false))),
            (None, None) => Outcome::Done(Err(Error::Internal("COMMIT reply not read".into()))),
        };
    }
    match failure {
        Some(Err(e)) => {
            rollback(conn, statements).await;
            Outcome::Recache(e)
        }
        Some(Ok(err)) => {
            if matches!(err, Error::DbUnavailable { .. }) {
                conn.broken = true;
            }
            rollback(conn, statements).await;
            Outcome::Done(Err(err))
        }
        None => match finish(conn, statements, true).await {
            Ok(()) => Outcome::Done(Ok(out)),
            Err(e) => Outcome::Done(Err(e)),
        },
    }
}

/// Fallback for transactions whose statements cannot all be prepared up front: BEGIN, then prepare and execute
/// each statement in turn (two round trips per new statement), then COMMIT.
async fn sequential(
    conn: &mut PgConn,
    stmts: &[StatementRequest],
    begin_sql: &str,
    timeout: Duration,
    opts: Options,
    values: Values,
) -> Outcome {
    crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
    match tokio::time::timeout(opts.begin_bound(), conn.client.batch_execute(begin_sql)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if is_connection_level(&e) => return Outcome::Stale(map_error(&e, timeout, opts.cache)),
        Ok(Err(e)) => return Outcome::Done(Err(map_error(&e, timeout, opts.cache))),
        Err(_) => {
            return Outcome::Stale(Error::DbUnavailable {
                message: format!("PostgreSQL did not answer within {} ms", opts.begin_bound().as_millis()),
                sqlstate: None,
            })
        }
    }
    let mut statements = Vec::with_capacity(stmts.len());
    let mut out = Vec::with_capacity(stmts.len());
    let budget = Budget::new(opts.limits);
    for (i, req) in stmts.iter().enumerate() {
        let cached = if opts.cache {
            conn.statements.get(&req.sql).cloned()
        } else {
            None
        };
        let was_cached = cached.is_some();
        let st = match cached {
            Some(st) => st,
            None => match round_trip(conn.client.prepare(&req.sql)).await {
                Ok(st) => {
                    if opts.cache {
                        conn.cache_statement(&req.sql, st.clone());
                    }
                    st
                }
                Err(e) => {
                    let err = map_error(&e, timeout, opts.cache).at_statement(i);
                    if matches!(err, Error::DbUnavailable { .. }) {
                        conn.broken = true;
                    }
                    rollback(conn, statements).await;
                    return Outcome::Done(Err(err));
                }
            },
        };
        let encoded = match encode_all(std::slice::from_ref(req), std::slice::from_ref(&st), values) {
            Ok(mut e) => e.pop().unwrap_or_default(),
            Err(e) => {
                rollback(conn, statements).await;
                return Outcome::Done(Err(e.at_statement(i)));
            }
        };
        crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
        let result = run_statement(&conn.client, &st, &encoded, &budget, values, None).await;
        statements.push(st);
        match result {
            Ok(q) => out.push(q),
            Err(e) => {
                let stale = was_cached && matches!(&e, StmtError::Pg(e) if is_stale_cache(e));
                let err = match e {
                    StmtError::Pg(e) => map_error(&e, timeout, opts.cache),
                    StmtError::Decode(m) => Error::invalid_request(m),
                    StmtError::Param(e) => e,
                    StmtError::Limit(e) => {
                        conn.broken = true;
                        e
                    }
                    StmtError::Skipped => Error::Internal("statement skipped".into()),
                }
                .at_statement(i);
                if matches!(err, Error::DbUnavailable { .. }) {
                    conn.broken = true;
                }
                rollback(conn, statements).await;
                return if stale {
                    Outcome::Recache(err)
                } else {
                    Outcome::Done(Err(err))
                };
            }
        }
    }
    match finish(conn, statements, true).await {
        Ok(()) => Outcome::Done(Ok(out)),
        Err(e) => Outcome::Done(Err(e)),
    }
}

/// Counts one round trip (`DbRoundTrips`) and awaits it.
async fn round_trip<T>(f: impl Future<Output = T>) -> T {
    crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
    f.await
}

async fn rollback(conn: &mut PgConn, statements: Vec<Statement>) {
    // Errors are irrelevant here: a failed ROLLBACK marks the connection broken, and the server rolls back anyway
    // when the connection goes away.
    let _ = finish(conn, statements, false).await;
}

/// Ends the transaction. In uncached mode the statements are closed first (their `Close` messages are queued
/// before `COMMIT`/`ROLLBACK`), so they never outlive the transaction (PgBouncer transaction pooling).
async fn finish(conn: &mut PgConn, statements: Vec<Statement>, commit: bool) -> Result<(), Error> {
    drop(statements);
    if conn.statements.is_empty() {
        conn.client.clear_type_cache();
    }
    if conn.broken || (commit && conn.client.is_closed()) {
        conn.broken = true;
        if !commit {
            return Ok(());
        }
        // COMMIT was never written: nothing of the request can be durable.
        return Err(Error::DbUnavailable {
            message: "connection to PostgreSQL lost before COMMIT was sent: nothing was committed".into(),
            sqlstate: None,
        });
    }
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    conn.commit_sent = commit;
    crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
    match conn.client.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(e) => {
            if is_connection_level(&e) || !commit {
                // A ROLLBACK that failed leaves the transaction state unknown: never reuse the connection.
                conn.broken = true;
            }
            if !commit {
                return Ok(());
            }
            if is_connection_level(&e) {
                // COMMIT was written: the server may have committed before the connection failed. Exactly once
                // means never resending this request ourselves (see `execute` for the read-only exception).
                return Err(Error::DbOutcomeUnknown {
                    message: format!(
                        "connection to PostgreSQL lost after COMMIT was sent and before its reply: the statements may or may not have been applied (not resent; resend only if they are idempotent) ({})",
                        ConnectError::from_ref(&e)
                    ),
                });
            }
            // Deferred constraints fail at COMMIT.
            Err(map_error(&e, Duration::ZERO, false))
        }
    }
}
