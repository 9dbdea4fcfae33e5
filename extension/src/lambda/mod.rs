//! Lambda Extensions API lifecycle only: register, the `next` loop, init-error reporting (the transport is
//! `api.rs`). No business logic: INVOKE is acknowledged at once, SHUTDOWN is handed to the caller.
//!
//! Facts this relies on (see shared/reference/lambda-platform.md):
//! - `Lambda-Extension-Name` must equal the executable's file name under /opt/extensions: argv\[0\]'s file name.
//! - `AWS_LAMBDA_RUNTIME_API` is `host:port` on Lambda and `http://host:port/prefix` under `cargo lambda watch`;
//!   a value that does not parse fails Init with a message naming it (never a panic: that would be a bare
//!   `Extension.Crash`).
//! - After `/init/error` Lambda accepts no more calls from the extension: the caller exits.
//! - After SHUTDOWN no further `next` is sent: the process exits once the drain is done.
//! - An event type this build does not know (a newer Lambda) is logged and skipped, never fatal.

pub mod api;

use crate::error::Error;
use api::{Api, Endpoint};
use bytes::Bytes;
use http::{Method, StatusCode};
use makenaide_contract::{Deadline, DeadlineProblem};
use serde::Deserialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// Extensions API routes (2020-01-01).
const REGISTER_PATH: &str = "/2020-01-01/extension/register";
const NEXT_PATH: &str = "/2020-01-01/extension/event/next";
const INIT_ERROR_PATH: &str = "/2020-01-01/extension/init/error";
/// Request headers of the Extensions API.
const NAME_HEADER: &str = "Lambda-Extension-Name";
/// The identifier `register` returns, sent on every later call.
pub const ID_HEADER: &str = "Lambda-Extension-Identifier";
const ERROR_TYPE_HEADER: &str = "Lambda-Extension-Function-Error-Type";

/// `Lambda-Extension-Function-Error-Type` for a configuration problem.
pub const ERROR_TYPE_CONFIG: &str = "Extension.ConfigInvalid";
/// Fallback registration name when argv\[0\] has no usable file name.
const DEFAULT_NAME: &str = "makenaide-core";

/// Current Unix epoch time in milliseconds.
#[must_use]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Logs, once per process and `source`, that a deadline was not a plausible absolute time (see
/// `makenaide_contract::deadline`: emulators send durations, 0 or expired times) and is ignored.
pub fn warn_implausible_deadline(source: &'static str, value_ms: u64, problem: DeadlineProblem) {
    static WARNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let first = WARNED.lock().is_ok_and(|mut w| {
        let first = !w.contains(&source);
        if first {
            w.push(source);
        }
        first
    });
    if first {
        tracing::warn!(
            "{source} = {value_ms} is not a plausible deadline ({problem}): ignored, the default bounds apply \
             (an emulator's quirk; Lambda sends an epoch time at most 15 minutes ahead)"
        );
    }
}

/// A SHUTDOWN event.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Absolute Unix epoch ms by which the process must be gone.
    pub deadline_ms: u64,
    /// SPINDOWN | TIMEOUT | FAILURE (or SIGTERM/SIGINT outside Lambda).
    pub reason: String,
}

/// A registered extension.
pub struct Registered<L> {
    /// `Lambda-Extension-Identifier`.
    pub id: String,
    /// Function name from the register reply.
    pub function_name: String,
    /// The `next` loop; resolves only if the Extensions API fails.
    pub events_loop: L,
    /// Fires on SHUTDOWN.
    pub shutdown: oneshot::Receiver<Shutdown>,
}

/// argv\[0\]'s file name: what Lambda expects as `Lambda-Extension-Name`.
#[must_use]
pub fn extension_name() -> String {
    std::env::args_os()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_owned)
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAME.to_owned())
}

/// The Runtime API from `AWS_LAMBDA_RUNTIME_API`.
///
/// # Errors
/// Missing or unparsable (the message names the value and what to do).
pub fn endpoint() -> Result<Endpoint, Error> {
    let var = crate::config::ENV_AWS_LAMBDA_RUNTIME_API;
    let value = std::env::var(var).map_err(|_| {
        Error::Lambda(format!(
            "{var} is not set: run the extension under Lambda or an emulator (cargo lambda watch, the test harness)"
        ))
    })?;
    Endpoint::parse(&value).map_err(|e| Error::Lambda(format!("{var}={value:?}: {e}")))
}

/// Checks `AWS_LAMBDA_RUNTIME_API` is present and parses.
///
/// # Errors
/// Missing or unparsable.
pub fn check_runtime_api() -> Result<(), Error> {
    endpoint().map(|_| ())
}

/// `register`'s reply body (only what is used).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterReply {
    #[serde(default)]
    function_name: String,
}

/// One event from `next`. Fields are optional so that a sparse emulator's event still parses.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    event_type: String,
    #[serde(default)]
    deadline_ms: u64,
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    shutdown_reason: String,
}

