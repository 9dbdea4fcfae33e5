//! makenaide-db-initializer: applies the versioned schema migrations through the makenaide-core extension.
//! Event ignored; result `{"applied": [versions], "current_version": n}` in the standard envelope.

use makenaide_pipeline::{lambda_runtime, run_function, run_migrations};

fn main() -> Result<(), lambda_runtime::Error> {
    run_function("makenaide-db-initializer", |client, _event| async move {
        run_migrations(&client).await
    })
}
