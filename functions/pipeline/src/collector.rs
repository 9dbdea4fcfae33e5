//! The data collector: fetches candles for markets and upserts them into `ohlcv`.
//!
//! - `count` above 200 pages backwards: the next page's `to` is the oldest `candle_date_time_utc` of the
//!   previous one (Upbit's `to` is exclusive and pages are newest-first); an empty page ends the history.
//! - Markets are fetched concurrently ([`CONCURRENCY`] in flight); pacing is the extension's rate governor's
//!   job, not ours.
//! - One failing market (e.g. Upbit 404 `Code not found`) is reported under `failed` and does not fail the
//!   others; failures of the extension or the database fail the invocation.
//! - Rows are upserted in bulk, one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE` per
//!   [`ROWS_PER_STATEMENT`] rows, flushed as markets complete so memory stays bounded. PostgreSQL itself counts
//!   what was stored per market (`RETURNING` + `GROUP BY`), so the result says exactly what is in the table.

use crate::client::CoreClient;
use crate::db::{self, Statement};
use crate::error::PipelineError;
use crate::event::{is_market_code, Fields};
use crate::upbit::{self, Candle, MAX_CANDLES_PER_REQUEST};
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};

/// Default number of candles per market.
pub const DEFAULT_COUNT: u32 = 3;
/// Upper bound of `count` per market (50 pages).
pub const MAX_COUNT: u32 = 10_000;
/// Upper bound of the number of markets in one event.
pub const MAX_MARKETS: usize = 500;
/// Markets fetched at the same time.
pub const CONCURRENCY: usize = 8;
/// Rows per upsert statement (≈ 200 KB of JSON). 5,000-row statements were no faster and took the extension to a
/// 20 MiB peak while it held the decoded parameters; 1,000 keeps it under 10 MiB (docs/benchmarks.md, figure 6).
pub const ROWS_PER_STATEMENT: usize = 1000;
pub use crate::upbit::{Interval, MINUTE_UNITS};

/// Collector event: `{"markets": ["KRW-BTC", ...], "interval": "days", "count": 3}`, every field optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectEvent {
    /// Markets to collect; `None` = the latest scan's selection.
    pub markets: Option<Vec<String>>,
    /// Candle interval (default `days`).
    pub interval: Interval,
    /// Candles per market (default 3).
    pub count: u32,
}

impl Default for CollectEvent {
    fn default() -> Self {
        Self {
            markets: None,
            interval: Interval::Days,
            count: DEFAULT_COUNT,
        }
    }
}

impl CollectEvent {
    const KEYS: &'static [&'static str] = &["markets", "interval", "count"];

    /// Parse and validate an event (`null`/`{}` gives the defaults).
    pub fn from_value(v: &Value) -> Result<Self, PipelineError> {
        Self::parse(v, "event")
    }

    pub(crate) fn parse(v: &Value, what: &str) -> Result<Self, PipelineError> {
        let f = Fields::new(v, what)?;
        f.warn_unknown(Self::KEYS);
        let interval = match f.str("interval")? {
            Some(s) => Interval::parse(s)?,
            None => Interval::Days,
        };
        let count = f
            .int_in("count", 1, u64::from(MAX_COUNT))?
            .map(|n| n as u32)
            .unwrap_or(DEFAULT_COUNT);
        let markets = f.str_list("markets")?.map(|list| validate_markets(&list)).transpose()?;
        Ok(Self {
            markets,
            interval,
            count,
        })
    }
}

/// Check codes and drop duplicates (keeping the first occurrence's order).
pub fn validate_markets(list: &[&str]) -> Result<Vec<String>, PipelineError> {
    if list.len() > MAX_MARKETS {
        return Err(PipelineError::invalid(format!(
            "event.markets has {} entries; at most {MAX_MARKETS}",
            list.len()
        )));
    }
    let bad: Vec<&str> = list.iter().copied().filter(|m| !is_market_code(m)).collect();
    if !bad.is_empty() {
        return Err(PipelineError::invalid(format!(
            "event.markets has invalid market codes {bad:?} (expected upper-case codes like \"KRW-BTC\")"
        )));
    }
    let mut seen = HashSet::new();
    Ok(list
        .iter()
        .filter(|m| seen.insert(**m))
        .map(|m| m.to_string())
        .collect())
}

