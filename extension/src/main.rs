//! Entry point of the `makenaide-core` extension: bind, then hand over to [`makenaide_core::run`].
//! Everything that can fail before the lifecycle starts (configuration, the port) is reported to Lambda through
//! `/extension/init/error` with a message that says what to fix, then the process exits.

use makenaide_core::{config::Config, lambda, logging};
use std::process::ExitCode;

fn main() -> ExitCode {
    // First thing: the reference point for the "registered"/"ready" timings.
    let started = std::time::Instant::now();
    logging::init();
    // One thread: the work is loopback and network I/O, and a request handed between worker threads costs more
    // (futex wake-ups, measured in docs/benchmarks.md) than it could gain. Lambda gives small functions less than
    // one vCPU anyway; Managed Instances' concurrent requests are served concurrently on this one thread.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("makenaide-core")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let config = match Config::from_env() {
            Ok(config) => config,
            Err(e) => {
                lambda::fail_init(lambda::ERROR_TYPE_CONFIG, &format!("invalid configuration: {e}")).await;
                return ExitCode::FAILURE;
            }
        };
        // 127.0.0.1 only: the API must not be reachable from any other address.
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await {
            Ok(listener) => listener,
            Err(e) => {
                let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        "127.0.0.1:{} is already in use (another layer?): set MAKENAIDE_CORE_PORT to a free port",
                        config.port
                    )
                } else {
                    format!(
                        "cannot listen on 127.0.0.1:{} ({e}): set MAKENAIDE_CORE_PORT to a usable port",
                        config.port
                    )
                };
                lambda::fail_init(lambda::ERROR_TYPE_CONFIG, &hint).await;
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
