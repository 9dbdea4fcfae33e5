//! makenaide-pipeline: everything the four Makenaide functions share.
//!
//! - [`client`]: the loopback HTTP/1 client for the makenaide-core extension (no TLS, no PostgreSQL driver);
//!   [`deadline`]: the invocation's time budget (emulators' implausible deadlines included);
//! - [`upbit`] types and calls (through the extension's mirror of Upbit's paths), [`db`] helpers;
//! - the business logic: [`migrations`] (db-initializer), [`scanner`], [`collector`], [`orchestrator`];
//! - [`envelope`], [`error`], [`logging`] and [`runtime`], the glue for the tiny `main.rs` of each function.
//!
//! Each step is a plain async function taking a [`CoreClient`], so tests and harnesses can call it directly:
//! `run_collector(&CoreClient::new(port, token), CollectEvent::from_value(&json)?)`.

pub mod client;
pub mod collector;
pub mod db;
pub mod deadline;
pub mod envelope;
pub mod error;
mod event;
pub mod logging;
pub mod migrations;
pub mod orchestrator;
pub mod runtime;
pub mod scanner;
pub mod upbit;

pub use client::CoreClient;
pub use collector::{run_collector, CollectEvent, CollectResult, FailedMarket, Interval};
pub use envelope::Envelope;
pub use error::{CoreError, PipelineError};
pub use event::is_market_code;
/// Re-exported so the binaries need no direct dependency on it.
pub use lambda_runtime;
pub use migrations::{run_migrations, InitResult};
pub use orchestrator::{run_orchestrator, OrchestrateEvent, OrchestrateResult, Step};
pub use runtime::run_function;
pub use scanner::{run_scanner, ScanEvent, ScanResult};
