//! The glue every function binary shares, so each `main.rs` is a few lines: logging, the [`CoreClient`]
//! (created once per execution environment so its keep-alive connection survives across invocations), a
//! current-thread tokio runtime (one invocation at a time; no worker threads to start on a cold start), the
//! Lambda deadline passed on to the extension, and the result [`Envelope`].

use crate::client::CoreClient;
use crate::envelope::Envelope;
use crate::error::PipelineError;
use lambda_runtime::{service_fn, LambdaEvent};
use serde::Serialize;
use serde_json::Value;
use std::future::Future;
use std::time::Instant;

/// Run a Lambda function whose handler takes the client (with this invocation's deadline) and the raw event.
/// Returns only if the runtime loop ends (it normally never does).
pub fn run_function<F, Fut, R>(name: &'static str, handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(CoreClient, Value) -> Fut,
    Fut: Future<Output = Result<R, PipelineError>>,
    R: Serialize,
{
    crate::logging::init();
    let client = CoreClient::from_env()?;
    tracing::debug!(function = name, port = client.port(), "starting");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handler = &handler;
    let client = &client;
    rt.block_on(lambda_runtime::run(service_fn(move |ev: LambdaEvent<Value>| {
        let started = Instant::now();
        let request_id = ev.context.request_id.clone();
        let fut = handler(client.for_lambda_deadline(ev.context.deadline), ev.payload);
        async move {
            match fut.await {
                Ok(r) => Ok(Envelope::new(r, started.elapsed())),
                Err(e) => {
                    tracing::error!(function = name, request_id, error_type = e.error_type(), error = %e, "invocation failed");
                    Err(e)
                }
            }
        }
    })))
}
