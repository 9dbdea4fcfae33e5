//! Deterministic market data of the simulated Upbit: every price, candle, trade, ticker and order book is a pure
//! function of (market spec, time, "now"), so a test can recompute exactly what the server answered.
//!
//! - The price at instant `t` is `base_price * exp(smooth waves + 60 s value noise)`, rounded to the pair's tick.
//! - A candle of length `L` starting at `s` exists iff a hash of (market, interval, s) falls under
//!   `1 - exp(-trade_rate * L)`: thin markets have gaps in their minute series ("candles exist only where trades
//!   happened", reference §2.3), liquid ones do not. Day candles always exist from the listing date on.
//! - Week, month and year candles aggregate the day candles of their period (weeks start on Mondays).
//! - Seconds candles are the (at most one) simulated trade of that second, and trades are those same trades.
//! - The newest candle is still forming: it only holds what "happened" up to `now`.

use std::collections::HashMap;
use std::f64::consts::TAU;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Datelike, Duration, Months, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, MarketSpec};

const DAY_MS: i64 = 86_400_000;
/// Seconds candles exist only for about the last 3 months (reference §2.3, D7).
pub const SECONDS_RETENTION: Duration = Duration::days(90);

// ---------------------------------------------------------------------------------------------------------------
// hashing

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes several words into one well-distributed hash.
pub fn mix(parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(0x1234_5678_9abc_def0, |h, &p| splitmix(h ^ splitmix(p)))
}

/// A hash as a float in [0, 1).
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Rounds to 8 decimals (volumes, turnovers, rates).
pub fn round8(x: f64) -> f64 {
    (x * 1e8).round() / 1e8
}

// ---------------------------------------------------------------------------------------------------------------
// intervals and time

/// A candle interval, named like the data-collector's `interval` (`days`, `minutes/5`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Interval {
    Seconds,
    Minutes(u32),
    Days,
    Weeks,
    Months,
    Years,
}

impl Interval {
    /// The minute units Upbit serves (reference §2.3); anything else is 400 `specified unit is not valid.`.
    pub const MINUTE_UNITS: [u32; 8] = [1, 3, 5, 10, 15, 30, 60, 240];

