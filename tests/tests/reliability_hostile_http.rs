//! Hostile HTTP against the real extension binary (emulated Lambda environment, real PostgreSQL, the simulated
//! Upbit): connections held open cannot lock the function out (256 idle + 256 slowloris heads, then a real request
//! and a real invocation succeed); when every connection is serving a request, each further one gets a JSON 429 at
//! once, far past any fixed allowance; hyper-level failures (bad request line, 10 KB target, 100 KB of headers) and
//! `Forwarded:` get the contract's JSON error body; pool saturation is 503 `db_busy` with `Retry-After`; 1,100
//! distinct candle GETs within the cache TTL leave the cache within its byte bound. `rss_after_large_responses`
//! (ignored; run by `bench/allocator.sh`) prints the extension's RSS around a 1M-row result and those GETs.
//! Figures go to the reliability report (`reliability_hostile_http`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use makenaide_contract::ErrorCode;
use makenaide_tests::lambda_env::{CoreClient, EnvConfig, LambdaEnv, EXTENSION};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STEM: &str = "reliability_hostile_http";

/// Reads until the extension closes the connection (bounded), returning everything it sent.
async fn read_to_close(conn: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// `(status, JSON body)` of a raw reply.
fn parse_reply(reply: &str) -> (u16, Value) {
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A new connection with a served `GET /ping`, left open (an idle keep-alive connection).
async fn idle_connection(port: u16) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn
}

/// A connection whose request is being served: a `POST` announcing a body it never sends, once the extension's
/// `100 Continue` shows the handler is reading it.
async fn request_in_progress(port: u16, token: &str) -> TcpStream {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /db/query HTTP/1.1\r\nHost: x\r\n{}: {token}\r\nExpect: 100-continue\r\nContent-Length: 20\r\n\r\n",
        makenaide_contract::headers::TOKEN
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    conn
}

/// 256 idle keep-alive connections and 256 slowloris heads (half a request line, then nothing) at the default cap
/// of 256: a real `/db/query` and a real invocation still succeed, the idle connections were closed to make room
/// (end of stream, no reply), and the extension is still up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connections_cannot_lock_the_function_out() {
    let b = Backends::start().await;
    b.init_schema().await;
    let env = b.start_env(COLLECTOR).await;
    let core = ready_core(&env).await;
    let port = env.core_port();
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(idle_connection(port).await);
    }
    let mut slow = Vec::new();
    for _ in 0..256 {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        conn.write_all(b"GET /v1/ticker?mar").await.unwrap();
        slow.push(conn);
    }
    // Accepted in order: by the time this request's connection is admitted, all 512 above have been.
    let r = core.query_raw("select 41 + 1 as answer", json!([])).await.unwrap();
    assert_eq!(
        (r.status, r.json()["rows"].clone()),
        (200, json!([[42]])),
        "{:?}",
        r.json()
    );
    let out = env.invoke(json!({"markets": ["KRW-BTC"], "count": 2})).await.unwrap();
    result_of(out.ok().unwrap());
    // The 256 idle connections made room for the slowloris heads: each was closed without a reply.
    let mut closed = 0;
    for conn in &mut idle {
        assert_eq!(read_to_close(conn).await, "");
        closed += 1;
    }
    assert!(!env.extension(EXTENSION).unwrap().has_exited());
    report(
        STEM,
        "Connections held open",
        &[format!(
            "cap 256 (default): 256 idle keep-alive + 256 slowloris heads held; a `/db/query` and an invocation \
             succeeded; the {closed} idle connections were closed (longest idle first) to make room"
        )],
    );
    drop(slow);
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// Cap 8 with 8 requests in progress: 200 further connections each get a complete JSON 429 before sending a
/// byte (no silent drop past the cap + 64 of before); once the 8 end, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_busy_gets_a_json_429_at_once() {
    const CAP: usize = 8;
    let env = LambdaEnv::start(
        env_config(
            COLLECTOR,
            "postgres://nobody@127.0.0.1:1/x?sslmode=disable",
            &dead_upbit(),
        )
        .env("MAKENAIDE_MAX_CONNECTIONS", CAP.to_string()),
    )
    .await
    .unwrap();
    let core = env.core();
    core.wait_ready(false, Duration::from_secs(10)).await.unwrap();
    let port = env.core_port();
    let mut busy = Vec::new();
    for _ in 0..CAP {
        busy.push(request_in_progress(port, env.core_token()).await);
    }
    for i in 0..200 {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (status, body) = parse_reply(&read_to_close(&mut conn).await);
        assert_eq!(
            (status, code(&body)),
            (429, ErrorCode::TooManyConnections.as_str()),
            "connection {} over the cap: {body}",
            i + 1
        );
    }
    drop(busy);
    // The freed slots are seen asynchronously: poll until a request is served.
    let served = poll(Duration::from_secs(5), || async {
        core.ping().await.ok().filter(|v| v["status"] == "ok")
    })
    .await;
    assert!(served.is_some(), "never served again after the busy connections ended");
    report(
        STEM,
        "Every connection busy",
        &[format!(
            "cap {CAP}, {CAP} requests in progress: 200 further connections each got a JSON 429 \
             `too_many_connections` before sending anything; served again once they ended"
        )],
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// What hyper refuses before any handler runs, and `Forwarded:`, get the contract's JSON error body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyper_level_failures_and_forwarded_get_json_error_bodies() {
    let env = LambdaEnv::start(env_config(COLLECTOR, "postgres://nobody@127.0.0.1:1/x", &dead_upbit()))
        .await
        .unwrap();
    env.core().wait_ready(false, Duration::from_secs(10)).await.unwrap();
    let port = env.core_port();
    let token = env.core_token().to_string();
    let tok = makenaide_contract::headers::TOKEN;
    let cases = [
        (
            "bad request line",
            "NOT HTTP AT ALL\r\n\r\n".to_string(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "bad header line",
            "GET /ping HTTP/1.1\r\nno colon here\r\n\r\n".to_string(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "10 KB target",
            format!(
                "GET /v1/ticker?markets={} HTTP/1.1\r\nHost: x\r\n{tok}: {token}\r\nConnection: close\r\n\r\n",
                "KRW-BTC,".repeat(1280)
            ),
            414,
            ErrorCode::UriTooLong,
        ),
        (
            "100 KB of headers",
            format!(
                "GET /ping HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..50)
                    .map(|i| format!("X-Filler-{i}: {}\r\n", "f".repeat(2048)))
                    .collect::<String>()
            ),
            431,
            ErrorCode::HeadersTooLarge,
        ),
        (
            "Forwarded",
            "GET /ping HTTP/1.1\r\nHost: x\r\nForwarded: for=192.0.2.1\r\nConnection: close\r\n\r\n".to_string(),
            400,
            ErrorCode::ForwardedRequest,
        ),
    ];
    let mut lines = Vec::new();
    for (what, request, status, want) in cases {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let reply = read_to_close(&mut conn).await;
        let (got, body) = parse_reply(&reply);
        assert_eq!((got, code(&body)), (status, want.as_str()), "{what}: {reply:.300}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}: {body}"
        );
        lines.push(format!("{what}: {status} `{}` with a JSON body", want.as_str()));
    }
    // The extension is fine and serves the next request.
    assert_eq!(env.core().ping().await.unwrap()["status"], "ok");
    report(STEM, "Errors inside the contract", &lines);
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// `MAKENAIDE_DB_POOL_SIZE=1` with its one connection held (a request waiting on an advisory lock the test
/// holds): another request gets 503 `db_busy` with `Retry-After` within the checkout wait, `/ping` still says the
/// database is ready (saturation is not an outage), and both work once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_saturation_is_db_busy_with_retry_after() {
    let b = Backends::start().await;
    let env = LambdaEnv::start(
        b.env_config(COLLECTOR)
            .env("MAKENAIDE_DB_POOL_SIZE", "1")
            .env("MAKENAIDE_DB_CONNECT_TIMEOUT_MS", "300"),
    )
    .await
    .unwrap();
    let core = ready_core(&env).await;
    let holder_db = b.db.connect().await.unwrap();
    holder_db.execute("select pg_advisory_lock(4242)", &[]).await.unwrap();
    let holder = {
        let core = core.clone();
        tokio::spawn(async move {
            core.query_raw("select pg_advisory_xact_lock(4242), 1 as held", json!([]))
                .await
                .unwrap()
        })
    };
    // Readiness: the extension's one connection is waiting on the lock.
    let probe = b.db.connect().await.unwrap();
    let waiting = poll(Duration::from_secs(5), || async {
        let n: i64 = probe
            .query_one(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like '%pg_advisory_xact_lock(4242)%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the holding request never reached PostgreSQL");
    let r = core.query_raw("select 1", json!([])).await.unwrap();
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (503, Some(ErrorCode::DbBusy.as_str())),
        "{:?}",
        r.json()
    );
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("busy"));
    assert_eq!(core.ping().await.unwrap()["db"], "ready");
    holder_db.execute("select pg_advisory_unlock(4242)", &[]).await.unwrap();
    let held = holder.await.unwrap();
    assert_eq!(held.status, 200, "{:?}", held.json());
    let r = core.query_raw("select 1 as one", json!([])).await.unwrap();
    assert_eq!(r.status, 200);
    report(
        STEM,
        "Pool saturation",
        &[format!(
            "pool of 1 held: 503 `db_busy` with `Retry-After: 1` after the 300 ms checkout wait, `/ping` db `ready`; \
             message `{}`",
            r.json()["error"]["message"].as_str().unwrap_or_default()
        )],
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// VmRSS and VmHWM (peak) of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `n` distinct GETs of `count` candles within the cache TTL, 16 at a time; returns the cache's view from
/// `/metrics`.
async fn distinct_candle_gets(core: &CoreClient, n: usize, count: usize) -> Value {
    let mut set = tokio::task::JoinSet::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let core = core.clone();
        let next = next.clone();
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let to = format!("2025-01-{:02}T{:02}:{:02}:00", 1 + i / 1440, (i / 60) % 24, i % 60);
                let r = core
                    .get(&format!("/v1/candles/minutes/1?market=KRW-BTC&count={count}&to={to}"))
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{:?}", r.json());
            }
        });
    }
    set.join_all().await;
    let metrics = core.get(makenaide_contract::routes::METRICS).await.unwrap().json();
    metrics["upbit_cache"].clone()
}

fn cached_env(db_url: &str, upbit_url: &str) -> EnvConfig {
    env_config(COLLECTOR, db_url, upbit_url)
        .freeze(false)
        .env("MAKENAIDE_UPBIT_CACHE_TTL_MS", "60000")
        .env("MAKENAIDE_UPBIT_RATE_PER_SEC", "1000")
}

/// 1,100 distinct candle GETs (~5 KB each) within a 60 s TTL and a 1 MiB cache bound: the cache holds at most
/// its bound, not the 5+ MB of replies; the extension's RSS is printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_candle_gets_leave_the_cache_within_its_bounds() {
    let sim = unthrottled_sim(fixed_clock()).await;
    let env = LambdaEnv::start(
        cached_env("postgres://nobody@127.0.0.1:1/x", &sim.base_url())
            .env("MAKENAIDE_UPBIT_CACHE_MAX_BYTES", "1048576"),
    )
    .await
    .unwrap();
    let core = env.core();
    core.wait_ready(false, Duration::from_secs(10)).await.unwrap();
    let pid = env.extension(EXTENSION).unwrap().pid;
    let before = rss_kib(pid);
    let started = std::time::Instant::now();
    let cache = distinct_candle_gets(&core, 1100, 20).await;
    let took = started.elapsed();
    let after = rss_kib(pid);
    let bytes = cache["bytes"].as_u64().unwrap();
    let max = cache["max_bytes"].as_u64().unwrap();
    assert_eq!(max, 1 << 20);
    assert!(bytes <= max, "cache holds {bytes} bytes, bound {max}");
    assert!(cache["entries"].as_u64().unwrap() <= cache["max_entries"].as_u64().unwrap());
    assert!(bytes > max / 2, "the cache was used: {cache}");
    report(
        STEM,
        "Upbit cache bounded",
        &[format!(
            "1,100 distinct 20-candle GETs within a 60 s TTL in {}: cache {} entries, {} bytes (bound {max}); \
             extension VmRSS {} before, {} after (peak {}), printed not asserted",
            ms(took),
            cache["entries"],
            bytes,
            mib(before.0),
            mib(after.0),
            mib(after.1)
        )],
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// The allocator probe (`bench/allocator.sh` runs it once per allocator build through `MAKENAIDE_BIN_DIR`): the
/// extension's VmRSS before, at the peak of and after a 1M-row `/db/query`, then after 1,100 distinct candle GETs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by bench/allocator.sh"]
async fn rss_after_large_responses() {
    let label = std::env::var("MAKENAIDE_ALLOCATOR_LABEL").unwrap_or_else(|_| "this build".into());
    let db = makenaide_tests::pg::TestDb::create().await.unwrap();
    let sim = unthrottled_sim(fixed_clock()).await;
    let env = LambdaEnv::start(cached_env(db.url(), &sim.base_url())).await.unwrap();
    let core = ready_core(&env).await;
    let pid = env.extension(EXTENSION).unwrap().pid;
    core.query("select 1 as warm", json!([])).await.unwrap();
    let baseline = rss_kib(pid).0;
    let r = core
        .post_json(
            makenaide_contract::routes::DB_QUERY,
            &json!({"sql": "select g as n, 'row number ' || g as label from generate_series(1, 1000000) g",
                    "timeout_ms": 120000, "max_rows": 1_000_000, "max_response_bytes": 268_435_456_u64}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:.300}", String::from_utf8_lossy(&r.body));
    let json_mb = r.body.len() as f64 / 1e6;
    drop(r);
    let (after_rows, peak_rows) = rss_kib(pid);
    // A few small requests, as the next invocation would make.
    for _ in 0..5 {
        core.query("select 1 as after", json!([])).await.unwrap();
    }
    let settled = rss_kib(pid).0;
    distinct_candle_gets(&core, 1100, 200).await;
    let after_candles = rss_kib(pid).0;
    println!(
        "rss {label}: baseline {}, peak {} during the 1M-row result ({json_mb:.1} MB of JSON), {} right after, {} \
         after 5 small queries, {} after 1,100 distinct 200-candle GETs",
        mib(baseline),
        mib(peak_rows),
        mib(after_rows),
        mib(settled),
        mib(after_candles)
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}
