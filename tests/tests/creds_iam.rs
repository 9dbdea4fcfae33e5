//! Issue 14, RDS IAM authentication (`MAKENAIDE_DB_IAM_AUTH=true`):
//! - the extension's token is byte for byte the one boto3's `rds.generate_db_auth_token` makes for the same
//!   credentials, time, region, host, port and user (boto3 from `.venv-deploy-tests`, else the machine's python3);
//! - the extension's pool connects with it: a SCRAM + TLS cluster whose role's password is the token the
//!   extension's clock (fixed here) produces, through the real config parsing and connection manager; a token for
//!   another time is refused with a message naming the permission to check.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use makenaide_core::aws::rds_iam::IamAuth;
use makenaide_core::aws::sigv4::{presign_rds_connect, Credentials};
use makenaide_core::config::Config;
use makenaide_core::db::{Db, StatementRequest};
use makenaide_tests::lambda_env::bins::workspace_root;
use makenaide_tests::lambda_env::random_hex;
use makenaide_tests::pg::{connect, ClusterOptions, PgCluster};
use serde_json::{json, Value};

/// A Python that has boto3, or a message saying how to get one.
fn python_with_boto3() -> PathBuf {
    let venv = workspace_root().join(".venv-deploy-tests/bin/python");
    let candidates = [venv, PathBuf::from("python3")];
    for py in &candidates {
        let ok = std::process::Command::new(py)
            .args(["-c", "import boto3"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return py.clone();
        }
    }
    panic!(
        "no Python with boto3 ({} or python3 on PATH): run `tests/deploy/run.sh --setup` (installs boto3 into \
         .venv-deploy-tests)",
        candidates[0].display()
    );
}

const BOTO3_TOKENS: &str = r#"
import datetime, json, sys
from unittest import mock
import boto3
out = []
for c in json.load(sys.stdin):
    s = boto3.Session(aws_access_key_id=c["akid"], aws_secret_access_key=c["secret"],
                      aws_session_token=c["token"], region_name=c["region"])
    at = datetime.datetime.fromtimestamp(c["at"], datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=at):
        out.append(s.client("rds").generate_db_auth_token(c["host"], c["port"], c["user"]))
print(json.dumps(out))
"#;

#[test]
fn iam_token_matches_boto3_byte_for_byte() {
    let session = format!("IQoJb3JpZ2luX2VjE/+={}", random_hex(40));
    let cases = [
        (
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            "us-east-1",
            "db.example.com",
            5432,
            "iam_user",
            1_704_164_645,
        ),
        (
            "ASIAQWERTYUIOPASDFGH",
            "abc/def+ghi=jkl",
            Some(session.as_str()),
            "ap-northeast-2",
            "makenaide.cluster-abc123.ap-northeast-2.rds.amazonaws.com",
            6543,
            "app user+1@x",
            1_790_000_000,
        ),
        (
            "ASIAZZZZ",
            "k",
            Some("short"),
            "eu-west-1",
            "10.0.0.12",
            5432,
            "é",
            946_684_799,
        ),
    ];
    let input: Vec<Value> = cases
        .iter()
        .map(|(akid, secret, token, region, host, port, user, at)| {
            json!({"akid": akid, "secret": secret, "token": token, "region": region, "host": host,
                   "port": port, "user": user, "at": at})
        })
        .collect();
    let mut child = std::process::Command::new(python_with_boto3())
        .args(["-c", BOTO3_TOKENS])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(Value::from(input).to_string().as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
    let expected: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(expected.len(), cases.len());
    for ((akid, secret, token, region, host, port, user, at), want) in cases.iter().zip(&expected) {
        let creds = Credentials {
            access_key_id: akid,
            secret_access_key: secret,
            session_token: *token,
        };
        let got = presign_rds_connect(creds, region, host, *port, user, UNIX_EPOCH + Duration::from_secs(*at));
        assert_eq!(&got, want, "token for {user}@{host}:{port} in {region}");
    }
}

/// The fixed signing time of the pool test.
fn fixed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_790_000_000)
}
fn other_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_790_000_000 + 3600)
}

fn iam_config(port: u16, clock: fn() -> SystemTime) -> Config {
    let env = [
        ("MAKENAIDE_CORE_TOKEN", "t".to_string()),
        ("MAKENAIDE_DB_IAM_AUTH", "true".to_string()),
        (
            "MAKENAIDE_DATABASE_URL",
            format!("postgres://iam_user@127.0.0.1:{port}/postgres"),
        ),
        ("MAKENAIDE_DB_CONNECT_TIMEOUT_MS", "5000".to_string()),
        ("AWS_REGION", "ap-northeast-2".to_string()),
        ("AWS_ACCESS_KEY_ID", "ASIAQWERTYUIOPASDFGH".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "abc/def+ghi=jkl".to_string()),
        ("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2Vj-session".to_string()),
    ];
    let mut config = Config::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap();
    let db = config.database.as_mut().unwrap();
    db.iam = db.iam.take().map(|iam| iam.with_clock(clock));
    config
}

fn stmt(sql: &str) -> StatementRequest {
    StatementRequest {
        sql: sql.into(),
        params: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iam_auth_pool_connects_with_the_token_over_tls() {
    let cluster = PgCluster::start(ClusterOptions::scram_tls()).await.unwrap();
    let config = iam_config(cluster.port(), fixed_clock);
    let iam: &IamAuth = config.database.as_ref().unwrap().iam.as_ref().unwrap();
    let token = iam.token_at(fixed_clock());
    assert!(token.starts_with(&format!(
        "127.0.0.1:{}/?Action=connect&DBUser=iam_user&",
        cluster.port()
    )));
    // The role's password is exactly the token the extension will sign at its (fixed) time.
    let admin = connect(&cluster.admin_url()).await.unwrap();
    admin
        .batch_execute(&format!("create role iam_user login password '{token}'"))
        .await
        .unwrap();

    let db = Db::new(&config).unwrap();
    let r = db
        .query(
            stmt("select current_user::text, (select ssl from pg_stat_ssl where pid = pg_backend_pid())"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.rows(), vec![vec![json!("iam_user"), json!(true)]]);
    db.close(Duration::from_secs(1)).await;

    // Another signing time is another token: refused (28P01), and the message says what to check.
    let db = Db::new(&iam_config(cluster.port(), other_clock)).unwrap();
    let e = db.query(stmt("select 1"), None, None).await.unwrap_err();
    let body = e.to_json();
    assert_eq!(body["error"]["sqlstate"], json!("28P01"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("rds-db:connect on arn:aws:rds-db:ap-northeast-2:ACCOUNT:dbuser:RESOURCE_ID/iam_user"),
        "{message}"
    );
    assert!(
        !message.contains("X-Amz-Signature"),
        "the token leaked into the error: {message}"
    );
    db.close(Duration::from_secs(1)).await;
}
