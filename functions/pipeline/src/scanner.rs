//! The scanner: picks KRW markets worth collecting.
//!
//! `/v1/market/all?is_details=true` → KRW pairs → their tickers (`/v1/ticker`, at most
//! [`MAX_MARKETS_PER_TICKER_CALL`] per call) → filters from the event → top `limit` by 24 h traded value. The
//! KRW catalogue is upserted into `markets` and the scan into `scan_results`, both in one transaction.

use crate::client::CoreClient;
use crate::db::{self, Statement};
use crate::error::PipelineError;
use crate::event::Fields;
use crate::upbit::{self, MarketInfo, Ticker, MAX_MARKETS_PER_TICKER_CALL};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Quote currency the scanner works on.
pub const QUOTE_PREFIX: &str = "KRW-";
/// Default minimum 24 h traded value (KRW): 1 billion.
pub const DEFAULT_MIN_TRADE_VALUE_24H: f64 = 1e9;
/// Default number of markets selected.
pub const DEFAULT_LIMIT: u64 = 10;
/// Upper bound of `limit` (Upbit lists roughly 300 KRW pairs).
pub const MAX_LIMIT: u64 = 1000;

/// Scanner event: `{"min_trade_value_24h": 1e9, "exclude_warning": true, "exclude_caution": false, "limit": 10}`,
/// every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanEvent {
    /// Minimum `acc_trade_price_24h` (KRW) of a candidate.
    pub min_trade_value_24h: f64,
    /// Drop markets under an investment warning (`market_event.warning`).
    pub exclude_warning: bool,
    /// Drop markets with any `market_event.caution` flag.
    pub exclude_caution: bool,
    /// How many candidates to select, highest 24 h traded value first.
    pub limit: usize,
}

impl Default for ScanEvent {
    fn default() -> Self {
        Self {
            min_trade_value_24h: DEFAULT_MIN_TRADE_VALUE_24H,
            exclude_warning: true,
            exclude_caution: false,
            limit: DEFAULT_LIMIT as usize,
        }
    }
}

impl ScanEvent {
    const KEYS: &'static [&'static str] = &["min_trade_value_24h", "exclude_warning", "exclude_caution", "limit"];

    /// Parse and validate an event (`null`/`{}` gives the defaults).
    pub fn from_value(v: &Value) -> Result<Self, PipelineError> {
        Self::parse(v, "event")
    }

    pub(crate) fn parse(v: &Value, what: &str) -> Result<Self, PipelineError> {
        let f = Fields::new(v, what)?;
        f.warn_unknown(Self::KEYS);
        let d = Self::default();
        Ok(Self {
            min_trade_value_24h: f.non_negative("min_trade_value_24h")?.unwrap_or(d.min_trade_value_24h),
            exclude_warning: f.bool("exclude_warning")?.unwrap_or(d.exclude_warning),
            exclude_caution: f.bool("exclude_caution")?.unwrap_or(d.exclude_caution),
            limit: f.int_in("limit", 1, MAX_LIMIT)?.map(|n| n as usize).unwrap_or(d.limit),
        })
    }
}

/// Scanner result: `{"scan_id", "candidates", "selected", "krw_markets"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScanResult {
    /// `scan_results.id` of the stored scan.
    pub scan_id: i64,
    /// How many KRW markets passed the filters.
    pub candidates: usize,
    /// The selected markets, highest 24 h traded value first.
    pub selected: Vec<String>,
    /// How many KRW markets Upbit listed.
    pub krw_markets: usize,
}

/// Outcome of the pure filtering step.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Markets that passed every filter, best first, with their 24 h traded value.
    pub candidates: Vec<(String, f64)>,
    /// The first `limit` candidates.
    pub selected: Vec<String>,
}

/// Apply the event's filters to KRW markets and their tickers (pure). Markets without a ticker are skipped.
pub fn select(markets: &[MarketInfo], tickers: &[Ticker], ev: &ScanEvent) -> Selection {
    let value: HashMap<&str, f64> = tickers
        .iter()
        .map(|t| (t.market.as_str(), t.acc_trade_price_24h))
        .collect();
    let mut candidates: Vec<(String, f64)> = markets
        .iter()
        .filter(|m| m.market.starts_with(QUOTE_PREFIX))
        .filter(|m| {
            let event = m.market_event.clone().unwrap_or_default();
            let excluded = (ev.exclude_warning && event.warning) || (ev.exclude_caution && event.any_caution());
            !excluded
        })
        .filter_map(|m| value.get(m.market.as_str()).map(|v| (m.market.clone(), *v)))
        .filter(|(_, v)| *v >= ev.min_trade_value_24h)
        .collect();
    // Highest value first; ties by code so a scan is deterministic.
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let selected = candidates.iter().take(ev.limit).map(|(m, _)| m.clone()).collect();
    Selection { candidates, selected }
}

