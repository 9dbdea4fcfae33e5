//! One request = one transaction, in as few round trips as is safe.
//!
//! Hot path (every statement already prepared on this connection):
//! 1. `BEGIN [READ ONLY]; SET LOCAL statement_timeout = n` pipelined with Bind/Execute of every statement;
//! 2. `COMMIT` (or `ROLLBACK` after an error).
//!
//! A statement not yet in the connection's cache costs one more round trip first (Parse/Describe, pipelined with
//! `BEGIN`): we need the parameter types PostgreSQL infers to convert the JSON values.
//!
//! `COMMIT` deliberately gets its own round trip: until it is sent, nothing of the request can be durable, so when
//! the first round trip fails at the connection level (typically a backend killed while Lambda had us frozen, or a
//! middlebox that forgot the flow) the whole request is retried once on a *fresh* connection, transparently and
//! without any risk of applying it twice. Pipelining `COMMIT` into the first round trip would save one round trip
//! but could not give that guarantee. Statement errors abort the transaction, so later pipelined statements fail
//! with 25P02 and the first error is the one reported.
//!
//! The first reply (to `BEGIN`) must arrive within half the connect timeout: PostgreSQL flushes it at once
//! (ReadyForQuery), so waiting longer only means the socket is dead (e.g. black-holed): the connection is
//! dropped and the request retried on a fresh one with the rest of the connect timeout, so a database that
//! accepts TCP but never answers still gets its 503 within `MAKENAIDE_DB_CONNECT_TIMEOUT_MS` (the contract).
//!
//! With the statement cache off (`MAKENAIDE_DB_STATEMENT_CACHE=false`, for PgBouncer transaction pooling before
//! 1.21) statements are prepared per request and closed (and tokio-postgres' type-info statements flushed) before
//! `COMMIT`/`ROLLBACK` is sent, so no named statement ever outlives the transaction that created it.

use super::convert::{encode_param, type_name, Encoded, JsonCell};
use super::pool::{ConnectError, Manager, PgConn};
use super::text::{self, TextCell, TypedCell};
use super::{ColumnMeta, QueryResult, StatementRequest, TxOptions, Values};
use crate::error::{Error, PgReport};
use bytes::{BufMut, BytesMut};
use futures_util::future::{join, join_all};
use std::future::Future;
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
}

impl Options {
    /// How long the first reply (to `BEGIN`) may take on a pooled connection before it is presumed dead: half the
    /// connect timeout, leaving the other half for the retry on a fresh connection.
    fn begin_bound(&self) -> Duration {
        self.connect_timeout / 2
    }
}

/// How one attempt ended.
enum Outcome {
    Done(Result<Vec<QueryResult>, Error>),
    /// The first round trip failed at the connection level: nothing can have been committed; retry elsewhere.
    Stale(Error),
    /// A cached statement's result type changed (DDL since it was prepared): flush the cache and retry.
    PlanChanged,
}

