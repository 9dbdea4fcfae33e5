//! The main job (`makenaide-local`, run by `./run.sh`): the whole pipeline on this machine the way it runs on
//! Lambda. It starts the real `makenaide-core` extension and the integrated orchestrator under the emulated
//! Lambda environment, invokes the orchestrator with `{}` twice (frozen in between), shows what each step did and
//! that the second invocation reused the warm connections, then sends SHUTDOWN and shows each invocation's
//! metrics from the EMF lines the extension wrote.
//!
//! What it looks at in the database between invocations it reads over a connection of its own when it can (so
//! the extension's per-invocation counters show only the function's work), else through the extension.
//!
//! Upbit: the real `https://api.upbit.com` by default, the simulated Upbit with `--offline`. PostgreSQL:
//! `MAKENAIDE_DATABASE_URL` when set; else the local server on 127.0.0.1:5432 (database `makenaide`, created if
//! missing); else a throwaway server started for the run.

use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{HarnessError, Result};
use crate::lambda_env::{EnvConfig, InvokeOutcome, LambdaEnv};
use crate::pg::{self, ClusterOptions, PgCluster};

/// Database the extension uses (contract); when set, used as is.
pub const DATABASE_URL_ENV: &str = "MAKENAIDE_DATABASE_URL";
/// Upbit base URL (contract); when set, overrides the default (and `--offline`).
pub const UPBIT_BASE_URL_ENV: &str = "MAKENAIDE_UPBIT_BASE_URL";
/// The real Upbit.
pub const REAL_UPBIT: &str = "https://api.upbit.com";
/// Database created on the local server when no URL is given.
pub const LOCAL_DB_NAME: &str = "makenaide";
/// Local servers tried, in order (trust auth on this machine for `postgres` and `root`).
const LOCAL_SERVERS: [&str; 2] = [
    "postgres://postgres@127.0.0.1:5432/postgres",
    "postgres://root@127.0.0.1:5432/postgres",
];
/// `application_name` of the extension's sessions (set by makenaide-core unless the URL names one).
pub const CORE_APPLICATION_NAME: &str = "makenaide-core";
/// The orchestrator binary.
const ORCHESTRATOR: &str = "makenaide-integrated-orchestrator";

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    pub offline: bool,
    pub throwaway_db: bool,
    pub invocations: usize,
    pub verbose: bool,
}

impl Options {
    pub const USAGE: &'static str = "usage: makenaide-local [--offline] [--throwaway-db] [--invocations N] [--verbose]
  --offline        use the simulated Upbit instead of https://api.upbit.com
  --throwaway-db   start a PostgreSQL of its own for the run (default: MAKENAIDE_DATABASE_URL, else 127.0.0.1:5432)
  --invocations N  how many times to invoke the orchestrator (default 2)
  --verbose        print every log line of the extension and the function";

    pub fn parse(args: impl IntoIterator<Item = String>) -> std::result::Result<Self, String> {
        let mut o = Self {
            offline: false,
            throwaway_db: false,
            invocations: 2,
            verbose: false,
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--offline" => o.offline = true,
                "--throwaway-db" => o.throwaway_db = true,
                "--verbose" | "-v" => o.verbose = true,
                "--invocations" => {
                    o.invocations = it
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n >= 1)
                        .ok_or("--invocations needs a number >= 1")?;
                }
                "-h" | "--help" => return Err(Self::USAGE.into()),
                other => return Err(format!("unknown argument `{other}`\n{}", Self::USAGE)),
            }
        }
        Ok(o)
    }
}

/// The database chosen for the run (keeps a throwaway server alive while held).
struct Database {
    url: String,
    label: String,
    _cluster: Option<PgCluster>,
}

async fn choose_database(throwaway: bool) -> Result<Database> {
    if throwaway {
        return throwaway_database().await;
    }
    if let Ok(url) = std::env::var(DATABASE_URL_ENV) {
        if !url.is_empty() {
            return Ok(Database {
                url,
                label: format!("from {DATABASE_URL_ENV}"),
                _cluster: None,
            });
        }
    }
    for admin in LOCAL_SERVERS {
        let probe = format!("{admin}?connect_timeout=2");
        let Ok(client) = pg::connect(&probe).await else {
            continue;
        };
        let exists = client
            .query_opt("select 1 from pg_database where datname = $1", &[&LOCAL_DB_NAME])
            .await?;
        if exists.is_none() {
            client
                .batch_execute(&format!("create database {LOCAL_DB_NAME}"))
                .await?;
        }
        return Ok(Database {
            url: pg::with_database(admin, LOCAL_DB_NAME),
            label: format!("local PostgreSQL on 127.0.0.1:5432, database `{LOCAL_DB_NAME}`"),
            _cluster: None,
        });
    }
    throwaway_database().await
}

