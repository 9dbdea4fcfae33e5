//! Self-tests of the Lambda harness, with bash fixtures (`tests/fixtures/fixture-ext`, `fixture-fn`) so they do
//! not depend on the real binaries: Init ordering, invoke, freeze/thaw, function errors, init errors, SHUTDOWN
//! with its deadline and the SIGKILL after it, Managed Instances rules, the URL form of AWS_LAMBDA_RUNTIME_API.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use makenaide_tests::error::HarnessError;
use makenaide_tests::lambda_env::{
    ApiEventKind, EnvConfig, InvokeStatus, LambdaEnv, Role, RuntimeApiForm, ShutdownReason,
};
use serde_json::json;

fn fixture(name: &str) -> String {
    format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn cfg() -> EnvConfig {
    EnvConfig::new(fixture("fixture-fn"))
        .extension(fixture("fixture-ext"))
        .timeout(Duration::from_secs(20))
}

const SIGNAL_DELIVERY: Duration = Duration::from_secs(2);

#[tokio::test]
async fn init_invoke_freeze_thaw_and_clean_shutdown() {
    let env = LambdaEnv::start(cfg()).await.expect("start");

    // Init: extension registered before the runtime was even spawned, then both called next.
    let init = env.init_report();
    assert_eq!(init.extensions.len(), 1);
    assert_eq!(init.extensions[0].name, "fixture-ext");
    assert_eq!(init.extensions[0].events, vec!["INVOKE", "SHUTDOWN"]);
    let events = env.journal().events();
    let reg = events
        .iter()
        .position(|e| matches!(e.kind, ApiEventKind::ExtensionRegistered { .. }))
        .unwrap();
    let rt_next = events
        .iter()
        .position(|e| matches!(e.kind, ApiEventKind::RuntimeNext))
        .unwrap();
    assert!(reg < rt_next, "runtime polled before the extension registered");
    assert!(
        env.runtime().spawned_at > events[reg].at,
        "runtime spawned before registration completed"
    );

    let out = env.invoke(json!({"n": 1})).await.expect("invoke");
    assert_eq!(out.status, InvokeStatus::Success, "{out:?}");
    assert_eq!(out.response, Some(json!({"echo": {"n": 1}})));
    assert!(out.frozen, "not frozen after the invocation");
    assert!(out.extensions_overhead.is_some());
    for p in env.processes() {
        assert_eq!(p.state(), 'T', "{} not stopped", p.name);
    }
    {
        let _thawed = env.thaw();
        for p in env.processes() {
            assert!(
                p.wait_stopped(false, SIGNAL_DELIVERY).await,
                "{} still stopped while thawed",
                p.name
            );
        }
    }
    for p in env.processes() {
        assert!(
            p.wait_stopped(true, SIGNAL_DELIVERY).await,
            "{} not re-frozen after the guard",
            p.name
        );
    }

    let out2 = env.invoke(json!({"n": 2})).await.expect("invoke 2");
    assert_eq!(out2.response, Some(json!({"echo": {"n": 2}})));

    // The extension saw INVOKE for both requests.
    let logs = env.logs();
    for rid in [&out.request_id, &out2.request_id] {
        assert!(
            logs.iter()
                .any(|l| l.process == "fixture-ext" && l.line.contains(rid.as_str())),
            "no INVOKE {rid}"
        );
    }
    // Runtime-only variables are not given to extensions.
    assert!(logs
        .iter()
        .any(|l| l.role == Role::Extension && l.line.contains("task_root=unset")));
    assert!(logs
        .iter()
        .any(|l| l.role == Role::Runtime && l.line.contains("handler=bootstrap")));

    let report = env.shutdown(Duration::from_secs(2)).await.expect("shutdown");
    let ext = report.extension("fixture-ext").unwrap();
    assert!(ext.received_shutdown);
    assert_eq!(ext.exit.map(|e| e.code), Some(Some(0)), "{ext:?}");
    assert!(ext.exited_within_deadline && !ext.killed, "{ext:?}");
    let shutdown_line = report
        .logs
        .iter()
        .find(|l| l.line.contains("\"SHUTDOWN\""))
        .expect("SHUTDOWN event logged");
    assert!(shutdown_line.line.contains("SPINDOWN"), "{}", shutdown_line.line);
    assert!(
        shutdown_line.line.contains(&report.deadline_ms.to_string()),
        "{}",
        shutdown_line.line
    );
    assert!(report.runtime_exit.is_some());
}

#[tokio::test]
async fn function_error_is_reported_with_its_type() {
    let env = LambdaEnv::start(cfg()).await.expect("start");
    let out = env.invoke(json!({"please": "fail"})).await.expect("invoke");
    assert_eq!(out.status, InvokeStatus::Error);
    assert_eq!(out.error_type(), Some("FixtureError"));
    assert_eq!(out.error.as_ref().unwrap().message, "asked to fail");
    // The environment keeps working after a function error.
    let ok = env.invoke(json!({"n": 3})).await.expect("invoke");
    assert_eq!(ok.ok().unwrap(), &json!({"echo": {"n": 3}}));
}

#[tokio::test]
async fn timeout_is_reported() {
    let env = LambdaEnv::start(cfg().timeout(Duration::from_secs(1)))
        .await
        .expect("start");
    let out = env.invoke(json!({"x": "sleep:3"})).await.expect("invoke");
    assert_eq!(out.status, InvokeStatus::Timeout);
    let report = env
        .shutdown_with(ShutdownReason::Timeout, Duration::from_secs(2))
        .await
        .unwrap();
    let line = report
        .logs
        .iter()
        .find(|l| l.line.contains("\"SHUTDOWN\""))
        .expect("SHUTDOWN delivered");
    assert!(line.line.contains("TIMEOUT"));
}

#[tokio::test]
async fn extension_init_error_fails_init_with_its_message() {
    let err = match LambdaEnv::start(cfg().env("FIXTURE_INIT_ERROR", "1")).await {
        Err(e) => e,
        Ok(_) => panic!("init should fail"),
    };
    let HarnessError::InitFailed(failure) = err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(failure.extension_init_errors.len(), 1, "{failure}");
    let (name, ty, body) = &failure.extension_init_errors[0];
    assert_eq!((name.as_str(), ty.as_str()), ("fixture-ext", "Extension.ConfigInvalid"));
    assert!(body.contains("FIXTURE_X must be set"));
    assert!(
        failure
            .exits
            .iter()
            .any(|(n, e)| n == "fixture-ext" && e.code == Some(1)),
        "{failure}"
    );
}

#[tokio::test]
async fn extension_that_ignores_shutdown_is_killed_at_the_deadline() {
    let env = LambdaEnv::start(cfg().env("FIXTURE_SHUTDOWN", "hang"))
        .await
        .expect("start");
    env.invoke(json!({})).await.unwrap();
    let budget = Duration::from_millis(800);
    let report = env.shutdown(budget).await.unwrap();
    let ext = report.extension("fixture-ext").unwrap();
    assert!(ext.received_shutdown);
    assert!(ext.killed && !ext.exited_within_deadline, "{ext:?}");
    assert_eq!(ext.exit.and_then(|e| e.signal), Some(9));
    assert!(
        report.elapsed >= budget && report.elapsed < budget + Duration::from_secs(2),
        "{:?}",
        report.elapsed
    );
}

#[tokio::test]
async fn next_after_shutdown_counts_as_done() {
    let env = LambdaEnv::start(cfg().env("FIXTURE_SHUTDOWN", "next"))
        .await
        .expect("start");
    let report = env.shutdown(Duration::from_secs(2)).await.unwrap();
    let ext = report.extension("fixture-ext").unwrap();
    assert!(ext.acknowledged_via_next, "{ext:?}");
}

#[tokio::test]
async fn url_form_of_the_runtime_api() {
    let env = LambdaEnv::start(cfg().runtime_api_form(RuntimeApiForm::UrlWithPrefix))
        .await
        .expect("start");
    let out = env.invoke(json!({"u": 1})).await.unwrap();
    assert_eq!(out.ok().unwrap(), &json!({"echo": {"u": 1}}));

    // What a runtime reads from `next`, in both forms: the event and `Content-Type: application/json`, exactly as
    // Lambda sends it (awslambdaric decodes the event only when the header is exactly that).
    let dir = tempfile::tempdir().unwrap();
    let runtime = header_runtime(dir.path());
    for form in [RuntimeApiForm::HostPort, RuntimeApiForm::UrlWithPrefix] {
        let env = LambdaEnv::start(
            EnvConfig::new(runtime.clone())
                .extension(fixture("fixture-ext"))
                .runtime_api_form(form)
                .timeout(Duration::from_secs(20)),
        )
        .await
        .expect("start");
        let out = env.invoke(json!({"h": [1, "two"]})).await.unwrap();
        assert_eq!(
            out.ok().unwrap(),
            &json!({"content_type": "application/json", "event": {"h": [1, "two"]}}),
            "{form:?}"
        );
    }
}

/// A runtime in bash + curl that answers each event with the `Content-Type` its `next` reply carried (read from
/// the response headers, as runtime clients do) and the event itself.
fn header_runtime(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    const SCRIPT: &str = r##"#!/usr/bin/env bash
set -u
API="${AWS_LAMBDA_RUNTIME_API}"
case "$API" in http://*) BASE="$API" ;; *) BASE="http://$API" ;; esac
HDRS="$(dirname "$0")/headers.$$"
trap 'exit 0' TERM
while true; do
  BODY="$(curl -sS -D "$HDRS" "$BASE/2018-06-01/runtime/invocation/next")" || exit 4
  RID="$(grep -i '^Lambda-Runtime-Aws-Request-Id:' "$HDRS" | cut -d' ' -f2 | tr -d '\r')"
  CT="$(grep -i '^Content-Type:' "$HDRS" | cut -d' ' -f2- | tr -d '\r')"
  curl -sS -X POST "$BASE/2018-06-01/runtime/invocation/$RID/response" \
    -d "{\"content_type\":\"$CT\",\"event\":$BODY}" >/dev/null
done
"##;
    let path = dir.join("header-fn");
    std::fs::write(&path, SCRIPT).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn managed_instances_refuse_invoke_registration_and_never_freeze() {
    let err = LambdaEnv::start(cfg().managed_instances(4))
        .await
        .err()
        .expect("INVOKE registration must be refused");
    assert!(
        err.to_string().contains("Extension.InvalidEventType") || err.to_string().contains("INVOKE"),
        "{err}"
    );

    let env = LambdaEnv::start(cfg().managed_instances(4).env("FIXTURE_EVENTS", "SHUTDOWN"))
        .await
        .expect("start");
    let out = env.invoke(json!({"m": 1})).await.unwrap();
    assert_eq!(out.ok().unwrap(), &json!({"echo": {"m": 1}}));
    assert!(!out.frozen);
    for p in env.processes() {
        assert_ne!(p.state(), 'T');
    }
    let report = env.shutdown(Duration::from_secs(2)).await.unwrap();
    assert!(report
        .extension("fixture-ext")
        .unwrap()
        .exit
        .is_some_and(|e| e.success()));
}

#[tokio::test]
async fn environments_run_in_parallel_on_distinct_ports() {
    let (a, b) = tokio::join!(LambdaEnv::start(cfg()), LambdaEnv::start(cfg()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.core_port(), b.core_port());
    assert_ne!(a.core_token(), b.core_token());
    let (x, y) = tokio::join!(a.invoke(json!({"a": 1})), b.invoke(json!({"b": 1})));
    assert_eq!(x.unwrap().response, Some(json!({"echo": {"a": 1}})));
    assert_eq!(y.unwrap().response, Some(json!({"echo": {"b": 1}})));
    let pids: Vec<u32> = a.processes().chain(b.processes()).map(|p| p.pid).collect();
    drop(a);
    drop(b);
    // Dropped environments leave no process behind.
    let gone = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z"))
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|p| gone(*p)) && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pids.iter().all(|p| gone(*p)), "processes left after drop");
}
