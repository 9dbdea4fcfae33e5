//! The quotation endpoints of the simulated Upbit: routing, parameter checks with Upbit's exact error bodies, and
//! JSON rendering of what `model` generates (reference §2 and §4).

use chrono::{DateTime, Duration, NaiveTime, Utc};
use http::Method;
use serde::Serialize;

use super::model::{self, Candle, Interval, MarketData, MarketEvent, MarketItem};

/// Largest `count` of a candle call (larger values are clamped silently, §2.3).
pub const MAX_CANDLES: usize = 200;
/// Largest `count` of a trades call.
pub const MAX_TRADES: usize = 500;
/// Order book depth bounds and default.
pub const MAX_ORDERBOOK_UNITS: i64 = 30;

pub const MSG_MISSING: &str = "Missing request parameter error. Check the required parameters!";
pub const MSG_TYPE: &str = "Type mismatch error. Check the parameters type!";
pub const MSG_INVALID: &str = "Invalid parameter. Check the given value!";
pub const MSG_UNIT: &str = "specified unit is not valid.";
pub const MSG_CODE: &str = "Code not found";

/// A routed quotation endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    MarketAll,
    /// `Err(message)` for a minute unit Upbit rejects.
    Candles(Result<Interval, &'static str>),
    Ticker,
    TickerAll,
    Orderbook,
    Instruments,
    Trades,
}

impl Route {
    /// Matches a request; `None` is Kong's "no Route matched" 404.
    pub fn of(method: &Method, path: &str) -> Option<Self> {
        if method != Method::GET {
            return None;
        }
        Some(match path {
            "/v1/market/all" => Self::MarketAll,
            "/v1/ticker" => Self::Ticker,
            "/v1/ticker/all" => Self::TickerAll,
            "/v1/orderbook" => Self::Orderbook,
            "/v1/orderbook/instruments" => Self::Instruments,
            "/v1/trades/ticks" => Self::Trades,
            _ => {
                let rest = path.strip_prefix("/v1/candles/")?;
                match rest {
                    "seconds" => Self::Candles(Ok(Interval::Seconds)),
                    "days" => Self::Candles(Ok(Interval::Days)),
                    "weeks" => Self::Candles(Ok(Interval::Weeks)),
                    "months" => Self::Candles(Ok(Interval::Months)),
                    "years" => Self::Candles(Ok(Interval::Years)),
                    _ => {
                        let unit = rest
                            .strip_prefix("minutes/")
                            .filter(|u| !u.is_empty() && !u.contains('/'))?;
                        Self::Candles(match unit.parse::<u32>() {
                            Ok(u) if Interval::MINUTE_UNITS.contains(&u) => Ok(Interval::Minutes(u)),
                            Ok(_) => Err(MSG_UNIT),
                            Err(_) if unit.bytes().all(|b| b.is_ascii_digit()) => Err(MSG_UNIT),
                            Err(_) => Err(MSG_TYPE),
                        })
                    }
                }
            }
        })
    }

    /// The live `Remaining-Req` group name (§3.2: `candles`, not the docs' `candle`).
    pub fn group(&self) -> &'static str {
        match self {
            Self::MarketAll => "market",
            Self::Candles(_) => "candles",
            Self::Ticker | Self::TickerAll => "ticker",
            Self::Orderbook | Self::Instruments => "orderbook",
            Self::Trades => "trade",
        }
    }
}

/// A decoded query string (`+` is a space, `%XX` decoded; repeated keys kept).
#[derive(Clone, Debug, Default)]
pub struct Query(pub Vec<(String, String)>);

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub fn parse(raw: &str) -> Self {
        Self(
            raw.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| match kv.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(kv), String::new()),
                })
                .collect(),
        )
    }

    /// First value of the first of `names` present (spelling aliases, e.g. `is_details` / `isDetails`).
    pub fn get(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|n| self.0.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str()))
    }

    /// Comma-separated values over every occurrence of `name` (`markets=A,B` and `markets=A&markets=B`).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(',').map(str::to_string))
            .collect()
    }

    /// Every market code the request names (for fault filters).
    pub fn markets(&self) -> Vec<String> {
        let mut v = self.list("markets");
        v.extend(self.0.iter().filter(|(k, _)| k == "market").map(|(_, v)| v.clone()));
        v
    }
}

