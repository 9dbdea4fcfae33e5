//! The control API under `/__sim/...`, for the standalone binary (Docker compose, the main job, shell scripts):
//! the same stats and knobs `SimHandle` gives Rust tests. Not rate limited, not counted as Upbit requests.
//!
//! | route | body / query | effect |
//! |---|---|---|
//! | `GET /__sim/stats` | | `SimStats` JSON |
//! | `GET /__sim/config` | | current knobs (latency, rate limit, fault queue and probabilities, fixed now) |
//! | `POST /__sim/reset` | | knobs back to the start configuration; counters, blocks and served log cleared |
//! | `POST /__sim/latency` | `{"ms": 30}` | fixed added latency per request |
//! | `POST /__sim/rate-limit` | partial `RateLimit`, e.g. `{"enabled": false}` or `{"per_second": 5}` | |
//! | `POST /__sim/faults` | a `FaultRule` or an array, e.g. `{"kind":"server_error","status":503,"times":2,"group":"candles"}` | queued |
//! | `DELETE /__sim/faults` | | clears the queue and the probabilities |
//! | `POST /__sim/fault-probabilities` | partial `FaultProbabilities`, e.g. `{"reset": 0.1, "seed": 7}` | |
//! | `POST /__sim/now` | `{"now": "2026-01-05T12:00:00Z"}` or `{"now": null}` | fixed clock / real clock |
//! | `POST /__sim/close-connections` | `{"reset": false}` | server-side close of every open connection |
//! | `GET /__sim/served` | `?market=&interval=` | the served-candle log (`ServedCandle` array) |
//! | `GET /__sim/expected-candles` | `?market=&interval=days&to=&count=` | what a candle call would answer now |

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::api::Query;
use super::faults::{FaultProbabilities, FaultRule};
use super::limiter::RateLimit;
use super::model::{parse_to, Interval};
use super::server::{lock, response, Shared, SimBody};

const MAX_BODY: usize = 1 << 20;

fn ok(v: &impl Serialize) -> Response<SimBody> {
    response(
        200,
        "application/json",
        SimBody::full(serde_json::to_vec(v).unwrap_or_default()),
    )
}

fn err(status: u16, msg: impl std::fmt::Display) -> Response<SimBody> {
    response(
        status,
        "application/json",
        SimBody::full(json!({"error": msg.to_string()}).to_string()),
    )
}

/// Applies a JSON patch (an object with some of the fields) to `cur`.
fn patch<T: Serialize + DeserializeOwned>(cur: &T, body: &Value) -> Result<T, String> {
    let mut v = serde_json::to_value(cur).map_err(|e| e.to_string())?;
    let (Value::Object(dst), Value::Object(src)) = (&mut v, body) else {
        return Err("expected a JSON object".into());
    };
    for (k, x) in src {
        if !dst.contains_key(k) {
            return Err(format!("unknown field `{k}`"));
        }
        dst.insert(k.clone(), x.clone());
    }
    serde_json::from_value(v).map_err(|e| e.to_string())
}

