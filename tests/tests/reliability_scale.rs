//! Reliability: many environments.
//!
//! - 16 extension + collector environments at once through PgBouncer (Debian's package, run here as a child
//!   process) in transaction pooling mode with fewer server connections than clients: zero errors, zero
//!   prepared-statement errors, every row stored. PgBouncer before 1.21 does not carry named prepared statements
//!   across transactions, so the extension runs with `MAKENAIDE_DB_STATEMENT_CACHE=false` there; a second test
//!   shows what happens without it (and that the error says what to do).
//! - Directly against a PostgreSQL whose `max_connections` is below environments × pool size: every request ends
//!   in bounded time, either with its result or with a 503 `db_unavailable` naming the cause (SQLSTATE 53300).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use makenaide_tests::lambda_env::{LambdaEnv, EXTENSION};
use makenaide_tests::pg::{ClusterOptions, PgCluster, TestDb};
use makenaide_tests::upbit_sim::SimConfig;
use serde_json::{json, Value};

const STEM: &str = "reliability_scale";
const ENVS: usize = 16;
const ROUNDS: usize = 3;
const SERVER_POOL: u32 = 4;
const MARKETS_PER_ENV: usize = 2;

fn port_of(url: &str) -> u16 {
    let host_port = url.split_once('@').unwrap().1.split('/').next().unwrap();
    host_port.rsplit_once(':').map_or(5432, |(_, p)| p.parse().unwrap())
}

/// Starts `n` environments, a few at a time (Init has a 10 s limit; 2 cores).
async fn start_envs(cfgs: Vec<makenaide_tests::lambda_env::EnvConfig>) -> Vec<Arc<LambdaEnv>> {
    let mut envs = Vec::new();
    for chunk in cfgs.chunks(4) {
        let mut set = tokio::task::JoinSet::new();
        for (i, cfg) in chunk.iter().cloned().enumerate() {
            set.spawn(async move { (i, LambdaEnv::start(cfg).await) });
        }
        let mut started: Vec<_> = set.join_all().await;
        started.sort_by_key(|(i, _)| *i);
        for (_, e) in started {
            envs.push(Arc::new(e.unwrap_or_else(|e| panic!("environment did not start: {e}"))));
        }
    }
    envs
}

async fn shutdown_all(envs: Vec<Arc<LambdaEnv>>) {
    for env in envs {
        let env = Arc::try_unwrap(env).ok().expect("environment still shared");
        let sd = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
        let core = sd.extension(EXTENSION).unwrap();
        assert!(core.exit.is_some_and(|e| e.success()) && !core.killed, "{core:?}");
    }
}

