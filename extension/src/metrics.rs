//! Per-invocation metrics: the extension's counters, the window of each invocation, the cold-start rule and the
//! CloudWatch Embedded Metric Format (EMF) line written to stdout (which Lambda sends to the function's log group).
//!
//! - **Counters** are plain process-wide atomics, incremented where the work happens (`inc(Counter::...)` in the
//!   server, the pool, `db::exec`, the Upbit client); `GET /metrics` serves them since start.
//! - **Windows by time.** The Telemetry API's `platform.report` for invocation N usually arrives only after the
//!   environment was thawed for invocation N+1 (or at SHUTDOWN): Lambda freezes the sandbox as soon as the runtime
//!   and the extensions have called `next`. And N+1's first requests often reach the extension before its INVOKE
//!   event does. So neither "since the previous report" nor "since INVOKE" is the invocation's work: each increment
//!   is also put in a bucket of its wall-clock millisecond, and line N takes the buckets up to `platform.report`
//!   N's time (see [`Recorder`]). The first line also holds Init's work (the warm connections).
//! - **Cold start** (Datadog's rule): the environment's first invocation is a cold start when it started at most
//!   10 s after `platform.initStart`; a longer gap is a proactive initialisation. Times are the events' own `time`
//!   fields (Lambda's clock), matched by time, not by arrival order.
//! - **Emission** happens in the telemetry listener when the report arrives: after the function's response went
//!   out, never on a request's path. Under Lambda Managed Instances (no per-invocation report) one aggregated line
//!   is written per interval instead. At SHUTDOWN every invocation still waiting for its report gets its line.
//!
//! The EMF line is written by hand (a few string pushes, no EMF crate): see [`Line::render`].

use makenaide_contract::metrics as names;
use serde_json::{Number, Value};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The extension's counters, in the order of [`makenaide_contract::metrics::EXTENSION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Requests to the localhost API.
    Requests,
    /// Waits on PostgreSQL: each pipelined batch (e.g. `BEGIN` + every Bind/Execute) and its replies is one.
    DbRoundTrips,
    /// PostgreSQL connections opened.
    DbNewConnections,
    /// Pooled connections found dead and replaced (at checkout, or by a failed first round trip).
    DbDeadConnectionsReplaced,
    /// Requests that ended in `sql_error`, `read_only` or `db_timeout`.
    DbStatementErrors,
    /// HTTP requests sent to Upbit (every attempt).
    UpbitRequests,
    /// 429 answers.
    Upbit429,
    /// 418 answers.
    Upbit418,
    /// Attempts after the first.
    UpbitRetries,
    /// GETs answered from the cache.
    UpbitCacheHits,
    /// GETs that joined an identical one in flight.
    UpbitCoalesced,
    /// Microseconds spent waiting for a governor slot (written as `RateSlotWaitMs`).
    RateSlotWaitUs,
}

const N: usize = names::EXTENSION.len();
static VALUES: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];

/// Adds 1.
pub fn inc(c: Counter) {
    add(c, 1);
}

/// Adds `n` (and, while metrics are on, to the current millisecond's bucket: see [`Recorder`]).
pub fn add(c: Counter, n: u64) {
    VALUES[c as usize].fetch_add(n, Ordering::Relaxed);
    if let Some(r) = recorder() {
        r.record(c, n, crate::lambda::now_ms() as i64);
    }
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot(pub [u64; N]);

impl Snapshot {
    /// The counters now.
    #[must_use]
    pub fn now() -> Self {
        Self(std::array::from_fn(|i| VALUES[i].load(Ordering::Relaxed)))
    }

    /// What happened between `earlier` and `self`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].saturating_sub(earlier.0[i])))
    }

    /// One counter.
    #[must_use]
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Nothing counted.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// `(metric name, value)` pairs, `RateSlotWaitMs` converted from microseconds.
    #[must_use]
    pub fn values(&self) -> [(&'static str, Number); N] {
        std::array::from_fn(|i| {
            let (name, _) = names::EXTENSION[i];
            let v = self.0[i];
            let value = if i == Counter::RateSlotWaitUs as usize {
                Number::from_f64(v as f64 / 1000.0).unwrap_or_else(|| Number::from(0))
            } else {
                Number::from(v)
            };
            (name, value)
        })
    }

    /// `{"Requests": 3, ...}` (for `GET /metrics`).
    #[must_use]
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.values()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), Value::Number(v)))
                .collect(),
        )
    }
}

