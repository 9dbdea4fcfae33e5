//! Upbit quotation mirror: one warm keep-alive HTTPS client, the per-group [`governor`], retries, and a short
//! TTL cache (bounded by entries and bytes, expired entries dropped as time passes) with coalescing of identical
//! in-flight GETs. No HTTP-server types here: the server module maps the
//! request path with [`route`] and renders the [`Reply`].
//!
//! Upbit's own replies (2xx and 4xx such as 404 `Code not found`) are passed through unchanged (status, body,
//! `Remaining-Req`, content type), so an Upbit client pointed at the extension works as is. The extension's own
//! failures are contract errors: 502 `upstream_error` (unreachable, 5xx or malformed JSON after the retries) and
//! 504 `upstream_deadline` (no rate slot or no answer before the caller's deadline).
//!
//! Never sends an `Origin` header: Upbit limits requests carrying one to 1 per 10 s.

pub mod governor;
#[cfg(test)]
pub(crate) mod proptests;

use crate::error::Error;
use bytes::Bytes;
use governor::{Governor, Group};
use http::HeaderValue;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Attempts per GET (first try + retries), all within the caller's deadline.
const MAX_ATTEMPTS: u32 = 4;
/// Backoff before the 2nd attempt; doubles each time, capped, with full jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Idle keep-alive connections are kept this long: across invocations (so the next one reuses the TLS session
/// without a handshake), but below the 350 s after which AWS NAT gateways silently drop idle flows.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(240);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);
/// Warm-up request bound (it runs in the background during Init).
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Block used when a 418 does not say how long it lasts (Upbit does not document the format).
const DEFAULT_BAN: Duration = Duration::from_secs(60);
/// Cache entries kept at most (then the oldest go first); the byte bound is `MAKENAIDE_UPBIT_CACHE_MAX_BYTES`.
const CACHE_MAX_ENTRIES: usize = 1024;
/// Bytes an entry costs beyond its key and body (entry, headers, map and queue slots), for the byte bound.
const CACHE_ENTRY_OVERHEAD: usize = 256;
/// Upbit's rate-limit header.
pub const REMAINING_REQ: &str = "remaining-req";

/// The extension's one HTTP client: HTTP/1 keep-alive, rustls with ring and the compiled-in webpki roots (no
/// filesystem scan of /etc/ssl at cold start), no redirects, no proxy. Upbit and the AWS calls share it.
///
/// # Errors
/// TLS or client setup failed.
pub fn http_client() -> Result<reqwest::Client, Error> {
    // Also the process default, so nothing that builds its own rustls config can panic for lack of one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("makenaide-core/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(32)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(TCP_KEEPALIVE)
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .map_err(|e| Error::Internal(format!("HTTP client setup: {e}")))
}

/// A quotation route: the rate-limit group of a mirrored path, or `None` for paths Upbit's quotation API does not
/// have (→ 404 `not_found`).
#[must_use]
pub fn route(path: &str) -> Option<Group> {
    let rest = path.strip_prefix("/v1/")?;
    match rest {
        "market/all" => Some(Group::Market),
        "candles/seconds" | "candles/days" | "candles/weeks" | "candles/months" | "candles/years" => {
            Some(Group::Candles)
        }
        "ticker" | "ticker/all" => Some(Group::Ticker),
        "orderbook" | "orderbook/instruments" => Some(Group::Orderbook),
        "trades/ticks" => Some(Group::Trade),
        _ => {
            // Any numeric unit goes through: Upbit itself answers 400 "specified unit is not valid" for bad ones.
            let unit = rest.strip_prefix("candles/minutes/")?;
            (!unit.is_empty() && unit.len() <= 4 && unit.bytes().all(|b| b.is_ascii_digit())).then_some(Group::Candles)
        }
    }
}

/// Who produced a reply (`X-Makenaide-Source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Fetched from Upbit for this request (or a coalesced identical one).
    Upbit,
    /// Served from the short TTL cache.
    Cache,
}

