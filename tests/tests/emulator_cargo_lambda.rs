//! The real binaries under cargo-lambda's own emulator (`cargo lambda watch --only-lambda-apis`), as a user runs
//! them locally (docs/local-testing-cargo-lambda.md gives the same commands): one `makenaide-core` process and the
//! four function processes on one emulator, invoked with `cargo lambda invoke`, against a test database of their
//! own and the simulated Upbit. The assertions are on outcomes: rows in PostgreSQL compared with what the
//! simulator served, and the processes exiting once the emulator stops.
//!
//! Run by `scripts/test-suites/25-emulators.sh` on the binaries unpacked from the release zips:
//!
//! - `MAKENAIDE_EMULATOR_BIN_DIR`: a directory holding `makenaide-core` and each function binary by its function
//!   name (`target/debug` works too);
//! - `MAKENAIDE_CARGO_LAMBDA`: the cargo-lambda executable (`.venv-build/bin/cargo-lambda`).
//!
//! What cargo-lambda 1.9's emulator does, as seen here: `AWS_LAMBDA_RUNTIME_API` is `http://127.0.0.1:PORT/.rt`
//! for extensions and `.../.rt/<function>` for a function (each function polls its own queue); a function name
//! must be a binary of the Cargo workspace the emulator was started in; the function's deadline header is
//! `600000` (a duration) and the extension's INVOKE event carries `deadlineMs: 0`, both treated as unknown; it
//! sets no `AWS_LAMBDA_FUNCTION_TIMEOUT` (it does not start the processes) and sends no SHUTDOWN when it stops: the
//! processes see their Runtime API connection fail and exit.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makenaide_contract::env::{CORE_PORT, CORE_TOKEN};
use makenaide_contract::functions::{self, DATA_COLLECTOR, DB_INITIALIZER, ORCHESTRATOR};
use makenaide_tests::lambda_env::bins::workspace_root;
use makenaide_tests::lambda_env::{free_port, random_hex, CoreClient, EXTENSION};
use makenaide_tests::main_job::{DATABASE_URL_ENV, UPBIT_BASE_URL_ENV};
use makenaide_tests::pg::TestDb;
use makenaide_tests::upbit_sim::{SimHandle, UpbitSim};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

mod common;
use common::{result_of, served, stored_candles};

/// Directory of the binaries under test (`makenaide-core` + one file per function name).
const BIN_DIR_ENV: &str = "MAKENAIDE_EMULATOR_BIN_DIR";
/// The cargo-lambda executable.
const CARGO_LAMBDA_ENV: &str = "MAKENAIDE_CARGO_LAMBDA";

// Lambda's own variables (set by Lambda; under `--only-lambda-apis` the user sets them, as the emulator says).
const RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";
const FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";
const FUNCTION_VERSION: &str = "AWS_LAMBDA_FUNCTION_VERSION";
const FUNCTION_MEMORY_SIZE: &str = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE";

/// What `cargo lambda watch` logs once its Runtime API server is starting.
const WATCH_READY_LINE: &str = "starting Runtime server";
/// Bound on the emulator (it runs `cargo metadata` first) and the extension becoming ready.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Bound on one `cargo lambda invoke`.
const INVOKE_LIMIT: Duration = Duration::from_secs(30);
/// Bound on every process exiting after the emulator stops.
const EXIT_LIMIT: Duration = Duration::from_secs(5);
/// A market code the simulated Upbit answers 404 for.
const BAD_MARKET: &str = "KRW-NOPE0";

type Logs = Arc<Mutex<Vec<String>>>;

/// A child process, killed when dropped (also on panic); SIGKILLed by the kernel if the test process dies first.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, logs: &Logs) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(capture(out, name.to_string(), logs.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(capture(err, name.to_string(), logs.clone()));
        }
        Self {
            name: name.to_string(),
            child,
        }
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[allow(unsafe_code)] // `pre_exec` is the only way to call prctl(PR_SET_PDEATHSIG) in the child
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
}

async fn capture(pipe: impl AsyncRead + Unpin, name: String, logs: Logs) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.lock().unwrap().push(format!("[{name}] {line}"));
    }
}