pub(super) async fn execute(
    mut conn: bb8::PooledConnection<'_, Manager>,
    pool: &bb8::Pool<Manager>,
    stmts: &[StatementRequest],
    timeout: Duration,
    opts: Options,
    tx: TxOptions,
) -> Result<Vec<QueryResult>, Error> {
    let first_started = tokio::time::Instant::now();
    let mut outcome = attempt(&mut conn, stmts, timeout, opts, tx).await;
    if matches!(outcome, Outcome::PlanChanged) {
        conn.statements.clear();
        outcome = attempt(&mut conn, stmts, timeout, opts, tx).await;
    }
    match outcome {
        Outcome::Done(result) => result,
        Outcome::PlanChanged => Err(Error::Sql {
            message: "cached plan must not change result type (the schema changed twice during the request)".into(),
            sqlstate: Some("0A000".into()),
            statement_index: None,
            report: None,
        }),
        Outcome::Stale(first) => {
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
            let outcome = attempt(&mut fresh, stmts, timeout, opts, tx).await;
            if !fresh.broken && !fresh.client.is_closed() {
                // Donate the fresh connection to the pool (it took the dead one's slot).
                let _ = pool.add(fresh);
            }
            match outcome {
                Outcome::Done(result) => result,
                Outcome::Stale(e) => Err(e),
                Outcome::PlanChanged => Err(Error::Internal("plan changed on a fresh connection".into())),
            }
        }
    }
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

/// PostgreSQL has no SQLSTATE of its own for "cached plan must not change result type" (a statement prepared
/// before a DDL): it is 0A000 raised by plancache.c's `RevalidateCachedQuery`. The routine name does not depend on
/// `lc_messages`; the English message is the fallback for servers that do not report routines.
fn is_plan_changed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::FEATURE_NOT_SUPPORTED
            && (db.routine() == Some("RevalidateCachedQuery")
                || db.message().contains("cached plan must not change result type"))
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

/// A bound parameter: binary (converted from JSON by inferred type) or text for PostgreSQL to parse (`/sql`).
#[derive(Debug)]
enum Param {
    Binary(Encoded),
    Text(Option<String>),
}

impl ToSql for Param {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Binary(e) => e.to_sql(ty, out),
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
    fn encode_format(&self, _ty: &Type) -> Format {
        match self {
            Self::Binary(_) => Format::Binary,
            Self::Text(_) => Format::Text,
        }
    }
    tokio_postgres::types::to_sql_checked!();
}

/// Converts every statement's params (before anything is executed): JSON to the inferred types, or to text.
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
                    Values::Text { .. } => Ok(Param::Text(text::param(v))),
                    Values::Json => encode_param(v, ty).map(Param::Binary).map_err(|e| Error::InvalidParam {
                        message: format!("cannot bind ${} to {}: {e}", n + 1, type_name(ty)),
                        statement_index: Some(i),
                    }),
                })
                .collect()
        })
        .collect()
}

/// Runs one statement and decodes its rows (decoding happens before COMMIT: a result we cannot return rolls back).
async fn run_statement(
    client: &Client,
    st: &Statement,
    params: &[Param],
    values: Values,
) -> Result<QueryResult, StmtError> {
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    if st.columns().is_empty() {
        let affected = client.execute(st, &refs).await.map_err(StmtError::Pg)?;
        return Ok(QueryResult {
            row_count: affected,
            ..QueryResult::default()
        });
    }
    let rows = client.query(st, &refs).await.map_err(StmtError::Pg)?;
    let columns: Vec<(String, String)> = st
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), type_name(c.type_())))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut cells = Vec::with_capacity(columns.len());
        for (i, col) in st.columns().iter().enumerate() {
            let cell = match values {
                Values::Json => row.try_get::<_, JsonCell>(i).map(|c| c.0),
                Values::Text { raw: true } => row.try_get::<_, TextCell>(i).map(|c| c.0),
                Values::Text { raw: false } => row.try_get::<_, TypedCell>(i).map(|c| c.0),
            };
            match cell {
                Ok(v) => cells.push(v),
                Err(e) => {
                    let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
                    return Err(StmtError::Decode(format!(
                        "column {:?}: {why}; cast it in SQL, e.g. {}::text",
                        col.name(),
                        col.name()
                    )));
                }
            }
        }
        out.push(cells);
    }
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
        row_count: out.len() as u64,
        rows: out,
        meta,
    })
}

enum StmtError {
    Pg(tokio_postgres::Error),
    Decode(String),
}

/// `BEGIN [ISOLATION LEVEL ..., READ ONLY, DEFERRABLE]; SET LOCAL statement_timeout = n[; SELECT 1]`.
fn begin_sql(timeout: Duration, opts: Options, tx: TxOptions) -> String {
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128);
    let mut modes = Vec::new();
    if let Some(level) = tx.isolation {
        modes.push(format!("ISOLATION LEVEL {}", level.sql()));
    }
    if opts.read_only || tx.read_only == Some(true) {
        modes.push("READ ONLY".to_owned());
    }
    if tx.deferrable {
        modes.push("DEFERRABLE".to_owned());
    }
    // Read-only by configuration: the trailing `SELECT 1` takes the transaction's first snapshot, after which
    // PostgreSQL refuses `SET TRANSACTION READ WRITE` (and `SET transaction_read_only = off`) with 25001: without
    // it, a request could switch its own transaction back to read-write before its first query.
    format!(
        "BEGIN{}{}; SET LOCAL statement_timeout = {timeout_ms}{}",
        if modes.is_empty() { "" } else { " " },
        modes.join(", "),
        if opts.read_only { "; SELECT 1" } else { "" }
    )
}