async fn throwaway_database() -> Result<Database> {
    let cluster = PgCluster::start(ClusterOptions::default()).await?;
    cluster.create_database(LOCAL_DB_NAME).await?;
    Ok(Database {
        url: cluster.url(LOCAL_DB_NAME, Some("disable")),
        label: format!(
            "throwaway PostgreSQL on 127.0.0.1:{} (removed at the end)",
            cluster.port()
        ),
        _cluster: Some(cluster),
    })
}

/// Runs an inspection query: over `direct` (a connection of the job's own) when there is one, else through the
/// extension's `/db/query` (thawing it for the call).
async fn inspect(env: &LambdaEnv, direct: Option<&tokio_postgres::Client>, sql: &str, params: Value) -> Result<Value> {
    if let Some(client) = direct {
        let text_params: Vec<String> = params
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = text_params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = client.query(sql, &refs).await?;
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                Value::Array(
                    (0..r.len())
                        .map(|i| {
                            r.try_get::<_, i64>(i)
                                .map(Value::from)
                                .or_else(|_| r.try_get::<_, i32>(i).map(Value::from))
                                .or_else(|_| r.try_get::<_, String>(i).map(Value::from))
                                .unwrap_or(Value::Null)
                        })
                        .collect(),
                )
            })
            .collect();
        return Ok(json!({ "rows": rows }));
    }
    let _thawed = env.thaw();
    env.core().query(sql, params).await
}

