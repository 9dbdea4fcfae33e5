//! README.md's examples of the localhost API, run as written: the ```sh block of "Localhost API" with `bash` and
//! curl, and its ```python block inside a Python Lambda handler under AWS's `awslambdaric`, both against the real
//! extension under the emulated Lambda with a test database and the simulated Upbit.
//!
//! Both blocks are read from README.md when the test runs (editing README changes the test). The only change made
//! to the shell block is its port: README uses the default `127.0.0.1:4571`, each environment here has its own port
//! (tests run in parallel), so the text `127.0.0.1:4571` is replaced by `127.0.0.1:<port>`; the test checks first
//! that this text is in every curl command and that no `4571` is left afterwards. The Python snippet needs no
//! change: it reads `MAKENAIDE_CORE_PORT`, which Lambda (here the harness) gives the function.
//!
//! What each command must print comes from README: a `# {...}` / `# [...]` comment line right after a command is
//! its output, where `...` in an array means "more elements of the shape of the one before" (numbers inside such
//! example elements are illustrative: only their type is checked; strings and everything else must be equal).
//! The claims of the comment lines above the commands are checked too: Upbit paths answer exactly what Upbit (the
//! simulator, fixed clock) answers for the same path and query; a transaction answers one result per statement.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backends, Upbit, COLLECTOR, SHUTDOWN_BUDGET};
use makenaide_tests::lambda_env::{bins, CoreToken, EnvConfig, LambdaEnv};
use serde_json::{json, Value};

/// README's default port, as written in its examples.
const README_HOST_PORT: &str = "127.0.0.1:4571";
/// Upper bound for one run of the shell block.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Venv interpreter with awslambdaric (scripts/setup.sh makes `<repo>/.venv-python-tests`).
const PYTHON_ENV: &str = "MAKENAIDE_TEST_PYTHON";

