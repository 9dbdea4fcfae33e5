//! Upbit quotation types with Upbit's exact field names (shared/reference/upbit-api.md §2), and the few
//! quotation calls the pipeline makes through the extension's mirror of Upbit's paths.
//!
//! Only the fields Makenaide uses are required; the rest are optional so that Upbit adding or dropping an
//! extra field never breaks a scan.

use crate::client::CoreClient;
use crate::error::PipelineError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Minute units Upbit serves.
pub const MINUTE_UNITS: [u32; 8] = [1, 3, 5, 10, 15, 30, 60, 240];

/// Candle interval; its string form is both the `ohlcv.interval` value and the Upbit path after `/v1/candles/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// `days`
    Days,
    /// `weeks`
    Weeks,
    /// `months`
    Months,
    /// `minutes/N`, N in [`MINUTE_UNITS`].
    Minutes(u32),
}

impl Interval {
    /// Parse `days`, `weeks`, `months` or `minutes/1|3|5|10|15|30|60|240`.
    pub fn parse(s: &str) -> Result<Self, PipelineError> {
        let iv = match s {
            "days" => Some(Self::Days),
            "weeks" => Some(Self::Weeks),
            "months" => Some(Self::Months),
            _ => s
                .strip_prefix("minutes/")
                .and_then(|u| u.parse::<u32>().ok())
                .filter(|u| MINUTE_UNITS.contains(u))
                .map(Self::Minutes),
        };
        iv.ok_or_else(|| {
            PipelineError::invalid(format!(
                "event.interval {s:?} is not one of days, weeks, months, minutes/1, minutes/3, minutes/5, \
                 minutes/10, minutes/15, minutes/30, minutes/60, minutes/240"
            ))
        })
    }

    /// `days`, `minutes/5`, ...
    pub fn as_string(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Days => f.write_str("days"),
            Self::Weeks => f.write_str("weeks"),
            Self::Months => f.write_str("months"),
            Self::Minutes(u) => write!(f, "minutes/{u}"),
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_string())
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Interval::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Largest `count` Upbit serves per candle request (larger values are silently clamped).
pub const MAX_CANDLES_PER_REQUEST: u32 = 200;
/// Markets per `/v1/ticker` call: a comma list this long stays far below URL length limits.
pub const MAX_MARKETS_PER_TICKER_CALL: usize = 100;

/// `market_event` of `/v1/market/all?is_details=true`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MarketEvent {
    /// 유의 종목 (investment warning).
    #[serde(default)]
    pub warning: bool,
    /// 주의 flags, e.g. `PRICE_FLUCTUATIONS: true`. Kept as a map so new flags are stored as they come.
    #[serde(default)]
    pub caution: BTreeMap<String, serde_json::Value>,
}

impl MarketEvent {
    /// True when any caution flag is set.
    pub fn any_caution(&self) -> bool {
        self.caution.values().any(|v| v.as_bool() == Some(true))
    }
}

/// One item of `/v1/market/all`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarketInfo {
    /// Pair code, e.g. `KRW-BTC`.
    pub market: String,
    /// Korean name.
    #[serde(default)]
    pub korean_name: String,
    /// English name.
    #[serde(default)]
    pub english_name: String,
    /// Only present with `is_details=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub market_event: Option<MarketEvent>,
}

/// One item of `/v1/ticker`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticker {
    /// Pair code.
    pub market: String,
    /// Last price.
    pub trade_price: f64,
    /// Traded value (quote currency) over the rolling last 24 h.
    pub acc_trade_price_24h: f64,
    /// Traded volume (base currency) over the rolling last 24 h.
    #[serde(default)]
    pub acc_trade_volume_24h: Option<f64>,
    /// `RISE` | `EVEN` | `FALL`.
    #[serde(default)]
    pub change: Option<String>,
    /// Signed change rate against the previous close.
    #[serde(default)]
    pub signed_change_rate: Option<f64>,
    /// Snapshot time (unix ms).
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// One candle of `/v1/candles/{days|weeks|months|minutes/N}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candle {
    /// Pair code.
    pub market: String,
    /// Start of the candle, UTC, `yyyy-MM-ddTHH:mm:ss` with no zone suffix.
    pub candle_date_time_utc: String,
    /// Same instant in KST, no suffix.
    pub candle_date_time_kst: String,
    /// Open.
    pub opening_price: f64,
    /// High.
    pub high_price: f64,
    /// Low.
    pub low_price: f64,
    /// Close (Upbit calls it trade_price).
    pub trade_price: f64,
    /// Time of the candle's last tick (unix ms).
    pub timestamp: i64,
    /// Quote-currency turnover.
    pub candle_acc_trade_price: f64,
    /// Base-currency volume.
    pub candle_acc_trade_volume: f64,
    /// Minutes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u32>,
    /// Weeks/months only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_day_of_period: Option<String>,
}

