//! The integrated orchestrator: init → scan → collect in one invocation, timing each step.
//!
//! The collect step uses the scan's selection unless the event's `collect.markets` names markets.

use crate::client::CoreClient;
use crate::collector::{run_collector, CollectEvent, FailedMarket};
use crate::error::PipelineError;
use crate::event::Fields;
use crate::migrations::run_migrations;
use crate::scanner::{run_scanner, ScanEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Instant;

/// Orchestrator event: `{}` or `{"scan": {...scanner event}, "collect": {...collector event}}`. Other keys
/// (e.g. an EventBridge envelope) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OrchestrateEvent {
    /// Scanner parameters.
    pub scan: ScanEvent,
    /// Collector parameters; `markets: None` means the scan's selection.
    pub collect: CollectEvent,
}

impl OrchestrateEvent {
    /// Parse and validate an event.
    pub fn from_value(v: &Value) -> Result<Self, PipelineError> {
        let f = Fields::new(v, "event")?;
        Ok(Self {
            scan: f
                .get("scan")
                .map(|s| ScanEvent::parse(s, "event.scan"))
                .transpose()?
                .unwrap_or_default(),
            collect: f
                .get("collect")
                .map(|c| CollectEvent::parse(c, "event.collect"))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// One step of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// `init`, `scan` or `collect`.
    pub name: String,
    /// Wall time of the step.
    pub duration_ms: u64,
    /// The step's own result (same shape as the corresponding function's `result`).
    pub result: Value,
}

/// Orchestrator result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrchestrateResult {
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Markets selected by the scan.
    pub selected: Vec<String>,
    /// Candle rows stored by the collect step.
    pub rows_stored: u64,
    /// Markets the collect step could not collect.
    pub failed: BTreeMap<String, FailedMarket>,
}

async fn timed<T: Serialize, F: std::future::Future<Output = Result<T, PipelineError>>>(
    name: &str,
    steps: &mut Vec<Step>,
    fut: F,
) -> Result<T, PipelineError> {
    let started = Instant::now();
    let out = fut.await;
    let duration_ms = started.elapsed().as_millis() as u64;
    match out {
        Ok(r) => {
            tracing::info!(step = name, duration_ms, "step done");
            steps.push(Step {
                name: name.into(),
                duration_ms,
                result: serde_json::to_value(&r).unwrap_or(Value::Null),
            });
            Ok(r)
        }
        // Keep the step's errorType; say which step failed.
        Err(e) => Err(match e {
            PipelineError::InvalidEvent(m) => PipelineError::InvalidEvent(format!("{name} step: {m}")),
            PipelineError::CoreUnavailable(m) => PipelineError::CoreUnavailable(format!("{name} step: {m}")),
            other => {
                tracing::error!(step = name, duration_ms, error = %other, "step failed");
                other
            }
        }),
    }
}

/// Run init, scan and collect.
pub async fn run_orchestrator(
    client: &CoreClient,
    event: OrchestrateEvent,
) -> Result<OrchestrateResult, PipelineError> {
    let mut steps = Vec::with_capacity(3);
    timed("init", &mut steps, run_migrations(client)).await?;
    let scan = timed("scan", &mut steps, run_scanner(client, event.scan)).await?;
    let mut collect = event.collect;
    if collect.markets.is_none() {
        collect.markets = Some(scan.selected.clone());
    }
    let collected = timed("collect", &mut steps, run_collector(client, collect)).await?;
    Ok(OrchestrateResult {
        steps,
        selected: scan.selected,
        rows_stored: collected.rows_stored,
        failed: collected.failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::Interval;
    use serde_json::json;

    #[test]
    fn event_parsing() {
        assert_eq!(
            OrchestrateEvent::from_value(&json!({})).expect("empty"),
            OrchestrateEvent::default()
        );
        // An EventBridge scheduled event passes through with defaults.
        let eb = json!({"version": "0", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
        assert_eq!(
            OrchestrateEvent::from_value(&eb).expect("eventbridge"),
            OrchestrateEvent::default()
        );
        let e =
            OrchestrateEvent::from_value(&json!({"scan": {"limit": 2}, "collect": {"interval": "weeks", "count": 5}}))
                .expect("valid");
        assert_eq!(e.scan.limit, 2);
        assert_eq!(
            (e.collect.interval, e.collect.count, e.collect.markets),
            (Interval::Weeks, 5, None)
        );
        let err = OrchestrateEvent::from_value(&json!({"collect": {"interval": "minutes/7"}})).expect_err("bad");
        assert_eq!(err.error_type(), "InvalidEvent");
        let err = OrchestrateEvent::from_value(&json!({"scan": {"limit": 0}})).expect_err("bad");
        assert!(err.to_string().contains("event.scan.limit"), "{err}");
    }
}