#[tokio::test]
async fn readme_localhost_api_curl_examples_work_as_written() {
    let block = readme_block("Localhost API", "sh", "T=\"X-Makenaide-Token: $MAKENAIDE_CORE_TOKEN\"");
    let commands = parse_commands(&block);
    let curls: Vec<&ShellCommand> = commands.iter().filter(|c| c.words[0] == "curl").collect();
    assert!(
        curls.len() >= 4,
        "expected the README's curl examples, found {}: {block}",
        curls.len()
    );
    assert_eq!(
        block.matches(README_HOST_PORT).count(),
        curls.len(),
        "every curl example should address {README_HOST_PORT} exactly once (the port is substituted): {block}"
    );

    // Backends: a test database with the schema and 3 daily KRW-BTC candles in `ohlcv` (so the select returns
    // rows), collected from the simulated Upbit with its clock fixed (so a direct call answers the same bytes).
    let backends = Backends::start().await;
    backends.upbit.fix_clock();
    backends.init_schema().await;
    let env = backends.start_env(COLLECTOR).await;
    let out = env
        .invoke(json!({"markets": ["KRW-BTC"], "interval": "days", "count": 3}))
        .await
        .unwrap();
    let stored = common::result_of(out.ok().unwrap())["rows_stored"].clone();
    assert_eq!(stored, json!(3), "collector: {out:?}");

    // The block as written, on this environment's port, with the function's MAKENAIDE_CORE_TOKEN.
    let script = block.replace(README_HOST_PORT, &format!("127.0.0.1:{}", env.core_port()));
    assert!(
        !script.contains("4571"),
        "a 4571 is left after the substitution: {script}"
    );
    let home = tempfile::tempdir().unwrap();
    let output = {
        let _thawed = env.thaw(); // the extension answers only while the environment is not frozen
        let run = tokio::process::Command::new("bash")
            .arg("-e")
            .arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
            .env("HOME", home.path()) // no ~/.curlrc of the machine
            .env("MAKENAIDE_CORE_TOKEN", env.core_token())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(SCRIPT_TIMEOUT, run)
            .await
            .expect("the README block did not finish")
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bash exited {}: {stderr}", output.status);

    // One JSON document per curl command, in order.
    let replies = json_documents(&output.stdout);
    assert_eq!(
        replies.len(),
        curls.len(),
        "expected one JSON reply per curl command; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    lambda_simulator::ensure_default_crypto_provider();
    let http = reqwest::Client::new();
    for (cmd, (raw, reply)) in curls.iter().zip(&replies) {
        let what = &cmd.text;
        let target = cmd.target();
        if let Some(expected) = &cmd.expected_output {
            let shape = parse_expected(expected);
            if let Err(e) = matches_shape(&shape, reply, false, "$") {
                panic!("{what}\nREADME says: {expected}\nit printed: {reply}\n{e}");
            }
        }
        match target.split('?').next().unwrap_or_default() {
            // "same paths and query strings as api.upbit.com (replies passed through unchanged)"
            p if p.starts_with("/v1/") => {
                let direct = http
                    .get(format!("{}{target}", backends.upbit.base_url()))
                    .send()
                    .await
                    .unwrap();
                assert!(direct.status().is_success(), "{target}: {}", direct.status());
                let direct = direct.bytes().await.unwrap();
                assert_eq!(
                    raw.as_slice(),
                    direct.as_ref(),
                    "{what}: not Upbit's reply unchanged\nextension: {}\nupbit:     {}",
                    String::from_utf8_lossy(raw),
                    String::from_utf8_lossy(&direct)
                );
                let items = reply
                    .as_array()
                    .unwrap_or_else(|| panic!("{what}: not a JSON array: {reply}"));
                if let Some(count) = query_param(&target, "count") {
                    assert_eq!(items.len().to_string(), count, "{what}: {reply}");
                }
                if let Some(markets) = query_param(&target, "markets") {
                    let got: Vec<&str> = items.iter().filter_map(|i| i["market"].as_str()).collect();
                    assert_eq!(got, markets.split(',').collect::<Vec<_>>(), "{what}: {reply}");
                }
            }
            "/db/query" => {
                let rows = reply["rows"].as_array().unwrap_or_else(|| panic!("{what}: {reply}"));
                assert!(!rows.is_empty(), "{what}: no rows: {reply}");
                assert_eq!(reply["row_count"], json!(rows.len()), "{what}: {reply}");
            }
            "/db/transaction" => {
                let body: Value = serde_json::from_str(cmd.data().unwrap()).unwrap();
                let statements = body["statements"].as_array().unwrap().len();
                let results = reply["results"].as_array().unwrap_or_else(|| panic!("{what}: {reply}"));
                assert_eq!(results.len(), statements, "{what}: one result per statement: {reply}");
            }
            "/ping" => {}
            other => panic!("README has a curl example of {other} that this test does not know"),
        }
    }
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

#[tokio::test]
async fn readme_python_snippet_works_under_awslambdaric() {
    let snippet = readme_block("Localhost API", "python", "import json, os, urllib.request");
    let path = snippet_candles_path(&snippet);
    let python = venv_python();
    let upbit = Upbit::start().await;
    upbit.fix_clock();
    // reqwest is built without a default crypto provider in this workspace (the extension brings ring itself).
    lambda_simulator::ensure_default_crypto_provider();
    let expected: Value = reqwest::get(format!("{}{path}", upbit.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(expected.as_array().map(Vec::len), Some(3), "{expected}");

    let dir = tempfile::tempdir().unwrap();
    let snippet_file = dir.path().join("readme_snippet.py");
    std::fs::write(&snippet_file, &snippet).unwrap();
    let bootstrap = bins::workspace_root().join("tests/python/bootstrap");

    // With MAKENAIDE_CORE_TOKEN, then without it (the snippet falls back to AWS_SESSION_TOKEN, as the extension).
    for token in [CoreToken::Random, CoreToken::SessionToken] {
        let mut cfg = EnvConfig::makenaide(bootstrap.display().to_string())
            .env("MAKENAIDE_UPBIT_BASE_URL", upbit.base_url())
            .env(PYTHON_ENV, python.display().to_string())
            .env("README_SNIPPET", snippet_file.display().to_string())
            // The environment is cleared (as on Lambda): the bootstrap's shell needs PATH.
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .token(token.clone())
            .timeout(Duration::from_secs(20));
        cfg.function_name = "readme-python-snippet".into();
        let env = match LambdaEnv::start(cfg).await {
            Ok(env) => env,
            Err(e) => panic!("the Python function did not start ({token:?}): {e}"),
        };
        let out = env.invoke(json!({})).await.unwrap();
        let response = out.ok().unwrap_or_else(|e| panic!("{token:?}: {e}"));
        assert_eq!(response, &json!({ "candles": expected }), "{token:?}");
        env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    }
}

/// The output notation itself: what it accepts and what it rejects.
#[test]
fn readme_output_notation() {
    let shape = parse_expected(r#"{"rows":[["KRW-BTC",134502000.0],...],"row_count":3,"note":"a...b"}"#);
    let ok = |v: Value| matches_shape(&shape, &v, false, "$");
    assert!(ok(json!({"rows": [["KRW-BTC", 1.5], ["KRW-BTC", 2]], "row_count": 3, "note": "a...b"})).is_ok());
    assert!(ok(json!({"rows": [["KRW-BTC", 1.5]], "row_count": 3, "note": "a...b"})).is_ok());
    for wrong in [
        json!({"rows": [], "row_count": 3, "note": "a...b"}), // at least one row
        json!({"rows": [["KRW-ETH", 1.5]], "row_count": 3, "note": "a...b"}), // strings are exact
        json!({"rows": [["KRW-BTC", "1.5"]], "row_count": 3, "note": "a...b"}), // a number stays a number
        json!({"rows": [["KRW-BTC", 1.5, 0]], "row_count": 3, "note": "a...b"}), // row width
        json!({"rows": [["KRW-BTC", 1.5]], "row_count": 2, "note": "a...b"}), // numbers outside examples
        json!({"rows": [["KRW-BTC", 1.5]], "row_count": 3}),  // keys
        json!({"rows": [["KRW-BTC", 1.5]], "row_count": 3, "note": "a...b", "x": 1}), // keys
    ] {
        assert!(ok(wrong.clone()).is_err(), "accepted {wrong}");
    }
}

// --- README ---------------------------------------------------------------------------------------------------

/// The fenced block of language `lang` in section `## {section}` of README.md whose first line starts with `first`.
fn readme_block(section: &str, lang: &str, first: &str) -> String {
    let path = bins::workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let heading = format!("## {section}\n");
    let start = readme
        .find(&heading)
        .unwrap_or_else(|| panic!("README.md has no section `## {section}`"));
    let body = &readme[start + heading.len()..];
    let body = &body[..body.find("\n## ").unwrap_or(body.len())];
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in body.lines() {
        match &mut current {
            None if line.trim_end() == format!("```{lang}") => current = Some(Vec::new()),
            Some(lines) if line.trim_end() == "```" => {
                blocks.push(lines.join("\n") + "\n");
                current = None;
            }
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    blocks
        .into_iter()
        .find(|b| b.starts_with(first))
        .unwrap_or_else(|| panic!("README.md `## {section}` has no ```{lang} block starting with `{first}`"))
}

/// One command of a shell block: its text (continuation lines joined), its words (quotes removed, nothing
/// expanded) and the `# {...}` line right after it, if any.
#[derive(Debug)]
struct ShellCommand {
    text: String,
    words: Vec<String>,
    expected_output: Option<String>,
}

impl ShellCommand {
    /// Path and query of the URL on 127.0.0.1.
    fn target(&self) -> String {
        let url = self
            .words
            .iter()
            .find(|w| w.starts_with(README_HOST_PORT))
            .unwrap_or_else(|| panic!("no {README_HOST_PORT} URL in {}", self.text));
        url[README_HOST_PORT.len()..].to_string()
    }

    /// The argument of `-d`.
    fn data(&self) -> Option<&str> {
        let i = self.words.iter().position(|w| w == "-d")?;
        self.words.get(i + 1).map(String::as_str)
    }
}

fn parse_commands(block: &str) -> Vec<ShellCommand> {
    let mut commands: Vec<ShellCommand> = Vec::new();
    let mut lines = block.lines().peekable();
    let mut last_was_command = false;
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(comment) = trimmed.strip_prefix('#') {
            let comment = comment.trim();
            if last_was_command && (comment.starts_with('{') || comment.starts_with('[')) {
                if let Some(c) = commands.last_mut() {
                    c.expected_output = Some(comment.to_string());
                }
            }
            last_was_command = false;
            continue;
        }
        if trimmed.is_empty() {
            last_was_command = false;
            continue;
        }
        let mut text = line.to_string();
        while text.ends_with('\\') {
            text.pop();
            match lines.next() {
                Some(next) => text.push_str(next),
                None => break,
            }
        }
        commands.push(ShellCommand {
            words: shell_words(&text),
            text,
            expected_output: None,
        });
        last_was_command = true;
    }
    commands
}

/// Splits a command line into words: single and double quotes removed, backslash escapes resolved, no expansion.
fn shell_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    cur.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn query_param(target: &str, name: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
}

/// The path that the snippet's `candles = core("...")` asks for.
fn snippet_candles_path(snippet: &str) -> String {
    let line = snippet
        .lines()
        .find(|l| l.starts_with("candles = core("))
        .unwrap_or_else(|| panic!("the README's Python snippet has no `candles = core(...)` line: {snippet}"));
    let arg = line["candles = core(".len()..].trim_end().trim_end_matches(')');
    arg.trim_matches(|c| c == '"' || c == '\'').to_string()
}

// --- outputs --------------------------------------------------------------------------------------------------

/// The JSON documents printed one after the other (curl prints replies without separators), with their bytes.
fn json_documents(stdout: &[u8]) -> Vec<(Vec<u8>, Value)> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(stdout).into_iter::<Value>();
    let mut start = 0;
    while let Some(doc) = stream.next() {
        let end = stream.byte_offset();
        let doc = doc.unwrap_or_else(|e| panic!("not JSON: {e}: {}", String::from_utf8_lossy(stdout)));
        let raw = stdout[start..end].trim_ascii().to_vec();
        out.push((raw, doc));
        start = end;
    }
    out
}

/// README's output notation as JSON: each `...` outside strings becomes the string `"..."`.
fn parse_expected(comment: &str) -> Value {
    let mut json = String::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = comment;
    while let Some(c) = rest.chars().next() {
        if !in_string && rest.starts_with("...") {
            json.push_str("\"...\"");
            rest = &rest[3..];
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        json.push(c);
        rest = &rest[c.len_utf8()..];
    }
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("README output `{comment}` is not JSON (with ...): {e}"))
}

/// `actual` has the shape README shows in `expected` (see the module comment); `example`: inside an elided array.
fn matches_shape(expected: &Value, actual: &Value, example: bool, at: &str) -> Result<(), String> {
    let elided = Value::String("...".into());
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            let (ek, ak): (Vec<_>, Vec<_>) = (e.keys().collect(), a.keys().collect());
            if ek != ak {
                return Err(format!("{at}: keys {ak:?}, README shows {ek:?}"));
            }
            e.iter()
                .try_for_each(|(k, v)| matches_shape(v, &a[k], example, &format!("{at}.{k}")))
        }
        (Value::Array(e), Value::Array(a)) if e.last() == Some(&elided) => {
            let shown = &e[..e.len() - 1];
            let Some(last) = shown.last() else {
                return Err(format!("{at}: README shows no element before `...`"));
            };
            if a.len() < shown.len() {
                return Err(format!(
                    "{at}: {} elements, README shows at least {}",
                    a.len(),
                    shown.len()
                ));
            }
            a.iter()
                .enumerate()
                .try_for_each(|(i, v)| matches_shape(shown.get(i).unwrap_or(last), v, true, &format!("{at}[{i}]")))
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!("{at}: {} elements, README shows {}", a.len(), e.len()));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .try_for_each(|(i, (e, a))| matches_shape(e, a, example, &format!("{at}[{i}]")))
        }
        (Value::Number(_), Value::Number(_)) if example => Ok(()),
        (Value::Number(e), Value::Number(a)) if e.as_f64() == a.as_f64() => Ok(()),
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{at}: {a}, README shows {e}")),
    }
}

// --- Python ---------------------------------------------------------------------------------------------------

/// The venv interpreter with awslambdaric: `$MAKENAIDE_TEST_PYTHON`, else `<repo>/.venv-python-tests/bin/python`.
fn venv_python() -> PathBuf {
    let python = std::env::var_os(PYTHON_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| bins::workspace_root().join(".venv-python-tests/bin/python"));
    let hint = "run scripts/setup.sh (it creates .venv-python-tests with tests/python/requirements.txt) or set \
                MAKENAIDE_TEST_PYTHON to a python that has awslambdaric";
    assert!(
        Path::new(&python).is_file(),
        "no Python for the awslambdaric tests at {}: {hint}",
        python.display()
    );
    let check = std::process::Command::new(&python)
        .args(["-c", "import awslambdaric"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}: {hint}", python.display()));
    assert!(
        check.status.success(),
        "{} cannot import awslambdaric ({}): {hint}",
        python.display(),
        String::from_utf8_lossy(&check.stderr).trim()
    );
    python
}
