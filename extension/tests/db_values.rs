//! Values through the extension's HTTP API (`serve()` on a port-0 listener) into a real PostgreSQL and back:
//! every value either stored exactly as PostgreSQL itself reads it (checked with PostgreSQL's own text output,
//! `col::text` over a separate connection) or refused with 400 `invalid_param` naming `$n` and the type; every
//! result read back through the extension round-trips to the same value; the row and response-size caps answer
//! their codes, commit nothing, and leave the environment serving the next request with no backend left in a
//! transaction. Request bodies are written as JSON text, never through `serde_json::Value` (which would drop the
//! digits under test).

#![allow(clippy::unwrap_used)]

mod common;

use common::{config, FakeUpbit, Running, TestDb, TOKEN};
use makenaide_contract::ErrorCode;
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::Duration;

/// The reliability report's section these figures belong to (`scripts/reliability-report.sh`).
const REPORT_SECTION: &str = "reliability_hostile_sql";

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
    /// The first row's cells as the raw JSON text the extension wrote.
    fn first_row_raw(&self) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Rows<'a> {
            #[serde(borrow)]
            rows: Vec<Vec<&'a RawValue>>,
        }
        let r: Rows = serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body));
        r.rows[0].iter().map(|c| c.get().to_owned()).collect()
    }
    fn assert_error(&self, code: ErrorCode, needles: &[&str]) -> Value {
        assert_eq!(self.status, code.status(), "{}", self.body);
        let e = self.json()["error"].clone();
        assert_eq!(e["code"], code.as_str(), "{}", self.body);
        let msg = e["message"].as_str().unwrap_or_default();
        for n in needles {
            assert!(msg.contains(n), "{n:?} not in {msg:?}");
        }
        e
    }
}

struct Env {
    _upbit: FakeUpbit,
    db: TestDb,
    ext: Running,
    http: reqwest::Client,
    oracle: tokio_postgres::Client,
}

impl Env {
    async fn start(tune: impl FnOnce(&mut makenaide_core::config::Config)) -> Self {
        let upbit = FakeUpbit::start().await;
        let db = TestDb::create().await.unwrap();
        let mut cfg = config(&upbit, Some(&db));
        tune(&mut cfg);
        let ext = Running::start(cfg).await;
        let oracle = db.connect().await.unwrap();
        Self {
            _upbit: upbit,
            db,
            ext,
            http: reqwest::Client::new(),
            oracle,
        }
    }

    async fn post(&self, route: &str, body: String) -> Reply {
        let r = self
            .http
            .post(self.ext.url(route))
            .header(makenaide_contract::headers::TOKEN, TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        Reply {
            status: r.status().as_u16(),
            body: r.text().await.unwrap(),
        }
    }

    /// `/db/query` with `params` given as JSON text.
    async fn query(&self, sql: &str, params: &str) -> Reply {
        self.post(
            "/db/query",
            format!(r#"{{"sql": {}, "params": {params}}}"#, Value::from(sql)),
        )
        .await
    }

    /// PostgreSQL's own text of the first column of the first row (simple protocol: text, server-side output).
    async fn pg_text(&self, sql: &str) -> Option<String> {
        let msgs = self.oracle.simple_query(sql).await.unwrap();
        msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })?
    }

