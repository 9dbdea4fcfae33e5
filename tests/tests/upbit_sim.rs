//! Tests of the simulated Upbit (`makenaide_tests::upbit_sim`): wire format, candle semantics, errors, rate
//! limiting, connection accounting, fault knobs, the control API and the standalone binary.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike, Utc, Weekday};
use makenaide_tests::upbit_sim::limiter::Limiter;
use makenaide_tests::upbit_sim::{
    Candle, Catalog, Fault, FaultProbabilities, FaultRule, Interval, RateLimit, SimConfig, SimHandle, SimStats,
    UpbitSim, TOO_MANY_BODY,
};
use serde_json::Value;

const MISSING: &str =
    r#"{"error":{"name":400,"message":"Missing request parameter error. Check the required parameters!"}}"#;
const CODE_NOT_FOUND: &str = r#"{"error":{"name":404,"message":"Code not found"}}"#;
const NO_ROUTE: &str = r#"{"error":{"name":"not_found","message":"no Route matched with those values"}}"#;

fn fixed_now() -> DateTime<Utc> {
    "2026-03-04T10:41:27.250Z".parse().expect("time")
}

/// A sim with a fixed clock and no rate limit (tests of the data itself).
async fn sim_free() -> SimHandle {
    let mut cfg = SimConfig {
        now: Some(fixed_now()),
        ..SimConfig::default()
    };
    cfg.rate_limit.enabled = false;
    UpbitSim::start(cfg).await.expect("start sim")
}

fn client() -> reqwest::Client {
    // Workspace builds unify reqwest's `rustls-no-provider` feature (the extension picks ring itself), so a
    // test-side client must install a crypto provider before it is built.
    lambda_simulator::ensure_default_crypto_provider();
    reqwest::Client::builder().build().expect("client")
}

struct Got {
    status: u16,
    remaining: Option<String>,
    content_type: Option<String>,
    text: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn candles(&self) -> Vec<Candle> {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not candles ({e}): {}", self.text))
    }
}

async fn get(c: &reqwest::Client, url: String) -> Got {
    let r = c.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let h = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().expect("ascii header").to_string())
    };
    let (status, remaining, content_type) = (r.status().as_u16(), h("remaining-req"), h("content-type"));
    Got {
        status,
        remaining,
        content_type,
        text: r.text().await.expect("body"),
    }
}

fn utc(c: &Candle) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(&c.candle_date_time_utc, "%Y-%m-%dT%H:%M:%S").expect("candle time")
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

const BASE_FIELDS: [&str; 10] = [
    "market",
    "candle_date_time_utc",
    "candle_date_time_kst",
    "opening_price",
    "high_price",
    "low_price",
    "trade_price",
    "timestamp",
    "candle_acc_trade_price",
    "candle_acc_trade_volume",
];

#[tokio::test]
async fn market_all_fields_and_details() {
    let sim = sim_free().await;
    let c = client();
    let plain = get(&c, format!("{}/v1/market/all", sim.base_url())).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.remaining.as_deref(), Some("group=market; min=600; sec=9"));
    assert_eq!(plain.content_type.as_deref(), Some("application/json; charset=utf-8"));
    let items = plain.json();
    let items = items.as_array().expect("array");
    assert_eq!(items.len(), sim.catalog().markets.len());
    assert_eq!(keys(&items[0]), sorted(&["market", "korean_name", "english_name"]));
    assert_eq!(items[0]["market"], "KRW-BTC");
    assert_eq!(items[0]["korean_name"], "비트코인");
    for quote in ["KRW-", "BTC-", "USDT-"] {
        assert!(
            items
                .iter()
                .any(|i| i["market"].as_str().is_some_and(|m| m.starts_with(quote))),
            "{quote}"
        );
    }

    for param in ["is_details=true", "isDetails=true"] {
        let d = get(&c, format!("{}/v1/market/all?{param}", sim.base_url()))
            .await
            .json();
        let d = d.as_array().expect("array");
        assert_eq!(
            keys(&d[0]),
            sorted(&["market", "korean_name", "english_name", "market_event"])
        );
        let ev = &d[0]["market_event"];
        assert_eq!(keys(ev), sorted(&["warning", "caution"]));
        assert_eq!(
            keys(&ev["caution"]),
            sorted(&[
                "PRICE_FLUCTUATIONS",
                "TRADING_VOLUME_SOARING",
                "DEPOSIT_AMOUNT_SOARING",
                "GLOBAL_PRICE_DIFFERENCES",
                "CONCENTRATION_OF_SMALL_ACCOUNTS"
            ])
        );
        let pepe = d.iter().find(|i| i["market"] == "KRW-PEPE").expect("KRW-PEPE");
        assert_eq!(pepe["market_event"]["warning"], true);
        let shib = d.iter().find(|i| i["market"] == "KRW-SHIB").expect("KRW-SHIB");
        assert_eq!(shib["market_event"]["warning"], false);
        assert_eq!(shib["market_event"]["caution"]["PRICE_FLUCTUATIONS"], true);
    }
}