/// A Lambda figure, copied from the Telemetry API record as it came (so it matches `platform.report` exactly).
pub type Figure = (&'static str, Number);

/// One EMF object.
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// `_aws.Timestamp`, epoch ms.
    pub timestamp_ms: u64,
    /// CloudWatch namespace.
    pub namespace: &'a str,
    /// Value of the `function_name` dimension.
    pub function_name: &'a str,
    /// `request_id` property (absent on aggregated lines).
    pub request_id: Option<&'a str>,
    /// `status` property (`platform.report`'s, when there was one).
    pub status: Option<&'a str>,
    /// Lambda's figures present for this line.
    pub lambda: Vec<Figure>,
    /// The extension's counters for the line's window.
    pub counters: Snapshot,
}

fn push_json_str(out: &mut String, s: &str) {
    // serde_json escapes exactly what JSON needs; a plain &str cannot fail to serialise.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

impl Line<'_> {
    /// The EMF JSON object on one line (no trailing newline):
    /// `{"_aws":{"Timestamp":..,"CloudWatchMetrics":[{"Namespace":..,"Dimensions":[["function_name"]],
    /// "Metrics":[{"Name":..,"Unit":..},..]}]},"function_name":..,"request_id":..,<name>:<value>,..}`.
    /// 17 metrics at most, well under EMF's 100 per object.
    #[must_use]
    pub fn render(&self) -> String {
        let counters = self.counters.values();
        let metrics: Vec<(&str, &str, &Number)> = self
            .lambda
            .iter()
            .map(|(n, v)| (*n, names::unit_of(n).unwrap_or(names::UNIT_COUNT), v))
            .chain(
                names::EXTENSION
                    .iter()
                    .zip(&counters)
                    .map(|((n, u), (_, v))| (*n, *u, v)),
            )
            .collect();
        let mut s = String::with_capacity(1024);
        s.push_str("{\"_aws\":{\"Timestamp\":");
        s.push_str(&self.timestamp_ms.to_string());
        s.push_str(",\"CloudWatchMetrics\":[{\"Namespace\":");
        push_json_str(&mut s, self.namespace);
        s.push_str(",\"Dimensions\":[[\"");
        s.push_str(names::DIMENSION_FUNCTION_NAME);
        s.push_str("\"]],\"Metrics\":[");
        for (i, (name, unit, _)) in metrics.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str("{\"Name\":\"");
            s.push_str(name);
            s.push_str("\",\"Unit\":\"");
            s.push_str(unit);
            s.push_str("\"}");
        }
        s.push_str("]}]},\"");
        s.push_str(names::DIMENSION_FUNCTION_NAME);
        s.push_str("\":");
        push_json_str(&mut s, self.function_name);
        for (key, value) in [
            (names::PROPERTY_REQUEST_ID, self.request_id),
            (names::PROPERTY_STATUS, self.status),
        ] {
            if let Some(v) = value {
                s.push_str(",\"");
                s.push_str(key);
                s.push_str("\":");
                push_json_str(&mut s, v);
            }
        }
        for (name, _, value) in &metrics {
            s.push_str(",\"");
            s.push_str(name);
            s.push_str("\":");
            s.push_str(&value.to_string());
        }
        s.push('}');
        s
    }
}

/// Datadog's cold-start window: the first invocation more than this after `platform.initStart` was a proactive
/// initialisation, not a cold start.
pub const COLD_START_WINDOW_MS: i64 = 10_000;

/// The cold-start rule for the environment's first invocation: started at most [`COLD_START_WINDOW_MS`] after
/// Init started (both epoch ms). A start that seems to precede Init (clock skew) counts as cold.
#[must_use]
pub fn is_cold_start(init_start_ms: i64, first_invoke_start_ms: i64) -> bool {
    first_invoke_start_ms - init_start_ms <= COLD_START_WINDOW_MS
}

/// Invocations waiting for their report are remembered at most this many (older ones: report lost).
const MAX_PENDING: usize = 32;
/// `platform.start` times remembered at most.
const MAX_STARTS: usize = 64;
/// Millisecond buckets of counted work kept at most (reports that never come must not grow memory).
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug, Default)]
struct State {
    /// Invocations announced by INVOKE whose report has not come yet: (request id, INVOKE arrival epoch ms).
    pending: VecDeque<(String, i64)>,
    init_start_ms: Option<i64>,
    init_duration: Option<Number>,
    first_request_id: Option<String>,
    starts: VecDeque<(String, i64)>,
}

