//! The harness's error type: everything that can go wrong while starting, driving or cleaning up an emulated
//! Lambda environment or a test database. Tests mostly `expect()` these, so every variant says what to fix.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of the local harness (`lambda_env`, `pg`, the main job).
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A binary (function, extension) was not found where the harness looks for it.
    #[error("binary `{name}` not found (looked in: {}); build it first, e.g. `cargo build -p {name}`, or point MAKENAIDE_BIN_DIR at a directory holding it", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    BinaryNotFound { name: String, tried: Vec<PathBuf> },

    /// Spawning a process failed.
    #[error("cannot spawn {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The emulated Runtime/Extensions API could not start.
    #[error("lambda simulator: {0}")]
    Simulator(String),

    /// The environment's Init phase failed (extension init error, crash, runtime init error, timeout).
    #[error("init failed: {0}")]
    InitFailed(Box<crate::lambda_env::InitFailure>),

    /// Something did not happen within the time the harness allows for it.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },

    /// The environment is in a state that does not allow the operation.
    #[error("invalid state: {0}")]
    State(String),

    /// HTTP call to the extension's localhost API failed at the transport level.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),

    /// PostgreSQL error from a helper connection.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),

    /// A helper command (initdb, pg_ctl, openssl) failed.
    #[error("command `{command}` failed: {detail}")]
    Command { command: String, detail: String },

    /// Plain I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// JSON (de)serialisation.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias used across the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
