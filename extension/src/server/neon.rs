//! Neon's SQL-over-HTTP wire format on `POST /sql`, so `@neondatabase/serverless` (`neon()`) and
//! `drizzle-orm/neon-http` talk to the extension unchanged (README "SQL-over-HTTP drivers (Neon)").
//!
//! Protocol only: the body (`{query, params, arrayMode?}` or `{queries: [...]}`), the `Neon-*` headers, the result
//! objects and Neon's error body. Execution is the same as `/db/*` (`Db::transaction_with`: one transaction per
//! request, the extension's pool, its token), with parameters sent as text and values rendered as PostgreSQL's
//! text output (`db::text`). `Neon-Connection-String` is accepted and ignored.
//!
//! Errors: those of PostgreSQL and of the request answer 400 with Neon's body (`message`, `code` = SQLSTATE, and
//! `detail`, `hint`, `position`, `severity`, `where`, `schema`, `table`, `column`, `dataType`, `constraint`, ...):
//! the driver reads exactly a 400's fields into its `NeonDbError`. The extension's other errors keep their
//! contract status with the same body shape, `code` being the contract's code.

use super::router::json_response;
use super::Body;
use crate::db::{QueryResult, StatementRequest, TxOptions, Values};
use crate::error::Error;
use crate::state::AppState;
use http::{HeaderMap, Response, StatusCode};
use makenaide_contract::headers::{
    NEON_ARRAY_MODE, NEON_BATCH_DEFERRABLE, NEON_BATCH_ISOLATION_LEVEL, NEON_BATCH_READ_ONLY, NEON_RAW_TEXT_OUTPUT,
};
use makenaide_contract::Isolation;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// Queries of one batch at most (as `/db/transaction`).
const MAX_QUERIES: usize = 1000;

/// One query of the request, with its own `arrayMode` when it gave one.
struct Query {
    stmt: StatementRequest,
    array_mode: Option<bool>,
}

