//! Shared set-up of the end-to-end tests: a test database, the simulated Upbit and an emulated Lambda
//! environment running the real extension and one real function.

#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::time::Duration;

use makenaide_tests::lambda_env::{EnvConfig, LambdaEnv};
use makenaide_tests::pg::TestDb;
use serde_json::Value;

pub use makenaide_contract::functions::DATA_COLLECTOR as COLLECTOR;
pub use makenaide_contract::functions::DB_INITIALIZER as INITIALIZER;
pub use makenaide_contract::functions::ORCHESTRATOR;
pub use makenaide_contract::functions::SCANNER;
pub const CORE_APP_NAME: &str = "makenaide-core";
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);

/// The simulated Upbit as these tests use it.
pub struct Upbit {
    inner: makenaide_tests::upbit_sim::SimHandle,
}

impl Upbit {
    pub async fn start() -> Self {
        let sim = makenaide_tests::upbit_sim::UpbitSim::start(Default::default()).await;
        Self {
            inner: sim.expect("start the simulated Upbit"),
        }
    }

    pub fn base_url(&self) -> String {
        self.inner.base_url()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.inner.connections()
    }

    /// The simulator itself (knobs, stats, faults).
    pub fn sim(&self) -> &makenaide_tests::upbit_sim::SimHandle {
        &self.inner
    }

    /// Every candle the server answered with, for `interval` (`days`, `minutes/5`, ...), in the order served:
    /// `(market, candle JSON object)`.
    pub fn served_candles(&self, interval: &str) -> Vec<(String, Value)> {
        self.inner.served_candles(interval)
    }
}

/// Test database + simulated Upbit.
pub struct Backends {
    pub db: TestDb,
    pub upbit: Upbit,
}

impl Backends {
    pub async fn start() -> Self {
        let db = TestDb::create().await.expect("test database");
        let upbit = Upbit::start().await;
        Self { db, upbit }
    }

    /// The configuration of a function + makenaide-core wired to these backends.
    pub fn env_config(&self, function: &str) -> EnvConfig {
        EnvConfig::makenaide(function)
            .env("MAKENAIDE_DATABASE_URL", self.db.url())
            .env("MAKENAIDE_UPBIT_BASE_URL", self.upbit.base_url())
            .timeout(Duration::from_secs(60))
    }

    pub async fn start_env(&self, function: &str) -> LambdaEnv {
        match LambdaEnv::start(self.env_config(function)).await {
            Ok(env) => env,
            Err(e) => panic!("environment for {function} did not start: {e}"),
        }
    }

    /// Runs the db-initializer once (its own environment), so a collector finds the schema.
    pub async fn init_schema(&self) {
        let env = self.start_env(INITIALIZER).await;
        let out = env.invoke(serde_json::json!({})).await.expect("invoke db-initializer");
        out.ok().expect("db-initializer succeeds");
        env.shutdown(SHUTDOWN_BUDGET).await.expect("shutdown");
    }
}

/// `result` of the old envelope `{"success": true, "result": {...}, ...}`, asserting success.
pub fn result_of(response: &Value) -> &Value {
    assert_eq!(
        response.get("success"),
        Some(&Value::Bool(true)),
        "not a success envelope: {response}"
    );
    assert!(
        response.get("execution_time").and_then(Value::as_f64).is_some(),
        "no execution_time: {response}"
    );
    assert!(
        response.get("timestamp").and_then(Value::as_str).is_some(),
        "no timestamp: {response}"
    );
    response
        .get("result")
        .unwrap_or_else(|| panic!("no result: {response}"))
}
