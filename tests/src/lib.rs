//! Local harness.

pub mod bench;
pub mod error;
pub mod lambda_env;
pub mod main_job;
pub mod pg;
pub mod proptest_runner;
/// Reliability-report figures: reliability_* tests call `report::record` / `report!` (see the module docs).
pub mod report;
pub mod upbit_sim;
