//! Property tests of every request parser of the localhost API: the `/db` body parsers with
//! arbitrary JSON in every field, the JSON→PostgreSQL parameter conversion for every supported type, the
//! `X-Makenaide-Deadline-Ms` and `X-Makenaide-Token` headers, and the whole request path (method, path, query
//! string, headers, body) through a real socket into [`crate::serve`] with a stub Upbit behind it. Zero panics,
//! every reply one of the contract's statuses with its JSON error body, never a 500.
//!
//! Cases per property: `PROPTEST_CASES` (default 2000), counted and recorded by
//! `makenaide_tests::run_counted!`.

#![allow(clippy::unwrap_used)]

use super::{check_token, deadline, parse_query, parse_transaction, HEADER_DEADLINE, HEADER_TOKEN};
use crate::config::{Config, Secret};
use crate::db::convert::{encode_param, write_value};
use crate::state::AppState;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use makenaide_tests::run_counted;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::types::Type;

const TOKEN: &str = "s3cret-token";

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::from),
        "[-+]?[0-9]{0,24}(\\.[0-9]{0,12})?([eE][-+]?[0-9]{1,4})?".prop_map(Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?"
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request-shaped bodies: the right keys with values of any type (plus stray keys), so the parsers' type checks
/// are exercised, not only the JSON syntax check.
fn body_value() -> impl Strategy<Value = Value> {
    let stmt = (
        prop::option::of(prop_oneof![".{0,30}".prop_map(Value::from), json_value()]),
        prop::option::of(json_value()),
    )
        .prop_map(|(sql, params)| {
            let mut m = serde_json::Map::new();
            if let Some(s) = sql {
                m.insert("sql".into(), s);
            }
            if let Some(p) = params {
                m.insert("params".into(), p);
            }
            Value::Object(m)
        })
        .boxed();
    let timeout = prop::option::of(prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        json_value(),
    ]);
    (
        prop_oneof![
            stmt.clone(),
            prop::collection::vec(prop_oneof![stmt, json_value()], 0..4).prop_map(|v| json!({"statements": v}))
        ],
        timeout,
        prop::option::of(("[a-z]{1,8}", json_value())),
    )
        .prop_map(|(mut body, timeout, stray)| {
            if let Value::Object(m) = &mut body {
                if let Some(t) = timeout {
                    m.insert("timeout_ms".into(), t);
                }
                if let Some((k, v)) = stray {
                    m.insert(k, v);
                }
            }
            body
        })
}

#[test]
fn db_body_parsers_never_panic_on_any_json() {
    run_counted!(
        "router::parse_query + parse_transaction (/db bodies, typed JSON)",
        body_value(),
        |body| {
            let bytes = serde_json::to_vec(&body).unwrap();
            for res in [parse_query(&bytes).map(|_| ()), parse_transaction(&bytes).map(|_| ())] {
                if let Err(e) = res {
                    prop_assert!(
                        matches!(
                            e.kind(),
                            makenaide_contract::ErrorCode::InvalidJson | makenaide_contract::ErrorCode::InvalidRequest
                        ),
                        "{} for {}",
                        e.code(),
                        body
                    );
                    prop_assert_eq!(e.status().as_u16(), 400);
                }
            }
            Ok(())
        },
    );
}

#[test]
fn db_body_parsers_never_panic_on_any_bytes() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        // Near-JSON: valid JSON with one byte changed.
        (body_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, i, b)| {
            let mut s = serde_json::to_vec(&v).unwrap();
            if !s.is_empty() {
                let at = i.index(s.len());
                s[at] = b;
            }
            s
        }),
    ];
    run_counted!(
        "router::parse_query + parse_transaction (/db bodies, raw bytes)",
        bytes,
        |b| {
            let _ = parse_query(&b);
            let _ = parse_transaction(&b);
            Ok(())
        },
    );
}

fn pg_types() -> Vec<Type> {
    vec![
        Type::BOOL,
        Type::INT2,
        Type::INT4,
        Type::INT8,
        Type::FLOAT4,
        Type::FLOAT8,
        Type::NUMERIC,
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::JSON,
        Type::JSONB,
        Type::TIMESTAMP,
        Type::TIMESTAMPTZ,
        Type::DATE,
        Type::TIME,
        Type::UUID,
        Type::BYTEA,
        Type::INTERVAL,
        Type::OID,
        Type::CHAR,
        Type::UNKNOWN,
        Type::BOOL_ARRAY,
        Type::INT2_ARRAY,
        Type::INT4_ARRAY,
        Type::INT8_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::NUMERIC_ARRAY,
        Type::TEXT_ARRAY,
        Type::VARCHAR_ARRAY,
        Type::JSONB_ARRAY,
        Type::TIMESTAMP_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::DATE_ARRAY,
        Type::UUID_ARRAY,
        Type::INET,
        Type::POINT,
    ]
}

