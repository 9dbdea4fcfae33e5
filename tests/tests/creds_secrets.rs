//! Issue 14: the database password never sits in a function's configuration. The real extension under the
//! emulated Lambda, with `MAKENAIDE_DATABASE_SECRET_ID` and `MAKENAIDE_AWS_ENDPOINT_URL` pointing at moto on
//! 127.0.0.1 with IAM authorisation on (every `GetSecretValue` is really SigV4-signed with the execution role's
//! temporary credentials, verified by moto with botocore's signer and checked against the role's policy):
//! - an RDS-style JSON secret against a SCRAM + TLS cluster (`sslmode` defaults to `require`), then a password
//!   rotation in the middle of a run (`ALTER ROLE ... PASSWORD`, the secret updated, the sessions terminated): no
//!   request fails, one re-read of the secret serves every refused connection, each is retried once;
//! - a missing, malformed or unauthorised secret, refused credentials and an unreachable endpoint: DB routes answer
//!   503 `db_credentials_unavailable` saying what to fix, the extension keeps serving, and recovers by itself once
//!   the secret exists;
//! - contradictory configuration (URL and secret id, IAM without TLS): an init error saying what to fix.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use makenaide_contract::ErrorCode;
use makenaide_tests::error::HarnessError;
use makenaide_tests::lambda_env::{random_hex, EnvConfig, LambdaEnv};
use makenaide_tests::moto::{Accounts, Creds, Moto};
use makenaide_tests::pg::{connect, ClusterOptions, PgCluster, TestDb};
use makenaide_tests::report;
use serde_json::json;

const SECTION: &str = "creds_secrets";
const SECRET_ID_ENV: &str = "MAKENAIDE_DATABASE_SECRET_ID";
const ENDPOINT_ENV: &str = "MAKENAIDE_AWS_ENDPOINT_URL";

/// The collector's environment with `creds` as its execution role and moto as AWS, reading `secret_id`.
fn secret_env(moto: &Moto, upbit: &Upbit, creds: &Creds, secret_id: &str) -> EnvConfig {
    let mut cfg = EnvConfig::makenaide(COLLECTOR)
        .env(SECRET_ID_ENV, secret_id)
        .env(ENDPOINT_ENV, moto.url())
        .env("MAKENAIDE_UPBIT_BASE_URL", upbit.base_url())
        .freeze(false);
    for (k, v) in creds.lambda_env() {
        cfg = cfg.env(k, v);
    }
    cfg
}

fn rds_json(user: &str, password: &str, port: u16, dbname: &str) -> String {
    json!({"username": user, "password": password, "engine": "postgres", "host": "127.0.0.1", "port": port,
        "dbname": dbname, "dbInstanceIdentifier": "makenaide-test"})
    .to_string()
}

/// One request of the rotation test: (status, backend pid, error code and message).
type Seen = (u16, Option<i64>, String);
/// A condition on the requests seen so far.
type SeenPredicate = Box<dyn Fn(&[Seen]) -> bool + Send>;
/// A bad-secret case: (what, execution role, secret id, endpoint override, what the message must say).
type Case<'a> = (&'a str, Creds, &'a str, Option<String>, Vec<&'a str>);

async fn started() -> (Moto, Accounts) {
    let moto = Moto::start().await.unwrap();
    let accounts = moto.accounts().await.unwrap();
    (moto, accounts)
}

