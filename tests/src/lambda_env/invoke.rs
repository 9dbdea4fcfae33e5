//! The Invoke phase: the event to the runtime and INVOKE to the extensions, the outcome ([`InvokeOutcome`]), and
//! the freeze that follows once the runtime has answered and every INVOKE-subscribed extension called `next`.

use super::journal::{Events, InvocationEnd};
use super::*;

/// How an invocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeStatus {
    Success,
    /// A function error (`/invocation/{id}/error`) or the runtime process died (`Runtime.ExitError`).
    Error,
    /// No answer before the function timeout.
    Timeout,
}

/// A function error as Lambda reports it.
#[derive(Debug, Clone)]
pub struct FunctionError {
    pub error_type: String,
    pub message: String,
}

/// Result of one invocation.
#[derive(Debug, Clone)]
pub struct InvokeOutcome {
    pub request_id: String,
    pub status: InvokeStatus,
    /// The function's JSON response.
    pub response: Option<Value>,
    pub error: Option<FunctionError>,
    /// Invoke to the runtime's response (what the caller waits).
    pub duration: Duration,
    /// Runtime response to the last INVOKE-subscribed extension's `next` (`PostRuntimeExtensionsDuration`).
    pub extensions_overhead: Option<Duration>,
    /// Whether the environment was frozen afterwards (on-demand mode).
    pub frozen: bool,
}

impl InvokeOutcome {
    /// The response of a successful invocation, or a readable error.
    pub fn ok(&self) -> std::result::Result<&Value, String> {
        match (self.status, &self.response, &self.error) {
            (InvokeStatus::Success, Some(v), _) => Ok(v),
            (_, _, Some(e)) => Err(format!("{:?}: {}: {}", self.status, e.error_type, e.message)),
            _ => Err(format!("{:?} with no response", self.status)),
        }
    }

    /// `errorType` of a failed invocation.
    pub fn error_type(&self) -> Option<&str> {
        self.error.as_ref().map(|e| e.error_type.as_str())
    }
}

/// An invocation that was started and not yet waited for.
#[derive(Debug, Clone)]
pub struct PendingInvoke {
    pub request_id: String,
    pub enqueued_at: Instant,
    pub deadline: Instant,
}

impl LambdaEnv {
    /// Whether the processes are frozen right now.
    pub fn is_frozen(&self) -> bool {
        self.manual_frozen.load(Ordering::SeqCst) || self.sim().map(|s| s.is_frozen()).unwrap_or(false)
    }

    /// Freezes every process now (SIGSTOP), e.g. to freeze right after Init. The next invoke thaws them.
    pub fn freeze_now(&self) {
        for p in self.processes() {
            p.signal(Signal::SIGSTOP);
        }
        self.manual_frozen.store(true, Ordering::SeqCst);
    }