async fn register_with(api: &Api, name: &str, events: &[&str]) -> Result<(String, String), Error> {
    let body = serde_json::to_vec(&serde_json::json!({ "events": events }))
        .map_err(|e| Error::Lambda(format!("register body: {e}")))?;
    let reply = api
        .call(Method::POST, REGISTER_PATH, &[(NAME_HEADER, name)], Bytes::from(body))
        .await?;
    if reply.status != StatusCode::OK {
        return Err(Error::Lambda(format!(
            "register failed: HTTP {}: {}",
            reply.status.as_u16(),
            reply.body_excerpt()
        )));
    }
    let id = reply
        .header(ID_HEADER)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Error::Lambda(format!("register answered 200 without {ID_HEADER}")))?
        .to_owned();
    // An emulator may answer with an empty or sparse body: the function name is informational.
    let function_name = serde_json::from_slice::<RegisterReply>(&reply.body)
        .map(|r| r.function_name)
        .unwrap_or_default();
    Ok((id, function_name))
}

/// Registers for `events` and returns the `next` loop (not yet polled: the first `next` happens when the caller
/// starts awaiting it, after its background warm-up has been spawned).
///
/// # Errors
/// Registration refused or the Extensions API unreachable.
pub async fn register(
    name: &str,
    events: &'static [&'static str],
) -> Result<Registered<impl Future<Output = Error>>, Error> {
    let api = Arc::new(Api::new(endpoint()?));
    let (id, function_name) = register_with(&api, name, events).await?;
    let (tx, rx) = oneshot::channel();
    let loop_id = id.clone();
    let events_loop = async move {
        let mut tx = Some(tx);
        loop {
            let reply = match api
                .call(Method::GET, NEXT_PATH, &[(ID_HEADER, &loop_id)], Bytes::new())
                .await
            {
                Ok(r) => r,
                Err(e) => return Error::Lambda(format!("event loop failed: {e}")),
            };
            if reply.status != StatusCode::OK {
                return Error::Lambda(format!(
                    "event loop failed: next answered HTTP {}: {}",
                    reply.status.as_u16(),
                    reply.body_excerpt()
                ));
            }
            let event: Event = match serde_json::from_slice(&reply.body) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, body = %reply.body_excerpt(), "unreadable event from next: skipped");
                    continue;
                }
            };
            match event.event_type.as_str() {
                // Nothing to do per invocation: calling `next` again at once means the extension never holds up
                // the function (a stalled `next` stalls every invocation).
                "INVOKE" => {
                    // Only checked, never used to bound requests: the function's next request can reach us
                    // before this event does, and the previous invocation's deadline would then cut it short.
                    // Requests carry their own deadline header.
                    if let Deadline::Unknown(problem) = Deadline::classify(Some(event.deadline_ms), now_ms()) {
                        warn_implausible_deadline("the INVOKE event's deadlineMs", event.deadline_ms, problem);
                    }
                    tracing::trace!(request_id = %event.request_id, "invoke");
                    crate::metrics::on_invoke(&event.request_id);
                }
                "SHUTDOWN" => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Shutdown {
                            deadline_ms: event.deadline_ms,
                            reason: event.shutdown_reason,
                        });
                    }
                    // No further `next` after SHUTDOWN; the process exits when drained.
                    return std::future::pending::<Error>().await;
                }
                other => tracing::warn!(event_type = other, "unknown event type from next: skipped"),
            }
        }
    };
    Ok(Registered {
        id,
        function_name,
        events_loop,
        shutdown: rx,
    })
}

/// Posts `/extension/init/error` for a registered extension. After this Lambda accepts no more calls from us:
/// the caller exits.
///
/// # Errors
/// The Extensions API could not be reached.
pub async fn report_init_error(id: &str, error_type: &str, message: &str) -> Result<(), Error> {
    let api = Api::new(endpoint()?);
    report_init_error_with(&api, id, error_type, message).await
}

async fn report_init_error_with(api: &Api, id: &str, error_type: &str, message: &str) -> Result<(), Error> {
    let body = serde_json::to_vec(&serde_json::json!({
        "errorMessage": message,
        "errorType": error_type,
        "stackTrace": [],
    }))
    .map_err(|e| Error::Lambda(format!("init/error body: {e}")))?;
    let reply = api
        .call(
            Method::POST,
            INIT_ERROR_PATH,
            &[(ID_HEADER, id), (ERROR_TYPE_HEADER, error_type)],
            Bytes::from(body),
        )
        .await
        .map_err(|e| Error::Lambda(format!("init/error failed: {e}")))?;
    tracing::debug!(status = reply.status.as_u16(), "init error reported");
    Ok(())
}

/// For failures before anything else could start (invalid configuration, port in use): registers (SHUTDOWN only,
/// valid on every Lambda flavour) just to obtain an identifier, reports `error_type` with `message`, and returns.
/// Outside Lambda it only logs.
pub async fn fail_init(error_type: &str, message: &str) {
    tracing::error!(error_type, "{message}");
    let api = match endpoint() {
        Ok(e) => Api::new(e),
        Err(e) => {
            tracing::error!(error = %e, "cannot report the init error to Lambda");
            return;
        }
    };
    match register_with(&api, &extension_name(), &["SHUTDOWN"]).await {
        Ok((id, _)) => {
            if let Err(e) = report_init_error_with(&api, &id, error_type, message).await {
                tracing::error!(error = %e, "cannot report the init error to Lambda");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot register to report the init error"),
    }
}
