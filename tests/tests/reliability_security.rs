//! Reliability: security of the real extension's localhost API under the emulated Lambda
//! environment: the token (401/403, `/ping` open), loopback-only listening (no connection on any other address of
//! this machine), `X-Forwarded-For` refused, the inbound connection cap (the longest-idle connection makes room), no secret in any log line of a full
//! debug-level run against a SCRAM-password PostgreSQL, and the read-only switch (writes 403 `read_only`, reads
//! fine, no way out of the read-only transaction). Figures go to the reliability report (`reliability_security`).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::*;
use makenaide_tests::lambda_env::{random_hex, CoreClient, CoreToken, EnvConfig, LambdaEnv};
use makenaide_tests::moto::Moto;
use makenaide_tests::pg::{connect, ClusterOptions, PgCluster};
use makenaide_tests::report;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECTION: &str = "reliability_security";

fn http() -> reqwest::Client {
    CoreClient::new(1, ""); // installs the process-wide crypto provider reqwest needs here
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Addresses of this machine other than 127.0.0.1 (from `ip -o addr`, else `hostname -I`), plus `::1` and
/// `127.0.0.2` (loopback, but not the one address the extension may listen on).
fn other_local_addresses() -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = vec![IpAddr::V6(Ipv6Addr::LOCALHOST), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
    let text = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    match text {
        Some(t) => {
            for line in t.lines() {
                let mut words = line.split_whitespace();
                while let Some(w) = words.next() {
                    if w == "inet" || w == "inet6" {
                        if let Some(a) = words.next().and_then(|cidr| cidr.split('/').next()) {
                            if let Ok(ip) = a.parse::<IpAddr>() {
                                // Link-local IPv6 needs a scope id to connect to at all: nothing to prove there.
                                let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
                                if !ip.is_loopback() && !link_local {
                                    out.push(ip);
                                }
                            }
                        }
                    }
                }
            }
        }
        None => {
            if let Ok(o) = std::process::Command::new("hostname").arg("-I").output() {
                for a in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        if !ip.is_loopback() {
                            out.push(ip);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Local addresses of listening TCP sockets on `port` from /proc/net/tcp and tcp6 (hex, as the kernel writes them).
fn listeners_on(port: u16) -> Vec<String> {
    let mut out = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3] == "0A" {
                if let Some((addr, p)) = f[1].split_once(':') {
                    if u16::from_str_radix(p, 16).ok() == Some(port) {
                        out.push(format!("{file}:{addr}"));
                    }
                }
            }
        }
    }
    out
}

/// Token rules, loopback-only listening and `X-Forwarded-For`, on one environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_loopback_only_and_forwarded_requests() {
    let b = Backends::start().await;
    let env = b.start_env(COLLECTOR).await;
    env.core().wait_ready(true, Duration::from_secs(10)).await.unwrap();
    let c = http();
    let base = format!("http://127.0.0.1:{}", env.core_port());
    let token = env.core_token().to_string();
    let mut checks = 0;

    // /ping is open; everything else needs the token.
    let (s, v) = call(c.get(format!("{base}/ping"))).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let mut wrong = vec![
        "wrong".to_string(),
        String::new(),
        token[..token.len() - 1].to_string(),
        format!("{token}x"),
        token.to_uppercase(),
        format!("{token} {token}"),
    ];
    wrong.retain(|w| *w != token);
    for (method, path) in [
        (reqwest::Method::POST, "/db/query"),
        (reqwest::Method::POST, "/db/transaction"),
        (reqwest::Method::GET, "/v1/ticker?markets=KRW-BTC"),
        (reqwest::Method::GET, "/v1/candles/days?market=KRW-BTC"),
        (reqwest::Method::GET, "/nope"),
    ] {
        let body = r#"{"sql":"select 1"}"#;
        let (s, v) = call(c.request(method.clone(), format!("{base}{path}")).body(body)).await;
        assert_eq!(
            (s, code(&v)),
            (401, makenaide_contract::ErrorCode::MissingToken.as_str()),
            "{method} {path}"
        );
        checks += 1;
        for w in &wrong {
            let (s, v) = call(
                c.request(method.clone(), format!("{base}{path}"))
                    .header(makenaide_contract::headers::TOKEN, w)
                    .body(body),
            )
            .await;
            assert_eq!(
                (s, code(&v)),
                (403, makenaide_contract::ErrorCode::InvalidToken.as_str()),
                "{method} {path} token {w:?}"
            );
            checks += 1;
        }
    }
    let upstream = b.upbit.sim().stats().group("ticker") + b.upbit.sim().stats().group("candles");
    assert_eq!(upstream, 0, "an unauthenticated request reached Upbit");
    let (s, _) = call(
        c.post(format!("{base}/db/query"))
            .header(makenaide_contract::headers::TOKEN, &token)
            .body(r#"{"sql":"select 1"}"#),
    )
    .await;
    assert_eq!(s, 200);

    // X-Forwarded-For is refused everywhere, with or without a token, whatever its spelling or value.
    for (name, value) in [
        (makenaide_contract::headers::FORWARDED_FOR, "203.0.113.7"),
        (makenaide_contract::headers::FORWARDED_FOR, "127.0.0.1"),
        (makenaide_contract::headers::FORWARDED_FOR, ""),
    ] {
        for (method, path) in [
            (reqwest::Method::GET, "/ping"),
            (reqwest::Method::POST, "/db/query"),
            (reqwest::Method::GET, "/v1/ticker?markets=KRW-BTC"),
        ] {
            let (s, v) = call(
                c.request(method.clone(), format!("{base}{path}"))
                    .header(makenaide_contract::headers::TOKEN, &token)
                    .header(name, value)
                    .body(r#"{"sql":"select 1"}"#),
            )
            .await;
            assert_eq!(
                (s, code(&v)),
                (400, makenaide_contract::ErrorCode::ForwardedRequest.as_str()),
                "{name}: {value:?} on {method} {path}"
            );
            checks += 1;
        }
    }

    // Listening on 127.0.0.1 only: the kernel's socket table, then connection attempts on every other address.
    let port = env.core_port();
    let listeners = listeners_on(port);
    assert_eq!(
        listeners,
        vec!["/proc/net/tcp:0100007F".to_string()],
        "the extension must listen on 127.0.0.1 only"
    );
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_ok());
    let others = other_local_addresses();
    let mut refused = Vec::new();
    for ip in &others {
        let res = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(SocketAddr::new(*ip, port))).await;
        match res {
            Ok(Ok(_)) => panic!("the extension's port {port} is reachable on {ip}"),
            Ok(Err(e)) => refused.push(format!("{ip} ({})", e.kind())),
            Err(_) => refused.push(format!("{ip} (timeout)")),
        }
    }
    assert!(
        others.iter().any(|ip| !ip.is_loopback()) || others.len() == 2,
        "{others:?}"
    );
    report::record(
        SECTION,
        &format!(
            "- token: {checks} requests without/with a wrong token (6 variants) or with X-Forwarded-For on 5 routes: \
         401 missing_token / 403 invalid_token / 400 forwarded_request every time, /ping open, nothing reached Upbit"
        ),
    );
    report::record(
        SECTION,
        &format!(
            "- listening sockets on the port: {listeners:?} (127.0.0.1 only); connect refused on {}",
            refused.join(", ")
        ),
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// Opens a connection and sends `GET /ping`, returning the connection and the status.
async fn ping_on_new_connection(port: u16) -> (TcpStream, u16) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 2048];
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed without a reply: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    if status == 429 {
        // Read the JSON body too, to check the code.
        let mut rest = got.clone();
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), conn.read(&mut buf)).await {
            rest.extend_from_slice(&buf[..n]);
        }
        assert!(
            String::from_utf8_lossy(&rest).contains(makenaide_contract::ErrorCode::TooManyConnections.as_str()),
            "{}",
            String::from_utf8_lossy(&rest)
        );
    }
    (conn, status)
}

