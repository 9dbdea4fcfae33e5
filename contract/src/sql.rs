//! Request and result types of `POST /db/query` and `POST /db/transaction` (docs/contracts.md).
//!
//! Requests borrow where they can (`Cow`), so a caller can send its statements without copying them. The
//! extension parses requests by hand (so each message names the field at fault) and renders results itself;
//! these types are the shape both sides agree on, and the extension's tests check its output against them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;

/// One SQL statement with its bound parameters (`$1..$n`, never interpolated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    /// SQL text with `$1..$n` placeholders.
    pub sql: String,
    /// Parameter values, in placeholder order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
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

/// Body of `POST /db/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRequest<'a> {
    /// SQL text.
    pub sql: Cow<'a, str>,
    /// Parameters.
    #[serde(default)]
    pub params: Cow<'a, [Value]>,
    /// Statement timeout for this request (default `MAKENAIDE_DB_STATEMENT_TIMEOUT_MS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Row cap for this request (default `MAKENAIDE_DB_MAX_ROWS`, at most 10,000,000): past it the request fails
    /// with `row_limit_exceeded` and nothing is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    /// Cap on the JSON bytes of this request's rows (default `MAKENAIDE_DB_MAX_RESPONSE_BYTES`, at most 256 MiB):
    /// past it the request fails with `response_too_large` and nothing is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
}

/// Body of `POST /db/transaction`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TransactionRequest<'a> {
    /// The statements, run in order in one transaction.
    pub statements: Cow<'a, [Statement]>,
    /// Statement timeout for this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Row cap for this request (default `MAKENAIDE_DB_MAX_ROWS`, at most 10,000,000): past it the request fails
    /// with `row_limit_exceeded` and nothing is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows: Option<u64>,
    /// Cap on the JSON bytes of this request's rows (default `MAKENAIDE_DB_MAX_RESPONSE_BYTES`, at most 256 MiB):
    /// past it the request fails with `response_too_large` and nothing is committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// `true`: a `READ ONLY` transaction. `false` is refused (`read_only`) when the extension runs with
    /// `MAKENAIDE_DB_READ_ONLY=true`. Absent: the extension's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Isolation level (absent: the database's default, normally read committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// `true`: `DEFERRABLE` (PostgreSQL honours it for serializable read-only transactions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferrable: Option<bool>,
}

/// JSON field names of [`TransactionRequest`]'s transaction settings, for code that reads the body by hand (the
/// extension) without spelling them again (`read_only` is also an error code's wire string).
pub mod fields {
    /// [`super::TransactionRequest::read_only`].
    pub const READ_ONLY: &str = "read_only";
    /// [`super::TransactionRequest::isolation`].
    pub const ISOLATION: &str = "isolation";
    /// [`super::TransactionRequest::deferrable`].
    pub const DEFERRABLE: &str = "deferrable";
}

/// `isolation` of [`TransactionRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// `READ COMMITTED`.
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`.
    Serializable,
}

impl Isolation {
    /// Every level, in order of strength.
    pub const ALL: [Isolation; 3] = [
        Isolation::ReadCommitted,
        Isolation::RepeatableRead,
        Isolation::Serializable,
    ];

    /// The wire string (`"repeatable_read"`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ReadCommitted => "read_committed",
            Self::RepeatableRead => "repeatable_read",
            Self::Serializable => "serializable",
        }
    }

    /// The SQL words after `ISOLATION LEVEL`.
    #[must_use]
    pub const fn sql(self) -> &'static str {
        match self {
            Self::ReadCommitted => "READ COMMITTED",
            Self::RepeatableRead => "REPEATABLE READ",
            Self::Serializable => "SERIALIZABLE",
        }
    }

    /// The level for a wire string.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// PostgreSQL type name (`text`, `int8`, `_text`, ...).
    #[serde(rename = "type", default)]
    pub type_name: String,
}

/// Result of one statement (the reply of `/db/query`, one element of `/db/transaction`'s `results`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
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
    #[must_use]
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The value in `row`, column `name`.
    #[must_use]
    pub fn get<'a>(&self, row: &'a [Value], name: &str) -> Option<&'a Value> {
        self.column(name).and_then(|i| row.get(i))
    }
}

/// Reply of `POST /db/transaction`: one result per statement, in order.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TransactionResult {
    /// The statements' results.
    pub results: Vec<QueryResult>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_match_the_documented_shape() {
        let params = [json!("KRW-BTC"), json!(5)];
        let q = QueryRequest {
            sql: "select 1".into(),
            params: Cow::Borrowed(&params),
            timeout_ms: None,
            max_rows: None,
            max_response_bytes: None,
        };
        assert_eq!(
            serde_json::to_value(&q).ok(),
            Some(json!({"sql": "select 1", "params": ["KRW-BTC", 5]}))
        );
        let st = [Statement::sql("select 1"), Statement::new("select $1", vec![json!(1)])];
        let t = TransactionRequest {
            statements: Cow::Borrowed(&st),
            timeout_ms: Some(5000),
            max_rows: Some(10),
            ..TransactionRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&t).ok(),
            Some(
                json!({"statements": [{"sql": "select 1"}, {"sql": "select $1", "params": [1]}], "timeout_ms": 5000, "max_rows": 10})
            )
        );
        let t = TransactionRequest {
            statements: Cow::Borrowed(&st[..1]),
            read_only: Some(true),
            isolation: Some(Isolation::Serializable),
            deferrable: Some(true),
            ..TransactionRequest::default()
        };
        assert_eq!(
            serde_json::to_value(&t).ok(),
            Some(
                json!({"statements": [{"sql": "select 1"}], "read_only": true, "isolation": "serializable", "deferrable": true})
            )
        );
        for l in Isolation::ALL {
            assert_eq!(serde_json::to_value(l).ok(), Some(json!(l.as_str())));
            assert_eq!(Isolation::parse(l.as_str()), Some(l));
        }
        let r: QueryResult = serde_json::from_value(json!({
            "columns":[{"name":"market","type":"text"},{"name":"n","type":"int8"}],
            "rows":[["KRW-BTC", 3]], "row_count": 1
        }))
        .unwrap_or_default();
        assert_eq!(r.get(&r.rows[0], "n"), Some(&json!(3)));
        assert_eq!(r.column("nope"), None);
    }
}
