//! Reliability: PostgreSQL outages, on a throwaway cluster of its own (so it can be stopped and
//! restarted). The server crashes mid-run: requests get a JSON 503 `db_unavailable` within the connect timeout
//! (2 s by default) plus a margin, the function fails with a clear `DatabaseError`, the extension keeps running
//! and `/ping` answers; the server comes back: the next request succeeds with no restart. The same while the
//! processes are frozen: the server is stopped, or restarted, during the freeze.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use common::*;
use makenaide_tests::lambda_env::{ApiEventKind, LambdaEnv, EXTENSION};
use makenaide_tests::pg::{ClusterOptions, PgCluster};
use makenaide_tests::upbit_sim::SimConfig;
use serde_json::{json, Value};

const STEM: &str = "reliability_pg";
/// Scheduling noise on a busy 2-core machine, on top of the 2 s connect timeout.
const MARGIN: Duration = Duration::from_millis(1500);

fn assert_db_unavailable(status: u16, body: &Value, elapsed: Duration, what: &str) {
    assert_eq!(status, 503, "{what}: {body}");
    assert_eq!(
        body["error"]["code"],
        makenaide_contract::ErrorCode::DbUnavailable.as_str(),
        "{what}: {body}"
    );
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message: {body}"
    );
    assert!(
        elapsed <= CONNECT_TIMEOUT + MARGIN,
        "{what}: 503 took {elapsed:?} (bound {CONNECT_TIMEOUT:?} + {MARGIN:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_give_bounded_503s_and_recover_without_restart() {
    let cluster = PgCluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_database("app").await.unwrap();
    let url = cluster.url("app", Some("disable"));
    let sim = unthrottled_sim(SimConfig::default()).await;
    init_schema(&url).await;

    let env = LambdaEnv::start(env_config(COLLECTOR, &url, &sim.base_url()))
        .await
        .unwrap();
    let ext = env.extension(EXTENSION).unwrap();
    let ext_pid = ext.pid;
    let event = json!({"markets": ["KRW-ETH"], "interval": "days", "count": 2});
    let out = env.invoke(event.clone()).await.unwrap();
    result_of(out.ok().unwrap());
    let mut figures = Vec::new();

    // --- 1. crash mid-run (immediate stop) while the processes run ---
    let (crash_503s, ping_down) = {
        let _thawed = env.thaw();
        let core = env.core();
        core.query("select 1", json!([])).await.unwrap();
        cluster.stop(true).await.unwrap();
        let mut took = Vec::new();
        // First request: finds the dead pooled connection; later ones: nothing reachable at all.
        for i in 0..3 {
            let t = Instant::now();
            let r = core.query_raw("select 1", json!([])).await.unwrap();
            let d = t.elapsed();
            assert_db_unavailable(r.status, &r.json(), d, &format!("crash, request {i}"));
            took.push(d);
            if i == 0 {
                figures.push(format!(
                    "reply while the server is down: `{}`",
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        let ping = core.ping().await.unwrap();
        assert_eq!(ping["status"], "ok", "{ping}");
        assert!(!ext.has_exited(), "the extension exited when the database died");
        (took, ping)
    };
    assert_eq!(ping_down["db"], "unavailable", "{ping_down}");

    // The function: a clear DatabaseError, within the bound (Upbit answers at once; the DB write fails).
    let t = Instant::now();
    let out = env.invoke(event.clone()).await.unwrap();
    let fn_503 = t.elapsed();
    let err = out
        .error
        .clone()
        .unwrap_or_else(|| panic!("invoke succeeded with the DB down: {:?}", out.response));
    assert_eq!(err.error_type, "DatabaseError", "{err:?}");
    assert!(
        err.message
            .contains(makenaide_contract::ErrorCode::DbUnavailable.as_str()),
        "{err:?}"
    );
    assert!(fn_503 <= CONNECT_TIMEOUT + MARGIN, "function error took {fn_503:?}");
    figures.push(format!(
        "function error while down: `{}`: {}",
        err.error_type, err.message
    ));

    // --- server back: the next request succeeds, same extension process ---
    cluster.start_again().await.unwrap();
    let first_back = {
        let _thawed = env.thaw();
        let t = Instant::now();
        let v = env.core().query("select 1 as one", json!([])).await.unwrap();
        assert_eq!(v["rows"], json!([[1]]));
        t.elapsed()
    };
    let out = env.invoke(event.clone()).await.unwrap();
    result_of(out.ok().unwrap());

    // --- 2. server stopped while the processes are frozen ---
    assert!(env.is_frozen());
    cluster.stop(false).await.unwrap();
    let (frozen_stop_503, frozen_stop_fn) = {
        let t = Instant::now();
        let out = env.invoke(event.clone()).await.unwrap();
        let fn_took = t.elapsed();
        let err = out.error.clone().expect("invoke succeeded with the DB stopped");
        assert_eq!(err.error_type, "DatabaseError", "{err:?}");
        assert!(fn_took <= CONNECT_TIMEOUT + MARGIN, "function error took {fn_took:?}");
        let _thawed = env.thaw();
        let t = Instant::now();
        let r = env.core().query_raw("select 1", json!([])).await.unwrap();
        let d = t.elapsed();
        assert_db_unavailable(r.status, &r.json(), d, "stopped while frozen");
        (d, fn_took)
    };
    cluster.start_again().await.unwrap();
    let out = env.invoke(event.clone()).await.unwrap();
    let after_frozen_stop = out.duration;
    result_of(out.ok().unwrap());

    // --- 3. server restarted while the processes are frozen: the very next invocation succeeds ---
    let mut restart_invokes = Vec::new();
    for round in 0..3 {
        assert!(env.is_frozen());
        cluster.restart().await.unwrap();
        let out = env.invoke(event.clone()).await.unwrap();
        let result = result_of(out.ok().unwrap_or_else(|e| panic!("after restart {round}: {e}")));
        assert_eq!(result["stored"], json!({"KRW-ETH": 2}), "{result}");
        restart_invokes.push(out.duration);
    }

    // Never restarted, never exited.
    assert_eq!(env.extension(EXTENSION).unwrap().pid, ext_pid);
    assert!(
        !env.journal()
            .events()
            .iter()
            .any(|e| matches!(e.kind, ApiEventKind::ProcessExited { .. })),
        "a process exited during the outages"
    );
    let sd = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let core = sd.extension(EXTENSION).unwrap();
    assert!(core.exit.is_some_and(|e| e.success()) && !core.killed, "{core:?}");

    figures.splice(
        0..0,
        [
            format!(
                "server crashed (immediate stop) mid-run: `/db/query` → 503 `db_unavailable` in {} (bound asserted: {} connect timeout + {} margin); the extension stayed up, `/ping` said `{}`",
                summary(&crash_503s),
                ms(CONNECT_TIMEOUT),
                ms(MARGIN),
                ping_down["db"].as_str().unwrap_or("?")
            ),
            format!("data-collector invocation while down → `DatabaseError` after {}", ms(fn_503)),
            format!("server back: first `/db/query` succeeded in {} (no restart of the extension, same pid)", ms(first_back)),
            format!(
                "server stopped while frozen: invocation → `DatabaseError` after {}, direct `/db/query` → 503 in {}; after the server came back the next invocation succeeded ({})",
                ms(frozen_stop_fn),
                ms(frozen_stop_503),
                ms(after_frozen_stop)
            ),
            format!(
                "server restarted while frozen (3 rounds): the next invocation succeeded every time: {}",
                summary(&restart_invokes)
            ),
        ],
    );
    report(STEM, "PostgreSQL outages", &figures);
}

/// The server answers TCP but nothing else (postmaster and every backend SIGSTOPped, like a black-holed
/// network path): still a 503 within the connect timeout, with a warm pooled connection (which must first be
/// found dead) as well as without, and a message that says the database is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_bounded_by_the_connect_timeout() {
    let cluster = PgCluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_database("app").await.unwrap();
    let url = cluster.url("app", Some("disable"));
    let env = LambdaEnv::start(env_config(COLLECTOR, &url, &dead_upbit()).freeze(false))
        .await
        .unwrap();
    let core = ready_core(&env).await;
    core.query("select 1", json!([])).await.unwrap();

    let hung = Hung::stop(cluster_pids(&cluster));
    // Pooled connection: BEGIN gets no answer within half the connect timeout, then one retry on a fresh
    // connection with the other half.
    let t = Instant::now();
    let r = core.query_raw("select 1", json!([])).await.unwrap();
    let with_pooled = t.elapsed();
    // Nothing pooled any more: a fresh connect that gets no startup reply.
    let t = Instant::now();
    let r2 = core.query_raw("select 1", json!([])).await.unwrap();
    let fresh_only = t.elapsed();
    let ping = core.ping().await.unwrap();
    drop(hung);

    for (r, d, what) in [(&r, with_pooled, "pooled"), (&r2, fresh_only, "fresh")] {
        assert_eq!(r.status, 503, "{what}: {:?}", r.json());
        assert_eq!(
            r.json()["error"]["code"],
            makenaide_contract::ErrorCode::DbUnavailable.as_str(),
            "{what}"
        );
        // The contract: a down database answers 503 within the connect timeout (plus scheduling noise), also
        // when a pooled connection has to be found dead first.
        assert!(d <= CONNECT_TIMEOUT + MARGIN, "{what}: {d:?}");
        let msg = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(
            msg.contains("unreachable"),
            "{what}: the message does not say the database is unreachable: {msg}"
        );
    }
    assert_eq!(ping["status"], "ok");
    // Back: succeeds again.
    let v = poll(Duration::from_secs(15), || {
        let core = core.clone();
        async move { core.query("select 1 as one", json!([])).await.ok() }
    })
    .await
    .expect("no recovery after the server resumed");
    assert_eq!(v["rows"], json!([[1]]));
    let sd = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    assert!(sd.extension(EXTENSION).unwrap().exit.is_some_and(|e| e.success()));

    report(
        STEM,
        "Hung PostgreSQL (processes SIGSTOPped: TCP accepted, no reply)",
        &[
            format!(
                "with a warm pooled connection: 503 `db_unavailable` after {} (`BEGIN` unanswered within half the connect timeout, then one retry on a fresh connection with the other half): `{}`",
                ms(with_pooled),
                r.json()["error"]["message"].as_str().unwrap_or("")
            ),
            format!(
                "no pooled connection left: 503 after {}: `{}`",
                ms(fresh_only),
                r2.json()["error"]["message"].as_str().unwrap_or("")
            ),
        ],
    );
}

/// The postmaster (first line of `postmaster.pid`) and its children.
fn cluster_pids(cluster: &PgCluster) -> Vec<i32> {
    let dir = cluster.log_file().parent().unwrap().join("data");
    let text = std::fs::read_to_string(dir.join("postmaster.pid")).unwrap();
    let pm: i32 = text.lines().next().unwrap().trim().parse().unwrap();
    let mut pids = vec![pm];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pm) {
            pids.push(pid);
        }
    }
    pids
}

/// Every process of the cluster stopped (SIGSTOP) until dropped (SIGCONT), so a failing assertion never leaves a
/// stopped server behind (its `pg_ctl stop` on drop would wait for it).
struct Hung(Vec<i32>);

impl Hung {
    fn stop(pids: Vec<i32>) -> Self {
        assert!(!pids.is_empty());
        for p in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP);
        }
        Self(pids)
    }
}

impl Drop for Hung {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGCONT);
        }
    }
}
