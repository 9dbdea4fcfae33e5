//! The environment's journal: every lifecycle call seen on the emulated Runtime/Extensions API, every process
//! exit and every log line of every process, with the instant it happened. Waits in the harness are waits on
//! this journal changing (a `watch` version counter), never fixed sleeps.

use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::watch;

/// Which kind of process a log line or exit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The function (`bootstrap`), i.e. the runtime process.
    Runtime,
    /// An external extension (a file in `/opt/extensions`).
    Extension,
}

/// Output stream of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line a process wrote (CloudWatch would get exactly these).
#[derive(Debug, Clone)]
pub struct LogLine {
    pub at: Instant,
    pub process: String,
    pub pid: u32,
    pub role: Role,
    pub stream: Stream,
    pub line: String,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited by itself.
    pub code: Option<i32>,
    /// Terminating signal, when a signal killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    pub(crate) fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Self {
            code: status.code(),
            signal: status.signal(),
        }
    }

    /// Exited by itself with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "killed by signal {s}"),
            _ => write!(f, "unknown exit"),
        }
    }
}

/// Something that happened in the environment.
#[derive(Debug, Clone)]
pub enum ApiEventKind {
    /// `POST /extension/register` succeeded.
    ExtensionRegistered {
        id: String,
        name: String,
        events: Vec<String>,
    },
    /// `POST /extension/register` was refused by the harness (name or event rules) or the simulator.
    ExtensionRegisterRejected { name: String, status: u16, reason: String },
    /// An extension called `GET /extension/event/next`.
    ExtensionNext { id: String, name: String },
    /// An event was delivered to an extension.
    ExtensionEvent {
        id: String,
        name: String,
        event_type: String,
        request_id: Option<String>,
    },
    /// `POST /extension/init/error`.
    ExtensionInitError {
        id: Option<String>,
        name: Option<String>,
        error_type: String,
        body: String,
    },
    /// `POST /extension/exit/error`.
    ExtensionExitError {
        id: Option<String>,
        name: Option<String>,
        error_type: String,
        body: String,
    },
    /// An extension called `next` again after it got SHUTDOWN: it says it is done (Lambda then kills it).
    ExtensionNextAfterShutdown { id: String, name: String },
    /// The runtime called `GET /runtime/invocation/next`.
    RuntimeNext,
    /// The runtime received an invocation.
    RuntimeInvocationReceived { request_id: String },
    /// `POST /runtime/invocation/{id}/response`.
    RuntimeResponse { request_id: String },
    /// The front got the runtime's response at `received` and the simulator acknowledged it (this entry's instant):
    /// the front's own share of an invocation's end-to-end time (the benchmark's harness breakdown).
    RuntimeResponseForwarded { request_id: String, received: Instant },
    /// `POST /runtime/invocation/{id}/error`.
    RuntimeError { request_id: String, error_type: String },
    /// `POST /runtime/init/error`.
    RuntimeInitError { error_type: String, body: String },
    /// `PUT /2022-07-01/telemetry` accepted (see `telemetry.rs`).
    TelemetrySubscribed {
        id: String,
        name: String,
        schema_version: String,
        types: Vec<String>,
        destination: String,
    },
    /// `PUT /2022-07-01/telemetry` refused.
    TelemetrySubscribeRejected {
        id: Option<String>,
        status: u16,
        reason: String,
    },
    /// A process of the environment ended.
    ProcessExited {
        role: Role,
        name: String,
        pid: u32,
        exit: ExitInfo,
    },
}

/// A journal entry.
#[derive(Debug, Clone)]
pub struct ApiEvent {
    pub at: Instant,
    pub kind: ApiEventKind,
}

/// Shared, append-only record of an environment.
pub struct Journal {
    events: Mutex<Vec<ApiEvent>>,
    logs: Mutex<Vec<LogLine>>,
    version: watch::Sender<u64>,
    echo: bool,
    started: Instant,
}

impl Journal {
    pub(crate) fn new(echo: bool) -> Self {
        Self {
            events: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            version: watch::channel(0).0,
            echo,
            started: Instant::now(),
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    pub(crate) fn push(&self, kind: ApiEventKind) {
        lock(&self.events).push(ApiEvent {
            at: Instant::now(),
            kind,
        });
        self.bump();
    }

    pub(crate) fn push_log(&self, line: LogLine) {
        if self.echo {
            eprintln!(
                "[{:>8.3}s {} {}] {}",
                line.at.duration_since(self.started).as_secs_f64(),
                line.process,
                line.pid,
                line.line
            );
        }
        lock(&self.logs).push(line);
        self.bump();
    }

    /// Copy of every event so far.
    pub fn events(&self) -> Vec<ApiEvent> {
        lock(&self.events).clone()
    }

    /// Copy of every log line so far.
    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.logs).clone()
    }

