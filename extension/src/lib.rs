//! # makenaide-core
//!
//! A Lambda extension (a sidecar process started from `/opt/extensions/makenaide-core`) that lives as long as the
//! execution environment and owns everything expensive: a warm PostgreSQL pool and a warm, rate-governed HTTPS
//! client for Upbit. Functions reach both over plain HTTP on `127.0.0.1` (see docs/contracts.md).
//!
//! ## Lifecycle ([`run`])
//! 1. `main` binds `127.0.0.1:$MAKENAIDE_CORE_PORT` (fails loudly on `EADDRINUSE`) - before registering, so the
//!    port is ours before the runtime can start;
//! 2. register with the Extensions API (`Lambda-Extension-Name` = executable file name; SHUTDOWN only on Lambda
//!    Managed Instances), log `extension registered` with `elapsed_us` since process start;
//! 3. start serving, and warm up in the background (one PostgreSQL connection, the Upbit TLS connection), then
//!    log `extension ready` with `elapsed_us`;
//! 4. subscribe to the Telemetry API (platform events, listener on `sandbox.localdomain`'s address or 127.0.0.1;
//!    a failure only turns metrics off), then call `next` at once (the first invoke waits for it) and answer every
//!    INVOKE immediately; each `platform.report` then becomes one EMF line on stdout;
//! 5. SHUTDOWN: stop accepting, finish in-flight requests, close the pool (sessions end server-side), exit 0 well
//!    within Lambda's ~1.5 s.
//!
//! Transient failures (database down, Upbit 5xx) never end the process: any exit is `Extension.Crash` and resets
//! the environment. They are served as JSON 503/502/504 and recovered in the background. Invalid configuration is
//! reported through `/extension/init/error` (`Extension.ConfigInvalid`) with a message saying what to fix.
//!
//! [`serve`] is the HTTP server alone, drivable without Lambda (tests bind port 0 and pass their own shutdown).
//!
//! ## Layout
//! - `config`: every environment variable (documented consts), parsed into [`Config`].
//! - `error`: the one error enum; each variant is a stable API code with its HTTP status and JSON body.
//! - `lambda`: Extensions API lifecycle (register, `next` loop, init errors).
//! - `server`: hyper HTTP/1 server: routing, token auth, `X-Forwarded-For` refusal, body limit, connection cap,
//!   graceful drain.
//! - `aws`: the execution role's AWS calls: SigV4 signing, Secrets Manager `GetSecretValue`, RDS IAM tokens.
//! - `db`: bb8 pool with a custom manager (TLS per `sslmode`, stale detection without round trips, statement
//!   cache), transactions in few round trips, JSON <-> PostgreSQL conversion.
//! - `upbit`: reqwest keep-alive client (rustls + ring + webpki roots), per-group governor, retries, cache and
//!   coalescing.
//! - `telemetry`: Telemetry API subscription and listener; `metrics`: counters, per-invocation windows, EMF lines.
//! - `state`: [`AppState`] shared by handlers. `logging`: tracing setup.
//!
//! ## Environment variables
//! | variable | default | meaning |
//! |---|---|---|
//! | `MAKENAIDE_DATABASE_URL` | none (DB routes answer 503 `db_not_configured`) | `postgres://user:pass@host:port/db?sslmode=disable\|prefer\|require\|verify-ca\|verify-full[&sslrootcert=/path.pem]` |
//! | `MAKENAIDE_DATABASE_SECRET_ID` | none | Secrets Manager secret (ARN or name) holding the URL or RDS JSON; read in the background at start and after a 28P01; excludes `MAKENAIDE_DATABASE_URL` |
//! | `MAKENAIDE_DB_IAM_AUTH` | `false` | RDS IAM authentication: a token per new connection, password-less URL, TLS required |
//! | `MAKENAIDE_DB_SSLMODE` / `MAKENAIDE_DB_SSLROOTCERT` | URL's, else `require` for a secret or IAM | TLS settings winning over the URL's |
//! | `MAKENAIDE_AWS_ENDPOINT_URL` | none | tests only: AWS calls go to this AWS-compatible endpoint |
//! | `MAKENAIDE_UPBIT_BASE_URL` | `https://api.upbit.com` | Upbit REST base (no `/v1`) |
//! | `MAKENAIDE_CORE_PORT` | `4571` | localhost port (127.0.0.1 only) |
//! | `MAKENAIDE_CORE_TOKEN` | `AWS_SESSION_TOKEN` | shared secret, header `X-Makenaide-Token` |
//! | `MAKENAIDE_DB_POOL_SIZE` | `4` | max PostgreSQL connections |
//! | `MAKENAIDE_DB_CONNECT_TIMEOUT_MS` | `2000` | connect + checkout bound (a down DB answers 503 within it) |
//! | `MAKENAIDE_DB_STATEMENT_TIMEOUT_MS` | `10000` | default statement timeout (`SET LOCAL statement_timeout`) |
//! | `MAKENAIDE_DB_READ_ONLY` | `false` | every transaction `READ ONLY` |
//! | `MAKENAIDE_DB_STATEMENT_CACHE` | `true` | keep prepared statements per connection; `false` for PgBouncer transaction pooling < 1.21 |
//! | `MAKENAIDE_UPBIT_RATE_PER_SEC` | `10` | requests/s per Upbit group, whole environment |
//! | `MAKENAIDE_UPBIT_TIMEOUT_MS` | `10000` | Upbit deadline when the caller sends no `X-Makenaide-Deadline-Ms` |
//! | `MAKENAIDE_UPBIT_CACHE_TTL_MS` | `1000` | TTL of the identical-GET cache (0 = off; coalescing stays on) |
//! | `MAKENAIDE_UPBIT_CACHE_MAX_BYTES` | `8388608` | byte bound of that cache (and 1,024 entries at most) |
//! | `MAKENAIDE_MAX_BODY_BYTES` | `6291456` | request body limit (413) |
//! | `MAKENAIDE_MAX_CONNECTIONS` | `256` | inbound connection cap (the longest-idle connection makes room; 429 when all are busy) |
//! | `MAKENAIDE_HEADER_READ_TIMEOUT_MS` | `10000` | bound on sending a request head, from its first byte |
//! | `MAKENAIDE_IDLE_TIMEOUT_MS` | `90000` | keep-alive idle bound (0 = never), frozen time not counted |
//! | `AWS_LAMBDA_LOG_FORMAT` / `AWS_LAMBDA_LOG_LEVEL` / `RUST_LOG` | text / info | logging |
//! | `MAKENAIDE_METRICS` | on | `off`: no Telemetry API subscription, no listener, no EMF lines |
//! | `MAKENAIDE_METRICS_NAMESPACE` | `Makenaide` | CloudWatch namespace of the EMF lines |
//! | `MAKENAIDE_TELEMETRY_PORT` | `4572` | telemetry listener port (`0` = any free port) |
//! | `MAKENAIDE_METRICS_INTERVAL_MS` | `60000` | Managed Instances only: one aggregated EMF line per interval |
//! | `AWS_LAMBDA_INITIALIZATION_TYPE` | | `lambda-managed-instances` → register SHUTDOWN only |
//! | `AWS_LAMBDA_RUNTIME_API` | set by Lambda | Extensions API address (scheme and path prefix allowed) |