impl Source {
    /// Header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upbit => "upbit",
            Self::Cache => "cache",
        }
    }
}

/// An Upbit reply, passed through unchanged.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Upbit's status.
    pub status: u16,
    /// Upbit's `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// Upbit's `Remaining-Req`.
    pub remaining_req: Option<HeaderValue>,
    /// Upbit's body.
    pub body: Bytes,
    /// Who produced it.
    pub source: Source,
}

type Shared = Result<Reply, Error>;

struct CacheEntry {
    expires: Instant,
    reply: Reply,
    size: usize,
}

/// The TTL cache. One TTL for every entry, so insertion order is expiry order: `order` is both the eviction queue
/// (oldest first) and the expiry queue. A key stored again leaves a stale item in `order`, skipped when reached.
#[derive(Default)]
struct Cache {
    map: HashMap<String, CacheEntry>,
    order: VecDeque<(Instant, String)>,
    bytes: usize,
}

impl Cache {
    /// Drops the oldest entry (and any stale queue items before it).
    fn pop_oldest(&mut self) -> bool {
        while let Some((expires, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.expires == expires) {
                if let Some(e) = self.map.remove(&key) {
                    self.bytes -= e.size;
                }
                return true;
            }
        }
        false
    }

    fn purge_expired(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(expires, _)| *expires <= now) {
            self.pop_oldest();
        }
        if self.map.is_empty() {
            self.order.clear();
        }
    }
}

/// The Upbit side (cheap to clone).
#[derive(Clone)]
pub struct Upbit {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    base: String,
    governor: Governor,
    default_timeout: Duration,
    cache_ttl: Duration,
    cache_max_bytes: usize,
    cache: Mutex<Cache>,
    in_flight: Mutex<HashMap<String, watch::Receiver<Option<Shared>>>>,
    warm: AtomicBool,
    jitter: AtomicU64,
}

impl Upbit {
    /// Builds the client (no connection yet; [`Upbit::warm_up`] opens one).
    ///
    /// # Errors
    /// The HTTP client cannot be built (TLS setup).
    pub fn new(config: &crate::config::Config) -> Result<Self, Error> {
        Self::with_window(config, Duration::from_secs(1))
    }

