//! `upbit-sim`: the simulated Upbit quotation API (`makenaide_tests::upbit_sim`) as a standalone process, for
//! Docker compose and the main job's offline mode. Prints `upbit-sim listening on http://<addr>` once bound (the
//! readiness signal) and serves until SIGINT/SIGTERM. Knobs at run time: the `/__sim/...` control API.

use std::net::SocketAddr;
use std::time::Duration;

use makenaide_tests::upbit_sim::{parse_to, Catalog, SimConfig, UpbitSim};

/// Listen address (default `127.0.0.1:0`; in a container use `0.0.0.0:<port>`).
const ENV_ADDR: &str = "UPBIT_SIM_ADDR";
/// Number of KRW markets (default: the built-in 42; e.g. 230 for the throughput benchmark).
const ENV_KRW_MARKETS: &str = "UPBIT_SIM_KRW_MARKETS";
/// Added latency per request in ms (default 0).
const ENV_LATENCY_MS: &str = "UPBIT_SIM_LATENCY_MS";
/// Requests per second per group; `0` turns enforcement off (default 10).
const ENV_RATE: &str = "UPBIT_SIM_RATE";
/// Fixed simulated "now" (RFC 3339); default: the real clock.
const ENV_NOW: &str = "UPBIT_SIM_NOW";
/// `0` disables the served-candle log (`GET /__sim/served`), for long benchmark runs (default on).
const ENV_RECORD: &str = "UPBIT_SIM_RECORD";
/// File to write the base URL to once bound (optional).
const ENV_READY_FILE: &str = "UPBIT_SIM_READY_FILE";

const USAGE: &str = "usage: upbit-sim [--addr HOST:PORT] [--krw-markets N] [--latency-ms MS] [--rate N|0] [--now RFC3339] [--record 0|1] [--ready-file PATH]
env: UPBIT_SIM_ADDR, UPBIT_SIM_KRW_MARKETS, UPBIT_SIM_LATENCY_MS, UPBIT_SIM_RATE, UPBIT_SIM_NOW, UPBIT_SIM_RECORD,
     UPBIT_SIM_READY_FILE (flags win)";

fn option(args: &[String], flag: &str, env: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
}

fn config(args: &[String]) -> Result<(SimConfig, Option<String>), String> {
    let mut c = SimConfig::default();
    if let Some(a) = option(args, "--addr", ENV_ADDR) {
        c.bind = a.parse::<SocketAddr>().map_err(|e| format!("bad address {a}: {e}"))?;
    }
    if let Some(n) = option(args, "--krw-markets", ENV_KRW_MARKETS) {
        c.catalog = Catalog::with_krw_markets(n.parse().map_err(|e| format!("bad market count {n}: {e}"))?);
    }
    if let Some(ms) = option(args, "--latency-ms", ENV_LATENCY_MS) {
        c.latency = Duration::from_millis(ms.parse().map_err(|e| format!("bad latency {ms}: {e}"))?);
    }
    if let Some(r) = option(args, "--rate", ENV_RATE) {
        let n: u32 = r.parse().map_err(|e| format!("bad rate {r}: {e}"))?;
        c.rate_limit.enabled = n > 0;
        c.rate_limit.per_second = n.max(1);
    }
    if let Some(t) = option(args, "--now", ENV_NOW) {
        c.now = Some(parse_to(&t).ok_or(format!("bad time {t}"))?);
    }
    if let Some(r) = option(args, "--record", ENV_RECORD) {
        c.record_served = r != "0";
    }
    Ok((c, option(args, "--ready-file", ENV_READY_FILE)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return std::process::ExitCode::SUCCESS;
    }
    let (cfg, ready_file) = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("upbit-sim: {e}\n{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    let sim = match UpbitSim::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("upbit-sim: cannot bind: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = ready_file {
        if let Err(e) = std::fs::write(&path, sim.base_url()) {
            eprintln!("upbit-sim: cannot write {path}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    }
    println!("upbit-sim listening on {}", sim.base_url());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("upbit-sim: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    drop(sim);
    std::process::ExitCode::SUCCESS
}
