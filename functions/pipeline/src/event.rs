//! Reading function events (loose JSON from Lambda) into typed values, with `InvalidEvent` errors that name
//! the offending field. Events are parsed by hand rather than with `#[derive(Deserialize)]` so that every
//! mistake becomes an `InvalidEvent` function error instead of lambda_runtime's generic deserialisation error.

use crate::error::PipelineError;
use serde_json::{Map, Value};

/// A JSON object event (`null` or a missing payload counts as `{}`).
pub(crate) struct Fields<'a> {
    map: Option<&'a Map<String, Value>>,
    what: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(v: &'a Value, what: &'a str) -> Result<Self, PipelineError> {
        match v {
            Value::Null => Ok(Self { map: None, what }),
            Value::Object(m) => Ok(Self { map: Some(m), what }),
            other => Err(PipelineError::invalid(format!(
                "{what} must be a JSON object, got {}",
                kind(other)
            ))),
        }
    }

    /// The raw value of a key; JSON `null` counts as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    /// Keys present but not in `known` (logged, not rejected: schedulers such as EventBridge add their own).
    pub(crate) fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        self.map
            .map(|m| m.keys().filter(|k| !known.contains(&k.as_str())).cloned().collect())
            .unwrap_or_default()
    }

    pub(crate) fn warn_unknown(&self, known: &[&str]) {
        let unknown = self.unknown_keys(known);
        if !unknown.is_empty() {
            tracing::warn!(event = self.what, ?unknown, "ignoring unknown event fields");
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, PipelineError> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "true or false", v)))
            .transpose()
    }

    /// A finite, non-negative number.
    pub(crate) fn non_negative(&self, key: &str) -> Result<Option<f64>, PipelineError> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .ok_or_else(|| self.wrong(key, "a number >= 0", v))
            })
            .transpose()
    }

    /// An integer in `min..=max` (`3.0` is accepted as 3).
    pub(crate) fn int_in(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, PipelineError> {
        self.get(key)
            .map(|v| {
                let n = v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64));
                n.filter(|n| (min..=max).contains(n))
                    .ok_or_else(|| self.wrong(key, &format!("an integer from {min} to {max}"), v))
            })
            .transpose()
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>, PipelineError> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string", v)))
            .transpose()
    }

    pub(crate) fn str_list(&self, key: &str) -> Result<Option<Vec<&'a str>>, PipelineError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let arr = v.as_array().ok_or_else(|| self.wrong(key, "a list of strings", v))?;
        arr.iter()
            .map(|x| x.as_str().ok_or_else(|| self.wrong(key, "a list of strings", v)))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> PipelineError {
        let mut shown = got.to_string();
        if shown.len() > 80 {
            // Cut on a character boundary: `truncate` inside a multi-byte character panics.
            let cut = (0..=80).rev().find(|i| shown.is_char_boundary(*i)).unwrap_or(0);
            shown.truncate(cut);
            shown.push('…');
        }
        PipelineError::invalid(format!("{}.{key} must be {expected}, got {shown}", self.what))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Upbit pair code check: `{QUOTE}-{BASE}`, upper-case letters and digits (e.g. `KRW-BTC`, `KRW-1INCH`).
/// Lower-case codes are rejected rather than fixed up: Upbit documents upper case only.
pub fn is_market_code(s: &str) -> bool {
    let Some((quote, base)) = s.split_once('-') else {
        return false;
    };
    let ok = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    };
    ok(quote, 10) && ok(base, 20) && quote.bytes().all(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn market_codes() {
        for good in ["KRW-BTC", "KRW-1INCH", "BTC-ETH", "USDT-XRP"] {
            assert!(is_market_code(good), "{good}");
        }
        for bad in [
            "krw-btc",
            "KRW",
            "KRW-",
            "-BTC",
            "KRW-BTC,KRW-ETH",
            "KRW-BTC&x=1",
            "KRW BTC",
            "KRW-B-C",
            "",
        ] {
            assert!(!is_market_code(bad), "{bad}");
        }
    }

    #[test]
    fn fields_report_the_key() {
        let v = json!({"count": 0, "flag": "yes", "n": -1});
        let f = Fields::new(&v, "event").expect("object");
        let e = f.int_in("count", 1, 10).expect_err("0 rejected").to_string();
        assert!(e.contains("event.count"), "{e}");
        assert!(f.bool("flag").is_err());
        assert!(f.non_negative("n").is_err());
        assert_eq!(f.int_in("missing", 1, 10).expect("absent"), None);
        assert!(Fields::new(&json!([1]), "event").is_err());
        assert!(Fields::new(&Value::Null, "event").expect("null ok").get("x").is_none());
        assert_eq!(f.unknown_keys(&["count", "flag"]), vec!["n".to_string()]);
    }
}