pub mod aws;
pub mod config;
pub mod db;
pub mod error;
pub mod lambda;
pub mod logging;
pub mod metrics;
mod server;
mod state;
pub mod telemetry;
pub mod upbit;

pub use config::Config;
pub use error::Error;
pub use server::serve;
pub use state::AppState;

use lambda::now_ms;
use std::time::Duration;
use tokio::net::TcpListener;

/// Binds the localhost API on `127.0.0.1:port`, only loopback: the API must not be reachable from any other
/// address. The error says what to fix, for `/extension/init/error`.
///
/// # Errors
/// The port is taken (another layer?) or cannot be bound.
pub async fn bind(port: u16) -> Result<TcpListener, String> {
    tokio::net::TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("127.0.0.1:{port} is already in use (another layer?): set MAKENAIDE_CORE_PORT to a free port")
        } else {
            format!("cannot listen on 127.0.0.1:{port} ({e}): set MAKENAIDE_CORE_PORT to a usable port")
        }
    })
}

/// Shutdown budget when SHUTDOWN carries no usable deadline (Lambda gives external extensions ~1.5-1.7 s).
const DEFAULT_SHUTDOWN_BUDGET: Duration = Duration::from_millis(1500);
/// Kept in reserve before the SHUTDOWN deadline (exit itself, log flushing, clock skew).
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(150);
/// Part of the budget reserved for closing the pool after the drain.
const POOL_CLOSE_BUDGET: Duration = Duration::from_millis(250);
/// How long SHUTDOWN waits (alongside the drain) for the reports of invocations that have none yet.
const METRICS_FLUSH_WAIT: Duration = Duration::from_millis(500);

