//! Property tests of the Upbit-side parsers: the mirror's path routing, `Remaining-Req` and the
//! 418 block time. Zero panics on any input, and the parsed values are the ones that were written.
//!
//! Cases per property and the report line: the workspace runner, `makenaide_tests::run_counted!`.

#![allow(clippy::unwrap_used)]

use super::{ban_duration, remaining_sec, route};
use makenaide_tests::run_counted;
use proptest::prelude::*;
use std::time::Duration;

fn path_strategy() -> impl Strategy<Value = String> {
    let prefixes = prop_oneof![
        Just(""),
        Just("/"),
        Just("/v1/"),
        Just("/v1/candles/"),
        Just("/v1/candles/minutes/"),
        Just("/v1/ticker"),
        Just("/v1/market/all"),
        Just("/v2/"),
        Just("/v1/orders"),
    ];
    (prefixes, "[a-zA-Z0-9/._%~\u{00e9}\u{d55c}-]{0,24}").prop_map(|(p, s)| format!("{p}{s}"))
}

#[test]
fn mirror_routing_never_panics_and_only_routes_quotation_paths() {
    run_counted!("upbit::route (mirror path routing)", path_strategy(), |p| {
        if let Some(group) = route(&p) {
            let rest = p.strip_prefix("/v1/").unwrap();
            let known = [
                "market/all",
                "candles/seconds",
                "candles/days",
                "candles/weeks",
                "candles/months",
                "candles/years",
                "ticker",
                "ticker/all",
                "orderbook",
                "orderbook/instruments",
                "trades/ticks",
            ];
            let minutes = rest
                .strip_prefix("candles/minutes/")
                .is_some_and(|u| !u.is_empty() && u.len() <= 4 && u.bytes().all(|b| b.is_ascii_digit()));
            prop_assert!(known.contains(&rest) || minutes, "{p:?} routed to {group:?}");
        }
        Ok(())
    });
}

#[test]
fn remaining_req_parsing_never_panics() {
    run_counted!(
        "upbit::remaining_sec (Remaining-Req, arbitrary text)",
        any::<String>(),
        |s| {
            let _ = remaining_sec(&s);
            Ok(())
        },
    );
}

#[test]
fn remaining_req_parsing_reads_what_was_written() {
    let strategy = ("[a-z_-]{1,12}", any::<u32>(), any::<u32>(), 0usize..3, "[ ]{0,2}");
    run_counted!(
        "upbit::remaining_sec (well-formed headers, any order/spacing)",
        strategy,
        |(group, min, sec, order, sp)| {
            let parts = [
                format!("group={group}"),
                format!("min={min}"),
                format!("sec{sp}={sp}{sec}"),
            ];
            let mut ordered = parts.to_vec();
            ordered.rotate_left(order);
            let header = ordered.join(&format!(";{sp}"));
            prop_assert_eq!(remaining_sec(&header), Some(sec), "{}", header);
            Ok(())
        },
    );
}

fn retry_after() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[ -~]{0,12}",])
}

#[test]
fn block_time_parsing_never_panics_and_stays_bounded() {
    let body = prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        // Numbers of any size right before every unit the parser knows.
        (
            any::<u64>(),
            prop::sample::select(vec![
                "min",
                "minutes",
                "m",
                "분",
                "ms",
                "milliseconds",
                "s",
                "sec",
                "seconds",
                "초",
                "h",
                ""
            ]),
            "[ ]{0,2}"
        )
            .prop_map(|(n, unit, sp)| format!(r#"{{"error":{{"name":418,"message":"Blocked for {n}{sp}{unit}."}}}}"#)),
    ];
    run_counted!(
        "upbit::ban_duration (418 block time: Retry-After + body)",
        (retry_after(), body),
        |(ra, body)| {
            let mut h = http::HeaderMap::new();
            if let Some(v) = ra.and_then(|v| http::HeaderValue::from_str(&v).ok()) {
                h.insert(http::header::RETRY_AFTER, v);
            }
            let d = ban_duration(&h, body.as_bytes());
            prop_assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(24 * 3600),
                "{d:?} for {body:?}"
            );
            Ok(())
        },
    );
}

#[test]
fn block_time_parsing_reads_seconds_and_minutes() {
    run_counted!(
        "upbit::ban_duration (well-formed \"Blocked for N seconds|minutes\")",
        (1u64..=86_400, any::<bool>()),
        |(n, minutes)| {
            let h = http::HeaderMap::new();
            let unit = if minutes { "minutes" } else { "seconds" };
            let body =
                format!(r#"{{"error":{{"name":418,"message":"Too many API requests. Blocked for {n} {unit}."}}}}"#);
            let want = if minutes { (n * 60).min(86_400) } else { n };
            prop_assert_eq!(ban_duration(&h, body.as_bytes()), Duration::from_secs(want));
            Ok(())
        },
    );
}
