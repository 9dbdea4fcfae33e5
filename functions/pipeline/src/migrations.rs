//! Versioned, idempotent schema migrations (db-initializer). The schema is the one in docs/contracts.md.
//!
//! Each pending migration runs in one `/db/transaction` together with its `schema_migrations` insert, behind
//! a transaction-scoped advisory lock. Two initializers racing (two cold starts, or the orchestrator and the
//! initializer) therefore serialise: the second one waits, then finds its DDL already done (every statement is
//! `IF NOT EXISTS`, so re-running it is harmless) and its version insert does nothing (`ON CONFLICT DO
//! NOTHING RETURNING`), so it does not report the version as applied by itself.
//!
//! Rule for new migrations: append, never edit an applied one, and keep every statement idempotent.

use crate::client::CoreClient;
use crate::db::{self, Statement};
use crate::error::PipelineError;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// One schema version.
#[derive(Debug)]
pub struct Migration {
    /// Version number stored in `schema_migrations.version` (increasing).
    pub version: i64,
    /// Short name stored with it.
    pub name: &'static str,
    /// Idempotent statements.
    pub statements: &'static [&'static str],
}

/// Key of the advisory lock serialising migrations (ASCII "makenaid" as a big-endian i64).
pub const MIGRATION_LOCK_KEY: i64 = 0x6d61_6b65_6e61_6964;

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "ohlcv",
        statements: &[r#"CREATE TABLE IF NOT EXISTS ohlcv (
    market text NOT NULL,
    "interval" text NOT NULL,
    candle_date_time_utc timestamp NOT NULL,
    candle_date_time_kst timestamp NOT NULL,
    opening_price float8 NOT NULL,
    high_price float8 NOT NULL,
    low_price float8 NOT NULL,
    trade_price float8 NOT NULL,
    candle_acc_trade_volume float8 NOT NULL,
    candle_acc_trade_price float8 NOT NULL,
    "timestamp" bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (market, "interval", candle_date_time_utc)
)"#],
    },
    Migration {
        version: 2,
        name: "markets",
        statements: &[r#"CREATE TABLE IF NOT EXISTS markets (
    market text PRIMARY KEY,
    korean_name text NOT NULL DEFAULT '',
    english_name text NOT NULL DEFAULT '',
    warning boolean NOT NULL DEFAULT false,
    caution jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
)"#],
    },
    Migration {
        version: 3,
        name: "scan_results",
        statements: &[r#"CREATE TABLE IF NOT EXISTS scan_results (
    id bigserial PRIMARY KEY,
    scanned_at timestamptz NOT NULL DEFAULT now(),
    params jsonb NOT NULL DEFAULT '{}'::jsonb,
    selected text[] NOT NULL DEFAULT '{}',
    candidates integer NOT NULL DEFAULT 0
)"#],
    },
    Migration {
        version: 4,
        name: "scan_results_idempotency",
        // A key per scan (the scanner's idempotency key): the same scan sent twice (a resend after
        // `db_outcome_unknown`) stores one row. Rows from before this version keep NULL, which the unique index
        // allows any number of times.
        statements: &[
            "ALTER TABLE scan_results ADD COLUMN IF NOT EXISTS idempotency_key text",
            "CREATE UNIQUE INDEX IF NOT EXISTS scan_results_idempotency_key ON scan_results (idempotency_key)",
        ],
    },
];

/// Result of the db-initializer: `{"applied": [versions], "current_version": n}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResult {
    /// Versions this call applied (empty when the schema was already current).
    pub applied: Vec<i64>,
    /// Highest version now recorded in `schema_migrations`.
    pub current_version: i64,
}

fn lock_statement() -> Statement {
    // `SELECT 1 FROM f()` rather than `SELECT f()`: the function returns `void`, a type not worth making every
    // JSON encoder understand.
    Statement::sql(format!(
        "SELECT 1 AS locked FROM pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
    ))
}

/// The statements of one migration's transaction: lock, DDL, version insert (last).
pub fn migration_transaction(m: &Migration) -> Vec<Statement> {
    let mut st = vec![lock_statement()];
    st.extend(m.statements.iter().map(|s| Statement::sql(*s)));
    st.push(Statement::new(
        "INSERT INTO schema_migrations (version, name) VALUES ($1::int8, $2::text) \
         ON CONFLICT (version) DO NOTHING RETURNING version",
        vec![json!(m.version), json!(m.name)],
    ));
    st
}

/// Apply every pending migration. Safe to call on every cold start and concurrently.
pub async fn run_migrations(client: &CoreClient) -> Result<InitResult, PipelineError> {
    let bootstrap = [
        lock_statement(),
        Statement::sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        ),
        Statement::sql("SELECT version FROM schema_migrations ORDER BY version"),
    ];
    let results = db::transaction(client, &bootstrap, None).await?;
    let mut present: Vec<i64> = results[2]
        .rows
        .iter()
        .filter_map(|r| r.first().and_then(|v| v.as_i64()))
        .collect();

    let mut applied = Vec::new();
    let pending: Vec<&Migration> = MIGRATIONS.iter().filter(|m| !present.contains(&m.version)).collect();
    for m in pending {
        let statements = migration_transaction(m);
        let results = db::transaction(client, &statements, None).await?;
        let inserted = results.last().map(|r| !r.rows.is_empty()).unwrap_or(false);
        if inserted {
            tracing::info!(version = m.version, name = m.name, "migration applied");
            applied.push(m.version);
        }
        present.push(m.version);
    }
    Ok(InitResult {
        applied,
        current_version: present.iter().copied().max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_idempotent() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        for m in MIGRATIONS {
            for s in m.statements {
                assert!(
                    s.contains("IF NOT EXISTS"),
                    "migration {} is not idempotent: {s}",
                    m.version
                );
            }
        }
    }

    #[test]
    fn transaction_locks_first_and_records_version_last() {
        let st = migration_transaction(&MIGRATIONS[0]);
        assert!(st[0].sql.contains("pg_advisory_xact_lock"));
        assert!(st
            .last()
            .expect("insert")
            .sql
            .contains("ON CONFLICT (version) DO NOTHING RETURNING"));
        assert_eq!(st.last().expect("insert").params, vec![json!(1), json!("ohlcv")]);
        assert_eq!(st.len(), MIGRATIONS[0].statements.len() + 2);
    }
}