pub(crate) async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = Query::parse(req.uri().query().unwrap_or(""));
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return err(400, e),
    };
    if body.len() > MAX_BODY {
        return err(413, "body too large");
    }
    let parsed: Result<Value, String> = if body.is_empty() {
        Ok(json!({}))
    } else {
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    };
    let route = path.trim_start_matches("/__sim").trim_end_matches('/');
    match (method, route) {
        (Method::GET, "/stats") => ok(&shared.snapshot()),
        (Method::GET, "/config") => {
            let k = lock(&shared.knobs).clone();
            ok(&json!({
                "latency_ms": k.latency.as_millis() as u64,
                "rate_limit": k.rate_limit,
                "faults": k.queue,
                "fault_probabilities": k.probabilities,
                "now": k.now,
                "markets": shared.data.catalog.markets.len(),
            }))
        }
        (Method::POST, "/reset") => {
            shared.reset();
            ok(&json!({"ok": true}))
        }
        (Method::POST, "/latency") => {
            let v = match &parsed {
                Ok(v) => v.clone(),
                Err(e) => return err(400, e),
            };
            let Some(ms) = v.get("ms").and_then(Value::as_u64) else {
                return err(400, "expected {\"ms\": <u64>}");
            };
            lock(&shared.knobs).latency = std::time::Duration::from_millis(ms);
            ok(&json!({"latency_ms": ms}))
        }
        (Method::POST, "/rate-limit") => {
            let v = match &parsed {
                Ok(v) => v.clone(),
                Err(e) => return err(400, e),
            };
            let mut k = lock(&shared.knobs);
            match patch::<RateLimit>(&k.rate_limit, &v) {
                Ok(rl) => {
                    k.rate_limit = rl.clone();
                    ok(&rl)
                }
                Err(e) => err(400, e),
            }
        }
        (Method::POST, "/faults") => {
            let v = match &parsed {
                Ok(v) => v.clone(),
                Err(e) => return err(400, e),
            };
            let rules: Result<Vec<FaultRule>, _> = match v {
                Value::Array(_) => serde_json::from_value(v),
                other => serde_json::from_value(other).map(|r| vec![r]),
            };
            match rules {
                Ok(rules) => {
                    let mut k = lock(&shared.knobs);
                    k.queue.extend(rules);
                    ok(&k.queue)
                }
                Err(e) => err(400, e),
            }
        }
        (Method::DELETE, "/faults") => {
            let mut k = lock(&shared.knobs);
            k.queue.clear();
            k.probabilities = FaultProbabilities::default();
            ok(&json!({"ok": true}))
        }
        (Method::POST, "/fault-probabilities") => {
            let v = match &parsed {
                Ok(v) => v.clone(),
                Err(e) => return err(400, e),
            };
            let mut k = lock(&shared.knobs);
            match patch::<FaultProbabilities>(&k.probabilities, &v) {
                Ok(p) => {
                    k.probabilities = p.clone();
                    ok(&p)
                }
                Err(e) => err(400, e),
            }
        }
        (Method::POST, "/now") => {
            let v = match &parsed {
                Ok(v) => v.clone(),
                Err(e) => return err(400, e),
            };
            let now = match v.get("now") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => match parse_to(s) {
                    Some(t) => Some(t),
                    None => return err(400, format!("cannot parse time `{s}`")),
                },
                Some(_) => return err(400, "expected {\"now\": \"<RFC 3339>\" | null}"),
            };
            lock(&shared.knobs).now = now;
            ok(&json!({"now": now}))
        }
        (Method::POST, "/close-connections") => {
            let v = match &parsed {
                Ok(v) => v.clone(),
                Err(e) => return err(400, e),
            };
            shared.close_connections(v.get("reset").and_then(Value::as_bool).unwrap_or(false));
            ok(&json!({"ok": true}))
        }
        (Method::GET, "/served") => {
            let market = q.get(&["market"]);
            let interval = q.get(&["interval"]);
            let served: Vec<_> = lock(&shared.served)
                .iter()
                .filter(|s| market.is_none_or(|m| s.market == m) && interval.is_none_or(|i| s.interval == i))
                .cloned()
                .collect();
            ok(&served)
        }
        (Method::GET, "/expected-candles") => {
            let Some(market) = q.get(&["market"]) else {
                return err(400, "market is required");
            };
            let Some(interval) = Interval::parse(q.get(&["interval"]).unwrap_or("days")) else {
                return err(
                    400,
                    "bad interval (seconds, minutes/<unit>, days, weeks, months, years)",
                );
            };
            let to = match q.get(&["to"]) {
                None => None,
                Some(t) => match parse_to(t) {
                    Some(t) => Some(t),
                    None => return err(400, format!("cannot parse `to` {t}")),
                },
            };
            let count = q
                .get(&["count"])
                .and_then(|c| c.parse::<usize>().ok())
                .unwrap_or(1)
                .min(super::api::MAX_CANDLES);
            match shared.data.candles(market, interval, to, count, shared.now(), false) {
                Some(c) => ok(&c),
                None => err(404, "unknown market"),
            }
        }
        _ => err(404, format!("no control route {path}")),
    }
}
