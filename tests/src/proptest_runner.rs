//! The one property-test runner of the workspace ([`run_counted!`](crate::run_counted)): a fixed number of cases
//! per property (`PROPTEST_CASES`, default [`DEFAULT_CASES`]), no failure-persistence files, the minimal failing
//! input in the panic message, and one line per property printed and appended to
//! `$MAKENAIDE_REPORT_DIR/proptest_parsers.md`, so the reliability report can state how many cases ran.

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::Cell;
use std::io::Write;

/// Cases per property when `PROPTEST_CASES` is not set.
pub const DEFAULT_CASES: u32 = 2000;
/// Overrides [`DEFAULT_CASES`].
pub const CASES_ENV: &str = "PROPTEST_CASES";
/// Directory of the reliability report's raw figures (see [`crate::report`]).
pub const REPORT_DIR_ENV: &str = "MAKENAIDE_REPORT_DIR";

/// Runs `check` on generated values of `strategy`; `package` names the crate in the report line. Use the macro
/// [`run_counted!`](crate::run_counted), which fills in the calling package.
pub fn run<S: Strategy>(package: &str, name: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var(CASES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = Cell::new(0u32);
    let result = runner.run(&strategy, |v| {
        ran.set(ran.get() + 1);
        check(v)
    });
    if let Err(e) = result {
        panic!("property {name} failed after {} cases: {e}", ran.get());
    }
    let line = format!("- `{package}` {name}: {cases} cases, 0 failures, 0 panics");
    eprintln!("[proptest] {line}");
    if let Some(dir) = std::env::var_os(REPORT_DIR_ENV).filter(|d| !d.is_empty()) {
        let path = std::path::Path::new(&dir).join("proptest_parsers.md");
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// `run_counted!(name, strategy, |value| { ...; Ok(()) })`: [`proptest_runner::run`](crate::proptest_runner::run)
/// with the calling package's name.
#[macro_export]
macro_rules! run_counted {
    ($name:expr, $strategy:expr, $check:expr $(,)?) => {
        $crate::proptest_runner::run(env!("CARGO_PKG_NAME"), $name, $strategy, $check)
    };
}