/// Why one market was not collected: `{"status": 404, "message": "Code not found"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedMarket {
    /// HTTP status (Upbit's, or the extension's for `upstream_*`; 0 without a reply).
    pub status: u16,
    /// Upbit's message, or the extension's code and message.
    pub message: String,
}

/// Collector result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectResult {
    /// Interval collected.
    pub interval: String,
    /// Candles requested per market.
    pub count: u32,
    /// Rows upserted per market, as counted by PostgreSQL (0 for a market Upbit returned no candles for).
    pub stored: BTreeMap<String, u64>,
    /// Sum of `stored`.
    pub rows_stored: u64,
    /// Markets that could not be collected.
    pub failed: BTreeMap<String, FailedMarket>,
    /// `scan_results.id` whose selection was used, when the event named no markets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_id: Option<i64>,
}

/// Pagination state for one market (pure; see the module docs for the rule).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pager {
    remaining: u32,
    to: Option<String>,
    done: bool,
}

impl Pager {
    /// Start at the newest candle, wanting `count` candles.
    pub fn new(count: u32) -> Self {
        Self {
            remaining: count,
            to: None,
            done: count == 0,
        }
    }

    /// The next request, `(count, to)`, or `None` when finished.
    pub fn next_request(&self) -> Option<(u32, Option<&str>)> {
        (!self.done).then(|| (self.remaining.min(MAX_CANDLES_PER_REQUEST), self.to.as_deref()))
    }

    /// Record a page; returns how many of its candles (from the start, i.e. the newest) to keep.
    pub fn accept(&mut self, page: &[Candle]) -> usize {
        if page.is_empty() {
            self.done = true;
            return 0;
        }
        let keep = page.len().min(self.remaining as usize);
        self.remaining -= keep as u32;
        let oldest = page[..keep]
            .iter()
            .map(|c| c.candle_date_time_utc.as_str())
            .min()
            .unwrap_or_default();
        // Guard against a server that ignores `to`: without progress we would loop forever.
        let progressed = self.to.as_deref().is_none_or(|prev| oldest < prev);
        if self.remaining == 0 || !progressed {
            self.done = true;
        }
        self.to = Some(oldest.to_owned());
        keep
    }
}

/// True for Upbit's `yyyy-MM-ddTHH:mm:ss` (what the SQL casts to `timestamp`).
pub fn is_upbit_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T' || *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// Fetch up to `count` candles of one market, newest first, without duplicates.
pub async fn fetch_market(
    client: &CoreClient,
    market: &str,
    interval: Interval,
    count: u32,
) -> Result<Vec<Candle>, PipelineError> {
    let mut pager = Pager::new(count);
    let mut out: Vec<Candle> = Vec::with_capacity(count.min(MAX_CANDLES_PER_REQUEST) as usize);
    let mut seen = HashSet::new();
    while let Some((n, to)) = pager.next_request() {
        let page = upbit::candles(client, interval, market, n, to).await?;
        for c in &page {
            if c.market != market
                || !is_upbit_datetime(&c.candle_date_time_utc)
                || !is_upbit_datetime(&c.candle_date_time_kst)
            {
                return Err(PipelineError::BadReply {
                    source_name: "upbit",
                    message: format!(
                        "candle for {market} has market {:?}, times {:?}/{:?}",
                        c.market, c.candle_date_time_utc, c.candle_date_time_kst
                    ),
                });
            }
        }
        let keep = pager.accept(&page);
        for c in page.into_iter().take(keep) {
            // Two identical keys in one upsert would make PostgreSQL refuse the whole statement.
            if seen.insert(c.candle_date_time_utc.clone()) {
                out.push(c);
            }
        }
    }
    Ok(out)
}

const UPSERT_SQL: &str = r#"WITH up AS (
    INSERT INTO ohlcv (market, "interval", candle_date_time_utc, candle_date_time_kst, opening_price, high_price,
        low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, "timestamp", updated_at)
    SELECT m, $1::text, u::timestamp, k::timestamp, o, h, l, c, v, p, ts, now()
    FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[], $7::float8[], $8::float8[],
        $9::float8[], $10::float8[], $11::int8[]) AS t(m, u, k, o, h, l, c, v, p, ts)
    ON CONFLICT (market, "interval", candle_date_time_utc) DO UPDATE SET
        candle_date_time_kst = EXCLUDED.candle_date_time_kst,
        opening_price = EXCLUDED.opening_price,
        high_price = EXCLUDED.high_price,
        low_price = EXCLUDED.low_price,
        trade_price = EXCLUDED.trade_price,
        candle_acc_trade_volume = EXCLUDED.candle_acc_trade_volume,
        candle_acc_trade_price = EXCLUDED.candle_acc_trade_price,
        "timestamp" = EXCLUDED."timestamp",
        updated_at = EXCLUDED.updated_at
    RETURNING market
)
SELECT market, count(*)::int8 AS stored FROM up GROUP BY market ORDER BY market"#;

