//! `POST /sql`, Neon's SQL-over-HTTP wire format, on the real extension under the emulated Lambda with a throwaway
//! PostgreSQL database:
//! - the real `@neondatabase/serverless` driver and `drizzle-orm/neon-http` (pinned in tests/node/package-lock.json,
//!   installed by scripts/setup.sh with `npm ci`) run tests/node/neon_driver.test.mjs under the machine's Node,
//!   pointed at the extension with the README's setup (the README block must appear verbatim in that file);
//! - every value rendered as text is compared with PostgreSQL's own text output of the same value (`concat(v)`
//!   calls the type's output function; `v::text` would not for bool and bpchar);
//! - Neon's non-raw typing, field metadata and the route's refusals (token, method, headers, bodies).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::time::Duration;

use makenaide_contract::headers::{
    NEON_ARRAY_MODE, NEON_BATCH_ISOLATION_LEVEL, NEON_CONNECTION_STRING, NEON_RAW_TEXT_OUTPUT, TOKEN,
};
use makenaide_contract::{routes, ErrorCode};
use makenaide_tests::lambda_env::{bins, free_port, EnvConfig, LambdaEnv, EXTENSION};
use makenaide_tests::pg::TestDb;
use serde_json::{json, Value};

/// Upper bound for the Node test file (it takes about a second).
const NODE_TIMEOUT: Duration = Duration::from_secs(60);
/// The README section that documents the driver setup.
const README_SECTION: &str = "## SQL-over-HTTP drivers (Neon)\n";

fn cfg(db: &TestDb) -> EnvConfig {
    EnvConfig::new(format!("{}/fixtures/fixture-fn", env!("CARGO_MANIFEST_DIR")))
        .extension(EXTENSION)
        .env("MAKENAIDE_DATABASE_URL", db.url())
        // Nothing listens there: Upbit is not used here.
        .env("MAKENAIDE_UPBIT_BASE_URL", format!("http://127.0.0.1:{}", free_port()))
        .timeout(Duration::from_secs(60))
}

async fn start(db: &TestDb) -> LambdaEnv {
    let env = LambdaEnv::start(cfg(db)).await.unwrap();
    env.core().wait_ready(true, Duration::from_secs(10)).await.unwrap();
    env
}

struct Reply {
    status: u16,
    body: Value,
}

/// `POST /sql` with the token, `headers` and a JSON body.
async fn sql(env: &LambdaEnv, headers: &[(&str, &str)], body: &Value) -> Reply {
    lambda_simulator::ensure_default_crypto_provider();
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://127.0.0.1:{}{}", env.core_port(), routes::SQL))
        .header(TOKEN, env.core_token())
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    Reply {
        status,
        body: serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")),
    }
}

const RAW: [(&str, &str); 2] = [(NEON_RAW_TEXT_OUTPUT, "true"), (NEON_ARRAY_MODE, "true")];

/// The first ```js block of README's section, which the Node test file must contain as written.
fn readme_setup() -> String {
    let readme = std::fs::read_to_string(bins::workspace_root().join("README.md")).unwrap();
    let start = readme
        .find(README_SECTION)
        .unwrap_or_else(|| panic!("README.md has no section {README_SECTION:?}"));
    let body = &readme[start..];
    let block = &body[body.find("```js\n").expect("a ```js block in the section") + 6..];
    block[..block.find("```").unwrap()].to_owned()
}

#[tokio::test]
async fn sql_route_serves_the_real_neon_driver_and_drizzle() {
    let dir = bins::workspace_root().join("tests/node");
    let modules: PathBuf = dir.join("node_modules/@neondatabase/serverless");
    assert!(
        modules.is_dir(),
        "{} is missing: run scripts/setup.sh (it runs `npm ci` in tests/node)",
        modules.display()
    );
    let test_file = dir.join("neon_driver.test.mjs");
    let source = std::fs::read_to_string(&test_file).unwrap();
    let setup = readme_setup();
    assert!(
        source.contains(&setup),
        "tests/node/neon_driver.test.mjs must contain README's setup block as written:\n{setup}"
    );
    let tests = source.matches("\ntest(").count();

    let db = TestDb::create().await.unwrap();
    let env = start(&db).await;
    let home = tempfile::tempdir().unwrap();
    let output = {
        let _thawed = env.thaw();
        let run = tokio::process::Command::new("node")
            .args(["--test", "--test-reporter=tap", "neon_driver.test.mjs"])
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
            .env("HOME", home.path())
            .env("TZ", "UTC")
            .env(
                "MAKENAIDE_SQL_URL",
                format!("http://127.0.0.1:{}{}", env.core_port(), routes::SQL),
            )
            .env(makenaide_contract::env::CORE_PORT, env.core_port().to_string())
            .env(makenaide_contract::env::CORE_TOKEN, env.core_token())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(NODE_TIMEOUT, run)
            .await
            .expect("the Node test did not finish")
            .expect("run node (Node 20 from the machine's packages)")
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "node --test exited {}\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.lines().any(|l| l == format!("# pass {tests}")) && stdout.lines().any(|l| l == "# fail 0"),
        "expected {tests} passing Node tests:\n{stdout}"
    );

    // What the driver wrote is in the database: drizzle's update and the batch inserts.
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client
        .query("select name, qty from items order by id", &[])
        .await
        .unwrap();
    let got: Vec<(String, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        [
            ("apple".into(), 3),
            ("pear".into(), 5),
            ("plum".into(), 7),
            ("kiwi".into(), 10)
        ]
    );
    env.shutdown(Duration::from_secs(2)).await.unwrap();
}