/// Tickers for `markets`, in chunks. One unknown or just-delisted code makes Upbit fail a whole multi-market
/// call with 404, so a 404 chunk is split in halves until the bad codes are isolated and skipped.
pub async fn fetch_tickers(client: &CoreClient, markets: &[String]) -> Result<Vec<Ticker>, PipelineError> {
    let mut queue: Vec<&[String]> = markets.chunks(MAX_MARKETS_PER_TICKER_CALL).rev().collect();
    let mut out = Vec::with_capacity(markets.len());
    while let Some(chunk) = queue.pop() {
        match upbit::tickers(client, chunk).await {
            Ok(t) => out.extend(t),
            Err(PipelineError::Upbit { status: 404, .. }) if chunk.len() > 1 => {
                let (a, b) = chunk.split_at(chunk.len() / 2);
                queue.push(b);
                queue.push(a);
            }
            Err(PipelineError::Upbit { status: 404, .. }) => {
                tracing::warn!(market = %chunk[0], "no ticker (Code not found): skipped");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The statement upserting the KRW catalogue into `markets` (one row per market, one statement).
pub fn upsert_markets_statement(markets: &[&MarketInfo]) -> Statement {
    let mut codes = Vec::with_capacity(markets.len());
    let mut korean = Vec::with_capacity(markets.len());
    let mut english = Vec::with_capacity(markets.len());
    let mut warning = Vec::with_capacity(markets.len());
    let mut caution = Vec::with_capacity(markets.len());
    for m in markets {
        let event = m.market_event.clone().unwrap_or_default();
        codes.push(json!(m.market));
        korean.push(json!(m.korean_name));
        english.push(json!(m.english_name));
        warning.push(json!(event.warning));
        // Sent as JSON text and cast in SQL: the plainest parameter type for the extension to bind.
        caution.push(json!(
            serde_json::to_string(&event.caution).unwrap_or_else(|_| "{}".into())
        ));
    }
    Statement::new(
        "INSERT INTO markets (market, korean_name, english_name, warning, caution, updated_at) \
         SELECT m, k, e, w, c::jsonb, now() \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::text[]) AS t(m, k, e, w, c) \
         ON CONFLICT (market) DO UPDATE SET korean_name = EXCLUDED.korean_name, \
         english_name = EXCLUDED.english_name, warning = EXCLUDED.warning, caution = EXCLUDED.caution, \
         updated_at = EXCLUDED.updated_at",
        vec![
            Value::Array(codes),
            Value::Array(korean),
            Value::Array(english),
            Value::Array(warning),
            Value::Array(caution),
        ],
    )
}

/// A new idempotency key for one scan: 128 bits from the process's random hash keys (std's `RandomState`, seeded
/// from the OS) and the clock, so no two scans share one, while a resend of the same statement carries the same.
pub fn new_scan_key() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    format!("{:016x}{:016x}", h.finish(), nanos as u64)
}

/// The statement storing a scan under its idempotency `key` and returning its id. Idempotent: sent again with the
/// same key it stores nothing new and returns the first row's id (`DO UPDATE` of the key to itself, not `DO
/// NOTHING`, so the row comes back even when the first insert committed after this statement's snapshot).
pub fn insert_scan_statement(ev: &ScanEvent, selection: &Selection, key: &str) -> Statement {
    Statement::new(
        "INSERT INTO scan_results (idempotency_key, scanned_at, params, selected, candidates) \
         VALUES ($4::text, now(), $1::text::jsonb, $2::text[], $3::int4) \
         ON CONFLICT (idempotency_key) DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key RETURNING id",
        vec![
            json!(serde_json::to_string(ev).unwrap_or_else(|_| "{}".into())),
            json!(selection.selected),
            json!(selection.candidates.len()),
            json!(key),
        ],
    )
}

/// Run a scan: fetch, filter, store, return the selection.
pub async fn run_scanner(client: &CoreClient, event: ScanEvent) -> Result<ScanResult, PipelineError> {
    let all = upbit::market_all(client).await?;
    let krw: Vec<&MarketInfo> = all.iter().filter(|m| m.market.starts_with(QUOTE_PREFIX)).collect();
    let codes: Vec<String> = krw.iter().map(|m| m.market.clone()).collect();
    let tickers = fetch_tickers(client, &codes).await?;
    let selection = select(&all, &tickers, &event);
    tracing::info!(
        krw = krw.len(),
        candidates = selection.candidates.len(),
        selected = selection.selected.len(),
        "scan done"
    );

    // Both statements are idempotent (an upsert; an insert keyed by this scan's key), so the transaction is resent
    // once if its outcome is unknown.
    let results = db::transaction_idempotent(
        client,
        &[
            upsert_markets_statement(&krw),
            insert_scan_statement(&event, &selection, &new_scan_key()),
        ],
        None,
    )
    .await?;
    let scan = &results[1];
    let scan_id = scan
        .rows
        .first()
        .and_then(|r| r.first())
        .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
        .ok_or_else(|| PipelineError::BadReply {
            source_name: "core",
            message: "scan insert returned no id".into(),
        })?;
    Ok(ScanResult {
        scan_id,
        candidates: selection.candidates.len(),
        selected: selection.selected,
        krw_markets: krw.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upbit::MarketEvent;
    use std::collections::BTreeMap;

    fn market(code: &str, warning: bool, caution: bool) -> MarketInfo {
        let mut c = BTreeMap::new();
        c.insert("PRICE_FLUCTUATIONS".to_string(), json!(caution));
        MarketInfo {
            market: code.into(),
            korean_name: String::new(),
            english_name: String::new(),
            market_event: Some(MarketEvent { warning, caution: c }),
        }
    }

    fn ticker(code: &str, value: f64) -> Ticker {
        Ticker {
            market: code.into(),
            trade_price: 1.0,
            acc_trade_price_24h: value,
            acc_trade_volume_24h: None,
            change: None,
            signed_change_rate: None,
            timestamp: None,
        }
    }

    #[test]
    fn event_defaults_and_validation() {
        assert_eq!(
            ScanEvent::from_value(&json!({})).expect("defaults"),
            ScanEvent::default()
        );
        assert_eq!(ScanEvent::from_value(&Value::Null).expect("null"), ScanEvent::default());
        let e = ScanEvent::from_value(&json!({"min_trade_value_24h": 5e8, "exclude_caution": true, "limit": 3}))
            .expect("valid");
        assert_eq!(
            (e.min_trade_value_24h, e.exclude_caution, e.exclude_warning, e.limit),
            (5e8, true, true, 3)
        );
        for bad in [
            json!({"limit": 0}),
            json!({"limit": "3"}),
            json!({"min_trade_value_24h": -1}),
            json!({"exclude_warning": 1}),
            json!("x"),
        ] {
            let err = ScanEvent::from_value(&bad).expect_err("invalid");
            assert_eq!(err.error_type(), "InvalidEvent", "{bad}");
        }
    }

    #[test]
    fn filters_sort_and_limit() {
        let markets = vec![
            market("KRW-BTC", false, false),
            market("KRW-ETH", false, false),
            market("KRW-WARN", true, false),
            market("KRW-CAUT", false, true),
            market("KRW-LOW", false, false),
            market("KRW-NOTICKER", false, false),
            market("BTC-ETH", false, false),
        ];
        let tickers = vec![
            ticker("KRW-BTC", 5e11),
            ticker("KRW-ETH", 2e11),
            ticker("KRW-WARN", 9e11),
            ticker("KRW-CAUT", 3e11),
            ticker("KRW-LOW", 1e8),
            ticker("BTC-ETH", 1e12),
        ];
        let s = select(&markets, &tickers, &ScanEvent::default());
        assert_eq!(s.selected, vec!["KRW-BTC", "KRW-CAUT", "KRW-ETH"]);
        assert_eq!(s.candidates.len(), 3);

        let ev = ScanEvent {
            exclude_caution: true,
            exclude_warning: false,
            limit: 2,
            ..ScanEvent::default()
        };
        let s = select(&markets, &tickers, &ev);
        assert_eq!(s.selected, vec!["KRW-WARN", "KRW-BTC"]);
        assert_eq!(s.candidates.len(), 3);

        let ev = ScanEvent {
            min_trade_value_24h: 0.0,
            ..ScanEvent::default()
        };
        assert_eq!(select(&markets, &tickers, &ev).candidates.len(), 4);
    }

    #[test]
    fn statements_bind_arrays() {
        let m = [market("KRW-BTC", false, true)];
        let refs: Vec<&MarketInfo> = m.iter().collect();
        let st = upsert_markets_statement(&refs);
        assert_eq!(st.params.len(), 5);
        assert_eq!(st.params[0], json!(["KRW-BTC"]));
        assert_eq!(st.params[4], json!([r#"{"PRICE_FLUCTUATIONS":true}"#]));
        let sel = Selection {
            candidates: vec![("KRW-BTC".into(), 1.0)],
            selected: vec!["KRW-BTC".into()],
        };
        let st = insert_scan_statement(&ScanEvent::default(), &sel, "k1");
        assert_eq!(st.params[1], json!(["KRW-BTC"]));
        assert_eq!(st.params[3], json!("k1"));
        assert!(st.sql.contains("ON CONFLICT (idempotency_key)"));
        assert_ne!(new_scan_key(), new_scan_key());
        assert_eq!(st.params[2], json!(1));
        let params: Value = serde_json::from_str(st.params[0].as_str().expect("text")).expect("json");
        assert_eq!(params["limit"], json!(10));
    }
}
