//! A simulated Upbit quotation REST server, faithful to shared/reference/upbit-api.md: exact field names and JSON
//! number forms, newest-first candles with an exclusive `to`, gaps where nothing traded, listing dates, 10 requests/s
//! per group per IP with `Remaining-Req`, plain-text 429 `Too many API requests.`, 418 blocks that grow, the `origin`
//! group, Upbit's and Kong's error bodies. Plain HTTP on 127.0.0.1.
//!
//! Its data is deterministic (see [`model`]): a test can recompute any answer with [`SimHandle::expected_candles`]
//! (exact with a fixed clock, [`SimConfig::now`]) or read what was really sent with [`SimHandle::served_latest`] /
//! [`SimHandle::served_log`]. Knobs (latency, rate limit, faults, clock) and stats (TCP connections accepted and
//! open, requests per connection and per group, 429/418 counts, `Origin` requests) are reachable from Rust through
//! [`SimHandle`] and over HTTP under `/__sim/...` (see [`control`]) for the `upbit-sim` binary.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use makenaide_tests::upbit_sim::{SimConfig, UpbitSim};
//! let sim = UpbitSim::start(SimConfig::default()).await?;
//! let url = format!("{}/v1/candles/days?market=KRW-BTC&count=3", sim.base_url());
//! # let _ = url;
//! # Ok(()) }
//! ```

pub mod api;
pub mod catalog;
pub mod control;
pub mod faults;
pub mod limiter;
pub mod model;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use catalog::{Catalog, Caution, MarketSpec};
pub use faults::{Fault, FaultProbabilities, FaultRule};
pub use limiter::RateLimit;
pub use model::{parse_to, Candle, Interval, MarketData};
pub use server::TOO_MANY_BODY;

use server::{lock, Shared};

/// How to start the simulated server.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Listen address; port 0 picks a free port (read it back with [`SimHandle::addr`]).
    pub bind: SocketAddr,
    /// Listed pairs ([`Catalog::default`]: 42 KRW + 6 BTC + 4 USDT; [`Catalog::with_krw_markets`] for 230+).
    pub catalog: Catalog,
    /// Fixed "now" for deterministic answers; `None` follows the real UTC clock.
    pub now: Option<DateTime<Utc>>,
    /// Added to every request (half before handling, half after).
    pub latency: Duration,
    pub rate_limit: RateLimit,
    pub fault_probabilities: FaultProbabilities,
    /// Keep the served-candle log (on by default; turn off for long benchmark runs to save memory).
    pub record_served: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            catalog: Catalog::default(),
            now: None,
            latency: Duration::ZERO,
            rate_limit: RateLimit::default(),
            fault_probabilities: FaultProbabilities::default(),
            record_served: true,
        }
    }
}

/// Counters of the server since start (or the last reset).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// TCP connections accepted (counted in the accept loop).
    pub connections_accepted: u64,
    /// TCP connections currently open.
    pub connections_open: u64,
    /// Upbit requests (routed or not; control requests excluded).
    pub requests_total: u64,
    /// Routed requests per endpoint group (`market`, `candles`, `ticker`, `orderbook`, `trade`), whatever the answer.
    pub requests_by_group: BTreeMap<String, u64>,
    /// Requests no route matched (Kong 404).
    pub unrouted: u64,
    pub responses_by_status: BTreeMap<u16, u64>,
    /// 429s sent (rate limit and injected).
    pub responses_429: u64,
    /// 418s sent (blocked IP and injected).
    pub responses_418: u64,
    /// Blocks started by repeated 429s.
    pub bans: u64,
    /// Requests that carried an `Origin` header, and the header values.
    pub origin_requests: u64,
    pub origins: Vec<String>,
    /// Injected faults by name (`server_error`, `reset`, ...).
    pub faults_injected: BTreeMap<String, u64>,
    /// Every connection still open or accepted since the last reset, by id.
    pub connections: Vec<ConnStats>,
}

impl SimStats {
    /// Routed requests of one group.
    pub fn group(&self, g: &str) -> u64 {
        self.requests_by_group.get(g).copied().unwrap_or(0)
    }

    /// Connections that carried at least one Upbit request (control-API connections left out).
    pub fn api_connections(&self) -> Vec<&ConnStats> {
        self.connections.iter().filter(|c| c.requests > 0).collect()
    }
}

/// One TCP connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// 1, 2, ... in accept order.
    pub id: u64,
    pub peer: String,
    /// Upbit requests served on it.
    pub requests: u64,
    /// `/__sim` requests served on it.
    pub control_requests: u64,
    pub open: bool,
}

/// One candle as it was sent, in serving order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServedCandle {
    pub seq: u64,
    /// The connection it went out on.
    pub conn_id: u64,
    /// `days`, `minutes/5`, ...
    pub interval: String,
    pub market: String,
    pub candle: Candle,
    /// The fault applied to that reply (`slow`, `malformed_json`, `truncated_body`), if any.
    pub fault: Option<String>,
    /// False when the reply was deliberately damaged (malformed or truncated): the client cannot have read it.
    pub delivered: bool,
}