/// (type, SQL literals of that type): each value's rendering must equal PostgreSQL's output function's.
const TEXT_CASES: &[(&str, &[&str])] = &[
    ("bool", &["true", "false"]),
    ("int2", &["0", "-32768", "32767"]),
    ("int4", &["-2147483648", "42"]),
    ("int8", &["-9223372036854775808", "9007199254740993"]),
    ("oid", &["4294967295"]),
    (
        "float4",
        &[
            "0.1",
            "1e6",
            "123456",
            "1.5e-7",
            "'NaN'",
            "'-Infinity'",
            "'-0'",
            "3.4028235e38",
            "0.0001",
            "1e-5",
        ],
    ),
    (
        "float8",
        &[
            "0.1",
            "1e15",
            "1e14",
            "123456789012345.6",
            "1e-5",
            "0.0001",
            "5e-324",
            "1.7976931348623157e308",
            "'-0'",
            "'Infinity'",
            "2.5",
            "-1234.5678",
        ],
    ),
    (
        "numeric",
        &[
            "0",
            "-12.500",
            "1e-20",
            "'NaN'",
            "123456789012345678901234567890.000000001",
            "'-Infinity'",
            "10000",
        ],
    ),
    ("text", &["'héllo'", "''", "'a\"b'"]),
    ("varchar(5)", &["'abc'"]),
    ("char(3)", &["'ab'"]),
    ("name", &["'pg_class'"]),
    ("\"char\"", &["'a'"]),
    ("json", &["'{\"a\": [1, 2]}'", "'  [1,2]  '"]),
    ("jsonb", &["'{\"b\":1, \"a\": [1,2], \"c\": {\"d\": null}}'", "'\"s\"'"]),
    ("uuid", &["'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'"]),
    ("bytea", &["'\\x'", "'\\x00ff10'"]),
    (
        "date",
        &[
            "'2024-02-29'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 BC'",
            "'10000-01-01'",
        ],
    ),
    (
        "time",
        &["'09:30:00'", "'23:59:59.999999'", "'24:00:00'", "'00:00:00.5'"],
    ),
    (
        "timetz",
        &[
            "'09:30:00+05:30'",
            "'09:30:00-08'",
            "'00:00:00.25+00'",
            "'12:00:00+05:30:15'",
        ],
    ),
    (
        "timestamp",
        &[
            "'2024-01-31 09:00:00.123456'",
            "'2024-01-31 09:00:00'",
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00 BC'",
            "'1999-12-31 23:59:59.5'",
            "'1970-01-01 00:00:00.000001'",
            "'294276-12-31 23:59:59.999999'",
            "'4714-11-24 00:00:00 BC'",
        ],
    ),
    (
        "timestamptz",
        &[
            "'2024-01-31 09:00:00+09'",
            "'2000-01-01 00:00:00.1+00'",
            "'infinity'",
            "'0100-03-01 00:00:00+00 BC'",
            "'294276-12-31 23:59:59.999999+00'",
        ],
    ),
    (
        "interval",
        &[
            "'1 year 2 mons 3 days 04:05:06.5'",
            "'-1 days +02:00:00'",
            "'0'",
            "'-00:00:01'",
            "'1 mon -1 days'",
            "'-1 year -2 mons'",
            "'100 hours'",
            "'-1 days -02:00:00'",
            "'1 day'",
            "'13 mons'",
            "'00:00:00.000001'",
        ],
    ),
    ("int4[]", &["'{1,NULL,3}'", "'{}'", "'[0:1]={1,2}'", "'{{1,2},{3,4}}'"]),
    (
        "text[]",
        &[
            "'{\"a b\",\"x\\\"y\",\"NULL\",\"\",\"back\\\\slash\",\"{}\",plain,null}'",
            "'{\"a,b\",\"tab\there\"}'",
        ],
    ),
    ("bytea[]", &["array['\\x01'::bytea, null]"]),
    ("bool[]", &["'{t,f}'"]),
    ("float8[]", &["'{1.5,NaN,-Infinity,1e100}'"]),
    ("numeric[]", &["'{1.10,-2}'"]),
    ("date[]", &["'{2024-01-01,infinity}'"]),
    ("timestamptz[]", &["array['2024-01-01 00:00:00+00'::timestamptz]"]),
    ("uuid[]", &["'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'"]),
    ("jsonb[]", &["array['{\"k\": \"v w\"}'::jsonb, '1'::jsonb]"]),
    ("interval[]", &["array['1 day'::interval]"]),
    ("varchar[]", &["'{x,\"y z\"}'"]),
];