#[tokio::test]
async fn candle_fields_number_forms_and_alignment() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();

    let days = get(&c, format!("{base}/v1/candles/days?market=KRW-BTC&count=5")).await;
    assert_eq!(days.status, 200);
    assert_eq!(days.remaining.as_deref(), Some("group=candles; min=600; sec=9"));
    let v = days.json();
    let mut day_fields = BASE_FIELDS.to_vec();
    day_fields.extend(["prev_closing_price", "change_price", "change_rate"]);
    for item in v.as_array().expect("array") {
        assert_eq!(keys(item), sorted(&day_fields));
        for f in [
            "opening_price",
            "high_price",
            "low_price",
            "trade_price",
            "candle_acc_trade_price",
            "prev_closing_price",
        ] {
            assert!(item[f].is_number(), "{f} is a JSON number");
        }
        assert!(item["timestamp"].is_i64(), "timestamp is an integer (ms)");
    }
    // Field order as in Upbit's examples.
    assert!(days.text.starts_with(r#"[{"market":"KRW-BTC","candle_date_time_utc":"2026-03-04T00:00:00","candle_date_time_kst":"2026-03-04T09:00:00","opening_price":"#), "{}", &days.text[..200]);
    let days = days.candles();
    assert_eq!(days.len(), 5);
    for w in days.windows(2) {
        assert!(utc(&w[0]) > utc(&w[1]), "newest first");
        assert_eq!(
            w[0].prev_closing_price,
            Some(w[1].trade_price),
            "prev close is the previous day's close"
        );
        let change = w[0].change_price.expect("change_price");
        assert!((change - (w[0].trade_price - w[1].trade_price)).abs() < 1e-6);
    }
    for d in &days {
        assert!(
            d.low_price <= d.opening_price.min(d.trade_price) && d.high_price >= d.opening_price.max(d.trade_price)
        );
        assert_eq!(utc(d).time(), chrono::NaiveTime::MIN);
        let kst = NaiveDateTime::parse_from_str(&d.candle_date_time_kst, "%Y-%m-%dT%H:%M:%S").expect("kst");
        assert_eq!(kst - utc(d), chrono::Duration::hours(9));
        assert_eq!(d.trade_price % 1000.0, 0.0, "KRW-BTC tick is 1000");
    }
    // The newest day candle is today's, still forming: its last trade is not after now.
    assert!(days[0].timestamp <= fixed_now().timestamp_millis());

    let m = get(&c, format!("{base}/v1/candles/minutes/240?market=KRW-ETH&count=12"))
        .await
        .json();
    let mut min_fields = BASE_FIELDS.to_vec();
    min_fields.push("unit");
    for item in m.as_array().expect("array") {
        assert_eq!(keys(item), sorted(&min_fields));
        assert_eq!(item["unit"], 240);
        let t = NaiveDateTime::parse_from_str(item["candle_date_time_utc"].as_str().expect("str"), "%Y-%m-%dT%H:%M:%S")
            .expect("t");
        assert_eq!((t.hour() % 4, t.minute(), t.second()), (0, 0, 0));
    }

    for (path, check) in [
        (
            "weeks",
            (|d: NaiveDateTime| d.weekday() == Weekday::Mon) as fn(NaiveDateTime) -> bool,
        ),
        ("months", |d| d.day() == 1),
        ("years", |d| d.ordinal() == 1),
    ] {
        let v = get(&c, format!("{base}/v1/candles/{path}?market=KRW-BTC&count=3"))
            .await
            .json();
        let mut f = BASE_FIELDS.to_vec();
        f.push("first_day_of_period");
        for item in v.as_array().expect("array") {
            assert_eq!(keys(item), sorted(&f), "{path}");
            let t =
                NaiveDateTime::parse_from_str(item["candle_date_time_utc"].as_str().expect("str"), "%Y-%m-%dT%H:%M:%S")
                    .expect("t");
            assert!(check(t) && t.time() == chrono::NaiveTime::MIN, "{path} start {t}");
            assert_eq!(item["first_day_of_period"], t.date().format("%Y-%m-%d").to_string());
        }
    }

    let s = get(&c, format!("{base}/v1/candles/seconds?market=KRW-BTC&count=5"))
        .await
        .json();
    for item in s.as_array().expect("array") {
        assert_eq!(keys(item), sorted(&BASE_FIELDS));
    }

    // converting_price_unit: a number for BTC pairs, null for KRW pairs, absent without the parameter.
    let btc = get(
        &c,
        format!("{base}/v1/candles/days?market=BTC-ETH&count=2&converting_price_unit=KRW"),
    )
    .await
    .json();
    assert!(btc[0]["converted_trade_price"].is_f64());
    let krw = get(
        &c,
        format!("{base}/v1/candles/days?market=KRW-ETH&count=1&converting_price_unit=KRW"),
    )
    .await
    .json();
    assert!(krw[0]["converted_trade_price"].is_null() && krw[0].get("converted_trade_price").is_some());
    let none = get(&c, format!("{base}/v1/candles/days?market=BTC-ETH&count=1"))
        .await
        .json();
    assert!(none[0].get("converted_trade_price").is_none());
}

#[tokio::test]
async fn to_is_exclusive_in_every_form_and_paging_has_no_duplicates() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();

    let forms = [
        "2026-03-03T10:40:00Z",
        "2026-03-03T10:40:00",
        "2026-03-03%2010:40:00",
        "2026-03-03T19:40:00%2B09:00",
    ];
    let mut pages = Vec::new();
    for to in forms {
        let page = get(
            &c,
            format!("{base}/v1/candles/minutes/5?market=KRW-BTC&count=2&to={to}"),
        )
        .await;
        assert_eq!(page.status, 200, "{to}: {}", page.text);
        pages.push(page.candles());
    }
    let starts: Vec<String> = pages[0].iter().map(|c| c.candle_date_time_utc.clone()).collect();
    assert_eq!(starts, ["2026-03-03T10:35:00", "2026-03-03T10:30:00"]);
    assert!(
        pages.iter().all(|p| p == &pages[0]),
        "all `to` forms give the same page"
    );
    // One second past a start includes that candle.
    let p = get(
        &c,
        format!("{base}/v1/candles/minutes/5?market=KRW-BTC&count=1&to=2026-03-03T10:40:01Z"),
    )
    .await
    .candles();
    assert_eq!(p[0].candle_date_time_utc, "2026-03-03T10:40:00");

    // pyupbit's recipe on a thin market (gaps): the oldest start becomes the next `to`.
    let market = "KRW-MOC";
    let mut all: Vec<Candle> = Vec::new();
    let mut to: Option<String> = None;
    for _ in 0..4 {
        let url = match &to {
            None => format!("{base}/v1/candles/minutes/1?market={market}&count=200"),
            Some(t) => format!("{base}/v1/candles/minutes/1?market={market}&count=200&to={t}"),
        };
        let page = get(&c, url).await.candles();
        assert_eq!(page.len(), 200);
        to = Some(page.last().expect("candle").candle_date_time_utc.clone());
        all.extend(page);
    }
    let unique: HashSet<&str> = all.iter().map(|c| c.candle_date_time_utc.as_str()).collect();
    assert_eq!(unique.len(), all.len(), "no duplicates across pages");
    assert!(
        all.windows(2).all(|w| utc(&w[0]) > utc(&w[1])),
        "strictly descending across pages"
    );
    let gaps = all
        .windows(2)
        .filter(|w| utc(&w[0]) - utc(&w[1]) > chrono::Duration::minutes(1))
        .count();
    assert!(
        gaps > 0,
        "a thin market has intervals without trades, hence without candles"
    );
    // The pure function agrees with what was served.
    let expected = sim
        .expected_candles(market, Interval::Minutes(1), None, 200)
        .expect("known market");
    assert_eq!(expected, all[..200]);
}

