//! The Python side of the layer: `python/makenaide_core` (the client the layer zip ships under `python/`) and the data
//! collector moved onto it (`examples/python/data_collector`), both run on the layer unpacked as Lambda unpacks it
//! (`makenaide_tests::python_layer`: `extensions/makenaide-core` + `python/makenaide_core` from the zip that
//! `layer-build/mkzip.py` writes with build.sh's entries).
//!
//! - the package knows exactly the contract's names: error codes (with status and the Rust functions' errorType),
//!   headers, routes, variables, the token rule's messages, the deadline rule; it is typed (`mypy --strict`),
//!   standard library only and under 30 KB;
//! - tests/python/test_makenaide_core.py (pytest) passes against the real extension with a test database and the
//!   simulated Upbit, and what it wrote is in the database;
//! - the example, under awslambdaric, returns the Rust collector's result for the same events and stores the same
//!   rows, byte for byte (every column's text but `updated_at`), fetched with the same pages.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{Backends, COLLECTOR, SHUTDOWN_BUDGET};
use makenaide_contract::{env, headers, routes, Deadline, ErrorCode};
use makenaide_pipeline::{deadline, upbit, CoreError};
use makenaide_tests::lambda_env::{bins, LambdaEnv};
use makenaide_tests::pg::TestDb;
use makenaide_tests::python_layer::{test_python, UnpackedLayer, EXAMPLE_COLLECTOR, PYTHON_PACKAGE};
use serde_json::{json, Value};