/// A password rotation in the middle of a run: no request fails; one fetch of the secret serves every refused
/// connection; each is retried once with the new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_mid_run_fails_no_request() {
    const WORKERS: usize = 4;
    let (moto, acc) = started().await;
    let cluster = PgCluster::start(ClusterOptions::scram_tls()).await.unwrap();
    let admin = connect(&cluster.admin_url()).await.unwrap();
    // Characters that need percent-encoding in a URL: the extension builds the URL from the JSON.
    let old_pw = format!("old@:/?#%+ {}", random_hex(12));
    let new_pw = format!("new&=é\\'{}", random_hex(12));
    let quote = |s: &str| s.replace('\'', "''");
    admin
        .batch_execute(&format!("create role app login password '{}'", quote(&old_pw)))
        .await
        .unwrap();
    admin.batch_execute("create database app owner app").await.unwrap();
    moto.create_secret(
        &acc.admin,
        "makenaide/db",
        &rds_json("app", &old_pw, cluster.port(), "app"),
    )
    .await
    .unwrap();
    let upbit = Upbit::start().await;
    let env = LambdaEnv::start(
        secret_env(&moto, &upbit, &acc.reader, "makenaide/db").env("MAKENAIDE_DB_POOL_SIZE", WORKERS.to_string()),
    )
    .await
    .unwrap();
    let core = env.core();
    let ping = core.wait_ready(true, Duration::from_secs(20)).await.unwrap();
    assert_eq!(ping["db"], json!("ready"), "{ping}");
    // The secret's default sslmode is require: the session is encrypted.
    let ssl = core
        .query("select ssl from pg_stat_ssl where pid = pg_backend_pid()", json!([]))
        .await
        .unwrap();
    assert_eq!(ssl["rows"], json!([[true]]), "{ssl}");

    // WORKERS loops of queries, recording (status, backend pid). A request holds `gate` for reading: the sessions
    // are terminated between requests (as while Lambda has the environment frozen), since a backend killed during
    // a COMMIT fails that request whatever the credentials (db::exec never retries a maybe-committed transaction).
    let stop = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (core, stop, seen, gate) = (core.clone(), stop.clone(), seen.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _running = gate.read().await;
                let r = core
                    .query_raw("select pg_backend_pid()::int8, current_user::text", json!([]))
                    .await
                    .unwrap();
                let pid = r.json()["rows"][0][0].as_i64();
                let error = format!(
                    "{} {}",
                    r.error_code().unwrap_or_default(),
                    r.json()["error"]["message"]
                );
                seen.lock().unwrap().push((r.status, pid, error));
            }
        }));
    }
    let wait_until = |pred: SeenPredicate, what: &'static str| {
        let seen = seen.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            let mut backoff = Duration::from_millis(5);
            loop {
                if pred(&seen.lock().unwrap()) {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
    };
    // Every pooled connection in use before the rotation (so none is opened between ALTER ROLE and the new
    // secret), and a good number of requests served.
    wait_until(
        Box::new(|s| s.len() >= 40 && s.iter().filter_map(|r| r.1).collect::<HashSet<_>>().len() >= WORKERS),
        "the pool to fill",
    )
    .await;
    let (before, old_pids) = {
        let s = seen.lock().unwrap();
        (s.len(), s.iter().filter_map(|r| r.1).collect::<HashSet<_>>())
    };

    admin
        .batch_execute(&format!("alter role app password '{}'", quote(&new_pw)))
        .await
        .unwrap();
    moto.put_secret_value(
        &acc.admin,
        "makenaide/db",
        &rds_json("app", &new_pw, cluster.port(), "app"),
    )
    .await
    .unwrap();
    let killed = {
        let _between_requests = gate.write().await;
        let killed = admin
            .query(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'",
                &[],
            )
            .await
            .unwrap()
            .len();
        // pg_terminate_backend only signals: wait until the sessions are gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = admin
                .query_one("select count(*) from pg_stat_activity where usename = 'app'", &[])
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{left} sessions survived pg_terminate_backend"
            );
            tokio::task::yield_now().await;
        }
        killed
    };
    assert!(killed >= WORKERS, "terminated {killed} sessions");

    // Run on until many requests went through new sessions (opened with the new password).
    let old = old_pids.clone();
    wait_until(
        Box::new(move |s| s.iter().filter(|r| r.1.is_some_and(|p| !old.contains(&p))).count() >= 40),
        "requests on new sessions",
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let failed: Vec<_> = seen.iter().filter(|r| r.0 != 200).collect();
    assert!(failed.is_empty(), "requests failed during the rotation: {failed:?}");

    let shutdown = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    let count = |needle: &str| shutdown.logs.iter().filter(|l| l.line.contains(needle)).count();
    let fetched = count("database secret fetched");
    let reread = count("reading the secret again");
    let retried = count("retrying the connection with the secret's new credentials");
    assert_eq!(fetched, 2, "one fetch at start, one after the rotation");
    assert_eq!(reread, 1, "the refused connections shared one re-read");
    assert!(retried >= 1, "no connection was retried with the new password");
    for l in &shutdown.logs {
        for secret in [&old_pw, &new_pw, &acc.reader.secret_access_key] {
            assert!(
                !l.line.contains(secret.as_str()),
                "{} logged a secret: {}",
                l.process,
                l.line
            );
        }
        if let Some(t) = &acc.reader.session_token {
            assert!(
                !l.line.contains(t.as_str()),
                "{} logged the session token: {}",
                l.process,
                l.line
            );
        }
    }
    report::record(
        SECTION,
        &format!(
            "- secret rotation mid-run (RDS JSON secret in moto with IAM checks on, SCRAM + TLS cluster, {WORKERS} \
             workers): {} requests before, {} after ALTER ROLE + PutSecretValue + terminating {killed} sessions; 0 \
             failed; {reread} re-read of the secret for all refused connections ({retried} retried once)",
            before,
            seen.len() - before
        ),
    );
}

