//! Upbit's quotation rate limit as the simulated server enforces it (reference §3): a sliding window per
//! (client IP, group), 10 requests per 1000 ms by default; `Origin` requests in their own group at 1 per 10 s;
//! repeated 429s turn into a temporary IP block (418) that grows longer with every offence.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Rate-limit knobs. Every field has a default, so a JSON patch may give only some of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    /// Off: requests are still counted and `Remaining-Req` still reports, but nothing is refused.
    pub enabled: bool,
    /// Requests per window per (IP, group): Upbit's quotation limit is 10/s.
    pub per_second: u32,
    /// The sliding window, in ms (1000).
    pub window_ms: u64,
    /// Requests per `origin_window_ms` for requests carrying an `Origin` header (1 per 10 s).
    pub origin_limit: u32,
    pub origin_window_ms: u64,
    /// This many 429s within `ban_window_ms` block the IP (418). 0 disables blocking.
    pub ban_after_429s: u32,
    pub ban_window_ms: u64,
    /// First block length; each later block doubles, up to `ban_max_ms`.
    pub ban_base_ms: u64,
    pub ban_max_ms: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 10,
            window_ms: 1000,
            origin_limit: 1,
            origin_window_ms: 10_000,
            ban_after_429s: 10,
            ban_window_ms: 10_000,
            ban_base_ms: 30_000,
            ban_max_ms: 600_000,
        }
    }
}

impl RateLimit {
    /// The deprecated, fixed `min=` value of `Remaining-Req`: 60 × the per-window limit (600 for 10/s; 6 for origin's
    /// 1 per 10 s, as measured).
    pub fn min_value(&self, origin: bool) -> u64 {
        if origin {
            u64::from(self.origin_limit) * 60_000 / self.origin_window_ms.max(1)
        } else {
            u64::from(self.per_second) * 60
        }
    }
}

#[derive(Default)]
struct IpState {
    recent_429: VecDeque<Instant>,
    banned_until: Option<Instant>,
    offences: u32,
}

/// Sliding windows and blocks, per client IP.
#[derive(Default)]
pub struct Limiter {
    windows: HashMap<(IpAddr, String), VecDeque<Instant>>,
    ips: HashMap<IpAddr, IpState>,
}

impl Limiter {
    /// Time left on the IP's block, if it is blocked.
    pub fn banned(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let st = self.ips.get_mut(&ip)?;
        match st.banned_until {
            Some(t) if t > now => Some(t - now),
            Some(_) => {
                st.banned_until = None;
                None
            }
            None => None,
        }
    }

    /// Counts a request in the (IP, group) window: `Some(remaining)` when admitted, `None` when the window is
    /// full (refused requests do not take a slot). With `enforce` off the request is always admitted.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        group: &str,
        limit: u32,
        window: Duration,
        enforce: bool,
        now: Instant,
    ) -> Option<u32> {
        let w = self.windows.entry((ip, group.to_string())).or_default();
        while w.front().is_some_and(|t| now.duration_since(*t) >= window) {
            w.pop_front();
        }
        if enforce && w.len() >= limit as usize {
            return None;
        }
        w.push_back(now);
        Some((limit as usize).saturating_sub(w.len()) as u32)
    }

    /// Records a 429; returns the block length when this 429 starts a block.
    pub fn note_429(&mut self, ip: IpAddr, cfg: &RateLimit, now: Instant) -> Option<Duration> {
        if cfg.ban_after_429s == 0 {
            return None;
        }
        let window = Duration::from_millis(cfg.ban_window_ms);
        let st = self.ips.entry(ip).or_default();
        st.recent_429.push_back(now);
        while st.recent_429.front().is_some_and(|t| now.duration_since(*t) >= window) {
            st.recent_429.pop_front();
        }
        if st.recent_429.len() < cfg.ban_after_429s as usize {
            return None;
        }
        st.recent_429.clear();
        let factor = 1u64 << st.offences.min(20);
        st.offences += 1;
        let len = Duration::from_millis(cfg.ban_base_ms.saturating_mul(factor).min(cfg.ban_max_ms));
        st.banned_until = Some(now + len);
        Some(len)
    }

    /// Blocks the IP for `len` (an injected 418), without counting an offence.
    pub fn ban(&mut self, ip: IpAddr, len: Duration, now: Instant) {
        let st = self.ips.entry(ip).or_default();
        let until = now + len;
        st.banned_until = Some(st.banned_until.map_or(until, |t| t.max(until)));
    }
}
