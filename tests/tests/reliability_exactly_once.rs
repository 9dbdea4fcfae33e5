//! Reliability: exactly once. A write through the extension is applied once or not at all, and its answer says
//! which, wherever the connection to PostgreSQL breaks.
//!
//! A cutting proxy ([`CutProxy`]) sits between the extension and PostgreSQL (plain text, so offsets are protocol
//! offsets). A `/db/query` insert, without and then with result rows (`RETURNING`), is recorded on a warm connection
//! (the hot path: `BEGIN`, Bind/Execute/Sync and `COMMIT` in one round trip); then the same request, each time with
//! a fresh marker, is replayed once per byte boundary of every message of both directions (before the first byte,
//! inside each message, between messages: after the request and before its reply, inside the reply), and the
//! proxy cuts the connection there. Every byte, not just message boundaries: the whole exchange is under 200 bytes, so all
//! cases take a few seconds. For each cut the marker's rows are counted on a direct connection: 200 → exactly one
//! row; `db_outcome_unknown` → zero or one; any other error → zero. Never two.
//!
//! The second test kills the pooled backend (`pg_terminate_backend`) while the extension is idle, frozen or not,
//! and shows the next request finds the dead connection at checkout (zero round trips) and goes to a fresh one:
//! no error, and no request written to the dead socket and retried. The third sends the scanner's `scan_results`
//! insert twice with one idempotency key (a client's resend after `db_outcome_unknown`): one row. The fourth shows
//! the one exception to "never resent": in read-only mode a lost `COMMIT` reply is retried on a fresh connection.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use makenaide_contract::ErrorCode;
use makenaide_tests::lambda_env::LambdaEnv;
use makenaide_tests::pg::TestDb;
use serde_json::{json, Value};

const STEM: &str = "reliability_exactly_once";
/// No unique constraint on purpose: a request applied twice would show as two rows.
const TABLE: &str = "create table exactly_once (marker text not null)";
const INSERT: &str = "insert into exactly_once (marker) values ($1)";
const INSERT_RETURNING: &str = "insert into exactly_once (marker) values ($1) returning marker";
const KILL_CYCLES: usize = 10;

/// The port of a `postgres://user@host:port/db` URL.
fn port_of(url: &str) -> u16 {
    let after_at = url.split_once('@').unwrap().1;
    let host_port = after_at.split('/').next().unwrap();
    host_port.rsplit_once(':').map_or(5432, |(_, p)| p.parse().unwrap())
}

/// Markers all of one length, so every replay's Bind message has the recorded length.
fn marker(kind: char, n: usize) -> String {
    format!("{kind}{n:06}")
}

/// The extension alone matters here (a function process is started but never invoked): pool of one, so the warm
/// connection is the one the next request uses.
async fn start_env(db: &TestDb, proxy_url: &str) -> LambdaEnv {
    LambdaEnv::start(
        env_config(COLLECTOR, proxy_url, &dead_upbit())
            .env("MAKENAIDE_DB_POOL_SIZE", "1")
            // The "discarded at checkout" line is at debug level.
            .env("RUST_LOG", "info,makenaide_core::db=debug"),
    )
    .await
    .unwrap_or_else(|e| panic!("environment for {}: {e}", db.name()))
}