/// Polls `ready` (short backoff) until it holds; panics after `limit` or as soon as `alive` says a process died.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut ready: F, mut alive: impl FnMut() -> Result<(), String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    let mut backoff = Duration::from_millis(5);
    loop {
        if ready().await {
            return;
        }
        if let Err(e) = alive() {
            panic!("{what}: {e}");
        }
        assert!(Instant::now() < deadline, "{what}: not ready after {limit:?}");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// A test database, the simulated Upbit, `cargo lambda watch`, one `makenaide-core` and the four function
/// processes.
struct Rig {
    /// Emulator first, then the extension, then the functions.
    procs: Vec<Proc>,
    logs: Logs,
    cargo_lambda: PathBuf,
    runtime_port: u16,
    upbit: SimHandle,
    db: TestDb,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap();
            let tail = logs.len().saturating_sub(200);
            eprintln!("--- last {} log lines of the processes ---", logs.len() - tail);
            for l in &logs[tail..] {
                eprintln!("{l}");
            }
        }
        // Kill every process before the database is dropped (TestDb's own drop removes the database).
        self.procs.clear();
    }
}

fn required_path(var: &str, what: &str) -> PathBuf {
    let v = std::env::var_os(var).filter(|v| !v.is_empty()).unwrap_or_else(|| {
        panic!(
            "{var} is not set: it must name {what}. This suite is run by scripts/test-suites/25-emulators.sh \
             (or set MAKENAIDE_EMULATOR_BIN_DIR=target/debug MAKENAIDE_CARGO_LAMBDA=.venv-build/bin/cargo-lambda)"
        )
    });
    let p = PathBuf::from(v);
    let p = if p.is_absolute() { p } else { workspace_root().join(p) };
    assert!(p.exists(), "{var}={} does not exist (it must name {what})", p.display());
    p
}

fn binary(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing from {BIN_DIR_ENV}={}", name, dir.display());
    p
}

impl Rig {
    async fn start() -> Self {
        let bin_dir = required_path(
            BIN_DIR_ENV,
            "a directory holding makenaide-core and the function binaries",
        );
        let cargo_lambda = required_path(CARGO_LAMBDA_ENV, "the cargo-lambda executable");
        let extension_bin = binary(&bin_dir, EXTENSION);
        let function_bins: Vec<(&str, PathBuf)> = functions::all().map(|f| (f, binary(&bin_dir, f))).collect();

        let db = TestDb::create().await.expect("test database");
        let upbit = UpbitSim::start(Default::default()).await.expect("simulated Upbit");
        let logs: Logs = Arc::default();
        let mut rig = Rig {
            procs: Vec::new(),
            logs,
            cargo_lambda,
            runtime_port: free_port(),
            upbit,
            db,
        };
        let started = Instant::now();

        // 1. The emulator, in the workspace (it runs `cargo metadata`; an invoked function must be one of its bins).
        let port = rig.runtime_port.to_string();
        let mut watch = Command::new(&rig.cargo_lambda);
        watch
            .args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", &port])
            .current_dir(workspace_root());
        rig.procs.push(Proc::spawn("cargo-lambda-watch", watch, &rig.logs));
        let (logs, port) = (rig.logs.clone(), rig.runtime_port);
        wait_until(
            "cargo lambda watch",
            START_LIMIT,
            || {
                let logs = logs.clone();
                async move {
                    logs.lock().unwrap().iter().any(|l| l.contains(WATCH_READY_LINE))
                        && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
                }
            },
            || exited_check(&mut rig.procs),
        )
        .await;

        // 2. The extension, on the emulator's Extensions API.
        let token = random_hex(16);
        let core_port = free_port();
        let runtime_base = format!("http://127.0.0.1:{}/.rt", rig.runtime_port);
        let mut ext = Command::new(&extension_bin);
        ext.env_clear()
            .env(RUNTIME_API, &runtime_base)
            .env(CORE_TOKEN, &token)
            .env(CORE_PORT, core_port.to_string())
            .env(DATABASE_URL_ENV, rig.db.url())
            .env(UPBIT_BASE_URL_ENV, rig.upbit.base_url());
        rig.procs.push(Proc::spawn(EXTENSION, ext, &rig.logs));
        let core = CoreClient::new(core_port, token.clone());
        wait_until(
            "makenaide-core /ping with db ready",
            START_LIMIT,
            || {
                let core = &core;
                async move {
                    core.ping()
                        .await
                        .is_ok_and(|v| v.get("db").and_then(Value::as_str) == Some("ready"))
                }
            },
            || exited_check(&mut rig.procs),
        )
        .await;

        // 3. One process per function, each polling its own queue.
        for (name, path) in function_bins {
            let mut f = Command::new(path);
            f.env_clear()
                .env(RUNTIME_API, format!("{runtime_base}/{name}"))
                .env(FUNCTION_NAME, name)
                .env(FUNCTION_VERSION, "1")
                .env(FUNCTION_MEMORY_SIZE, "4096")
                .env(CORE_TOKEN, &token)
                .env(CORE_PORT, core_port.to_string());
            rig.procs.push(Proc::spawn(name, f, &rig.logs));
        }
        eprintln!("emulator, extension and functions started in {:?}", started.elapsed());
        rig
    }