#[test]
fn param_conversion_never_panics() {
    let types = pg_types();
    let n = types.len();
    run_counted!(
        "db::convert::encode_param (JSON -> PostgreSQL params, 38 types)",
        (json_value(), 0..n),
        |(v, t)| {
            let ty = &pg_types()[t];
            let raw = serde_json::value::to_raw_value(&v).unwrap();
            if let Err(msg) = encode_param(&raw, ty) {
                prop_assert!(!msg.is_empty(), "an error without a message");
            }
            Ok(())
        },
    );
    drop(types);
}

#[test]
fn result_decoding_never_panics() {
    let n = pg_types().len();
    run_counted!(
        "db::convert::write_value (PostgreSQL binary values -> JSON, 38 types)",
        (prop::collection::vec(any::<u8>(), 0..64), 0..n),
        |(raw, t)| {
            let mut out = Vec::new();
            if write_value(&pg_types()[t], &raw, &mut out).is_ok() {
                // Whatever it wrote is one JSON value.
                prop_assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok(),
                    "{}",
                    String::from_utf8_lossy(&out)
                );
            }
            Ok(())
        },
    );
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

#[test]
fn deadline_header_parsing_never_panics() {
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        "[0-9]{0,24}".prop_map(String::into_bytes),
        any::<u64>().prop_map(|n| n.to_string().into_bytes()),
        (0u64..100_000_000).prop_map(|d| (now_ms() + d).to_string().into_bytes()),
    ];
    run_counted!("router::deadline (X-Makenaide-Deadline-Ms)", value, |v| {
        let Ok(hv) = HeaderValue::from_bytes(&v) else {
            return Ok(());
        };
        let mut h = HeaderMap::new();
        h.insert(HEADER_DEADLINE, hv);
        match deadline(&h) {
            Ok(Some(at)) => {
                // Only a plausible absolute time becomes a deadline: at most 15 minutes (+ slack) ahead.
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                prop_assert!(left <= Duration::from_secs(16 * 60 + 1));
                let s = std::str::from_utf8(&v).unwrap().trim();
                prop_assert!(s.parse::<u64>().is_ok(), "{s:?} accepted");
            }
            // An implausible number (0, a duration, past, too far ahead) is ignored, never an error.
            Ok(None) => {
                let s = std::str::from_utf8(&v).unwrap().trim();
                let n: u64 = s.parse().unwrap();
                prop_assert!(
                    makenaide_contract::Deadline::classify(Some(n), now_ms()).at().is_none(),
                    "{n} ignored"
                );
            }
            Err(e) => prop_assert_eq!(e.kind(), makenaide_contract::ErrorCode::InvalidRequest),
        }
        Ok(())
    });
}

#[test]
fn token_check_accepts_only_the_token() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let state = AppState::new(Config {
        token: Secret::new(TOKEN),
        ..Config::default()
    })
    .unwrap();
    let value = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        Just(TOKEN.as_bytes().to_vec()),
        (0..TOKEN.len(), any::<u8>()).prop_map(|(i, b)| {
            let mut t = TOKEN.as_bytes().to_vec();
            t[i] = b;
            t
        }),
        "[ -~]{0,16}".prop_map(|s| format!("{TOKEN}{s}").into_bytes()),
    ];
    run_counted!(
        "router::check_token (X-Makenaide-Token)",
        prop::option::of(value),
        |v| {
            let mut h = HeaderMap::new();
            let mut sent = None;
            if let Some(hv) = v.as_ref().and_then(|b| HeaderValue::from_bytes(b).ok()) {
                h.insert(HEADER_TOKEN, hv);
                sent = v;
            }
            match (check_token(&state, &h), sent) {
                (Ok(()), Some(b)) => prop_assert_eq!(b, TOKEN.as_bytes().to_vec()),
                (Ok(()), None) => prop_assert!(false, "no token accepted"),
                (Err(e), None) => prop_assert_eq!(e.code(), makenaide_contract::ErrorCode::MissingToken.as_str()),
                (Err(e), Some(b)) => {
                    prop_assert_ne!(b, TOKEN.as_bytes().to_vec());
                    prop_assert_eq!(e.code(), makenaide_contract::ErrorCode::InvalidToken.as_str());
                }
            }
            Ok(())
        },
    );
}

/// A stub Upbit: every GET answers `200 []` with a `Remaining-Req` header.
async fn stub_upbit() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = http::Response::new(http_body_util::Full::new(Bytes::from_static(b"[]")));
                    r.headers_mut().insert(
                        "remaining-req",
                        HeaderValue::from_static("group=candles; min=600; sec=9"),
                    );
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[derive(Debug, Clone)]
struct RawRequest {
    method: String,
    target: String,
    token: Option<Vec<u8>>,
    deadline: Option<Vec<u8>>,
    forwarded: bool,
    body: Vec<u8>,
}

