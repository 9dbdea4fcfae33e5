//! The stable error codes of the localhost API, each with its HTTP status, and the JSON error body
//! `{"error":{"code","message","sqlstate"?,"statement_index"?,"detail"?,"hint"?,...}}` that carries them.

use serde::{Deserialize, Serialize};

/// Declares [`ErrorCode`] with its wire string and status in one table, so the three can never disagree.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $status:literal;)*) => {
        /// Every error code the extension produces (docs/contracts.md lists exactly these).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of docs/contracts.md.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire string (`"db_unavailable"`).
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status of a reply carrying this code.
            #[must_use]
            pub const fn status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// The code for a wire string; `None` for a code this build does not know (a newer extension).
            #[must_use]
            pub fn parse(code: &str) -> Option<Self> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// The body is not JSON.
    InvalidJson = "invalid_json", 400;
    /// Wrong shape or types; the message names the field.
    InvalidRequest = "invalid_request", 400;
    /// A SQL parameter cannot be bound to the type PostgreSQL inferred; the message names `$n` and the type.
    InvalidParam = "invalid_param", 400;
    /// PostgreSQL rejected the statement (with `sqlstate`).
    SqlError = "sql_error", 400;
    /// The statement would change the session beyond the request (plain `SET`, `SET ROLE`, `RESET`, `DISCARD`,
    /// `PREPARE`, `LISTEN`, temporary objects without `ON COMMIT DROP`, session advisory locks,
    /// `set_config(..., false)`) or is `COPY`; the message names the alternative (`SET LOCAL`,
    /// `pg_advisory_xact_lock`, `CREATE TEMP TABLE ... ON COMMIT DROP`).
    StatementNotSupported = "statement_not_supported", 400;
    /// The rows of a DB request exceeded its row cap (`max_rows`, default `MAKENAIDE_DB_MAX_ROWS`); nothing was
    /// committed. 400, not 5xx: the same request fails the same way; page the query or raise `max_rows`.
    RowLimitExceeded = "row_limit_exceeded", 400;
    /// The rows' JSON of a DB request exceeded its size cap (`max_response_bytes`, default
    /// `MAKENAIDE_DB_MAX_RESPONSE_BYTES`); nothing was committed. 400 (not 413, which is about the request body).
    ResponseTooLarge = "response_too_large", 400;
    /// `X-Forwarded-For` or `Forwarded` present: the API serves the local function only.
    ForwardedRequest = "forwarded_request", 400;
    /// No `X-Makenaide-Token`.
    MissingToken = "missing_token", 401;
    /// Wrong `X-Makenaide-Token`.
    InvalidToken = "invalid_token", 403;
    /// A write while `MAKENAIDE_DB_READ_ONLY=true` (sqlstate 25006), or a statement read-only mode refuses up front
    /// (large-object writes, `COPY`, `SET ROLE`, `SET SESSION AUTHORIZATION`, `DO`).
    ReadOnly = "read_only", 403;
    /// No such route.
    NotFound = "not_found", 404;
    /// Wrong method for the route (`Allow` says which).
    MethodNotAllowed = "method_not_allowed", 405;
    /// Body over `MAKENAIDE_MAX_BODY_BYTES`.
    BodyTooLarge = "body_too_large", 413;
    /// Request target (path and query) longer than the extension reads.
    UriTooLong = "uri_too_long", 414;
    /// Inbound connection cap (`MAKENAIDE_MAX_CONNECTIONS`) reached.
    TooManyConnections = "too_many_connections", 429;
    /// Request line and headers larger than the extension reads, or too many header fields.
    HeadersTooLarge = "headers_too_large", 431;
    /// No database configured.
    DbNotConfigured = "db_not_configured", 503;
    /// The database is unreachable or refused the connection.
    DbUnavailable = "db_unavailable", 503;
    /// The connection to PostgreSQL failed after the request's `COMMIT` was written and before its reply said how
    /// it ended: the statements may or may not have been applied. The extension never resends such a request by
    /// itself (a read-only one excepted); a caller may resend it only when its writes are idempotent.
    DbOutcomeUnknown = "db_outcome_unknown", 503;
    /// Every pooled database connection stayed busy past the checkout wait (`MAKENAIDE_DB_CONNECT_TIMEOUT_MS`); the
    /// reply carries `Retry-After`.
    DbBusy = "db_busy", 503;
    /// The database credentials of `MAKENAIDE_DATABASE_SECRET_ID` are still being fetched from Secrets Manager, or
    /// fetching them failed (the message says why and what to fix: a missing secret, a denied
    /// `secretsmanager:GetSecretValue`, a malformed value).
    DbCredentialsUnavailable = "db_credentials_unavailable", 503;
    /// A statement timeout or the caller's deadline (sqlstate 57014).
    DbTimeout = "db_timeout", 504;
    /// Upbit unreachable or answering garbage after the retries.
    UpstreamError = "upstream_error", 502;
    /// No rate slot or no answer from Upbit before the caller's deadline.
    UpstreamDeadline = "upstream_deadline", 504;
    /// SHUTDOWN has begun.
    ShuttingDown = "shutting_down", 503;
    /// Invalid configuration at start: reported through `/extension/init/error`, never on a route.
    ConfigInvalid = "config_invalid", 500;
    /// A bug in the extension, never expected.
    Internal = "internal", 500;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error the extension produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Inside [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// An [`ErrorCode`]'s wire string (kept as text so a caller can read codes newer than itself).
    pub code: String,
    /// For humans.
    pub message: String,
    /// PostgreSQL's SQLSTATE, where it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// The failing statement of a `/db/transaction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_index: Option<usize>,
    /// PostgreSQL's error fields, where it gave them (`sql_error`): absent fields are omitted.
    #[serde(flatten)]
    pub pg: PgFields,
}

/// The optional fields of a PostgreSQL error report (ErrorResponse), as [`ErrorDetail`] carries them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PgFields {
    /// DETAIL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// HINT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// 1-based character position in the statement's SQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Schema of the object concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Table concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Column concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// Constraint violated (e.g. a unique index's name on 23505).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
}

impl ErrorDetail {
    /// The code as the enum, `None` when this build does not know it.
    #[must_use]
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert!(seen.insert(c.as_str()), "duplicate {c}");
            assert!((400..600).contains(&c.status()));
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn body_omits_absent_fields() {
        let body = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::MissingToken.as_str().into(),
                message: "m".into(),
                sqlstate: None,
                statement_index: None,
                pg: PgFields::default(),
            },
        };
        let json = serde_json::to_string(&body).unwrap_or_default();
        assert_eq!(json, r#"{"error":{"code":"missing_token","message":"m"}}"#);
        // Older bodies (no PostgreSQL fields) still parse; the fields come back when present.
        let old: Result<ErrorBody, _> = serde_json::from_str(&json);
        assert_eq!(old.ok(), Some(body));
        let with: Result<ErrorBody, _> = serde_json::from_str(
            r#"{"error":{"code":"sql_error","message":"m","sqlstate":"23505","constraint":"t_pkey","position":8}}"#,
        );
        let pg = with.map(|b| b.error.pg).unwrap_or_default();
        assert_eq!((pg.constraint.as_deref(), pg.position), (Some("t_pkey"), Some(8)));
    }
}