#[tokio::test]
async fn sql_route_renders_values_as_postgresql_text_output() {
    let db = TestDb::create().await.unwrap();
    let env = start(&db).await;
    let _thawed = env.thaw();
    // PostgreSQL's own output depends on these session settings; the extension renders as with them.
    let mut queries = vec![
        json!({"query": "set local timezone = 'UTC'"}),
        json!({"query": "set local datestyle = 'ISO, MDY'"}),
        json!({"query": "set local intervalstyle = 'postgres'"}),
        json!({"query": "set local extra_float_digits = 1"}),
        json!({"query": "set local bytea_output = 'hex'"}),
    ];
    for (ty, literals) in TEXT_CASES {
        let values: Vec<String> = literals.iter().map(|l| format!("(({l})::{ty})")).collect();
        queries.push(json!({"query": format!("select v, concat(v) from (values {}) t(v)", values.join(", "))}));
    }
    let r = sql(&env, &RAW, &json!({ "queries": queries })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    assert_eq!(results.len(), queries.len());
    let mut compared = 0;
    for ((ty, literals), result) in TEXT_CASES.iter().zip(&results[5..]) {
        let rows = result["rows"].as_array().unwrap();
        assert_eq!(rows.len(), literals.len(), "{ty}: {result}");
        for (literal, row) in literals.iter().zip(rows) {
            assert_eq!(row[0], row[1], "{ty} {literal}: extension vs PostgreSQL");
            assert!(row[0].is_string(), "{ty} {literal}: {row}");
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared}");
    assert_eq!(results[0]["command"], "SET");
    assert_eq!(results[0]["rowCount"], Value::Null);

    // NULL stays JSON null; a parameter sent by the driver as text is parsed by PostgreSQL for its type.
    let r = sql(
        &env,
        &RAW,
        &json!({"query": "select null::int4 n, $1::int8 + 1 l, $2::int4[] a, $3::jsonb j, $4::bool b, $5::text t",
                "params": ["9007199254740992", [1, null, 3], {"k": [1]}, true, null]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["rows"],
        json!([[null, "9007199254740993", "{1,NULL,3}", "{\"k\": [1]}", "t", null]])
    );
}

#[tokio::test]
async fn sql_route_typing_fields_and_refusals() {
    let db = TestDb::create().await.unwrap();
    let env = start(&db).await;
    let _thawed = env.thaw();

    // Without raw text output: Neon's proxy typing; without array mode: rows as objects.
    let r = sql(
        &env,
        &[],
        &json!({"query": "select true b, 1::int2 s, 7 i, 9007199254740993::int8 l, 1.5::float8 f, 'NaN'::float8 nan, \
                          '{\"a\":1}'::jsonb j, '{{1,2},{3,NULL}}'::int4[] m, 12.5::numeric n, '{t,f}'::bool[] ba"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["rowAsArray"], false);
    assert_eq!(
        r.body["rows"],
        json!([{"b": true, "s": 1, "i": 7, "l": "9007199254740993", "f": 1.5, "nan": "NaN", "j": {"a": 1},
                "m": [[1, 2], [3, null]], "n": "12.5", "ba": [true, false]}])
    );

    // Field metadata of a table column, checked against the catalog; a query's own arrayMode wins.
    let r = sql(
        &env,
        &RAW,
        &json!({"queries": [
            {"query": "create table tt (id int8, x varchar(10))"},
            {"query": "insert into tt values (1, 'a'), (2, 'b')"},
            {"query": "select x, id from tt order by id", "arrayMode": false},
            {"query": "select 'tt'::regclass::oid::int8 as oid"},
            {"query": "update tt set x = 'c' where id = 2"},
        ]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let res = &r.body["results"];
    assert_eq!(
        (res[0]["command"].clone(), res[0]["rowCount"].clone()),
        (json!("CREATE"), Value::Null)
    );
    assert_eq!(
        (res[1]["command"].clone(), res[1]["rowCount"].clone()),
        (json!("INSERT"), json!(2))
    );
    assert_eq!(res[2]["rows"], json!([{"x": "a", "id": "1"}, {"x": "b", "id": "2"}]));
    let oid: u64 = res[3]["rows"][0][0].as_str().unwrap().parse().unwrap();
    assert_eq!(
        res[2]["fields"],
        json!([
            {"name": "x", "dataTypeID": 1043, "tableID": oid, "columnID": 2, "dataTypeSize": -1,
             "dataTypeModifier": 14, "format": "text"},
            {"name": "id", "dataTypeID": 20, "tableID": oid, "columnID": 1, "dataTypeSize": 8,
             "dataTypeModifier": -1, "format": "text"},
        ])
    );
    assert_eq!(
        (res[4]["command"].clone(), res[4]["rowCount"].clone()),
        (json!("UPDATE"), json!(1))
    );

    // A batch's error rolls it back and answers Neon's body: 400, SQLSTATE as `code`, PostgreSQL's fields.
    let r = sql(
        &env,
        &RAW,
        &json!({"queries": [{"query": "delete from tt"}, {"query": "insert into tt values (1, 'this is too long')"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.body["code"], "22001");
    assert_eq!(r.body["severity"], "ERROR");
    assert!(
        r.body["message"].as_str().unwrap().contains("character varying(10)"),
        "{}",
        r.body
    );
    let r = sql(&env, &RAW, &json!({"query": "select count(*) from tt"})).await;
    assert_eq!(r.body["rows"], json!([["2"]]));

    // The connection string the drivers send is accepted and ignored; the token is what counts.
    let r = sql(
        &env,
        &[(
            NEON_CONNECTION_STRING,
            "postgresql://someone:secret@elsewhere.example/otherdb",
        )],
        &json!({"query": "select current_database() d"}),
    )
    .await;
    assert_eq!(r.body["rows"], json!([{"d": db.name()}]));

    // Refusals: the request's mistakes are 400 with Neon's body (what the driver parses).
    let bad = |headers: &'static [(&'static str, &'static str)], body: Value, code: ErrorCode, words: &'static str| {
        let env = &env;
        async move {
            let r = sql(env, headers, &body).await;
            assert_eq!(r.status, 400, "{body}: {}", r.body);
            assert_eq!(r.body["code"], code.as_str(), "{body}: {}", r.body);
            assert!(
                r.body["message"].as_str().unwrap().contains(words),
                "{body}: {}",
                r.body
            );
        }
    };
    bad(
        &[(NEON_BATCH_ISOLATION_LEVEL, "Snapshot")],
        json!({"queries": [{"query": "select 1"}]}),
        ErrorCode::InvalidRequest,
        "invalid isolation level",
    )
    .await;
    bad(
        &[],
        json!({"query": "begin"}),
        ErrorCode::InvalidRequest,
        "transaction control",
    )
    .await;
    bad(
        &[],
        json!({"sql": "select 1"}),
        ErrorCode::InvalidRequest,
        "query is required",
    )
    .await;
    bad(
        &[],
        json!({"query": "select 1", "params": {}}),
        ErrorCode::InvalidRequest,
        "params must be an array",
    )
    .await;
    bad(
        &[],
        json!({"queries": [{"query": 1}]}),
        ErrorCode::InvalidRequest,
        "queries[0].query",
    )
    .await;
    let r = sql(&env, &[], &json!({"query": "select $1::int4", "params": ["x"]})).await;
    assert_eq!((r.status, r.body["code"].clone()), (400, json!("22P02")), "{}", r.body);
    // Types without a text rendering ask for a cast; statements that refuse a transaction block fail (README).
    bad(
        &RAW,
        json!({"query": "select '127.0.0.1'::inet ip"}),
        ErrorCode::InvalidRequest,
        "ip::text",
    )
    .await;
    let r = sql(&env, &RAW, &json!({"query": "select '127.0.0.1'::inet::text ip"})).await;
    assert_eq!(r.body["rows"], json!([["127.0.0.1/32"]]));
    let r = sql(&env, &RAW, &json!({"query": "vacuum tt"})).await;
    assert_eq!((r.status, r.body["code"].clone()), (400, json!("25001")), "{}", r.body);

    // The token is required, as on every route; GET is not the method.
    lambda_simulator::ensure_default_crypto_provider();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = format!("http://127.0.0.1:{}{}", env.core_port(), routes::SQL);
    let r = http
        .post(&url)
        .json(&json!({"query": "select 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.get(&url).header(TOKEN, env.core_token()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
}
