//! Property tests of the functions' event parsers: whatever JSON Lambda hands a function, the
//! parser returns a typed event or an `InvalidEvent` error, never panics, and an accepted event only ever holds
//! valid values (upper-case market codes, known intervals, counts and limits in range), so nothing unchecked can
//! reach an Upbit URL or a SQL statement.
//!
//! Cases per property: `PROPTEST_CASES` (default 2000), printed and recorded in
//! `$MAKENAIDE_REPORT_DIR/proptest_parsers.md` for the reliability report.

#![allow(clippy::unwrap_used)]

use makenaide_pipeline::collector::{validate_markets, Interval, MAX_COUNT, MAX_MARKETS};
use makenaide_pipeline::upbit::{Candle, MarketInfo, Ticker};
use makenaide_pipeline::{is_market_code, CollectEvent, OrchestrateEvent, ScanEvent};
use makenaide_tests::run_counted;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,16}".prop_map(Value::from),
        "(KRW|BTC|USDT|krw)-[A-Z0-9a-z&=/.%-]{0,8}".prop_map(Value::from),
        prop::sample::select(vec![
            "days",
            "weeks",
            "months",
            "minutes/1",
            "minutes/7",
            "minutes/",
            "years",
            "../x"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Events with the real keys and values of any type.
fn event() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "markets",
        "interval",
        "count",
        "min_trade_value_24h",
        "exclude_warning",
        "exclude_caution",
        "limit",
        "scan",
        "collect",
        "unknown",
    ]);
    prop_oneof![
        json_value(),
        prop::collection::btree_map(keys, json_value(), 0..5)
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        (json_value(), json_value()).prop_map(|(s, c)| json!({"scan": s, "collect": c})),
    ]
}

fn check_collect(e: &CollectEvent) -> Result<(), TestCaseError> {
    prop_assert!((1..=MAX_COUNT).contains(&e.count));
    if let Some(m) = &e.markets {
        prop_assert!(m.len() <= MAX_MARKETS);
        for code in m {
            prop_assert!(is_market_code(code), "{code:?} accepted");
            prop_assert!(code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'));
        }
    }
    prop_assert!(Interval::parse(&e.interval.as_string()).is_ok());
    Ok(())
}

#[test]
fn collector_event_parser() {
    run_counted!("CollectEvent::from_value (data-collector event)", event(), |v| {
        match CollectEvent::from_value(&v) {
            Ok(e) => check_collect(&e)?,
            Err(e) => prop_assert_eq!(e.error_type(), "InvalidEvent"),
        }
        Ok(())
    });
}

#[test]
fn scanner_event_parser() {
    run_counted!("ScanEvent::from_value (scanner event)", event(), |v| {
        match ScanEvent::from_value(&v) {
            Ok(e) => {
                prop_assert!((1..=1000).contains(&e.limit));
                prop_assert!(e.min_trade_value_24h.is_finite() && e.min_trade_value_24h >= 0.0);
            }
            Err(e) => prop_assert_eq!(e.error_type(), "InvalidEvent"),
        }
        Ok(())
    });
}

#[test]
fn orchestrator_event_parser() {
    run_counted!("OrchestrateEvent::from_value (orchestrator event)", event(), |v| {
        match OrchestrateEvent::from_value(&v) {
            Ok(e) => check_collect(&e.collect)?,
            Err(e) => prop_assert_eq!(e.error_type(), "InvalidEvent"),
        }
        Ok(())
    });
}

#[test]
fn interval_and_market_code_parsers() {
    let text = prop_oneof![any::<String>(), "minutes/[0-9]{0,12}", "[A-Za-z0-9-]{0,30}"];
    run_counted!(
        "Interval::parse + is_market_code + validate_markets",
        prop::collection::vec(text, 0..8),
        |list| {
            for s in &list {
                if let Ok(iv) = Interval::parse(s) {
                    // Accepted spellings are normalised ("minutes/05" -> "minutes/5"); the URL uses the normal form.
                    prop_assert_eq!(Interval::parse(&iv.as_string()).unwrap(), iv);
                    prop_assert!(iv
                        .as_string()
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'/'));
                }
            }
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            if let Ok(valid) = validate_markets(&refs) {
                prop_assert!(valid.iter().all(|m| is_market_code(m)));
                prop_assert!(valid.len() <= refs.len());
            }
            Ok(())
        },
    );
}

#[test]
fn upbit_reply_decoding() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| serde_json::to_vec(&json!([v])).unwrap()),
    ];
    run_counted!(
        "serde decoding of Upbit replies (Candle, Ticker, MarketInfo)",
        bytes,
        |b| {
            let _ = serde_json::from_slice::<Vec<Candle>>(&b);
            let _ = serde_json::from_slice::<Vec<Ticker>>(&b);
            let _ = serde_json::from_slice::<Vec<MarketInfo>>(&b);
            Ok(())
        },
    );
}
