//! The crate's one error enum. Each variant is one stable `code` of the localhost API (docs/contracts.md) and
//! knows its HTTP status; [`Error::to_json`] renders the contract's body
//! `{"error":{"code","message","sqlstate"?,"statement_index"?}}`. Startup failures (configuration, Lambda API)
//! are variants too, so `run` and `main` speak the same type.

use http::StatusCode;
use makenaide_contract::{ErrorBody, ErrorCode, ErrorDetail};
use serde_json::Value;

/// Every failure the extension reports. `Clone` so one upstream result can be shared by coalesced callers.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// 400 `invalid_json`: the body is not JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// 400 `invalid_request`: wrong shape or types; the message names the field.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 400 `invalid_param`: a parameter cannot be bound to the type PostgreSQL inferred.
    #[error("{message}")]
    InvalidParam {
        /// Names `$n` and the type.
        message: String,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 400 `sql_error`: PostgreSQL rejected the statement.
    #[error("{message}")]
    Sql {
        /// PostgreSQL's message (plus detail and hint).
        message: String,
        /// SQLSTATE.
        sqlstate: Option<String>,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
        /// The rest of PostgreSQL's report (boxed: errors stay small on the hot path).
        report: Option<Box<PgReport>>,
    },
    /// 400 `statement_not_supported`: the statement would change the session beyond the request, or is `COPY`.
    #[error("{message}")]
    StatementNotSupported {
        /// What is refused and the alternative.
        message: String,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 400 `row_limit_exceeded`: the result grew past the request's row cap (found while reading the rows).
    #[error("the result has more than {limit} rows (max_rows, default MAKENAIDE_DB_MAX_ROWS): {}; add a LIMIT or page, or raise max_rows (at most {hard})", outcome(*.committed))]
    RowLimitExceeded {
        /// The cap in force.
        limit: u64,
        /// The statements were applied all the same (see [`outcome`]).
        committed: bool,
        /// The most a request may ask for.
        hard: u64,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 400 `response_too_large`: the rows' JSON grew past the request's size cap (found while reading the rows).
    #[error("the result's rows take more than {limit} bytes of JSON (max_response_bytes, default MAKENAIDE_DB_MAX_RESPONSE_BYTES): {}; select fewer rows or columns, or raise max_response_bytes (at most {hard})", outcome(*.committed))]
    ResponseTooLarge {
        /// The cap in force.
        limit: u64,
        /// The statements were applied all the same (see [`outcome`]).
        committed: bool,
        /// The most a request may ask for.
        hard: u64,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 400 `forwarded_request`: `X-Forwarded-For` or `Forwarded` present.
    #[error(
        "requests carrying X-Forwarded-For or Forwarded are refused: the extension only serves the local function"
    )]
    Forwarded,
    /// 401 `missing_token`.
    #[error("header X-Makenaide-Token is required (MAKENAIDE_CORE_TOKEN, else AWS_SESSION_TOKEN)")]
    MissingToken,
    /// 403 `invalid_token`.
    #[error("header X-Makenaide-Token does not match")]
    InvalidToken,
    /// 403 `read_only`: write attempted while `MAKENAIDE_DB_READ_ONLY=true`.
    #[error("{message}")]
    ReadOnly {
        /// PostgreSQL's message.
        message: String,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 404 `not_found`.
    #[error("no route for {0}")]
    NotFound(String),
    /// 405 `method_not_allowed`.
    #[error("method {method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path.
        path: String,
        /// The method to use (also sent as `Allow`).
        allow: &'static str,
    },
    /// 413 `body_too_large`.
    #[error("request body is larger than {limit} bytes (MAKENAIDE_MAX_BODY_BYTES)")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// 414 `uri_too_long`.
    #[error("the request target is longer than {limit} bytes")]
    UriTooLong {
        /// The limit.
        limit: usize,
    },
    /// 431 `headers_too_large`.
    #[error(
        "the request line and headers are larger than {limit} bytes, or there are more than {fields} header fields"
    )]
    HeadersTooLarge {
        /// Bytes of request line + headers read at most.
        limit: usize,
        /// Header fields read at most.
        fields: usize,
    },
    /// 429 `too_many_connections`.
    #[error("too many connections to the extension (limit {limit}, MAKENAIDE_MAX_CONNECTIONS)")]
    TooManyConnections {
        /// The cap.
        limit: usize,
    },
    /// 503 `db_not_configured`.
    #[error("no database configured: set MAKENAIDE_DATABASE_URL or MAKENAIDE_DATABASE_SECRET_ID")]
    DbNotConfigured,
    /// 503 `db_unavailable`.
    #[error("{message}")]
    DbUnavailable {
        /// Why, e.g. "PostgreSQL is unreachable: connection refused (retrying in the background)".
        message: String,
        /// SQLSTATE when the server gave one (e.g. 53300 too_many_connections, 57P01).
        sqlstate: Option<String>,
    },
    /// 503 `db_outcome_unknown`: the connection failed after `COMMIT` was written, before its reply.
    #[error("{message}")]
    DbOutcomeUnknown {
        /// Says that the statements may or may not have been applied, and the cause.
        message: String,
    },
    /// 503 `db_busy`: every pooled connection stayed busy past the checkout wait (sent with `Retry-After`).
    #[error("{0}")]
    DbBusy(String),
    /// 503 `db_credentials_unavailable`: the database secret is still being fetched, or fetching it failed.
    #[error("{0}")]
    DbCredentials(String),
    /// 504 `db_timeout`.
    #[error("{message}")]
    DbTimeout {
        /// Which timeout fired.
        message: String,
        /// Index in `statements` for transactions.
        statement_index: Option<usize>,
    },
    /// 502 `upstream_error`.
    #[error("{0}")]
    Upstream(String),
    /// 504 `upstream_deadline`.
    #[error("{0}")]
    UpstreamDeadline(String),
    /// 503 `shutting_down`.
    #[error("the extension is shutting down (Lambda SHUTDOWN)")]
    ShuttingDown,
    /// Invalid configuration at start (reported through `/extension/init/error`).
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// The Lambda Extensions API failed (register / next): not recoverable, the process exits.
    #[error("Lambda Extensions API: {0}")]
    Lambda(String),
    /// Anything else (500 `internal`): a bug, never expected.
    #[error("{0}")]
    Internal(String),
}