/// Turns Telemetry API events into EMF lines.
///
/// The counters of an invocation are found by **time**, not by the order things arrive in: every increment is
/// also added to a bucket of its wall-clock millisecond, and the line of invocation N takes every bucket before
/// the end of `platform.report` N's millisecond (not taken by an earlier line). Lambda emits report N when
/// invocation N is over and before N+1 starts, so this splits the work exactly, wherever the report arrives: after
/// the thaw for N+1, when N+1's first requests have often reached the extension before its INVOKE event (the
/// runtime and the extension are woken at the same time), or at SHUTDOWN. The first line also takes Init's work.
#[derive(Debug)]
pub struct Recorder {
    state: Mutex<State>,
    /// (epoch ms, counters added in that millisecond), oldest first.
    buckets: Mutex<VecDeque<(i64, [u64; N])>>,
    namespace: String,
    function_name: String,
    managed_instances: bool,
    process_start_ms: i64,
    active: AtomicBool,
    lines: AtomicU64,
    reported: tokio::sync::Notify,
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// The installed recorder, while metrics are on.
#[must_use]
pub fn recorder() -> Option<&'static Recorder> {
    RECORDER.get().filter(|r| r.active.load(Ordering::Relaxed))
}

/// INVOKE hook (Extensions API loop): the invocation now waits for its report (SHUTDOWN waits for it).
pub fn on_invoke(request_id: &str) {
    if let Some(r) = recorder() {
        let mut st = lock(&r.state);
        st.pending
            .push_back((request_id.to_owned(), crate::lambda::now_ms() as i64));
        while st.pending.len() > MAX_PENDING {
            st.pending.pop_front();
        }
    }
}

/// EMF lines written so far (for `GET /metrics`).
#[must_use]
pub fn lines_written() -> u64 {
    RECORDER.get().map_or(0, |r| r.lines.load(Ordering::Relaxed))
}

