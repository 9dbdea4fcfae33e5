//! The seven figures of the benchmark suite. Each measures its variants side by side in the same run (interleaved where the
//! variants can live at once) and stores what it measured in the [`Report`](super::Report); none asserts a
//! timing. Correctness is checked where it is cheap (every invocation must succeed and store its rows), so a
//! fast wrong answer can never pass for a fast answer.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::direct::{self, ROW_UPSERT_SQL};
use super::report::{
    Bulk, BulkRun, Cold, ColdVariant, Hop, HopRow, OutsideHandler, SizeRow, Sizes, Throughput, ThroughputRun, Variant,
    Warm,
};
use super::stats::{median, ratio, Summary};
use super::{Bench, ENV_UPBIT_CACHE_TTL_MS, ENV_UPBIT_RATE_PER_SEC};
use crate::error::{HarnessError, Result};
use crate::lambda_env::{InvokeOutcome, LambdaEnv, EXTENSION};
use crate::upbit_sim::{Catalog, Interval as SimInterval, RateLimit, SimConfig, SimHandle, UpbitSim};
use makenaide_pipeline::collector::{upsert_statement, Interval, ROWS_PER_STATEMENT};
use makenaide_pipeline::upbit::Candle;
use makenaide_pipeline::CoreClient;

/// Warm-up invocations per variant before figure 1 measures (connections, caches, branch predictors).
pub const WARMUP_COUNT: usize = 10;
/// KRW markets of the throughput and bulk figures (Upbit's count at the time of the issue).
const MARKETS: usize = 230;
/// Candles per market in the bulk figure (one Upbit page).
const BULK_CANDLES: usize = 200;
/// Upbit's quotation limit, requests/s per group.
const UPBIT_LIMIT_PER_SEC: f64 = 10.0;
/// Latency the throughput figure adds to each simulated Upbit request.
const THROUGHPUT_LATENCY: Duration = Duration::from_millis(30);
/// The statement size the collector used before `ROWS_PER_STATEMENT` became 1,000 (figure 5 compares both).
const LARGE_STATEMENT_ROWS: usize = 5000;
/// Requests per block in figure 2 (variants rotate block by block so drift hits them alike).
const HOP_BLOCK: usize = 100;

fn state(msg: impl Into<String>) -> HarnessError {
    HarnessError::State(msg.into())
}

/// A simulated Upbit with 230 KRW markets, no latency and no enforced limit (figures 1-3): the warm figure must
/// measure the request path, not the 10/s budget (200 invocations × 3 variants would need a minute of budget).
async fn free_sim() -> Result<SimHandle> {
    Ok(UpbitSim::start(SimConfig {
        catalog: Catalog::with_krw_markets(MARKETS),
        rate_limit: RateLimit {
            enabled: false,
            // Remaining-Req keeps reporting; a huge budget keeps it from ever saying `sec=0`.
            per_second: 1_000_000,
            ..RateLimit::default()
        },
        record_served: false,
        ..SimConfig::default()
    })
    .await?)
}

/// The successful result object of an invocation whose `rows_stored` must be `rows`.
fn expect_rows(out: &InvokeOutcome, rows: u64, what: &str) -> Result<Value> {
    let v = out.ok().map_err(|e| state(format!("{what}: {e}")))?;
    let result = v
        .get("result")
        .cloned()
        .ok_or_else(|| state(format!("{what}: no result in {v}")))?;
    let stored = result.get("rows_stored").and_then(Value::as_u64);
    if stored != Some(rows) {
        return Err(state(format!(
            "{what}: stored {stored:?} rows, expected {rows}: {result}"
        )));
    }
    Ok(result)
}

fn collect_event(markets: &[String], count: u32) -> Value {
    json!({"markets": markets, "interval": "days", "count": count})
}

/// Peak RSS of an environment's processes into the report.
fn record_memory(b: &mut Bench, env: &LambdaEnv, function_label: &str, phase: &str) {
    if let Some(p) = env.extension(EXTENSION) {
        if let Some(kib) = p.peak_rss_kib() {
            b.report.add_memory("extension makenaide-core", phase, kib);
        }
    }
    if let Some(kib) = env.runtime().peak_rss_kib() {
        b.report.add_memory(function_label, phase, kib);
    }
}

pub const LABEL_A: &str = "makenaide-core (extension + Rust function)";
pub const LABEL_B: &str = "Python baseline (awslambdaric, requests, psycopg2)";
pub const LABEL_C: &str = "Rust function, no extension, PG connect per invocation";
/// Variant (d): the floor any sidecar design is measured against.
pub const LABEL_D: &str = "Rust function, no extension, warm PG connection kept in-process (the floor)";
pub const LABEL_E: &str = "Python collector on the layer (awslambdaric, makenaide_core)";
/// (a) with the extension's metrics (Telemetry API + EMF) switched off: shows what they cost per invocation.
pub const LABEL_A_OFF: &str = "makenaide-core, MAKENAIDE_METRICS=off";
/// The extension's switch for its metrics (README "Metrics").
const METRICS_ENV: &str = "MAKENAIDE_METRICS";
pub const MEM_RUST_FN: &str = "function makenaide-data-collector";
pub const MEM_PY_FN: &str = "function Python baseline";
pub const MEM_DIRECT_FN: &str = "function bench-direct-collector";
pub const MEM_PY_LAYER_FN: &str = "function Python collector on the layer";

