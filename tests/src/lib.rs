//! Local harness.

pub mod bench;
pub mod error;
pub mod lambda_env;
pub mod main_job;
/// moto_server for the credentials tests (Secrets Manager, IAM, STS on 127.0.0.1).
pub mod moto;
pub mod pg;
pub mod proptest_runner;
/// A Python function on the layer unpacked as Lambda does (/opt/extensions, /opt/python), under awslambdaric.
pub mod python_layer;
/// Reliability-report figures: reliability_* tests call `report::record` / `report!` (see the module docs).
pub mod report;
pub mod upbit_sim;
