//! The Makenaide functions, read from the one list every script also reads: `functions/FUNCTIONS`.
//!
//! A function's name is its Lambda function name, its Cargo package and binary name (crate `functions/<dir>`,
//! where `dir` is the name without `makenaide-`) and the stem of its artifact `dist/<name>-<arch>.zip`.

/// The list file, compiled in.
const LIST: &str = include_str!("../../functions/FUNCTIONS");

/// The list's entries in order (comments and blank lines skipped).
pub fn all() -> impl Iterator<Item = &'static str> {
    LIST.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The db initializer (owns the schema).
pub const DB_INITIALIZER: &str = "makenaide-db-initializer";
/// The scanner.
pub const SCANNER: &str = "makenaide-scanner";
/// The data collector.
pub const DATA_COLLECTOR: &str = "makenaide-data-collector";
/// The orchestrator (init, scan, collect in one invocation).
pub const ORCHESTRATOR: &str = "makenaide-integrated-orchestrator";

/// The zip layer-build writes for `function` and `arch` (`x86_64` or `arm64`).
#[must_use]
pub fn artifact(function: &str, arch: &str) -> String {
    format!("{function}-{arch}.zip")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_functions_are_the_list() {
        let listed: Vec<_> = all().collect();
        assert_eq!(listed, [DB_INITIALIZER, SCANNER, DATA_COLLECTOR, ORCHESTRATOR]);
        assert_eq!(artifact(SCANNER, "arm64"), "makenaide-scanner-arm64.zip");
    }
}
