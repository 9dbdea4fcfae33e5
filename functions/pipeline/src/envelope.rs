//! The result envelope the old Python functions returned, kept so callers see the same shape:
//! `{"success": true, "result": {...}, "execution_time": 0.123, "timestamp": "2026-11-24T16:30:00Z"}`.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Success envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Always `true` (failures are Lambda function errors instead).
    pub success: bool,
    /// The function's result.
    pub result: T,
    /// Handler wall time in seconds.
    pub execution_time: f64,
    /// Completion time, UTC, ISO 8601 with a `Z`.
    pub timestamp: String,
}

impl<T> Envelope<T> {
    /// Wrap a result that took `elapsed`.
    pub fn new(result: T, elapsed: Duration) -> Self {
        Self {
            success: true,
            result,
            execution_time: elapsed.as_secs_f64(),
            timestamp: utc_iso(SystemTime::now()),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a time (no chrono: a few lines of civil-calendar arithmetic are enough).
pub fn utc_iso(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn iso_timestamps() {
        assert_eq!(utc_iso(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            utc_iso(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            utc_iso(UNIX_EPOCH + Duration::from_secs(1_795_537_800)),
            "2026-11-24T16:30:00Z"
        );
        assert_eq!(
            utc_iso(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
    }

    #[test]
    fn envelope_shape() {
        let e = Envelope::new(json!({"a": 1}), Duration::from_millis(1500));
        let v = serde_json::to_value(&e).expect("json");
        assert_eq!(v["success"], json!(true));
        assert_eq!(v["result"], json!({"a": 1}));
        assert_eq!(v["execution_time"], json!(1.5));
        let ts = v["timestamp"].as_str().expect("timestamp");
        assert!(ts.len() == 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
    }
}