/// A missing, malformed or unauthorised secret (or refused credentials, or no endpoint): the DB routes answer 503
/// `db_credentials_unavailable` saying what to fix, `/ping` and Upbit still work, and a fixed secret is picked up by
/// the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secrets_answer_503_saying_what_to_fix() {
    let (moto, acc) = started().await;
    let upbit = Upbit::start().await;
    let hidden = format!("hunter2-{}", random_hex(8));
    moto.create_secret(&acc.admin, "makenaide/garbage", &format!("not a url {hidden}"))
        .await
        .unwrap();
    moto.create_secret(
        &acc.admin,
        "makenaide/no-password",
        &json!({"username": "u", "host": "127.0.0.1", "note": hidden}).to_string(),
    )
    .await
    .unwrap();
    moto.create_secret(&acc.admin, "makenaide/db", "postgres://u:p@127.0.0.1:1/x")
        .await
        .unwrap();
    let wrong_key = Creds {
        secret_access_key: format!("{}x", acc.reader.secret_access_key),
        ..acc.reader.clone()
    };
    let closed_port = makenaide_tests::lambda_env::free_port();
    let cases: Vec<Case> = vec![
        (
            "missing",
            acc.reader.clone(),
            "makenaide/nope",
            None,
            vec!["does not exist", SECRET_ID_ENV],
        ),
        (
            "malformed",
            acc.reader.clone(),
            "makenaide/garbage",
            None,
            vec!["neither a postgres:// URL"],
        ),
        (
            "no password",
            acc.reader.clone(),
            "makenaide/no-password",
            None,
            vec!["no \"password\""],
        ),
        (
            "unauthorised",
            acc.denied.clone(),
            "makenaide/db",
            None,
            vec!["may not read secret", "secretsmanager:GetSecretValue"],
        ),
        (
            "wrong key",
            wrong_key,
            "makenaide/db",
            None,
            vec!["refused the extension's credentials"],
        ),
        (
            "no endpoint",
            acc.reader.clone(),
            "makenaide/db",
            Some(format!("http://127.0.0.1:{closed_port}")),
            vec!["unreachable"],
        ),
    ];
    let mut lines = Vec::new();
    for (what, creds, secret_id, endpoint, needles) in cases {
        let mut cfg = secret_env(&moto, &upbit, &creds, secret_id);
        if let Some(e) = endpoint {
            cfg = cfg.env(ENDPOINT_ENV, e);
        }
        let env = LambdaEnv::start(cfg).await.unwrap();
        let core = env.core();
        let r = core.query_raw("select 1", json!([])).await.unwrap();
        let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (503, Some(ErrorCode::DbCredentialsUnavailable.as_str())),
            "{what}: {:?}",
            r.json()
        );
        for n in needles {
            assert!(message.contains(n), "{what}: {message:?} does not say {n:?}");
        }
        assert!(
            !message.contains(&hidden),
            "{what}: the reply leaks the secret: {message}"
        );
        // Still serving: /ping and the Upbit mirror.
        let ping = core.ping().await.unwrap();
        assert_eq!(ping["db"], json!("unavailable"), "{what}: {ping}");
        let r = core.get("/v1/market/all").await.unwrap();
        assert_eq!(r.status, 200, "{what}: the extension stopped serving Upbit");
        assert!(!env.extension("makenaide-core").unwrap().has_exited(), "{what}");
        let shutdown = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
        for l in &shutdown.logs {
            assert!(
                !l.line.contains(&hidden),
                "{what}: {} logged the secret: {}",
                l.process,
                l.line
            );
            assert!(
                !l.line.contains(&creds.secret_access_key),
                "{what}: logged the secret key: {}",
                l.line
            );
        }
        lines.push(format!("{what}: \"{message}\""));
    }

    // A secret created after start is picked up by a later request (no restart).
    let db = TestDb::create().await.unwrap();
    let env = LambdaEnv::start(secret_env(&moto, &upbit, &acc.reader, "makenaide/later"))
        .await
        .unwrap();
    let core = env.core();
    let r = core.query_raw("select 1", json!([])).await.unwrap();
    assert_eq!(
        r.error_code().as_deref(),
        Some(ErrorCode::DbCredentialsUnavailable.as_str())
    );
    // The machine's PostgreSQL has no TLS for test databases: the URL's own sslmode wins over the default.
    moto.create_secret(&acc.admin, "makenaide/later", &format!("{}?sslmode=disable", db.url()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut tries = 1;
    loop {
        let r = core.query_raw("select 1", json!([])).await.unwrap();
        if r.status == 200 {
            break;
        }
        assert_eq!(
            r.error_code().as_deref(),
            Some(ErrorCode::DbCredentialsUnavailable.as_str()),
            "{:?}",
            r.json()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new secret was never picked up"
        );
        tries += 1;
        // Failed fetches are spaced by a second: wait on the extension's own retry interval, bounded.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    report::record(
        SECTION,
        &format!(
            "- bad secrets (moto, IAM checks on): 503 db_credentials_unavailable, extension still serving, each \
             saying what to fix: {}; a secret created later served after {tries} requests",
            lines.join("; ")
        ),
    );
}

/// Contradictory configuration is an init error that says what to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contradictory_database_configuration_fails_init() {
    for (extra, needle) in [
        (
            vec![
                (SECRET_ID_ENV, "makenaide/db"),
                ("MAKENAIDE_DATABASE_URL", "postgres://u:hunter2@127.0.0.1/x"),
            ],
            "keep one",
        ),
        (
            vec![
                ("MAKENAIDE_DB_IAM_AUTH", "true"),
                (
                    "MAKENAIDE_DATABASE_URL",
                    "postgres://iam_user@127.0.0.1/x?sslmode=disable",
                ),
            ],
            "requires TLS",
        ),
        (
            vec![
                ("MAKENAIDE_DB_IAM_AUTH", "true"),
                ("MAKENAIDE_DATABASE_URL", "postgres://iam_user:hunter2@127.0.0.1/x"),
            ],
            "remove the password",
        ),
    ] {
        let mut cfg = EnvConfig::makenaide(COLLECTOR);
        for (k, v) in &extra {
            cfg = cfg.env(*k, *v);
        }
        let Err(HarnessError::InitFailed(failure)) = LambdaEnv::start(cfg).await else {
            panic!("{extra:?} must fail Init")
        };
        let (_, ty, body) = &failure.extension_init_errors[0];
        assert_eq!(ty, "Extension.ConfigInvalid", "{body}");
        assert!(body.contains(needle), "{extra:?}: {body}");
        assert!(!body.contains("hunter2"), "{body}");
    }
}