    /// Thaws the processes until the guard is dropped, then freezes them again (when they were frozen). For looking
    /// inside between invocations (e.g. `/db/query` to the extension): Lambda itself never does this.
    pub fn thaw(&self) -> ThawGuard<'_> {
        let refreeze = self.is_frozen();
        if refreeze {
            for p in self.processes() {
                p.signal(Signal::SIGCONT);
            }
        }
        ThawGuard { env: self, refreeze }
    }

    /// Invokes the function and waits for the result (and, in on-demand mode, for the freeze that follows).
    pub async fn invoke(&self, payload: Value) -> Result<InvokeOutcome> {
        let pending = self.start_invoke(payload).await?;
        self.wait_invoke(&pending).await
    }

    /// Starts an invocation without waiting for it.
    pub async fn start_invoke(&self, payload: Value) -> Result<PendingInvoke> {
        if self.manual_frozen.swap(false, Ordering::SeqCst) {
            for p in self.processes() {
                p.signal(Signal::SIGCONT);
            }
        }
        let sim = self.sim()?;
        let invocation = InvocationBuilder::new()
            .payload(payload)
            .timeout_ms(self.cfg.timeout.as_millis() as u64)
            .function_arn(function_arn(&self.cfg.function_name))
            .build()
            .map_err(|e| HarnessError::Simulator(e.to_string()))?;
        let enqueued_at = Instant::now();
        // Thaws (SIGCONT) when frozen, queues the event and sends INVOKE to the extensions.
        let request_id = sim.enqueue(invocation).await;
        Ok(PendingInvoke {
            request_id,
            enqueued_at,
            deadline: enqueued_at + self.cfg.timeout,
        })
    }

    /// Waits for an invocation started with [`Self::start_invoke`].
    pub async fn wait_invoke(&self, pending: &PendingInvoke) -> Result<InvokeOutcome> {
        let rid = pending.request_id.clone();
        let since = pending.enqueued_at;
        let done = self
            .journal
            .wait_for(tokio::time::Instant::from_std(pending.deadline), |ev, _| {
                ev.invocation_end(&rid, since).map(|(at, end)| {
                    let error_type = match end {
                        InvocationEnd::Response => None,
                        InvocationEnd::Error(t) => Some(t),
                        InvocationEnd::RuntimeExited(exit) => Some(format!("Runtime.ExitError ({exit})")),
                    };
                    (at, error_type)
                })
            })
            .await;
        let Some((done_at, error_type)) = done else {
            self.front.telemetry.emit_report(
                &rid,
                telemetry::Status::Timeout,
                Some("Sandbox.Timedout"),
                self.cfg.timeout,
                &self.pids(),
            );
            return Ok(InvokeOutcome {
                request_id: rid,
                status: InvokeStatus::Timeout,
                response: None,
                error: Some(FunctionError {
                    error_type: "Sandbox.Timedout".into(),
                    message: format!("Task timed out after {:.2} seconds", self.cfg.timeout.as_secs_f64()),
                }),
                duration: pending.deadline - pending.enqueued_at,
                extensions_overhead: None,
                frozen: false,
            });
        };
        let sim = self.sim()?;
        let state = sim.get_invocation_state(&rid).await;
        let (status, response, error) = match error_type {
            None => (
                InvokeStatus::Success,
                state
                    .as_ref()
                    .and_then(|s| s.response.as_ref())
                    .map(|r| r.payload.clone()),
                None,
            ),
            Some(error_type) => {
                let message = state
                    .as_ref()
                    .and_then(|s| s.error.as_ref())
                    .map(|e| e.error_message.clone())
                    .unwrap_or_default();
                let error_type = state
                    .as_ref()
                    .and_then(|s| s.error.as_ref())
                    .map(|e| e.error_type.clone())
                    .filter(|t| !t.is_empty() && t != "UnknownError")
                    .unwrap_or(error_type);
                (InvokeStatus::Error, None, Some(FunctionError { error_type, message }))
            }
        };

        // After the response, every INVOKE-subscribed extension must call `next` again; then Lambda freezes.
        let invoke_subscribers: Vec<String> = self
            .journal
            .events()
            .registrations()
            .iter()
            .filter(|r| r.subscribes("INVOKE"))
            .map(|r| r.id.to_owned())
            .collect();
        let settle_deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let overhead = self
            .journal
            .wait_for(settle_deadline, |ev, _| {
                let mut last = done_at;
                for id in &invoke_subscribers {
                    // Ready = a `next` after this INVOKE was delivered to it (possibly before the runtime answered).
                    let delivered = ev.delivery_to(id, "INVOKE", Some(&rid));
                    let next = delivered.and_then(|i| ev.next_of(id, i));
                    // An extension that died is not waited for (Lambda would report Extension.Crash).
                    let died = ev.extension_exited(None);
                    match next {
                        Some(at) => last = last.max(at),
                        None if died => {}
                        None => return None,
                    }
                }
                Some(last - done_at)
            })
            .await;
        // platform.report: the invoke phase is over (runtime answered, every INVOKE-subscribed extension is back).
        let report_status = match status {
            InvokeStatus::Success => telemetry::Status::Success,
            _ => telemetry::Status::Error,
        };
        let invoke_phase = (done_at - pending.enqueued_at) + overhead.unwrap_or_default();
        let error_type = error.as_ref().map(|e| e.error_type.clone());
        self.front
            .telemetry
            .emit_report(&rid, report_status, error_type.as_deref(), invoke_phase, &self.pids());
        let mut frozen = false;
        if self.freeze_mode && status != InvokeStatus::Timeout {
            frozen = wait_frozen(&sim, settle_deadline).await;
            // SIGSTOP is asynchronous: return only once the kernel shows every live process stopped.
            if frozen {
                for p in self.processes().filter(|p| !p.has_exited()) {
                    p.wait_stopped(true, Duration::from_secs(2)).await;
                }
            }
        }
        // The caller's wait ends when the Runtime API has the response, as on Lambda: the front's receipt of it,
        // not the front's own forwarding to the simulator afterwards (a harness cost, ~0.1-0.5 ms, that Lambda does
        // not have and that would cap every end-to-end ratio the benchmark reports).
        let answered_at = self
            .journal
            .events()
            .iter()
            .rev()
            .find_map(|e| match &e.kind {
                ApiEventKind::RuntimeResponseForwarded { request_id, received } if *request_id == rid => {
                    Some(*received)
                }
                _ => None,
            })
            .unwrap_or(done_at);
        Ok(InvokeOutcome {
            request_id: rid,
            status,
            response,
            error,
            duration: answered_at.saturating_duration_since(pending.enqueued_at),
            extensions_overhead: overhead,
            frozen,
        })
    }
}

/// Keeps the processes thawed; freezes them again on drop if they were frozen.
pub struct ThawGuard<'a> {
    env: &'a LambdaEnv,
    refreeze: bool,
}

impl Drop for ThawGuard<'_> {
    fn drop(&mut self) {
        if self.refreeze {
            for p in self.env.processes() {
                p.signal(Signal::SIGSTOP);
            }
        }
    }
}

/// The first problem that fails Init, if any.
/// Waits until the simulator has frozen the processes. `wait_for_frozen` can miss a notification that fires
/// between its check and its wait, so it is called in short slices until the deadline.
async fn wait_frozen(sim: &Simulator, deadline: tokio::time::Instant) -> bool {
    loop {
        if sim.is_frozen() {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        let slice = (deadline - now).min(Duration::from_millis(20));
        if sim.wait_for_frozen(slice).await.is_ok() {
            return true;
        }
    }
}