/// Answers one `POST /sql` whose body has been read.
pub(crate) async fn handle(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    deadline: Option<Instant>,
) -> Response<Body> {
    match run(state, headers, body, deadline).await {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

async fn run(state: &AppState, headers: &HeaderMap, body: &[u8], deadline: Option<Instant>) -> Result<Value, Error> {
    let is_true = |name: &str| headers.get(name).is_some_and(|v| v.as_bytes() == b"true");
    let array_mode = is_true(NEON_ARRAY_MODE);
    let values = Values::Text {
        raw: is_true(NEON_RAW_TEXT_OUTPUT),
    };
    let map = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => {
            return Err(Error::invalid_request(
                "the body must be a JSON object {query, params} or {queries}",
            ))
        }
        Err(e) => return Err(Error::InvalidJson(format!("the body is not valid JSON: {e}"))),
    };
    // The row and response-size caps are the configured ones (`None` below), as for `/db/*`: a result past them
    // is `row_limit_exceeded` / `response_too_large` before it is held (Neon answers 507 over its own 10 MB).
    let Some(queries) = map.get("queries") else {
        let q = query(&map, "")?;
        let (command, array_mode) = (command(&q.stmt.sql), q.array_mode.unwrap_or(array_mode));
        let tx = TxOptions {
            values,
            ..TxOptions::default()
        };
        let mut results = state
            .db()
            .transaction_with(vec![q.stmt], None, deadline, None, tx)
            .await
            .map_err(Error::without_statement_index)?;
        let r = results.pop().unwrap_or_default();
        return Ok(result(command, &r, array_mode));
    };
    let Value::Array(items) = queries else {
        return Err(Error::invalid_request("queries must be an array"));
    };
    if items.len() > MAX_QUERIES {
        return Err(Error::invalid_request(format!(
            "queries has more than {MAX_QUERIES} entries"
        )));
    }
    let queries = items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(m) => query(m, &format!("queries[{i}].")).map_err(|e| e.at_statement(i)),
            _ => {
                Err(Error::invalid_request(format!("queries[{i}] must be an object {{query, params}}")).at_statement(i))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if queries.is_empty() {
        return Ok(json!({ "results": [] }));
    }
    let isolation = match headers.get(NEON_BATCH_ISOLATION_LEVEL).map(http::HeaderValue::as_bytes) {
        None => None,
        // PostgreSQL runs READ UNCOMMITTED as READ COMMITTED.
        Some(b"ReadUncommitted" | b"ReadCommitted") => Some(Isolation::ReadCommitted),
        Some(b"RepeatableRead") => Some(Isolation::RepeatableRead),
        Some(b"Serializable") => Some(Isolation::Serializable),
        Some(_) => {
            return Err(Error::invalid_request(
                "invalid isolation level: Neon-Batch-Isolation-Level must be ReadUncommitted, ReadCommitted, RepeatableRead or Serializable",
            ))
        }
    };
    let tx = TxOptions {
        // Anything but `true` means "not requested", as at Neon's proxy (never a refusal under read-only mode).
        read_only: is_true(NEON_BATCH_READ_ONLY).then_some(true),
        isolation,
        deferrable: is_true(NEON_BATCH_DEFERRABLE),
        values,
    };
    let shapes: Vec<(String, bool)> = queries
        .iter()
        .map(|q| (command(&q.stmt.sql), q.array_mode.unwrap_or(array_mode)))
        .collect();
    let stmts = queries.into_iter().map(|q| q.stmt).collect();
    let results = state.db().transaction_with(stmts, None, deadline, None, tx).await?;
    let results: Vec<Value> = shapes
        .into_iter()
        .zip(&results)
        .map(|((command, array_mode), r)| result(command, r, array_mode))
        .collect();
    Ok(json!({ "results": results }))
}

/// `{query, params?, arrayMode?}`. Other fields are ignored, as at Neon's proxy.
fn query(map: &Map<String, Value>, at: &str) -> Result<Query, Error> {
    let sql = match map.get("query") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(Error::invalid_request(format!("{at}query is empty"))),
        Some(_) => return Err(Error::invalid_request(format!("{at}query must be a string"))),
        None => return Err(Error::invalid_request(format!("{at}query is required"))),
    };
    if let Some(word) = crate::db::sql::transaction_control(&sql) {
        return Err(Error::invalid_request(format!(
            "{at}query is a transaction control statement ({word}): each request already runs in its own transaction \
             (send several queries as one batch, {{\"queries\": [...]}})"
        )));
    }
    let params = match map.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(p)) => p.clone(),
        Some(_) => return Err(Error::invalid_request(format!("{at}params must be an array"))),
    };
    let array_mode = match map.get("arrayMode") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(Error::invalid_request(format!("{at}arrayMode must be a boolean"))),
    };
    Ok(Query {
        stmt: StatementRequest::from_values(sql, &params),
        array_mode,
    })
}

/// `{command, rowCount, rows, fields, rowAsArray}`. `rowCount` is null for commands without a count (DDL, SET).
fn result(command: String, r: &QueryResult, array_mode: bool) -> Value {
    let counted = matches!(
        command.as_str(),
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY"
    );
    let fields: Vec<Value> = r
        .columns
        .iter()
        .zip(&r.meta)
        .map(|((name, _), m)| {
            json!({
                "name": name, "dataTypeID": m.type_oid, "tableID": m.table_oid, "columnID": m.column_id,
                "dataTypeSize": m.type_size, "dataTypeModifier": m.type_modifier, "format": "text",
            })
        })
        .collect();
    let parsed = r.rows();
    let rows: Vec<Value> = if array_mode {
        parsed.into_iter().map(Value::Array).collect()
    } else {
        parsed
            .iter()
            .map(|row| {
                let obj: Map<String, Value> = r
                    .columns
                    .iter()
                    .map(|(n, _)| n.clone())
                    .zip(row.iter().cloned())
                    .collect();
                Value::Object(obj)
            })
            .collect()
    };
    json!({
        "command": command,
        "rowCount": if counted { json!(r.row_count) } else { Value::Null },
        "rows": rows,
        "fields": fields,
        "rowAsArray": array_mode,
    })
}