#[tokio::test]
async fn paging_past_the_listing_date_ends_empty() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();
    // KRW-USDT is listed on 2023-10-10.
    let page = get(
        &c,
        format!("{base}/v1/candles/days?market=KRW-USDT&count=200&to=2023-10-12T00:00:00Z"),
    )
    .await
    .candles();
    let starts: Vec<&str> = page.iter().map(|c| c.candle_date_time_utc.as_str()).collect();
    assert_eq!(starts, ["2023-10-11T00:00:00", "2023-10-10T00:00:00"]);
    let next = get(
        &c,
        format!("{base}/v1/candles/days?market=KRW-USDT&count=200&to=2023-10-10T00:00:00"),
    )
    .await;
    assert_eq!((next.status, next.text.as_str()), (200, "[]"));
    // Seconds candles are kept ~3 months only.
    let old = get(
        &c,
        format!("{base}/v1/candles/seconds?market=KRW-BTC&count=10&to=2025-06-01T00:00:00Z"),
    )
    .await;
    assert_eq!((old.status, old.text.as_str()), (200, "[]"));
}

#[tokio::test]
async fn count_defaults_to_one_and_is_clamped_to_200() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();
    assert_eq!(
        get(&c, format!("{base}/v1/candles/days?market=KRW-BTC"))
            .await
            .candles()
            .len(),
        1
    );
    assert_eq!(
        get(&c, format!("{base}/v1/candles/days?market=KRW-BTC&count=201"))
            .await
            .candles()
            .len(),
        200
    );
    assert_eq!(
        get(&c, format!("{base}/v1/candles/minutes/1?market=KRW-BTC&count=1000"))
            .await
            .candles()
            .len(),
        200
    );
    let bad = get(&c, format!("{base}/v1/candles/days?market=KRW-BTC&count=abc")).await;
    assert_eq!(
        (bad.status, bad.text.as_str()),
        (
            400,
            r#"{"error":{"name":400,"message":"Type mismatch error. Check the parameters type!"}}"#
        )
    );
}