/// Runs the extension under Lambda: register, serve, warm up, process events until SHUTDOWN, drain, close.
/// `started` is the process start (for the `elapsed_us` of the `registered`/`ready` log lines).
///
/// Returns `Ok(())` after a clean SHUTDOWN (exit 0).
///
/// # Errors
/// Registration failed, or the Extensions API failed later (not recoverable: Lambda resets the environment).
pub async fn run(config: Config, listener: TcpListener, started: std::time::Instant) -> Result<(), Error> {
    let name = lambda::extension_name();
    let events = config.lambda_events();
    let registered = lambda::register(&name, events).await?;
    tracing::info!(
        elapsed_us = elapsed_us(started),
        extension = %name,
        events = %events.join(","),
        function = %registered.function_name,
        "extension registered"
    );

    let state = match AppState::new(config) {
        Ok(state) => state,
        Err(e) => {
            let _ = lambda::report_init_error(&registered.id, lambda::ERROR_TYPE_CONFIG, &e.to_string()).await;
            return Err(e);
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(state.clone(), listener, async move {
        let _ = stop_rx.await;
    }));
    let warm = state.clone();
    tokio::spawn(async move {
        warm.warm_up().await;
        tracing::info!(
            elapsed_us = elapsed_us(started),
            db = %warm.db().status().as_str(),
            upbit = %if warm.upbit().is_warm() { "ready" } else { "cold" },
            "extension ready"
        );
    });

    // Telemetry: after register, before the first `next` (Lambda wants subscriptions during Init).
    let process_start_ms = now_ms().saturating_sub(elapsed_us(started) / 1000) as i64;
    let function_name = std::env::var(config::ENV_AWS_LAMBDA_FUNCTION_NAME)
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| registered.function_name.clone());
    let telemetry = telemetry::start(state.config(), &registered.id, &function_name, process_start_ms).await;

    let events_loop = registered.events_loop;
    tokio::pin!(events_loop);
    let shutdown = tokio::select! {
        err = &mut events_loop => return Err(err),
        Ok(s) = registered.shutdown => s,
        reason = os_signal() => lambda::Shutdown { deadline_ms: now_ms() + DEFAULT_SHUTDOWN_BUDGET.as_millis() as u64, reason },
    };

    let shutdown_started = std::time::Instant::now();
    let left = Duration::from_millis(shutdown.deadline_ms.saturating_sub(now_ms()));
    let budget = if left.is_zero() {
        DEFAULT_SHUTDOWN_BUDGET
    } else {
        left.min(Duration::from_secs(2))
    }
    .saturating_sub(SHUTDOWN_MARGIN)
    .max(Duration::from_millis(300));
    tracing::info!(reason = %shutdown.reason, budget_ms = budget.as_millis() as u64, "shutdown: draining");
    let _ = stop_tx.send(());
    // Alongside the drain: the lines of invocations whose report has not come yet.
    let flush = async {
        if let Some(t) = &telemetry {
            t.recorder.flush(METRICS_FLUSH_WAIT.min(budget / 3)).await;
        }
    };
    let drain = tokio::time::timeout(budget.saturating_sub(POOL_CLOSE_BUDGET), server);
    if tokio::join!(drain, flush).0.is_err() {
        tracing::warn!("requests still in flight at the shutdown deadline: closing anyway");
    }
    let close_budget = budget
        .saturating_sub(shutdown_started.elapsed())
        .max(Duration::from_millis(50));
    state.close(close_budget).await;
    tracing::info!(elapsed_us = elapsed_us(shutdown_started), "shutdown complete");
    Ok(())
}

fn elapsed_us(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// SIGTERM / SIGINT: Lambda itself never signals an extension that subscribed to SHUTDOWN, but emulators and local
/// runs do; treat them as a SHUTDOWN with the default budget.
async fn os_signal() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".into(),
        _ = int.recv() => "SIGINT".into(),
    }
}
