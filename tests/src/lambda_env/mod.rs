//! An emulated Lambda execution environment running the real binaries as separate processes.
//!
//! Built on `lambda-simulator` 0.2 (Runtime, Extensions and Telemetry APIs, freeze by SIGSTOP/SIGCONT) with a
//! small front proxy (`front.rs`) that fills its gaps. The lifecycle follows Lambda's:
//!
//! 1. Init: every extension file is started at once; the runtime (`bootstrap`) is started only when all of them
//!    have registered; Init ends when the runtime and every extension have called `next`. An extension's
//!    `/extension/init/error`, a runtime `/runtime/init/error`, any process exit or the 10 s Init limit fail it.
//! 2. Invoke: the event goes to the runtime and INVOKE to the extensions; once the runtime has answered and every
//!    INVOKE-subscribed extension has called `next` again, all processes are frozen (SIGSTOP) until the next
//!    invoke thaws them (SIGCONT). With Lambda Managed Instances nothing is frozen and invokes may overlap.
//! 3. Shutdown: the runtime gets SIGTERM (SIGKILL after its share, 300 ms), then SHUTDOWN goes to the extensions
//!    with `deadlineMs` = start + budget (2 s); those not gone by the deadline are SIGKILLed, as on Lambda.
//!
//! Waits are on signals only (API calls, process exits, log lines recorded in the [`Journal`]); a dropped
//! [`LambdaEnv`] kills every process it started.
//!
//! Gaps of lambda-simulator 0.2 handled here (see `front.rs` for the API ones): no timeout enforcement (the
//! harness reports [`InvokeStatus::Timeout`] itself), no process exit tracking (the harness owns the processes),
//! SHUTDOWN delivery only (waiting for the extension to exit, the deadline and the SIGKILL are the harness's),
//! stdout/stderr only inherited or discarded (the harness captures them line by line).

pub mod bins;
mod config;
pub mod core_client;
mod front;
mod init;
mod invoke;
pub mod journal;
mod procs;
mod shutdown;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_simulator::{FreezeMode, InvocationBuilder, Simulator};
use nix::sys::signal::Signal;
use serde_json::Value;

pub use config::*;
pub use core_client::{CoreClient, CoreReply};
pub use init::{ExtensionInit, InitFailure, InitReport};
pub use invoke::{FunctionError, InvokeOutcome, InvokeStatus, PendingInvoke, ThawGuard};
pub use journal::{ApiEvent, ApiEventKind, ExitInfo, Journal, LogLine, Role, Stream};
pub use procs::Proc;
pub use shutdown::{ExtensionShutdown, ShutdownReport};

use crate::error::{HarnessError, Result};
use front::{Front, FrontConfig};
use journal::lock;

/// A running emulated execution environment.
pub struct LambdaEnv {
    cfg: EnvConfig,
    sim: Mutex<Option<Arc<Simulator>>>,
    front: Front,
    journal: Arc<Journal>,
    extensions: Vec<Proc>,
    runtime: Proc,
    core_port: u16,
    core_token: String,
    freeze_mode: bool,
    manual_frozen: AtomicBool,
    init: InitReport,
    ext_ids: HashMap<String, String>,
    _dir: tempfile::TempDir,
}

impl LambdaEnv {
    fn sim(&self) -> Result<Arc<Simulator>> {
        lock(&self.sim)
            .clone()
            .ok_or_else(|| HarnessError::State("environment is shut down".into()))
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &EnvConfig {
        &self.cfg
    }

    /// Init timings.
    pub fn init_report(&self) -> &InitReport {
        &self.init
    }

    /// `MAKENAIDE_CORE_PORT` of this environment.
    pub fn core_port(&self) -> u16 {
        self.core_port
    }

    /// The token the processes use (`MAKENAIDE_CORE_TOKEN`, or `AWS_SESSION_TOKEN` with [`CoreToken::SessionToken`]).
    pub fn core_token(&self) -> &str {
        &self.core_token
    }

    /// A client for the extension's localhost API. The extension answers only while thawed: see [`Self::thaw`].
    pub fn core(&self) -> CoreClient {
        CoreClient::new(self.core_port, self.core_token.clone())
    }

    /// The runtime (function) process.
    pub fn runtime(&self) -> &Proc {
        &self.runtime
    }

    /// An extension process by name.
    pub fn extension(&self, name: &str) -> Option<&Proc> {
        self.extensions.iter().find(|p| p.name == name)
    }

    /// All processes: extensions first, runtime last.
    pub fn processes(&self) -> impl Iterator<Item = &Proc> {
        self.extensions.iter().chain(std::iter::once(&self.runtime))
    }

    /// The journal (events and log lines).
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// Every log line so far, of every process.
    pub fn logs(&self) -> Vec<LogLine> {
        self.journal.logs()
    }

    /// Waits until some process writes a line matching `pred`.
    pub async fn wait_for_log(&self, timeout: Duration, pred: impl Fn(&LogLine) -> bool) -> Result<LogLine> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.journal
            .wait_for(deadline, |_, logs| logs.iter().find(|l| pred(l)).cloned())
            .await
            .ok_or_else(|| HarnessError::Timeout {
                what: "a matching log line".into(),
                after: timeout,
            })
    }
}

impl Drop for LambdaEnv {
    fn drop(&mut self) {
        self.front.close();
        for p in self.processes() {
            p.signal(Signal::SIGKILL);
            p.abort_tasks();
        }
        if let Some(sim) = lock(&self.sim).take() {
            if let (Ok(handle), Ok(sim)) = (tokio::runtime::Handle::try_current(), Arc::try_unwrap(sim)) {
                handle.spawn(sim.shutdown());
            }
        }
    }
}

/// What to give the simulator's freezer so it stops the whole process group (the sandbox), not just the leader:
/// it stores the pid as `i32` and calls `kill(pid)`, and `kill(-pgid)` signals a group. Every process is its own
/// group leader (see `procs.rs`), so pgid = pid.
fn group_of(pid: u32) -> u32 {
    (-(pid as i32)) as u32
}

fn function_arn(name: &str) -> String {
    format!("arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{name}")
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `n` random bytes as hex (from the OS; falls back to time and pid).
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    if !filled {
        let seed = epoch_ms() as u64 ^ (u64::from(std::process::id()) << 32);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 7) & 0xff) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A free 127.0.0.1 port below the kernel's ephemeral range (so no outgoing connection can be holding it), in a
/// slice of the range that depends on the process id (test binaries run in parallel as separate processes) and
/// never the same twice in one process.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20000;
    const SPAN: u32 = 10000;
    let slot = (std::process::id() % 500) * 20;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (BASE + (slot + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}
