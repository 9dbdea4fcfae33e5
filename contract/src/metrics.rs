//! Names of the per-invocation metrics the extension writes as CloudWatch Embedded Metric Format lines (one per
//! invocation, after Lambda's `platform.report`) and serves at `GET /metrics`; the dashboard `deploy.sh` builds
//! reads the same names. README "Metrics" says what each one means.

/// Default CloudWatch namespace (`MAKENAIDE_METRICS_NAMESPACE` overrides it).
pub const DEFAULT_NAMESPACE: &str = "Makenaide";
/// The one dimension: the function's name (`AWS_LAMBDA_FUNCTION_NAME`).
pub const DIMENSION_FUNCTION_NAME: &str = "function_name";
/// Property (not a dimension) naming the invocation.
pub const PROPERTY_REQUEST_ID: &str = "request_id";
/// Property: `platform.report`'s status (`success`, `error`, `failure`, `timeout`).
pub const PROPERTY_STATUS: &str = "status";

/// 1 on the environment's first invocation when it came at most 10 s after `platform.initStart`, else 0.
pub const COLD_START: &str = "ColdStart";
/// Init duration (ms), cold starts only.
pub const INIT_DURATION: &str = "InitDuration";
/// `platform.report` `durationMs`.
pub const DURATION: &str = "Duration";
/// `platform.report` `billedDurationMs`.
pub const BILLED_DURATION: &str = "BilledDuration";
/// `platform.report` `maxMemoryUsedMB`.
pub const MAX_MEMORY_USED: &str = "MaxMemoryUsed";
/// Requests to the extension's localhost API.
pub const REQUESTS: &str = "Requests";
/// Waits on PostgreSQL (a pipelined batch of messages and its replies is one round trip).
pub const DB_ROUND_TRIPS: &str = "DbRoundTrips";
/// PostgreSQL connections opened.
pub const DB_NEW_CONNECTIONS: &str = "DbNewConnections";
/// Pooled connections found dead (closed while frozen, ...) and replaced.
pub const DB_DEAD_CONNECTIONS_REPLACED: &str = "DbDeadConnectionsReplaced";
/// Requests whose statement PostgreSQL refused (`sql_error`, `read_only`) or cancelled (`db_timeout`).
pub const DB_STATEMENT_ERRORS: &str = "DbStatementErrors";
/// HTTP requests sent to Upbit (retries included).
pub const UPBIT_REQUESTS: &str = "UpbitRequests";
/// 429 answers from Upbit.
pub const UPBIT_429: &str = "Upbit429";
/// 418 answers from Upbit.
pub const UPBIT_418: &str = "Upbit418";
/// Upbit requests that were retries.
pub const UPBIT_RETRIES: &str = "UpbitRetries";
/// Upbit GETs answered from the short cache.
pub const UPBIT_CACHE_HITS: &str = "UpbitCacheHits";
/// Upbit GETs that joined an identical one already in flight.
pub const UPBIT_COALESCED: &str = "UpbitCoalesced";
/// Time spent waiting for a rate slot of the Upbit governor (ms).
pub const RATE_SLOT_WAIT_MS: &str = "RateSlotWaitMs";

/// EMF unit `Count`.
pub const UNIT_COUNT: &str = "Count";
/// EMF unit `Milliseconds`.
pub const UNIT_MILLISECONDS: &str = "Milliseconds";
/// EMF unit `Megabytes`.
pub const UNIT_MEGABYTES: &str = "Megabytes";

/// Lambda's figures, from the Telemetry API, with their units (in the order they are written).
pub const LAMBDA: [(&str, &str); 5] = [
    (COLD_START, UNIT_COUNT),
    (INIT_DURATION, UNIT_MILLISECONDS),
    (DURATION, UNIT_MILLISECONDS),
    (BILLED_DURATION, UNIT_MILLISECONDS),
    (MAX_MEMORY_USED, UNIT_MEGABYTES),
];

/// The extension's own counters, with their units (in the order they are written).
pub const EXTENSION: [(&str, &str); 12] = [
    (REQUESTS, UNIT_COUNT),
    (DB_ROUND_TRIPS, UNIT_COUNT),
    (DB_NEW_CONNECTIONS, UNIT_COUNT),
    (DB_DEAD_CONNECTIONS_REPLACED, UNIT_COUNT),
    (DB_STATEMENT_ERRORS, UNIT_COUNT),
    (UPBIT_REQUESTS, UNIT_COUNT),
    (UPBIT_429, UNIT_COUNT),
    (UPBIT_418, UNIT_COUNT),
    (UPBIT_RETRIES, UNIT_COUNT),
    (UPBIT_CACHE_HITS, UNIT_COUNT),
    (UPBIT_COALESCED, UNIT_COUNT),
    (RATE_SLOT_WAIT_MS, UNIT_MILLISECONDS),
];

/// The unit of a metric name, if it is one of ours.
#[must_use]
pub fn unit_of(name: &str) -> Option<&'static str> {
    LAMBDA
        .iter()
        .chain(EXTENSION.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, u)| *u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_units_known() {
        let all: Vec<&str> = LAMBDA.iter().chain(EXTENSION.iter()).map(|(n, _)| *n).collect();
        for (i, n) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(n), "{n} twice");
            assert!([UNIT_COUNT, UNIT_MILLISECONDS, UNIT_MEGABYTES].contains(&unit_of(n).unwrap_or_default()));
        }
        assert!(all.len() <= 100, "EMF allows 100 metrics per object");
        assert_eq!(unit_of("Nope"), None);
    }
}