async fn attempt(
    conn: &mut PgConn,
    stmts: &[StatementRequest],
    timeout: Duration,
    opts: Options,
    tx: TxOptions,
) -> Outcome {
    let begin_sql = begin_sql(timeout, opts, tx);
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
    let stale = |f: BeginFailure| match f {
        BeginFailure::Db(e) if is_connection_level(&e) => Outcome::Stale(map_error(&e, timeout, opts.cache)),
        BeginFailure::Db(e) => Outcome::Done(Err(map_error(&e, timeout, opts.cache))),
        BeginFailure::Timeout => Outcome::Stale(Error::DbUnavailable {
            message: format!("PostgreSQL did not answer within {} ms", opts.begin_bound().as_millis()),
            sqlstate: None,
        }),
    };

    // Round trip 1 (cache misses only): BEGIN + Parse/Describe of the statements we have not prepared yet.
    let (statements, results) = if cached.iter().all(Option::is_some) {
        let statements: Vec<Statement> = cached.into_iter().flatten().collect();
        let encoded = match encode_all(stmts, &statements, tx.values) {
            Ok(e) => e,
            Err(e) => return Outcome::Done(Err(e)),
        };
        // Hot path: BEGIN and every Execute in one round trip.
        let work = join_all(
            statements
                .iter()
                .zip(&encoded)
                .map(|(st, p)| run_statement(client, st, p, tx.values)),
        );
        match with_begin(client, &begin_sql, opts.begin_bound(), work).await {
            Ok(results) => (statements, results),
            Err(f) => {
                let outcome = stale(f);
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
                let outcome = stale(f);
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
        let client = &conn.client;
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
                return Outcome::Done(Err(e));
            }
        };
        // Round trip 2: every Execute, pipelined.
        crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
        let results = join_all(
            statements
                .iter()
                .zip(&encoded)
                .map(|(st, p)| run_statement(client, st, p, tx.values)),
        )
        .await;
        (statements, results)
    };

    let mut out = Vec::with_capacity(results.len());
    let mut failure = None;
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(q) => out.push(q),
            Err(_) if failure.is_some() => {}
            Err(StmtError::Pg(e)) if is_plan_changed(&e) => failure = Some(Err(())),
            Err(StmtError::Pg(e)) => failure = Some(Ok(map_error(&e, timeout, opts.cache).at_statement(i))),
            Err(StmtError::Decode(m)) => {
                failure = Some(Ok(Error::InvalidRequest {
                    message: m,
                    statement_index: Some(i),
                }))
            }
        }
    }
    match failure {
        Some(Err(())) => {
            rollback(conn, statements).await;
            Outcome::PlanChanged
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
    for (i, req) in stmts.iter().enumerate() {
        let cached = if opts.cache {
            conn.statements.get(&req.sql).cloned()
        } else {
            None
        };
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
        let result = run_statement(&conn.client, &st, &encoded, values).await;
        statements.push(st);
        match result {
            Ok(q) => out.push(q),
            Err(e) => {
                let err = match e {
                    StmtError::Pg(e) => map_error(&e, timeout, opts.cache),
                    StmtError::Decode(m) => Error::invalid_request(m),
                }
                .at_statement(i);
                if matches!(err, Error::DbUnavailable { .. }) {
                    conn.broken = true;
                }
                rollback(conn, statements).await;
                return Outcome::Done(Err(err));
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
    if conn.broken {
        return Ok(());
    }
    let sql = if commit { "COMMIT" } else { "ROLLBACK" };
    crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
    match conn.client.batch_execute(sql).await {
        Ok(()) => Ok(()),
        Err(e) => {
            if is_connection_level(&e) {
                conn.broken = true;
            }
            if !commit {
                return Ok(());
            }
            if is_connection_level(&e) {
                return Err(Error::DbUnavailable {
                    message: format!(
                        "connection to PostgreSQL lost during COMMIT: the transaction may or may not have been committed ({})",
                        ConnectError::from_ref(&e)
                    ),
                    sqlstate: e.code().map(|c| c.code().to_owned()),
                });
            }
            // Deferred constraints fail at COMMIT.
            Err(map_error(&e, Duration::ZERO, false))
        }
    }
}