/// Figure 1: warm invocations, 1 market × 3 candles, the three variants interleaved invocation by invocation.
pub async fn warm(b: &mut Bench) -> Result<()> {
    let sim = free_sim().await?;
    let url = sim.base_url();
    // The extension's short cache would answer the repeated identical GET itself: off, so every invocation
    // really goes to Upbit as the other variants do. Its governor must not pace a no-limit simulator either.
    let a = LambdaEnv::start(
        b.core_env(&url)
            .env(ENV_UPBIT_CACHE_TTL_MS, "0")
            .env(ENV_UPBIT_RATE_PER_SEC, "1000"),
    )
    .await?;
    let py = LambdaEnv::start(b.python_env(&url)).await?;
    let c = LambdaEnv::start(b.direct_env(&url)).await?;
    let d = LambdaEnv::start(b.direct_kept_env(&url)).await?;
    let a_off = LambdaEnv::start(
        b.core_env(&url)
            .env(ENV_UPBIT_CACHE_TTL_MS, "0")
            .env(ENV_UPBIT_RATE_PER_SEC, "1000")
            .env(METRICS_ENV, "off"),
    )
    .await?;
    let (_layer, e_cfg) = b.python_layer_env(&url)?;
    let e = LambdaEnv::start(
        e_cfg
            .env(ENV_UPBIT_CACHE_TTL_MS, "0")
            .env(ENV_UPBIT_RATE_PER_SEC, "1000"),
    )
    .await?;
    let envs = [&a, &py, &c, &a_off, &d, &e];
    let event = collect_event(&["KRW-BTC".to_string()], 3);
    for env in envs {
        for _ in 0..WARMUP_COUNT {
            let out = env.invoke(event.clone()).await?;
            expect_rows(&out, 3, "warm-up")?;
        }
    }
    let n = b.opts.warm;
    let mut samples: [Vec<Duration>; 6] = Default::default();
    let mut handler: [Vec<Duration>; 6] = Default::default();
    let mut parts: [[Vec<Duration>; 3]; 6] = Default::default();
    for i in 0..n {
        for (k, env) in envs.iter().enumerate() {
            let pending = env.start_invoke(event.clone()).await?;
            let out = env.wait_invoke(&pending).await?;
            expect_rows(&out, 3, &format!("warm invocation {i}"))?;
            samples[k].push(out.duration);
            let secs = out
                .response
                .as_ref()
                .and_then(|r| r.get("execution_time"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let handler_time = Duration::from_secs_f64(secs);
            handler[k].push(handler_time);
            if let Some(split) = harness_split(env, &pending.request_id, pending.enqueued_at, handler_time) {
                for (into, d) in parts[k].iter_mut().zip(split) {
                    into.push(d);
                }
            }
        }
    }
    let keys = ["a", "b", "c", "a-off", "d", "e"];
    let outside: Vec<OutsideHandler> = parts
        .iter()
        .zip(keys)
        .map(|([delivery, runtime, forward], key)| OutsideHandler {
            key: key.into(),
            delivery: Summary::of(delivery),
            runtime: Summary::of(runtime),
            forward: Summary::of(forward),
        })
        .collect();
    let [sa, sb, sc, s_off, sd, se] = samples.map(|s| Summary::of(&s));
    let [ha, hb, hc, h_off, hd, he] = handler.map(|s| Summary::of(&s));
    record_memory(b, &a, MEM_RUST_FN, "warm (fig. 1)");
    record_memory(b, &py, MEM_PY_FN, "warm (fig. 1)");
    record_memory(b, &c, MEM_DIRECT_FN, "warm (fig. 1)");
    record_memory(b, &e, MEM_PY_LAYER_FN, "warm (fig. 1)");
    let warm = Warm {
        n,
        variants: vec![
            Variant::new("a", LABEL_A, sa, ha),
            Variant::new("b", LABEL_B, sb, hb),
            Variant::new("c", LABEL_C, sc, hc),
            Variant::new("a-off", LABEL_A_OFF, s_off, h_off),
            Variant::new("d", LABEL_D, sd, hd),
            Variant::new("e", LABEL_E, se, he),
        ],
        outside,
        handler_ratio_b_over_a_p50: ratio(hb.p50_us, ha.p50_us),
        handler_ratio_a_over_d_p50: ratio(ha.p50_us, hd.p50_us),
        ratio_b_over_a_p50: ratio(sb.p50_us, sa.p50_us),
        ratio_b_over_a_p99: ratio(sb.p99_us, sa.p99_us),
        ratio_c_over_a_p50: ratio(sc.p50_us, sa.p50_us),
    };
    eprintln!(
        "   warm p50: a {:.2} ms, b {:.2} ms, c {:.2} ms, d {:.2} ms, e {:.2} ms -> b/a {:.1}x; handler a/d {:.2}x, b/a {:.1}x",
        sa.p50_ms(),
        sb.p50_ms(),
        sc.p50_ms(),
        sd.p50_ms(),
        se.p50_ms(),
        warm.ratio_b_over_a_p50,
        warm.handler_ratio_a_over_d_p50,
        warm.handler_ratio_b_over_a_p50
    );
    b.report.warm = Some(warm);
    Ok(())
}

/// Where an invocation's time outside the handler goes, from the front's journal (see [`OutsideHandler`]):
/// enqueue → the event leaves the simulator; that → the runtime's response reaches the front, minus the handler;
/// the front forwarding the response to the simulator.
fn harness_split(env: &LambdaEnv, request_id: &str, enqueued: Instant, handler: Duration) -> Option<[Duration; 3]> {
    use crate::lambda_env::journal::ApiEventKind;
    let events = env.journal().events();
    let mut delivered = None;
    let mut forwarded = None;
    for e in events.iter().rev() {
        match &e.kind {
            ApiEventKind::RuntimeInvocationReceived { request_id: r } if r == request_id => delivered = Some(e.at),
            ApiEventKind::RuntimeResponseForwarded {
                request_id: r,
                received,
            } if r == request_id => {
                forwarded = Some((*received, e.at));
            }
            _ => {}
        }
        if delivered.is_some() && forwarded.is_some() {
            break;
        }
    }
    let (delivered, (received, acked)) = (delivered?, forwarded?);
    Some([
        delivered.saturating_duration_since(enqueued),
        received.saturating_duration_since(delivered).saturating_sub(handler),
        acked.saturating_duration_since(received),
    ])
}

/// Figure 2: `select 1` through the extension's `/db/query` (the functions' own keep-alive client) against the
/// same query on a warm direct tokio-postgres TLS connection; `/ping` shows the HTTP hop alone. Measured from a
/// current-thread runtime on its own thread (as the functions run), blocks of each variant in rotation.
pub async fn hop(b: &mut Bench) -> Result<()> {
    let sim = free_sim().await?;
    let env = LambdaEnv::start(
        b.core_env(&sim.base_url())
            .freeze(false)
            .env(ENV_UPBIT_CACHE_TTL_MS, "0")
            .env(ENV_UPBIT_RATE_PER_SEC, "1000"),
    )
    .await?;
    // The same extension with its metrics switched off: what counting every request costs on the hop.
    let env1 = LambdaEnv::start(
        b.core_env(&sim.base_url())
            .freeze(false)
            .env(ENV_UPBIT_CACHE_TTL_MS, "0")
            .env(ENV_UPBIT_RATE_PER_SEC, "1000")
            .env(METRICS_ENV, "off"),
    )
    .await?;
    let ext = [
        (env.core_port(), env.core_token().to_string()),
        (env1.core_port(), env1.core_token().to_string()),
    ];
    let (url, ca, n) = (b.direct_url.clone(), b.ca.clone(), b.opts.hop);
    let sim_port = sim.addr().port();
    type Rows = Vec<(String, Vec<Duration>)>;
    let (raw, parts) = tokio::task::spawn_blocking(move || -> Result<(Rows, Rows)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let main_port = ext[0].clone();
        let raw = rt.block_on(hop_loop(ext, url.clone(), ca.clone(), n))?;
        let parts = rt.block_on(components(main_port, sim_port, url, ca))?;
        Ok((raw, parts))
    })
    .await
    .map_err(|e| state(format!("hop thread: {e}")))??;
    record_memory(b, &env, MEM_RUST_FN, "hop (fig. 2)");
    let rows: Vec<HopRow> = raw
        .into_iter()
        .map(|(name, s)| HopRow {
            name,
            summary: Summary::of(&s),
        })
        .collect();
    let get = |prefix: &str| {
        rows.iter()
            .find(|r| r.name.starts_with(prefix))
            .map(|r| r.summary)
            .unwrap_or_default()
    };
    let (ext, floor) = (get(HOP_QUERY), get(HOP_DIRECT));
    let hop = Hop {
        added_p50_us: ext.p50_us - floor.p50_us,
        added_p99_us: ext.p99_us - floor.p99_us,
        rows,
        components: parts
            .into_iter()
            .map(|(name, s)| HopRow {
                name,
                summary: Summary::of(&s),
            })
            .collect(),
    };
    eprintln!(
        "   select 1: extension p50 {:.1} µs, direct p50 {:.1} µs -> +{:.1} µs",
        ext.p50_us, floor.p50_us, hop.added_p50_us
    );
    b.report.hop = Some(hop);
    drop(env);
    drop(env1);
    Ok(())
}

const HOP_PING: &str = "extension GET /ping (HTTP hop only, no DB)";
pub const HOP_QUERY: &str = "extension /db/query `select 1` (function's client)";
const HOP_QUERY_1W: &str = "extension /db/query `select 1`, MAKENAIDE_METRICS=off";
const HOP_PING_1W: &str = "extension GET /ping, MAKENAIDE_METRICS=off";
pub const HOP_DIRECT: &str = "direct, prepared `select 1` (warm TLS connection)";
const HOP_DIRECT_UNPREPARED: &str = "direct, unprepared `select 1` (warm TLS connection)";
const HOP_DIRECT_TX: &str =
    "direct, the extension's wire shape: `BEGIN; SET LOCAL statement_timeout` pipelined with `select 1`, then `COMMIT`";
const HOP_DIRECT_TX_NO_SET: &str = "direct, `BEGIN` pipelined with `select 1`, then `COMMIT`";

async fn hop_loop(
    ext: [(u16, String); 2],
    url: String,
    ca: std::path::PathBuf,
    n: usize,
) -> Result<Vec<(String, Vec<Duration>)>> {
    let [(p0, t0), (p1, t1)] = ext;
    let cores = [CoreClient::new(p0, t0), CoreClient::new(p1, t1)];
    let pg = direct::connect_tls(&url, &ca).await?;
    let stmt = pg.prepare("select 1").await?;
    let body = json!({"sql": "select 1"});
    let names = [
        HOP_PING,
        HOP_QUERY,
        HOP_PING_1W,
        HOP_QUERY_1W,
        HOP_DIRECT,
        HOP_DIRECT_UNPREPARED,
        HOP_DIRECT_TX,
        HOP_DIRECT_TX_NO_SET,
    ];
    let mut out: Vec<Vec<Duration>> = vec![Vec::with_capacity(n); names.len()];
    let err = |e: makenaide_pipeline::PipelineError| state(format!("extension: {e}"));
    let query = |core: &CoreClient| {
        let (core, body) = (core.clone(), body.clone());
        async move {
            let v: Value = core.post_json("/db/query", &body).await.map_err(err)?;
            if v.pointer("/rows/0/0") != Some(&json!(1)) {
                return Err(state(format!("select 1 answered {v}")));
            }
            Ok(())
        }
    };
    // Warm-up: connections, prepared-statement caches.
    for _ in 0..200 {
        for core in &cores {
            core.ping().await.map_err(err)?;
            query(core).await?;
        }
        pg.query_one(&stmt, &[]).await?;
    }
    let mut done = 0;
    while done < n {
        let block = HOP_BLOCK.min(n - done);
        for (k, samples) in out.iter_mut().enumerate() {
            for _ in 0..block {
                let t = Instant::now();
                match k {
                    0 | 2 => {
                        cores[k / 2].ping().await.map_err(err)?;
                    }
                    1 | 3 => query(&cores[k / 2]).await?,
                    4 => {
                        let r: i32 = pg.query_one(&stmt, &[]).await?.get(0);
                        if r != 1 {
                            return Err(state("select 1 != 1"));
                        }
                    }
                    5 => {
                        let r: i32 = pg.query_one("select 1", &[]).await?.get(0);
                        if r != 1 {
                            return Err(state("select 1 != 1"));
                        }
                    }
                    _ => {
                        let begin = if k == 6 {
                            "BEGIN; SET LOCAL statement_timeout = 10000"
                        } else {
                            "BEGIN"
                        };
                        // tokio-postgres pipelines requests issued together on one client.
                        let (b, r) = futures_join(pg.batch_execute(begin), pg.query_one(&stmt, &[])).await;
                        b?;
                        let r: i32 = r?.get(0);
                        pg.batch_execute("COMMIT").await?;
                        if r != 1 {
                            return Err(state("select 1 != 1"));
                        }
                    }
                }
                samples.push(t.elapsed());
            }
        }
        done += block;
    }
    Ok(names.iter().map(|s| s.to_string()).zip(out).collect())
}

/// Both futures polled together (the first one first), like `futures::join`.
async fn futures_join<A: std::future::Future, B: std::future::Future>(a: A, b: B) -> (A::Output, B::Output) {
    tokio::join!(a, b)
}

/// Candle GETs per row of [`components`]: under the 1,000/s governor the hop environment is given.
const COMPONENT_SAMPLES: usize = 300;

/// The two calls of a warm collector invocation, each through the extension and directly: where (a)'s handler
/// time goes.
async fn components(
    ext: (u16, String),
    sim_port: u16,
    url: String,
    ca: std::path::PathBuf,
) -> Result<Vec<(String, Vec<Duration>)>> {
    let core = CoreClient::new(ext.0, ext.1);
    let sim = CoreClient::new(sim_port, "");
    let path = "/v1/candles/days?market=KRW-BTC&count=3";
    let err = |e: makenaide_pipeline::PipelineError| state(format!("components: {e}"));
    let candles: Vec<Candle> = core.upbit_get(path).await.map_err(err)?;
    let st = upsert_statement(Interval::Days, &candles);
    let pg = direct::connect_tls(&url, &ca).await?;
    let prepared = pg.prepare(&st.sql).await?;
    let mut cols = direct::Columns::default();
    for c in &candles {
        cols.push(c);
    }
    let names = [
        "GET 3 day candles through the extension (Upbit sim, keep-alive)",
        "GET 3 day candles from the Upbit sim directly (same client)",
        "collector's upsert of 3 candles through the extension /db/query",
        "the same upsert on a warm direct connection (prepared, autocommit)",
    ];
    let mut out: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for round in 0..(COMPONENT_SAMPLES + 20) {
        for (k, samples) in out.iter_mut().enumerate() {
            let t = Instant::now();
            match k {
                0 => {
                    let _: Vec<Candle> = core.upbit_get(path).await.map_err(err)?;
                }
                1 => {
                    let _: Vec<Candle> = sim.upbit_get(path).await.map_err(err)?;
                }
                2 => {
                    makenaide_pipeline::db::query(&core, &st.sql, &st.params, None)
                        .await
                        .map_err(err)?;
                }
                _ => {
                    pg.query(
                        &prepared,
                        &[
                            &"days",
                            &cols.market,
                            &cols.utc,
                            &cols.kst,
                            &cols.open,
                            &cols.high,
                            &cols.low,
                            &cols.close,
                            &cols.volume,
                            &cols.turnover,
                            &cols.ts,
                        ],
                    )
                    .await?;
                }
            }
            if round >= 20 {
                samples.push(t.elapsed());
            }
        }
    }
    Ok(names.iter().map(|s| s.to_string()).zip(out).collect())
}

/// `elapsed_us=N` (text logs) or `"elapsed_us":N` (JSON logs) of the first extension line containing `what`.
fn logged_elapsed_us(env: &LambdaEnv, what: &str) -> Option<f64> {
    env.logs()
        .iter()
        .filter(|l| l.process == EXTENSION && l.line.contains(what))
        .find_map(|l| {
            let i = l.line.find("elapsed_us")? + "elapsed_us".len();
            let digits: String = l.line[i..]
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        })
}

/// Figure 3: cold starts, process spawn to the first response, the three variants in rotation.
pub async fn cold(b: &mut Bench) -> Result<()> {
    let sim = free_sim().await?;
    let url = sim.base_url();
    let event = collect_event(&["KRW-ETH".to_string()], 3);
    let (_layer, e_cfg) = b.python_layer_env(&url)?;
    let cfgs = [
        ("a", LABEL_A, b.core_env(&url)),
        ("b", LABEL_B, b.python_env(&url)),
        ("c", LABEL_C, b.direct_env(&url)),
        ("e", LABEL_E, e_cfg),
    ];
    let k = b.opts.cold;
    let mut init: [Vec<f64>; 4] = Default::default();
    let mut first: [Vec<f64>; 4] = Default::default();
    let mut total: [Vec<f64>; 4] = Default::default();
    let (mut reg_log, mut ready_log, mut reg_spawn, mut ready_spawn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..k {
        for (j, (_, label, cfg)) in cfgs.iter().enumerate() {
            let env = LambdaEnv::start(cfg.clone()).await?;
            let out = env.invoke(event.clone()).await?;
            expect_rows(&out, 3, &format!("cold start {i} of {label}"))?;
            let rep = env.init_report().clone();
            let init_ms = rep.init_duration.as_secs_f64() * 1e3;
            let first_ms = out.duration.as_secs_f64() * 1e3;
            init[j].push(init_ms);
            first[j].push(first_ms);
            total[j].push(init_ms + first_ms);
            // The extension's own start-up figures come from (a) alone, as before (e) was added.
            if let Some(ext) = rep.extensions.iter().find(|e| e.name == EXTENSION && j == 0) {
                reg_spawn.push(ext.spawn_to_registered.as_secs_f64() * 1e3);
                ready_spawn.push(ext.spawn_to_first_next.as_secs_f64() * 1e3);
                reg_log.extend(logged_elapsed_us(&env, "extension registered"));
                ready_log.extend(logged_elapsed_us(&env, "extension ready"));
            }
            if i + 1 == k {
                let (mem_label, phase) = match j {
                    0 => (MEM_RUST_FN, "cold start (fig. 3)"),
                    1 => (MEM_PY_FN, "cold start (fig. 3)"),
                    2 => (MEM_DIRECT_FN, "cold start (fig. 3)"),
                    _ => (MEM_PY_LAYER_FN, "cold start (fig. 3)"),
                };
                record_memory(b, &env, mem_label, phase);
            }
            drop(env);
        }
    }
    let variants: Vec<ColdVariant> = cfgs
        .iter()
        .enumerate()
        .map(|(j, (key, label, _))| ColdVariant {
            key: key.to_string(),
            name: label.to_string(),
            n: k,
            init_ms: median(&init[j]),
            first_invoke_ms: median(&first[j]),
            first_response_ms: median(&total[j]),
            first_response_max_ms: total[j].iter().cloned().fold(0.0, f64::max),
        })
        .collect();
    let cold = Cold {
        added_by_extension_ms: variants[0].first_response_ms - variants[2].first_response_ms,
        ratio_b_over_a: ratio(variants[1].first_response_ms, variants[0].first_response_ms),
        ext_registered_log_us: median(&reg_log),
        ext_ready_log_us: median(&ready_log),
        ext_spawn_to_registered_ms: median(&reg_spawn),
        ext_spawn_to_registered_max_ms: reg_spawn.iter().cloned().fold(0.0, f64::max),
        ext_spawn_to_ready_ms: median(&ready_spawn),
        variants,
    };
    eprintln!(
        "   first response p50: a {:.1} ms, b {:.1} ms, c {:.1} ms, e {:.1} ms; registered {:.2} ms after spawn",
        cold.variants[0].first_response_ms,
        cold.variants[1].first_response_ms,
        cold.variants[2].first_response_ms,
        cold.variants[3].first_response_ms,
        cold.ext_spawn_to_registered_ms
    );
    b.report.cold = Some(cold);
    Ok(())
}

/// Figure 4: 230 markets × 3 day candles under a simulated Upbit enforcing 10 requests/s per group with 30 ms of
/// latency: makenaide-core (concurrent fetches paced by the extension's governor) against the old approach (the
/// Python baseline: serial, fixed 50 ms sleep, no reaction to 429).
pub async fn throughput(b: &mut Bench) -> Result<()> {
    let sim = UpbitSim::start(SimConfig {
        catalog: Catalog::with_krw_markets(MARKETS),
        latency: THROUGHPUT_LATENCY,
        rate_limit: RateLimit::default(),
        record_served: false,
        ..SimConfig::default()
    })
    .await?;
    let url = sim.base_url();
    let markets: Vec<String> = sim
        .catalog()
        .markets
        .iter()
        .filter(|m| m.quote() == "KRW")
        .map(|m| m.code.clone())
        .collect();
    let event = collect_event(&markets, 3);
    let mut runs = Vec::new();
    for (label, cfg, mem_label) in [
        (
            "makenaide-core (collector, 8 in flight, extension governor)",
            b.core_env(&url),
            MEM_RUST_FN,
        ),
        (
            "old approach: Python baseline, serial + sleep(0.05)",
            b.python_env(&url),
            MEM_PY_FN,
        ),
    ] {
        b.truncate().await?;
        sim.reset();
        let expected: u64 = markets
            .iter()
            .map(|m| {
                sim.expected_candles(m, SimInterval::Days, None, 3)
                    .map(|v| v.len() as u64)
                    .unwrap_or(0)
            })
            .sum();
        let env = LambdaEnv::start(cfg).await?;
        let out = env.invoke(event.clone()).await?;
        let wall = out.duration.as_secs_f64();
        let stats = sim.stats();
        let result = out
            .ok()
            .map_err(|e| state(format!("throughput run {label}: {e}")))?
            .get("result")
            .cloned()
            .unwrap_or(Value::Null);
        let failed = result
            .get("failed")
            .and_then(Value::as_object)
            .map(|m| m.len())
            .unwrap_or(0);
        let rows = b.count_rows().await? as u64;
        let requests = stats.group("candles");
        runs.push(ThroughputRun {
            name: label.to_string(),
            markets: markets.len(),
            wall_s: wall,
            candle_requests: requests,
            responses_429: stats.responses_429,
            responses_418: stats.responses_418,
            rows_stored: rows,
            rows_expected: expected,
            failed_markets: failed,
            pct_of_limit: 100.0 * markets.len() as f64 / wall / UPBIT_LIMIT_PER_SEC,
        });
        eprintln!(
            "   {label}: {wall:.2} s, {requests} requests, {} x 429, {} x 418, rows {rows}/{expected}",
            stats.responses_429, stats.responses_418
        );
        record_memory(b, &env, mem_label, "230 markets (fig. 4)");
        drop(env);
    }
    b.report.throughput = Some(Throughput {
        bound_s: markets.len() as f64 / UPBIT_LIMIT_PER_SEC,
        limit_per_s: UPBIT_LIMIT_PER_SEC,
        latency_ms: THROUGHPUT_LATENCY.as_millis() as u64,
        runs,
    });
    Ok(())
}

/// 200 synthetic day candles per market for 230 markets (unique keys, Upbit's field formats).
fn bulk_rows() -> Vec<Candle> {
    let base = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default();
    let mut rows = Vec::with_capacity(MARKETS * BULK_CANDLES);
    for m in 0..MARKETS {
        let market = format!("KRW-BULK{m:03}");
        for d in 0..BULK_CANDLES {
            let day = base - chrono::Duration::days(d as i64);
            let utc = day.and_hms_opt(0, 0, 0).unwrap_or_default();
            let kst = utc + chrono::Duration::hours(9);
            let p = 1000.0 + (m * 7 + d * 13) as f64 * 0.5;
            rows.push(Candle {
                market: market.clone(),
                candle_date_time_utc: utc.format("%Y-%m-%dT%H:%M:%S").to_string(),
                candle_date_time_kst: kst.format("%Y-%m-%dT%H:%M:%S").to_string(),
                opening_price: p,
                high_price: p * 1.02,
                low_price: p * 0.98,
                trade_price: p * 1.01,
                timestamp: utc.and_utc().timestamp_millis() + 86_399_000,
                candle_acc_trade_price: p * 12_345.678,
                candle_acc_trade_volume: 12_345.678_901_23,
                unit: None,
                first_day_of_period: None,
            });
        }
    }
    rows
}

/// One bulk store of `rows` through a fresh extension in statements of `per_statement` rows: (rows stored,
/// seconds, the extension's peak RSS in KiB).
async fn bulk_through_extension(
    b: &mut Bench,
    upbit_url: &str,
    rows: &[Candle],
    per_statement: usize,
) -> Result<(u64, f64, Option<u64>)> {
    let env = LambdaEnv::start(b.core_env(upbit_url).freeze(false)).await?;
    let client = CoreClient::new(env.core_port(), env.core_token());
    // One small query first so the pool is warm, as in a warm invocation.
    makenaide_pipeline::db::query(&client, "select 1", &[], None)
        .await
        .map_err(|e| state(format!("extension: {e}")))?;
    b.truncate().await?;
    let t = Instant::now();
    for chunk in rows.chunks(per_statement) {
        let st = upsert_statement(Interval::Days, chunk);
        makenaide_pipeline::db::query(&client, &st.sql, &st.params, Some(60_000))
            .await
            .map_err(|e| state(format!("bulk upsert through the extension: {e}")))?;
    }
    let secs = t.elapsed().as_secs_f64();
    let stored = b.count_rows().await? as u64;
    Ok((stored, secs, env.extension(EXTENSION).and_then(|p| p.peak_rss_kib())))
}

fn thousands(n: usize) -> String {
    if n >= 1000 && n % 1000 == 0 {
        format!("{},000", n / 1000)
    } else {
        n.to_string()
    }
}

/// Figure 5: storing 46,000 candles. Through the extension exactly as the collector does it (`unnest` upserts of
/// `ROWS_PER_STATEMENT` rows per `/db/query`), and with 5,000-row statements, against row-by-row upserts (one round trip per row, one commit per market)
/// on a direct tokio-postgres connection, and the old way in Python (psycopg2 `execute` per row).
pub async fn bulk(b: &mut Bench) -> Result<()> {
    let rows = bulk_rows();
    let total = rows.len() as u64;
    let mut runs = Vec::new();
    let mut record = |name: &str, stored: u64, secs: f64| {
        eprintln!(
            "   {name}: {stored} rows in {secs:.2} s ({:.0} rows/s)",
            stored as f64 / secs
        );
        runs.push(BulkRun {
            name: name.to_string(),
            rows: stored,
            seconds: secs,
            rows_per_s: stored as f64 / secs,
        });
    };

    // Through the extension: the collector's own statement size first (the ratios below use it), then 5,000-row
    // statements, each through a fresh extension so its peak RSS belongs to that statement size alone.
    let sim = free_sim().await?;
    let mut peaks = Vec::new();
    for per_statement in [ROWS_PER_STATEMENT, LARGE_STATEMENT_ROWS] {
        let (stored, secs, peak) = bulk_through_extension(b, &sim.base_url(), &rows, per_statement).await?;
        record(
            &format!(
                "makenaide-core: `unnest` upsert, {} rows per /db/query",
                thousands(per_statement)
            ),
            stored,
            secs,
        );
        peaks.push((per_statement, peak));
    }

    // Row by row on a direct connection (the same driver the extension uses, so only batching differs).
    b.truncate().await?;
    let mut pg = direct::connect_tls(&b.direct_url, &b.ca).await?;
    let stmt = pg.prepare(ROW_UPSERT_SQL).await?;
    let t = Instant::now();
    let mut n = 0u64;
    for chunk in rows.chunks(BULK_CANDLES) {
        let tx = pg.transaction().await?;
        for c in chunk {
            n += tx
                .execute(
                    &stmt,
                    &[
                        &c.market,
                        &"days",
                        &c.candle_date_time_utc,
                        &c.candle_date_time_kst,
                        &c.opening_price,
                        &c.high_price,
                        &c.low_price,
                        &c.trade_price,
                        &c.candle_acc_trade_volume,
                        &c.candle_acc_trade_price,
                        &c.timestamp,
                    ],
                )
                .await?;
        }
        tx.commit().await?;
    }
    let secs = t.elapsed().as_secs_f64();
    let stored = b.count_rows().await? as u64;
    if n != total {
        return Err(state(format!("row-by-row upserted {n} of {total}")));
    }
    record(
        "row by row, Rust tokio-postgres (prepared, 1 commit per market)",
        stored,
        secs,
    );
    drop(pg);

    // The old way: psycopg2, one execute per row.
    if !b.opts.skip_python_bulk {
        b.truncate().await?;
        let file = b.opts.out_dir.join("bulk-rows.json");
        std::fs::write(&file, serde_json::to_vec(&rows)?)?;
        let out = tokio::process::Command::new(&b.opts.python)
            .arg("rowbyrow.py")
            .arg(&b.py_url)
            .arg(&file)
            .current_dir(&b.opts.python_dir)
            .output()
            .await?;
        let _ = std::fs::remove_file(&file);
        if !out.status.success() {
            return Err(state(format!(
                "rowbyrow.py failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let secs = v.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
        let stored = b.count_rows().await? as u64;
        record(
            "row by row, Python psycopg2 (`execute` per row, 1 commit per market)",
            stored,
            secs,
        );
    }
    for (per_statement, peak) in peaks {
        if let Some(kib) = peak {
            let phase = format!("46,000-row bulk, {}-row statements (fig. 5)", thousands(per_statement));
            b.report.add_memory("extension makenaide-core", &phase, kib);
        }
    }
    let ext_rate = runs[0].rows_per_s;
    b.report.bulk = Some(Bulk {
        rows_target: total,
        ratio_vs_rust_row_by_row: ratio(ext_rate, runs[2].rows_per_s),
        ratio_vs_python_row_by_row: runs.get(3).map(|r| ratio(ext_rate, r.rows_per_s)),
        runs,
    });
    Ok(())
}

const KIB: u64 = 1024;
const LAYER_BUDGET: u64 = 2 * 1024 * KIB;
const FUNCTION_BUDGET: u64 = 450 * KIB;

/// Figure 7: the zips under `dist/` (from layer-build/build.sh; never built here) against their budgets, the
/// release binaries, and what the Python baseline loads from site-packages.
pub async fn sizes(b: &mut Bench) -> Result<()> {
    let mut zips = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&b.opts.dist_dir) {
        let mut paths: Vec<_> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "zip"))
            .collect();
        paths.sort();
        for p in paths {
            let meta = std::fs::metadata(&p)?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let budget = if name.starts_with("makenaide-core-layer") {
                LAYER_BUDGET
            } else {
                FUNCTION_BUDGET
            };
            let modified = meta.modified().ok().map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .format("%Y-%m-%d %H:%M UTC")
                    .to_string()
            });
            zips.push(SizeRow {
                name,
                bytes: meta.len(),
                budget_bytes: Some(budget),
                ok: Some(meta.len() <= budget),
                modified,
            });
        }
    }
    let mut binaries = Vec::new();
    for name in std::iter::once(EXTENSION).chain(makenaide_contract::functions::all()) {
        if let Ok(path) = crate::lambda_env::bins::locate(name) {
            let bytes = std::fs::metadata(&path)?.len();
            binaries.push(SizeRow {
                name: super::rel(&path),
                bytes,
                budget_bytes: None,
                ok: None,
                modified: None,
            });
        }
    }
    let python_deps = python_deps_bytes(&b.opts.python).await;
    b.report.sizes = Some(Sizes {
        zips,
        binaries,
        python_deps_bytes: python_deps,
    });
    Ok(())
}

/// Bytes on disk of the packages the Python baseline imports (awslambdaric, requests, psycopg2 and their
/// dependencies), i.e. what its layer would carry; matplotlib and numpy (chart only) are left out.
async fn python_deps_bytes(python: &std::path::Path) -> Option<u64> {
    let out = tokio::process::Command::new(python)
        .args(["-c", "import site; print(site.getsitepackages()[0])"])
        .output()
        .await
        .ok()?;
    let site = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let wanted = [
        "awslambdaric",
        "requests",
        "urllib3",
        "idna",
        "certifi",
        "charset_normalizer",
        "psycopg2",
        "simplejson",
        "snapshot_restore_py",
    ];
    let mut total = 0;
    for e in std::fs::read_dir(&site).ok()?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().to_lowercase();
        if wanted.iter().any(|w| name.starts_with(w)) {
            total += dir_bytes(&e.path());
        }
    }
    Some(total)
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if meta.is_dir() {
        std::fs::read_dir(p)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| dir_bytes(&e.path())).sum())
            .unwrap_or(0)
    } else {
        meta.len()
    }
}
