//! Local harness.

pub mod error;
pub mod lambda_env;
pub mod main_job;
pub mod pg;
pub mod upbit_sim;
