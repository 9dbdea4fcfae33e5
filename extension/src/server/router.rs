//! Request handling: refusal rules (shutdown, target length, `X-Forwarded-For`/`Forwarded`, token), routing, body limit, request parsing
//! (hand-written so every message names the field at fault), and rendering of replies and errors.

use super::Body;
use crate::db::{convert::kind_of_raw, Limits, StatementRequest, TxOptions};
use crate::error::Error;
use crate::state::AppState;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use makenaide_contract::sql::fields;
use makenaide_contract::{Deadline, Isolation};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

pub use makenaide_contract::headers::{
    DEADLINE as HEADER_DEADLINE, FORWARDED as HEADER_FORWARDED, FORWARDED_FOR as HEADER_FORWARDED_FOR,
    SOURCE as HEADER_SOURCE, TOKEN as HEADER_TOKEN,
};

/// `Retry-After` of a 503 `db_busy`, in seconds: a pooled connection is typically free again well within it.
const DB_BUSY_RETRY_AFTER_SECS: &str = "1";

const MAX_STATEMENTS: usize = 1000;
const MAX_TIMEOUT_MS: u64 = 3_600_000;

pub(crate) async fn handle(state: AppState, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    crate::metrics::inc(crate::metrics::Counter::Requests);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = match route(&state, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status().is_server_error() {
                tracing::warn!(%method, %path, code = e.code(), error = %e, "request failed");
            } else {
                tracing::debug!(%method, %path, code = e.code(), "request refused");
            }
            error_response(&e)
        }
    };
    tracing::debug!(%method, %path, status = response.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    response
}

async fn route(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    if state.is_shutting_down() {
        return Err(Error::ShuttingDown);
    }
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > super::conn::MAX_URI_BYTES {
        return Err(Error::UriTooLong {
            limit: super::conn::MAX_URI_BYTES,
        });
    }
    if req.headers().contains_key(HEADER_FORWARDED_FOR) || req.headers().contains_key(HEADER_FORWARDED) {
        return Err(Error::Forwarded);
    }
    let path = req.uri().path();
    if path == "/ping" {
        return if matches!(*req.method(), Method::GET | Method::HEAD) {
            Ok(ping(state))
        } else {
            Err(not_allowed(&req, "GET"))
        };
    }
    check_token(state, req.headers())?;
    let deadline = deadline(req.headers())?;

    match path {
        makenaide_contract::routes::METRICS => {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return Err(not_allowed(&req, "GET"));
            }
            Ok(metrics(state))
        }
        "/db/query" => {
            if req.method() != Method::POST {
                return Err(not_allowed(&req, "POST"));
            }
            let body = read_body(req, state.config().max_body_bytes).await?;
            let (stmt, timeout, limits) = parse_query(&body)?;
            drop(body);
            let limits = limits.resolve(state.config());
            let result = state.db().query_limited(stmt, timeout, deadline, Some(limits)).await?;
            let mut out = Vec::with_capacity(result.rows_json.len() + 128);
            result.write_json(&mut out);
            Ok(bytes_response(StatusCode::OK, out))
        }
        "/db/transaction" => {
            if req.method() != Method::POST {
                return Err(not_allowed(&req, "POST"));
            }
            let body = read_body(req, state.config().max_body_bytes).await?;
            let (stmts, timeout, limits, tx) = parse_transaction(&body)?;
            drop(body);
            let limits = limits.resolve(state.config());
            let results = state
                .db()
                .transaction_with(stmts, timeout, deadline, Some(limits), tx)
                .await?;
            let size: usize = results.iter().map(|r| r.rows_json.len() + 128).sum();
            let mut out = Vec::with_capacity(size + 16);
            out.extend_from_slice(b"{\"results\":[");
            for (i, r) in results.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                r.write_json(&mut out);
            }
            out.extend_from_slice(b"]}");
            Ok(bytes_response(StatusCode::OK, out))
        }
        makenaide_contract::routes::SQL => {
            if req.method() != Method::POST {
                return Err(not_allowed(&req, "POST"));
            }
            let headers = req.headers().clone();
            let body = read_body(req, state.config().max_body_bytes).await?;
            Ok(super::neon::handle(state, &headers, &body, deadline).await)
        }
        p => {
            let Some(group) = crate::upbit::route(p) else {
                return Err(Error::NotFound(p.to_owned()));
            };
            if req.method() != Method::GET {
                return Err(not_allowed(&req, "GET"));
            }
            let path_and_query = req.uri().path_and_query().map_or(p, http::uri::PathAndQuery::as_str);
            let upbit = state.upbit();
            let deadline = deadline.unwrap_or_else(|| Instant::now() + upbit.default_timeout());
            let reply = upbit.get(group, path_and_query, deadline).await?;
            Ok(upbit_response(reply))
        }
    }
}