/// Runs `code` with the layer's Python client importable; its stdout as JSON.
fn python_json(layer: &UnpackedLayer, code: &str, envs: &[(&str, &str)]) -> Value {
    let mut cmd = Command::new(test_python().unwrap());
    cmd.arg("-c")
        .arg(code)
        .env_clear()
        .env("PYTHONPATH", layer.python_path())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{code}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn python_package_knows_exactly_the_contract() {
    let layer = UnpackedLayer::with_built_extension().unwrap();
    let got = python_json(
        &layer,
        "import json, makenaide_core as m\nnames = {k: getattr(m, k) for k in dir(m) if k.isupper() and k[0] != '_'}\n\
         names['ERROR_CODES'] = [[k, list(v)] for k, v in m.ERROR_CODES.items()]\nprint(json.dumps(names))",
        &[],
    );
    // Every code of ErrorCode::ALL, in order, with its status and the errorType the Rust functions report.
    let codes: Vec<(String, Value)> = serde_json::from_value(got["ERROR_CODES"].clone()).unwrap();
    let want: Vec<(String, Value)> = ErrorCode::ALL
        .iter()
        .map(|c| {
            let e = CoreError {
                status: c.status(),
                code: c.as_str().into(),
                message: String::new(),
                sqlstate: None,
                statement_index: None,
            };
            (c.as_str().to_string(), json!([c.status(), e.error_type()]))
        })
        .collect();
    assert_eq!(codes, want, "makenaide_core.ERROR_CODES must be ErrorCode::ALL");
    let names = [
        ("TOKEN_HEADER", json!(headers::TOKEN)),
        ("DEADLINE_HEADER", json!(headers::DEADLINE)),
        ("SOURCE_HEADER", json!(headers::SOURCE)),
        ("SOURCE_CORE", json!(headers::SOURCE_CORE)),
        ("ENV_CORE_PORT", json!(env::CORE_PORT)),
        ("DEFAULT_CORE_PORT", json!(env::DEFAULT_CORE_PORT)),
        ("ENV_CORE_TOKEN", json!(env::CORE_TOKEN)),
        ("ENV_AWS_SESSION_TOKEN", json!(env::AWS_SESSION_TOKEN)),
        ("ENV_FUNCTION_TIMEOUT", json!(env::AWS_LAMBDA_FUNCTION_TIMEOUT)),
        ("DB_QUERY", json!(routes::DB_QUERY)),
        ("DB_TRANSACTION", json!(routes::DB_TRANSACTION)),
        (
            "MAX_TIMEOUT_MS",
            json!(makenaide_contract::deadline::MAX_LAMBDA_TIMEOUT_MS),
        ),
        ("FUTURE_SLACK_MS", json!(makenaide_contract::deadline::FUTURE_SLACK_MS)),
        (
            "DEADLINE_MARGIN_MS",
            json!(deadline::DEADLINE_MARGIN.as_millis() as u64),
        ),
        ("DEADLINE_GRACE_S", json!(deadline::DEADLINE_GRACE.as_secs_f64())),
        (
            "DEFAULT_TIMEOUT_S",
            json!(deadline::DEFAULT_REQUEST_TIMEOUT.as_secs_f64()),
        ),
        ("MAX_CANDLES_PER_REQUEST", json!(upbit::MAX_CANDLES_PER_REQUEST)),
        ("MAX_MARKETS_PER_TICKER_CALL", json!(upbit::MAX_MARKETS_PER_TICKER_CALL)),
    ];
    for (name, value) in names {
        assert_eq!(got[name], value, "makenaide_core.{name}");
    }

    // The token rule and its messages, word for word.
    let token = |envs: &[(&str, &str)]| {
        python_json(
            &layer,
            "import json, makenaide_core as m\ntry:\n    print(json.dumps(m.Core().token))\n\
             except m.CoreUnavailable as e:\n    print(json.dumps({'missing': e.message}))",
            envs,
        )
    };
    assert_eq!(
        token(&[(env::AWS_SESSION_TOKEN, "")]),
        json!({"missing": env::Token::missing_message(true)})
    );
    assert_eq!(token(&[]), json!({"missing": env::Token::missing_message(false)}));
    assert_eq!(
        token(&[(env::CORE_TOKEN, ""), (env::AWS_SESSION_TOKEN, "s")]),
        json!("s")
    );
    assert_eq!(
        token(&[(env::CORE_TOKEN, "c"), (env::AWS_SESSION_TOKEN, "s")]),
        json!("c")
    );

    // The deadline rule: the contract's plausibility rule and fallback, then the Rust functions' margin.
    let now: u64 = 1_764_600_000_000;
    let remaining: [i64; 9] = [3_000, 1_000, 1, 0, -5, 600_000, 900_000, 960_000, 960_001];
    for timeout in [None, Some("300"), Some("901")] {
        let envs: Vec<(&str, &str)> = timeout
            .map(|t| vec![(env::AWS_LAMBDA_FUNCTION_TIMEOUT, t)])
            .unwrap_or_default();
        let got = python_json(
            &layer,
            &format!(
                "import json, makenaide_core as m\nprint(json.dumps([m.deadline_ms(r, {now}) for r in {remaining:?}]))"
            ),
            &envs,
        );
        let want: Vec<Option<u64>> = remaining
            .iter()
            .map(|r| {
                let value = now.checked_add_signed(*r).filter(|_| *r > 0);
                let (d, _) = Deadline::for_invocation(value.or(Some(0)), timeout, now);
                d.map(|d| d - (deadline::DEADLINE_MARGIN.as_millis() as u64).min((d - now) / 2))
            })
            .collect();
        assert_eq!(
            got,
            json!(want),
            "deadline_ms with AWS_LAMBDA_FUNCTION_TIMEOUT={timeout:?}"
        );
    }
}

#[test]
fn python_package_is_typed_stdlib_only_and_small() {
    let root = bins::workspace_root();
    let package = root.join(PYTHON_PACKAGE);
    assert!(
        package.join("py.typed").is_file(),
        "py.typed marks the package as typed"
    );
    let bytes: u64 = std::fs::read_dir(&package)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "py" || x == "typed"))
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(
        bytes < 30 * 1024,
        "{PYTHON_PACKAGE} is {bytes} bytes; the budget is 30 KB"
    );
    let example = std::fs::read_to_string(root.join(EXAMPLE_COLLECTOR).join("lambda_function.py")).unwrap();
    assert!(
        example.lines().count() <= 40,
        "the collector on the layer is {} lines; at most 40",
        example.lines().count()
    );
    let python = test_python().unwrap();
    let mypy = Command::new(&python)
        .args(["-m", "mypy", "--strict", "--cache-dir=/dev/null", "--no-incremental"])
        .arg(&package)
        .output()
        .unwrap();
    assert!(
        mypy.status.success(),
        "mypy --strict: {}{}",
        String::from_utf8_lossy(&mypy.stdout),
        String::from_utf8_lossy(&mypy.stderr)
    );
    // Every import is a module of the standard library (nothing for the layer to carry).
    let check = "import ast, json, sys\nt = ast.parse(open(sys.argv[1]).read())\n\
                 names = {a.name.split('.')[0] for n in ast.walk(t) if isinstance(n, ast.Import) for a in n.names}\n\
                 names |= {n.module.split('.')[0] for n in ast.walk(t) if isinstance(n, ast.ImportFrom) and n.module}\n\
                 print(json.dumps(sorted(names - sys.stdlib_module_names - {'__future__'})))";
    let out = Command::new(&python)
        .args(["-c", check])
        .arg(package.join("__init__.py"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "imports outside the standard library"
    );
}