    fn with_window(config: &crate::config::Config, window: Duration) -> Result<Self, Error> {
        let client = http_client()?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                base: config.upbit_base_url.clone(),
                governor: Governor::new(config.upbit_rate_per_sec, window),
                default_timeout: config.upbit_timeout,
                cache_ttl: config.upbit_cache_ttl,
                cache_max_bytes: config.upbit_cache_max_bytes,
                cache: Mutex::new(Cache::default()),
                in_flight: Mutex::new(HashMap::new()),
                warm: AtomicBool::new(false),
                jitter: AtomicU64::new(seed),
            }),
        })
    }

    /// The extension's HTTP client (also used for its AWS calls: one TLS stack, one connection pool per host).
    #[must_use]
    pub fn http_client(&self) -> reqwest::Client {
        self.inner.client.clone()
    }

    /// `/ping`'s view: `ready` once a connection to Upbit has answered.
    #[must_use]
    pub fn is_warm(&self) -> bool {
        self.inner.warm.load(Ordering::SeqCst)
    }

    /// Drops the cache's expired entries. The server's sweep calls it every 250 ms, so expired entries go as time
    /// passes, not on the next Upbit call (every call also drops them first).
    pub fn purge_expired(&self) {
        self.inner.lock_cache().purge_expired(Instant::now());
    }

    /// `GET /metrics`'s view of the cache: entries, bytes and their bounds.
    #[must_use]
    pub fn cache_usage(&self) -> serde_json::Value {
        let (entries, bytes) = self.inner.cache_usage();
        serde_json::json!({
            "entries": entries,
            "bytes": bytes,
            "max_entries": CACHE_MAX_ENTRIES,
            "max_bytes": self.inner.cache_max_bytes,
        })
    }

    /// The default deadline for callers that sent none.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        self.inner.default_timeout
    }

    /// Opens the TLS connection to Upbit without spending rate budget: `GET {base}/` is unrouted, Upbit answers
    /// 404 "no Route matched" without `Remaining-Req`, and the kept-alive connection is then reused by the first
    /// real request. Never fails (the outcome shows in [`Upbit::is_warm`]).
    pub async fn warm_up(&self) {
        let started = Instant::now();
        let url = format!("{}/", self.inner.base);
        let res = tokio::time::timeout(WARM_UP_TIMEOUT, async {
            let resp = self.inner.client.get(&url).send().await?;
            let status = resp.status();
            resp.bytes().await?; // read to the end so the connection goes back to the pool
            Ok::<_, reqwest::Error>(status)
        })
        .await;
        match res {
            Ok(Ok(status)) => {
                self.inner.warm.store(true, Ordering::SeqCst);
                tracing::info!(
                    status = status.as_u16(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "upbit connection warm"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %error_chain(&e), "upbit warm-up failed"),
            Err(_) => tracing::warn!(
                timeout_ms = WARM_UP_TIMEOUT.as_millis() as u64,
                "upbit warm-up timed out"
            ),
        }
    }

    /// GET a quotation path (`path_and_query` as the caller sent it), within `deadline`: cache, then coalescing,
    /// then the governor, retries and Upbit.
    ///
    /// # Errors
    /// `upstream_error` / `upstream_deadline`.
    pub async fn get(&self, group: Group, path_and_query: &str, deadline: Instant) -> Result<Reply, Error> {
        let key = path_and_query.to_owned();
        loop {
            if let Some(reply) = self.inner.cached(&key) {
                crate::metrics::inc(crate::metrics::Counter::UpbitCacheHits);
                return Ok(reply);
            }
            let (mut rx, leader) = {
                let mut map = self
                    .inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(rx) = map.get(&key) {
                    crate::metrics::inc(crate::metrics::Counter::UpbitCoalesced);
                    (rx.clone(), false)
                } else {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    // The fetch runs in its own task: a caller that disconnects must not cancel it for the others.
                    let this = self.inner.clone();
                    let key = key.clone();
                    tokio::spawn(async move {
                        let result = this.fetch(group, &key, deadline).await;
                        if let Ok(reply) = &result {
                            if reply.status == 200 && !this.cache_ttl.is_zero() {
                                this.store(&key, reply);
                            }
                        }
                        this.in_flight
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .remove(&key);
                        let _ = tx.send(Some(result));
                    });
                    (rx, true)
                }
            };
            let waited = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some)).await;
            let shared = match waited {
                Err(_) => {
                    return Err(Error::UpstreamDeadline(
                        "no answer from Upbit before the caller's deadline".into(),
                    ))
                }
                Ok(Err(_)) => return Err(Error::Internal("upstream fetch task ended without a result".into())),
                Ok(Ok(value)) => value
                    .clone()
                    .unwrap_or_else(|| Err(Error::Internal("empty upstream result".into()))),
            };
            // A follower with a later deadline than the leader's does not inherit the leader's deadline failure.
            if !leader && matches!(shared, Err(Error::UpstreamDeadline(_))) && Instant::now() < deadline {
                continue;
            }
            return shared;
        }
    }
}

impl Inner {
    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cache_usage(&self) -> (usize, usize) {
        let mut cache = self.lock_cache();
        cache.purge_expired(Instant::now());
        (cache.map.len(), cache.bytes)
    }

    fn cached(&self, key: &str) -> Option<Reply> {
        if self.cache_ttl.is_zero() {
            return None;
        }
        let now = Instant::now();
        let mut cache = self.lock_cache();
        cache.purge_expired(now);
        let entry = cache.map.get(key)?;
        Some(Reply {
            source: Source::Cache,
            ..entry.reply.clone()
        })
    }