    /// `cargo lambda invoke`: the function's JSON result, or the error it printed.
    async fn invoke(&mut self, function: &str, event: Value) -> Result<Value, String> {
        let started = Instant::now();
        let mut cmd = Command::new(&self.cargo_lambda);
        cmd.args([
            "lambda",
            "invoke",
            function,
            "--invoke-address",
            "127.0.0.1",
            "--invoke-port",
        ])
        .arg(self.runtime_port.to_string())
        .arg("--data-ascii")
        .arg(event.to_string())
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .kill_on_drop(true);
        let out = tokio::time::timeout(INVOKE_LIMIT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("cargo lambda invoke {function} {event}: no answer within {INVOKE_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("run cargo lambda invoke: {e}"));
        eprintln!("invoke {function} {event}: {:?}", started.elapsed());
        if let Err(e) = exited_check(&mut self.procs) {
            panic!("after invoking {function}: {e}");
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() {
            serde_json::from_str(stdout.trim()).map_err(|e| format!("not JSON ({e}): {stdout}"))
        } else {
            Err(format!("{}{}", stdout, String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The `result` of a successful invocation.
    async fn result(&mut self, function: &str, event: Value) -> Value {
        match self.invoke(function, event.clone()).await {
            Ok(v) => result_of(&v).clone(),
            Err(e) => panic!("{function} {event} failed: {e}"),
        }
    }

    fn krw_markets(&self) -> Vec<String> {
        self.upbit
            .catalog()
            .codes()
            .into_iter()
            .filter(|c| c.starts_with("KRW-"))
            .collect()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.db
            .connect()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

/// Err naming the first process that has exited.
fn exited_check(procs: &mut [Proc]) -> Result<(), String> {
    for p in procs.iter_mut() {
        if let Some(status) = p.exited() {
            return Err(format!("{} exited ({status})", p.name));
        }
    }
    Ok(())
}

/// `ohlcv` holds exactly what was served (keys and values) and no candle twice.
async fn assert_stored_is_served(rig: &Rig, interval: &str) -> BTreeMap<(String, String), Value> {
    let stored = stored_candles(&rig.db, interval).await;
    let served = served(&rig.upbit, interval);
    assert!(!served.is_empty(), "the simulator served no {interval} candles");
    let stored_keys: BTreeSet<_> = stored.keys().collect();
    let served_keys: BTreeSet<_> = served.keys().collect();
    assert_eq!(
        stored_keys,
        served_keys,
        "served but not stored: {:?}; stored but never served: {:?}",
        served_keys.difference(&stored_keys).collect::<Vec<_>>(),
        stored_keys.difference(&served_keys).collect::<Vec<_>>()
    );
    for (key, want) in &served {
        assert_eq!(
            &stored[key], want,
            "row {key:?} differs from the candle the simulator served"
        );
    }
    assert_no_duplicates(rig).await;
    stored
}

async fn assert_no_duplicates(rig: &Rig) {
    let dupes = rig
        .count(
            "select count(*) from (select 1 from ohlcv group by market, interval, candle_date_time_utc \
             having count(*) > 1) d",
        )
        .await;
    assert_eq!(dupes, 0, "duplicate candles in ohlcv");
}

fn markets_of(stored: &BTreeMap<(String, String), Value>) -> BTreeSet<String> {
    stored.keys().map(|(m, _)| m.clone()).collect()
}

#[tokio::test]
#[ignore = "run by scripts/test-suites/25-emulators.sh against the release binaries"]
async fn db_initializer_twice_applies_the_schema_once() {
    let mut rig = Rig::start().await;
    let first = rig.result(DB_INITIALIZER, json!({})).await;
    let applied: Vec<i64> = first["applied"]
        .as_array()
        .unwrap_or_else(|| panic!("no applied list: {first}"))
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(!applied.is_empty(), "a fresh database got no migration: {first}");
    let second = rig.result(DB_INITIALIZER, json!({})).await;
    assert_eq!(
        second["applied"],
        json!([]),
        "the second run applied migrations again: {second}"
    );
    assert_eq!(second["current_version"], first["current_version"], "{second}");
    assert_eq!(
        first["current_version"],
        json!(applied.iter().max().unwrap()),
        "{first}"
    );

    let client = rig.db.connect().await.unwrap();
    for table in ["ohlcv", "markets", "scan_results", "schema_migrations"] {
        let n: i64 = client
            .query_one(
                "select count(*) from information_schema.tables where table_schema = current_schema() \
                 and table_name = $1",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "table {table} missing");
    }
    let versions: Vec<i64> = client
        .query("select version from schema_migrations order by version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions, applied,
        "schema_migrations must hold each applied version once"
    );

    // The emulator's implausible deadlines (600000 to the function, 0 in INVOKE to the extension) were each named
    // in exactly one warning, although two invocations carried them, and failed nothing.
    let logs = rig.logs.lock().unwrap().clone();
    let count = |process: &str, needle: &str| {
        logs.iter()
            .filter(|l| l.starts_with(&format!("[{process}]")) && l.contains(needle))
            .count()
    };
    assert_eq!(
        count(
            DB_INITIALIZER,
            "Lambda-Runtime-Deadline-Ms = 600000 is not a plausible deadline"
        ),
        1,
        "one warning from the function"
    );
    assert_eq!(
        count(EXTENSION, "deadlineMs = 0 is not a plausible deadline"),
        1,
        "one warning from the extension"
    );
}

#[tokio::test]
#[ignore = "run by scripts/test-suites/25-emulators.sh against the release binaries"]
async fn collector_stores_what_upbit_served_and_rerunning_adds_no_duplicates() {
    let mut rig = Rig::start().await;
    rig.result(DB_INITIALIZER, json!({})).await;
    let krw = rig.krw_markets();
    let markets = [krw[0].clone(), krw[1].clone()];
    let event = json!({"markets": markets, "interval": "days", "count": 3});

    let r1 = rig.result(DATA_COLLECTOR, event.clone()).await;
    assert_eq!(r1["stored"], json!({&markets[0]: 3, &markets[1]: 3}), "{r1}");
    assert_eq!(r1["rows_stored"], json!(6), "{r1}");
    assert_eq!(r1["failed"], json!({}), "{r1}");
    let stored1 = assert_stored_is_served(&rig, "days").await;
    assert_eq!(stored1.len(), 6);
    assert_eq!(markets_of(&stored1), BTreeSet::from(markets.clone()));

    // Again: the same candles are updated in place, never duplicated.
    let r2 = rig.result(DATA_COLLECTOR, event).await;
    assert_eq!(r2["rows_stored"], json!(6), "{r2}");
    let stored2 = assert_stored_is_served(&rig, "days").await;
    assert_eq!(
        stored2.keys().collect::<Vec<_>>(),
        stored1.keys().collect::<Vec<_>>(),
        "the second run changed the set of candles"
    );
    assert_eq!(rig.count("select count(*) from ohlcv").await, 6);
}

#[tokio::test]
#[ignore = "run by scripts/test-suites/25-emulators.sh against the release binaries"]
async fn collector_reports_a_bad_market_and_stores_the_good_one() {
    let mut rig = Rig::start().await;
    assert!(
        rig.upbit.catalog().find(BAD_MARKET).is_none(),
        "{BAD_MARKET} is listed by the simulator"
    );
    rig.result(DB_INITIALIZER, json!({})).await;
    let good = rig.krw_markets()[0].clone();
    let r = rig
        .result(
            DATA_COLLECTOR,
            json!({"markets": [BAD_MARKET, &good], "interval": "days", "count": 3}),
        )
        .await;
    let failed: Vec<&String> = r["failed"]
        .as_object()
        .unwrap_or_else(|| panic!("no failed map: {r}"))
        .keys()
        .collect();
    assert_eq!(failed, [BAD_MARKET], "{r}");
    assert_eq!(r["failed"][BAD_MARKET]["status"], json!(404), "{r}");
    assert_eq!(r["stored"], json!({&good: 3}), "{r}");
    let stored = assert_stored_is_served(&rig, "days").await;
    assert_eq!(markets_of(&stored), BTreeSet::from([good]));
}

#[tokio::test]
#[ignore = "run by scripts/test-suites/25-emulators.sh against the release binaries"]
async fn collector_pages_250_candles_as_200_plus_50() {
    let mut rig = Rig::start().await;
    rig.result(DB_INITIALIZER, json!({})).await;
    let market = rig.krw_markets()[0].clone();
    let candle_requests_before = rig.upbit.stats().group("candles");
    let r = rig
        .result(
            DATA_COLLECTOR,
            json!({"markets": [&market], "interval": "days", "count": 250}),
        )
        .await;
    assert_eq!(r["stored"], json!({&market: 250}), "{r}");
    assert_eq!(
        rig.upbit.stats().group("candles") - candle_requests_before,
        2,
        "250 candles are two pages (200 + 50)"
    );
    let stored = assert_stored_is_served(&rig, "days").await;
    assert_eq!(stored.len(), 250, "250 distinct candles stored");
    assert_eq!(rig.count("select count(*) from ohlcv").await, 250);
}

#[tokio::test]
#[ignore = "run by scripts/test-suites/25-emulators.sh against the release binaries"]
async fn orchestrator_runs_init_scan_collect() {
    let mut rig = Rig::start().await;
    let r = rig.result(ORCHESTRATOR, json!({})).await;
    let steps: Vec<&str> = r["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps: {r}"))
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["init", "scan", "collect"], "{r}");
    for s in r["steps"].as_array().unwrap() {
        assert!(s["duration_ms"].as_u64().is_some(), "step without duration_ms: {s}");
    }
    let selected: BTreeSet<String> = r["selected"]
        .as_array()
        .unwrap_or_else(|| panic!("no selected: {r}"))
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    assert!(!selected.is_empty(), "the scan selected nothing: {r}");
    assert_eq!(r["failed"], json!({}), "{r}");

    let client = rig.db.connect().await.unwrap();
    let scans = client.query("select selected from scan_results", &[]).await.unwrap();
    assert_eq!(scans.len(), 1, "scan_results should hold this run's scan");
    let scan_selected: BTreeSet<String> = scans[0].get::<_, Vec<String>>(0).into_iter().collect();
    assert_eq!(
        scan_selected, selected,
        "scan_results.selected differs from the result's selection"
    );

    let stored = assert_stored_is_served(&rig, "days").await;
    assert_eq!(
        markets_of(&stored),
        selected,
        "ohlcv must hold candles of exactly the selected markets"
    );
    assert_eq!(r["rows_stored"], json!(stored.len()), "{r}");
}

#[tokio::test]
#[ignore = "run by scripts/test-suites/25-emulators.sh against the release binaries"]
async fn stopping_the_emulator_leaves_no_process_and_no_db_session() {
    let mut rig = Rig::start().await;
    rig.result(DB_INITIALIZER, json!({})).await;
    assert!(
        !rig.db.sessions(Some(EXTENSION)).await.unwrap().is_empty(),
        "the extension holds no warm database connection"
    );
    // Ctrl-C of `cargo lambda watch`. It sends no SHUTDOWN: the extension and the functions see their Runtime
    // API connection fail and must exit on their own rather than linger with open connections.
    let watch_pid = rig.procs[0].child.id().unwrap();
    kill(Pid::from_raw(watch_pid as i32), Signal::SIGINT).unwrap();
    let deadline = tokio::time::Instant::now() + EXIT_LIMIT;
    for p in rig.procs.iter_mut() {
        match tokio::time::timeout_at(deadline, p.child.wait()).await {
            Ok(status) => eprintln!("{} exited: {}", p.name, status.unwrap()),
            Err(_) => panic!("{} still running {EXIT_LIMIT:?} after the emulator was stopped", p.name),
        }
    }
    let left = rig.db.wait_no_sessions(Some(EXTENSION), EXIT_LIMIT).await.unwrap();
    assert!(left.is_empty(), "database sessions of the extension left: {left:?}");
}
