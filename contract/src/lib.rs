//! Every name the makenaide-core extension and its callers agree on, defined once: the localhost API's headers,
//! the port and token variables with the token's fallback rule, the stable error codes with their HTTP status and
//! the error body, the `/db/query` and `/db/transaction` request and result types, the function names, the names
//! of the per-invocation metrics, and the rule that decides whether a deadline is a plausible absolute time.
//!
//! The extension, the function crates, the tests and the benchmarks all use this crate; docs/contracts.md is
//! checked against it (`tests/tests/contract_docs.rs`). serde only, no I/O: what reads the environment or the
//! clock passes the values in.

pub mod deadline;
pub mod error;
pub mod functions;
pub mod metrics;
pub mod sql;

pub use deadline::{Deadline, DeadlineProblem};
pub use error::{ErrorBody, ErrorCode, ErrorDetail, PgFields};
pub use sql::{Column, Isolation, QueryRequest, QueryResult, Statement, TransactionRequest, TransactionResult};

/// Header names of the localhost API (lower case, as HTTP/1 and `http::HeaderName` compare them).
pub mod headers {
    /// Request header carrying the shared secret ([`crate::env::CORE_TOKEN`], else
    /// [`crate::env::AWS_SESSION_TOKEN`]). Every route but `GET /ping` requires it.
    pub const TOKEN: &str = "x-makenaide-token";
    /// Request header: absolute Unix epoch ms after which the extension must not work on the request. A value
    /// that is not a plausible absolute time is ignored ([`crate::deadline`]).
    pub const DEADLINE: &str = "x-makenaide-deadline-ms";
    /// Response header: who produced the reply, one of [`SOURCE_UPBIT`], [`SOURCE_CACHE`], [`SOURCE_CORE`].
    pub const SOURCE: &str = "x-makenaide-source";
    /// Request header that is refused: the API serves the local function only, never a proxied caller.
    pub const FORWARDED_FOR: &str = "x-forwarded-for";
    /// Request header that is refused like [`FORWARDED_FOR`]: RFC 7239's standard form of the same information.
    pub const FORWARDED: &str = "forwarded";
    /// [`SOURCE`]: the reply came from Upbit just now.
    pub const SOURCE_UPBIT: &str = "upbit";
    /// [`SOURCE`]: the reply came from the extension's short Upbit cache (or a coalesced call).
    pub const SOURCE_CACHE: &str = "cache";
    /// [`SOURCE`]: the extension produced the reply itself (its own errors, `/ping`, `/db/*`).
    pub const SOURCE_CORE: &str = "core";

    /// `POST /sql` (Neon's wire format): `true` = rows as arrays (`rowAsArray`), else objects keyed by column name.
    /// A query's own `arrayMode` field wins. Anything but `true` is false, as at Neon's proxy.
    pub const NEON_ARRAY_MODE: &str = "neon-array-mode";
    /// `POST /sql`: `true` = every value as PostgreSQL's text output (what `@neondatabase/serverless` always asks
    /// for, then parses by type OID); otherwise booleans, int2/int4, finite floats, json and arrays as JSON.
    pub const NEON_RAW_TEXT_OUTPUT: &str = "neon-raw-text-output";
    /// `POST /sql` batch: `ReadUncommitted`, `ReadCommitted`, `RepeatableRead` or `Serializable`.
    pub const NEON_BATCH_ISOLATION_LEVEL: &str = "neon-batch-isolation-level";
    /// `POST /sql` batch: `true` = `READ ONLY` transaction.
    pub const NEON_BATCH_READ_ONLY: &str = "neon-batch-read-only";
    /// `POST /sql` batch: `true` = `DEFERRABLE` (takes effect with serializable read-only).
    pub const NEON_BATCH_DEFERRABLE: &str = "neon-batch-deferrable";
    /// `POST /sql`: the connection string the drivers send. Accepted and ignored: the extension's own pool
    /// (`MAKENAIDE_DATABASE_URL` / secret) and [`TOKEN`] are what count.
    pub const NEON_CONNECTION_STRING: &str = "neon-connection-string";
}