    /// Waits until `check` (run on the events and logs) returns `Some`, or until `deadline`.
    pub async fn wait_for<T>(
        &self,
        deadline: tokio::time::Instant,
        mut check: impl FnMut(&[ApiEvent], &[LogLine]) -> Option<T>,
    ) -> Option<T> {
        let mut rx = self.version.subscribe();
        loop {
            {
                let events = lock(&self.events);
                let logs = lock(&self.logs);
                if let Some(found) = check(&events, &logs) {
                    return Some(found);
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                // The sender lives as long as the journal; a closed channel cannot happen while we hold `self`.
                Ok(Err(_)) | Err(_) => {
                    let events = lock(&self.events);
                    let logs = lock(&self.logs);
                    return check(&events, &logs);
                }
            }
        }
    }
}

/// Locks a std mutex, ignoring poisoning (a panicking test thread must not hide the journal from cleanup).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A successful registration, as the journal recorded it.
#[derive(Debug, Clone, Copy)]
pub struct Registration<'a> {
    pub at: Instant,
    pub id: &'a str,
    pub name: &'a str,
    pub events: &'a [String],
}

impl Registration<'_> {
    /// Whether it registered for `event` (`INVOKE`, `SHUTDOWN`).
    pub fn subscribes(&self, event: &str) -> bool {
        self.events.iter().any(|e| e.eq_ignore_ascii_case(event))
    }
}

/// How an invocation ended, as the journal saw it.
#[derive(Debug, Clone)]
pub enum InvocationEnd {
    Response,
    /// `/invocation/{id}/error` with its error type.
    Error(String),
    /// The runtime process died (Lambda: `Runtime.ExitError`).
    RuntimeExited(ExitInfo),
}

/// Typed queries over recorded events, so the phases ask questions instead of matching [`ApiEventKind`] by hand.
pub trait Events {
    /// Every successful registration, in order.
    fn registrations(&self) -> Vec<Registration<'_>>;
    /// The registration of the extension named `name`.
    fn registration_of(&self, name: &str) -> Option<Registration<'_>>;
    /// Names of the extensions that called `next` at least once.
    fn extensions_that_called_next(&self) -> std::collections::HashSet<&str>;
    /// When extension `id` first called `next`, looking from index `from` on.
    fn next_of(&self, id: &str, from: usize) -> Option<Instant>;
    /// When the runtime first called `/runtime/invocation/next`.
    fn first_runtime_next(&self) -> Option<Instant>;
    /// Index of the delivery of an `event_type` event to extension `id` (for INVOKE: of `request_id`).
    fn delivery_to(&self, id: &str, event_type: &str, request_id: Option<&str>) -> Option<usize>;
    /// Whether extension `id` called `next` after its SHUTDOWN (it is done; Lambda then kills it).
    fn done_after_shutdown(&self, id: &str) -> bool;
    /// Whether an extension process (the one named `name`, or any with `None`) has exited.
    fn extension_exited(&self, name: Option<&str>) -> bool;
    /// `(name, error type, body)` of each `/extension/init/error`.
    fn extension_init_errors(&self) -> Vec<(String, String, String)>;
    /// Names of the extensions that posted an init or exit error.
    fn extensions_that_reported_errors(&self) -> Vec<String>;
    /// `(error type, body)` of a `/runtime/init/error`.
    fn runtime_init_error(&self) -> Option<(String, String)>;
    /// The first thing that fails Init, described.
    fn init_problem(&self) -> Option<String>;
    /// How invocation `request_id` ended, and when (a runtime exit counts only at or after `since`).
    fn invocation_end(&self, request_id: &str, since: Instant) -> Option<(Instant, InvocationEnd)>;
}

