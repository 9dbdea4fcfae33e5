//! Fault injection: a queue of one-shot (or n-shot) faults matched against the next requests, plus per-request
//! probabilities drawn from a seeded generator so a "random" run is reproducible.

use serde::{Deserialize, Serialize};

use super::model::mix;

/// What to do to a request instead of (or on top of) answering it normally.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// 429 `Too many API requests.` (plain text) without touching the rate-limit accounting.
    TooManyRequests,
    /// 418 carrying the block time, and the client IP really is blocked for `secs`.
    Blocked { secs: u64 },
    /// A 5xx: 500 as Upbit's JSON error, 502/503/504 as a gateway's HTML page without `Remaining-Req`.
    ServerError { status: u16 },
    /// The connection is reset (RST) without any response.
    Reset,
    /// The response is sent normally but only after `ms` more milliseconds.
    Slow { ms: u64 },
    /// 200 with a body that is not valid JSON.
    MalformedJson,
    /// 200 whose `Content-Length` promises more bytes than are sent before the connection closes.
    TruncatedBody,
}

impl Fault {
    /// Short name used in stats and in the served-candle log.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TooManyRequests => "too_many_requests",
            Self::Blocked { .. } => "blocked",
            Self::ServerError { .. } => "server_error",
            Self::Reset => "reset",
            Self::Slow { .. } => "slow",
            Self::MalformedJson => "malformed_json",
            Self::TruncatedBody => "truncated_body",
        }
    }
}

fn one() -> u32 {
    1
}

/// A queued fault: applied to the next `times` requests that match every given filter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    #[serde(flatten)]
    pub fault: Fault,
    /// How many matching requests get it (default 1).
    #[serde(default = "one")]
    pub times: u32,
    /// Only requests of this rate-limit group (`market`, `candles`, `ticker`, `orderbook`, `trade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Only requests whose path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only requests naming this market (in `market` or `markets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market: Option<String>,
}

impl FaultRule {
    /// `fault` on the next request, whatever it is.
    pub fn once(fault: Fault) -> Self {
        Self {
            fault,
            times: 1,
            group: None,
            path: None,
            market: None,
        }
    }

    /// `fault` on the next `times` requests.
    pub fn times(fault: Fault, times: u32) -> Self {
        Self {
            times,
            ..Self::once(fault)
        }
    }

    /// Restricts the rule to one rate-limit group.
    pub fn in_group(mut self, group: &str) -> Self {
        self.group = Some(group.to_string());
        self
    }

    /// Restricts the rule to requests naming `market`.
    pub fn for_market(mut self, market: &str) -> Self {
        self.market = Some(market.to_string());
        self
    }

    pub(crate) fn matches(&self, group: &str, path: &str, markets: &[String]) -> bool {
        self.group.as_deref().is_none_or(|g| g == group)
            && self.path.as_deref().is_none_or(|p| path.starts_with(p))
            && self
                .market
                .as_deref()
                .is_none_or(|m| markets.iter().any(|x| x.eq_ignore_ascii_case(m)))
    }
}

/// Independent per-request probabilities (checked in field order, at most one fault per request).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultProbabilities {
    pub too_many_requests: f64,
    pub blocked: f64,
    /// Block length of a random 418.
    pub blocked_secs: u64,
    /// 500, 502 or 503, picked evenly.
    pub server_error: f64,
    pub reset: f64,
    pub slow: f64,
    pub slow_ms: u64,
    pub malformed_json: f64,
    pub truncated_body: f64,
    /// Seed of the draws.
    pub seed: u64,
}

impl FaultProbabilities {
    /// The fault of draw number `n`, if any.
    pub(crate) fn draw(&self, n: u64) -> Option<Fault> {
        let u = (mix(&[self.seed, 0xfa17, n]) >> 11) as f64 / (1u64 << 53) as f64;
        let options = [
            (self.too_many_requests, Fault::TooManyRequests),
            (
                self.blocked,
                Fault::Blocked {
                    secs: self.blocked_secs.max(1),
                },
            ),
            (
                self.server_error,
                Fault::ServerError {
                    status: [500, 502, 503][(mix(&[self.seed, n]) % 3) as usize],
                },
            ),
            (self.reset, Fault::Reset),
            (self.slow, Fault::Slow { ms: self.slow_ms }),
            (self.malformed_json, Fault::MalformedJson),
            (self.truncated_body, Fault::TruncatedBody),
        ];
        let mut acc = 0.0;
        for (p, f) in options {
            acc += p.max(0.0);
            if u < acc {
                return Some(f);
            }
        }
        None
    }

    pub(crate) fn any(&self) -> bool {
        self.too_many_requests
            + self.blocked
            + self.server_error
            + self.reset
            + self.slow
            + self.malformed_json
            + self.truncated_body
            > 0.0
    }
}
