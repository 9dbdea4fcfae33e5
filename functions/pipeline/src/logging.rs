//! A tiny `tracing` subscriber for the functions: one line per event on stdout (which Lambda ships to
//! CloudWatch), plain text or JSON. A few dozen lines instead of tracing-subscriber's env-filter/regex stack keep
//! the binaries small. Spans are not tracked (the functions don't need them).
//!
//! Never log secrets: nothing here reads the environment except the variables below.

use std::fmt::Write as _;
use std::io::Write as _;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Env var: log level set by Lambda's advanced logging controls (TRACE, DEBUG, INFO, WARN, ERROR, FATAL).
pub const ENV_LOG_LEVEL: &str = "AWS_LAMBDA_LOG_LEVEL";
/// Env var: fallback log level (`debug`, or directives like `info,hyper=warn`: the bare level is used).
pub const ENV_RUST_LOG: &str = "RUST_LOG";
/// Env var: `JSON` for JSON lines, anything else for text.
pub const ENV_LOG_FORMAT: &str = "AWS_LAMBDA_LOG_FORMAT";

/// Parse a level: `AWS_LAMBDA_LOG_LEVEL` style or `RUST_LOG` directives (first bare level wins).
pub fn parse_level(s: &str) -> Option<Level> {
    s.split(',')
        .map(str::trim)
        .filter(|d| !d.contains('='))
        .find_map(|d| match d.to_ascii_lowercase().as_str() {
            "trace" => Some(Level::TRACE),
            "debug" => Some(Level::DEBUG),
            "info" => Some(Level::INFO),
            "warn" | "warning" => Some(Level::WARN),
            "error" | "fatal" => Some(Level::ERROR),
            _ => None,
        })
}

struct LineLogger {
    max: Level,
    json: bool,
}

/// Install the logger (once; later calls are no-ops).
pub fn init() {
    let level = [ENV_LOG_LEVEL, ENV_RUST_LOG]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| parse_level(&v)))
        .unwrap_or(Level::INFO);
    let json = std::env::var(ENV_LOG_FORMAT).is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let _ = tracing::subscriber::set_global_default(LineLogger { max: level, json });
}

#[derive(Default)]
struct Fields {
    message: String,
    text: String,
    json: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.text, " {}={:?}", field.name(), value);
            self.json.insert(field.name().into(), value.into());
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        let _ = write!(self.text, " {}={value}", field.name());
        self.json.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        let _ = write!(self.text, " {}={value}", field.name());
        self.json.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        let _ = write!(self.text, " {}={value}", field.name());
        self.json.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let s = format!("{value:?}");
        if field.name() == "message" {
            self.message.push_str(&s);
        } else {
            let _ = write!(self.text, " {}={s}", field.name());
            self.json.insert(field.name().into(), s.into());
        }
    }
}

impl Subscriber for LineLogger {
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.level() <= &self.max
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut f = Fields::default();
        event.record(&mut f);
        let line = if self.json {
            let mut m = f.json;
            m.insert(
                "timestamp".into(),
                crate::envelope::utc_iso(std::time::SystemTime::now()).into(),
            );
            m.insert("level".into(), meta.level().as_str().into());
            m.insert("target".into(), meta.target().into());
            m.insert("message".into(), f.message.into());
            serde_json::Value::Object(m).to_string()
        } else {
            format!(
                "{:<5} {}: {}{}",
                meta.level().as_str(),
                meta.target(),
                f.message,
                f.text
            )
        };
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(parse_level("DEBUG"), Some(Level::DEBUG));
        assert_eq!(parse_level("FATAL"), Some(Level::ERROR));
        assert_eq!(parse_level("hyper=warn,trace"), Some(Level::TRACE));
        assert_eq!(parse_level("hyper=warn"), None);
        assert_eq!(parse_level(""), None);
    }
}