/// Backend pids (with start times) of the extension's sessions.
async fn core_sessions(env: &LambdaEnv, direct: Option<&tokio_postgres::Client>) -> Result<Vec<(i64, String)>> {
    let v = inspect(
        env,
        direct,
        "select pid::int8, backend_start::text from pg_stat_activity
          where datname = current_database() and application_name = $1 order by pid",
        json!([CORE_APPLICATION_NAME]),
    )
    .await?;
    Ok(v.get("rows")
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter_map(|r| Some((r.get(0)?.as_i64()?, r.get(1)?.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

async fn count(env: &LambdaEnv, direct: Option<&tokio_postgres::Client>, table: &str) -> Option<i64> {
    let v = inspect(env, direct, &format!("select count(*)::int8 from {table}"), json!([]))
        .await
        .ok()?;
    v.pointer("/rows/0/0").and_then(Value::as_i64)
}

/// One invocation's metrics from its EMF line, readable (a few key figures, not the JSON).
fn print_metrics(n: usize, line: Option<&Value>) {
    use makenaide_contract::metrics as m;
    let Some(l) = line else {
        println!("invocation {n}: no metrics line (MAKENAIDE_METRICS=off, or no Telemetry API)");
        return;
    };
    let num = |k: &str| l.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| l.get(k).and_then(Value::as_u64).unwrap_or(0);
    let start = if int(m::COLD_START) == 1 {
        match l.get(m::INIT_DURATION).and_then(Value::as_f64) {
            Some(init) => format!("cold start (init {init:.1} ms)"),
            None => "cold start".to_string(),
        }
    } else {
        "warm".to_string()
    };
    println!(
        "invocation {n}: {start}, {:.1} ms (billed {} ms), max memory {} MB",
        num(m::DURATION),
        int(m::BILLED_DURATION),
        int(m::MAX_MEMORY_USED)
    );
    println!(
        "  extension: {} requests; Upbit {} requests ({} × 429, {} × 418, {} retries, {} cached, {} coalesced), {:.1} ms waiting for rate slots",
        int(m::REQUESTS),
        int(m::UPBIT_REQUESTS),
        int(m::UPBIT_429),
        int(m::UPBIT_418),
        int(m::UPBIT_RETRIES),
        int(m::UPBIT_CACHE_HITS),
        int(m::UPBIT_COALESCED),
        num(m::RATE_SLOT_WAIT_MS)
    );
    println!(
        "  PostgreSQL: {} round trips, {} new connection(s), {} dead one(s) replaced, {} statement error(s)",
        int(m::DB_ROUND_TRIPS),
        int(m::DB_NEW_CONNECTIONS),
        int(m::DB_DEAD_CONNECTIONS_REPLACED),
        int(m::DB_STATEMENT_ERRORS)
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Short text of a JSON value (long lists are cut).
fn short(v: &Value) -> String {
    match v {
        Value::Array(a) if a.len() > 8 => {
            let head: Vec<String> = a.iter().take(8).map(short).collect();
            format!("[{}, … {} in all]", head.join(", "), a.len())
        }
        Value::Array(a) => format!("[{}]", a.iter().map(short).collect::<Vec<_>>().join(", ")),
        Value::Object(m) if m.len() > 6 => format!("{{{} keys}}", m.len()),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{k}: {}", short(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_outcome(n: usize, out: &InvokeOutcome) -> bool {
    let overhead = out
        .extensions_overhead
        .map(|d| format!(", extension overhead {}", ms(d)))
        .unwrap_or_default();
    let body = match out.ok() {
        Ok(v) => v,
        Err(e) => {
            println!("invocation {n}: FAILED after {}: {e}", ms(out.duration));
            return false;
        }
    };
    let success = body.get("success").and_then(Value::as_bool).unwrap_or(false);
    let exec = body
        .get("execution_time")
        .and_then(Value::as_f64)
        .map(|s| format!(", function says {:.1} ms", s * 1000.0));
    println!(
        "invocation {n}: {} in {}{}{}",
        if success { "success" } else { "NOT successful" },
        ms(out.duration),
        exec.unwrap_or_default(),
        overhead
    );
    let result = body.get("result").unwrap_or(body);
    if let Some(steps) = result.get("steps").and_then(Value::as_array) {
        for step in steps {
            let name = step.get("name").and_then(Value::as_str).unwrap_or("?");
            let dur = step
                .get("duration_ms")
                .and_then(Value::as_f64)
                .map(|d| format!("{d:>8.1} ms"))
                .unwrap_or_default();
            let details: Vec<String> = step
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| *k != "name" && *k != "duration_ms")
                        .map(|(k, v)| format!("{k}={}", short(v)))
                        .collect()
                })
                .unwrap_or_default();
            println!("  {name:<8} {dur}  {}", details.join("  "));
        }
        for (k, v) in result.as_object().into_iter().flatten().filter(|(k, _)| *k != "steps") {
            println!("  {k}: {}", short(v));
        }
    } else {
        println!("  result: {}", short(result));
    }
    success
}

/// Runs the main job; returns whether everything succeeded.
pub async fn run(opts: Options) -> Result<bool> {
    let db = choose_database(opts.throwaway_db).await?;
    println!("PostgreSQL: {}", db.label);

    let sim = if opts.offline {
        Some(offline::start().await?)
    } else {
        None
    };
    let upbit = match (std::env::var(UPBIT_BASE_URL_ENV).ok().filter(|u| !u.is_empty()), &sim) {
        (Some(url), _) => url,
        (None, Some(sim)) => sim.base_url(),
        (None, None) => REAL_UPBIT.to_string(),
    };
    println!(
        "Upbit:      {upbit}{}",
        if sim.is_some() { " (simulated, --offline)" } else { "" }
    );

    let cfg = EnvConfig::makenaide(ORCHESTRATOR)
        .env(DATABASE_URL_ENV, db.url.clone())
        .env(UPBIT_BASE_URL_ENV, upbit)
        .timeout(Duration::from_secs(300))
        .echo_logs(opts.verbose);
    let env = LambdaEnv::start(cfg).await?;
    let init = env.init_report();
    for e in &init.extensions {
        println!(
            "extension {} (pid {}): registered {} after exec, ready (first next) {} after exec, events {:?}",
            e.name,
            e.pid,
            ms(e.spawn_to_registered),
            ms(e.spawn_to_first_next),
            e.events
        );
    }
    println!(
        "function  {} (pid {}): ready {} after exec; Init phase {}",
        ORCHESTRATOR,
        env.runtime().pid,
        ms(init.runtime_spawn_to_first_next),
        ms(init.init_duration)
    );

    // The job's own connection for looking inside (none, e.g. for a TLS-only server: then through the extension).
    let direct = pg::connect(&db.url).await.ok();
    let direct = direct.as_ref();
    let mut request_ids = Vec::new();
    let mut all_ok = true;
    let mut before: Option<Vec<(i64, String)>> = None;
    let mut upstream_seen = 0;
    for n in 1..=opts.invocations {
        println!();
        let out = env.invoke(json!({})).await?;
        all_ok &= print_outcome(n, &out);
        request_ids.push(out.request_id.clone());
        let sessions = core_sessions(&env, direct).await.unwrap_or_default();
        let pids: Vec<i64> = sessions.iter().map(|s| s.0).collect();
        match &before {
            None => println!("  PostgreSQL sessions of the extension: {pids:?}"),
            Some(prev) => {
                let new: Vec<i64> = sessions.iter().filter(|s| !prev.contains(s)).map(|s| s.0).collect();
                if new.is_empty() && !sessions.is_empty() {
                    println!("  PostgreSQL sessions of the extension: {pids:?} (same backends as before: reused, no new connection)");
                } else {
                    println!(
                        "  PostgreSQL sessions of the extension: {pids:?} (new since the previous invocation: {new:?})"
                    );
                }
            }
        }
        before = Some(sessions);
        if let Some(sim) = &sim {
            let now = sim.connections();
            let what = if n > 1 && now == upstream_seen {
                " (reused the warm ones)"
            } else {
                ""
            };
            println!(
                "  simulated Upbit: {} new TCP connection(s) from the extension, {now} in all{what}",
                now - upstream_seen
            );
            upstream_seen = now;
        }
        if out.frozen {
            println!("  environment frozen (SIGSTOP) until the next invocation");
        }
    }
    println!();
    let rows = count(&env, direct, "ohlcv").await;
    let markets = count(&env, direct, "markets").await;
    let scans = count(&env, direct, "scan_results").await;
    println!(
        "database now holds: ohlcv {} rows, markets {}, scan_results {}",
        rows.map_or("?".into(), |n| n.to_string()),
        markets.map_or("?".into(), |n| n.to_string()),
        scans.map_or("?".into(), |n| n.to_string())
    );

    let report = env.shutdown(Duration::from_secs(2)).await?;
    for e in &report.extensions {
        println!(
            "SHUTDOWN: {} {} {} (budget {})",
            e.name,
            e.exit.map_or("did not exit".to_string(), |x| x.to_string()),
            e.elapsed.map_or(String::new(), |d| format!("after {}", ms(d))),
            ms(report.budget)
        );
        all_ok &= e.exit.is_some_and(|x| x.success()) && e.exited_within_deadline;
    }
    // The extension writes each invocation's EMF line when Lambda's platform.report reaches it (the last one
    // during SHUTDOWN), so they are all in by now.
    let lines: Vec<Value> = report
        .logs
        .iter()
        .filter(|l| l.process == crate::lambda_env::EXTENSION)
        .filter_map(|l| serde_json::from_str::<Value>(&l.line).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    println!("\nmetrics (the extension's CloudWatch EMF line of each invocation):");
    for (i, rid) in request_ids.iter().enumerate() {
        let line = lines.iter().find(|l| {
            l.get(makenaide_contract::metrics::PROPERTY_REQUEST_ID)
                .and_then(Value::as_str)
                == Some(rid)
        });
        print_metrics(i + 1, line);
    }
    if !all_ok && sim.is_none() {
        println!("\nhint: without internet access to {REAL_UPBIT}, run `./run.sh --offline` (simulated Upbit)");
    }
    if !all_ok {
        let tail: Vec<String> = report
            .logs
            .iter()
            .rev()
            .take(30)
            .rev()
            .map(|l| format!("  {}: {}", l.process, l.line))
            .collect();
        println!("\nlast log lines:\n{}", tail.join("\n"));
    }
    Ok(all_ok)
}

/// Entry point used by `src/bin/makenaide-local.rs`.
pub fn main_entry() -> std::process::ExitCode {
    let opts = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(HarnessError::InitFailed(f)) => {
            eprintln!("the Lambda environment failed to start: {f}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The simulated Upbit of `--offline`.
mod offline {
    use crate::error::Result;
    use crate::upbit_sim::{SimConfig, SimHandle, UpbitSim};

    /// A running simulated Upbit.
    pub struct SimUpbit {
        server: SimHandle,
    }

    impl SimUpbit {
        pub fn base_url(&self) -> String {
            self.server.base_url()
        }
        /// TCP connections the server accepted so far.
        pub fn connections(&self) -> u64 {
            self.server.connections()
        }
    }

    pub async fn start() -> Result<SimUpbit> {
        Ok(SimUpbit {
            server: UpbitSim::start(SimConfig::default()).await?,
        })
    }
}
