//! The shared set-up of the integration tests (one module for every test file: `mod common;`): the function names
//! (from the contract crate), a test database and the simulated Upbit as a pair ([`Backends`]), environment
//! configurations wired to them, schema initialisation through the real db-initializer, the success envelope,
//! polling with a bound, a counting TCP proxy in front of PostgreSQL (frontend messages per request), a PgBouncer
//! child process, latency summaries, and the reliability report's figures (`MAKENAIDE_REPORT_DIR`).

#![allow(dead_code, unused_imports)] // each test binary uses a different part
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use makenaide_tests::lambda_env::{free_port, CoreClient, EnvConfig, LambdaEnv};
use makenaide_tests::pg::TestDb;
use makenaide_tests::upbit_sim::{SimConfig, SimHandle, UpbitSim};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub use makenaide_contract::functions::DATA_COLLECTOR as COLLECTOR;
pub use makenaide_contract::functions::DB_INITIALIZER as INITIALIZER;
pub use makenaide_contract::functions::ORCHESTRATOR;
pub use makenaide_contract::functions::SCANNER;
pub const CORE_APP_NAME: &str = "makenaide-core";
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);
/// The extension's default `MAKENAIDE_DB_CONNECT_TIMEOUT_MS` (contract): the bound of a 503 when the DB is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(2000);