/// `MAKENAIDE_MAX_CONNECTIONS=4`: four held keep-alive connections fill the cap; each further connection is
/// served and the longest-idle held one is closed to make room (so held connections can never lock the function
/// out); the connections still held keep working, and the function still works. (Every connection busy → 429:
/// `reliability_hostile_http`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_closes_the_longest_idle_connection() {
    const CAP: usize = 4;
    let b = Backends::start().await;
    b.init_schema().await;
    let env = LambdaEnv::start(
        b.env_config(COLLECTOR)
            .env("MAKENAIDE_MAX_CONNECTIONS", CAP.to_string()),
    )
    .await
    .unwrap();
    env.core().wait_ready(true, Duration::from_secs(10)).await.unwrap();
    let port = env.core_port();
    let mut held = std::collections::VecDeque::new();
    for _ in 0..CAP {
        let (conn, status) = ping_on_new_connection(port).await;
        assert_eq!(status, 200);
        held.push_back(conn);
    }
    let mut made_room = 0;
    for _ in 0..3 {
        let (conn, status) = ping_on_new_connection(port).await;
        assert_eq!(status, 200, "a connection over the cap of {CAP} was not served");
        // The longest-idle connection (the front one) was closed for it: end of stream, no reply.
        let mut oldest = held.pop_front().unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), oldest.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "{}", String::from_utf8_lossy(&rest));
        held.push_back(conn);
        made_room += 1;
    }
    // The held connections still work (keep-alive) at the cap.
    for conn in &mut held {
        conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    drop(held);
    let out = env.invoke(json!({"markets": ["KRW-BTC"], "count": 1})).await.unwrap();
    result_of(out.ok().unwrap());
    report::record(
        SECTION,
        &format!(
            "- connection cap MAKENAIDE_MAX_CONNECTIONS={CAP}: {CAP} held connections served; {made_room} more were \
         served too, each closing the longest-idle held one; the held ones kept working, the function still works"
        ),
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}

/// A full debug-level run (orchestrator: init, scan, collect; error paths: wrong token, SQL error, Upbit 404,
/// database down) against a SCRAM-password cluster: neither the password nor the token appears in any log line
/// of the extension or the function, nor in any reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line_of_a_debug_run() {
    let password = format!("pw-{}", random_hex(16));
    let token = format!("tok-{}", random_hex(24));
    let cluster = PgCluster::start(ClusterOptions {
        password: Some(password.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.create_database("makenaide").await.unwrap();
    let upbit = Upbit::start().await;
    let env = LambdaEnv::start(
        makenaide_tests::lambda_env::EnvConfig::makenaide(ORCHESTRATOR)
            .env("MAKENAIDE_DATABASE_URL", cluster.url("makenaide", Some("prefer")))
            .env("MAKENAIDE_UPBIT_BASE_URL", upbit.base_url())
            .env("RUST_LOG", "debug")
            .env("AWS_LAMBDA_LOG_LEVEL", "debug")
            .token(CoreToken::Fixed(token.clone()))
            .timeout(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let out = env.invoke(json!({})).await.unwrap();
    let result = result_of(out.ok().unwrap()).clone();
    assert!(result["rows_stored"].as_u64().unwrap() > 0, "{result}");

    let mut replies = Vec::new();
    {
        let _thawed = env.thaw();
        let c = http();
        let base = format!("http://127.0.0.1:{}", env.core_port());
        let ok = CoreClient::new(env.core_port(), token.clone());
        let bad = CoreClient::new(env.core_port(), format!("{token}-wrong"));
        replies.push(bad.query_raw("select 1", json!([])).await.unwrap().body);
        replies.push(ok.query_raw("selec 1", json!([])).await.unwrap().body);
        replies.push(ok.get("/v1/candles/days?market=KRW-NOTACOIN").await.unwrap().body);
        let (_, v) = call(c.get(format!("{base}/ping"))).await;
        replies.push(v.to_string().into());
        // The database goes away: the error the function gets (and what is logged) must not leak the URL.
        cluster.stop(false).await.unwrap();
        let r = ok.query_raw("select 1", json!([])).await.unwrap();
        assert_eq!(r.status, 503, "{:?}", r.json());
        replies.push(r.body);
    }
    let out = env.invoke(json!({})).await.unwrap();
    assert!(
        out.error_type().is_some(),
        "the orchestrator should fail with the database down"
    );
    let shutdown = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();

    let logs = &shutdown.logs;
    let by_process = |p: &str| logs.iter().filter(|l| l.process.contains(p)).count();
    let debug_lines = logs.iter().filter(|l| l.line.contains("DEBUG")).count();
    assert!(debug_lines > 0, "no debug line: the run was not at debug level");
    let encoded_pw: String = password.bytes().map(|b| format!("%{b:02X}")).collect();
    for l in logs {
        for (what, secret) in [
            ("database password", password.as_str()),
            ("token", token.as_str()),
            ("encoded password", encoded_pw.as_str()),
        ] {
            assert!(!l.line.contains(secret), "{} logged the {what}: {}", l.process, l.line);
        }
    }
    for body in &replies {
        let text = String::from_utf8_lossy(body);
        assert!(
            !text.contains(&password) && !text.contains(&token),
            "a reply leaks a secret: {text}"
        );
    }
    report::record(
        SECTION,
        &format!(
            "- secrets: full orchestrator run + error paths (wrong token, SQL error, Upbit 404, database stopped) at \
         RUST_LOG=debug / AWS_LAMBDA_LOG_LEVEL=debug against a SCRAM-SHA-256 cluster: {} log lines ({} extension, {} \
         function, {} at DEBUG) and {} replies grepped: password 0 hits, token 0 hits",
            logs.len(),
            by_process("makenaide-core"),
            logs.len() - by_process("makenaide-core"),
            debug_lines,
            replies.len()
        ),
    );
}

/// The same without a password in the configuration, at debug level: `MAKENAIDE_DATABASE_SECRET_ID` (moto with IAM
/// checks on) for two orchestrator runs with a password rotation between them while frozen (the 28P01 re-read
/// path), a role denied the secret, and `MAKENAIDE_DB_IAM_AUTH=true` against a server that refuses the token:
/// neither password, nor the AWS secret keys and session tokens, nor any IAM token (`X-Amz-Signature`,
/// `X-Amz-Credential`) appears in any log line or reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line_with_secrets_manager_or_iam_auth() {
    let moto = Moto::start().await.unwrap();
    let acc = moto.accounts().await.unwrap();
    let cluster = PgCluster::start(ClusterOptions::scram_tls()).await.unwrap();
    let admin = connect(&cluster.admin_url()).await.unwrap();
    let (pw1, pw2) = (format!("pw1-{}", random_hex(12)), format!("pw2-{}", random_hex(12)));
    admin
        .batch_execute(&format!("create role app login password '{pw1}'"))
        .await
        .unwrap();
    admin
        .batch_execute("create database makenaide owner app")
        .await
        .unwrap();
    let secret = |pw: &str| {
        json!({"username": "app", "password": pw, "host": "127.0.0.1", "port": cluster.port(),
            "dbname": "makenaide", "engine": "postgres"})
        .to_string()
    };
    moto.create_secret(&acc.admin, "makenaide/db", &secret(&pw1))
        .await
        .unwrap();
    let upbit = Upbit::start().await;
    let debug_env = |function: &str, creds: &makenaide_tests::moto::Creds| {
        let mut cfg = EnvConfig::makenaide(function)
            .env("MAKENAIDE_AWS_ENDPOINT_URL", moto.url())
            .env("MAKENAIDE_UPBIT_BASE_URL", upbit.base_url())
            .env("RUST_LOG", "debug")
            .env("AWS_LAMBDA_LOG_LEVEL", "debug")
            .timeout(Duration::from_secs(60));
        for (k, v) in creds.lambda_env() {
            cfg = cfg.env(k, v);
        }
        cfg
    };
    let mut logs = Vec::new();
    let mut replies: Vec<bytes::Bytes> = Vec::new();

    // Secrets Manager: a run, a rotation while frozen, a run that re-reads the secret.
    let env =
        LambdaEnv::start(debug_env(ORCHESTRATOR, &acc.reader).env("MAKENAIDE_DATABASE_SECRET_ID", "makenaide/db"))
            .await
            .unwrap();
    let out = env.invoke(json!({})).await.unwrap();
    assert!(result_of(out.ok().unwrap())["rows_stored"].as_u64().unwrap() > 0);
    admin
        .batch_execute(&format!("alter role app password '{pw2}'"))
        .await
        .unwrap();
    moto.put_secret_value(&acc.admin, "makenaide/db", &secret(&pw2))
        .await
        .unwrap();
    admin
        .batch_execute("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'app'")
        .await
        .unwrap();
    let out = env.invoke(json!({})).await.unwrap();
    result_of(out.ok().unwrap());
    {
        let _thawed = env.thaw();
        let r = env.core().query_raw("select 1", json!([])).await.unwrap();
        assert_eq!(r.status, 200);
        replies.push(r.body);
    }
    let shutdown = env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
    assert!(
        shutdown
            .logs
            .iter()
            .any(|l| l.line.contains("reading the secret again")),
        "the rotation did not go through the re-read path"
    );
    logs.extend(shutdown.logs);

    // A role denied the secret, and RDS IAM authentication refused by the server.
    let denied = debug_env(COLLECTOR, &acc.denied)
        .env("MAKENAIDE_DATABASE_SECRET_ID", "makenaide/db")
        .freeze(false);
    let iam = debug_env(COLLECTOR, &acc.reader)
        .env("MAKENAIDE_DB_IAM_AUTH", "true")
        .env(
            "MAKENAIDE_DATABASE_URL",
            format!("postgres://app@127.0.0.1:{}/makenaide", cluster.port()),
        )
        .freeze(false);
    for cfg in [denied, iam] {
        let env = LambdaEnv::start(cfg).await.unwrap();
        let r = env.core().query_raw("select 1", json!([])).await.unwrap();
        assert_eq!(r.status, 503, "{:?}", r.json());
        replies.push(r.body);
        logs.extend(env.shutdown(SHUTDOWN_BUDGET).await.unwrap().logs);
    }

    let debug_lines = logs.iter().filter(|l| l.line.contains("DEBUG")).count();
    assert!(debug_lines > 0, "no debug line: the run was not at debug level");
    let mut secrets = vec![
        ("database password", pw1.clone()),
        ("rotated database password", pw2.clone()),
        ("reader's AWS secret key", acc.reader.secret_access_key.clone()),
        ("denied role's AWS secret key", acc.denied.secret_access_key.clone()),
        ("IAM token signature", "X-Amz-Signature".to_string()),
        ("IAM token credential", "X-Amz-Credential".to_string()),
    ];
    for (what, c) in [("reader", &acc.reader), ("denied role", &acc.denied)] {
        if let Some(t) = &c.session_token {
            secrets.push((
                if what == "reader" {
                    "reader's session token"
                } else {
                    "denied session token"
                },
                t.clone(),
            ));
        }
    }
    for l in &logs {
        for (what, secret) in &secrets {
            assert!(
                !l.line.contains(secret.as_str()),
                "{} logged the {what}: {}",
                l.process,
                l.line
            );
        }
    }
    for body in &replies {
        let text = String::from_utf8_lossy(body);
        for (what, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "a reply leaks the {what}: {text}");
        }
    }
    report::record(
        SECTION,
        &format!(
            "- secrets without a password in the configuration: two orchestrator runs on MAKENAIDE_DATABASE_SECRET_ID \
             (moto, IAM checks on) with a rotation between them, a role denied the secret, MAKENAIDE_DB_IAM_AUTH \
             refused by the server, at debug level: {} log lines ({debug_lines} at DEBUG) and {} replies grepped for \
             both passwords, the AWS secret keys, the session tokens and IAM tokens: 0 hits",
            logs.len(),
            replies.len()
        ),
    );
}

/// `MAKENAIDE_DB_READ_ONLY=true`: every write is 403 `read_only` (SQLSTATE 25006), reads work, and no statement
/// sequence gets out of the read-only transaction (`SET TRANSACTION READ WRITE`, `COMMIT`/`ROLLBACK`/`END` then a
/// write, `set_config`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_switch_refuses_every_write() {
    let b = Backends::start().await;
    b.init_schema().await;
    let env = LambdaEnv::start(
        b.env_config(COLLECTOR)
            .env("MAKENAIDE_DB_READ_ONLY", "true")
            .freeze(false),
    )
    .await
    .unwrap();
    let core = env.core();
    core.wait_ready(true, Duration::from_secs(10)).await.unwrap();
    let insert = "insert into markets (market, korean_name, english_name, warning, caution, updated_at) \
                  values ('KRW-RO', 'k', 'e', false, '{}'::jsonb, now())";
    let mut refused = 0;
    for sql in [
        insert,
        "update markets set warning = true",
        "delete from ohlcv",
        "create table ro_probe (x int)",
        "truncate scan_results",
        "select nextval('scan_results_id_seq')",
    ] {
        let r = core.query_raw(sql, json!([])).await.unwrap();
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (403, Some(makenaide_contract::ErrorCode::ReadOnly.as_str())),
            "{sql}: {:?}",
            r.json()
        );
        assert_eq!(r.json()["error"]["sqlstate"], json!("25006"), "{sql}");
        refused += 1;
    }
    // Attempts to leave the read-only transaction before writing.
    for stmts in [
        vec!["set transaction read write", insert],
        vec!["set transaction_read_only = off", insert],
        vec!["set local transaction_read_only to off", insert],
        vec!["commit", insert],
        vec!["rollback", insert],
        vec!["end", insert],
        vec!["abort", insert],
        vec!["commit and chain", insert],
        vec!["prepare transaction 'ro'", insert],
        vec!["select set_config('transaction_read_only', 'off', true)", insert],
        vec!["/* hi */ COMMIT", insert],
        vec!["  CoMmIt  ", insert],
        vec!["start transaction read write", insert],
    ] {
        let body = json!({"statements": stmts.iter().map(|s| json!({"sql": s})).collect::<Vec<_>>()});
        let r = core.post_json("/db/transaction", &body).await.unwrap();
        assert!(
            (r.status == 403 && r.error_code().as_deref() == Some(makenaide_contract::ErrorCode::ReadOnly.as_str()))
                || (r.status == 400),
            "{stmts:?} must be refused: {} {:?}",
            r.status,
            r.json()
        );
        refused += 1;
    }
    for sql in ["set transaction read write", "commit", "begin"] {
        let r = core.query_raw(sql, json!([])).await.unwrap();
        assert!(r.status == 403 || r.status == 400, "{sql}: {} {:?}", r.status, r.json());
    }
    // Reads work.
    let v = core
        .query("select count(*) as n from markets where market = 'KRW-RO'", json!([]))
        .await
        .unwrap();
    assert_eq!(v["rows"], json!([[0]]), "a write got through the read-only switch");
    let v = core.query("select count(*) from ohlcv", json!([])).await.unwrap();
    assert_eq!(v["row_count"], json!(1));
    let r = core
        .post_json(
            "/db/transaction",
            &json!({"statements": [{"sql": "select 1"}, {"sql": "select now()"}]}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let direct = b.db.connect().await.unwrap();
    let n: i64 = direct
        .query_one("select count(*) from markets where market = 'KRW-RO'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    let exists: bool = direct
        .query_one("select to_regclass('ro_probe') is null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(exists, "ro_probe was created");
    // The collector (a writer) fails cleanly with a database error.
    let out = env.invoke(json!({"markets": ["KRW-BTC"], "count": 1})).await.unwrap();
    assert_eq!(out.error_type(), Some("DatabaseError"), "{:?}", out.ok());
    report::record(
        SECTION,
        &format!(
        "- read-only switch: {refused} write attempts (6 plain writes, 13 ways to leave the read-only transaction) \
         refused (403 read_only / 25006 or 400), reads 200, 0 rows written; the collector fails with DatabaseError"
    ),
    );
    env.shutdown(SHUTDOWN_BUDGET).await.unwrap();
}