/// Route paths of the localhost API (the Upbit mirror uses Upbit's own `/v1/...` paths).
pub mod routes {
    /// `GET`, no token: liveness and warm-up state.
    pub const PING: &str = "/ping";
    /// `POST` one statement ([`crate::QueryRequest`] → [`crate::QueryResult`]).
    pub const DB_QUERY: &str = "/db/query";
    /// `POST` statements in one transaction ([`crate::TransactionRequest`] → [`crate::TransactionResult`]).
    pub const DB_TRANSACTION: &str = "/db/transaction";
    /// `POST`, token required: Neon's SQL-over-HTTP wire format (`{query, params}` or `{queries: [...]}`), what
    /// `@neondatabase/serverless` and `drizzle-orm/neon-http` speak (README "SQL-over-HTTP drivers (Neon)").
    pub const SQL: &str = "/sql";
    /// `GET`, token required: the extension's counters since it started, as JSON (names in [`crate::metrics`]).
    pub const METRICS: &str = "/metrics";
}

/// Environment variables that the extension and its callers both read.
pub mod env {
    /// Localhost port of the extension's API.
    pub const CORE_PORT: &str = "MAKENAIDE_CORE_PORT";
    /// Default of [`CORE_PORT`]: clear of 2772/2773 (AWS's extensions), 8124–8126 (Datadog) and 9001 (Lambda).
    pub const DEFAULT_CORE_PORT: u16 = 4571;
    /// Shared secret between the function and the extension. Never logged.
    pub const CORE_TOKEN: &str = "MAKENAIDE_CORE_TOKEN";
    /// Lambda's session token: the token used when [`CORE_TOKEN`] is unset or empty, as AWS's Parameters and
    /// Secrets extension does. Never logged.
    pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    /// The function's timeout in seconds. Lambda's Runtime API gives an absolute deadline per invocation; the
    /// Runtime Interface Emulator also sets this variable, which is the fallback when an emulator's deadline
    /// header is not a plausible absolute time.
    pub const AWS_LAMBDA_FUNCTION_TIMEOUT: &str = "AWS_LAMBDA_FUNCTION_TIMEOUT";

    /// Where the token came from, by the one fallback rule both sides apply.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Token {
        /// The token to use, and the variable it was read from.
        Found {
            /// The secret itself.
            value: String,
            /// [`CORE_TOKEN`] or [`AWS_SESSION_TOKEN`].
            from: &'static str,
        },
        /// Neither variable holds a token; `session_token_empty` tells "set but empty" (what the Runtime Interface
        /// Emulator passes when it was given no credentials) from "not set" (e.g. SnapStart).
        Missing {
            /// `AWS_SESSION_TOKEN` is set to the empty string.
            session_token_empty: bool,
        },
    }

    impl Token {
        /// Applies the rule to the two variables' values (`None` = not set).
        #[must_use]
        pub fn resolve(core_token: Option<&str>, session_token: Option<&str>) -> Self {
            match (core_token.filter(|t| !t.is_empty()), session_token) {
                (Some(t), _) => Self::Found {
                    value: t.to_owned(),
                    from: CORE_TOKEN,
                },
                (None, Some(s)) if !s.is_empty() => Self::Found {
                    value: s.to_owned(),
                    from: AWS_SESSION_TOKEN,
                },
                (None, s) => Self::Missing {
                    session_token_empty: s.is_some(),
                },
            }
        }

        /// What to tell the user when there is no token.
        #[must_use]
        pub fn missing_message(session_token_empty: bool) -> String {
            let state = if session_token_empty {
                "is set but empty (the Runtime Interface Emulator passes it empty when it was given no AWS credentials)"
            } else {
                "is not set either (e.g. under SnapStart)"
            };
            format!(
                "no token: set {CORE_TOKEN} to a shared secret in the function's environment (the functions send it \
                 as X-Makenaide-Token); {AWS_SESSION_TOKEN}, the fallback, {state}"
            )
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn core_token_wins_then_session_token_then_missing() {
            let found = |v: &str, from| Token::Found { value: v.into(), from };
            assert_eq!(Token::resolve(Some("a"), Some("b")), found("a", CORE_TOKEN));
            assert_eq!(Token::resolve(Some(""), Some("b")), found("b", AWS_SESSION_TOKEN));
            assert_eq!(Token::resolve(None, Some("b")), found("b", AWS_SESSION_TOKEN));
            assert_eq!(
                Token::resolve(None, Some("")),
                Token::Missing {
                    session_token_empty: true
                }
            );
            assert_eq!(
                Token::resolve(Some(""), None),
                Token::Missing {
                    session_token_empty: false
                }
            );
            assert!(Token::missing_message(true).contains("is set but empty"));
            assert!(Token::missing_message(false).contains("is not set"));
        }
    }
}