/// Appends a block of figures to the test file's section of the reliability report through
/// [`makenaide_tests::report::record`] (`$MAKENAIDE_REPORT_DIR/<stem>.md` when that variable is set; always printed).
/// The block goes out in one `record` call (one write), so the blocks of tests running in parallel threads of the
/// same binary do not interleave.
pub fn report(stem: &str, title: &str, lines: &[String]) {
    let mut text = format!("\n**{title}**\n\n");
    for l in lines {
        text.push_str(&format!("- {l}\n"));
    }
    makenaide_tests::report::record(stem, &format!("{text}\n"));
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `n=…, min …, p50 …, p95 …, max …` of a set of durations.
pub fn summary(samples: &[Duration]) -> String {
    if samples.is_empty() {
        return "n=0".into();
    }
    let mut s = samples.to_vec();
    s.sort();
    let pct = |p: f64| s[((s.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={}, min {}, p50 {}, p95 {}, max {}",
        s.len(),
        ms(s[0]),
        ms(pct(0.5)),
        ms(pct(0.95)),
        ms(s[s.len() - 1])
    )
}

pub fn median(samples: &[Duration]) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s.get(s.len() / 2).copied().unwrap_or_default()
}

/// Polls `check` with a short backoff (1 ms doubling to 50 ms) until it yields `Some`, or `timeout` passes. For
/// conditions only observable by asking (e.g. `pg_stat_activity`); `timeout` is an upper bound, not a delay.
pub async fn poll<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Duration::from_millis(1);
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() + backoff > deadline {
            return None;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
}

/// The simulated Upbit with its rate limit out of the way (these tests are about something else). Remaining-Req
/// stays high too: the extension paces itself on it (the shared per-IP truth).
pub async fn unthrottled_sim(config: SimConfig) -> SimHandle {
    let sim = UpbitSim::start(config).await.unwrap();
    sim.set_rate_limit_enabled(false);
    sim.set_rate_per_second(10_000);
    sim
}

/// The simulator's default configuration with its clock fixed at now, so its candles cannot change during a test.
pub fn fixed_clock() -> SimConfig {
    SimConfig {
        now: Some(chrono::Utc::now()),
        ..SimConfig::default()
    }
}

/// The simulator's KRW market codes, in catalog order.
pub fn krw_markets(sim: &SimHandle) -> Vec<String> {
    sim.catalog()
        .codes()
        .into_iter()
        .filter(|c| c.starts_with("KRW-"))
        .collect()
}

/// An Upbit base URL on a port nothing listens on, for environments that must never need Upbit.
pub fn dead_upbit() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// The environment's makenaide-core client, once `/ping` reports the database ready (bounded: 10 s).
pub async fn ready_core(env: &LambdaEnv) -> CoreClient {
    let core = env.core();
    core.wait_ready(true, Duration::from_secs(10)).await.unwrap();
    core
}

/// A function + makenaide-core wired to `db_url` and `upbit_url`.
pub fn env_config(function: &str, db_url: &str, upbit_url: &str) -> EnvConfig {
    EnvConfig::makenaide(function)
        .env("MAKENAIDE_DATABASE_URL", db_url)
        .env("MAKENAIDE_UPBIT_BASE_URL", upbit_url)
        .timeout(Duration::from_secs(60))
}

/// Runs the real db-initializer once in an environment of its own, so collectors find the schema.
pub async fn init_schema(db_url: &str) {
    // Upbit is not used by the initializer.
    let env = LambdaEnv::start(env_config(INITIALIZER, db_url, &dead_upbit()))
        .await
        .unwrap_or_else(|e| panic!("db-initializer environment: {e}"));
    let out = env.invoke(json!({})).await.unwrap();
    out.ok().expect("db-initializer succeeds");
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// `result` of the old envelope `{"success": true, "result": {...}, ...}`, asserting success.
pub fn result_of(response: &Value) -> &Value {
    assert_eq!(
        response.get("success"),
        Some(&Value::Bool(true)),
        "not a success envelope: {response}"
    );
    assert!(
        response.get("execution_time").and_then(Value::as_f64).is_some(),
        "no execution_time: {response}"
    );
    assert!(
        response.get("timestamp").and_then(Value::as_str).is_some(),
        "no timestamp: {response}"
    );
    response
        .get("result")
        .unwrap_or_else(|| panic!("no result: {response}"))
}

/// The simulated Upbit as these tests use it.
pub struct Upbit {
    inner: makenaide_tests::upbit_sim::SimHandle,
}

impl Upbit {
    pub async fn start() -> Self {
        let sim = makenaide_tests::upbit_sim::UpbitSim::start(Default::default()).await;
        Self {
            inner: sim.expect("start the simulated Upbit"),
        }
    }

    pub fn base_url(&self) -> String {
        self.inner.base_url()
    }

    /// Fixes the simulator's clock (2025-03-14 06:30 UTC), so two calls for the same candles answer the same bytes
    /// (a direct call to compare with, a README example's output).
    pub fn fix_clock(&self) {
        use chrono::TimeZone;
        self.inner.set_now(Some(
            chrono::Utc
                .with_ymd_and_hms(2025, 3, 14, 6, 30, 0)
                .single()
                .expect("a valid time"),
        ));
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.inner.connections()
    }

    /// The simulator itself (knobs, stats, faults).
    pub fn sim(&self) -> &makenaide_tests::upbit_sim::SimHandle {
        &self.inner
    }

    /// Every candle the server answered with, for `interval` (`days`, `minutes/5`, ...), in the order served:
    /// `(market, candle JSON object)`.
    pub fn served_candles(&self, interval: &str) -> Vec<(String, Value)> {
        self.inner.served_candles(interval)
    }
}

/// Test database + simulated Upbit.
pub struct Backends {
    pub db: TestDb,
    pub upbit: Upbit,
}

impl Backends {
    pub async fn start() -> Self {
        let db = TestDb::create().await.expect("test database");
        let upbit = Upbit::start().await;
        Self { db, upbit }
    }

    /// The configuration of a function + makenaide-core wired to these backends.
    pub fn env_config(&self, function: &str) -> EnvConfig {
        env_config(function, self.db.url(), &self.upbit.base_url())
    }

    pub async fn start_env(&self, function: &str) -> LambdaEnv {
        match LambdaEnv::start(self.env_config(function)).await {
            Ok(env) => env,
            Err(e) => panic!("environment for {function} did not start: {e}"),
        }
    }

    /// Runs the db-initializer once (its own environment), so a collector finds the schema.
    pub async fn init_schema(&self) {
        init_schema(self.db.url()).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Candles: stored vs served
// ---------------------------------------------------------------------------------------------------------------

/// One `ohlcv` row, in Upbit's JSON shape, for comparison with what the simulated Upbit served.
pub fn candle_key_fields(c: &Value) -> (String, Value) {
    let utc = c["candle_date_time_utc"].as_str().unwrap().to_string();
    let fields = json!({
        "candle_date_time_kst": c["candle_date_time_kst"],
        "opening_price": c["opening_price"].as_f64(),
        "high_price": c["high_price"].as_f64(),
        "low_price": c["low_price"].as_f64(),
        "trade_price": c["trade_price"].as_f64(),
        "candle_acc_trade_volume": c["candle_acc_trade_volume"].as_f64(),
        "candle_acc_trade_price": c["candle_acc_trade_price"].as_f64(),
        "timestamp": c["timestamp"].as_i64(),
    });
    (utc, fields)
}

/// `(market, candle_date_time_utc)` → fields, as stored in `ohlcv`, for comparison with [`served`].
pub async fn stored_candles(db: &TestDb, interval: &str) -> BTreeMap<(String, String), Value> {
    let client = db.connect().await.unwrap();
    let rows = client
        .query(
            "select market, to_char(candle_date_time_utc, 'YYYY-MM-DD\"T\"HH24:MI:SS'),
                    to_char(candle_date_time_kst, 'YYYY-MM-DD\"T\"HH24:MI:SS'),
                    opening_price, high_price, low_price, trade_price,
                    candle_acc_trade_volume, candle_acc_trade_price, timestamp
               from ohlcv where interval = $1",
            &[&interval],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            let key = (r.get::<_, String>(0), r.get::<_, String>(1));
            let fields = json!({
                "candle_date_time_kst": r.get::<_, String>(2),
                "opening_price": r.get::<_, f64>(3),
                "high_price": r.get::<_, f64>(4),
                "low_price": r.get::<_, f64>(5),
                "trade_price": r.get::<_, f64>(6),
                "candle_acc_trade_volume": r.get::<_, f64>(7),
                "candle_acc_trade_price": r.get::<_, f64>(8),
                "timestamp": r.get::<_, i64>(9),
            });
            (key, fields)
        })
        .collect()
}

/// What Upbit served, last answer per candle (a re-served candle replaces the earlier one, as the upsert does).
pub fn served(upbit: &SimHandle, interval: &str) -> BTreeMap<(String, String), Value> {
    upbit
        .served_candles(interval)
        .into_iter()
        .map(|(market, c)| {
            let (utc, fields) = candle_key_fields(&c);
            ((market, utc), fields)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Counting proxy
// ---------------------------------------------------------------------------------------------------------------

/// What the clients sent through a [`PgProxy`]: frontend messages by type (`Q` simple query, `P` parse, `B` bind,
/// `E` execute, `S` sync, `D` describe, `C` close, `X` terminate, ...) and the text of every simple query.
/// `round_trips` counts the client's turns: a burst of messages sent after the server last spoke (so a pipelined
/// `BEGIN` + every Bind/Execute is one; startup and authentication are not counted).
#[derive(Debug, Clone, Default)]
pub struct ProxyStats {
    pub connections: u64,
    pub by_type: BTreeMap<char, u64>,
    pub simple_queries: Vec<String>,
    pub round_trips: u64,
}

impl ProxyStats {
    pub fn count(&self, t: char) -> u64 {
        self.by_type.get(&t).copied().unwrap_or(0)
    }

    /// What happened between `before` (an earlier snapshot) and `self`.
    pub fn since(&self, before: &ProxyStats) -> ProxyStats {
        let mut by_type = BTreeMap::new();
        for (t, n) in &self.by_type {
            let d = n - before.count(*t);
            if d > 0 {
                by_type.insert(*t, d);
            }
        }
        ProxyStats {
            connections: self.connections - before.connections,
            by_type,
            simple_queries: self.simple_queries[before.simple_queries.len()..].to_vec(),
            round_trips: self.round_trips - before.round_trips,
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of a PostgreSQL server that parses (never alters) what clients send. Closing
/// is passed through both ways (a server-side FIN or reset reaches the client), so a terminated backend looks to
/// the client exactly as without the proxy. Stopped on drop.
pub struct PgProxy {
    pub port: u16,
    stats: Arc<Mutex<ProxyStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Mutex::new(ProxyStats::default()));
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                st.lock().unwrap().connections += 1;
                let st = st.clone();
                conns.spawn(relay(client, server, st));
            }
        });
        Self { port, stats, task }
    }

    pub fn stats(&self) -> ProxyStats {
        self.stats.lock().unwrap().clone()
    }

    /// `postgres://user@127.0.0.1:<proxy port>/db?sslmode=disable` from a direct URL (same user and database;
    /// plain text, or the proxy could not read the messages).
    pub fn url_for(&self, direct_url: &str) -> String {
        let (scheme_auth, rest) = direct_url.split_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        let path = path.split('?').next().unwrap();
        format!("{scheme_auth}@127.0.0.1:{}{path}?sslmode=disable", self.port)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, stats: Arc<Mutex<ProxyStats>>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when the server has sent something since the client's last counted turn.
    let server_spoke = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let spoke = server_spoke.clone();
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Before forwarding: the client's next turn can only start once it has this.
            spoke.store(true, std::sync::atomic::Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    let up = async move {
        let mut parser = FrontendParser::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if parser.feed(&buf[..n], &stats) > 0 && server_spoke.swap(false, std::sync::atomic::Ordering::SeqCst) {
                stats.lock().unwrap().round_trips += 1;
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    // Either direction ending (server FIN/RST, client gone) ends both, like a real socket would.
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

/// Splits the client→server byte stream into protocol messages (the untyped startup/SSL/cancel packets first).
#[derive(Default)]
struct FrontendParser {
    buf: Vec<u8>,
    started: bool,
}

impl FrontendParser {
    /// Parses what arrived; returns how many complete messages of the query protocol it held (authentication `p`
    /// and `X` terminate left out).
    fn feed(&mut self, data: &[u8], stats: &Mutex<ProxyStats>) -> u64 {
        self.buf.extend_from_slice(data);
        let mut queries = 0;
        loop {
            if !self.started {
                if self.buf.len() < 8 {
                    return queries;
                }
                let len = u32::from_be_bytes(self.buf[0..4].try_into().unwrap()) as usize;
                if self.buf.len() < len {
                    return queries;
                }
                let code = u32::from_be_bytes(self.buf[4..8].try_into().unwrap());
                // SSLRequest / GSSENCRequest are followed by another untyped packet.
                self.started = !matches!(code, 80_877_103 | 80_877_104);
                self.buf.drain(..len.max(8));
                continue;
            }
            if self.buf.len() < 5 {
                return queries;
            }
            let t = self.buf[0] as char;
            let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
            if self.buf.len() < 1 + len {
                return queries;
            }
            let mut st = stats.lock().unwrap();
            *st.by_type.entry(t).or_default() += 1;
            if t != 'p' && t != 'X' {
                queries += 1;
            }
            if t == 'Q' {
                let body = &self.buf[5..1 + len];
                let text = body.split(|b| *b == 0).next().unwrap_or_default();
                st.simple_queries.push(String::from_utf8_lossy(text).into_owned());
            }
            drop(st);
            self.buf.drain(..1 + len);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// PgBouncer
// ---------------------------------------------------------------------------------------------------------------

/// Debian's PgBouncer binary (installed by scripts/setup.sh).
pub const PGBOUNCER_BIN: &str = "/usr/sbin/pgbouncer";

/// A PgBouncer child process in transaction pooling mode in front of 127.0.0.1:`upstream_port` (trust auth), on a
/// free port; killed on drop.
pub struct PgBouncer {
    pub port: u16,
    pub version: String,
    pub default_pool_size: u32,
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// `(major, minor)` of the installed PgBouncer, and its version line.
    pub fn installed_version() -> Option<((u32, u32), String)> {
        let out = std::process::Command::new(PGBOUNCER_BIN)
            .arg("--version")
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().next()?.trim().to_string();
        let v = line.split_whitespace().nth(1)?;
        let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Some(((it.next()?, it.next()?), line))
    }

    pub async fn start(upstream_port: u16, default_pool_size: u32) -> Self {
        let (_, version) =
            Self::installed_version().expect("pgbouncer is not installed (scripts/setup.sh installs Debian's package)");
        let dir = tempfile::Builder::new().prefix("mk-pgb-").tempdir().unwrap();
        let port = free_port();
        let auth = dir.path().join("userlist.txt");
        std::fs::write(&auth, "\"postgres\" \"\"\n").unwrap();
        let as_root = nix::unistd::geteuid().is_root();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={upstream_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {auth}\n\
             pool_mode = transaction\ndefault_pool_size = {default_pool_size}\nmin_pool_size = 0\n\
             reserve_pool_size = 0\nmax_db_connections = {default_pool_size}\nmax_client_conn = 1000\n\
             server_reset_query =\nignore_startup_parameters = extra_float_digits\n\
             admin_users = postgres\nstats_users = postgres\n{user}",
            auth = auth.display(),
            // PgBouncer refuses to run as root: it switches to this user after reading its files.
            user = if as_root { "user = postgres\n" } else { "" },
        );
        let ini_path = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini_path, ini).unwrap();
        let log = std::fs::File::create(dir.path().join("pgbouncer.log")).unwrap();
        let mut cmd = tokio::process::Command::new(PGBOUNCER_BIN);
        cmd.arg(&ini_path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn pgbouncer");
        let me = Self {
            port,
            version,
            default_pool_size,
            child,
            dir,
        };
        // Ready = it answers a real query (its own readiness signal); bounded.
        let url = me.url("postgres");
        let ready = poll(Duration::from_secs(15), || {
            let url = url.clone();
            async move {
                let c = makenaide_tests::pg::connect(&url).await.ok()?;
                c.simple_query("select 1").await.ok().map(|_| ())
            }
        })
        .await;
        assert!(ready.is_some(), "pgbouncer did not become ready: {}", me.log());
        me
    }

    /// URL of database `db` through PgBouncer.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// `SHOW POOLS` etc. through the admin console (simple protocol only).
    pub async fn admin(&self, command: &str) -> Vec<BTreeMap<String, String>> {
        let c = makenaide_tests::pg::connect(&self.url("pgbouncer")).await.unwrap();
        let msgs = c.simple_query(command).await.unwrap();
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    r.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Elapsed time of a future.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let v = f.await;
    (v, t.elapsed())
}

// ---------------------------------------------------------------------------------------------------------------
// Cutting proxy
// ---------------------------------------------------------------------------------------------------------------

/// A direction of a PostgreSQL connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Client → server (the extension's messages).
    Up,
    /// Server → client (PostgreSQL's replies).
    Down,
}

/// Where a [`CutProxy`] cuts: before byte `at` of message `message` (0-based, counted from the first byte the armed
/// connection sends after [`CutProxy::arm`]) of `flow`. Message boundaries are found by parsing the live stream
/// (typed messages: type byte + big-endian length), so the cut lands at the same place in the protocol even when
/// the exchange's length varies by a byte (e.g. tokio-postgres' statement names `s9` → `s10`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub flow: Flow,
    pub message: usize,
    pub at: usize,
}

/// What the armed connection exchanged (the bytes forwarded, each way) and whether the cut happened.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    pub up: Vec<u8>,
    pub down: Vec<u8>,
    pub cut: bool,
    /// `(flow, offset in that flow's bytes)` where each burst began: a burst is what one side sent before the
    /// other spoke again, so the client's bursts are its round trips.
    pub bursts: Vec<(Flow, usize)>,
}

/// `(type, offset, length incl. the type byte)` of each complete typed message in `bytes`.
pub fn pg_messages(bytes: &[u8]) -> Vec<(char, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= bytes.len() {
        let len = 1 + u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
        if i + len > bytes.len() {
            break;
        }
        out.push((bytes[i] as char, i, len));
        i += len;
    }
    out
}

/// Offset in `bytes` of the start of message `m`, when the headers of the messages before it are all in `bytes`.
fn message_start(bytes: &[u8], m: usize) -> Option<usize> {
    let mut i = 0;
    for _ in 0..m {
        if i + 5 > bytes.len() {
            return None;
        }
        i += 1 + u32::from_be_bytes(bytes[i + 1..i + 5].try_into().unwrap()) as usize;
    }
    Some(i)
}

struct Arm {
    /// Only connections accepted before arming can be bound (never the fresh connection of a retry).
    eligible_below: u64,
    cut: Option<Cut>,
    bound: Option<u64>,
    ex: Exchange,
}

#[derive(Default)]
struct CutState {
    accepted: u64,
    open: u64,
    arm: Option<Arm>,
}

impl CutState {
    /// How many bytes of `data` (read on connection `id`, flowing `flow`) to forward, and whether to cut after them.
    fn account(&mut self, id: u64, flow: Flow, data: &[u8]) -> (usize, bool) {
        let Some(arm) = &mut self.arm else {
            return (data.len(), false);
        };
        match arm.bound {
            Some(b) if b == id => {}
            // The armed exchange starts with the first client bytes of an eligible (already open) connection.
            None if flow == Flow::Up && id < arm.eligible_below && !arm.ex.cut => arm.bound = Some(id),
            _ => return (data.len(), false),
        }
        let sent = match flow {
            Flow::Up => &mut arm.ex.up,
            Flow::Down => &mut arm.ex.down,
        };
        let mut pass = data.len();
        let mut cut = false;
        if let Some(c) = arm.cut.filter(|c| c.flow == flow) {
            let mut all = sent.clone();
            all.extend_from_slice(data);
            if let Some(start) = message_start(&all, c.message) {
                let k = start + c.at;
                if k < all.len() {
                    pass = k.saturating_sub(sent.len());
                    cut = true;
                }
            }
        }
        if pass > 0 && arm.ex.bursts.last().map(|(f, _)| *f) != Some(flow) {
            arm.ex.bursts.push((flow, sent.len()));
        }
        sent.extend_from_slice(&data[..pass]);
        arm.ex.cut |= cut;
        (pass, cut)
    }
}

/// A TCP proxy on 127.0.0.1 in front of PostgreSQL that passes everything through until armed, then records one
/// connection's exchange and, when told, cuts that connection at a chosen byte of either direction: it forwards
/// the bytes before the cut, then closes the client side and sends the server a FIN (so PostgreSQL reads every
/// byte it was given, then end-of-file, as when a client dies), draining what the server still sends. Plain text
/// only (`sslmode=disable`), so offsets are protocol offsets. Stopped on drop.
pub struct CutProxy {
    pub port: u16,
    state: Arc<Mutex<CutState>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(CutState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
                    continue;
                };
                let id = {
                    let mut s = st.lock().unwrap();
                    s.accepted += 1;
                    s.open += 1;
                    s.accepted - 1
                };
                conns.spawn(cut_relay(id, client, server, st.clone()));
            }
        });
        Self { port, state, task }
    }

    /// The URL of `direct_url`'s database through this proxy (plain text).
    pub fn url_for(&self, direct_url: &str) -> String {
        proxied_url(direct_url, self.port)
    }

    /// Records the next exchange (the first client bytes on a connection already open) and cuts it at `cut`.
    pub fn arm(&self, cut: Option<Cut>) {
        let mut s = self.state.lock().unwrap();
        let eligible_below = s.accepted;
        s.arm = Some(Arm {
            eligible_below,
            cut,
            bound: None,
            ex: Exchange::default(),
        });
    }

    /// Stops recording; returns what the armed connection exchanged.
    pub fn disarm(&self) -> Exchange {
        self.state.lock().unwrap().arm.take().map(|a| a.ex).unwrap_or_default()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.lock().unwrap().accepted
    }

    /// Connections relayed right now (a closed one is counted out once both of its sides are closed).
    pub fn open(&self) -> u64 {
        self.state.lock().unwrap().open
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `postgres://user@127.0.0.1:<port>/db?sslmode=disable` from a direct URL (same user and database).
fn proxied_url(direct_url: &str, port: u16) -> String {
    let (scheme_auth, rest) = direct_url.split_once('@').unwrap();
    let path = &rest[rest.find('/').unwrap()..];
    let path = path.split('?').next().unwrap();
    format!("{scheme_auth}@127.0.0.1:{port}{path}?sslmode=disable")
}

async fn cut_relay(id: u64, client: TcpStream, server: TcpStream, state: Arc<Mutex<CutState>>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut ub = vec![0u8; 64 * 1024];
    let mut db = vec![0u8; 64 * 1024];
    loop {
        // One task for both directions: the exchanges here are a few hundred bytes, so a write never blocks long.
        let (flow, read) = tokio::select! {
            r = cr.read(&mut ub) => (Flow::Up, r),
            r = sr.read(&mut db) => (Flow::Down, r),
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = if flow == Flow::Up { &ub[..n] } else { &db[..n] };
        let (pass, cut) = state.lock().unwrap().account(id, flow, data);
        let written = match flow {
            Flow::Up => sw.write_all(&data[..pass]).await,
            Flow::Down => cw.write_all(&data[..pass]).await,
        };
        if written.is_err() {
            break;
        }
        if cut {
            // FIN (not a reset) to the server after the bytes it was given: it processes all of them, then sees
            // the client gone. The client side closes now; the server's leftovers are drained until it closes.
            let _ = sw.shutdown().await;
            let _ = cw.shutdown().await;
            drop((cr, cw));
            let drain = async { while matches!(sr.read(&mut db).await, Ok(n) if n > 0) {} };
            let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
            state.lock().unwrap().open -= 1;
            return;
        }
    }
    // Either side ending ends both, like a real socket would.
    let _ = cw.shutdown().await;
    let _ = sw.shutdown().await;
    state.lock().unwrap().open -= 1;
}
