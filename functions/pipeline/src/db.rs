//! Thin helpers over the extension's `POST /db/query` and `POST /db/transaction` (docs/contracts.md).
//!
//! Parameters are JSON values bound by the extension (never interpolated into SQL). Where PostgreSQL could
//! infer an unexpected type, the SQL in this crate casts explicitly (`$1::text[]`), which keeps the extension's
//! JSON → PostgreSQL conversion on its simplest paths.

use crate::client::CoreClient;
use crate::error::PipelineError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One SQL statement with its bound parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Statement {
    /// SQL text with `$1..$n` placeholders.
    pub sql: String,
    /// Parameter values, in placeholder order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Value>,
}

impl Statement {
    /// A statement with parameters.
    pub fn new(sql: impl Into<String>, params: Vec<Value>) -> Self {
        Self {
            sql: sql.into(),
            params,
        }
    }

    /// A statement without parameters.
    pub fn sql(sql: impl Into<String>) -> Self {
        Self::new(sql, Vec::new())
    }
}

/// A column of a result.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// PostgreSQL type name (`text`, `int8`, ...).
    #[serde(rename = "type", default)]
    pub type_name: String,
}

/// Result of one statement.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct QueryResult {
    /// Result columns (empty for statements returning no rows).
    #[serde(default)]
    pub columns: Vec<Column>,
    /// Rows, each in column order.
    #[serde(default)]
    pub rows: Vec<Vec<Value>>,
    /// Rows returned, or rows affected when the statement returns none.
    #[serde(default)]
    pub row_count: u64,
}

impl QueryResult {
    /// Index of the named column.
    pub fn column(&self, name: &str) -> Result<usize, PipelineError> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| PipelineError::BadReply {
                source_name: "core",
                message: format!("result has no column {name:?}"),
            })
    }

    /// The value in `row`, column `name`.
    pub fn get<'a>(&'a self, row: &'a [Value], name: &str) -> Result<&'a Value, PipelineError> {
        let i = self.column(name)?;
        row.get(i).ok_or_else(|| PipelineError::BadReply {
            source_name: "core",
            message: format!("row too short for column {name:?}"),
        })
    }
}

#[derive(Serialize)]
struct QueryBody<'a> {
    sql: &'a str,
    params: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct TransactionBody<'a> {
    statements: &'a [Statement],
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
struct TransactionReply {
    results: Vec<QueryResult>,
}

/// `POST /db/query`: one statement in its own transaction.
pub async fn query(
    client: &CoreClient,
    sql: &str,
    params: &[Value],
    timeout_ms: Option<u64>,
) -> Result<QueryResult, PipelineError> {
    client
        .post_json(
            "/db/query",
            &QueryBody {
                sql,
                params,
                timeout_ms,
            },
        )
        .await
}

/// `POST /db/transaction`: all statements in one transaction; the first failure rolls everything back.
pub async fn transaction(
    client: &CoreClient,
    statements: &[Statement],
    timeout_ms: Option<u64>,
) -> Result<Vec<QueryResult>, PipelineError> {
    let reply: TransactionReply = client
        .post_json("/db/transaction", &TransactionBody { statements, timeout_ms })
        .await?;
    if reply.results.len() != statements.len() {
        return Err(PipelineError::BadReply {
            source_name: "core",
            message: format!("{} results for {} statements", reply.results.len(), statements.len()),
        });
    }
    Ok(reply.results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_match_the_contract() {
        let params = [json!("KRW-BTC"), json!(5)];
        let q = serde_json::to_value(QueryBody {
            sql: "select 1",
            params: &params,
            timeout_ms: None,
        })
        .expect("json");
        assert_eq!(q, json!({"sql": "select 1", "params": ["KRW-BTC", 5]}));
        let st = [Statement::sql("select 1"), Statement::new("select $1", vec![json!(1)])];
        let t = serde_json::to_value(TransactionBody {
            statements: &st,
            timeout_ms: Some(5000),
        })
        .expect("json");
        assert_eq!(
            t,
            json!({"statements": [{"sql": "select 1"}, {"sql": "select $1", "params": [1]}], "timeout_ms": 5000})
        );
        let r: QueryResult = serde_json::from_value(json!({
            "columns":[{"name":"market","type":"text"},{"name":"n","type":"int8"}],
            "rows":[["KRW-BTC", 3]], "row_count": 1
        }))
        .expect("result");
        assert_eq!(r.get(&r.rows[0], "n").expect("n"), &json!(3));
        assert!(r.column("nope").is_err());
    }
}