/// A quotation error: HTTP status and Upbit's `{"error":{"name":<status>,"message":...}}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: &'static str,
}

impl ApiError {
    fn bad(message: &'static str) -> Self {
        Self { status: 400, message }
    }
    fn not_found() -> Self {
        Self {
            status: 404,
            message: MSG_CODE,
        }
    }

    /// The JSON body, with the integer `name` quotation errors use (§4).
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Inner<'a> {
            name: u16,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        serde_json::to_vec(&Outer {
            error: Inner {
                name: self.status,
                message: self.message,
            },
        })
        .unwrap_or_default()
    }
}

/// A successful reply: the JSON body, plus the candles it holds (for the served log).
pub struct Reply {
    pub body: Vec<u8>,
    pub candles: Option<(Interval, Vec<Candle>)>,
}

fn json<T: Serialize>(v: &T) -> Reply {
    Reply {
        body: serde_json::to_vec(v).unwrap_or_default(),
        candles: None,
    }
}

/// A required parameter: missing or empty is 400 "Missing request parameter".
fn required<'a>(q: &'a Query, names: &[&str]) -> Result<&'a str, ApiError> {
    q.get(names).filter(|v| !v.is_empty()).ok_or(ApiError::bad(MSG_MISSING))
}

fn int_param(q: &Query, names: &[&str]) -> Result<Option<i64>, ApiError> {
    q.get(names)
        .map(|v| v.trim().parse::<i64>().map_err(|_| ApiError::bad(MSG_TYPE)))
        .transpose()
}

fn bool_param(q: &Query, names: &[&str]) -> Result<bool, ApiError> {
    match q.get(names) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => Ok(false),
        Some(_) => Err(ApiError::bad(MSG_TYPE)),
    }
}