impl Events for [ApiEvent] {
    fn registrations(&self) -> Vec<Registration<'_>> {
        self.iter()
            .filter_map(|e| match &e.kind {
                ApiEventKind::ExtensionRegistered { id, name, events } => Some(Registration {
                    at: e.at,
                    id,
                    name,
                    events,
                }),
                _ => None,
            })
            .collect()
    }

    fn registration_of(&self, name: &str) -> Option<Registration<'_>> {
        self.registrations().into_iter().find(|r| r.name == name)
    }

    fn extensions_that_called_next(&self) -> std::collections::HashSet<&str> {
        self.iter()
            .filter_map(|e| match &e.kind {
                ApiEventKind::ExtensionNext { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn next_of(&self, id: &str, from: usize) -> Option<Instant> {
        self.get(from..)?.iter().find_map(|e| match &e.kind {
            ApiEventKind::ExtensionNext { id: eid, .. } if eid == id => Some(e.at),
            _ => None,
        })
    }

    fn first_runtime_next(&self) -> Option<Instant> {
        self.iter()
            .find_map(|e| matches!(e.kind, ApiEventKind::RuntimeNext).then_some(e.at))
    }

    fn delivery_to(&self, id: &str, event_type: &str, request_id: Option<&str>) -> Option<usize> {
        self.iter().position(|e| match &e.kind {
            ApiEventKind::ExtensionEvent {
                id: eid,
                event_type: t,
                request_id: r,
                ..
            } => {
                eid == id && t.eq_ignore_ascii_case(event_type) && (request_id.is_none() || r.as_deref() == request_id)
            }
            _ => false,
        })
    }

    fn done_after_shutdown(&self, id: &str) -> bool {
        self.iter()
            .any(|e| matches!(&e.kind, ApiEventKind::ExtensionNextAfterShutdown { id: eid, .. } if eid == id))
    }

    fn extension_exited(&self, which: Option<&str>) -> bool {
        self.iter().any(|e| match &e.kind {
            ApiEventKind::ProcessExited {
                role: Role::Extension,
                name,
                ..
            } => which.is_none_or(|w| w == name),
            _ => false,
        })
    }

    fn extension_init_errors(&self) -> Vec<(String, String, String)> {
        self.iter()
            .filter_map(|e| match &e.kind {
                ApiEventKind::ExtensionInitError {
                    name, error_type, body, ..
                } => Some((name.clone().unwrap_or_default(), error_type.clone(), body.clone())),
                _ => None,
            })
            .collect()
    }

    fn extensions_that_reported_errors(&self) -> Vec<String> {
        self.iter()
            .filter_map(|e| match &e.kind {
                ApiEventKind::ExtensionInitError { name, .. } | ApiEventKind::ExtensionExitError { name, .. } => {
                    name.clone()
                }
                _ => None,
            })
            .collect()
    }

    fn runtime_init_error(&self) -> Option<(String, String)> {
        self.iter().find_map(|e| match &e.kind {
            ApiEventKind::RuntimeInitError { error_type, body } => Some((error_type.clone(), body.clone())),
            _ => None,
        })
    }

    fn init_problem(&self) -> Option<String> {
        self.iter().find_map(|e| match &e.kind {
            ApiEventKind::ExtensionInitError { name, error_type, .. } => Some(format!(
                "extension {} reported init error {error_type}",
                name.clone().unwrap_or_default()
            )),
            ApiEventKind::ExtensionExitError { name, error_type, .. } => Some(format!(
                "extension {} reported exit error {error_type}",
                name.clone().unwrap_or_default()
            )),
            ApiEventKind::ExtensionRegisterRejected { name, reason, .. } => {
                Some(format!("registration of {name} refused: {reason}"))
            }
            ApiEventKind::RuntimeInitError { error_type, .. } => Some(format!("runtime init error {error_type}")),
            ApiEventKind::ProcessExited { role, name, exit, .. } => Some(match role {
                Role::Extension => format!("extension {name} exited during Init ({exit}): Extension.Crash"),
                Role::Runtime => format!("runtime {name} exited during Init ({exit}): Runtime.ExitError"),
            }),
            _ => None,
        })
    }

    fn invocation_end(&self, request_id: &str, since: Instant) -> Option<(Instant, InvocationEnd)> {
        self.iter().find_map(|e| match &e.kind {
            ApiEventKind::RuntimeResponse { request_id: r } if r == request_id => Some((e.at, InvocationEnd::Response)),
            ApiEventKind::RuntimeError {
                request_id: r,
                error_type,
            } if r == request_id => Some((e.at, InvocationEnd::Error(error_type.clone()))),
            ApiEventKind::ProcessExited {
                role: Role::Runtime,
                exit,
                ..
            } if e.at >= since => Some((e.at, InvocationEnd::RuntimeExited(*exit))),
            _ => None,
        })
    }
}