/// The database and the simulated Upbit with its clock fixed (so direct calls answer the same bytes), schema applied.
async fn backends() -> Backends {
    let backends = Backends::start().await;
    backends.upbit.fix_clock();
    backends.init_schema().await;
    backends
}

#[tokio::test]
async fn python_client_tests_pass_against_the_real_extension() {
    let backends = backends().await;
    let layer = UnpackedLayer::with_built_extension().unwrap();
    let env = backends.start_env(COLLECTOR).await;
    let root = bins::workspace_root();
    let output = {
        let _thawed = env.thaw(); // the extension answers only while the environment is not frozen
        tokio::process::Command::new(test_python().unwrap())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"])
            .arg(root.join("tests/python/test_makenaide_core.py"))
            .current_dir(&root)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PYTHONPATH", layer.python_path())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env(env::CORE_PORT, env.core_port().to_string())
            .env(env::CORE_TOKEN, env.core_token())
            .env("MAKENAIDE_TEST_UPBIT_URL", backends.upbit.base_url())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap()
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pytest failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains("skipped"),
        "every test must run against the extension:\n{stdout}"
    );
    // What pytest wrote through the extension is in the database; its failed transaction left nothing.
    let client = backends.db.connect().await.unwrap();
    let rows: Vec<(String, i64, Vec<String>)> = client
        .query("select k, v, tags from py_client order by k", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a".to_string(), 1, vec!["x".to_string(), "y".to_string()]),
            ("b".to_string(), 2, vec![])
        ]
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// Every `ohlcv` row as PostgreSQL prints it (text of each column but `updated_at`), in key order.
async fn ohlcv_text(db: &TestDb) -> Vec<Vec<Option<String>>> {
    let client = db.connect().await.unwrap();
    let msgs = client
        .simple_query(
            "select market, interval, candle_date_time_utc, candle_date_time_kst, opening_price, high_price, low_price, \
             trade_price, candle_acc_trade_volume, candle_acc_trade_price, timestamp from ohlcv \
             order by market, interval, candle_date_time_utc",
        )
        .await
        .unwrap();
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// `market` → the candles the simulator served for `interval` in `range` of its record, in order.
fn served(backends: &Backends, interval: &str, range: std::ops::Range<usize>) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (market, candle) in backends.upbit.served_candles(interval).drain(range) {
        out.entry(market).or_default().push(candle);
    }
    out
}

#[tokio::test]
async fn python_collector_on_the_layer_stores_what_the_rust_collector_stores() {
    let backends = backends().await;
    let py_db = TestDb::create().await.unwrap();
    common::init_schema(py_db.url()).await;
    let layer = UnpackedLayer::with_built_extension().unwrap();
    let python = test_python().unwrap();

    let rust = backends.start_env(COLLECTOR).await;
    let cfg = layer
        .example_collector(&python)
        .env("MAKENAIDE_DATABASE_URL", py_db.url())
        .env("MAKENAIDE_UPBIT_BASE_URL", backends.upbit.base_url());
    let py = LambdaEnv::start(cfg).await.unwrap();
    assert!(
        py.extension("makenaide-core").is_some(),
        "the extension of the unpacked layer runs beside the Python function"
    );
    let events = [
        // 450 pages as 200 + 200 + 50; a market Upbit does not know fails alone; a duplicate is dropped.
        json!({"markets": ["KRW-BTC", "KRW-NOPE0", "KRW-ETH", "KRW-BTC"], "interval": "days", "count": 450}),
        json!({"markets": ["KRW-XRP"], "interval": "minutes/5", "count": 3}),
        // Again: the same rows are updated in place, not duplicated.
        json!({"markets": ["KRW-ETH"], "interval": "days", "count": 3}),
    ];
    for event in &events {
        let interval = event["interval"].as_str().unwrap();
        let before = backends.upbit.served_candles(interval).len();
        let r = rust.invoke(event.clone()).await.unwrap();
        let mid = backends.upbit.served_candles(interval).len();
        let p = py.invoke(event.clone()).await.unwrap();
        let (r, p) = (
            r.ok().unwrap().clone(),
            p.ok().unwrap_or_else(|e| panic!("{event}: {e}")).clone(),
        );
        assert_eq!(common::result_of(&p), common::result_of(&r), "{event}: the same result");
        let timestamp = p["timestamp"].as_str().unwrap();
        assert!(
            timestamp.len() == 20 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
            "{timestamp}"
        );
        // The same pages asked for: each market was served the same candles in the same order (the Rust collector
        // fetches markets concurrently, so only the order within a market is compared).
        let end = backends.upbit.served_candles(interval).len();
        let (by_rust, by_python) = (
            served(&backends, interval, before..mid),
            served(&backends, interval, mid..end),
        );
        assert!(!by_rust.is_empty(), "{event}: nothing served");
        assert!(by_python == by_rust, "{event}: served per market differs");
    }
    let (rust_rows, py_rows) = (ohlcv_text(&backends.db).await, ohlcv_text(&py_db).await);
    assert_eq!(rust_rows.len(), 450 + 450 + 3);
    assert!(
        rust_rows == py_rows,
        "the stored rows differ between the Rust and the Python collector"
    );

    // A bad event is the function error the Rust collector gives.
    let bad = json!({"markets": ["KRW-BTC"], "interval": "hours", "count": 3});
    let (r, p) = (
        rust.invoke(bad.clone()).await.unwrap(),
        py.invoke(bad.clone()).await.unwrap(),
    );
    assert_eq!(
        p.error.as_ref().map(|e| e.error_type.clone()),
        r.error.as_ref().map(|e| e.error_type.clone()),
        "{p:?} / {r:?}"
    );
    assert_eq!(p.error.as_ref().unwrap().error_type, "InvalidEvent");
    rust.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    py.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// README's "Moving a Python function onto the layer" handler, as written, under awslambdaric on the layer.
#[tokio::test]
async fn readme_moving_a_python_function_block_runs_as_written() {
    let readme = std::fs::read_to_string(bins::workspace_root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Moving a Python function onto the layer\n")
        .nth(1)
        .expect("README has the section");
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let block = section
        .split("```python\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the section has a ```python block");
    assert!(block.starts_with("import makenaide_core as mc"), "{block}");

    let backends = backends().await;
    let collector = backends.start_env(COLLECTOR).await;
    let out = collector
        .invoke(json!({"markets": ["KRW-BTC"], "interval": "days", "count": 3}))
        .await
        .unwrap();
    assert_eq!(common::result_of(out.ok().unwrap())["rows_stored"], json!(3));
    collector.shutdown(SHUTDOWN_BUDGET).await.unwrap();

    let task = tempfile::tempdir().unwrap();
    std::fs::write(task.path().join("lambda_function.py"), block).unwrap();
    let layer = UnpackedLayer::with_built_extension().unwrap();
    let cfg = layer
        .python_function(&test_python().unwrap(), task.path(), "lambda_function.lambda_handler")
        .env("MAKENAIDE_DATABASE_URL", backends.db.url())
        .env("MAKENAIDE_UPBIT_BASE_URL", backends.upbit.base_url());
    let env = LambdaEnv::start(cfg).await.unwrap();
    let out = env.invoke(json!({"market": "KRW-BTC"})).await.unwrap();
    let newest: Value = reqwest_json(&format!(
        "{}/v1/candles/days?market=KRW-BTC&count=1",
        backends.upbit.base_url()
    ))
    .await;
    assert_eq!(
        out.ok().unwrap(),
        &json!({"newest": newest[0]["candle_date_time_utc"], "stored": 3})
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

async fn reqwest_json(url: &str) -> Value {
    lambda_simulator::ensure_default_crypto_provider();
    reqwest::get(url).await.unwrap().json().await.unwrap()
}
