//! The crate's one error enum, and how it becomes a Lambda function error (`errorType` + `errorMessage`).
//!
//! Errors keep what the extension or Upbit said (code, message, SQLSTATE, HTTP status) so the harness and the
//! logs can tell a bad event from a down database from an Upbit 404 without parsing prose.

use lambda_runtime::Diagnostic;
use makenaide_contract::ErrorCode;
use std::fmt;

/// `errorType` values reported to Lambda (contract: docs/contracts.md "Functions").
pub mod error_type {
    /// The event is malformed or asks for something invalid.
    pub const INVALID_EVENT: &str = "InvalidEvent";
    /// The extension cannot be reached, refused the token, or is shutting down.
    pub const CORE_UNAVAILABLE: &str = "CoreUnavailable";
    /// PostgreSQL (through the extension) failed or rejected a statement.
    pub const DATABASE_ERROR: &str = "DatabaseError";
    /// Upbit failed, answered an error, or answered garbage.
    pub const UPSTREAM_ERROR: &str = "UpstreamError";
}

/// An error body produced by the extension itself: `{"error": {"code", "message", "sqlstate"?, "statement_index"?}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    /// HTTP status of the reply.
    pub status: u16,
    /// Stable machine-readable code (`db_unavailable`, `sql_error`, `upstream_deadline`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// PostgreSQL SQLSTATE, when PostgreSQL gave one.
    pub sqlstate: Option<String>,
    /// Index of the failing statement in a `/db/transaction`.
    pub statement_index: Option<usize>,
}

