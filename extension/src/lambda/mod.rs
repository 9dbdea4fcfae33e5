//! Lambda Extensions API lifecycle only (on the `lambda-extension` crate): register, the `next` loop, init-error
//! reporting. No business logic: INVOKE is acknowledged at once, SHUTDOWN is handed to the caller.
//!
//! Facts this relies on (see shared/reference/lambda-platform.md):
//! - `Lambda-Extension-Name` must equal the executable's file name under /opt/extensions: we pass argv\[0\]'s file
//!   name explicitly (the crate would `expect()` on a strange argv\[0\]).
//! - `AWS_LAMBDA_RUNTIME_API` is interpreted only by `lambda_runtime_api_client` (the crate's transport), which
//!   keeps a scheme and a path prefix (`cargo lambda watch` gives `http://127.0.0.1:9000/.rt`). We only check it is
//!   present and parses as a URI, because the crate panics otherwise and a panic would be a bare `Extension.Crash`.
//! - The crate posts `/init/error` and *returns* when the events processor errs; ours never errs (transient
//!   failures are served as 503s), so the loop only ends on a real Extensions API failure.
//! - On SHUTDOWN the processor signals the lifecycle and then never completes: the crate must not call `next`
//!   again, the process exits once the drain is done.

use crate::error::Error;
use lambda_extension::requests::{init_error, ErrorRequest};
use lambda_extension::{service_fn, Extension, LambdaEvent, NextEvent};
use makenaide_contract::{Deadline, DeadlineProblem};
use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

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

/// Checks `AWS_LAMBDA_RUNTIME_API` is usable by the crate (which would panic otherwise).
///
/// # Errors
/// Missing or unparsable.
pub fn check_runtime_api() -> Result<(), Error> {
    let var = crate::config::ENV_AWS_LAMBDA_RUNTIME_API;
    let value = std::env::var(var).map_err(|_| {
        Error::Lambda(format!(
            "{var} is not set: run the extension under Lambda or an emulator (cargo lambda watch, the test harness)"
        ))
    })?;
    let uri: http::Uri = value
        .parse()
        .map_err(|e| Error::Lambda(format!("{var}={value:?} is not a URI: {e}")))?;
    if uri.authority().is_none() {
        return Err(Error::Lambda(format!("{var}={value:?} has no host:port")));
    }
    Ok(())
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
    check_runtime_api()?;
    let (tx, rx) = oneshot::channel();
    let tx = Arc::new(Mutex::new(Some(tx)));
    let processor = service_fn(move |event: LambdaEvent| {
        let tx = tx.clone();
        async move {
            match event.next {
                // Nothing to do per invocation: answering at once lets the crate call `next` right away, so the
                // extension never holds up the function (a stalled `next` stalls every invocation).
                NextEvent::Invoke(invoke) => {
                    // Only checked, never used to bound requests: the function's next request can reach us
                    // before this event does, and the previous invocation's deadline would then cut it short.
                    // Requests carry their own deadline header.
                    if let Deadline::Unknown(problem) = Deadline::classify(Some(invoke.deadline_ms), now_ms()) {
                        warn_implausible_deadline("the INVOKE event's deadlineMs", invoke.deadline_ms, problem);
                    }
                    tracing::trace!(request_id = %invoke.request_id, "invoke");
                    crate::metrics::on_invoke(&invoke.request_id);
                }
                NextEvent::Shutdown(s) => {
                    let taken = tx.lock().ok().and_then(|mut t| t.take());
                    if let Some(tx) = taken {
                        let _ = tx.send(Shutdown {
                            deadline_ms: s.deadline_ms,
                            reason: s.shutdown_reason,
                        });
                    }
                    // Never return: no further `next` after SHUTDOWN; the process exits when drained.
                    std::future::pending::<()>().await;
                }
            }
            Ok::<(), Infallible>(())
        }
    });
    let registered = Extension::new()
        .with_extension_name(name)
        .with_events(events)
        .with_events_processor(processor)
        .register()
        .await
        .map_err(|e| Error::Lambda(format!("register failed: {e}")))?;
    let id = registered.extension_id.clone();
    let function_name = registered.function_name.clone();
    let events_loop = async move {
        match registered.run().await {
            Ok(()) => Error::Lambda("the Extensions API event loop ended".into()),
            Err(e) => Error::Lambda(format!("event loop failed: {e}")),
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
    let body = ErrorRequest {
        error_message: message,
        error_type,
        stack_trace: Vec::new(),
    };
    let req = init_error(id, error_type, Some(body)).map_err(|e| Error::Lambda(e.to_string()))?;
    let client = lambda_runtime_api_client::PooledClient::builder().build();
    let resp = client
        .call(req)
        .await
        .map_err(|e| Error::Lambda(format!("init/error failed: {e}")))?;
    tracing::debug!(status = resp.status().as_u16(), "init error reported");
    Ok(())
}

/// For failures before anything else could start (invalid configuration, port in use): registers (SHUTDOWN only,
/// valid on every Lambda flavour) just to obtain an identifier, reports `error_type` with `message`, and returns.
/// Outside Lambda it only logs.
pub async fn fail_init(error_type: &str, message: &str) {
    tracing::error!(error_type, "{message}");
    if let Err(e) = check_runtime_api() {
        tracing::error!(error = %e, "cannot report the init error to Lambda");
        return;
    }
    let name = extension_name();
    let registered = Extension::new()
        .with_extension_name(&name)
        .with_events(&["SHUTDOWN"])
        .register()
        .await;
    match registered {
        Ok(r) => {
            if let Err(e) = report_init_error(&r.extension_id, error_type, message).await {
                tracing::error!(error = %e, "cannot report the init error to Lambda");
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot register to report the init error"),
    }
}