fn not_allowed(req: &Request<Incoming>, allow: &'static str) -> Error {
    Error::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        allow,
    }
}

fn ping(state: &AppState) -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "db": state.db().status().as_str(),
            "upbit": if state.upbit().is_warm() { "ready" } else { "cold" },
        }),
    )
}

/// `GET /metrics`: the counters since the extension started, for local use (CloudWatch gets the EMF lines).
fn metrics(state: &AppState) -> Response<Body> {
    let config = state.config();
    let telemetry = if !config.metrics {
        "off"
    } else if crate::metrics::recorder().is_some() {
        "subscribed"
    } else {
        "unavailable"
    };
    json_response(
        StatusCode::OK,
        &json!({
            "counters": crate::metrics::Snapshot::now().to_json(),
            "telemetry": telemetry,
            "namespace": config.metrics_namespace,
            "lines_written": crate::metrics::lines_written(),
            "upbit_cache": state.upbit().cache_usage(),
        }),
    )
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from response times.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), Error> {
    let Some(given) = headers.get(HEADER_TOKEN) else {
        return Err(Error::MissingToken);
    };
    if same_secret(given.as_bytes(), state.config().token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(Error::InvalidToken)
    }
}

/// `X-Makenaide-Deadline-Ms` (absolute epoch ms) as a monotonic instant. A number that is not a plausible absolute
/// time (0, a duration such as cargo-lambda's `600000`, an expired time, more than 15 minutes ahead) is ignored
/// with one warning per process, so a caller under an emulator gets the default bounds instead of failing at once.
/// Text that is not a number at all is the caller's bug: 400.
fn deadline(headers: &HeaderMap) -> Result<Option<Instant>, Error> {
    let Some(v) = headers.get(HEADER_DEADLINE) else {
        return Ok(None);
    };
    let ms: u64 = v.to_str().ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| {
        Error::invalid_request("header X-Makenaide-Deadline-Ms must be an absolute Unix epoch time in milliseconds")
    })?;
    let now_ms = crate::lambda::now_ms();
    match Deadline::classify(Some(ms), now_ms) {
        Deadline::At(at) => Ok(Some(Instant::now() + Duration::from_millis(at - now_ms))),
        Deadline::Unknown(problem) => {
            crate::lambda::warn_implausible_deadline(makenaide_contract::headers::DEADLINE, ms, problem);
            Ok(None)
        }
    }
}

