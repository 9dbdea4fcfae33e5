//! `bench-direct-collector` (benchmark only, never shipped): the data collector written as a plain Rust Lambda
//! function with **no extension**: tokio-postgres + reqwest used directly, a new PostgreSQL connection (TLS +
//! SCRAM) per invocation, the HTTP client kept across invocations. It is variant (c) of `makenaide-bench`'s
//! warm and cold-start figures: what a Rust port without makenaide-core would cost.
//!
//! Event and result mirror `makenaide-data-collector` (`{"markets": [...], "interval": "days", "count": 3}`).

use std::sync::Arc;
use std::time::Instant;

use lambda_runtime::{service_fn, Error, LambdaEvent};
use makenaide_tests::bench::direct;
use serde_json::{json, Value};

fn main() -> Result<(), Error> {
    let cfg = Arc::new(direct::DirectConfig::from_env()?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cfg = &cfg;
    rt.block_on(lambda_runtime::run(service_fn(
        move |ev: LambdaEvent<Value>| async move {
            let started = Instant::now();
            let result = direct::collect(cfg, &ev.payload).await?;
            Ok::<Value, Error>(json!({
                "success": true,
                "result": result,
                "execution_time": started.elapsed().as_secs_f64(),
                "timestamp": makenaide_pipeline::envelope::utc_iso(std::time::SystemTime::now()),
            }))
        },
    )))
}
