//! makenaide-scanner: selects KRW markets (filters from the event), stores the scan, returns the selection.
//! Event `{"min_trade_value_24h", "exclude_warning", "exclude_caution", "limit"}` (all optional).

use makenaide_pipeline::{lambda_runtime, run_function, run_scanner, ScanEvent};

fn main() -> Result<(), lambda_runtime::Error> {
    run_function("makenaide-scanner", |client, event| async move {
        let event = ScanEvent::from_value(&event)?;
        run_scanner(&client, event).await
    })
}