/// Past the limit the rest of the body is read and dropped (up to this many bytes in all) before the 413 goes out:
/// a client still writing its body when the answer comes would otherwise see a broken pipe instead of the 413.
const DRAIN_CAP_FACTOR: u64 = 4;

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Error> {
    let limit_bytes = limit as u64;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut too_large = declared.is_some_and(|n| n > limit_bytes);
    let drain_cap = limit_bytes.saturating_mul(DRAIN_CAP_FACTOR).max(1 << 20);
    if declared.is_some_and(|n| n > drain_cap) {
        // Not worth reading: answer at once (the client may see the connection close instead).
        return Err(Error::BodyTooLarge { limit });
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n.min(limit_bytes)).unwrap_or(0));
    let mut buf = Vec::with_capacity(if too_large { 0 } else { capacity });
    let mut seen: u64 = 0;
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::invalid_request(format!("could not read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len() as u64);
        if seen > limit_bytes && !too_large {
            too_large = true;
            buf = Vec::new();
        }
        if too_large {
            if seen > drain_cap {
                break;
            }
        } else {
            buf.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(Error::BodyTooLarge { limit });
    }
    Ok(Bytes::from(buf))
}

/// A JSON object's fields, each still the raw JSON text of its value (borrowed from the body): the body is never
/// built into a `serde_json::Value` tree, so parameters keep their exact digits and cost their size once.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

fn parse_json(body: &[u8]) -> Result<Fields<'_>, Error> {
    let raw: &RawValue =
        serde_json::from_slice(body).map_err(|e| Error::InvalidJson(format!("the body is not valid JSON: {e}")))?;
    object(raw).ok_or_else(|| {
        // Not an object. Only on this error path: a body that serde_json's own tree parser refuses (nesting past
        // its recursion limit) is still reported as not JSON, as before.
        match serde_json::from_str::<Value>(raw.get()) {
            Err(e) => Error::InvalidJson(format!("the body is not valid JSON: {e}")),
            Ok(_) => Error::invalid_request("the body must be a JSON object"),
        }
    })
}

fn object(raw: &RawValue) -> Option<Fields<'_>> {
    if !raw.get().starts_with('{') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}

fn is_null(raw: Option<&&RawValue>) -> bool {
    raw.is_none_or(|r| r.get() == "null")
}

fn check_fields(map: &Fields<'_>, allowed: &[&str], at: &str) -> Result<(), String> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("unknown field {at}{k:?}: expected {}", allowed.join(", "))),
        None => Ok(()),
    }
}

fn parse_statement(map: &Fields<'_>, at: &str) -> Result<StatementRequest, String> {
    let sql: String = match map.get("sql") {
        Some(raw) if raw.get().starts_with('"') => {
            serde_json::from_str(raw.get()).map_err(|e| format!("{at}sql: {e}"))?
        }
        Some(raw) => return Err(format!("{at}sql must be a string, not {}", kind_of_raw(raw.get()))),
        None => return Err(format!("{at}sql is required")),
    };
    if sql.trim().is_empty() {
        return Err(format!("{at}sql is empty"));
    }
    if let Some(word) = crate::db::sql::transaction_control(&sql) {
        // Each request is one transaction the extension begins and ends: a statement ending it early would run
        // the following ones outside it (no rollback on failure, and out of MAKENAIDE_DB_READ_ONLY's READ ONLY).
        return Err(format!(
            "{at}sql is a transaction control statement ({word}): each request already runs in its own transaction"
        ));
    }
    let params = match map.get("params") {
        p if is_null(p) => Vec::new(),
        Some(raw) if raw.get().starts_with('[') => {
            serde_json::from_str(raw.get()).map_err(|e| format!("{at}params: {e}"))?
        }
        Some(raw) => return Err(format!("{at}params must be an array, not {}", kind_of_raw(raw.get()))),
        None => Vec::new(),
    };
    Ok(StatementRequest { sql, params })
}

/// A whole number field in `0..=max` (`min..=max`), absent or null = `None`.
fn parse_count(map: &Fields<'_>, name: &str, min: u64, max: u64, what: &str) -> Result<Option<u64>, Error> {
    let Some(raw) = map.get(name).filter(|r| r.get() != "null") else {
        return Ok(None);
    };
    match raw.get().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
        _ if kind_of_raw(raw.get()) == "a number" => Err(Error::invalid_request(format!(
            "{name} must be a whole number of {what} from {min} to {max}"
        ))),
        _ => Err(Error::invalid_request(format!(
            "{name} must be a number, not {}",
            kind_of_raw(raw.get())
        ))),
    }
}

fn parse_timeout(map: &Fields<'_>) -> Result<Option<Duration>, Error> {
    Ok(parse_count(map, "timeout_ms", 0, MAX_TIMEOUT_MS, "milliseconds")?.map(Duration::from_millis))
}