impl CoreError {
    /// The code as the contract's enum; `None` for a code newer than this build.
    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }

    /// True when the extension is reporting a failure of Upbit (after its retries) or of Upbit's rate budget,
    /// not of the database, the request or the extension itself.
    pub fn is_upstream(&self) -> bool {
        matches!(
            self.kind(),
            Some(ErrorCode::UpstreamError | ErrorCode::UpstreamDeadline)
        )
    }

    /// The `errorType` this extension error maps to.
    pub fn error_type(&self) -> &'static str {
        use ErrorCode::*;
        match self.kind() {
            Some(UpstreamError | UpstreamDeadline) => error_type::UPSTREAM_ERROR,
            // Problems reaching or talking to the extension itself, not the database behind it.
            Some(
                MissingToken | InvalidToken | ForwardedRequest | TooManyConnections | UriTooLong | HeadersTooLarge
                | ShuttingDown | NotFound | MethodNotAllowed | ConfigInvalid | Internal,
            ) => error_type::CORE_UNAVAILABLE,
            // Only the /db routes produce the others; an unknown (newer) code is most likely one of them too.
            Some(
                InvalidJson
                | InvalidRequest
                | InvalidParam
                | SqlError
                | StatementNotSupported
                | ReadOnly
                | BodyTooLarge
                | DbNotConfigured
                | DbUnavailable
                | DbOutcomeUnknown
                | DbBusy
                | DbCredentialsUnavailable
                | DbTimeout
                | RowLimitExceeded
                | ResponseTooLarge,
            )
            | None => error_type::DATABASE_ERROR,
        }
    }

    fn is_token_problem(&self) -> bool {
        matches!(self.kind(), Some(ErrorCode::MissingToken | ErrorCode::InvalidToken))
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (HTTP {}", self.code, self.status)?;
        if let Some(s) = &self.sqlstate {
            write!(f, ", sqlstate {s}")?;
        }
        if let Some(i) = self.statement_index {
            write!(f, ", statement {i}")?;
        }
        write!(f, "): {}", self.message)?;
        if self.is_token_problem() {
            f.write_str(
                " (set MAKENAIDE_CORE_TOKEN to the extension's token, or leave both unset to use AWS_SESSION_TOKEN)",
            )?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in a Makenaide function.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The event is malformed (bad interval, count 0, bad market code, wrong type, ...).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The extension could not be reached or did not answer in time (transport-level failure).
    #[error("makenaide-core extension unavailable: {0}")]
    CoreUnavailable(String),
    /// A write's connection to the extension broke after the request may have been sent: the extension may or may
    /// not have run it. Never resent by the client itself; the idempotent writes (`db::query_idempotent`, ...)
    /// resend it once, as for the extension's own `db_outcome_unknown`.
    #[error("makenaide-core: outcome unknown: {0}")]
    CoreOutcomeUnknown(String),
    /// The extension answered with one of its own error bodies.
    #[error("makenaide-core: {0}")]
    Core(CoreError),
    /// Upbit answered an error status (passed through unchanged by the extension).
    #[error("Upbit HTTP {status}: {message}")]
    Upbit {
        /// HTTP status from Upbit (e.g. 404).
        status: u16,
        /// Upbit's `error.name` (a number such as 404 or a string such as `invalid_query_payload`).
        name: Option<String>,
        /// Upbit's `error.message` (e.g. `Code not found`), or the raw body when it was not JSON.
        message: String,
    },
    /// A reply (from Upbit or the extension) did not have the expected shape.
    #[error("unexpected reply from {source_name}: {message}")]
    BadReply {
        /// `upbit` or `core`.
        source_name: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl PipelineError {
    /// Shorthand for [`PipelineError::InvalidEvent`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidEvent(msg.into())
    }

    /// The Lambda `errorType` for this error.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::InvalidEvent(_) => error_type::INVALID_EVENT,
            Self::CoreUnavailable(_) | Self::CoreOutcomeUnknown(_) => error_type::CORE_UNAVAILABLE,
            Self::Core(e) => e.error_type(),
            Self::Upbit { .. } => error_type::UPSTREAM_ERROR,
            Self::BadReply {
                source_name: "upbit", ..
            } => error_type::UPSTREAM_ERROR,
            Self::BadReply { .. } => error_type::CORE_UNAVAILABLE,
        }
    }

    /// True when the failure is about one request to Upbit (a bad market, an Upbit timeout), not about the
    /// extension or the environment: the collector reports such a market as failed and goes on.
    pub fn is_per_market(&self) -> bool {
        match self {
            Self::Upbit { .. }
            | Self::BadReply {
                source_name: "upbit", ..
            } => true,
            Self::Core(e) => e.is_upstream(),
            Self::InvalidEvent(_) | Self::CoreUnavailable(_) | Self::CoreOutcomeUnknown(_) | Self::BadReply { .. } => {
                false
            }
        }
    }

    /// HTTP status to report for a failed market (0 when there was no HTTP reply).
    pub fn status(&self) -> u16 {
        match self {
            Self::Core(e) => e.status,
            Self::Upbit { status, .. } => *status,
            _ => 0,
        }
    }

    /// The message to report for a failed market: Upbit's own message when there is one.
    pub fn short_message(&self) -> String {
        match self {
            Self::Upbit { message, .. } => message.clone(),
            Self::Core(e) => format!("{}: {}", e.code, e.message),
            Self::BadReply { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

impl From<PipelineError> for Diagnostic {
    fn from(e: PipelineError) -> Self {
        Diagnostic {
            error_type: e.error_type().to_owned(),
            error_message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(code: ErrorCode) -> PipelineError {
        PipelineError::Core(CoreError {
            status: code.status(),
            code: code.as_str().into(),
            message: "m".into(),
            sqlstate: Some("42P01".into()),
            statement_index: Some(1),
        })
    }

    #[test]
    fn error_types_follow_the_contract() {
        assert_eq!(PipelineError::invalid("x").error_type(), "InvalidEvent");
        assert_eq!(
            PipelineError::CoreUnavailable("x".into()).error_type(),
            "CoreUnavailable"
        );
        assert_eq!(core(ErrorCode::SqlError).error_type(), "DatabaseError");
        assert_eq!(core(ErrorCode::DbUnavailable).error_type(), "DatabaseError");
        assert_eq!(core(ErrorCode::UpstreamDeadline).error_type(), "UpstreamError");
        assert_eq!(core(ErrorCode::InvalidToken).error_type(), "CoreUnavailable");
        assert_eq!(core(ErrorCode::ShuttingDown).error_type(), "CoreUnavailable");
        let upbit = PipelineError::Upbit {
            status: 404,
            name: Some("404".into()),
            message: "Code not found".into(),
        };
        assert_eq!(upbit.error_type(), "UpstreamError");
        assert!(upbit.is_per_market());
        assert!(!core(ErrorCode::DbTimeout).is_per_market());
    }

    #[test]
    fn diagnostic_keeps_code_and_sqlstate() {
        let d: Diagnostic = core(ErrorCode::SqlError).into();
        assert_eq!(d.error_type, "DatabaseError");
        assert!(
            d.error_message
                .contains(makenaide_contract::ErrorCode::SqlError.as_str()),
            "{}",
            d.error_message
        );
        assert!(d.error_message.contains("sqlstate 42P01"), "{}", d.error_message);
        assert!(d.error_message.contains("statement 1"), "{}", d.error_message);
    }
}