/// `GET /v1/market/all?is_details=true`.
pub async fn market_all(client: &CoreClient) -> Result<Vec<MarketInfo>, PipelineError> {
    client.upbit_get("/v1/market/all?is_details=true").await
}

/// `GET /v1/ticker?markets=A,B,...` for one chunk (at most [`MAX_MARKETS_PER_TICKER_CALL`] codes).
pub async fn tickers(client: &CoreClient, markets: &[String]) -> Result<Vec<Ticker>, PipelineError> {
    // Market codes are validated to [A-Z0-9-] (or come from Upbit itself), so the comma list needs no escaping
    // beyond what Upbit documents (commas are sent as is, as the official clients do).
    client
        .upbit_get(&format!("/v1/ticker?markets={}", markets.join(",")))
        .await
}

/// `GET /v1/candles/{interval}?market=..&count=..[&to=..]`; `to` is exclusive, a naive UTC timestamp.
pub async fn candles(
    client: &CoreClient,
    interval: Interval,
    market: &str,
    count: u32,
    to: Option<&str>,
) -> Result<Vec<Candle>, PipelineError> {
    client.upbit_get(&candles_path(interval, market, count, to)).await
}

/// The request path for one page of candles (pure, for tests).
pub fn candles_path(interval: Interval, market: &str, count: u32, to: Option<&str>) -> String {
    let mut p = format!("/v1/candles/{interval}?market={market}&count={count}");
    if let Some(to) = to {
        // Upbit's candle_date_time_utc has no zone suffix; say UTC explicitly ("Z" needs no URL escaping, a
        // "+09:00" offset or a space would).
        p.push_str("&to=");
        p.push_str(to);
        if !has_zone(to) {
            p.push('Z');
        }
    }
    p
}

fn has_zone(ts: &str) -> bool {
    ts.ends_with('Z')
        || ts
            .get(19..)
            .is_some_and(|rest| rest.contains('+') || rest.contains('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upbit_shapes() {
        let m: Vec<MarketInfo> = serde_json::from_str(
            r#"[{"market":"KRW-BTC","korean_name":"비트코인","english_name":"Bitcoin",
                "market_event":{"warning":false,"caution":{"PRICE_FLUCTUATIONS":false,"TRADING_VOLUME_SOARING":true,
                "DEPOSIT_AMOUNT_SOARING":false,"GLOBAL_PRICE_DIFFERENCES":false,"CONCENTRATION_OF_SMALL_ACCOUNTS":false}}}]"#,
        )
        .expect("market/all");
        assert!(m[0].market_event.as_ref().expect("details").any_caution());

        let c: Vec<Candle> = serde_json::from_str(
            r#"[{"market":"KRW-BTC","candle_date_time_utc":"2018-04-18T00:00:00","candle_date_time_kst":"2018-04-18T09:00:00",
                "opening_price":8450000,"high_price":8679000.0,"low_price":8445000.00000000,"trade_price":8626000,
                "timestamp":1524046650532,"candle_acc_trade_price":107184005903.68721,"candle_acc_trade_volume":12505.93101659,
                "prev_closing_price":8450000,"change_price":176000,"change_rate":0.0208284024}]"#,
        )
        .expect("candles");
        assert_eq!(c[0].low_price, 8445000.0);

        let t: Vec<Ticker> = serde_json::from_str(
            r#"[{"market":"KRW-BTC","trade_date":"20180418","trade_price":8616000.0,"acc_trade_price_24h":117827865468.2,
                "acc_trade_volume_24h":13780.1,"change":"RISE","signed_change_rate":0.01,"timestamp":1524047026072}]"#,
        )
        .expect("ticker");
        assert_eq!(t[0].acc_trade_price_24h, 117827865468.2);
    }

    #[test]
    fn candle_path_marks_to_as_utc() {
        assert_eq!(
            candles_path(Interval::Days, "KRW-BTC", 3, None),
            "/v1/candles/days?market=KRW-BTC&count=3"
        );
        assert_eq!(
            candles_path(Interval::Minutes(5), "KRW-BTC", 200, Some("2024-01-01T00:00:00")),
            "/v1/candles/minutes/5?market=KRW-BTC&count=200&to=2024-01-01T00:00:00Z"
        );
        assert!(candles_path(Interval::Days, "KRW-BTC", 1, Some("2024-01-01T00:00:00Z")).ends_with("00:00:00Z"));
    }
}
