//! makenaide-integrated-orchestrator: init → scan → collect in one invocation, each step timed.
//! Event `{}` or `{"scan": {...}, "collect": {...}}`.

use makenaide_pipeline::{lambda_runtime, run_function, run_orchestrator, OrchestrateEvent};

fn main() -> Result<(), lambda_runtime::Error> {
    run_function("makenaide-integrated-orchestrator", |client, event| async move {
        let event = OrchestrateEvent::from_value(&event)?;
        run_orchestrator(&client, event).await
    })
}
