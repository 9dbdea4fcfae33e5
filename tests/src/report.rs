//! Figures for the reliability report (`scripts/reliability-report.sh` → `docs/reliability.md`).
//!
//! Every `tests/tests/reliability_*.rs` file records the numbers it measured with [`record`]; when
//! [`REPORT_DIR_ENV`] is set, each line is appended as Markdown to `$MAKENAIDE_REPORT_DIR/<section>.md`, where
//! `<section>` is the test file's stem (`reliability_upbit`, `reliability_freeze`, ...). Without the variable
//! (plain `cargo test`) nothing is written, so tests never depend on it.
//!
//! Usage from any reliability test file (tests run in parallel threads: each call appends one whole line with a
//! single `write`, so lines of concurrent tests never interleave):
//!
//! ```no_run
//! use makenaide_tests::report;
//! report::record("reliability_freeze", "- freeze/thaw cycles: 100, successes: 100");
//! // or, taking the section from the calling file's name:
//! makenaide_tests::report!("- freeze/thaw cycles: {}, successes: {}", 100, 100);
//! ```
//!
//! Lines are free Markdown (a bullet per figure reads best). The script adds each section's heading and its
//! pass/fail result, so tests record only figures.

use std::io::Write;
use std::path::PathBuf;

/// Directory the figures go to (set by `scripts/reliability-report.sh`; unset: nothing is written).
pub const REPORT_DIR_ENV: &str = "MAKENAIDE_REPORT_DIR";

/// The report directory, when figures are being collected.
pub fn dir() -> Option<PathBuf> {
    std::env::var_os(REPORT_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// Appends `line` to `$MAKENAIDE_REPORT_DIR/<section>.md` (when the variable is set) and echoes it to stderr
/// (visible with `--nocapture`). Never fails a test: a report that cannot be written only prints a warning.
pub fn record(section: &str, line: &str) {
    eprintln!("[report {section}] {line}");
    let Some(dir) = dir() else { return };
    let path = dir.join(format!("{section}.md"));
    let res = std::fs::create_dir_all(&dir).and_then(|()| {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        // One write per line (O_APPEND): concurrent tests do not interleave within a line.
        f.write_all(format!("{}\n", line.trim_end()).as_bytes())
    });
    if let Err(e) = res {
        eprintln!("warning: cannot write report figure to {}: {e}", path.display());
    }
}

/// The section name of a test file path as given by `file!()` (`tests/tests/reliability_pg.rs` → `reliability_pg`).
pub fn section_of(file: &str) -> String {
    std::path::Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "reliability".into())
}

/// `report!("- x: {}", n)`: [`record`] with the calling file's stem as the section.
#[macro_export]
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::report::record(&$crate::report::section_of(file!()), &format!($($arg)*))
    };
}