fn raw_request() -> impl Strategy<Value = RawRequest> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"]);
    let prefix = prop::sample::select(vec![
        "/ping",
        "/db/query",
        "/db/transaction",
        "/v1/candles/days",
        "/v1/candles/minutes/",
        "/v1/ticker",
        "/v1/market/all",
        "/v1/orderbook",
        "/v1/",
        "/v1/accounts",
        "/",
        "/__sim/",
    ]);
    let suffix = prop_oneof![3 => Just(String::new()), 1 => "[a-zA-Z0-9/._%~-]{0,16}"];
    let query = prop::option::of("[a-zA-Z0-9=&%,._+-]{0,40}");
    let token = prop_oneof![
        1 => Just(None),
        4 => Just(Some(TOKEN.as_bytes().to_vec())),
        1 => prop::collection::vec(32u8..127, 0..20).prop_map(Some),
    ];
    let deadline = prop_oneof![
        3 => Just(None),
        2 => (0u64..3000).prop_map(|d| Some((now_ms() + 2000 + d).to_string().into_bytes())),
        1 => "[0-9]{0,22}".prop_map(|s| Some(s.into_bytes())),
        1 => prop::collection::vec(32u8..127, 0..12).prop_map(Some),
    ];
    let body = prop_oneof![
        2 => Just(Vec::new()),
        3 => body_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (4000usize..6000).prop_map(|n| vec![b'x'; n]),
    ];
    (
        method,
        prefix,
        suffix,
        query,
        token,
        deadline,
        prop::bool::weighted(0.1),
        body,
    )
        .prop_map(
            |(method, prefix, suffix, query, token, deadline, forwarded, body)| RawRequest {
                method: method.to_string(),
                target: format!("{prefix}{suffix}{}", query.map(|q| format!("?{q}")).unwrap_or_default()),
                token,
                deadline,
                forwarded,
                body,
            },
        )
}

async fn send_raw(addr: SocketAddr, r: &RawRequest) -> (u16, String, Vec<u8>) {
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
        r.method, r.target
    )
    .into_bytes();
    if let Some(t) = &r.token {
        req.extend_from_slice(b"X-Makenaide-Token: ");
        req.extend_from_slice(t);
        req.extend_from_slice(b"\r\n");
    }
    if let Some(d) = &r.deadline {
        req.extend_from_slice(b"X-Makenaide-Deadline-Ms: ");
        req.extend_from_slice(d);
        req.extend_from_slice(b"\r\n");
    }
    if r.forwarded {
        req.extend_from_slice(b"X-Forwarded-For: 203.0.113.9\r\n");
    }
    req.extend_from_slice(format!("Content-Length: {}\r\n\r\n", r.body.len()).as_bytes());
    req.extend_from_slice(&r.body);
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may answer (413, 401, ...) and close before reading the whole body: a write error is fine.
    let _ = s.write_all(&req).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    (status, head, out[split..].to_vec())
}

#[test]
fn whole_requests_through_the_server_get_contract_answers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let upstream = stub_upbit().await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = AppState::new(Config {
            token: Secret::new(TOKEN),
            upbit_base_url: format!("http://{upstream}"),
            upbit_rate_per_sec: 1000,
            max_body_bytes: 4096,
            ..Config::default()
        })
        .unwrap();
        tokio::spawn(crate::serve(state, listener, std::future::pending()));
        addr
    });
    run_counted!(
        "server: method + path + query + token/deadline/X-Forwarded-For headers + body (real socket)",
        raw_request(),
        |r| {
            let (status, head, body) = rt.block_on(send_raw(addr, &r));
            prop_assert!(
                [200, 400, 401, 403, 404, 405, 413, 502, 503, 504].contains(&status),
                "status {status} for {r:?}: {head}"
            );
            let from_core = head.contains("x-makenaide-source: core");
            if status != 200 && r.method != "HEAD" && from_core {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                prop_assert!(
                    v["error"]["code"].is_string(),
                    "no JSON error body for {r:?}: {head} {body:?}"
                );
            }
            // Refusal rules come first, in the contract's order.
            if from_core {
                if r.forwarded {
                    prop_assert_eq!(status, 400, "{:?}", r);
                } else if r.target.split('?').next() != Some("/ping") {
                    if r.token.is_none() {
                        prop_assert_eq!(status, 401, "{:?}", r);
                    } else if r.token.as_deref() != Some(TOKEN.as_bytes()) {
                        prop_assert_eq!(status, 403, "{:?}", r);
                    }
                }
            }
            Ok(())
        },
    );
    // Still serving after every case.
    let (status, _, _) = rt.block_on(send_raw(
        addr,
        &RawRequest {
            method: "GET".into(),
            target: "/ping".into(),
            token: None,
            deadline: None,
            forwarded: false,
            body: Vec::new(),
        },
    ));
    assert_eq!(status, 200);
}