/// The request's own caps (`max_rows`, `max_response_bytes`), each up to its hard limit; `None` = the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestLimits {
    pub max_rows: Option<u64>,
    pub max_response_bytes: Option<u64>,
}

impl RequestLimits {
    fn parse(map: &Fields<'_>) -> Result<Self, Error> {
        Ok(Self {
            max_rows: parse_count(map, "max_rows", 1, crate::config::HARD_MAX_ROWS, "rows")?,
            max_response_bytes: parse_count(
                map,
                "max_response_bytes",
                1,
                crate::config::HARD_MAX_RESPONSE_BYTES,
                "bytes",
            )?,
        })
    }

    fn resolve(self, config: &crate::config::Config) -> Limits {
        Limits {
            max_rows: self.max_rows.unwrap_or(config.db_max_rows),
            max_response_bytes: self.max_response_bytes.unwrap_or(config.db_max_response_bytes),
        }
    }
}

/// `{"sql": "...", "params": [...], "timeout_ms": 5000, "max_rows": n, "max_response_bytes": n}`.
pub(crate) fn parse_query(body: &[u8]) -> Result<(StatementRequest, Option<Duration>, RequestLimits), Error> {
    let map = parse_json(body)?;
    check_fields(
        &map,
        &["sql", "params", "timeout_ms", "max_rows", "max_response_bytes"],
        "",
    )
    .map_err(Error::invalid_request)?;
    let stmt = parse_statement(&map, "").map_err(Error::invalid_request)?;
    Ok((stmt, parse_timeout(&map)?, RequestLimits::parse(&map)?))
}

/// `read_only`, `isolation`, `deferrable` of `/db/transaction` (each optional).
fn parse_tx_options(map: &Fields<'_>) -> Result<TxOptions, Error> {
    let flag = |name: &str| match map.get(name) {
        r if is_null(r) => Ok(None),
        Some(raw) if raw.get() == "true" => Ok(Some(true)),
        Some(raw) if raw.get() == "false" => Ok(Some(false)),
        Some(raw) => Err(Error::invalid_request(format!(
            "{name} must be true or false, not {}",
            kind_of_raw(raw.get())
        ))),
        None => Ok(None),
    };
    let levels = || Isolation::ALL.map(Isolation::as_str).join(", ");
    let isolation = match map.get(fields::ISOLATION) {
        r if is_null(r) => None,
        Some(raw) if raw.get().starts_with('"') => {
            let s: String = serde_json::from_str(raw.get())
                .map_err(|e| Error::invalid_request(format!("{}: {e}", fields::ISOLATION)))?;
            Some(
                Isolation::parse(&s)
                    .ok_or_else(|| Error::invalid_request(format!("isolation {s:?} is not one of {}", levels())))?,
            )
        }
        Some(raw) => {
            return Err(Error::invalid_request(format!(
                "isolation must be a string ({}), not {}",
                levels(),
                kind_of_raw(raw.get())
            )))
        }
        None => None,
    };
    Ok(TxOptions {
        read_only: flag(fields::READ_ONLY)?,
        isolation,
        deferrable: flag(fields::DEFERRABLE)?.unwrap_or(false),
        ..TxOptions::default()
    })
}