/// One upsert statement for `rows` (callers keep `rows` ≤ [`ROWS_PER_STATEMENT`] and free of duplicate keys).
pub fn upsert_statement(interval: Interval, rows: &[Candle]) -> Statement {
    let col = |f: &dyn Fn(&Candle) -> Value| Value::Array(rows.iter().map(f).collect());
    Statement::new(
        UPSERT_SQL,
        vec![
            json!(interval.as_string()),
            col(&|c| json!(c.market)),
            col(&|c| json!(c.candle_date_time_utc)),
            col(&|c| json!(c.candle_date_time_kst)),
            col(&|c| json!(c.opening_price)),
            col(&|c| json!(c.high_price)),
            col(&|c| json!(c.low_price)),
            col(&|c| json!(c.trade_price)),
            col(&|c| json!(c.candle_acc_trade_volume)),
            col(&|c| json!(c.candle_acc_trade_price)),
            col(&|c| json!(c.timestamp)),
        ],
    )
}

/// Split rows into upsert statements of at most [`ROWS_PER_STATEMENT`] rows.
pub fn upsert_statements(interval: Interval, rows: &[Candle]) -> Vec<Statement> {
    rows.chunks(ROWS_PER_STATEMENT)
        .map(|c| upsert_statement(interval, c))
        .collect()
}

/// Upsert `rows`; returns the per-market counts PostgreSQL reported.
async fn flush(client: &CoreClient, interval: Interval, rows: &[Candle]) -> Result<Vec<(String, u64)>, PipelineError> {
    let mut counts = Vec::new();
    for st in upsert_statements(interval, rows) {
        // An upsert: applying it twice stores the same rows, so it is resent once if its outcome is unknown.
        let r = db::query_idempotent(client, &st.sql, &st.params, None).await?;
        for row in &r.rows {
            let market = db::get(&r, row, "market")?.as_str().unwrap_or_default().to_owned();
            let n = db::get(&r, row, "stored")?;
            counts.push((
                market,
                n.as_u64()
                    .or_else(|| n.as_str().and_then(|s| s.parse().ok()))
                    .unwrap_or(0),
            ));
        }
    }
    Ok(counts)
}

fn add_counts(stored: &mut BTreeMap<String, u64>, counts: Vec<(String, u64)>) {
    for (m, n) in counts {
        *stored.entry(m).or_default() += n;
    }
}

/// The latest scan's id and selection, if any scan is stored.
pub async fn latest_selection(client: &CoreClient) -> Result<Option<(i64, Vec<String>)>, PipelineError> {
    let r = db::query(
        client,
        "SELECT id, to_json(selected) AS selected FROM scan_results ORDER BY id DESC LIMIT 1",
        &[],
        None,
    )
    .await?;
    let Some(row) = r.rows.first() else {
        return Ok(None);
    };
    let id = db::get(&r, row, "id")?.as_i64().unwrap_or_default();
    let sel = db::get(&r, row, "selected")?;
    // json comes back as JSON; tolerate it arriving as JSON text too.
    let sel: Value = match sel {
        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
        other => other.clone(),
    };
    let list = sel
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| PipelineError::BadReply {
            source_name: "core",
            message: format!("scan {id} selection is {sel}"),
        })?;
    Ok(Some((id, list)))
}