    /// Parses `seconds`, `minutes/<unit>`, `days`, `weeks`, `months`, `years`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "seconds" => Some(Self::Seconds),
            "days" => Some(Self::Days),
            "weeks" => Some(Self::Weeks),
            "months" => Some(Self::Months),
            "years" => Some(Self::Years),
            _ => {
                let u: u32 = s.strip_prefix("minutes/")?.parse().ok()?;
                Self::MINUTE_UNITS.contains(&u).then_some(Self::Minutes(u))
            }
        }
    }

    /// `days`, `minutes/5`, ...: the path suffix after `/v1/candles/`.
    pub fn name(&self) -> String {
        match self {
            Self::Seconds => "seconds".into(),
            Self::Minutes(u) => format!("minutes/{u}"),
            Self::Days => "days".into(),
            Self::Weeks => "weeks".into(),
            Self::Months => "months".into(),
            Self::Years => "years".into(),
        }
    }

    /// The request path, e.g. `/v1/candles/minutes/5`.
    pub fn path(&self) -> String {
        format!("/v1/candles/{}", self.name())
    }

    /// Start of the interval holding `t` (UTC clock: minutes on the unit, days at 00:00, weeks on Mondays).
    pub fn floor(&self, t: NaiveDateTime) -> NaiveDateTime {
        let day = t.date();
        match self {
            Self::Seconds => ms_to_naive(naive_ms(t).div_euclid(1000) * 1000),
            Self::Minutes(u) => {
                let len = i64::from(*u) * 60_000;
                ms_to_naive(naive_ms(t).div_euclid(len) * len)
            }
            Self::Days => midnight(day),
            Self::Weeks => midnight(day - Duration::days(i64::from(day.weekday().num_days_from_monday()))),
            Self::Months => midnight(day.with_day(1).unwrap_or(day)),
            Self::Years => midnight(NaiveDate::from_ymd_opt(day.year(), 1, 1).unwrap_or(day)),
        }
    }

    /// Start of the interval before the one starting at `s`.
    pub fn prev(&self, s: NaiveDateTime) -> NaiveDateTime {
        match self {
            Self::Seconds => s - Duration::seconds(1),
            Self::Minutes(u) => s - Duration::minutes(i64::from(*u)),
            Self::Days => s - Duration::days(1),
            Self::Weeks => s - Duration::days(7),
            Self::Months => s.checked_sub_months(Months::new(1)).unwrap_or(NaiveDateTime::MIN),
            Self::Years => s.checked_sub_months(Months::new(12)).unwrap_or(NaiveDateTime::MIN),
        }
    }

    /// Start of the interval after the one starting at `s`.
    pub fn next(&self, s: NaiveDateTime) -> NaiveDateTime {
        match self {
            Self::Seconds => s + Duration::seconds(1),
            Self::Minutes(u) => s + Duration::minutes(i64::from(*u)),
            Self::Days => s + Duration::days(1),
            Self::Weeks => s + Duration::days(7),
            Self::Months => s.checked_add_months(Months::new(1)).unwrap_or(NaiveDateTime::MAX),
            Self::Years => s.checked_add_months(Months::new(12)).unwrap_or(NaiveDateTime::MAX),
        }
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

fn midnight(d: NaiveDate) -> NaiveDateTime {
    d.and_time(NaiveTime::MIN)
}

/// Milliseconds since the epoch of a naive UTC time.
pub fn naive_ms(t: NaiveDateTime) -> i64 {
    t.and_utc().timestamp_millis()
}

/// Naive UTC time of a millisecond timestamp.
pub fn ms_to_naive(ms: i64) -> NaiveDateTime {
    DateTime::from_timestamp_millis(ms).map_or(NaiveDateTime::MIN, |d| d.naive_utc())
}

/// `yyyy-MM-ddTHH:mm:ss`, no zone suffix (Upbit's candle time format).
pub fn fmt_naive(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn kst(t: NaiveDateTime) -> NaiveDateTime {
    t + Duration::hours(9)
}

/// Parses a candle `to`: `2025-06-24T04:56:53Z`, `2025-06-24T04:56:53`, `2025-06-24 04:56:53`,
/// `2025-06-24T13:56:53+09:00` (any offset; fractional seconds allowed). A value without an offset is UTC
/// (reference §2.3).
pub fn parse_to(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let t_form = if s.len() > 10 && s.as_bytes()[10] == b' ' {
        format!("{}T{}", &s[..10], &s[11..])
    } else {
        s.to_string()
    };
    if let Ok(d) = DateTime::parse_from_rfc3339(&t_form) {
        return Some(d.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(&t_form, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

// ---------------------------------------------------------------------------------------------------------------
// prices and ticks

/// A tick size `m * 10^e` (`m` is 1 or 5), so prices are rendered as exact decimals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    m: i64,
    e: i32,
}

impl Tick {
    /// Tick size of a pair at price `p`. KRW follows Upbit's KRW table (approximated: reference §2.5 only confirms
    /// KRW-BTC = 1000); BTC markets use 1 satoshi; USDT markets 0.01 above 10 (USDT-BTC = 0.01 per §2.5).
    pub fn for_price(quote: &str, p: f64) -> Self {
        let t = |m, e| Self { m, e };
        match quote {
            "KRW" => match p {
                p if p >= 1_000_000.0 => t(1, 3),
                p if p >= 500_000.0 => t(5, 2),
                p if p >= 100_000.0 => t(1, 2),
                p if p >= 50_000.0 => t(5, 1),
                p if p >= 10_000.0 => t(1, 1),
                p if p >= 5_000.0 => t(5, 0),
                p if p >= 1_000.0 => t(1, 0),
                p if p >= 100.0 => t(1, -1),
                p if p >= 10.0 => t(1, -2),
                p if p >= 1.0 => t(1, -3),
                p if p >= 0.1 => t(1, -4),
                p if p >= 0.01 => t(1, -5),
                p if p >= 0.001 => t(1, -6),
                _ => t(1, -7),
            },
            "USDT" => match p {
                p if p >= 10.0 => t(1, -2),
                p if p >= 1.0 => t(1, -3),
                p if p >= 0.1 => t(1, -4),
                _ => t(1, -6),
            },
            _ => t(1, -8),
        }
    }

    /// The tick as a float.
    pub fn value(&self) -> f64 {
        self.of_units(1)
    }

    /// `n` ticks as the nearest float to the exact decimal.
    pub fn of_units(&self, n: i64) -> f64 {
        if self.e >= 0 {
            (n * self.m * 10i64.pow(self.e.unsigned_abs())) as f64
        } else {
            (n * self.m) as f64 / 10f64.powi(-self.e)
        }
    }

    /// Rounds `x` to the nearest tick.
    pub fn round(&self, x: f64) -> f64 {
        self.of_units((x / self.value()).round() as i64)
    }

    /// The tick times `10^k`.
    fn scaled(&self, k: i32) -> Self {
        Self {
            m: self.m,
            e: self.e + k,
        }
    }

    /// Decimal rendering, as `orderbook/instruments` sends it (`"1000"`, `"0.01"`).
    pub fn decimal(&self) -> String {
        if self.e >= 0 {
            (self.m * 10i64.pow(self.e.unsigned_abs())).to_string()
        } else {
            format!("{:.*}", (-self.e) as usize, self.value())
        }
    }
}

/// A price rounded to the pair's tick.
pub fn round_price(quote: &str, x: f64) -> f64 {
    let r = Tick::for_price(quote, x).round(x);
    if r > 0.0 {
        r
    } else {
        Tick::for_price(quote, x).value()
    }
}

/// The unrounded price of `spec` at `t_ms`.
pub fn raw_price(spec: &MarketSpec, seed: u64, t_ms: i64) -> f64 {
    let t = t_ms as f64 / 1000.0;
    let ph = |k: u64| unit(mix(&[seed, k])) * TAU;
    const D: f64 = 86_400.0;
    let waves = 0.22 * (TAU * t / (397.0 * D) + ph(1)).sin()
        + 0.07 * (TAU * t / (23.0 * D) + ph(2)).sin()
        + 0.025 * (TAU * t / (3.3 * D) + ph(3)).sin()
        + 0.007 * (TAU * t / (5.1 * 3600.0) + ph(4)).sin()
        + 0.0025 * (TAU * t / (37.0 * 60.0) + ph(5)).sin();
    let knot = t_ms.div_euclid(60_000);
    let frac = t_ms.rem_euclid(60_000) as f64 / 60_000.0;
    let n = |k: i64| (unit(mix(&[seed, 6, k as u64])) * 2.0 - 1.0) * 0.0012;
    let noise = n(knot) * (1.0 - frac) + n(knot + 1) * frac;
    // A KRW stablecoin barely moves.
    let scale = if spec.base() == "USDT" { 0.08 } else { 1.0 };
    spec.base_price * ((waves + noise) * scale).exp()
}

// ---------------------------------------------------------------------------------------------------------------
// bars

/// OHLCV of one interval, before it is dressed as an Upbit candle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bar {
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    /// Base-currency volume.
    pub volume: f64,
    /// Quote-currency turnover.
    pub value: f64,
    /// Time of the last trade (ms).
    pub ts: i64,
}

/// One simulated trade (at most one per second per market).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimTrade {
    pub ts: i64,
    pub price: f64,
    pub volume: f64,
    pub ask: bool,
    pub sequential_id: i64,
}

fn listed_ms(spec: &MarketSpec) -> i64 {
    naive_ms(midnight(spec.listed))
}

/// Base-currency volume per second, on average.
fn volume_rate(spec: &MarketSpec) -> f64 {
    spec.daily_turnover / spec.base_price / 86_400.0
}

/// The trade of second `sec` (epoch seconds), if there was one.
pub fn trade_at(spec: &MarketSpec, seed: u64, sec: i64) -> Option<SimTrade> {
    if sec * 1000 < listed_ms(spec) {
        return None;
    }
    let h = mix(&[seed, 1, sec as u64]);
    let p = 1.0 - (-spec.trade_rate).exp();
    if unit(h) >= p {
        return None;
    }
    let h2 = splitmix(h);
    let ts = sec * 1000 + (h2 % 1000) as i64;
    Some(SimTrade {
        ts,
        price: round_price(spec.quote(), raw_price(spec, seed, ts)),
        volume: round8(volume_rate(spec) / p * (0.2 + 1.6 * unit(splitmix(h2)))),
        ask: splitmix(h2 ^ 7) & 1 == 1,
        sequential_id: ts * 1000 + (splitmix(h2 ^ 9) % 1000) as i64,
    })
}

/// A bar of an interval `[start, start + len)` with trades with probability `p`, as seen at `now`.
fn generic_bar(spec: &MarketSpec, seed: u64, kind: u64, start: i64, len: i64, now: i64, p: f64) -> Option<Bar> {
    let h = mix(&[seed, kind, start as u64]);
    if unit(h) >= p {
        return None;
    }
    let hs: Vec<u64> = (1..=5).map(|k| mix(&[h, k])).collect();
    let first_off = (unit(hs[0]) * 0.25 * len as f64) as i64;
    let last_off = (len - 1 - (unit(hs[1]) * 0.25 * len as f64) as i64).max(first_off);
    if now < start + first_off {
        return None; // the interval is still open and nothing traded yet
    }
    let last = (start + last_off).min(now);
    let q = spec.quote();
    let open_raw = raw_price(spec, seed, start + first_off);
    let close_raw = raw_price(spec, seed, last);
    let (mut hi, mut lo) = (open_raw.max(close_raw), open_raw.min(close_raw));
    let span = (last - start - first_off) as f64;
    for f in [0.2, 0.45, 0.7, 0.9] {
        let x = raw_price(spec, seed, start + first_off + (f * span) as i64);
        hi = hi.max(x);
        lo = lo.min(x);
    }
    let wiggle = 0.0004 * (len as f64 / 60_000.0).powf(0.3) * unit(hs[2]);
    let open = round_price(q, open_raw);
    let close = round_price(q, close_raw);
    let high = round_price(q, hi * (1.0 + wiggle)).max(open).max(close);
    let low = round_price(q, lo * (1.0 - wiggle)).min(open).min(close);
    let progress = ((last - start - first_off + 1) as f64 / (last_off - first_off + 1) as f64).clamp(0.0, 1.0);
    let volume = round8(volume_rate(spec) * (len as f64 / 1000.0) / p * (0.3 + 1.4 * unit(hs[3])) * progress);
    let value = round8(volume * (open + high + low + close) / 4.0);
    Some(Bar {
        open,
        high,
        low,
        close,
        volume,
        value,
        ts: last,
    })
}

type DayKey = (u64, i32);

/// Closed day bars never change: cache them process-wide (52-week figures read a year of them per ticker).
fn day_cache() -> &'static Mutex<HashMap<DayKey, Bar>> {
    static CACHE: OnceLock<Mutex<HashMap<DayKey, Bar>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The day bar of `day` as seen at `now`, if the market traded that day.
pub fn day_bar(spec: &MarketSpec, seed: u64, day: NaiveDate, now: i64) -> Option<Bar> {
    if day < spec.listed {
        return None;
    }
    let start = naive_ms(midnight(day));
    if start > now {
        return None;
    }
    let closed = start + DAY_MS <= now;
    let key = (seed, day.num_days_from_ce());
    if closed {
        if let Some(b) = day_cache().lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Some(*b);
        }
    }
    // Every listed market trades every day.
    let b = generic_bar(spec, seed, 2, start, DAY_MS, now, 1.0)?;
    if closed {
        day_cache().lock().unwrap_or_else(|e| e.into_inner()).insert(key, b);
    }
    Some(b)
}

type Extremes = (f64, NaiveDate, f64, NaiveDate);

/// Highest high and lowest low (with their days) of the closed days of the 52 weeks before `today`, cached per
/// (market, today): a ticker for every market would otherwise walk a year of day bars on each call.
fn closed_52_weeks(spec: &MarketSpec, seed: u64, today: NaiveDate, now: i64) -> Option<Extremes> {
    static CACHE: OnceLock<Mutex<HashMap<DayKey, Option<Extremes>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (seed, today.num_days_from_ce());
    if let Some(v) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return *v;
    }
    let mut acc: Option<Extremes> = None;
    for back in 1..365 {
        let d = today - Duration::days(back);
        if d < spec.listed {
            break;
        }
        if let Some(b) = day_bar(spec, seed, d, now) {
            acc = Some(match acc {
                None => (b.high, d, b.low, d),
                Some(mut a) => {
                    if b.high > a.0 {
                        (a.0, a.1) = (b.high, d);
                    }
                    if b.low < a.2 {
                        (a.2, a.3) = (b.low, d);
                    }
                    a
                }
            });
        }
    }
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, acc);
    acc
}

