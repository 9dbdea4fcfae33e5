//! The Shutdown phase: SIGTERM to the runtime, SHUTDOWN with a deadline to the extensions, SIGKILL at the
//! deadline, and what happened ([`ShutdownReport`]).

use super::journal::Events;
use super::*;

/// What happened to one extension at shutdown.
#[derive(Debug, Clone)]
pub struct ExtensionShutdown {
    pub name: String,
    pub pid: u32,
    pub subscribed_shutdown: bool,
    pub received_shutdown: bool,
    /// It called `next` after SHUTDOWN (done; Lambda kills it then).
    pub acknowledged_via_next: bool,
    pub exit: Option<ExitInfo>,
    pub exited_within_deadline: bool,
    /// The harness had to SIGKILL it.
    pub killed: bool,
    /// SHUTDOWN dispatch to exit.
    pub elapsed: Option<Duration>,
}

/// What happened at shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    pub reason: ShutdownReason,
    pub budget: Duration,
    /// `deadlineMs` sent in the SHUTDOWN event.
    pub deadline_ms: i64,
    pub runtime_exit: Option<ExitInfo>,
    /// The runtime needed SIGKILL after SIGTERM.
    pub runtime_killed: bool,
    pub extensions: Vec<ExtensionShutdown>,
    /// Start of shutdown to the last process gone.
    pub elapsed: Duration,
    /// Every line every process wrote during the environment's life.
    pub logs: Vec<LogLine>,
}

impl ShutdownReport {
    pub fn extension(&self, name: &str) -> Option<&ExtensionShutdown> {
        self.extensions.iter().find(|e| e.name == name)
    }
}

impl LambdaEnv {
    /// Lambda's normal end of an environment: SPINDOWN with the given total budget (Lambda: 2 s).
    pub async fn shutdown(self, budget: Duration) -> Result<ShutdownReport> {
        self.shutdown_with(ShutdownReason::Spindown, budget).await
    }

    /// Shutdown: SIGTERM to the runtime (SIGKILL after 300 ms), SHUTDOWN with `deadlineMs` = start + `budget`
    /// to the extensions, SIGKILL for those still running at the deadline.
    pub async fn shutdown_with(mut self, reason: ShutdownReason, budget: Duration) -> Result<ShutdownReport> {
        let t0 = Instant::now();
        let deadline = t0 + budget;
        let deadline_ms = epoch_ms() + budget.as_millis() as i64;
        self.manual_frozen.store(false, Ordering::SeqCst);
        for p in self.processes() {
            p.signal(Signal::SIGCONT);
        }

        // Runtime first. It gets SIGTERM only when an extension is registered (Lambda's rule).
        let runtime_share = Duration::from_millis(300).min(budget);
        let mut runtime_killed = false;
        if !self.runtime.has_exited() {
            let sig = if self.extensions.is_empty() {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            self.runtime.signal(sig);
            if self
                .runtime
                .wait_exit(tokio::time::Instant::from_std(t0 + runtime_share))
                .await
                .is_none()
            {
                runtime_killed = self.runtime.signal(Signal::SIGKILL);
                self.runtime
                    .wait_exit(tokio::time::Instant::now() + Duration::from_secs(2))
                    .await;
            }
        }

        // Then SHUTDOWN to the extensions subscribed to it; the others are killed at once (RIE behaviour).
        self.front.shared.set_shutdown(reason.as_str(), deadline_ms);
        let subscribed: HashMap<String, bool> = self
            .journal
            .events()
            .registrations()
            .iter()
            .map(|r| (r.name.to_owned(), r.subscribes("SHUTDOWN")))
            .collect();
        for p in &self.extensions {
            if !subscribed.get(&p.name).copied().unwrap_or(false) {
                p.signal(Signal::SIGKILL);
            }
        }
        let dispatched = Instant::now();
        let sim = lock(&self.sim).take();
        if let Some(sim) = sim {
            match Arc::try_unwrap(sim) {
                Ok(sim) => {
                    let sim_reason = reason.to_sim();
                    // Delivers SHUTDOWN, then stops the simulator's server; runs detached so a stuck extension
                    // cannot hold the harness past the deadline.
                    tokio::spawn(async move { sim.graceful_shutdown(sim_reason).await });
                }
                Err(_) => {
                    return Err(HarnessError::State(
                        "an invocation call is still using the simulator".into(),
                    ))
                }
            }
        }

        // Wait until every extension is gone, or has said it is done (next after SHUTDOWN), or the deadline.
        let tdeadline = tokio::time::Instant::from_std(deadline);
        let names: Vec<String> = self.extensions.iter().map(|p| p.name.clone()).collect();
        let ids = self.ext_ids.clone();
        self.journal
            .wait_for(tdeadline, |ev, _| {
                let all = names.iter().all(|n| {
                    let id = ids.get(n).map_or("", String::as_str);
                    ev.extension_exited(Some(n)) || ev.done_after_shutdown(id)
                });
                all.then_some(())
            })
            .await;
        // Those still running now either said they are done (`next` after SHUTDOWN) or missed the deadline:
        // Lambda kills both.
        let events = self.journal.events();
        let mut reports = Vec::new();
        for p in &self.extensions {
            let exited_before = p.exit();
            let killed = exited_before.is_none() && p.signal(Signal::SIGKILL);
            let exit = match exited_before {
                Some(e) => Some(e),
                None => p.wait_exit(tokio::time::Instant::now() + Duration::from_secs(2)).await,
            };
            let id = self.ext_ids.get(&p.name).cloned().unwrap_or_default();
            let received_shutdown = events.delivery_to(&id, "SHUTDOWN", None).is_some();
            let acknowledged_via_next = events.done_after_shutdown(&id);
            reports.push(ExtensionShutdown {
                name: p.name.clone(),
                pid: p.pid,
                subscribed_shutdown: subscribed.get(&p.name).copied().unwrap_or(false),
                received_shutdown,
                acknowledged_via_next,
                exit: exit.map(|(_, e)| e),
                exited_within_deadline: !killed && exited_before.is_some_and(|(at, _)| at <= deadline),
                killed,
                elapsed: exit.map(|(at, _)| at.saturating_duration_since(dispatched)),
            });
        }
        let elapsed = t0.elapsed();
        let drain = tokio::time::Instant::now() + Duration::from_secs(2);
        for p in self.extensions.iter_mut().chain(std::iter::once(&mut self.runtime)) {
            p.drain_logs(drain).await;
        }
        self.front.close();
        Ok(ShutdownReport {
            reason,
            budget,
            deadline_ms,
            runtime_exit: self.runtime.exit().map(|(_, e)| e),
            runtime_killed,
            extensions: reports,
            elapsed,
            logs: self.journal.logs(),
        })
    }
}
