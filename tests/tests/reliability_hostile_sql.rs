//! Hostile SQL against the session: the real extension binary (under the emulated Lambda) and a real PostgreSQL.
//! Each case sends what a careless or hostile caller would (session `SET`s, `SET ROLE`, temporary tables, session
//! advisory locks, `PREPARE`/`DEALLOCATE`, `LISTEN`, `COPY` both ways, schema changes under cached statements, a
//! deadline lifted by `SET LOCAL statement_timeout = 0`, deadlines too short to set, read-only bypasses) and checks
//! the answer (status and contract code); after EACH case a separate superuser connection reads
//! `pg_stat_activity`: the extension's backends of the test database are no more than the pool size, none is
//! `idle in transaction` or still running, no advisory lock is held; and the next request through the extension
//! sees the session a fresh connection sees (role, `search_path`, `TimeZone`, isolation, `DateStyle`, SQL-level
//! prepared statements, `LISTEN` channels, temporary tables).
//!
//! The read-only part runs README's "Read-only, for real" SQL block as written (only the role name is made unique,
//! roles being server-wide) and connects a read-only extension with that role.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use makenaide_contract::ErrorCode;
use makenaide_tests::lambda_env::{bins, CoreClient, LambdaEnv, EXTENSION};
use makenaide_tests::pg::{self, TestDb};
use serde_json::{json, Value};

const STEM: &str = "reliability_hostile_sql";
const POOL_SIZE: usize = 1;
/// Bound for the server to show a closed or finished backend (polled, not slept).
const SETTLE: Duration = Duration::from_secs(5);
/// What a request sees of its session: compared with what a fresh connection sees.
const SESSION_PROBE: &str = "select current_user::text, session_user::text, current_setting('search_path'), \
    current_setting('TimeZone'), current_setting('default_transaction_isolation'), current_setting('DateStyle'), \
    current_setting('work_mem'), (select count(*) from pg_prepared_statements where from_sql)::int4, \
    (select count(*) from pg_listening_channels())::int4, \
    (select count(*) from pg_class where relnamespace = pg_my_temp_schema())::int4";

struct Harness {
    db: TestDb,
    core: CoreClient,
    fresh: Value,
    cases: Vec<String>,
}

impl Harness {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.core.post_json(path, &body).await.unwrap();
        (r.status, r.json())
    }

    /// One hostile case: the request, the expected answer, then the checks of the module docs.
    async fn case(
        &mut self,
        name: &str,
        path: &str,
        body: Value,
        status: u16,
        code: Option<ErrorCode>,
        says: &str,
    ) -> Value {
        let (s, v) = self.post(path, body.clone()).await;
        assert_eq!(s, status, "{name}: {body} answered {v}");
        if let Some(code) = code {
            assert_eq!(v["error"]["code"], code.as_str(), "{name}: {v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{name}: the message should name {says:?}: {v}");
        }
        self.assert_clean(name).await;
        self.cases
            .push(format!("{name}: {s} {}", code.map_or("ok", |c| c.as_str())));
        v
    }

    /// The server's view: no backend of the extension left in a transaction or running, at most the pool size, no
    /// advisory lock; then the next request's session is a fresh one's.
    async fn assert_clean(&self, name: &str) {
        let admin = pg::connect(pg::DEFAULT_TEST_PG).await.unwrap();
        let db = self.db.name().to_string();
        let last = std::sync::Mutex::new(Vec::new());
        let settled = poll(SETTLE, || {
            let (admin, db, last) = (&admin, &db, &last);
            async move {
                let rows = admin
                    .query(
                        "select coalesce(state, ''), query from pg_stat_activity
                          where datname = $1 and application_name = $2",
                        &[db, &CORE_APP_NAME],
                    )
                    .await
                    .unwrap();
                let locks: i64 = admin
                    .query_one(
                        "select count(*) from pg_locks l join pg_database d on d.oid = l.database
                          where l.locktype = 'advisory' and d.datname = $1",
                        &[db],
                    )
                    .await
                    .unwrap()
                    .get(0);
                let mut seen = rows
                    .iter()
                    .map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect::<Vec<_>>();
                seen.push(format!("advisory locks: {locks}"));
                *last.lock().unwrap() = seen;
                let states: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
                let ok = states.len() <= POOL_SIZE && states.iter().all(|s| s == "idle") && locks == 0;
                ok.then_some(())
            }
        })
        .await;
        assert!(
            settled.is_some(),
            "{name}: backends left behind: {:?}",
            last.lock().unwrap()
        );
        let seen = self.core.query(SESSION_PROBE, json!([])).await.unwrap();
        assert_eq!(
            seen["rows"][0], self.fresh,
            "{name}: the next request saw a changed session"
        );
    }
}