/// PostgreSQL's error report beyond SQLSTATE and message: the contract's optional fields, plus the ones only
/// Neon's wire format (`POST /sql`) returns.
#[derive(Clone, Debug, Default)]
pub struct PgReport {
    /// PostgreSQL's primary message alone (without the DETAIL/HINT the contract's `message` appends).
    pub message: String,
    /// detail, hint, position, schema, table, column, constraint.
    pub fields: makenaide_contract::PgFields,
    /// `ERROR`, `FATAL`, ...
    pub severity: String,
    /// Call stack context (PL/pgSQL).
    pub where_: Option<String>,
    /// Data type concerned.
    pub data_type: Option<String>,
    /// Position in an internally generated query, and that query.
    pub internal_position: Option<u32>,
    /// The internally generated query.
    pub internal_query: Option<String>,
    /// Server source file, line and routine.
    pub file: Option<String>,
    /// Server source line.
    pub line: Option<u32>,
    /// Server routine.
    pub routine: Option<String>,
}

/// The variants that carry a `statement_index`, as one pattern binding it to `$slot`, so that reading the index
/// ([`Error::statement_index`]) and setting it ([`Error::at_statement`]) cannot disagree on the list.
macro_rules! with_statement_index {
    ($slot:ident) => {
        Error::InvalidRequest {
            statement_index: $slot,
            ..
        } | Error::InvalidParam {
            statement_index: $slot,
            ..
        } | Error::Sql {
            statement_index: $slot,
            ..
        } | Error::StatementNotSupported {
            statement_index: $slot,
            ..
        } | Error::ReadOnly {
            statement_index: $slot,
            ..
        } | Error::DbTimeout {
            statement_index: $slot,
            ..
        } | Error::RowLimitExceeded {
            statement_index: $slot,
            ..
        } | Error::ResponseTooLarge {
            statement_index: $slot,
            ..
        }
    };
}

impl Error {
    /// A cap error whose statements were applied all the same (`committed`); other errors unchanged.
    #[must_use]
    pub fn applied(mut self, applied: bool) -> Self {
        if let Self::RowLimitExceeded { committed, .. } | Self::ResponseTooLarge { committed, .. } = &mut self {
            *committed = applied;
        }
        self
    }

    /// A cap error whose statements were applied (see [`Error::applied`]).
    #[must_use]
    pub fn was_applied(&self) -> bool {
        matches!(
            self,
            Self::RowLimitExceeded { committed: true, .. } | Self::ResponseTooLarge { committed: true, .. }
        )
    }

