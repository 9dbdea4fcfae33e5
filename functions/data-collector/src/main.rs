//! makenaide-data-collector: stores recent candles of markets in `ohlcv`.
//! Event `{"markets": [...], "interval": "days", "count": 3}` (all optional; markets default to the latest scan).

use makenaide_pipeline::{lambda_runtime, run_collector, run_function, CollectEvent};

fn main() -> Result<(), lambda_runtime::Error> {
    run_function("makenaide-data-collector", |client, event| async move {
        let event = CollectEvent::from_value(&event)?;
        run_collector(&client, event).await
    })
}