#[tokio::test]
async fn errors_are_upbits_exact_bodies() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();

    let missing = get(&c, format!("{base}/v1/candles/days?count=3")).await;
    assert_eq!((missing.status, missing.text.as_str()), (400, MISSING));
    assert_eq!(missing.remaining.as_deref(), Some("group=candles; min=600; sec=9"));
    assert_eq!(get(&c, format!("{base}/v1/ticker")).await.text, MISSING);

    for url in [
        format!("{base}/v1/candles/days?market=KRW-NOPE"),
        format!("{base}/v1/candles/days?market=KRW-BTC,KRW-ETH"),
        format!("{base}/v1/ticker?markets=KRW-BTC,KRW-NOPE"),
        format!("{base}/v1/orderbook?markets=KRW-NOPE"),
        format!("{base}/v1/trades/ticks?market=KRW-NOPE"),
    ] {
        let r = get(&c, url.clone()).await;
        assert_eq!((r.status, r.text.as_str()), (404, CODE_NOT_FOUND), "{url}");
        assert!(r.remaining.is_some(), "a routed 404 carries Remaining-Req");
    }

    for unit in [2, 120, 480] {
        let r = get(&c, format!("{base}/v1/candles/minutes/{unit}?market=KRW-BTC")).await;
        assert_eq!(
            (r.status, r.text.as_str()),
            (
                400,
                r#"{"error":{"name":400,"message":"specified unit is not valid."}}"#
            )
        );
    }
    for unit in [1, 3, 5, 10, 15, 30, 60, 240] {
        assert_eq!(
            get(&c, format!("{base}/v1/candles/minutes/{unit}?market=KRW-BTC"))
                .await
                .status,
            200
        );
    }

    for path in ["/v1/nothing", "/v2/ticker", "/", "/v1/candles/hours?market=KRW-BTC"] {
        let r = get(&c, format!("{base}{path}")).await;
        assert_eq!((r.status, r.text.as_str()), (404, NO_ROUTE), "{path}");
        assert_eq!(r.remaining, None, "unrouted replies carry no Remaining-Req");
    }
    assert_eq!(sim.stats().unrouted, 4);
}

#[tokio::test]
async fn ticker_orderbook_instruments_and_trades() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();

    let t = get(&c, format!("{base}/v1/ticker?markets=KRW-BTC,KRW-ETH")).await;
    assert_eq!(t.remaining.as_deref(), Some("group=ticker; min=600; sec=9"));
    let t = t.json();
    assert_eq!(t.as_array().expect("array").len(), 2);
    assert_eq!(
        keys(&t[0]),
        sorted(&[
            "market",
            "trade_date",
            "trade_time",
            "trade_date_kst",
            "trade_time_kst",
            "trade_timestamp",
            "opening_price",
            "high_price",
            "low_price",
            "trade_price",
            "prev_closing_price",
            "change",
            "change_price",
            "change_rate",
            "signed_change_price",
            "signed_change_rate",
            "trade_volume",
            "acc_trade_price",
            "acc_trade_price_24h",
            "acc_trade_volume",
            "acc_trade_volume_24h",
            "highest_52_week_price",
            "highest_52_week_date",
            "lowest_52_week_price",
            "lowest_52_week_date",
            "timestamp"
        ])
    );
    assert_eq!(t[0]["trade_date"], "20260304");
    let day = sim
        .expected_candles("KRW-BTC", Interval::Days, None, 1)
        .expect("candles");
    assert_eq!(
        t[0]["trade_price"].as_f64(),
        Some(day[0].trade_price),
        "ticker agrees with today's candle"
    );
    assert!(["RISE", "EVEN", "FALL"].contains(&t[0]["change"].as_str().expect("change")));
    assert!(t[0]["change_rate"].as_f64().expect("rate") >= 0.0);

    // Repeated keys and lower case are accepted.
    let r = get(&c, format!("{base}/v1/ticker?markets=krw-btc&markets=KRW-XRP"))
        .await
        .json();
    assert_eq!(
        (r[0]["market"].as_str(), r[1]["market"].as_str()),
        (Some("KRW-BTC"), Some("KRW-XRP"))
    );

    let all = get(&c, format!("{base}/v1/ticker/all?quote_currencies=KRW,BTC"))
        .await
        .json();
    let n = sim
        .catalog()
        .markets
        .iter()
        .filter(|m| m.quote() == "KRW" || m.quote() == "BTC")
        .count();
    assert_eq!(all.as_array().expect("array").len(), n);

    let ob = get(&c, format!("{base}/v1/orderbook?markets=KRW-BTC,BTC-ETH")).await;
    assert_eq!(ob.remaining.as_deref(), Some("group=orderbook; min=600; sec=9"));
    let ob = ob.json();
    assert_eq!(
        keys(&ob[0]),
        sorted(&[
            "market",
            "timestamp",
            "total_ask_size",
            "total_bid_size",
            "orderbook_units",
            "level"
        ])
    );
    let units = ob[0]["orderbook_units"].as_array().expect("units");
    assert_eq!(units.len(), 30);
    assert_eq!(
        keys(&units[0]),
        sorted(&["ask_price", "bid_price", "ask_size", "bid_size"])
    );
    assert!(units[0]["ask_price"].as_f64() > units[0]["bid_price"].as_f64());
    assert_eq!(ob[0]["timestamp"].as_i64().expect("ts") % 100, 0);
    let capped = get(&c, format!("{base}/v1/orderbook?markets=KRW-BTC&count=50"))
        .await
        .json();
    assert_eq!(capped[0]["orderbook_units"].as_array().expect("units").len(), 30);
    let grouped = get(&c, format!("{base}/v1/orderbook?markets=KRW-BTC&count=5&level=100000"))
        .await
        .json();
    assert_eq!(grouped[0]["level"], 100000);
    for u in grouped[0]["orderbook_units"].as_array().expect("units") {
        assert_eq!(u["ask_price"].as_f64().expect("p") % 100_000.0, 0.0);
    }
    let btc_level = get(&c, format!("{base}/v1/orderbook?markets=BTC-ETH&level=100")).await;
    assert_eq!((btc_level.status, btc_level.text.as_str()), (200, "[]"));
    let bad_level = get(&c, format!("{base}/v1/orderbook?markets=KRW-BTC&level=7")).await;
    assert_eq!(bad_level.status, 400);

    let ins = get(&c, format!("{base}/v1/orderbook/instruments?markets=KRW-BTC,USDT-BTC"))
        .await
        .json();
    assert_eq!(ins[0]["tick_size"], "1000");
    assert_eq!(ins[1]["tick_size"], "0.01");
    assert_eq!(ins[1]["supported_levels"], serde_json::json!(["0"]));
    assert_eq!(ins[0]["quote_currency"], "KRW");

    let tr = get(&c, format!("{base}/v1/trades/ticks?market=KRW-BTC&count=50")).await;
    assert_eq!(tr.remaining.as_deref(), Some("group=trade; min=600; sec=9"));
    let tr = tr.json();
    let tr = tr.as_array().expect("array");
    assert_eq!(tr.len(), 50);
    assert_eq!(
        keys(&tr[0]),
        sorted(&[
            "market",
            "trade_date_utc",
            "trade_time_utc",
            "timestamp",
            "trade_price",
            "trade_volume",
            "prev_closing_price",
            "change_price",
            "ask_bid",
            "sequential_id"
        ])
    );
    assert!(
        tr.windows(2)
            .all(|w| w[0]["timestamp"].as_i64() > w[1]["timestamp"].as_i64()),
        "newest first"
    );
    // Cursor paging continues strictly before the last trade.
    let cursor = tr[49]["sequential_id"].as_i64().expect("id");
    let more = get(
        &c,
        format!("{base}/v1/trades/ticks?market=KRW-BTC&count=5&cursor={cursor}"),
    )
    .await
    .json();
    assert!(more[0]["timestamp"].as_i64() < tr[49]["timestamp"].as_i64());
    let at = get(
        &c,
        format!("{base}/v1/trades/ticks?market=KRW-BTC&count=3&to=090000&days_ago=1"),
    )
    .await
    .json();
    assert_eq!(at[0]["trade_date_utc"], "2026-03-03");
    assert!(at[0]["trade_time_utc"].as_str().expect("time") < "09:00:00");
}

