//! Thin helpers over the extension's `POST /db/query` and `POST /db/transaction`, with the contract's request and
//! result types ([`makenaide_contract::sql`]).
//!
//! Parameters are JSON values bound by the extension (never interpolated into SQL). Where PostgreSQL could
//! infer an unexpected type, the SQL in this crate casts explicitly (`$1::text[]`), which keeps the extension's
//! JSON → PostgreSQL conversion on its simplest paths.

use crate::client::CoreClient;
use crate::error::PipelineError;
use makenaide_contract::routes;
pub use makenaide_contract::sql::{
    Column, QueryRequest, QueryResult, Statement, TransactionRequest, TransactionResult,
};
use serde_json::Value;
use std::borrow::Cow;

/// The value in `row`, column `name` of `result`, or a [`PipelineError::BadReply`] naming the column.
pub fn get<'a>(result: &QueryResult, row: &'a [Value], name: &str) -> Result<&'a Value, PipelineError> {
    result.get(row, name).ok_or_else(|| PipelineError::BadReply {
        source_name: "core",
        message: format!("result has no column {name:?} (or the row is too short)"),
    })
}

/// `POST /db/query`: one statement in its own transaction.
pub async fn query(
    client: &CoreClient,
    sql: &str,
    params: &[Value],
    timeout_ms: Option<u64>,
) -> Result<QueryResult, PipelineError> {
    let body = QueryRequest {
        sql: Cow::Borrowed(sql),
        params: Cow::Borrowed(params),
        timeout_ms,
    };
    client.post_json(routes::DB_QUERY, &body).await
}

/// `POST /db/transaction`: all statements in one transaction; the first failure rolls everything back.
pub async fn transaction(
    client: &CoreClient,
    statements: &[Statement],
    timeout_ms: Option<u64>,
) -> Result<Vec<QueryResult>, PipelineError> {
    let body = TransactionRequest {
        statements: Cow::Borrowed(statements),
        timeout_ms,
        ..TransactionRequest::default()
    };
    let reply: TransactionResult = client.post_json(routes::DB_TRANSACTION, &body).await?;
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
    fn a_missing_column_is_a_bad_reply() {
        let r: QueryResult = serde_json::from_value(json!({
            "columns":[{"name":"n","type":"int8"}], "rows":[[3]], "row_count": 1
        }))
        .expect("result");
        assert_eq!(get(&r, &r.rows[0], "n").expect("n"), &json!(3));
        assert!(matches!(
            get(&r, &r.rows[0], "nope"),
            Err(PipelineError::BadReply { .. })
        ));
    }
}