/// Run the collector.
pub async fn run_collector(client: &CoreClient, event: CollectEvent) -> Result<CollectResult, PipelineError> {
    let (markets, scan_id) =
        match event.markets {
            Some(m) => (m, None),
            None => match latest_selection(client).await? {
                Some((id, m)) => {
                    // Stored selections come from Upbit; still never put an unchecked string into a URL.
                    let refs: Vec<&str> = m.iter().map(String::as_str).collect();
                    (validate_markets(&refs)?, Some(id))
                }
                None => return Err(PipelineError::invalid(
                    "event.markets is missing and no scan is stored yet: run makenaide-scanner first or pass markets",
                )),
            },
        };
    let interval = event.interval;
    let count = event.count;

    let mut fetches = stream::iter(
        markets
            .iter()
            .map(|m| async move { (m.as_str(), fetch_market(client, m, interval, count).await) }),
    )
    .buffer_unordered(CONCURRENCY);

    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = BTreeMap::new();
    let mut pending: Vec<Candle> = Vec::new();
    while let Some((market, outcome)) = fetches.next().await {
        match outcome {
            Ok(candles) => {
                stored.entry(market.to_owned()).or_default();
                pending.extend(candles);
                // Flush as batches fill so memory stays bounded (in-flight fetches simply wait meanwhile).
                if pending.len() >= ROWS_PER_STATEMENT {
                    add_counts(&mut stored, flush(client, interval, &pending).await?);
                    pending.clear();
                }
            }
            Err(e) if e.is_per_market() => {
                tracing::warn!(market, error = %e, "market not collected");
                failed.insert(
                    market.to_owned(),
                    FailedMarket {
                        status: e.status(),
                        message: e.short_message(),
                    },
                );
            }
            Err(e) => return Err(e),
        }
    }
    drop(fetches);
    // A fetch that ran into the deadline (a slow Upbit reply) ends at the deadline the client gives the extension;
    // the rows already fetched must still be stored, in the part of `deadline::DEADLINE_MARGIN` kept for that.
    let store_client = client.with_deadline_ms(crate::deadline::for_store(client.deadline_ms()));
    add_counts(&mut stored, flush(&store_client, interval, &pending).await?);
    let rows_stored = stored.values().sum();
    tracing::info!(
        markets = stored.len(),
        rows_stored,
        failed = failed.len(),
        "collect done"
    );
    Ok(CollectResult {
        interval: interval.as_string(),
        count,
        stored,
        rows_stored,
        failed,
        scan_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn candle(market: &str, utc: &str) -> Candle {
        Candle {
            market: market.into(),
            candle_date_time_utc: utc.into(),
            candle_date_time_kst: utc.into(),
            opening_price: 1.0,
            high_price: 2.0,
            low_price: 0.5,
            trade_price: 1.5,
            timestamp: 1,
            candle_acc_trade_price: 10.0,
            candle_acc_trade_volume: 5.0,
            unit: None,
            first_day_of_period: None,
        }
    }

    #[test]
    fn intervals() {
        for ok in [
            "days",
            "weeks",
            "months",
            "minutes/1",
            "minutes/3",
            "minutes/60",
            "minutes/240",
        ] {
            assert_eq!(Interval::parse(ok).expect(ok).as_string(), ok);
        }
        for bad in [
            "day",
            "minutes/2",
            "minutes/120",
            "minutes/",
            "seconds",
            "years",
            "Days",
            "",
        ] {
            assert_eq!(Interval::parse(bad).expect_err(bad).error_type(), "InvalidEvent");
        }
    }

    #[test]
    fn event_parsing() {
        let e = CollectEvent::from_value(&json!({})).expect("defaults");
        assert_eq!(e, CollectEvent::default());
        let e = CollectEvent::from_value(
            &json!({"markets": ["KRW-BTC", "KRW-ETH", "KRW-BTC"], "interval": "minutes/5", "count": 450}),
        )
        .expect("valid");
        assert_eq!(e.markets, Some(vec!["KRW-BTC".to_string(), "KRW-ETH".to_string()]));
        assert_eq!(e.interval, Interval::Minutes(5));
        assert_eq!(e.count, 450);
        assert_eq!(
            CollectEvent::from_value(&json!({"markets": []}))
                .expect("empty")
                .markets,
            Some(vec![])
        );
        for bad in [
            json!({"interval": "hours"}),
            json!({"count": 0}),
            json!({"count": -3}),
            json!({"count": 2.5}),
            json!({"count": MAX_COUNT + 1}),
            json!({"markets": ["krw-btc"]}),
            json!({"markets": ["KRW-BTC,KRW-ETH"]}),
            json!({"markets": "KRW-BTC"}),
            json!({"markets": [1]}),
            json!([]),
        ] {
            assert_eq!(
                CollectEvent::from_value(&bad).expect_err("invalid").error_type(),
                "InvalidEvent",
                "{bad}"
            );
        }
    }

    #[test]
    fn pager_walks_back_with_oldest_candle() {
        let mut p = Pager::new(450);
        assert_eq!(p.next_request(), Some((200, None)));
        let page1: Vec<Candle> = (0..200)
            .map(|i| {
                candle(
                    "KRW-BTC",
                    &format!("2024-01-01T{:02}:{:02}:00", 23 - i / 60, 59 - i % 60),
                )
            })
            .collect();
        assert_eq!(p.accept(&page1), 200);
        let oldest1 = page1.last().expect("page").candle_date_time_utc.clone();
        assert_eq!(p.next_request(), Some((200, Some(oldest1.as_str()))));
        let page2: Vec<Candle> = (0..200)
            .map(|i| {
                candle(
                    "KRW-BTC",
                    &format!("2023-12-31T{:02}:{:02}:00", 23 - i / 60, 59 - i % 60),
                )
            })
            .collect();
        assert_eq!(p.accept(&page2), 200);
        let oldest2 = page2.last().expect("page").candle_date_time_utc.clone();
        assert_eq!(p.next_request(), Some((50, Some(oldest2.as_str()))));
        // History ends: an empty page stops, even though 50 were still wanted.
        assert_eq!(p.accept(&[]), 0);
        assert_eq!(p.next_request(), None);
    }

    #[test]
    fn pager_stops_at_count_short_pages_continue_and_no_progress_stops() {
        let mut p = Pager::new(3);
        assert_eq!(p.next_request(), Some((3, None)));
        let page = vec![
            candle("M", "2024-01-03T00:00:00"),
            candle("M", "2024-01-02T00:00:00"),
            candle("M", "2024-01-01T00:00:00"),
        ];
        assert_eq!(p.accept(&page), 3);
        assert_eq!(p.next_request(), None);

        // A short (gappy) page is not the end: only an empty one is.
        let mut p = Pager::new(300);
        assert_eq!(p.accept(&page[..2]), 2);
        assert_eq!(p.next_request(), Some((200, Some("2024-01-02T00:00:00"))));
        // A server ignoring `to` returns the same page again: stop instead of looping.
        assert_eq!(p.accept(&page[..2]), 2);
        assert_eq!(p.next_request(), None);

        // More than asked: keep only the newest ones.
        let mut p = Pager::new(2);
        assert_eq!(p.accept(&page), 2);
        assert_eq!(p.next_request(), None);
        assert_eq!(Pager::new(0).next_request(), None);
    }

    #[test]
    fn upsert_batches() {
        let rows: Vec<Candle> = (0..(ROWS_PER_STATEMENT + 7))
            .map(|i| candle("KRW-BTC", &format!("{:04}-01-01T00:00:00", 1000 + i % 9000)))
            .collect();
        let st = upsert_statements(Interval::Minutes(60), &rows);
        assert_eq!(st.len(), 2);
        assert_eq!(st[0].params.len(), 11);
        assert_eq!(st[0].params[0], json!("minutes/60"));
        assert_eq!(st[0].params[1].as_array().expect("markets").len(), ROWS_PER_STATEMENT);
        assert_eq!(st[1].params[2].as_array().expect("utc").len(), 7);
        assert_eq!(st[1].params[10], json!([1, 1, 1, 1, 1, 1, 1]));
        assert!(st[0]
            .sql
            .contains("ON CONFLICT (market, \"interval\", candle_date_time_utc) DO UPDATE"));
        // Every placeholder is used and bound.
        for i in 1..=11 {
            assert!(st[0].sql.contains(&format!("${i}::")), "${i}");
        }
        assert!(!st[0].sql.contains("$12"));
    }

    #[test]
    fn datetime_shape() {
        assert!(is_upbit_datetime("2024-01-01T00:00:00"));
        assert!(!is_upbit_datetime("2024-01-01T00:00:00Z"));
        assert!(!is_upbit_datetime("2024-01-01'; drop"));
    }

    #[test]
    fn result_shape() {
        let mut r = CollectResult {
            interval: "days".into(),
            count: 3,
            stored: BTreeMap::from([("KRW-BTC".to_string(), 3)]),
            rows_stored: 3,
            failed: BTreeMap::from([(
                "KRW-XXX".to_string(),
                FailedMarket {
                    status: 404,
                    message: "Code not found".into(),
                },
            )]),
            scan_id: None,
        };
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            json!({"interval": "days", "count": 3, "stored": {"KRW-BTC": 3}, "rows_stored": 3,
                   "failed": {"KRW-XXX": {"status": 404, "message": "Code not found"}}})
        );
        r.scan_id = Some(7);
        assert_eq!(serde_json::to_value(&r).expect("json")["scan_id"], json!(7));
    }
}