/// The command tag's first word, from the SQL: its first keyword, or for `WITH ...` the first top-level
/// `SELECT`/`INSERT`/`UPDATE`/`DELETE`/`MERGE` after the CTEs (skipping comments, quotes and parentheses).
/// `VALUES` and `TABLE` are `SELECT`s. tokio-postgres does not expose the tag itself.
fn command(sql: &str) -> String {
    let b = sql.as_bytes();
    let (mut i, mut depth, mut first) = (0, 0usize, None::<String>);
    while i < b.len() {
        let c = b[i];
        if b[i..].starts_with(b"--") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = sql[i + 2..].find("*/").map_or(b.len(), |j| i + 2 + j + 2);
        } else if c == b'\'' || c == b'"' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += 1;
            }
            i += 1;
        } else if c == b'(' {
            depth += 1;
            i += 1;
        } else if c == b')' {
            depth = depth.saturating_sub(1);
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = sql[start..i].to_ascii_uppercase();
            let word = match word.as_str() {
                "VALUES" | "TABLE" if first.is_none() || depth == 0 => "SELECT".to_owned(),
                _ => word,
            };
            match first.as_deref() {
                None => {
                    if word != "WITH" {
                        return word;
                    }
                    first = Some(word);
                }
                Some(_)
                    if depth == 0 && matches!(word.as_str(), "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE") =>
                {
                    return word;
                }
                Some(_) => {}
            }
        } else {
            i += 1;
        }
    }
    first.unwrap_or_default()
}

/// Neon's error body; 400 for what PostgreSQL or the request got wrong (what the driver parses), else the contract
/// status.
fn error_response(e: &Error) -> Response<Body> {
    let status = match e {
        Error::Sql { .. }
        | Error::ReadOnly { .. }
        | Error::DbTimeout { .. }
        | Error::InvalidJson(_)
        | Error::InvalidRequest { .. }
        | Error::InvalidParam { .. } => StatusCode::BAD_REQUEST,
        other => other.status(),
    };
    let mut body = json!({
        "message": e.report().map_or_else(|| e.to_string(), |r| r.message.clone()),
        "code": e.sqlstate().unwrap_or(e.code()),
    });
    if let (Some(r), Value::Object(m)) = (e.report(), &mut body) {
        let f = &r.fields;
        let text = |v: &Option<String>| v.as_ref().map_or(Value::Null, |s| json!(s));
        let number = |v: Option<u32>| v.map_or(Value::Null, |n| json!(n.to_string()));
        for (k, v) in [
            ("severity", json!(r.severity)),
            ("detail", text(&f.detail)),
            ("hint", text(&f.hint)),
            ("position", number(f.position)),
            ("internalPosition", number(r.internal_position)),
            ("internalQuery", text(&r.internal_query)),
            ("where", text(&r.where_)),
            ("schema", text(&f.schema)),
            ("table", text(&f.table)),
            ("column", text(&f.column)),
            ("dataType", text(&r.data_type)),
            ("constraint", text(&f.constraint)),
            ("file", text(&r.file)),
            ("line", number(r.line)),
            ("routine", text(&r.routine)),
        ] {
            if !v.is_null() {
                m.insert(k.to_owned(), v);
            }
        }
    }
    json_response(status, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_names_follow_the_tag() {
        assert_eq!(command("select 1"), "SELECT");
        assert_eq!(command(" -- c\n/* x */ insert into t values (1)"), "INSERT");
        assert_eq!(command("values (1)"), "SELECT");
        assert_eq!(
            command("with a as (select ')' as x), b as (delete from t returning 1) update t set x = 1"),
            "UPDATE"
        );
        assert_eq!(command("WITH a AS (SELECT 1) SELECT * FROM a"), "SELECT");
        assert_eq!(command("create table t (x int)"), "CREATE");
    }
}
