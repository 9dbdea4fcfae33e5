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
