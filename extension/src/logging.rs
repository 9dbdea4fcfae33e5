//! tracing setup: JSON lines when `AWS_LAMBDA_LOG_FORMAT=JSON` (Lambda's advanced logging controls), plain text
//! otherwise; level from `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG` (same precedence as `lambda_runtime`), else info.
//!
//! `filter::Targets` instead of `EnvFilter`: it parses `RUST_LOG`-style `target=level` lists without pulling the
//! regex engine into the binary. No secret is ever a field or a message anywhere in the crate: the token and the
//! database URL are only held in redacting types (`config::Secret`, `DatabaseConfig`).

use std::str::FromStr;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Lambda's log format switch (`Text` | `JSON`).
pub const ENV_AWS_LAMBDA_LOG_FORMAT: &str = "AWS_LAMBDA_LOG_FORMAT";
/// Lambda's log level (`TRACE` | `DEBUG` | `INFO` | `WARN` | `ERROR` | `FATAL`).
pub const ENV_AWS_LAMBDA_LOG_LEVEL: &str = "AWS_LAMBDA_LOG_LEVEL";
/// Developer override, `target=level` list (e.g. `makenaide_core=debug,info`).
pub const ENV_RUST_LOG: &str = "RUST_LOG";

/// Parses a level or a `target=level,...` list. Lambda's `FATAL` maps to `error`.
#[must_use]
pub fn filter_from(spec: Option<&str>) -> Targets {
    // Chatty dependencies stay at warn unless asked for by name.
    let base = Targets::new()
        .with_target("tokio_postgres", LevelFilter::WARN)
        .with_target("hyper", LevelFilter::WARN)
        .with_target("hyper_util", LevelFilter::WARN)
        .with_target("reqwest", LevelFilter::WARN)
        .with_target("rustls", LevelFilter::WARN);
    let spec = spec.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("info");
    let spec = if spec.eq_ignore_ascii_case("fatal") {
        "error"
    } else {
        spec
    };
    match Targets::from_str(&spec.to_ascii_lowercase()) {
        Ok(parsed) => {
            let default = parsed.default_level().unwrap_or(LevelFilter::INFO);
            base.with_targets(parsed).with_default(default)
        }
        Err(_) => base.with_default(LevelFilter::INFO),
    }
}

/// Installs the global subscriber (once; later calls are no-ops).
pub fn init() {
    let level = std::env::var(ENV_AWS_LAMBDA_LOG_LEVEL)
        .ok()
        .or_else(|| std::env::var(ENV_RUST_LOG).ok());
    let filter = filter_from(level.as_deref());
    let json = std::env::var(ENV_AWS_LAMBDA_LOG_FORMAT).is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stdout),
            )
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stdout),
            )
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(filter_from(None).default_level(), Some(LevelFilter::INFO));
        assert_eq!(filter_from(Some("DEBUG")).default_level(), Some(LevelFilter::DEBUG));
        assert_eq!(filter_from(Some("FATAL")).default_level(), Some(LevelFilter::ERROR));
        let t = filter_from(Some("makenaide_core=trace,warn"));
        assert_eq!(t.default_level(), Some(LevelFilter::WARN));
        assert!(t.would_enable("makenaide_core::db", &tracing::Level::TRACE));
        assert!(!t.would_enable("tokio_postgres", &tracing::Level::INFO));
        assert_eq!(filter_from(Some("nonsense=")).default_level(), Some(LevelFilter::INFO));
    }
}