    fn store(&self, key: &str, reply: &Reply) {
        let size = key.len() + reply.body.len() + CACHE_ENTRY_OVERHEAD;
        if size > self.cache_max_bytes {
            return; // larger than the whole cache (or caching is off by bytes)
        }
        let now = Instant::now();
        let expires = now + self.cache_ttl;
        let mut cache = self.lock_cache();
        cache.purge_expired(now);
        if let Some(old) = cache.map.remove(key) {
            cache.bytes -= old.size;
        }
        while cache.map.len() >= CACHE_MAX_ENTRIES || cache.bytes + size > self.cache_max_bytes {
            if !cache.pop_oldest() {
                break;
            }
        }
        // A copy: the body handed over by the HTTP client can be a slice of a larger receive buffer, which the
        // entry would keep alive whole; the byte bound must be what the cache really holds.
        let reply = Reply {
            body: Bytes::copy_from_slice(&reply.body),
            ..reply.clone()
        };
        cache.map.insert(key.to_owned(), CacheEntry { expires, reply, size });
        cache.order.push_back((expires, key.to_owned()));
        cache.bytes += size;
    }

    /// Full jitter: uniform in [0, cap] (xorshift; no need for a crypto RNG to spread retries).
    fn jittered(&self, cap: Duration) -> Duration {
        let mut x = self.jitter.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter.store(x, Ordering::Relaxed);
        let cap_us = u64::try_from(cap.as_micros()).unwrap_or(u64::MAX).max(1);
        Duration::from_micros(x % cap_us)
    }

    /// One logical GET: governor slot, request, classification, retries with backoff, all within `deadline`.
    async fn fetch(&self, group: Group, path_and_query: &str, deadline: Instant) -> Result<Reply, Error> {
        let url = format!("{}{}", self.base, path_and_query);
        let mut backoff = BACKOFF_BASE;
        let mut last: Result<Reply, Error> = Err(Error::Upstream("Upbit was not called".into()));
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                crate::metrics::inc(crate::metrics::Counter::UpbitRetries);
            }
            let waiting = Instant::now();
            let permit = self.governor.acquire(group, deadline).await;
            crate::metrics::add(
                crate::metrics::Counter::RateSlotWaitUs,
                u64::try_from(waiting.elapsed().as_micros()).unwrap_or(u64::MAX),
            );
            let permit = permit?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::UpstreamDeadline(
                    "no time left before the caller's deadline".into(),
                ));
            }
            crate::metrics::inc(crate::metrics::Counter::UpbitRequests);
            let sent = tokio::time::timeout(remaining, async {
                let resp = self
                    .client
                    .get(&url)
                    .header(http::header::ACCEPT, "application/json")
                    .send()
                    .await?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, body))
            })
            .await;
            permit.finish();
            let mut immediate_retry = false;
            match sent {
                Err(_) => {
                    return Err(Error::UpstreamDeadline(format!(
                        "Upbit did not answer {path} before the caller's deadline (attempt {attempt})",
                        path = path_only(path_and_query)
                    )))
                }
                Ok(Err(e)) => {
                    // A keep-alive connection that died while Lambda had us frozen fails at once: retry right
                    // away (a new connection is opened); real connect failures back off.
                    immediate_retry = attempt == 1 && !e.is_connect() && !e.is_timeout();
                    tracing::debug!(error = %error_chain(&e), attempt, "upbit request failed");
                    last = Err(Error::Upstream(format!("Upbit unreachable: {}", error_chain(&e))));
                }
                Ok(Ok((status, headers, body))) => {
                    self.warm_flag();
                    let remaining_req = headers.get(REMAINING_REQ).cloned();
                    if remaining_req
                        .as_ref()
                        .and_then(|v| v.to_str().ok())
                        .and_then(remaining_sec)
                        == Some(0)
                    {
                        self.governor.observe_exhausted(group);
                    }
                    let reply = Reply {
                        status,
                        content_type: headers.get(http::header::CONTENT_TYPE).cloned(),
                        remaining_req,
                        body,
                        source: Source::Upbit,
                    };
                    match status {
                        200..=299 => {
                            if serde_json::from_slice::<serde::de::IgnoredAny>(&reply.body).is_ok() {
                                return Ok(reply);
                            }
                            last = Err(Error::Upstream(format!(
                                "Upbit returned malformed JSON for {} (HTTP {status}, {} bytes)",
                                path_only(path_and_query),
                                reply.body.len()
                            )));
                        }
                        429 => {
                            crate::metrics::inc(crate::metrics::Counter::Upbit429);
                            self.governor.too_many_requests(group);
                            tracing::warn!(group = group.name(), attempt, "upbit answered 429");
                            last = Ok(reply);
                        }
                        418 => {
                            crate::metrics::inc(crate::metrics::Counter::Upbit418);
                            let ban = ban_duration(&headers, &reply.body);
                            self.governor.banned(group, ban);
                            tracing::error!(
                                group = group.name(),
                                ban_ms = ban.as_millis() as u64,
                                "upbit answered 418: IP blocked"
                            );
                            return Ok(reply);
                        }
                        500..=599 => {
                            last = Err(Error::Upstream(format!(
                                "Upbit answered HTTP {status} for {}: {}",
                                path_only(path_and_query),
                                snippet(&reply.body)
                            )));
                        }
                        // Other 4xx (404 Code not found, 400 bad parameter): Upbit's answer, not retried.
                        _ => return Ok(reply),
                    }
                }
            }
            if attempt == MAX_ATTEMPTS {
                break;
            }
            let pause = if immediate_retry {
                Duration::ZERO
            } else {
                self.jittered(backoff)
            };
            if Instant::now() + pause >= deadline {
                break;
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        last
    }

    fn warm_flag(&self) {
        self.warm.store(true, Ordering::Relaxed);
    }
}