    /// The stable machine-readable code (the contract's enum).
    #[must_use]
    pub fn kind(&self) -> ErrorCode {
        match self {
            Self::InvalidJson(_) => ErrorCode::InvalidJson,
            Self::InvalidRequest { .. } => ErrorCode::InvalidRequest,
            Self::InvalidParam { .. } => ErrorCode::InvalidParam,
            Self::Sql { .. } => ErrorCode::SqlError,
            Self::StatementNotSupported { .. } => ErrorCode::StatementNotSupported,
            Self::RowLimitExceeded { .. } => ErrorCode::RowLimitExceeded,
            Self::ResponseTooLarge { .. } => ErrorCode::ResponseTooLarge,
            Self::Forwarded => ErrorCode::ForwardedRequest,
            Self::MissingToken => ErrorCode::MissingToken,
            Self::InvalidToken => ErrorCode::InvalidToken,
            Self::ReadOnly { .. } => ErrorCode::ReadOnly,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            Self::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            Self::UriTooLong { .. } => ErrorCode::UriTooLong,
            Self::HeadersTooLarge { .. } => ErrorCode::HeadersTooLarge,
            Self::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            Self::DbNotConfigured => ErrorCode::DbNotConfigured,
            Self::DbUnavailable { .. } => ErrorCode::DbUnavailable,
            Self::DbOutcomeUnknown { .. } => ErrorCode::DbOutcomeUnknown,
            Self::DbBusy(_) => ErrorCode::DbBusy,
            Self::DbCredentials(_) => ErrorCode::DbCredentialsUnavailable,
            Self::DbTimeout { .. } => ErrorCode::DbTimeout,
            Self::Upstream(_) => ErrorCode::UpstreamError,
            Self::UpstreamDeadline(_) => ErrorCode::UpstreamDeadline,
            Self::ShuttingDown => ErrorCode::ShuttingDown,
            Self::Config(_) => ErrorCode::ConfigInvalid,
            Self::Lambda(_) | Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The code's wire string.
    #[must_use]
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The HTTP status of the error reply (the contract's, per code).
    #[must_use]
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// PostgreSQL's full report, for `sql_error`.
    #[must_use]
    pub fn report(&self) -> Option<&PgReport> {
        match self {
            Self::Sql { report, .. } => report.as_deref(),
            _ => None,
        }
    }

    /// SQLSTATE, where there is one.
    #[must_use]
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Self::Sql { sqlstate, .. } | Self::DbUnavailable { sqlstate, .. } => sqlstate.as_deref(),
            Self::ReadOnly { .. } => Some("25006"),
            Self::DbTimeout { .. } => Some("57014"),
            _ => None,
        }
    }

    /// The statement that failed, for `/db/transaction`.
    #[must_use]
    pub fn statement_index(&self) -> Option<usize> {
        match self {
            with_statement_index!(statement_index) => *statement_index,
            _ => None,
        }
    }

    /// Sets the failing statement's index (transactions).
    #[must_use]
    pub fn at_statement(mut self, index: usize) -> Self {
        if let with_statement_index!(statement_index) = &mut self {
            *statement_index = Some(index);
        }
        self
    }

    /// The same error without a statement index (`/db/query` has one statement and reports none).
    #[must_use]
    pub fn without_statement_index(mut self) -> Self {
        if let with_statement_index!(statement_index) = &mut self {
            *statement_index = None;
        }
        self
    }

    /// Shorthand for an `invalid_request` without a statement index.
    pub(crate) fn invalid_request(message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            statement_index: None,
        }
    }

    /// The contract's JSON body.
    #[must_use]
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                sqlstate: self.sqlstate().map(str::to_owned),
                statement_index: self.statement_index(),
                pg: self.report().map(|r| r.fields.clone()).unwrap_or_default(),
            },
        }
    }

    /// [`Error::to_body`] as a JSON value.
    #[must_use]
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.to_body()).unwrap_or(Value::Null)
    }
}

