//! Self-tests of the PostgreSQL helpers: per-test databases on the machine's server, and throwaway clusters
//! with SCRAM and TLS (verified with `psql`, which speaks TLS, against the generated CA).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use makenaide_tests::pg::{self, ClusterOptions, PgCluster, TestDb};

#[tokio::test]
async fn test_db_is_created_isolated_and_dropped() {
    let db = TestDb::create().await.expect("create test db");
    let name = db.name().to_string();
    let client = db.connect().await.unwrap();
    client
        .batch_execute("create table t (x int); insert into t values (1), (2)")
        .await
        .unwrap();
    let n: i64 = client.query_one("select count(*) from t", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
    client.batch_execute("set application_name = 'probe'").await.unwrap();
    let sessions = db.sessions(Some("probe")).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(db.terminate_sessions(Some("probe")).await.unwrap(), 1);
    assert!(db
        .wait_no_sessions(Some("probe"), std::time::Duration::from_secs(5))
        .await
        .unwrap()
        .is_empty());
    drop(db);
    let admin = pg::connect(pg::DEFAULT_TEST_PG).await.unwrap();
    let left = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .await
        .unwrap();
    assert!(left.is_none(), "database {name} not dropped");
}

#[tokio::test]
async fn throwaway_cluster_with_scram_and_tls() {
    let cluster = PgCluster::start(ClusterOptions {
        password: Some("s3cret-pw".into()),
        tls: true,
        max_connections: Some(20),
        ..Default::default()
    })
    .await
    .expect("start cluster");
    cluster.create_database("app").await.unwrap();

    // SCRAM: the right password works, a wrong one does not.
    let ok = pg::connect(&cluster.url("app", Some("disable"))).await.unwrap();
    let method: String = ok
        .query_one(
            "select coalesce((select auth_method from pg_hba_file_rules where type = 'host' limit 1), '')",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or_default();
    assert!(method.is_empty() || method == "scram-sha-256", "{method}");
    let bad = cluster.url("app", Some("disable")).replace("s3cret-pw", "wrong");
    assert!(pg::connect(&bad).await.is_err());

    // TLS with full verification against the generated CA.
    let ca = cluster.ca_cert().unwrap();
    let out = std::process::Command::new("psql")
        .arg(format!(
            "host=localhost port={} dbname=app user=postgres sslmode=verify-full sslrootcert={}",
            cluster.port(),
            ca.display()
        ))
        .args(["-tAc", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"])
        .env("PGPASSWORD", "s3cret-pw")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");

    // Stop and start again: refused while down, fine afterwards.
    cluster.stop(false).await.unwrap();
    assert!(pg::connect(&cluster.url("app", Some("disable"))).await.is_err());
    cluster.start_again().await.unwrap();
    assert!(pg::connect(&cluster.url("app", Some("disable"))).await.is_ok());
}