#[tokio::test]
async fn rate_limit_429_then_418_per_group_with_remaining_req() {
    // A long window keeps the test independent of the machine's speed; the 1000 ms default is the same code path.
    let rl = RateLimit {
        window_ms: 60_000,
        ban_after_429s: 3,
        ban_base_ms: 60_000,
        ..RateLimit::default()
    };
    let sim = UpbitSim::start(SimConfig {
        now: Some(fixed_now()),
        rate_limit: rl,
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let c = client();
    let url = format!("{}/v1/candles/days?market=KRW-BTC", sim.base_url());
    for left in (0..10).rev() {
        let r = get(&c, url.clone()).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.remaining, Some(format!("group=candles; min=600; sec={left}")));
    }
    let r = get(&c, url.clone()).await;
    assert_eq!((r.status, r.text.as_str()), (429, TOO_MANY_BODY));
    assert_eq!(r.remaining.as_deref(), Some("group=candles; min=600; sec=0"));
    // Other groups have their own budget.
    let t = get(&c, format!("{}/v1/ticker?markets=KRW-BTC", sim.base_url())).await;
    assert_eq!(
        (t.status, t.remaining.as_deref()),
        (200, Some("group=ticker; min=600; sec=9"))
    );
    // Keep hammering: the third 429 starts a block, and every group of the IP gets 418 with the block time.
    assert_eq!(get(&c, url.clone()).await.status, 429);
    assert_eq!(get(&c, url.clone()).await.status, 429);
    for u in [url.clone(), format!("{}/v1/ticker?markets=KRW-BTC", sim.base_url())] {
        let b = get(&c, u).await;
        assert_eq!(b.status, 418);
        assert!(b.text.contains("Blocked for 60 seconds"), "{}", b.text);
    }
    let s = sim.stats();
    assert_eq!((s.responses_429, s.responses_418, s.bans), (3, 2, 1));
    assert_eq!(s.group("candles"), 14);

    // Turning the limit off lets everything through; reset lifts the block and restores the start knobs.
    sim.reset();
    assert_eq!(sim.stats().requests_total, 0);
    sim.set_rate_limit_enabled(false);
    for _ in 0..15 {
        assert_eq!(get(&c, url.clone()).await.status, 200);
    }
    sim.set_rate_limit_enabled(true);
    sim.set_rate_per_second(20);
    let r = get(&c, url.clone()).await;
    assert_eq!(r.status, 200, "15 + 1 < 20");
    assert_eq!(r.remaining.as_deref(), Some("group=candles; min=1200; sec=4"));
}

#[test]
fn blocks_grow_with_every_offence() {
    let rl = RateLimit {
        ban_after_429s: 2,
        ban_window_ms: 10_000,
        ban_base_ms: 1_000,
        ban_max_ms: 5_000,
        ..RateLimit::default()
    };
    let mut l = Limiter::default();
    let ip = "127.0.0.1".parse().expect("ip");
    let t0 = Instant::now();
    let mut lengths = Vec::new();
    let mut t = t0;
    for _ in 0..4 {
        assert_eq!(l.note_429(ip, &rl, t), None);
        let len = l.note_429(ip, &rl, t).expect("second 429 bans");
        assert!(l.banned(ip, t + len - Duration::from_millis(1)).is_some());
        lengths.push(len.as_millis());
        t += len;
        assert_eq!(l.banned(ip, t), None, "the block ends");
    }
    assert_eq!(lengths, [1000, 2000, 4000, 5000]);
}

#[tokio::test]
async fn origin_requests_have_their_own_tiny_budget_and_are_recorded() {
    let sim = UpbitSim::start(SimConfig {
        now: Some(fixed_now()),
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let c = client();
    let url = format!("{}/v1/ticker?markets=KRW-BTC", sim.base_url());
    let r = c
        .get(&url)
        .header("Origin", "https://example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["remaining-req"], "group=origin; min=6; sec=0");
    let r = c
        .get(&url)
        .header("Origin", "https://example.com")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(
        get(&c, url.clone()).await.status,
        200,
        "without Origin the ticker budget is untouched"
    );
    let s = sim.stats();
    assert_eq!(s.origin_requests, 2);
    assert_eq!(s.origins, ["https://example.com", "https://example.com"]);
}

#[tokio::test]
async fn connections_are_counted_and_reuse_is_visible() {
    let sim = sim_free().await;
    let url = format!("{}/v1/market/all", sim.base_url());
    let a = client();
    for _ in 0..3 {
        assert_eq!(get(&a, url.clone()).await.status, 200);
    }
    let s = sim.stats();
    assert_eq!((s.connections_accepted, s.connections_open), (1, 1));
    assert_eq!(
        s.connections[0].requests, 3,
        "three requests on one keep-alive connection"
    );

    let b = client();
    assert_eq!(get(&b, url.clone()).await.status, 200);
    assert_eq!(sim.connections(), 2);
    drop(a);
    drop(b);
    assert!(
        sim.wait_for(Duration::from_secs(5), |s| s.connections_open == 0).await,
        "{:?}",
        sim.stats()
    );
    assert!(sim.stats().connections.iter().all(|c| !c.open));

    // Server-side close: the client notices and reconnects.
    let c = client();
    assert_eq!(get(&c, url.clone()).await.status, 200);
    sim.close_connections(false);
    assert!(sim.wait_for(Duration::from_secs(5), |s| s.connections_open == 0).await);
    assert_eq!(get(&c, url.clone()).await.status, 200);
    assert_eq!(sim.connections(), 4);
}

#[tokio::test]
async fn fault_knobs() {
    let sim = sim_free().await;
    let c = client();
    let base = sim.base_url();
    let url = format!("{base}/v1/candles/days?market=KRW-BTC&count=2");

    sim.inject(Fault::ServerError { status: 503 }, 1);
    sim.inject(Fault::ServerError { status: 500 }, 1);
    let r = get(&c, url.clone()).await;
    assert_eq!(
        (r.status, r.remaining.is_none()),
        (503, true),
        "gateway errors carry no Remaining-Req"
    );
    let r = get(&c, url.clone()).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["name"], 500);

    sim.inject(Fault::TooManyRequests, 2);
    for _ in 0..2 {
        let r = get(&c, url.clone()).await;
        assert_eq!((r.status, r.text.as_str()), (429, TOO_MANY_BODY));
    }

    // A rule restricted to a group leaves others alone.
    sim.push_fault(FaultRule::once(Fault::ServerError { status: 502 }).in_group("ticker"));
    assert_eq!(get(&c, url.clone()).await.status, 200);
    assert_eq!(get(&c, format!("{base}/v1/ticker?markets=KRW-BTC")).await.status, 502);

    // Reset: no response at all, then the next request works on a new connection.
    sim.inject(Fault::Reset, 1);
    let e = c.get(&url).send().await.expect_err("the connection is reset");
    assert!(e.is_request() || e.is_connect() || e.is_body(), "{e:?}");
    assert_eq!(get(&c, url.clone()).await.status, 200);

    // Slower than the client's deadline.
    sim.inject(Fault::Slow { ms: 1_500 }, 1);
    let e = c
        .get(&url)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .expect_err("too slow");
    assert!(e.is_timeout(), "{e:?}");

    // Malformed JSON: 200, not parseable, and logged as not delivered.
    let before = sim.served_log().len();
    sim.inject(Fault::MalformedJson, 1);
    let r = get(&c, url.clone()).await;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<Value>(&r.text).is_err(), "{}", r.text);
    let log = sim.served_log();
    assert!(log[before..]
        .iter()
        .all(|s| !s.delivered && s.fault.as_deref() == Some("malformed_json")));

    // Truncated: Content-Length promises more than arrives.
    sim.inject(Fault::TruncatedBody, 1);
    let resp = c.get(&url).send().await.expect("headers arrive");
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err(), "the body is cut short");

    // 418 with a block time, and the block is real.
    sim.inject(Fault::Blocked { secs: 30 }, 1);
    let r = get(&c, url.clone()).await;
    assert_eq!(r.status, 418);
    assert!(r.text.contains("30 seconds"), "{}", r.text);
    assert_eq!(get(&c, url.clone()).await.status, 418, "still blocked");
    sim.reset();
    assert_eq!(get(&c, url.clone()).await.status, 200, "reset lifts the block");

    // Probabilities: deterministic from the seed.
    sim.set_fault_probabilities(FaultProbabilities {
        server_error: 1.0,
        seed: 3,
        ..FaultProbabilities::default()
    });
    for _ in 0..3 {
        assert!([500, 502, 503].contains(&get(&c, url.clone()).await.status));
    }
    sim.clear_faults();
    assert_eq!(get(&c, url.clone()).await.status, 200);
    let s = sim.stats();
    assert_eq!(s.faults_injected.get("server_error"), Some(&3));

    // Latency knob: every reply takes at least that long.
    sim.set_latency(Duration::from_millis(120));
    let t = Instant::now();
    assert_eq!(get(&c, url.clone()).await.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(120));
}

#[tokio::test]
async fn served_log_is_exactly_what_the_pure_function_computes() {
    let sim = sim_free().await;
    let c = client();
    let markets = ["KRW-BTC", "KRW-ETH", "KRW-MOC", "BTC-ETH"];
    for m in markets {
        get(&c, format!("{}/v1/candles/days?market={m}&count=3", sim.base_url())).await;
        get(
            &c,
            format!(
                "{}/v1/candles/minutes/15?market={m}&count=7&to=2026-03-01T00:00:00Z",
                sim.base_url()
            ),
        )
        .await;
    }
    let latest = sim.served_latest();
    assert_eq!(
        latest.len(),
        markets.len() * 3 + latest.iter().filter(|(k, _)| k.1 == "minutes/15").count()
    );
    for m in markets {
        for c in sim.expected_candles(m, Interval::Days, None, 3).expect("known") {
            assert_eq!(
                latest.get(&(m.to_string(), "days".into(), c.candle_date_time_utc.clone())),
                Some(&c)
            );
        }
        let to = "2026-03-01T00:00:00Z".parse().expect("to");
        for c in sim
            .expected_candles(m, Interval::Minutes(15), Some(to), 7)
            .expect("known")
        {
            assert_eq!(
                latest.get(&(m.to_string(), "minutes/15".into(), c.candle_date_time_utc.clone())),
                Some(&c)
            );
        }
    }
    // The stand-in-compatible view.
    let days = sim.served_candles("days");
    assert_eq!(days.len(), 12);
    assert_eq!(days[0].0, "KRW-BTC");
    assert_eq!(days[0].1["candle_date_time_utc"], "2026-03-04T00:00:00");
}

#[tokio::test]
async fn control_api_over_http() {
    let sim = UpbitSim::start(SimConfig::default()).await.expect("sim");
    let c = client();
    let base = sim.base_url();
    let post = |path: &str, body: Value| c.post(format!("{base}/__sim/{path}")).json(&body).send();

    assert_eq!(
        post("now", serde_json::json!({"now": "2026-03-04T10:41:27Z"}))
            .await
            .expect("post")
            .status(),
        200
    );
    assert_eq!(sim.now(), "2026-03-04T10:41:27Z".parse::<DateTime<Utc>>().expect("t"));
    let served = get(&c, format!("{base}/v1/candles/days?market=KRW-XRP&count=4"))
        .await
        .text;
    let expected = get(
        &c,
        format!("{base}/__sim/expected-candles?market=KRW-XRP&interval=days&count=4"),
    )
    .await
    .text;
    assert_eq!(served, expected);

    assert_eq!(
        post("latency", serde_json::json!({"ms": 5}))
            .await
            .expect("post")
            .status(),
        200
    );
    assert_eq!(
        post("rate-limit", serde_json::json!({"per_second": 3}))
            .await
            .expect("post")
            .status(),
        200
    );
    assert_eq!(sim.rate_limit().per_second, 3);
    assert_eq!(sim.rate_limit().window_ms, 1000, "a patch keeps the other fields");
    assert_eq!(
        post("rate-limit", serde_json::json!({"bogus": 1}))
            .await
            .expect("post")
            .status(),
        400
    );
    let rules =
        serde_json::json!([{"kind": "server_error", "status": 503, "times": 2, "group": "ticker"}, {"kind": "reset"}]);
    assert_eq!(post("faults", rules).await.expect("post").status(), 200);
    assert_eq!(sim.pending_faults().len(), 2);
    assert_eq!(sim.pending_faults()[0].times, 2);
    assert_eq!(
        c.delete(format!("{base}/__sim/faults"))
            .send()
            .await
            .expect("delete")
            .status(),
        200
    );
    assert!(sim.pending_faults().is_empty());

    let stats: SimStats = c
        .get(format!("{base}/__sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats.group("candles"), 1, "control requests are not Upbit requests");
    // now, expected-candles, latency, rate-limit x2, faults, DELETE faults, stats.
    assert_eq!(stats.connections.iter().map(|c| c.control_requests).sum::<u64>(), 8);
    let log: Vec<Value> = c
        .get(format!("{base}/__sim/served?market=KRW-XRP"))
        .send()
        .await
        .expect("served")
        .json()
        .await
        .expect("json");
    assert_eq!(log.len(), 4);

    assert_eq!(post("reset", Value::Null).await.expect("post").status(), 200);
    assert_eq!(sim.rate_limit().per_second, 10);
    assert_eq!(sim.stats().requests_total, 0);
    assert!(sim.served_log().is_empty());
    assert_eq!(get(&c, format!("{base}/__sim/nope")).await.status, 404);
}

#[tokio::test]
async fn catalog_with_230_krw_markets() {
    let catalog = Catalog::with_krw_markets(230);
    assert_eq!(catalog.markets.iter().filter(|m| m.quote() == "KRW").count(), 230);
    let codes: HashSet<String> = catalog.codes().into_iter().collect();
    assert_eq!(codes.len(), catalog.markets.len());
    let mut cfg = SimConfig {
        catalog,
        now: Some(fixed_now()),
        ..SimConfig::default()
    };
    cfg.rate_limit.enabled = false;
    let sim = UpbitSim::start(cfg).await.expect("sim");
    let c = client();
    let all = get(&c, format!("{}/v1/ticker/all?quote_currencies=KRW", sim.base_url()))
        .await
        .json();
    assert_eq!(all.as_array().expect("array").len(), 230);
    let listed = get(&c, format!("{}/v1/market/all?is_details=true", sim.base_url()))
        .await
        .json();
    let warned = listed
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["market_event"]["warning"] == true)
        .count();
    assert!(warned >= 2);
    let sim_market = get(
        &c,
        format!("{}/v1/candles/days?market=KRW-SIM100&count=2", sim.base_url()),
    )
    .await;
    assert_eq!(sim_market.candles().len(), 2);
}

#[tokio::test]
async fn standalone_binary_serves_and_reports_its_address() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_upbit-sim"))
        .args(["--addr", "127.0.0.1:0", "--krw-markets", "60", "--latency-ms", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn upbit-sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("ready in time")
        .expect("read")
        .expect("a line");
    let url = line
        .strip_prefix("upbit-sim listening on ")
        .expect("readiness line")
        .to_string();
    let c = client();
    let m = get(&c, format!("{url}/v1/market/all")).await.json();
    assert_eq!(
        m.as_array()
            .expect("array")
            .iter()
            .filter(|x| x["market"].as_str().is_some_and(|s| s.starts_with("KRW-")))
            .count(),
        60
    );
    let stats: SimStats = c
        .get(format!("{url}/__sim/stats"))
        .send()
        .await
        .expect("stats")
        .json()
        .await
        .expect("json");
    assert_eq!(stats.group("market"), 1);
    let pid = child.id().expect("pid");
    nix_kill(pid);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
}

fn nix_kill(pid: u32) {
    // SIGTERM via the kill(1) utility keeps this test free of extra crate features.
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[test]
fn intervals_and_to_parsing() {
    use makenaide_tests::upbit_sim::parse_to;
    let a = parse_to("2025-06-24T04:56:53Z").expect("Z");
    assert_eq!(parse_to("2025-06-24 04:56:53"), Some(a));
    assert_eq!(parse_to("2025-06-24T04:56:53"), Some(a));
    assert_eq!(parse_to("2025-06-24T13:56:53+09:00"), Some(a));
    assert_eq!(parse_to("2025-06-24 13:56:53+09:00"), Some(a));
    assert_eq!(parse_to("yesterday"), None);
    for s in [
        "seconds",
        "minutes/1",
        "minutes/240",
        "days",
        "weeks",
        "months",
        "years",
    ] {
        assert_eq!(Interval::parse(s).expect(s).name(), s);
    }
    assert_eq!(Interval::parse("minutes/2"), None);
    let t = NaiveDateTime::parse_from_str("2026-03-04T10:41:27", "%Y-%m-%dT%H:%M:%S").expect("t");
    assert_eq!(Interval::Weeks.floor(t).to_string(), "2026-03-02 00:00:00");
    assert_eq!(Interval::Minutes(15).floor(t).to_string(), "2026-03-04 10:30:00");
}