fn prepared_statement_errors(env: &LambdaEnv) -> Vec<String> {
    env.logs()
        .into_iter()
        .filter(|l| {
            let s = l.line.to_ascii_lowercase();
            s.contains("prepared statement") || s.contains("26000") || s.contains("42p05")
        })
        .map(|l| format!("{}: {}", l.process, l.line))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_environments_through_pgbouncer_transaction_pooling() {
    let ((major, minor), version) =
        PgBouncer::installed_version().expect("pgbouncer not installed: run scripts/setup.sh");
    // Named prepared statements survive transaction pooling only from 1.21 on (max_prepared_statements).
    let cache_off = (major, minor) < (1, 21);

    let db = TestDb::create().await.unwrap();
    init_schema(db.url()).await;
    let pgb = PgBouncer::start(port_of(db.url()), SERVER_POOL).await;
    let sim = unthrottled_sim(SimConfig::default()).await;
    let url = pgb.url(db.name());

    let krw = krw_markets(&sim);
    assert!(krw.len() >= ENVS * MARKETS_PER_ENV);
    let mut cfgs = Vec::new();
    for _ in 0..ENVS {
        let mut cfg = env_config(COLLECTOR, &url, &sim.base_url()).env("MAKENAIDE_UPBIT_RATE_PER_SEC", "1000");
        if cache_off {
            cfg = cfg.env("MAKENAIDE_DB_STATEMENT_CACHE", "false");
        }
        cfgs.push(cfg);
    }
    let t = Instant::now();
    let envs = start_envs(cfgs).await;
    let startup = t.elapsed();

    let mut durations = Vec::new();
    let mut round_walls = Vec::new();
    let mut rows_last_round = 0;
    for round in 0..ROUNDS {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for (i, env) in envs.iter().enumerate() {
            let env = env.clone();
            let markets: Vec<String> = krw[i * MARKETS_PER_ENV..(i + 1) * MARKETS_PER_ENV].to_vec();
            // Each round a different count, so rounds upsert over each other and add rows.
            let event = json!({"markets": markets, "interval": "days", "count": 3 + round});
            set.spawn(async move { (i, env.invoke(event).await.unwrap()) });
        }
        let outs = set.join_all().await;
        round_walls.push(t.elapsed());
        rows_last_round = 0;
        for (i, out) in outs {
            let response = out
                .ok()
                .unwrap_or_else(|e| panic!("round {round}, environment {i}: {e}"));
            let result = result_of(response);
            assert!(
                result["failed"].as_object().is_some_and(|f| f.is_empty()),
                "round {round}, environment {i}: {result}"
            );
            for n in result["stored"].as_object().unwrap().values() {
                assert_eq!(n.as_u64(), Some(3 + round as u64), "round {round}, env {i}: {result}");
            }
            rows_last_round += result["rows_stored"].as_i64().unwrap();
            durations.push(out.duration);
        }
    }

    // Every row stored: the table holds exactly the candles Upbit served (keys), and the last round's count.
    let check = db.connect().await.unwrap();
    let stored: i64 = check.query_one("select count(*) from ohlcv", &[]).await.unwrap().get(0);
    let served = sim.served_latest().len() as i64;
    assert_eq!(stored, served, "rows stored vs candles served");
    assert_eq!(stored, rows_last_round, "rows stored vs the last round's rows_stored");

    // Fewer server connections than clients.
    let clients = pgb.admin("SHOW CLIENTS").await;
    let servers = pgb.admin("SHOW SERVERS").await;
    let client_conns = clients
        .iter()
        .filter(|c| c.get("database").map(String::as_str) == Some(db.name()))
        .count();
    let server_conns = servers
        .iter()
        .filter(|c| c.get("database").map(String::as_str) == Some(db.name()))
        .count();
    assert!(server_conns <= SERVER_POOL as usize, "{servers:?}");
    assert!(
        client_conns >= ENVS,
        "expected at least one client connection per environment: {clients:?}"
    );
    let mut ps_errors = Vec::new();
    for env in &envs {
        ps_errors.extend(prepared_statement_errors(env));
    }
    assert!(ps_errors.is_empty(), "prepared-statement errors: {ps_errors:#?}");
    let pgb_log = pgb.log();
    assert!(
        !pgb_log.to_ascii_lowercase().contains("prepared statement"),
        "pgbouncer logged prepared-statement errors:\n{pgb_log}"
    );
    shutdown_all(envs).await;

    report(
        STEM,
        "16 environments through PgBouncer, transaction pooling",
        &[
            format!(
                "{version}; `pool_mode = transaction`, `default_pool_size = {SERVER_POOL}` → MAKENAIDE_DB_STATEMENT_CACHE={} (PgBouncer {} 1.21)",
                if cache_off { "false" } else { "true (default)" },
                if cache_off { "<" } else { "≥" }
            ),
            format!(
                "{ENVS} environments (extension + data-collector each, {} processes) started in {}",
                ENVS * 2,
                ms(startup)
            ),
            format!(
                "{ROUNDS} rounds × {ENVS} concurrent invocations ({MARKETS_PER_ENV} markets each): {} / {} succeeded, 0 errors, 0 prepared-statement errors",
                durations.len(),
                ROUNDS * ENVS
            ),
            format!("invocation latency: {}", summary(&durations)),
            format!("wall time per round of {ENVS}: {}", summary(&round_walls)),
            format!(
                "client connections to PgBouncer: {client_conns}; server connections to PostgreSQL: {server_conns} (≤ {SERVER_POOL})"
            ),
            format!("rows stored: {stored} = candles served ({served}) = last round's rows_stored ({rows_last_round})"),
        ],
    );
}

/// What happens with the statement cache on behind PgBouncer < 1.21 in transaction mode (one server connection,
/// two environments): the second environment's statement name collides with the first's on the shared server
/// connection. The test asserts the failure is a clear 400 naming the variable to set, not a hang or a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_cache_behind_old_pgbouncer_fails_clearly() {
    let ((major, minor), version) =
        PgBouncer::installed_version().expect("pgbouncer not installed: run scripts/setup.sh");
    if (major, minor) >= (1, 21) {
        report(
            STEM,
            "Statement cache behind PgBouncer",
            &[format!("{version} ≥ 1.21: not applicable")],
        );
        return;
    }
    let db = TestDb::create().await.unwrap();
    let pgb = PgBouncer::start(port_of(db.url()), 1).await;
    let dead_upbit = dead_upbit();
    let mut envs = Vec::new();
    for _ in 0..2 {
        let env = LambdaEnv::start(env_config(COLLECTOR, &pgb.url(db.name()), &dead_upbit).freeze(false))
            .await
            .unwrap();
        ready_core(&env).await;
        envs.push(Arc::new(env));
    }
    let a = envs[0].core();
    let b = envs[1].core();
    let sql = "select $1::int4 + 1 as n";
    let ra = a.query_raw(sql, json!([1])).await.unwrap();
    assert_eq!(ra.status, 200, "{:?}", ra.json());
    let (rb, took) = timed(b.query_raw(sql, json!([2]))).await;
    let rb = rb.unwrap();
    let body: Value = rb.json();
    let outcome = format!("{} {}", rb.status, String::from_utf8_lossy(&rb.body));
    // Either it collides (the expected failure) or PgBouncer happened to keep them apart; never a hang or a 5xx.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(rb.status == 200 || rb.status == 400, "{outcome}");
    if rb.status == 400 {
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("MAKENAIDE_DB_STATEMENT_CACHE")),
            "the error does not say what to set: {outcome}"
        );
    }
    shutdown_all(envs).await;
    report(
        STEM,
        "Statement cache left on behind PgBouncer < 1.21 (why the flag exists)",
        &[format!(
            "{version}, transaction pooling, 1 server connection, 2 environments with the cache on: same statement from the second environment → `{outcome}`"
        )],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_server_connections_give_bounded_clear_503s() {
    const N_ENVS: usize = 4;
    const POOL: usize = 4;
    const PER_ENV: usize = 6;
    const MAX_CONNECTIONS: u32 = 8;
    const SLEEP: Duration = Duration::from_millis(1500);
    let cluster = PgCluster::start(ClusterOptions {
        max_connections: Some(MAX_CONNECTIONS),
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.create_database("app").await.unwrap();
    let url = cluster.url("app", Some("disable"));
    let dead_upbit = dead_upbit();
    let cfgs = (0..N_ENVS)
        .map(|_| {
            env_config(COLLECTOR, &url, &dead_upbit)
                .freeze(false)
                .env("MAKENAIDE_DB_POOL_SIZE", POOL.to_string())
        })
        .collect();
    let envs = start_envs(cfgs).await;

    // Every environment asks for more connections than the server has left: 4 × 6 concurrent 1.5 s statements
    // against 8 slots (an environment with at most 2 connections must leave some waiting past the 2 s checkout).
    let sql = format!("select 1 as one from pg_sleep({})", SLEEP.as_secs_f64());
    let barrier = Arc::new(tokio::sync::Barrier::new(N_ENVS * PER_ENV));
    let mut set = tokio::task::JoinSet::new();
    for env in &envs {
        for _ in 0..PER_ENV {
            let core = env.core();
            let sql = sql.clone();
            let barrier = barrier.clone();
            set.spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                let r = core.query_raw(&sql, json!([])).await.unwrap();
                (r.status, r.json(), t.elapsed())
            });
        }
    }
    let replies = set.join_all().await;
    let bound = SLEEP + CONNECT_TIMEOUT + Duration::from_millis(2500);
    let mut ok = 0;
    let mut too_many = 0;
    let mut busy = 0;
    let mut sample_503 = None;
    let mut took_503 = Vec::new();
    let mut took_ok = Vec::new();
    for (status, body, took) in &replies {
        assert!(
            *took <= bound,
            "a request took {took:?} (bound {bound:?}): {status} {body}"
        );
        match status {
            200 => {
                assert_eq!(body["rows"], json!([[1]]));
                ok += 1;
                took_ok.push(*took);
            }
            503 => {
                let msg = body["error"]["message"].as_str().unwrap_or_default();
                if body["error"]["code"] == makenaide_contract::ErrorCode::DbBusy.as_str() {
                    // The environment's own connections all in use: saturation, its own code.
                    assert!(msg.contains("stayed busy"), "unclear 503: {body}");
                    busy += 1;
                } else {
                    assert_eq!(
                        body["error"]["code"],
                        makenaide_contract::ErrorCode::DbUnavailable.as_str(),
                        "{body}"
                    );
                    assert!(
                        body["error"]["sqlstate"] == "53300" || msg.contains("too many"),
                        "unclear 503: {body}"
                    );
                    too_many += 1;
                    sample_503.get_or_insert_with(|| body.to_string());
                }
                took_503.push(*took);
            }
            _ => panic!("unexpected reply {status}: {body}"),
        }
    }
    assert!(ok >= 1, "nothing succeeded");
    assert!(
        too_many >= 1,
        "no 503 named the cause (too many connections / 53300): {replies:?}"
    );
    for env in &envs {
        let ping = env.core().ping().await.unwrap();
        assert_eq!(ping["status"], "ok");
        assert!(!env.extension(EXTENSION).unwrap().has_exited());
    }
    shutdown_all(envs).await;

    report(
        STEM,
        "PostgreSQL max_connections below environments × pool size",
        &[
            format!(
                "`max_connections = {MAX_CONNECTIONS}`, {N_ENVS} environments × pool {POOL} = {} wanted; {} concurrent 1.5 s statements",
                N_ENVS * POOL,
                N_ENVS * PER_ENV
            ),
            format!(
                "{ok} succeeded ({}), {too_many} got 503 `db_unavailable` naming SQLSTATE 53300, {busy} got 503 `db_busy` (\"all connections stayed busy\"); 503s after {}; no request exceeded {}",
                summary(&took_ok),
                summary(&took_503),
                ms(bound)
            ),
            format!("sample: `{}`", sample_503.unwrap_or_default()),
        ],
    );
}
