//! End-to-end tests of the real `makenaide-core` extension's lifecycle under the emulated Lambda environment,
//! with the bash fixture as the function (so they need no function binary and no Upbit): registration and
//! readiness, the warm PostgreSQL backend across freeze/thaw, SHUTDOWN within the budget with its sessions gone.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use makenaide_tests::lambda_env::{free_port, EnvConfig, LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use serde_json::json;

const CORE_APP_NAME: &str = "makenaide-core";

fn cfg(db: &TestDb) -> EnvConfig {
    EnvConfig::new(format!("{}/fixtures/fixture-fn", env!("CARGO_MANIFEST_DIR")))
        .extension(EXTENSION)
        .env("MAKENAIDE_DATABASE_URL", db.url())
        // Nothing listens there: the extension must still start (Upbit is warmed in the background).
        .env("MAKENAIDE_UPBIT_BASE_URL", format!("http://127.0.0.1:{}", free_port()))
        .timeout(Duration::from_secs(20))
}

#[tokio::test]
async fn extension_keeps_its_backend_across_freezes_and_exits_cleanly_on_shutdown() {
    let db = TestDb::create().await.unwrap();
    let env = LambdaEnv::start(cfg(&db)).await.unwrap();
    let init = env.init_report();
    let ext = &init.extensions[0];
    assert_eq!(ext.name, "makenaide-core");
    assert_eq!(ext.events, vec!["INVOKE", "SHUTDOWN"]);

    let ping = env.core().wait_ready(true, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ping["status"], "ok", "{ping}");
    let pid1 = env.core().backend_pid().await.unwrap();

    for n in 0..3 {
        let out = env.invoke(json!({"n": n})).await.unwrap();
        assert!(out.frozen);
        assert!(env.extension(EXTENSION).unwrap().state() == 'T');
    }
    let pid2 = {
        let _thawed = env.thaw();
        env.core().backend_pid().await.unwrap()
    };
    let sessions = db.sessions(Some(CORE_APP_NAME)).await.unwrap();
    assert!(
        sessions.iter().any(|s| i64::from(s.pid) == pid1),
        "{pid1} not in {sessions:?}"
    );
    assert!(
        sessions.iter().any(|s| i64::from(s.pid) == pid2),
        "{pid2} not in {sessions:?}"
    );

    // The token is required; /ping is not.
    {
        let _thawed = env.thaw();
        let anonymous = makenaide_tests::lambda_env::CoreClient::new(env.core_port(), "wrong-token");
        let r = anonymous.query_raw("select 1", json!([])).await.unwrap();
        assert_eq!(r.status, 403, "{:?}", r.json());
        assert!(anonymous.ping().await.is_ok());
    }

    let report = env.shutdown(Duration::from_secs(2)).await.unwrap();
    let core = report.extension(EXTENSION).unwrap();
    assert!(core.received_shutdown, "{core:?}");
    assert!(core.exit.is_some_and(|e| e.success()), "{core:?}");
    assert!(core.exited_within_deadline, "{core:?}");
    let left = db
        .wait_no_sessions(Some(CORE_APP_NAME), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(left.is_empty(), "sessions left after SHUTDOWN: {left:?}");
}