fn path_only(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or(path_and_query)
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(200)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Error with its causes ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// `sec` from `Remaining-Req: group=candles; min=600; sec=0` (header parsed generically, names vary).
#[must_use]
pub fn remaining_sec(value: &str) -> Option<u32> {
    value.split(';').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        (k.trim() == "sec").then(|| v.trim().parse().ok()).flatten()
    })
}

/// How long a 418 block lasts. Upbit's format is undocumented: `Retry-After` (seconds) when present, else the
/// first number in the body followed by a time unit (seconds, minutes; Korean or English), else [`DEFAULT_BAN`].
fn ban_duration(headers: &http::HeaderMap, body: &[u8]) -> Duration {
    if let Some(secs) = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_secs(secs.clamp(1, 24 * 3600));
    }
    let text = String::from_utf8_lossy(body).to_lowercase();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            let n: u64 = text[start..i].parse().unwrap_or(0);
            let unit = text[i..].trim_start();
            if n > 0 {
                // A bare unit letter counts only when it ends the word ("30s", not "418 something").
                let bare = |c: char| unit.starts_with(c) && !unit[1..].starts_with(|x: char| x.is_alphabetic());
                if unit.starts_with("min") || unit.starts_with('분') || bare('m') {
                    // saturating: a huge number must not overflow (a panic in debug, a wrapped block in release).
                    return Duration::from_secs(n.saturating_mul(60).min(24 * 3600));
                }
                if unit.starts_with("ms") || unit.starts_with("milli") {
                    return Duration::from_millis(n.clamp(1000, 24 * 3_600_000));
                }
                if unit.starts_with("sec") || unit.starts_with('초') || bare('s') {
                    return Duration::from_secs(n.min(24 * 3600));
                }
            }
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    DEFAULT_BAN
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn reply(len: usize) -> Reply {
        Reply {
            status: 200,
            content_type: None,
            remaining_req: None,
            body: Bytes::from(vec![b'x'; len]),
            source: Source::Upbit,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_by_bytes_and_entries_and_empties_as_time_passes() {
        let config = crate::config::Config {
            upbit_cache_ttl: Duration::from_secs(10),
            upbit_cache_max_bytes: 4 << 20,
            ..crate::config::Config::default()
        };
        let upbit = Upbit::new(&config).unwrap();
        // 1,100 distinct candle GETs of ~100 KB within the TTL: 110 MB if nothing bounded it.
        for i in 0..1100 {
            let key = format!("/v1/candles/minutes/1?market=KRW-BTC&count=200&to={i}");
            upbit.inner.store(&key, &reply(100_000));
            let (entries, bytes) = upbit.inner.cache_usage();
            assert!(bytes <= 4 << 20, "{bytes} bytes after {i}");
            assert!(entries <= CACHE_MAX_ENTRIES);
        }
        let (entries, bytes) = upbit.inner.cache_usage();
        assert_eq!(
            entries,
            (4 << 20) / (100_000 + 256 + 51),
            "the newest that fit: {entries}"
        );
        assert!(bytes > 3 << 20);
        // The newest is served, the oldest is gone.
        assert!(upbit
            .inner
            .cached("/v1/candles/minutes/1?market=KRW-BTC&count=200&to=1099")
            .is_some());
        assert!(upbit
            .inner
            .cached("/v1/candles/minutes/1?market=KRW-BTC&count=200&to=0")
            .is_none());
        // Small entries: the entry bound holds.
        for i in 0..1500 {
            upbit.inner.store(&format!("/v1/ticker?markets=K{i}"), &reply(10));
        }
        assert_eq!(upbit.inner.cache_usage().0, CACHE_MAX_ENTRIES);
        // Nobody calls again: the sweep's purge empties the cache once the TTL has passed.
        upbit.purge_expired();
        assert_eq!(
            upbit.inner.lock_cache().map.len(),
            CACHE_MAX_ENTRIES,
            "nothing expired yet"
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        upbit.purge_expired();
        let cache = upbit.inner.lock_cache();
        assert_eq!((cache.map.len(), cache.bytes, cache.order.len()), (0, 0, 0));
    }

    #[test]
    fn routes_and_groups() {
        assert_eq!(route("/v1/market/all"), Some(Group::Market));
        assert_eq!(route("/v1/candles/minutes/15"), Some(Group::Candles));
        assert_eq!(route("/v1/candles/days"), Some(Group::Candles));
        assert_eq!(route("/v1/candles/years"), Some(Group::Candles));
        assert_eq!(route("/v1/ticker/all"), Some(Group::Ticker));
        assert_eq!(route("/v1/orderbook/instruments"), Some(Group::Orderbook));
        assert_eq!(route("/v1/trades/ticks"), Some(Group::Trade));
        assert_eq!(route("/v1/accounts"), None);
        assert_eq!(route("/v1/orders"), None);
        assert_eq!(route("/v1/candles/minutes/"), None);
        assert_eq!(route("/v1/candles/minutes/x"), None);
        assert_eq!(route("/v1/candles/minutes/1/2"), None);
        assert_eq!(route("/v1/ticker/"), None);
        assert_eq!(route("/v2/ticker"), None);
    }

    #[test]
    fn remaining_req_parsing() {
        assert_eq!(remaining_sec("group=candles; min=600; sec=0"), Some(0));
        assert_eq!(remaining_sec("group=market;min=573;sec=9"), Some(9));
        assert_eq!(remaining_sec("group=default; min=1800"), None);
        assert_eq!(remaining_sec("garbage"), None);
    }

    #[test]
    fn ban_durations() {
        let h = http::HeaderMap::new();
        assert_eq!(
            ban_duration(&h, br#"{"error":{"name":418,"message":"blocked for 120 seconds"}}"#),
            Duration::from_secs(120)
        );
        assert_eq!(ban_duration(&h, "차단: 5분".as_bytes()), Duration::from_secs(300));
        assert_eq!(ban_duration(&h, b"nothing useful"), DEFAULT_BAN);
        assert_eq!(ban_duration(&h, b"error 418 something"), DEFAULT_BAN);
        assert_eq!(ban_duration(&h, b"retry in 30s"), Duration::from_secs(30));
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(ban_duration(&h, b""), Duration::from_secs(7));
    }
}
