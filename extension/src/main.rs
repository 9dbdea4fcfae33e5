//! Entry point of the `makenaide-core` extension: read the configuration, bind, then hand over to
//! [`makenaide_core::run`]. What fails before the lifecycle starts (configuration, the port) is reported to Lambda
//! through `/extension/init/error` with a message that says what to fix, then the process exits.

use makenaide_core::{config::Config, lambda, logging};
use std::process::ExitCode;

// Measurement builds only (`bench/allocator.sh`): the layer ships musl's own allocator.
#[cfg(feature = "alloc-mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
#[cfg(feature = "alloc-dlmalloc")]
#[global_allocator]
static GLOBAL: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() -> ExitCode {
    // First thing: the reference point for the "registered"/"ready" timings.
    let started = std::time::Instant::now();
    logging::init();
    // One thread: the work is loopback and network I/O, and a request handed between worker threads costs more
    // (futex wake-ups, measured in docs/benchmarks.md) than it could gain. Lambda gives small functions less than
    // one vCPU anyway; Managed Instances' concurrent requests are served concurrently on this one thread.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let setup = match Config::from_env() {
            Ok(config) => makenaide_core::bind(config.port).await.map(|l| (config, l)),
            Err(e) => Err(format!("invalid configuration: {e}")),
        };
        let (config, listener) = match setup {
            Ok(ok) => ok,
            Err(message) => {
                lambda::fail_init(lambda::ERROR_TYPE_CONFIG, &message).await;
                return ExitCode::FAILURE;
            }
        };
        match makenaide_core::run(config, listener, started).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "extension stopped");
                ExitCode::FAILURE
            }
        }
    });
    // Do not wait for lingering blocking tasks (e.g. a DNS lookup): the drain is done, exit now.
    runtime.shutdown_timeout(std::time::Duration::from_millis(50));
    code
}