/// `Q(47) B(30) …` with the round trip of each message, for the report.
fn describe(bytes: &[u8], turns: &[usize]) -> String {
    pg_messages(bytes)
        .iter()
        .map(|(t, off, len)| format!("{t}({len}b, rt{})", turns.iter().filter(|s| **s <= *off).count()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Offsets in `ex.up` (or `ex.down`) where a new burst began: a client turn starts with the first client bytes after
/// the server last spoke (and a reply burst with the first server bytes after the client last spoke).
fn turns(ex: &Exchange, flow: Flow) -> Vec<usize> {
    ex.bursts
        .iter()
        .filter(|(f, _)| *f == flow)
        .map(|(_, off)| *off)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_at_every_byte_boundary_is_applied_once_or_not_at_all_and_the_answer_says_which() {
    let db = TestDb::create().await.unwrap();
    let direct = db.connect().await.unwrap();
    direct.batch_execute(TABLE).await.unwrap();
    let proxy = CutProxy::start(port_of(db.url())).await;
    let env = start_env(&db, &proxy.url_for(db.url())).await;
    let _thawed = env.thaw();
    let core = ready_core(&env).await;
    let rows = |m: String| {
        let direct = &direct;
        async move {
            let r = direct
                .query_one("select count(*) from exactly_once where marker = $1", &[&m])
                .await
                .unwrap();
            r.get::<_, i64>(0)
        }
    };
    let mut lines = Vec::new();
    // Both take one round trip: BEGIN, Bind/Execute/Sync and COMMIT pipelined (the second with result rows).
    for (sql, kinds, what_path) in [
        (INSERT, ['w', 'r', 'm'], "no result rows"),
        (INSERT_RETURNING, ['W', 'R', 'M'], "with result rows"),
    ] {
        // A warm connection with the INSERT prepared on it, so the next request takes the hot path.
        let warm = |n: usize| {
            let core = core.clone();
            async move {
                let r = core.query_raw(sql, json!([marker(kinds[0], n)])).await.unwrap();
                assert_eq!(r.status, 200, "warm-up {n}: {}", String::from_utf8_lossy(&r.body));
            }
        };

        // --- record the exchange once (no cut) ---
        warm(0).await;
        warm(1).await;
        proxy.arm(None);
        let r = core.query_raw(sql, json!([marker(kinds[1], 0)])).await.unwrap();
        let recorded = proxy.disarm();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(rows(marker(kinds[1], 0)).await, 1);
        let up = pg_messages(&recorded.up);
        let down = pg_messages(&recorded.down);
        assert_eq!(
            up.iter().map(|(_, _, l)| l).sum::<usize>(),
            recorded.up.len(),
            "the recorded client stream is not whole messages: {recorded:?}"
        );
        assert_eq!(down.iter().map(|(_, _, l)| l).sum::<usize>(), recorded.down.len());
        let commit = up.iter().rposition(|(t, _, _)| *t == 'Q').unwrap();
        assert!(
            recorded.up[up[commit].1 + 5..].starts_with(b"COMMIT"),
            "the exchange does not end with COMMIT: {recorded:?}"
        );
        assert!(
            !up.iter().any(|(t, _, _)| *t == 'P'),
            "not the hot path (a Parse was sent): {recorded:?}"
        );
        let (up_turns, down_turns) = (turns(&recorded, Flow::Up), turns(&recorded, Flow::Down));
        let shape = format!(
            "client → server {} bytes: {}; server → client {} bytes: {}",
            recorded.up.len(),
            describe(&recorded.up, &up_turns),
            recorded.down.len(),
            describe(&recorded.down, &down_turns)
        );
        println!("recorded exchange: {shape}");

        // --- every cut: before byte `at` of message `m`, each direction ---
        let mut cuts: Vec<Option<Cut>> = vec![None];
        for (flow, msgs) in [(Flow::Up, &up), (Flow::Down, &down)] {
            for (m, (_, _, len)) in msgs.iter().enumerate() {
                for at in 0..*len {
                    cuts.push(Some(Cut { flow, message: m, at }));
                }
            }
        }
        let (mut ok, mut retried, mut unknown_applied, mut unknown_not, mut refused) = (0, 0, 0, 0, 0);
        let mut refused_codes: BTreeMap<String, usize> = BTreeMap::new();
        // (flow, round trip) → outcomes, for the report.
        let mut by_place: BTreeMap<(String, usize), BTreeMap<&'static str, usize>> = BTreeMap::new();
        let started = std::time::Instant::now();
        for (i, cut) in cuts.iter().enumerate() {
            warm(i + 2).await;
            let m = marker(kinds[2], i);
            proxy.arm(*cut);
            let r = core.query_raw(sql, json!([m])).await.unwrap();
            let ex = proxy.disarm();
            let n = rows(m.clone()).await;
            let body = r.json();
            let what = format!("case {i} cut {cut:?}: HTTP {} {body}, {n} row(s)", r.status);
            assert!(n <= 1, "APPLIED TWICE: {what}");
            assert_eq!(
                ex.cut,
                cut.is_some(),
                "the cut did not happen where planned: {what}; {ex:?}"
            );
            let outcome = match (r.status, r.error_code()) {
                (200, _) => {
                    assert_eq!(n, 1, "200 but not applied: {what}");
                    assert_eq!(body["row_count"], json!(1), "{what}");
                    ok += 1;
                    if cut.is_some() {
                        retried += 1;
                    }
                    "ok"
                }
                (503, Some(code)) if code == ErrorCode::DbOutcomeUnknown.as_str() => {
                    let msg = body["error"]["message"].as_str().unwrap_or_default();
                    assert!(msg.contains("may or may not have been applied"), "{what}");
                    if n == 1 {
                        unknown_applied += 1;
                        "unknown (applied)"
                    } else {
                        unknown_not += 1;
                        "unknown (not applied)"
                    }
                }
                (_, code) => {
                    assert_eq!(n, 0, "an error that is not db_outcome_unknown, yet applied: {what}");
                    assert!(code.is_some(), "an error reply outside the contract: {what}");
                    *refused_codes.entry(code.unwrap()).or_default() += 1;
                    refused += 1;
                    "refused"
                }
            };
            if let Some(c) = cut {
                let (bytes, t) = match c.flow {
                    Flow::Up => (&recorded.up, &up_turns),
                    Flow::Down => (&recorded.down, &down_turns),
                };
                let off = pg_messages(bytes)[c.message].1;
                let rt = t.iter().filter(|s| **s <= off).count();
                *by_place
                    .entry((format!("{:?}", c.flow), rt))
                    .or_default()
                    .entry(outcome)
                    .or_default() += 1;
            }
        }
        let elapsed = started.elapsed();
        let total = cuts.len();
        let unknown = unknown_applied + unknown_not;
        assert_eq!(ok + unknown + refused, total);
        // The test exercises every kind of answer (a proxy that never cut would give only 200s).
        assert!(
            unknown_applied > 0 && unknown_not > 0,
            "ok {ok}, unknown {unknown_applied}+{unknown_not}, refused {refused}"
        );
        // One round trip (COMMIT pipelined): nothing written can be proved unapplied, so every cut is unknown.
        assert_eq!(up_turns.len(), 1, "client turns of `{sql}`: {shape}");
        assert_eq!((ok, refused), (1, 0), "{sql}: only the uncut case succeeds");
        let summary = format!(
            "exactly once: {total} cases, ok {ok}, unknown {unknown}, refused {refused}, applied twice 0 \
             (ok after a transparent retry on a fresh connection: {retried}; unknown and applied: {unknown_applied}, \
             unknown and not applied: {unknown_not}; refused with {refused_codes:?}) in {:.1} s",
            elapsed.as_secs_f64()
        );
        println!("{summary}");
        let places: Vec<String> = by_place
            .iter()
            .map(|((flow, rt), o)| {
                format!(
                    "cut in the {} stream, round trip {rt}: {o:?}",
                    if flow == "Up" {
                        "client → server"
                    } else {
                        "server → client"
                    }
                )
            })
            .collect();
        lines.extend([
            format!("`{sql}` ({what_path}): {summary}"),
            format!("the write (`/db/query` `{sql}`, hot path), as recorded through the proxy: {shape}"),
            format!(
                "cases: one without a cut, then one per byte boundary of each message of each direction (before byte k of \
                 message m, k = 0 .. len-1; the boundary after the last reply byte is the uncut case): {} client → server + {} \
                 server → client",
                recorded.up.len(),
                recorded.down.len()
            ),
        ]);
        lines.extend(places);
    }
    report(STEM, "A write cut at every byte boundary", &lines);
    drop(_thawed);
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_while_idle_is_found_at_checkout_and_the_request_goes_to_a_fresh_connection() {
    let db = TestDb::create().await.unwrap();
    let proxy = CutProxy::start(port_of(db.url())).await;
    let env = start_env(&db, &proxy.url_for(db.url())).await;
    let core = {
        let _thawed = env.thaw();
        ready_core(&env).await
    };
    let replaced = |m: &Value| m["counters"][makenaide_contract::metrics::DB_DEAD_CONNECTIONS_REPLACED].as_u64();
    let metrics = || {
        let core = core.clone();
        async move { core.get("/metrics").await.unwrap().json() }
    };
    let mark = env.logs().len();
    let before = {
        let _thawed = env.thaw();
        core.query("select 1 as one", json!([])).await.unwrap();
        metrics().await
    };
    let accepted_before = proxy.accepted();
    for cycle in 0..2 * KILL_CYCLES {
        // Even cycles: the extension frozen (as Lambda does between invocations); odd: running but idle.
        let frozen = cycle % 2 == 0;
        if frozen {
            env.freeze_now();
        }
        let killed = {
            let _thawed = (!frozen).then(|| env.thaw());
            db.terminate_sessions(Some(CORE_APP_NAME)).await.unwrap()
        };
        assert_eq!(killed, 1, "cycle {cycle}: the pooled backend");
        // The proxy has passed the close on to the extension's socket (both of its sides are closed).
        assert!(
            poll(Duration::from_secs(10), || async { (proxy.open() == 0).then_some(()) })
                .await
                .is_some(),
            "cycle {cycle}: the proxy still relays the killed connection"
        );
        let _thawed = env.thaw();
        let r = core.query_raw("select 1 as one", json!([])).await.unwrap();
        assert_eq!(r.status, 200, "cycle {cycle}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["rows"], json!([[1]]));
    }
    let after = {
        let _thawed = env.thaw();
        metrics().await
    };
    let logs: Vec<String> = env.logs()[mark..].iter().map(|l| l.line.clone()).collect();
    let at_checkout = logs
        .iter()
        .filter(|l| l.contains("stale postgres connection discarded at checkout"))
        .count();
    let by_retry = logs.iter().filter(|l| l.contains("retrying on a fresh one")).count();
    let cycles = 2 * KILL_CYCLES;
    assert_eq!(
        by_retry, 0,
        "a request was written to a dead connection and retried: {logs:#?}"
    );
    assert_eq!(at_checkout, cycles, "{logs:#?}");
    assert_eq!(
        replaced(&after).unwrap() - replaced(&before).unwrap(),
        cycles as u64,
        "{after}"
    );
    assert_eq!(
        proxy.accepted() - accepted_before,
        cycles as u64,
        "one new connection per kill"
    );
    report(
        STEM,
        "A backend killed while the extension is idle",
        &[format!(
            "{cycles} kills (`pg_terminate_backend` of the pooled backend; {KILL_CYCLES} with the extension frozen, \
             {KILL_CYCLES} running but idle), each followed by `/db/query select 1`: {cycles} / {cycles} answered 200; \
             dead connection found at checkout (zero round trips: a scheduler pass, then `Client::is_closed()`) \
             {at_checkout} times, by a failed request and a retry {by_retry} times; one new connection per kill"
        )],
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scanners_insert_sent_twice_stores_one_row() {
    use makenaide_pipeline::db;
    use makenaide_pipeline::scanner::{insert_scan_statement, new_scan_key, ScanEvent, Selection};
    let db = TestDb::create().await.unwrap();
    // The real db-initializer, so the schema is the migrations' (the idempotency key's unique index included).
    init_schema(db.url()).await;
    let env = LambdaEnv::start(env_config(COLLECTOR, db.url(), &dead_upbit()))
        .await
        .unwrap();
    let _thawed = env.thaw();
    ready_core(&env).await;
    // The functions' own client, as the scanner uses it.
    let client = makenaide_pipeline::CoreClient::new(env.core_port(), env.core_token());
    let selection = Selection {
        candidates: vec![("KRW-BTC".into(), 1e12)],
        selected: vec!["KRW-BTC".into()],
    };
    let id = |r: Vec<db::QueryResult>| r[0].rows[0][0].as_i64().unwrap();
    let key = new_scan_key();
    let scan = [insert_scan_statement(&ScanEvent::default(), &selection, &key)];
    let first = id(db::transaction(&client, &scan, None).await.unwrap());
    let again = id(db::transaction(&client, &scan, None).await.unwrap());
    assert_eq!(first, again, "the resend returns the stored scan's id");
    let other = [insert_scan_statement(
        &ScanEvent::default(),
        &selection,
        &new_scan_key(),
    )];
    let next = id(db::transaction(&client, &other, None).await.unwrap());
    assert_ne!(next, first, "another scan is another row");
    let direct = db.connect().await.unwrap();
    let rows: i64 = direct
        .query_one("select count(*) from scan_results where idempotency_key = $1", &[&key])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "the scan sent twice is stored once");
    let all: i64 = direct
        .query_one("select count(*) from scan_results", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, 2);
    drop(_thawed);
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_read_only_mode_a_lost_commit_reply_is_retried_on_a_fresh_connection() {
    let db = TestDb::create().await.unwrap();
    let proxy = CutProxy::start(port_of(db.url())).await;
    let env = LambdaEnv::start(
        env_config(COLLECTOR, &proxy.url_for(db.url()), &dead_upbit())
            .env("MAKENAIDE_DB_POOL_SIZE", "1")
            .env("MAKENAIDE_DB_READ_ONLY", "true"),
    )
    .await
    .unwrap();
    let _thawed = env.thaw();
    let core = ready_core(&env).await;
    let select = "select count(*) as n from pg_class where relname = $1";
    core.query(select, json!(["pg_class"])).await.unwrap();
    core.query(select, json!(["pg_class"])).await.unwrap();
    proxy.arm(None);
    core.query(select, json!(["pg_class"])).await.unwrap();
    let recorded = proxy.disarm();
    let (up, down) = (pg_messages(&recorded.up), pg_messages(&recorded.down));
    // The COMMIT round trip: the client's last message (`COMMIT`) and the server's last two (its CommandComplete,
    // ReadyForQuery).
    assert!(
        recorded.up[up[up.len() - 1].1 + 5..].starts_with(b"COMMIT"),
        "{recorded:?}"
    );
    let cuts = [
        Cut {
            flow: Flow::Up,
            message: up.len() - 1,
            at: 0,
        },
        Cut {
            flow: Flow::Up,
            message: up.len() - 1,
            at: 7,
        },
        Cut {
            flow: Flow::Down,
            message: down.len() - 2,
            at: 0,
        },
        Cut {
            flow: Flow::Down,
            message: down.len() - 1,
            at: 3,
        },
    ];
    for cut in cuts {
        core.query(select, json!(["pg_class"])).await.unwrap();
        proxy.arm(Some(cut));
        let r = core.query_raw(select, json!(["pg_class"])).await.unwrap();
        let ex = proxy.disarm();
        assert!(ex.cut, "{cut:?}: not cut: {ex:?}");
        assert_eq!(r.status, 200, "{cut:?}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["rows"], json!([[1]]), "{cut:?}");
    }
    let retried = env
        .logs()
        .iter()
        .filter(|l| l.line.contains("retrying on a fresh one"))
        .count();
    assert_eq!(retried, cuts.len(), "each lost COMMIT reply retried once");
    drop(_thawed);
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}