    /// Waits (bounded) until every extension session of the database is idle (a retired one may take a moment
    /// to go), and returns the states left.
    async fn sessions_settle(&self) -> Vec<String> {
        let mut backoff = Duration::from_millis(5);
        for _ in 0..40 {
            let s = self.db.sessions(Some("makenaide-core")).await.unwrap();
            let states: Vec<String> = s.iter().map(|s| s.state.clone().unwrap_or_default()).collect();
            if states.iter().all(|s| s == "idle") {
                return states;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
        self.db
            .sessions(Some("makenaide-core"))
            .await
            .unwrap()
            .iter()
            .map(|s| s.state.clone().unwrap_or_default())
            .collect()
    }
}

#[tokio::test]
async fn issue_examples_are_stored_as_postgresql_reads_them_or_refused() {
    let env = Env::start(|_| {}).await;
    let r = env
        .query(
            "create table v (id int primary key, d date, t time, ts timestamp, n numeric, j jsonb, f4 float4, i8 int8)",
            "[]",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Each: (column, JSON parameter, PostgreSQL's text of what must be stored, the extension's JSON of it).
    let cases: &[(&str, &str, &str, &str)] = &[
        ("d", r#""infinity""#, "infinity", r#""infinity""#),
        ("d", r#""-infinity""#, "-infinity", r#""-infinity""#),
        ("d", r#""2024-03-01T01:00:00+09:00""#, "2024-03-01", r#""2024-03-01""#),
        ("t", r#""24:00:00""#, "24:00:00", r#""24:00:00""#),
        (
            "ts",
            r#""294276-12-31T23:59:59.999999""#,
            "294276-12-31 23:59:59.999999",
            r#""294276-12-31T23:59:59.999999""#,
        ),
        (
            "ts",
            r#""275760-09-13 00:00:00""#,
            "275760-09-13 00:00:00",
            r#""275760-09-13T00:00:00""#,
        ),
        (
            "ts",
            r#""4714-11-24 00:00:00 BC""#,
            "4714-11-24 00:00:00 BC",
            r#""4714-11-24T00:00:00 BC""#,
        ),
        (
            "n",
            "12345678901234567890.123456789",
            "12345678901234567890.123456789",
            r#""12345678901234567890.123456789""#,
        ),
        (
            "j",
            r#"{"n": 12345678901234567890.123456789, "m": [-0.000000000000000000001]}"#,
            r#"{"m": [-0.000000000000000000001], "n": 12345678901234567890.123456789}"#,
            r#"{"m": [-0.000000000000000000001], "n": 12345678901234567890.123456789}"#,
        ),
        // The nearest float4, exactly as float4in picks it (binary from the same correctly rounded parse).
        ("f4", "3.4028234e38", "3.4028235e+38", "3.4028235e38"),
        ("f4", "0.1", "0.1", "0.1"),
        (
            "i8",
            "-9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775808",
        ),
    ];
    for (id, (col, param, pg, out)) in cases.iter().enumerate() {
        let r = env
            .query(
                &format!("insert into v (id, {col}) values ({id}, $1)"),
                &format!("[{param}]"),
            )
            .await;
        assert_eq!(r.status, 200, "{col} {param}: {}", r.body);
        assert_eq!(
            env.pg_text(&format!("select {col}::text from v where id = {id}"))
                .await
                .as_deref(),
            Some(*pg),
            "{col} {param} as PostgreSQL prints it"
        );
        let r = env
            .query(&format!("select {col} from v where id = $1"), &format!("[{id}]"))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.first_row_raw(), [*out], "{col} {param} through the extension");
    }

    // Refused, naming the parameter and the type, and nothing stored.
    let mut refused = 0;
    for (col, param, needles) in [
        ("i8", "-9223372036854775809", &["$1", "int8", "out of range"][..]),
        ("i8", "9223372036854775808", &["$1", "int8", "out of range"]),
        ("i8", "1.5", &["$1", "int8", "not an integer"]),
        ("f4", "3.5e38", &["$1", "float4", "out of range"]),
        ("f4", "1e-50", &["$1", "float4", "out of range"]),
    ] {
        let r = env
            .query(
                &format!("insert into v (id, {col}) values (1000, $1)"),
                &format!("[{param}]"),
            )
            .await;
        r.assert_error(ErrorCode::InvalidParam, needles);
        refused += 1;
    }
    makenaide_tests::report::record(
        REPORT_SECTION,
        &format!(
            "- the issue's value examples: {} stored exactly as PostgreSQL reads them (checked with `::text` on a \
             separate connection) and returned as PostgreSQL prints them; {refused} refused with 400 \
             `invalid_param` naming `$1` and the type, nothing stored",
            cases.len()
        ),
    );
    assert_eq!(
        env.pg_text("select count(*)::text from v where id = 1000")
            .await
            .as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn postgresql_input_errors_come_back_naming_the_parameter() {
    let env = Env::start(|_| {}).await;
    for (sql, params, needles) in [
        ("select $1::int4, $2::int4", r#"[1, "x"]"#, &["$2", "int4", "22P02"][..]),
        ("select $1::date", r#"["2024-02-30"]"#, &["$1", "date", "22008"]),
        (
            "select $1::int8",
            r#"["99999999999999999999"]"#,
            &["$1", "int8", "22003"],
        ),
        ("select $1::float4", r#"["3.5e38"]"#, &["$1", "float4", "22003"]),
        (
            "select $1::timestamptz",
            r#"["yesterday noon"]"#,
            &["$1", "timestamptz", "22007"],
        ),
        (
            "select $1::int8[]",
            "[[1, -9223372036854775809]]",
            &["$1", "int8[]", "element [1]"],
        ),
        ("select $1::numeric[]", r#"[["1", "x"]]"#, &["$1", "numeric[]", "22P02"]),
        ("select $1::uuid", r#"["not-a-uuid"]"#, &["$1", "uuid", "22P02"]),
    ] {
        let r = env.query(sql, params).await;
        r.assert_error(ErrorCode::InvalidParam, needles);
    }
    // Domains: PostgreSQL checks them on Bind, for binary parameters too.
    env.query("create domain positive as int4 check (value > 0)", "[]")
        .await;
    let r = env.query("select $1::positive", "[-1]").await;
    r.assert_error(ErrorCode::InvalidParam, &["$1", "positive", "23514"]);
    // In a transaction the failing statement is named too.
    let r = env
        .post(
            "/db/transaction",
            r#"{"statements": [{"sql": "select 1"}, {"sql": "select $1::date", "params": ["2024-13-01"]}]}"#.into(),
        )
        .await;
    let e = r.assert_error(ErrorCode::InvalidParam, &["$1", "date"]);
    assert_eq!(e["statement_index"], 1);
    // And the environment serves the next request.
    let r = env.query("select $1::int4 + 1 as x", "[41]").await;
    assert_eq!(r.first_row_raw(), ["42"]);
}

#[tokio::test]
async fn json_output_round_trips_to_the_same_value() {
    let env = Env::start(|_| {}).await;
    let cases: &[(&str, &[&str])] = &[
        (
            "date",
            &[
                "infinity",
                "-infinity",
                "4714-11-24 BC",
                "5874897-12-31",
                "2024-02-29",
                "0001-01-01",
                "0001-12-31 BC",
            ],
        ),
        (
            "timestamp",
            &[
                "infinity",
                "294276-12-31 23:59:59.999999",
                "4714-11-24 00:00:00 BC",
                "2024-01-31 09:00:00.5",
                "1999-12-31 23:59:59.000001",
            ],
        ),
        (
            "timestamptz",
            &[
                "-infinity",
                "0044-03-15 10:00:00+00 BC",
                "2024-01-31 09:00:00+09",
                "294276-12-31 23:59:59.999999+00",
            ],
        ),
        ("time", &["24:00:00", "00:00:00.000001", "13:14:15.5"]),
        ("timetz", &["12:00:00+05:30:15", "24:00:00-15:59", "00:00:00+00"]),
        (
            "interval",
            &[
                "1 year 2 mons -3 days 04:05:06.5",
                "-0.5 seconds",
                "0",
                "-178000000 years",
                "1 day -00:00:00.000001",
            ],
        ),
        (
            "numeric",
            &[
                "NaN",
                "Infinity",
                "-Infinity",
                "-0.000100",
                "12345678901234567890.123456789",
                "1e-300",
            ],
        ),
        (
            "float8",
            &[
                "NaN",
                "-Infinity",
                "1e308",
                "5e-324",
                "0.1",
                "-0",
                "123456789012345680000",
            ],
        ),
        ("float4", &["3.4028235e38", "1e-45", "0.1", "Infinity", "16777217"]),
        ("int8", &["-9223372036854775808", "9223372036854775807"]),
        ("int2", &["-32768"]),
        ("bool", &["t", "f"]),
        ("text", &["héllo \"quoted\" \\ back\nline", ""]),
        ("bytea", &["\\x00ff10"]),
        ("uuid", &["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]),
        (
            "jsonb",
            &[
                r#"{"n": 12345678901234567890.123456789, "a": [1e400, -0.0, "s"], "o": {}}"#,
                "\"x\"",
                "1.50",
            ],
        ),
        ("json", &[r#"{"n":  12345678901234567890.123456789, "n": 2}"#]),
        ("date[]", &["{infinity,2024-01-01,NULL}"]),
        ("int8[]", &["{{1,2},{3,4}}", "{}"]),
        ("text[]", &[r#"{"a\"b",NULL,"{x,y}","NULL"}"#]),
        ("numeric[]", &["{NaN,1.50,-12345678901234567890.123456789}"]),
        ("jsonb[]", &[r#"{"{\"n\": 1.0000000000000000000001}","[1, 2]",NULL}"#]),
        ("interval[]", &["{\"1 mon\",\"-1 day\"}"]),
    ];
    let mut tried = 0;
    for (ty, literals) in cases {
        for lit in *literals {
            let lit_json = Value::from(*lit).to_string();
            // A json/jsonb parameter is the JSON value itself; every other type takes the literal as a string.
            let param = if ty.starts_with("json") && !ty.ends_with("[]") {
                (*lit).to_owned()
            } else {
                lit_json.clone()
            };
            let r = env.query(&format!("select $1::{ty} as v"), &format!("[{param}]")).await;
            assert_eq!(r.status, 200, "{ty} {lit}: {}", r.body);
            let out = r.first_row_raw().remove(0);
            // The output, sent back as a parameter of the same type, is the same value in PostgreSQL's eyes.
            let r = env
                .query(
                    &format!("select ($1::{ty})::text as back, ($2::text::{ty})::text as orig"),
                    &format!("[{out}, {lit_json}]"),
                )
                .await;
            assert_eq!(r.status, 200, "{ty} {lit} -> {out}: {}", r.body);
            let row = r.json()["rows"][0].clone();
            assert_eq!(row[0], row[1], "{ty} {lit} came out as {out}");
            tried += 1;
        }
    }
    assert!(tried > 60, "{tried}");
    makenaide_tests::report::record(
        REPORT_SECTION,
        &format!(
            "- round trips: {tried} values of {} types (arrays included) out of the extension and back in as \
             parameters: every one equal to the original in PostgreSQL's own text",
            cases.len()
        ),
    );
}

#[tokio::test]
async fn row_and_size_caps_answer_their_codes_and_leave_the_environment_clean() {
    let env = Env::start(|c| c.db_max_rows = 1000).await;
    env.query("create table t (i int)", "[]").await;

    // The configured default (MAKENAIDE_DB_MAX_ROWS): a 200,000-row result is refused while being read.
    let r = env.query("select generate_series(1, 200000) as i", "[]").await;
    r.assert_error(ErrorCode::RowLimitExceeded, &["1000 rows", "max_rows"]);
    let r = env.query("select 1 as one", "[]").await;
    assert_eq!(r.first_row_raw(), ["1"], "the next request works");

    // A request may raise its own cap (up to the hard limit) or lower it.
    let r = env
        .post(
            "/db/query",
            r#"{"sql": "select generate_series(1, 1500) as i", "max_rows": 1500}"#.into(),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["row_count"].clone()),
        (200, Value::from(1500)),
        "{}",
        r.body
    );
    let r = env
        .post("/db/query", r#"{"sql": "select 1", "max_rows": 10000001}"#.into())
        .await;
    r.assert_error(ErrorCode::InvalidRequest, &["max_rows"]);
    let r = env
        .post(
            "/db/query",
            r#"{"sql": "select repeat('x', 1000) from generate_series(1, 100)", "max_response_bytes": 10000}"#.into(),
        )
        .await;
    r.assert_error(ErrorCode::ResponseTooLarge, &["10000 bytes", "max_response_bytes"]);

    // Over a cap in a write with RETURNING: COMMIT travels with the statements (one round trip), so the extension
    // cancels the statement; if it had already finished, the transaction commits and the answer says so. Either
    // way the answer matches the table, and the failing statement is named.
    let r = env
        .post(
            "/db/transaction",
            r#"{"statements": [{"sql": "insert into t values (0)"},
                {"sql": "insert into t select generate_series(1, 5000) returning i"}], "max_rows": 100}"#
                .into(),
        )
        .await;
    let e = r.assert_error(ErrorCode::RowLimitExceeded, &["100 rows"]);
    assert_eq!(e["statement_index"], 1);
    let message = e["message"].as_str().unwrap_or_default().to_owned();
    let stored = env.pg_text("select count(*)::text from t").await;
    if message.contains("WERE applied") {
        assert_eq!(stored.as_deref(), Some("5001"), "{message}");
        env.pg_text("delete from t returning 1").await;
    } else {
        assert!(message.contains("nothing was committed"), "{message}");
        assert_eq!(stored.as_deref(), Some("0"), "{message}");
    }
    // A read over a cap: READ ONLY, nothing to commit.
    let r = env
        .post(
            "/db/query",
            r#"{"sql": "select generate_series(1, 5000)", "max_rows": 100}"#.into(),
        )
        .await;
    let e = r.assert_error(ErrorCode::RowLimitExceeded, &["100 rows", "nothing was committed"]);
    assert!(e["statement_index"].is_null() || e["statement_index"] == 0, "{e}");
    // The caps count all statements of a request together.
    let r = env
        .post(
            "/db/transaction",
            r#"{"statements": [{"sql": "select generate_series(1, 60)"}, {"sql": "select generate_series(1, 60)"}],
                "max_rows": 100}"#
                .into(),
        )
        .await;
    assert_eq!(r.assert_error(ErrorCode::RowLimitExceeded, &[])["statement_index"], 1);

    let states = env.sessions_settle().await;
    assert!(
        states.iter().all(|s| s == "idle"),
        "no backend left in a transaction: {states:?}"
    );
    assert_eq!(env.pg_text("select count(*)::text from t").await.as_deref(), Some("0"));
    let r = env.query("insert into t values ($1) returning i", "[7]").await;
    assert_eq!(r.first_row_raw(), ["7"], "the environment still serves writes");
}

#[tokio::test]
async fn flat_arrays_sent_binary_are_stored_as_postgresql_reads_them() {
    let env = Env::start(|_| {}).await;
    let r = env
        .query(
            "select $1::int8[]::text, $2::text[]::text, $3::float8[]::text, $4::bool[]::text, $5::int4[]::text",
            r#"[[1, null, -3], ["a", "c\"\\{x,y}", null], [], [true, null, false], [2147483647]]"#,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["rows"][0],
        serde_json::json!([
            "{1,NULL,-3}",
            r#"{a,"c\"\\{x,y}",NULL}"#,
            "{}",
            "{t,NULL,f}",
            "{2147483647}"
        ])
    );
    let r = env.query("select $1::int4[]", "[[2147483648]]").await;
    r.assert_error(ErrorCode::InvalidParam, &["$1", "element [0]", "int4"]);
}