/// Aggregate of the day bars in `[from, to)`.
fn agg_bar(spec: &MarketSpec, seed: u64, from: NaiveDate, to: NaiveDate, now: i64) -> Option<Bar> {
    let mut d = from.max(spec.listed);
    let mut acc: Option<Bar> = None;
    while d < to {
        if naive_ms(midnight(d)) > now {
            break;
        }
        if let Some(b) = day_bar(spec, seed, d, now) {
            acc = Some(match acc {
                None => b,
                Some(a) => Bar {
                    open: a.open,
                    high: a.high.max(b.high),
                    low: a.low.min(b.low),
                    close: b.close,
                    volume: a.volume + b.volume,
                    value: a.value + b.value,
                    ts: b.ts,
                },
            });
        }
        d += Duration::days(1);
    }
    acc.map(|a| Bar {
        volume: round8(a.volume),
        value: round8(a.value),
        ..a
    })
}

/// The bar of `interval` starting at `start`, as seen at `now` (ms).
pub fn bar(spec: &MarketSpec, seed: u64, interval: Interval, start: NaiveDateTime, now: i64) -> Option<Bar> {
    let s = naive_ms(start);
    if s > now {
        return None;
    }
    match interval {
        Interval::Seconds => {
            if s < listed_ms(spec) {
                return None;
            }
            let t = trade_at(spec, seed, s / 1000).filter(|t| t.ts <= now)?;
            let value = round8(t.price * t.volume);
            Some(Bar {
                open: t.price,
                high: t.price,
                low: t.price,
                close: t.price,
                volume: t.volume,
                value,
                ts: t.ts,
            })
        }
        Interval::Minutes(u) => {
            if s < listed_ms(spec) {
                return None;
            }
            let len = i64::from(u) * 60_000;
            let p = 1.0 - (-spec.trade_rate * len as f64 / 1000.0).exp();
            generic_bar(spec, seed, 100 + u64::from(u), s, len, now, p)
        }
        Interval::Days => day_bar(spec, seed, start.date(), now),
        Interval::Weeks | Interval::Months | Interval::Years => {
            agg_bar(spec, seed, start.date(), interval.next(start).date(), now)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// wire objects

/// One candle exactly as the server serialises it (field order as in Upbit's examples).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candle {
    pub market: String,
    pub candle_date_time_utc: String,
    pub candle_date_time_kst: String,
    pub opening_price: f64,
    pub high_price: f64,
    pub low_price: f64,
    pub trade_price: f64,
    pub timestamp: i64,
    pub candle_acc_trade_price: f64,
    pub candle_acc_trade_volume: f64,
    /// Minutes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u32>,
    /// Days only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_closing_price: Option<f64>,
    /// Days only (signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_price: Option<f64>,
    /// Days only (signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_rate: Option<f64>,
    /// Days only, only with `converting_price_unit`: a number for BTC/USDT pairs, `null` for KRW pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_trade_price: Option<serde_json::Value>,
    /// Weeks, months, years only (`yyyy-MM-dd`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_day_of_period: Option<String>,
}

/// A `/v1/market/all` item.
#[derive(Clone, Debug, Serialize)]
pub struct MarketItem {
    pub market: String,
    pub korean_name: String,
    pub english_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub market_event: Option<MarketEvent>,
}

/// `market_event` (only with `is_details=true`).
#[derive(Clone, Debug, Serialize)]
pub struct MarketEvent {
    pub warning: bool,
    pub caution: super::catalog::Caution,
}

/// A `/v1/ticker` item.
#[derive(Clone, Debug, Serialize)]
pub struct Ticker {
    pub market: String,
    pub trade_date: String,
    pub trade_time: String,
    pub trade_date_kst: String,
    pub trade_time_kst: String,
    pub trade_timestamp: i64,
    pub opening_price: f64,
    pub high_price: f64,
    pub low_price: f64,
    pub trade_price: f64,
    pub prev_closing_price: f64,
    pub change: &'static str,
    pub change_price: f64,
    pub change_rate: f64,
    pub signed_change_price: f64,
    pub signed_change_rate: f64,
    pub trade_volume: f64,
    pub acc_trade_price: f64,
    pub acc_trade_price_24h: f64,
    pub acc_trade_volume: f64,
    pub acc_trade_volume_24h: f64,
    pub highest_52_week_price: f64,
    pub highest_52_week_date: String,
    pub lowest_52_week_price: f64,
    pub lowest_52_week_date: String,
    pub timestamp: i64,
}

/// A `/v1/orderbook` item.
#[derive(Clone, Debug, Serialize)]
pub struct Orderbook {
    pub market: String,
    pub timestamp: i64,
    pub total_ask_size: f64,
    pub total_bid_size: f64,
    pub orderbook_units: Vec<OrderbookUnit>,
    pub level: serde_json::Number,
}

/// One level: the i-th ask and the i-th bid.
#[derive(Clone, Debug, Serialize)]
pub struct OrderbookUnit {
    pub ask_price: f64,
    pub bid_price: f64,
    pub ask_size: f64,
    pub bid_size: f64,
}

/// A `/v1/orderbook/instruments` item.
#[derive(Clone, Debug, Serialize)]
pub struct Instrument {
    pub market: String,
    pub quote_currency: String,
    pub tick_size: String,
    pub supported_levels: Vec<String>,
}

/// A `/v1/trades/ticks` item.
#[derive(Clone, Debug, Serialize)]
pub struct TradeTick {
    pub market: String,
    pub trade_date_utc: String,
    pub trade_time_utc: String,
    pub timestamp: i64,
    pub trade_price: f64,
    pub trade_volume: f64,
    pub prev_closing_price: f64,
    pub change_price: f64,
    pub ask_bid: &'static str,
    pub sequential_id: i64,
}

// ---------------------------------------------------------------------------------------------------------------
// the generator

/// Everything the simulated exchange knows, as pure functions of the catalog and a given `now`.
#[derive(Clone, Debug)]
pub struct MarketData {
    pub catalog: Catalog,
    seeds: HashMap<String, u64>,
}

impl MarketData {
    pub fn new(catalog: Catalog) -> Self {
        let seeds = catalog.markets.iter().map(|m| (m.code.clone(), m.seed())).collect();
        Self { catalog, seeds }
    }

    fn seed(&self, spec: &MarketSpec) -> u64 {
        self.seeds.get(&spec.code).copied().unwrap_or_else(|| spec.seed())
    }

    /// The candles `GET /v1/candles/<interval>?market=&to=&count=` answers at `now`: newest first, starts `< to`
    /// (`to` exclusive; no `to` = up to `now`, including the forming candle), at most `count` (callers clamp to 200),
    /// gaps skipped, nothing before the listing date (nor, for seconds, older than 90 days).
    /// `None` when the market is not in the catalog (404 `Code not found`).
    pub fn candles(
        &self,
        market: &str,
        interval: Interval,
        to: Option<DateTime<Utc>>,
        count: usize,
        now: DateTime<Utc>,
        convert_to_krw: bool,
    ) -> Option<Vec<Candle>> {
        let spec = self.catalog.find(market)?;
        let seed = self.seed(spec);
        let now_ms = now.timestamp_millis();
        let listed = midnight(spec.listed);
        let lower = match interval {
            Interval::Seconds => listed.max(Interval::Seconds.floor(now.naive_utc() - SECONDS_RETENTION)),
            Interval::Minutes(_) | Interval::Days => listed,
            _ => interval.floor(listed),
        };
        let excl = to.map_or(now_ms + 1, |t| t.timestamp_millis().min(now_ms + 1));
        let mut out = Vec::new();
        if excl <= naive_ms(lower) {
            return Some(out);
        }
        let mut s = interval.floor(ms_to_naive(excl - 1));
        while s >= lower && out.len() < count {
            if let Some(b) = bar(spec, seed, interval, s, now_ms) {
                out.push(self.dress(spec, seed, interval, s, b, now_ms, convert_to_krw));
            }
            s = interval.prev(s);
        }
        Some(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn dress(
        &self,
        spec: &MarketSpec,
        seed: u64,
        interval: Interval,
        s: NaiveDateTime,
        b: Bar,
        now: i64,
        convert: bool,
    ) -> Candle {
        let mut c = Candle {
            market: spec.code.clone(),
            candle_date_time_utc: fmt_naive(s),
            candle_date_time_kst: fmt_naive(kst(s)),
            opening_price: b.open,
            high_price: b.high,
            low_price: b.low,
            trade_price: b.close,
            timestamp: b.ts,
            candle_acc_trade_price: b.value,
            candle_acc_trade_volume: b.volume,
            unit: None,
            prev_closing_price: None,
            change_price: None,
            change_rate: None,
            converted_trade_price: None,
            first_day_of_period: None,
        };
        match interval {
            Interval::Minutes(u) => c.unit = Some(u),
            Interval::Days => {
                let prev = day_bar(spec, seed, s.date() - Duration::days(1), now).map_or(b.open, |p| p.close);
                c.prev_closing_price = Some(prev);
                c.change_price = Some(round8(b.close - prev));
                c.change_rate = Some(round8((b.close - prev) / prev));
                if convert {
                    c.converted_trade_price = Some(self.converted(spec, s.date(), b.close, now));
                }
            }
            Interval::Weeks | Interval::Months | Interval::Years => {
                c.first_day_of_period = Some(s.date().format("%Y-%m-%d").to_string());
            }
            Interval::Seconds => {}
        }
        c
    }

    /// `converted_trade_price`: the close in KRW through KRW-BTC / KRW-USDT's close of the same day; `null` for
    /// KRW pairs (docs-e: null for non-digital-asset quote markets).
    fn converted(&self, spec: &MarketSpec, day: NaiveDate, close: f64, now: i64) -> serde_json::Value {
        let via = match spec.quote() {
            "BTC" => "KRW-BTC",
            "USDT" => "KRW-USDT",
            _ => return serde_json::Value::Null,
        };
        let Some(q) = self.catalog.find(via) else {
            return serde_json::Value::Null;
        };
        day_bar(q, self.seed(q), day, now).map_or(serde_json::Value::Null, |qb| {
            serde_json::json!(round8(close * qb.close))
        })
    }

    /// The ticker of `spec` at `now` (the UTC day is the reference for open/high/low/acc and the previous close).
    pub fn ticker(&self, spec: &MarketSpec, now: DateTime<Utc>) -> Ticker {
        let seed = self.seed(spec);
        let now_ms = now.timestamp_millis();
        let today = now.date_naive();
        let yesterday = day_bar(spec, seed, today - Duration::days(1), now_ms);
        let todays = day_bar(spec, seed, today, now_ms);
        let prev_close = yesterday.map_or(spec.base_price, |b| b.close);
        let t = todays.unwrap_or(Bar {
            open: prev_close,
            high: prev_close,
            low: prev_close,
            close: prev_close,
            volume: 0.0,
            value: 0.0,
            ts: yesterday.map_or(now_ms, |b| b.ts),
        });
        let signed = round8(t.close - prev_close);
        let rate = round8(signed / prev_close);
        let elapsed = (now_ms - naive_ms(midnight(today))) as f64 / DAY_MS as f64;
        let carry = 1.0 - elapsed;
        let (yv, yp) = yesterday.map_or((0.0, 0.0), |b| (b.volume, b.value));
        let (mut hi, mut hi_d, mut lo, mut lo_d) = (t.high, today, t.low, today);
        if let Some(w) = closed_52_weeks(spec, seed, today, now_ms) {
            if w.0 > hi {
                (hi, hi_d) = (w.0, w.1);
            }
            if w.2 < lo {
                (lo, lo_d) = (w.2, w.3);
            }
        }
        let trade_t = ms_to_naive(t.ts);
        Ticker {
            market: spec.code.clone(),
            trade_date: trade_t.format("%Y%m%d").to_string(),
            trade_time: trade_t.format("%H%M%S").to_string(),
            trade_date_kst: kst(trade_t).format("%Y%m%d").to_string(),
            trade_time_kst: kst(trade_t).format("%H%M%S").to_string(),
            trade_timestamp: t.ts,
            opening_price: t.open,
            high_price: t.high,
            low_price: t.low,
            trade_price: t.close,
            prev_closing_price: prev_close,
            change: if signed > 0.0 {
                "RISE"
            } else if signed < 0.0 {
                "FALL"
            } else {
                "EVEN"
            },
            change_price: signed.abs(),
            change_rate: rate.abs(),
            signed_change_price: signed,
            signed_change_rate: rate,
            trade_volume: round8(volume_rate(spec) * (0.2 + 1.6 * unit(mix(&[seed, 3, t.ts as u64])))),
            acc_trade_price: t.value,
            acc_trade_price_24h: round8(t.value + yp * carry),
            acc_trade_volume: t.volume,
            acc_trade_volume_24h: round8(t.volume + yv * carry),
            highest_52_week_price: hi,
            highest_52_week_date: hi_d.format("%Y-%m-%d").to_string(),
            lowest_52_week_price: lo,
            lowest_52_week_date: lo_d.format("%Y-%m-%d").to_string(),
            timestamp: now_ms,
        }
    }

    /// Supported `level` values of a pair: `"0"` plus, for KRW pairs, the tick times 10^1..10^5.
    pub fn supported_levels(&self, spec: &MarketSpec, now: DateTime<Utc>) -> Vec<String> {
        let mut v = vec!["0".to_string()];
        if spec.quote() == "KRW" {
            let tick = Tick::for_price("KRW", raw_price(spec, self.seed(spec), now.timestamp_millis()));
            v.extend((1..=5).map(|k| tick.scaled(k).decimal()));
        }
        v
    }

    /// The `/v1/orderbook/instruments` item of `spec` at `now`.
    pub fn instrument(&self, spec: &MarketSpec, now: DateTime<Utc>) -> Instrument {
        let p = raw_price(spec, self.seed(spec), now.timestamp_millis());
        Instrument {
            market: spec.code.clone(),
            quote_currency: spec.quote().to_string(),
            tick_size: Tick::for_price(spec.quote(), p).decimal(),
            supported_levels: self.supported_levels(spec, now),
        }
    }

    /// The order book of `spec` at `now` with `count` units (1..=30) grouped on `level` (0 = no grouping; callers
    /// check the level is supported). The book changes on a 100 ms grid; thin markets have a short bid side padded
    /// with zero units.
    pub fn orderbook(
        &self,
        spec: &MarketSpec,
        now: DateTime<Utc>,
        count: usize,
        level: f64,
        level_json: serde_json::Number,
    ) -> Orderbook {
        let seed = self.seed(spec);
        let ts = now.timestamp_millis().div_euclid(100) * 100;
        let mid = raw_price(spec, seed, ts);
        let tick = Tick::for_price(spec.quote(), mid);
        let n_bid = (mid / tick.value()).floor() as i64;
        let base = volume_rate(spec) * 30.0;
        let h = mix(&[seed, 4, ts as u64]);
        let bid_depth = if spec.trade_rate < 0.05 {
            3 + (h % 5) as usize
        } else {
            usize::MAX
        };
        let group = if level > 0.0 {
            (level / tick.value()).round().max(1.0)
        } else {
            1.0
        };
        let size =
            |side: u64, i: usize| round8(base * (0.05 + 2.0 * unit(mix(&[h, side, i as u64]))) * group.min(50.0));
        let mut units = Vec::with_capacity(count);
        for i in 0..count {
            let (ask_price, bid_price) = if level > 0.0 {
                let best_ask = tick.of_units(n_bid + 1);
                let best_bid = tick.of_units(n_bid);
                (
                    ((best_ask / level).ceil() + i as f64) * level,
                    ((best_bid / level).floor() - i as f64) * level,
                )
            } else {
                (tick.of_units(n_bid + 1 + i as i64), tick.of_units(n_bid - i as i64))
            };
            let (bid_price, bid_size) = if i < bid_depth && bid_price > 0.0 {
                (bid_price, size(2, i))
            } else {
                (0.0, 0.0)
            };
            units.push(OrderbookUnit {
                ask_price,
                bid_price,
                ask_size: size(1, i),
                bid_size,
            });
        }
        Orderbook {
            market: spec.code.clone(),
            timestamp: ts,
            total_ask_size: round8(units.iter().map(|u| u.ask_size).sum()),
            total_bid_size: round8(units.iter().map(|u| u.bid_size).sum()),
            orderbook_units: units,
            level: level_json,
        }
    }

    /// Recent trades of `spec` on UTC day `day`, newest first, strictly before `before_ms` (and `now`), with
    /// `sequential_id < cursor` when a cursor is given, at most `count`.
    pub fn trades(
        &self,
        spec: &MarketSpec,
        day: NaiveDate,
        before_ms: i64,
        cursor: Option<i64>,
        count: usize,
        now: DateTime<Utc>,
    ) -> Vec<TradeTick> {
        let seed = self.seed(spec);
        let now_ms = now.timestamp_millis();
        let day_start = naive_ms(midnight(day));
        let lower = day_start.max(listed_ms(spec));
        let mut hi = before_ms.min(now_ms + 1).min(day_start + DAY_MS);
        if let Some(c) = cursor {
            hi = hi.min(c.div_euclid(1000) + 1);
        }
        let prev_close = day_bar(spec, seed, day - Duration::days(1), now_ms)
            .map(|b| b.close)
            .or_else(|| day_bar(spec, seed, day, now_ms).map(|b| b.open))
            .unwrap_or(spec.base_price);
        let mut out = Vec::new();
        if hi <= lower {
            return out;
        }
        let mut sec = (hi - 1).div_euclid(1000);
        while sec * 1000 >= lower - 999 && out.len() < count {
            if let Some(t) = trade_at(spec, seed, sec) {
                if t.ts < hi && t.ts >= lower && cursor.is_none_or(|c| t.sequential_id < c) {
                    let at = ms_to_naive(t.ts);
                    out.push(TradeTick {
                        market: spec.code.clone(),
                        trade_date_utc: at.format("%Y-%m-%d").to_string(),
                        trade_time_utc: at.format("%H:%M:%S").to_string(),
                        timestamp: t.ts,
                        trade_price: t.price,
                        trade_volume: t.volume,
                        prev_closing_price: prev_close,
                        change_price: round8(t.price - prev_close),
                        ask_bid: if t.ask { "ASK" } else { "BID" },
                        sequential_id: t.sequential_id,
                    });
                }
            }
            sec -= 1;
        }
        out
    }
}
