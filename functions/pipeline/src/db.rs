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
use makenaide_contract::ErrorCode;
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
        max_rows: None,
        max_response_bytes: None,
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

/// The resend rule: a write may be sent again only after `db_outcome_unknown` (the connection failed after its
/// `COMMIT` was written; every other error means it was not applied, or says why it cannot be), and only when the
/// caller declared it idempotent ([`query_idempotent`], [`transaction_idempotent`]).
pub fn may_resend(err: &PipelineError) -> bool {
    match err {
        PipelineError::Core(e) => e.kind() == Some(ErrorCode::DbOutcomeUnknown),
        PipelineError::CoreOutcomeUnknown(_) => true,
        _ => false,
    }
}

/// Runs `send`, and once more when its outcome is unknown ([`may_resend`]).
async fn resending_once<T, F, Fut>(what: &str, send: F) -> Result<T, PipelineError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, PipelineError>>,
{
    match send().await {
        Err(e) if may_resend(&e) => {
            tracing::warn!(error = %e, "{what}: outcome unknown; resending the idempotent write once");
            send().await
        }
        other => other,
    }
}

/// [`query`] for an idempotent write (applying it twice changes nothing more than once: an upsert, an insert keyed
/// by an idempotency column): resent once when the extension answers `db_outcome_unknown`. Never use it for any
/// other write.
pub async fn query_idempotent(
    client: &CoreClient,
    sql: &str,
    params: &[Value],
    timeout_ms: Option<u64>,
) -> Result<QueryResult, PipelineError> {
    resending_once("/db/query", || query(client, sql, params, timeout_ms)).await
}

/// [`transaction`] whose statements are all idempotent writes (or reads): resent once on `db_outcome_unknown`.
pub async fn transaction_idempotent(
    client: &CoreClient,
    statements: &[Statement],
    timeout_ms: Option<u64>,
) -> Result<Vec<QueryResult>, PipelineError> {
    resending_once("/db/transaction", || transaction(client, statements, timeout_ms)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_an_unknown_outcome_may_be_resent() {
        let core = |code: ErrorCode| {
            PipelineError::Core(crate::error::CoreError {
                status: code.status(),
                code: code.as_str().into(),
                message: String::new(),
                sqlstate: None,
                statement_index: None,
            })
        };
        assert!(may_resend(&core(ErrorCode::DbOutcomeUnknown)));
        for code in ErrorCode::ALL.iter().filter(|c| **c != ErrorCode::DbOutcomeUnknown) {
            assert!(!may_resend(&core(*code)), "{code}");
        }
        assert!(!may_resend(&PipelineError::CoreUnavailable("no answer".into())));
        assert!(may_resend(&PipelineError::CoreOutcomeUnknown(
            "reset after the request was sent".into()
        )));
    }

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