/// `{"statements": [{"sql", "params"}, ...], "timeout_ms": 5000, "max_rows": n, "max_response_bytes": n,
/// "read_only"?, "isolation"?, "deferrable"?}`.
pub(crate) fn parse_transaction(
    body: &[u8],
) -> Result<(Vec<StatementRequest>, Option<Duration>, RequestLimits, TxOptions), Error> {
    let map = parse_json(body)?;
    check_fields(
        &map,
        &[
            "statements",
            "timeout_ms",
            "max_rows",
            "max_response_bytes",
            fields::READ_ONLY,
            fields::ISOLATION,
            fields::DEFERRABLE,
        ],
        "",
    )
    .map_err(Error::invalid_request)?;
    let items: Vec<&RawValue> = match map.get("statements") {
        Some(raw) if raw.get().starts_with('[') => {
            serde_json::from_str(raw.get()).map_err(|e| Error::invalid_request(format!("statements: {e}")))?
        }
        Some(raw) => {
            return Err(Error::invalid_request(format!(
                "statements must be an array, not {}",
                kind_of_raw(raw.get())
            )))
        }
        None => return Err(Error::invalid_request("statements is required")),
    };
    if items.is_empty() {
        return Err(Error::invalid_request("statements is empty"));
    }
    if items.len() > MAX_STATEMENTS {
        return Err(Error::invalid_request(format!(
            "statements has more than {MAX_STATEMENTS} entries"
        )));
    }
    let mut stmts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("statements[{i}].");
        let fail = |message: String| Error::InvalidRequest {
            message,
            statement_index: Some(i),
        };
        let Some(m) = object(item) else {
            return Err(fail(format!(
                "statements[{i}] must be an object like {{\"sql\": ..., \"params\": [...]}}"
            )));
        };
        check_fields(&m, &["sql", "params"], &at).map_err(fail)?;
        stmts.push(parse_statement(&m, &at).map_err(fail)?);
    }
    Ok((
        stmts,
        parse_timeout(&map)?,
        RequestLimits::parse(&map)?,
        parse_tx_options(&map)?,
    ))
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    bytes_response(status, serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A JSON reply from JSON text already written.
fn bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(HEADER_SOURCE, HeaderValue::from_static("core"));
    resp
}

/// The contract's error body, with `Allow` on 405 and `Retry-After` on `db_busy`.
pub(crate) fn error_response(e: &Error) -> Response<Body> {
    let mut resp = json_response(e.status(), &e.to_json());
    match e {
        Error::MethodNotAllowed { allow, .. } => {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        Error::DbBusy(_) => {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(DB_BUSY_RETRY_AFTER_SECS));
        }
        _ => {}
    }
    resp
}