/// A function + the extension on `db_url`, not frozen between calls (no invocation here).
async fn start(db_url: &str, read_only: bool) -> LambdaEnv {
    let mut cfg = env_config(ORCHESTRATOR, db_url, &dead_upbit())
        .env("MAKENAIDE_DB_POOL_SIZE", POOL_SIZE.to_string())
        .freeze(false);
    if read_only {
        cfg = cfg.env("MAKENAIDE_DB_READ_ONLY", "true");
    }
    LambdaEnv::start(cfg).await.unwrap()
}

/// The session a fresh direct connection of `url` sees (same probe).
async fn fresh_session(url: &str) -> Value {
    let c = pg::connect(url).await.unwrap();
    let r = c.query_one(SESSION_PROBE, &[]).await.unwrap();
    json!([
        r.get::<_, String>(0),
        r.get::<_, String>(1),
        r.get::<_, String>(2),
        r.get::<_, String>(3),
        r.get::<_, String>(4),
        r.get::<_, String>(5),
        r.get::<_, String>(6),
        r.get::<_, i32>(7),
        r.get::<_, i32>(8),
        r.get::<_, i32>(9)
    ])
}

fn q(sql: &str) -> Value {
    json!({"sql": sql})
}

fn tx(sqls: &[&str]) -> Value {
    json!({"statements": sqls.iter().map(|s| json!({"sql": s})).collect::<Vec<_>>()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_leaves_no_session_state_and_no_backend_behind() {
    let db = TestDb::create().await.unwrap();
    let setup = db.connect().await.unwrap();
    // The role is server-wide: a previous run may have left it (42710 duplicate_object).
    if let Err(e) = setup
        .batch_execute("create role hostile_probe_role_nologin nologin")
        .await
    {
        assert_eq!(e.code().map(|c| c.code()), Some("42710"), "{e}");
    }
    setup
        .batch_execute(
            "create table t (x int);
             create table a (c int);
             create function hidden_tz() returns void language plpgsql
               as $$ begin perform set_config('TimeZone', 'Asia/Seoul', false); end $$;
             create function dealloc_all() returns void language plpgsql as $$ begin execute 'deallocate all'; end $$;",
        )
        .await
        .unwrap();
    let env = start(db.url(), false).await;
    let core = ready_core(&env).await;
    let fresh = fresh_session(db.url()).await;
    let mut h = Harness {
        db,
        core,
        fresh,
        cases: Vec::new(),
    };
    h.assert_clean("fresh").await;
    let nope = Some(ErrorCode::StatementNotSupported);
    let (query, transaction) = ("/db/query", "/db/transaction");

    // Session state: refused, naming the alternative; the transaction-scoped forms work.
    h.case(
        "set role",
        query,
        q("set role hostile_probe_role_nologin"),
        400,
        nope,
        "SET LOCAL ROLE",
    )
    .await;
    let v = h
        .case(
            "set local role",
            transaction,
            tx(&["set local role hostile_probe_role_nologin", "select current_user::text"]),
            200,
            None,
            "",
        )
        .await;
    assert_eq!(v["results"][1]["rows"][0][0], "hostile_probe_role_nologin");
    h.case(
        "set search_path",
        query,
        q("set search_path = pg_catalog"),
        400,
        nope,
        "SET LOCAL",
    )
    .await;
    h.case(
        "set session search_path",
        query,
        q("SET SESSION search_path TO x"),
        400,
        nope,
        "SET LOCAL",
    )
    .await;
    h.case(
        "set time zone",
        query,
        q("/* tz */ set time zone 'Asia/Seoul'"),
        400,
        nope,
        "SET LOCAL",
    )
    .await;
    h.case(
        "session characteristics",
        query,
        q("set session characteristics as transaction isolation level serializable"),
        400,
        nope,
        "SET TRANSACTION",
    )
    .await;
    h.case("reset", query, q("reset all"), 400, nope, "SET LOCAL").await;
    h.case("discard", query, q("discard temp"), 400, nope, "fresh connection")
        .await;
    h.case(
        "temp table",
        query,
        q("create temp table tt (x int)"),
        400,
        nope,
        "ON COMMIT DROP",
    )
    .await;
    h.case(
        "select into temp",
        query,
        q("select 1 as x into temp tt"),
        400,
        nope,
        "ON COMMIT DROP",
    )
    .await;
    let v = h
        .case(
            "temp table on commit drop",
            transaction,
            tx(&[
                "create temp table tt (x int) on commit drop",
                "insert into tt values (1)",
                "select count(*) from tt",
            ]),
            200,
            None,
            "",
        )
        .await;
    assert_eq!(v["results"][2]["rows"][0][0], 1);
    h.case(
        "advisory lock",
        query,
        q("select pg_advisory_lock(42)"),
        400,
        nope,
        "pg_advisory_xact_lock",
    )
    .await;
    h.case(
        "xact advisory lock",
        query,
        q("select pg_advisory_xact_lock(42)"),
        200,
        None,
        "",
    )
    .await;
    h.case(
        "set_config(..., false)",
        query,
        q("select set_config('search_path', 'pg_catalog', false)"),
        400,
        nope,
        "SET LOCAL",
    )
    .await;
    h.case("prepare", query, q("prepare p as select 1"), 400, nope, "$n parameters")
        .await;
    h.case("deallocate", query, q("deallocate all"), 400, nope, "$n parameters")
        .await;
    h.case("listen", query, q("listen channel_x"), 400, nope, "NOTIFY")
        .await;
    h.case("unlisten", query, q("unlisten *"), 400, nope, "NOTIFY").await;
    h.case(
        "set in a transaction",
        transaction,
        tx(&["select 1", "set statement_timeout = 0"]),
        400,
        nope,
        "SET LOCAL",
    )
    .await;

    // Second line of defence: what the lexer cannot see changes the session, and the connection is retired.
    h.case(
        "hidden TimeZone change in a function",
        query,
        q("select hidden_tz()"),
        200,
        None,
        "",
    )
    .await;
    h.case(
        "hidden search_path change in DO",
        query,
        q("do $$ begin perform set_config('search_path', 'pg_catalog', false); end $$"),
        200,
        None,
        "",
    )
    .await;

    // COPY, both directions: refused up front (no backend left in COPY or in a transaction).
    h.case("copy from stdin", query, q("copy t from stdin"), 400, nope, "INSERT")
        .await;
    h.case(
        "copy to stdout",
        query,
        q("COPY (select 1) TO STDOUT"),
        400,
        nope,
        "SELECT",
    )
    .await;

    // The statement cache recovers by itself: DEALLOCATE ALL (inside a function) and ALTER TABLE ... TYPE.
    let r = h.core.query("select 41 + 1 as v", json!([])).await.unwrap();
    assert_eq!(r["rows"][0][0], 42);
    // The session probe that follows each case is itself a cached statement by now: it must recover too.
    h.case(
        "deallocate all in a function",
        query,
        q("select dealloc_all()"),
        200,
        None,
        "",
    )
    .await;
    let v = h
        .case(
            "cached statement after DEALLOCATE ALL",
            query,
            q("select 41 + 1 as v"),
            200,
            None,
            "",
        )
        .await;
    assert_eq!(v["rows"][0][0], 42);
    h.core.query("insert into a (c) values ($1)", json!([1])).await.unwrap();
    h.core.query("select c from a order by 1", json!([])).await.unwrap();
    h.case(
        "alter table type",
        query,
        q("alter table a alter column c type jsonb using to_jsonb(c)"),
        200,
        None,
        "",
    )
    .await;
    let v = h
        .case(
            "cached insert after ALTER TABLE TYPE",
            query,
            json!({"sql": "insert into a (c) values ($1)", "params": [{"k": "v"}]}),
            200,
            None,
            "",
        )
        .await;
    assert_eq!(v["row_count"], 1, "{v}");
    let v = h
        .case(
            "cached select after ALTER TABLE TYPE",
            query,
            q("select c from a order by 1"),
            200,
            None,
            "",
        )
        .await;
    assert_eq!(v["columns"][0]["type"], "jsonb", "{v}");
    assert_eq!(v["rows"], json!([[1], [{"k": "v"}]]), "{v}");

    // Deadlines: a statement lifting its own timeout is canceled at the deadline (no backend still sleeping);
    // 0 is refused; a deadline too short to set a timeout fails at once.
    h.case(
        "set local statement_timeout = 0 then pg_sleep past a 500 ms deadline",
        transaction,
        json!({"statements": [{"sql": "set local statement_timeout = 0"}, {"sql": "select pg_sleep(30)"}], "timeout_ms": 500}),
        504,
        Some(ErrorCode::DbTimeout),
        "deadline",
    )
    .await;
    h.case(
        "timeout_ms 0",
        query,
        json!({"sql": "select pg_sleep(30)", "timeout_ms": 0}),
        400,
        Some(ErrorCode::InvalidRequest),
        "timeout_ms",
    )
    .await;
    h.case(
        "deadline under 1 ms",
        query,
        json!({"sql": "select pg_sleep(30)", "timeout_ms": 1}),
        504,
        Some(ErrorCode::DbTimeout),
        "less than 1 ms",
    )
    .await;

    let cases = std::mem::take(&mut h.cases);
    let refused = cases.iter().filter(|c| !c.ends_with(" ok")).count();
    let peak_kib = env
        .extension(EXTENSION)
        .and_then(makenaide_tests::lambda_env::Proc::peak_rss_kib)
        .unwrap_or(0);
    report(STEM, "Hostile SQL: session state and backends", &{
        let mut lines = vec![format!(
            "{} cases against the release path (pool size {POOL_SIZE}): {refused} refused with a stable code, {} \
             served; backends left over after every case: 0 (none idle in transaction or running, at most the pool \
             size, no advisory lock, and the next request's session = a fresh connection's); extension peak RSS \
             {:.1} MiB",
            cases.len(),
            cases.len() - refused,
            peak_kib as f64 / 1024.0
        )];
        lines.extend(cases);
        lines
    });
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    setup
        .batch_execute("drop role if exists hostile_probe_role_nologin")
        .await
        .ok();
}

/// README's "Read-only, for real" SQL block.
fn readme_reader_sql() -> String {
    let readme = std::fs::read_to_string(bins::workspace_root().join("README.md")).unwrap();
    let start = readme
        .find("```sql\n-- makenaide_reader")
        .expect("README has the read-only role block");
    let body = &readme[start + "```sql\n".len()..];
    body[..body.find("```").unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_refuses_what_read_only_does_not_stop_and_the_readme_role_cannot_write() {
    let db = TestDb::create().await.unwrap();
    let owner = db.connect().await.unwrap();
    owner
        .batch_execute("create table t (x int); insert into t values (1)")
        .await
        .unwrap();
    // README's SQL as written; the role name made unique (roles are server-wide, tests run in parallel).
    let role = format!("makenaide_reader_{}", std::process::id());
    let sql = readme_reader_sql();
    assert!(sql.contains("makenaide_reader "), "{sql}");
    owner
        .batch_execute(&sql.replace("makenaide_reader", &role))
        .await
        .unwrap();
    let url = db.url().replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(url, db.url(), "the test database URL names user postgres");

    // The guarantee: the role cannot write even outside the extension's READ ONLY transactions.
    let direct = pg::connect(&url).await.unwrap();
    let e = direct
        .batch_execute("begin read write; insert into t values (2); commit")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    direct.batch_execute("rollback").await.unwrap();
    // ...but large objects need no privilege: what the extension's read-only mode refuses for it.
    let oid: u32 = direct.query_one("select lo_create(0)", &[]).await.unwrap().get(0);
    direct.execute("select lo_unlink($1)", &[&oid]).await.unwrap();
    drop(direct);

    let env = start(&url, true).await;
    let core = ready_core(&env).await;
    let fresh = fresh_session(&url).await;
    let mut h = Harness {
        db,
        core,
        fresh,
        cases: Vec::new(),
    };
    h.assert_clean("fresh").await;
    let ro = Some(ErrorCode::ReadOnly);
    let query = "/db/query";
    let v = h
        .case("select", query, q("select count(*) from t"), 200, None, "")
        .await;
    assert_eq!(v["rows"][0][0], 1);
    h.case("insert", query, q("insert into t values (3)"), 403, ro, "")
        .await;
    for (name, sql) in [
        ("lo_from_bytea", "select lo_from_bytea(0, '\\x01'::bytea)"),
        ("lo_create", "select lo_create(0)"),
        ("lo_put", "select lo_put(1, 0, '\\x01'::bytea)"),
        ("lo_import", "select lo_import('/etc/hostname')"),
        ("lo_unlink", "select pg_catalog.lo_unlink(1)"),
        ("lowrite", "select lowrite(0, '\\x01'::bytea)"),
        ("set role", "set role postgres"),
        ("set local role", "set local role postgres"),
        ("set session authorization", "set session authorization postgres"),
        ("copy to stdout", "copy t to stdout"),
        ("copy from stdin", "copy t from stdin"),
        ("do", "do $$ begin perform lo_create(0); end $$"),
    ] {
        h.case(name, query, q(sql), 403, ro, "read-only").await;
    }
    let admin = pg::connect(&pg::with_database(pg::DEFAULT_TEST_PG, h.db.name()))
        .await
        .unwrap();
    let los: i64 = admin
        .query_one("select count(*) from pg_largeobject_metadata", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(los, 0, "no large object was written");
    let rows: i64 = admin.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1, "nothing was written to t");

    let cases = std::mem::take(&mut h.cases);
    report(STEM, "Hostile SQL: read-only mode with README's reader role", &{
        let mut lines = vec![format!(
            "{} cases; large objects after them: {los}; rows of t: {rows} (as before)",
            cases.len()
        )];
        lines.extend(cases);
        lines
    });
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    drop(admin);
    let Harness { db, .. } = h;
    owner
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
    drop(owner);
    drop(db);
}