fn epoch_ms_of(time: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(time?)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Recorder {
    /// Installs the process's recorder (once) and returns it, active.
    pub fn install(
        namespace: &str,
        function_name: &str,
        managed_instances: bool,
        process_start_ms: i64,
    ) -> &'static Self {
        let r = RECORDER.get_or_init(|| Self {
            state: Mutex::new(State::default()),
            buckets: Mutex::new(VecDeque::new()),
            namespace: namespace.to_owned(),
            function_name: function_name.to_owned(),
            managed_instances,
            process_start_ms,
            active: AtomicBool::new(false),
            lines: AtomicU64::new(0),
            reported: tokio::sync::Notify::new(),
        });
        // Everything counted so far (Init's warm-up) belongs to the first line.
        let mut first = [0; N];
        for (i, v) in first.iter_mut().enumerate() {
            *v = VALUES[i].load(Ordering::Relaxed);
        }
        lock(&r.buckets).push_back((process_start_ms, first));
        r.active.store(true, Ordering::SeqCst);
        r
    }

    /// Stops recording (the subscription failed).
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::SeqCst);
        lock(&self.buckets).clear();
    }

    fn record(&self, c: Counter, n: u64, now_ms: i64) {
        let mut b = lock(&self.buckets);
        match b.back_mut() {
            Some((ms, values)) if *ms == now_ms => values[c as usize] += n,
            _ => {
                let mut values = [0; N];
                values[c as usize] = n;
                b.push_back((now_ms, values));
                if b.len() > MAX_BUCKETS {
                    b.pop_front();
                }
            }
        }
    }

    /// Takes every bucket before `until_ms` (exclusive).
    fn take_until(&self, until_ms: i64) -> Snapshot {
        let mut sum = Snapshot::default();
        let mut b = lock(&self.buckets);
        while b.front().is_some_and(|(ms, _)| *ms < until_ms) {
            if let Some((_, values)) = b.pop_front() {
                for (total, v) in sum.0.iter_mut().zip(values) {
                    *total += v;
                }
            }
        }
        sum
    }

    /// A Telemetry API batch (a JSON array of `{"time", "type", "record"}`), in the order Lambda sent it.
    pub fn on_events(&self, events: &[Value]) {
        for event in events {
            let time = event.get("time").and_then(Value::as_str);
            let record = event.get("record").unwrap_or(&Value::Null);
            match event.get("type").and_then(Value::as_str).unwrap_or_default() {
                "platform.initStart" => {
                    lock(&self.state).init_start_ms = epoch_ms_of(time);
                }
                "platform.initReport" => {
                    if let Some(Value::Number(d)) = record.pointer("/metrics/durationMs") {
                        lock(&self.state).init_duration = Some(d.clone());
                    }
                }
                "platform.start" => {
                    if let (Some(rid), Some(at)) = (record.get("requestId").and_then(Value::as_str), epoch_ms_of(time))
                    {
                        let mut st = lock(&self.state);
                        if st.first_request_id.is_none() {
                            st.first_request_id = Some(rid.to_owned());
                        }
                        st.starts.push_back((rid.to_owned(), at));
                        while st.starts.len() > MAX_STARTS {
                            st.starts.pop_front();
                        }
                    }
                }
                "platform.report" if !self.managed_instances => self.report(record, time),
                _ => {}
            }
        }
    }

    fn report(&self, record: &Value, time: Option<&str>) {
        let Some(rid) = record.get("requestId").and_then(Value::as_str) else {
            return;
        };
        let metric = |key: &str| match record.pointer(&format!("/metrics/{key}")) {
            Some(Value::Number(n)) => Some(n.clone()),
            _ => None,
        };
        let duration = metric("durationMs");
        let report_ms = epoch_ms_of(time).unwrap_or_else(|| crate::lambda::now_ms() as i64);
        let mut lambda: Vec<Figure> = Vec::with_capacity(5);
        {
            let mut st = lock(&self.state);
            let invoked_ms = st.pending.iter().find(|(r, _)| r == rid).map(|(_, at)| *at);
            st.pending.retain(|(r, _)| r != rid);
            if st.first_request_id.is_none() {
                st.first_request_id = Some(rid.to_owned());
            }
            let cold = if st.first_request_id.as_deref() == Some(rid) {
                let started_ms = st
                    .starts
                    .iter()
                    .find(|(r, _)| r == rid)
                    .map(|(_, at)| *at)
                    .or(invoked_ms)
                    .unwrap_or_else(|| report_ms - duration.as_ref().and_then(Number::as_f64).unwrap_or(0.0) as i64);
                // Without platform.initStart the extension's own start (it starts during Init) stands in for it.
                is_cold_start(st.init_start_ms.unwrap_or(self.process_start_ms), started_ms)
            } else {
                false
            };
            lambda.push((names::COLD_START, Number::from(u8::from(cold))));
            if cold {
                if let Some(d) = metric("initDurationMs").or_else(|| st.init_duration.clone()) {
                    lambda.push((names::INIT_DURATION, d));
                }
            }
        }
        for (name, key) in [
            (names::DURATION, "durationMs"),
            (names::BILLED_DURATION, "billedDurationMs"),
            (names::MAX_MEMORY_USED, "maxMemoryUsedMB"),
        ] {
            if let Some(v) = metric(key) {
                lambda.push((name, v));
            }
        }
        // Up to the end of the report's millisecond (its `time` has millisecond resolution).
        let counters = self.take_until(report_ms + 1);
        self.write(&Line {
            timestamp_ms: u64::try_from(report_ms).unwrap_or(0),
            namespace: &self.namespace,
            function_name: &self.function_name,
            request_id: Some(rid),
            status: record.get("status").and_then(Value::as_str),
            lambda,
            counters,
        });
        self.reported.notify_waiters();
    }

    /// Managed Instances: the aggregated line of everything since the previous one (none when nothing happened).
    pub fn write_interval(&self) {
        let now = crate::lambda::now_ms();
        let counters = self.take_until(now as i64 + 1);
        if counters.is_zero() {
            return;
        }
        self.write(&Line {
            timestamp_ms: now,
            namespace: &self.namespace,
            function_name: &self.function_name,
            request_id: None,
            status: None,
            lambda: Vec::new(),
            counters,
        });
    }

    /// SHUTDOWN: waits up to `wait` for the reports of invocations still pending (Lambda sends them before or
    /// during the shutdown phase), then writes a line for each that never got one (the extension's counters
    /// alone), or under Managed Instances the last partial interval.
    pub async fn flush(&self, wait: Duration) {
        if self.managed_instances {
            self.write_interval();
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.reported.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if lock(&self.state).pending.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let left: Vec<(String, i64)> = lock(&self.state).pending.drain(..).collect();
        let now = crate::lambda::now_ms();
        for (rid, _) in left {
            tracing::debug!(request_id = %rid, "no platform.report before shutdown: writing the extension's counters alone");
            let counters = self.take_until(now as i64 + 1);
            self.write(&Line {
                timestamp_ms: now,
                namespace: &self.namespace,
                function_name: &self.function_name,
                request_id: Some(&rid),
                status: None,
                lambda: Vec::new(),
                counters,
            });
        }
    }

    fn write(&self, line: &Line<'_>) {
        let mut text = line.render();
        text.push('\n');
        // One write of the whole line under stdout's lock: never interleaved with a log line.
        let mut out = std::io::stdout().lock();
        if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_ok() {
            self.lines.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cold_start_rule() {
        assert!(is_cold_start(1_000, 1_000));
        assert!(is_cold_start(1_000, 11_000));
        assert!(
            !is_cold_start(1_000, 11_001),
            "more than 10 s after initStart: proactive init"
        );
        assert!(is_cold_start(5_000, 4_000), "skewed clocks count as cold");
    }

    #[test]
    fn line_is_emf() {
        let mut counters = Snapshot::default();
        counters.0[Counter::Requests as usize] = 3;
        counters.0[Counter::RateSlotWaitUs as usize] = 1_500;
        let line = Line {
            timestamp_ms: 1_700_000_000_123,
            namespace: "Makenaide",
            function_name: "fn \"q\"",
            request_id: Some("rid-1"),
            status: Some("success"),
            lambda: vec![
                (names::COLD_START, Number::from(1)),
                (names::DURATION, Number::from_f64(693.92).unwrap()),
            ],
            counters,
        };
        let v: Value = serde_json::from_str(&line.render()).unwrap();
        assert_eq!(v["_aws"]["Timestamp"], 1_700_000_000_123_u64);
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "Makenaide");
        assert_eq!(cw["Dimensions"], serde_json::json!([["function_name"]]));
        let metrics = cw["Metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 2 + names::EXTENSION.len());
        for m in metrics {
            let name = m["Name"].as_str().unwrap();
            assert!(v[name].is_number(), "{name} has no value");
            assert_eq!(m["Unit"].as_str(), names::unit_of(name));
        }
        assert_eq!(v["function_name"], "fn \"q\"");
        assert_eq!(v["request_id"], "rid-1");
        assert_eq!(v["Duration"].as_f64(), Some(693.92));
        assert_eq!(v["Requests"], 3);
        assert_eq!(v["RateSlotWaitMs"].as_f64(), Some(1.5));
    }

    fn recorder() -> Recorder {
        Recorder {
            state: Mutex::new(State::default()),
            buckets: Mutex::new(VecDeque::new()),
            namespace: "N".into(),
            function_name: "f".into(),
            managed_instances: false,
            process_start_ms: 0,
            active: AtomicBool::new(true),
            lines: AtomicU64::new(0),
            reported: tokio::sync::Notify::new(),
        }
    }

    #[test]
    fn windows_take_the_buckets_before_the_report_millisecond_only() {
        let r = recorder();
        r.record(Counter::Requests, 1, 1_000);
        r.record(Counter::Requests, 2, 1_000);
        r.record(Counter::DbRoundTrips, 2, 1_003);
        // The next invocation's first request, after report N's millisecond (1_003).
        r.record(Counter::Requests, 1, 1_004);
        let n = r.take_until(1_003 + 1);
        assert_eq!(n.get(Counter::Requests), 3);
        assert_eq!(n.get(Counter::DbRoundTrips), 2);
        let next = r.take_until(2_000);
        assert_eq!(next.get(Counter::Requests), 1);
        assert!(r.take_until(3_000).is_zero(), "nothing is counted twice");
    }

    #[test]
    fn snapshots_subtract() {
        let a = Snapshot([5; N]);
        let b = Snapshot([7; N]);
        assert_eq!(b.since(&a), Snapshot([2; N]));
        assert_eq!(a.since(&b), Snapshot([0; N]));
        assert!(Snapshot::default().is_zero());
    }
}