/// Upbit's reply, unchanged: status, body, content type and `Remaining-Req`.
fn upbit_response(reply: crate::upbit::Reply) -> Response<Body> {
    let Ok(status) = StatusCode::from_u16(reply.status) else {
        return error_response(&Error::Upstream(format!(
            "Upbit answered an invalid HTTP status {}",
            reply.status
        )));
    };
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Some(ct) = reply.content_type {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(rr) = reply.remaining_req {
        h.insert(crate::upbit::REMAINING_REQ, rr);
    }
    h.insert(HEADER_SOURCE, HeaderValue::from_static(reply.source.as_str()));
    resp
}

#[cfg(test)]
#[path = "router_proptests.rs"]
mod proptests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn transaction_control_is_refused() {
        for sql in ["commit", "/* c */ ROLLBACK", "prepare transaction 'x'"] {
            let body = json!({"sql": sql}).to_string();
            let e = parse_query(body.as_bytes()).unwrap_err();
            assert_eq!(e.kind(), makenaide_contract::ErrorCode::InvalidRequest, "{sql}");
        }
    }

    #[test]
    fn query_parsing_names_the_field() {
        let (s, t, l) = parse_query(
            br#"{"sql":"select $1","params":[1, 12345678901234567890.123456789],"timeout_ms":50,"max_rows":7}"#,
        )
        .unwrap();
        assert_eq!(s.sql, "select $1");
        let params: Vec<&str> = s.params.iter().map(|p| p.get()).collect();
        assert_eq!(
            params,
            ["1", "12345678901234567890.123456789"],
            "the caller's digits, as sent"
        );
        assert_eq!(t, Some(Duration::from_millis(50)));
        assert_eq!(
            l,
            RequestLimits {
                max_rows: Some(7),
                max_response_bytes: None
            }
        );
        let (s, t, l) = parse_query(br#"{"sql":"select 1"}"#).unwrap();
        assert!(s.params.is_empty() && t.is_none() && l == RequestLimits::default());

        for (body, code, needle) in [
            (
                &b"{not json"[..],
                makenaide_contract::ErrorCode::InvalidJson.as_str(),
                "not valid JSON",
            ),
            (
                b"[1]",
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "JSON object",
            ),
            (
                br#"{"params":[]}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "sql is required",
            ),
            (
                br#"{"sql":5}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "sql must be a string",
            ),
            (
                br#"{"sql":"  "}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "sql is empty",
            ),
            (
                br#"{"sql":"x","params":{}}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "params must be an array",
            ),
            (
                br#"{"sql":"x","timeout_ms":-1}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "timeout_ms",
            ),
            (
                br#"{"sql":"x","max_rows":0}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "max_rows must be a whole number",
            ),
            (
                br#"{"sql":"x","max_response_bytes":"1"}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "max_response_bytes must be a number",
            ),
            (
                br#"{"sql":"x","param":[]}"#,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
                "unknown field \"param\"",
            ),
        ] {
            let e = parse_query(body).unwrap_err();
            assert_eq!(e.code(), code, "{}", String::from_utf8_lossy(body));
            assert!(e.to_string().contains(needle), "{e}");
        }
    }

    #[test]
    fn transaction_parsing_carries_the_index() {
        let (s, _, _, _) = parse_transaction(br#"{"statements":[{"sql":"a"},{"sql":"b","params":[1]}]}"#).unwrap();
        assert_eq!(s.len(), 2);
        let e = parse_transaction(br#"{"statements":[{"sql":"a"},{"sql":7}]}"#).unwrap_err();
        assert_eq!(e.statement_index(), Some(1));
        assert!(e.to_string().contains("statements[1].sql"), "{e}");
        let e = parse_transaction(br#"{"statements":[]}"#).unwrap_err();
        assert!(e.to_string().contains("empty"));
        let e = parse_transaction(br#"{"statements":["select 1"]}"#).unwrap_err();
        assert_eq!(e.statement_index(), Some(0));
    }

    #[test]
    fn transaction_options_are_parsed_and_checked() {
        let body = br#"{"statements":[{"sql":"a"}],"read_only":true,"isolation":"repeatable_read","deferrable":true}"#;
        let (_, _, _, tx) = parse_transaction(body).unwrap();
        assert_eq!(
            (tx.read_only, tx.isolation, tx.deferrable),
            (Some(true), Some(Isolation::RepeatableRead), true)
        );
        let (_, _, _, tx) = parse_transaction(br#"{"statements":[{"sql":"a"}]}"#).unwrap();
        assert_eq!((tx.read_only, tx.isolation, tx.deferrable), (None, None, false));
        let e = parse_transaction(br#"{"statements":[{"sql":"a"}],"isolation":"snapshot"}"#).unwrap_err();
        assert!(
            e.to_string().contains("read_committed, repeatable_read, serializable"),
            "{e}"
        );
        let e = parse_transaction(br#"{"statements":[{"sql":"a"}],"read_only":"yes"}"#).unwrap_err();
        assert!(e.to_string().contains("true or false"), "{e}");
    }

    #[test]
    fn secret_comparison() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        #[test]
        fn request_parsers_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = parse_query(&body);
            let _ = parse_transaction(&body);
        }

        #[test]
        fn json_shaped_bodies_never_panic(
            sql in proptest::option::of(".{0,20}"),
            params in proptest::option::of(proptest::collection::vec(proptest::prelude::any::<i32>(), 0..3)),
            timeout in proptest::option::of(proptest::prelude::any::<i64>()),
            wrap in proptest::prelude::any::<bool>(),
        ) {
            let mut stmt = serde_json::Map::new();
            if let Some(sql) = sql { stmt.insert("sql".into(), json!(sql)); }
            if let Some(p) = params { stmt.insert("params".into(), json!(p)); }
            let body = if wrap {
                json!({"statements": [Value::Object(stmt)], "timeout_ms": timeout})
            } else {
                let mut m = stmt;
                m.insert("timeout_ms".into(), json!(timeout));
                Value::Object(m)
            };
            let bytes = serde_json::to_vec(&body).unwrap();
            let _ = parse_query(&bytes);
            let _ = parse_transaction(&bytes);
        }
    }
}