/// What a cap error says of the transaction. `COMMIT` travels with the statements (one round trip), so when a
/// write's result crosses a cap the extension cancels the statement; only if it had already finished does the
/// transaction commit, and the answer says so (so that a caller never takes a 4xx for "nothing happened" wrongly).
fn outcome(committed: bool) -> &'static str {
    if committed {
        "the statements WERE applied and committed (the statement had finished before the extension could cancel \
         it); only their result is refused, do not resend them"
    } else {
        "nothing was committed"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_are_stable() {
        let e = Error::DbUnavailable {
            message: "PostgreSQL is unreachable: connection refused (retrying in the background)".into(),
            sqlstate: Some("08006".into()),
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.to_json(),
            json!({"error": {"code": makenaide_contract::ErrorCode::DbUnavailable.as_str(),
                "message": "PostgreSQL is unreachable: connection refused (retrying in the background)",
                "sqlstate": "08006"}})
        );

        let e = Error::Sql {
            message: "syntax error".into(),
            sqlstate: Some("42601".into()),
            statement_index: None,
            report: None,
        }
        .at_statement(2);
        assert_eq!(
            e.to_json(),
            json!({"error": {"code": makenaide_contract::ErrorCode::SqlError.as_str(), "message": "syntax error", "sqlstate": "42601", "statement_index": 2}})
        );
        assert_eq!(
            Error::MissingToken.to_json()["error"]["code"],
            makenaide_contract::ErrorCode::MissingToken.as_str()
        );
        assert!(Error::MissingToken.to_json()["error"].get("sqlstate").is_none());
        assert_eq!(
            Error::ReadOnly {
                message: "x".into(),
                statement_index: None
            }
            .to_json()["error"]["sqlstate"],
            "25006"
        );
    }

    #[test]
    fn statuses_match_the_contract() {
        let cases: Vec<(Error, u16, &str)> = vec![
            (
                Error::InvalidJson("x".into()),
                400,
                makenaide_contract::ErrorCode::InvalidJson.as_str(),
            ),
            (
                Error::invalid_request("x"),
                400,
                makenaide_contract::ErrorCode::InvalidRequest.as_str(),
            ),
            (
                Error::InvalidParam {
                    message: "x".into(),
                    statement_index: None,
                },
                400,
                makenaide_contract::ErrorCode::InvalidParam.as_str(),
            ),
            (
                Error::StatementNotSupported {
                    message: "x".into(),
                    statement_index: Some(1),
                },
                400,
                makenaide_contract::ErrorCode::StatementNotSupported.as_str(),
            ),
            (
                Error::Forwarded,
                400,
                makenaide_contract::ErrorCode::ForwardedRequest.as_str(),
            ),
            (
                Error::MissingToken,
                401,
                makenaide_contract::ErrorCode::MissingToken.as_str(),
            ),
            (
                Error::InvalidToken,
                403,
                makenaide_contract::ErrorCode::InvalidToken.as_str(),
            ),
            (
                Error::ReadOnly {
                    message: "x".into(),
                    statement_index: None,
                },
                403,
                makenaide_contract::ErrorCode::ReadOnly.as_str(),
            ),
            (
                Error::NotFound("/x".into()),
                404,
                makenaide_contract::ErrorCode::NotFound.as_str(),
            ),
            (
                Error::MethodNotAllowed {
                    method: "GET".into(),
                    path: "/db/query".into(),
                    allow: "POST",
                },
                405,
                makenaide_contract::ErrorCode::MethodNotAllowed.as_str(),
            ),
            (
                Error::BodyTooLarge { limit: 1 },
                413,
                makenaide_contract::ErrorCode::BodyTooLarge.as_str(),
            ),
            (
                Error::TooManyConnections { limit: 1 },
                429,
                makenaide_contract::ErrorCode::TooManyConnections.as_str(),
            ),
            (
                Error::UriTooLong { limit: 1 },
                414,
                makenaide_contract::ErrorCode::UriTooLong.as_str(),
            ),
            (
                Error::HeadersTooLarge { limit: 1, fields: 1 },
                431,
                makenaide_contract::ErrorCode::HeadersTooLarge.as_str(),
            ),
            (
                Error::DbBusy("x".into()),
                503,
                makenaide_contract::ErrorCode::DbBusy.as_str(),
            ),
            (
                Error::DbNotConfigured,
                503,
                makenaide_contract::ErrorCode::DbNotConfigured.as_str(),
            ),
            (
                Error::DbCredentials("x".into()),
                503,
                makenaide_contract::ErrorCode::DbCredentialsUnavailable.as_str(),
            ),
            (
                Error::DbTimeout {
                    message: "x".into(),
                    statement_index: None,
                },
                504,
                makenaide_contract::ErrorCode::DbTimeout.as_str(),
            ),
            (
                Error::Upstream("x".into()),
                502,
                makenaide_contract::ErrorCode::UpstreamError.as_str(),
            ),
            (
                Error::UpstreamDeadline("x".into()),
                504,
                makenaide_contract::ErrorCode::UpstreamDeadline.as_str(),
            ),
            (
                Error::ShuttingDown,
                503,
                makenaide_contract::ErrorCode::ShuttingDown.as_str(),
            ),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{code}");
            assert_eq!(e.code(), code);
        }
    }
}