/// Starts simulated servers.
pub struct UpbitSim;

impl UpbitSim {
    /// Binds `config.bind` and serves on the current tokio runtime until the handle is dropped.
    pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
        let shared = Arc::new(Shared::new(config));
        let (addr, task) = server::start(shared.clone()).await?;
        Ok(SimHandle { addr, shared, task })
    }
}

/// A running simulated Upbit; dropping it stops the server and closes its connections.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        let _ = self.shared.shutdown.send(true);
        self.task.abort();
    }
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`: what `MAKENAIDE_UPBIT_BASE_URL` takes (paths start with `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SimStats {
        self.shared.snapshot()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats().connections_accepted
    }

    /// Waits until `pred(stats)` holds (re-checked on every stats change), up to `timeout`; returns whether it
    /// held. Use it instead of sleeping, e.g. for "the client closed its connection".
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&SimStats) -> bool) -> bool {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.stats()) {
                return true;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return pred(&self.stats()),
            }
        }
    }

    /// The simulated clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.now()
    }

    /// Fixes the clock (`Some`) or returns to real time (`None`).
    pub fn set_now(&self, now: Option<DateTime<Utc>>) {
        lock(&self.shared.knobs).now = now;
    }

    pub fn set_latency(&self, latency: Duration) {
        lock(&self.shared.knobs).latency = latency;
    }

    pub fn rate_limit(&self) -> RateLimit {
        lock(&self.shared.knobs).rate_limit.clone()
    }

    pub fn set_rate_limit(&self, rl: RateLimit) {
        lock(&self.shared.knobs).rate_limit = rl;
    }

    /// Turns enforcement on or off (counting and `Remaining-Req` continue either way).
    pub fn set_rate_limit_enabled(&self, enabled: bool) {
        lock(&self.shared.knobs).rate_limit.enabled = enabled;
    }

    /// Requests per second per group.
    pub fn set_rate_per_second(&self, n: u32) {
        lock(&self.shared.knobs).rate_limit.per_second = n;
    }

    /// Queues a fault rule (applied to the next matching requests, in queue order).
    pub fn push_fault(&self, rule: FaultRule) {
        lock(&self.shared.knobs).queue.push(rule);
    }

    /// Queues `fault` for the next `times` requests.
    pub fn inject(&self, fault: Fault, times: u32) {
        self.push_fault(FaultRule::times(fault, times));
    }

    /// Queued rules not used up yet.
    pub fn pending_faults(&self) -> Vec<FaultRule> {
        lock(&self.shared.knobs).queue.clone()
    }

    pub fn set_fault_probabilities(&self, p: FaultProbabilities) {
        lock(&self.shared.knobs).probabilities = p;
    }

    /// Clears the fault queue and the probabilities.
    pub fn clear_faults(&self) {
        let mut k = lock(&self.shared.knobs);
        k.queue.clear();
        k.probabilities = FaultProbabilities::default();
    }

    /// Knobs back to the start configuration; counters, IP blocks and the served log cleared.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Closes every open connection from the server side (FIN; RST when `reset`).
    pub fn close_connections(&self, reset: bool) {
        self.shared.close_connections(reset);
    }

    /// The data generator (catalog and pure functions).
    pub fn data(&self) -> &MarketData {
        &self.shared.data
    }

    pub fn catalog(&self) -> &Catalog {
        &self.shared.data.catalog
    }

    /// What `GET /v1/candles/<interval>?market=&to=&count=` answers at the simulated now (count clamped to 200 like
    /// the server; `None` for an unknown market). Exact when the clock is fixed.
    pub fn expected_candles(
        &self,
        market: &str,
        interval: Interval,
        to: Option<DateTime<Utc>>,
        count: usize,
    ) -> Option<Vec<Candle>> {
        self.shared
            .data
            .candles(market, interval, to, count.min(api::MAX_CANDLES), self.now(), false)
    }

    /// Every candle sent so far, in order.
    pub fn served_log(&self) -> Vec<ServedCandle> {
        lock(&self.shared.served).clone()
    }

    /// The last delivered version of each candle, keyed by (market, interval, `candle_date_time_utc`): what a
    /// client that upserts everything it received must hold.
    pub fn served_latest(&self) -> BTreeMap<(String, String, String), Candle> {
        let mut out = BTreeMap::new();
        for s in lock(&self.shared.served).iter().filter(|s| s.delivered) {
            out.insert(
                (
                    s.market.clone(),
                    s.interval.clone(),
                    s.candle.candle_date_time_utc.clone(),
                ),
                s.candle.clone(),
            );
        }
        out
    }

    /// Delivered candles of `interval` (`days`, `minutes/5`, ...) in serving order as `(market, candle JSON)`
    /// (the same shape as the temporary stand-in's `served_candles`).
    pub fn served_candles(&self, interval: &str) -> Vec<(String, serde_json::Value)> {
        lock(&self.shared.served)
            .iter()
            .filter(|s| s.delivered && s.interval == interval)
            .map(|s| (s.market.clone(), serde_json::to_value(&s.candle).unwrap_or_default()))
            .collect()
    }
}