/// Answers a routed request at `now`.
pub fn dispatch(data: &MarketData, route: Route, q: &Query, now: DateTime<Utc>) -> Result<Reply, ApiError> {
    match route {
        Route::MarketAll => {
            let details = bool_param(q, &["is_details", "isDetails"])?;
            let items: Vec<MarketItem> = data
                .catalog
                .markets
                .iter()
                .map(|m| MarketItem {
                    market: m.code.clone(),
                    korean_name: m.korean_name.clone(),
                    english_name: m.english_name.clone(),
                    market_event: details.then_some(MarketEvent {
                        warning: m.warning,
                        caution: m.caution,
                    }),
                })
                .collect();
            Ok(json(&items))
        }
        Route::Candles(interval) => {
            let interval = interval.map_err(ApiError::bad)?;
            let market = required(q, &["market"])?;
            let count = match int_param(q, &["count"])? {
                None => 1,
                Some(c) if c < 1 => return Err(ApiError::bad(MSG_INVALID)),
                Some(c) => (c as usize).min(MAX_CANDLES),
            };
            let to = match q.get(&["to"]).filter(|t| !t.is_empty()) {
                None => None,
                Some(t) => Some(model::parse_to(t).ok_or(ApiError::bad(MSG_INVALID))?),
            };
            let convert = match (interval, q.get(&["converting_price_unit", "convertingPriceUnit"])) {
                (Interval::Days, Some(u)) if u.eq_ignore_ascii_case("KRW") => true,
                (Interval::Days, Some(u)) if !u.is_empty() => return Err(ApiError::bad(MSG_INVALID)),
                _ => false,
            };
            let candles = data
                .candles(market, interval, to, count, now, convert)
                .ok_or(ApiError::not_found())?;
            let body = serde_json::to_vec(&candles).unwrap_or_default();
            Ok(Reply {
                body,
                candles: Some((interval, candles)),
            })
        }
        Route::Ticker => {
            let specs = markets_param(data, q)?;
            Ok(json(&specs.iter().map(|m| data.ticker(m, now)).collect::<Vec<_>>()))
        }
        Route::TickerAll => {
            required(q, &["quote_currencies", "quoteCurrencies"])?;
            let name = if q.get(&["quote_currencies"]).is_some() {
                "quote_currencies"
            } else {
                "quoteCurrencies"
            };
            let quotes = q.list(name);
            let known: Vec<&str> = data.catalog.markets.iter().map(|m| m.quote()).collect();
            if quotes.iter().any(|c| !known.iter().any(|k| k.eq_ignore_ascii_case(c))) {
                return Err(ApiError::not_found());
            }
            let mut out = Vec::new();
            for quote in &quotes {
                for m in data
                    .catalog
                    .markets
                    .iter()
                    .filter(|m| m.quote().eq_ignore_ascii_case(quote))
                {
                    out.push(data.ticker(m, now));
                }
            }
            Ok(json(&out))
        }
        Route::Orderbook => {
            let specs = markets_param(data, q)?;
            let count = int_param(q, &["count"])?
                .unwrap_or(MAX_ORDERBOOK_UNITS)
                .clamp(1, MAX_ORDERBOOK_UNITS) as usize;
            let (level, level_json) = match q.get(&["level"]).filter(|l| !l.is_empty()) {
                None => (0.0, serde_json::Number::from(0)),
                Some(l) => {
                    let v: f64 = l.trim().parse().map_err(|_| ApiError::bad(MSG_TYPE))?;
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(ApiError::bad(MSG_INVALID));
                    }
                    let n = if v.fract() == 0.0 && v < 9e15 {
                        serde_json::Number::from(v as i64)
                    } else {
                        serde_json::Number::from_f64(v).unwrap_or_else(|| serde_json::Number::from(0))
                    };
                    (v, n)
                }
            };
            let mut out = Vec::new();
            for m in specs {
                if level > 0.0 {
                    // Grouping exists on KRW pairs only: others are left out (BTC-ETH level=100 gave [], §2.5).
                    if m.quote() != "KRW" {
                        continue;
                    }
                    let ok = data
                        .supported_levels(m, now)
                        .iter()
                        .any(|s| s.parse::<f64>().is_ok_and(|x| x == level));
                    if !ok {
                        return Err(ApiError::bad(MSG_INVALID));
                    }
                }
                out.push(data.orderbook(m, now, count, level, level_json.clone()));
            }
            Ok(json(&out))
        }
        Route::Instruments => {
            let specs = markets_param(data, q)?;
            Ok(json(&specs.iter().map(|m| data.instrument(m, now)).collect::<Vec<_>>()))
        }
        Route::Trades => {
            let market = required(q, &["market"])?;
            let spec = data.catalog.find(market).ok_or(ApiError::not_found())?;
            let count = match int_param(q, &["count"])? {
                None => 1,
                Some(c) if c < 1 => return Err(ApiError::bad(MSG_INVALID)),
                Some(c) => (c as usize).min(MAX_TRADES),
            };
            let days_ago = match int_param(q, &["days_ago", "daysAgo"])? {
                None => 0,
                Some(d) if (1..=7).contains(&d) => d,
                Some(_) => return Err(ApiError::bad(MSG_INVALID)),
            };
            let cursor = match q.get(&["cursor"]).filter(|c| !c.is_empty()) {
                None => None,
                Some(c) => Some(c.trim().parse::<i64>().map_err(|_| ApiError::bad(MSG_TYPE))?),
            };
            let day = now.date_naive() - Duration::days(days_ago);
            let before = match q.get(&["to"]).filter(|t| !t.is_empty()) {
                None => i64::MAX,
                Some(t) => {
                    let time = NaiveTime::parse_from_str(t, "%H%M%S")
                        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M:%S"))
                        .map_err(|_| ApiError::bad(MSG_INVALID))?;
                    model::naive_ms(day.and_time(time))
                }
            };
            Ok(json(&data.trades(spec, day, before, cursor, count, now)))
        }
    }
}

/// The `markets` list of ticker / orderbook / instruments: missing is 400; one unknown code fails the whole call
/// with 404 (§2.1).
fn markets_param<'a>(data: &'a MarketData, q: &Query) -> Result<Vec<&'a super::catalog::MarketSpec>, ApiError> {
    let codes = q.list("markets");
    if codes.iter().all(|c| c.is_empty()) {
        return Err(ApiError::bad(MSG_MISSING));
    }
    codes
        .iter()
        .map(|c| data.catalog.find(c).ok_or(ApiError::not_found()))
        .collect()
}
