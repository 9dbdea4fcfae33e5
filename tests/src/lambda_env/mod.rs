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
//! stdout/stderr only inherited or discarded (the harness captures them line by line), a Telemetry API that
//! cannot deliver `platform.initStart` nor report timeouts (the harness emits the platform events itself:
//! `telemetry.rs`).

pub mod bins;
pub mod core_client;
mod front;
pub mod journal;
mod procs;
pub mod telemetry;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lambda_simulator::{FreezeMode, InvocationBuilder, Simulator};
use nix::sys::signal::Signal;
use serde_json::Value;

pub use core_client::{CoreClient, CoreReply};
pub use journal::{ApiEvent, ApiEventKind, ExitInfo, Journal, LogLine, Role, Stream};
pub use procs::Proc;

use crate::error::{HarnessError, Result};
use front::{Front, FrontConfig};
use journal::lock;

/// Localhost port of the extension's API (contract).
pub const CORE_PORT_ENV: &str = "MAKENAIDE_CORE_PORT";
/// Shared secret between function and extension (contract).
pub const CORE_TOKEN_ENV: &str = "MAKENAIDE_CORE_TOKEN";
/// `1`: echo every line every process writes to the harness's stderr, prefixed with time, name and pid.
pub const HARNESS_LOGS_ENV: &str = "MAKENAIDE_HARNESS_LOGS";
/// File name of the extension (= registered name).
pub const EXTENSION: &str = "makenaide-core";
/// The function binaries (functions/FUNCTIONS, through the contract crate).
pub fn functions() -> impl Iterator<Item = &'static str> {
    makenaide_contract::functions::all()
}
/// Account id used in ARNs and registration replies.
pub const ACCOUNT_ID: &str = "123456789012";

/// Variables Lambda gives the runtime but not extensions (reference A7).
const RUNTIME_ONLY_VARS: [&str; 10] = [
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_XRAY_CONTEXT_MISSING",
    "AWS_XRAY_DAEMON_ADDRESS",
    "LAMBDA_RUNTIME_DIR",
    "LAMBDA_TASK_ROOT",
    "_AWS_XRAY_DAEMON_ADDRESS",
    "_AWS_XRAY_DAEMON_PORT",
    "_HANDLER",
];
/// Variables of the harness's own environment handed to the processes (debugging aids only).
const PASSTHROUGH_VARS: [&str; 2] = ["RUST_LOG", "RUST_BACKTRACE"];
/// Path prefix used for [`RuntimeApiForm::UrlWithPrefix`] (what `cargo lambda watch` uses).
const URL_PREFIX: &str = "/.rt";

/// How `AWS_LAMBDA_RUNTIME_API` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeApiForm {
    /// `127.0.0.1:PORT`, as on Lambda.
    #[default]
    HostPort,
    /// `http://127.0.0.1:PORT/.rt`, as `cargo lambda watch` does.
    UrlWithPrefix,
}

/// Where the extension token comes from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CoreToken {
    /// A random `MAKENAIDE_CORE_TOKEN` per environment.
    #[default]
    Random,
    /// This `MAKENAIDE_CORE_TOKEN`.
    Fixed(String),
    /// No `MAKENAIDE_CORE_TOKEN`: the processes fall back to `AWS_SESSION_TOKEN` (random per environment).
    SessionToken,
}

/// SHUTDOWN reasons (Lambda's spelling on the wire: `SPINDOWN`, `TIMEOUT`, `FAILURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShutdownReason {
    #[default]
    Spindown,
    Timeout,
    Failure,
}

impl ShutdownReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Spindown => "SPINDOWN",
            Self::Timeout => "TIMEOUT",
            Self::Failure => "FAILURE",
        }
    }
    fn to_sim(self) -> lambda_simulator::ShutdownReason {
        match self {
            Self::Spindown => lambda_simulator::ShutdownReason::Spindown,
            Self::Timeout => lambda_simulator::ShutdownReason::Timeout,
            Self::Failure => lambda_simulator::ShutdownReason::Failure,
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct EnvConfig {
    /// Function binary: a name found by [`bins::locate`] or a path.
    pub function: String,
    /// Extension binaries (names or paths); the file name is the name they must register with.
    pub extensions: Vec<String>,
    /// The function's configuration (environment variables, seen by the runtime and the extensions).
    pub env: BTreeMap<String, String>,
    /// Freeze all processes between invocations (on-demand Lambda). Ignored with `managed_instances`.
    pub freeze: bool,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE`.
    pub memory_mb: u32,
    /// Function timeout (deadline of every invocation).
    pub timeout: Duration,
    /// Limit of the Init phase (Lambda: 10 s).
    pub init_timeout: Duration,
    /// Lambda Managed Instances: `AWS_LAMBDA_INITIALIZATION_TYPE=lambda-managed-instances`, SHUTDOWN-only
    /// registration, no freeze, concurrent invocations.
    pub managed_instances: bool,
    /// `AWS_LAMBDA_MAX_CONCURRENCY` under Managed Instances.
    pub max_concurrency: u32,
    /// `AWS_LAMBDA_FUNCTION_NAME`.
    pub function_name: String,
    /// Form of `AWS_LAMBDA_RUNTIME_API`.
    pub runtime_api_form: RuntimeApiForm,
    /// `MAKENAIDE_CORE_PORT`; `None` picks a free port per environment (so environments run in parallel).
    pub core_port: Option<u16>,
    /// Token source.
    pub token: CoreToken,
    /// Echo process output to stderr (also on with `MAKENAIDE_HARNESS_LOGS=1`).
    pub echo_logs: bool,
    /// Serve the Telemetry API (`false`: answer subscriptions as the Runtime Interface Emulator does).
    pub telemetry_api: bool,
}

impl EnvConfig {
    /// A function with no extension.
    pub fn new(function: impl Into<String>) -> Self {
        let function = function.into();
        let function_name = Path::new(&function)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| function.clone());
        Self {
            function,
            extensions: Vec::new(),
            env: BTreeMap::new(),
            freeze: true,
            memory_mb: 128,
            timeout: Duration::from_secs(60),
            init_timeout: Duration::from_secs(10),
            managed_instances: false,
            max_concurrency: 64,
            function_name,
            runtime_api_form: RuntimeApiForm::HostPort,
            core_port: None,
            token: CoreToken::Random,
            echo_logs: false,
            telemetry_api: true,
        }
    }

    /// A function with the `makenaide-core` extension.
    pub fn makenaide(function: impl Into<String>) -> Self {
        Self::new(function).extension(EXTENSION)
    }

    pub fn extension(mut self, binary: impl Into<String>) -> Self {
        self.extensions.push(binary.into());
        self
    }
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }
    pub fn freeze(mut self, freeze: bool) -> Self {
        self.freeze = freeze;
        self
    }
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    pub fn managed_instances(mut self, max_concurrency: u32) -> Self {
        self.managed_instances = true;
        self.max_concurrency = max_concurrency;
        self
    }
    pub fn runtime_api_form(mut self, form: RuntimeApiForm) -> Self {
        self.runtime_api_form = form;
        self
    }
    pub fn token(mut self, token: CoreToken) -> Self {
        self.token = token;
        self
    }
    pub fn core_port(mut self, port: u16) -> Self {
        self.core_port = Some(port);
        self
    }
    pub fn echo_logs(mut self, echo: bool) -> Self {
        self.echo_logs = echo;
        self
    }
    /// No Telemetry API: subscriptions get the Runtime Interface Emulator's 202 `Telemetry.NotSupported`.
    pub fn without_telemetry_api(mut self) -> Self {
        self.telemetry_api = false;
        self
    }
}

/// Start-up timings of one extension.
#[derive(Debug, Clone)]
pub struct ExtensionInit {
    pub name: String,
    pub pid: u32,
    pub id: String,
    pub events: Vec<String>,
    /// Process spawn to `register` answered.
    pub spawn_to_registered: Duration,
    /// Process spawn to its first `next` (extension ready).
    pub spawn_to_first_next: Duration,
}

/// Timings of the Init phase.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub extensions: Vec<ExtensionInit>,
    /// Runtime spawn to its first `/runtime/invocation/next`.
    pub runtime_spawn_to_first_next: Duration,
    /// First spawn to the end of Init (runtime and all extensions called `next`).
    pub init_duration: Duration,
}

/// Why Init failed, with everything needed to assert on it.
#[derive(Debug, Clone)]
pub struct InitFailure {
    pub reason: String,
    /// `(extension name, Lambda-Extension-Function-Error-Type, body)` of each `/extension/init/error`.
    pub extension_init_errors: Vec<(String, String, String)>,
    /// `(error type, body)` of a `/runtime/init/error`.
    pub runtime_init_error: Option<(String, String)>,
    /// Exit of every process that ended (by itself, or killed by the harness afterwards).
    pub exits: Vec<(String, ExitInfo)>,
    pub logs: Vec<LogLine>,
}

impl std::fmt::Display for InitFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason)?;
        for (name, ty, body) in &self.extension_init_errors {
            write!(f, "; {name} init error {ty}: {body}")?;
        }
        if let Some((ty, body)) = &self.runtime_init_error {
            write!(f, "; runtime init error {ty}: {body}")?;
        }
        for (name, exit) in &self.exits {
            write!(f, "; {name}: {exit}")?;
        }
        let tail: Vec<_> = self
            .logs
            .iter()
            .rev()
            .take(15)
            .rev()
            .map(|l| format!("{}: {}", l.process, l.line))
            .collect();
        if !tail.is_empty() {
            write!(f, "\nlast log lines:\n{}", tail.join("\n"))?;
        }
        Ok(())
    }
}

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
    /// Starts the environment and runs its Init phase. Fails (killing everything) when Init fails.
    pub async fn start(cfg: EnvConfig) -> Result<Self> {
        let echo = cfg.echo_logs || std::env::var(HARNESS_LOGS_ENV).is_ok_and(|v| v == "1");
        let journal = Arc::new(Journal::new(echo));
        let function_path = bins::locate(&cfg.function)?;
        let ext_paths: Vec<PathBuf> = cfg.extensions.iter().map(|e| bins::locate(e)).collect::<Result<_>>()?;
        let ext_names: Vec<String> = ext_paths
            .iter()
            .map(|p| p.file_name().unwrap_or_default().to_string_lossy().into_owned())
            .collect();
        let freeze_mode = cfg.freeze && !cfg.managed_instances;

        let sim = Simulator::builder()
            .function_name(cfg.function_name.clone())
            .memory_size_mb(cfg.memory_mb)
            .invocation_timeout(cfg.timeout)
            .init_timeout(cfg.init_timeout)
            // The simulator waits this long for extensions' `next` before freezing anyway: Lambda bounds
            // runtime plus extensions by the function timeout.
            .extension_ready_timeout(cfg.timeout)
            // Only bounds how long the simulator waits to *deliver* SHUTDOWN; the deadline is the harness's.
            .shutdown_timeout(Duration::from_secs(10))
            .handler("bootstrap")
            .account_id(ACCOUNT_ID)
            .freeze_mode(if freeze_mode {
                FreezeMode::Process
            } else {
                FreezeMode::None
            })
            .build()
            .await
            .map_err(|e| HarnessError::Simulator(e.to_string()))?;

        let prefix = match cfg.runtime_api_form {
            RuntimeApiForm::HostPort => String::new(),
            RuntimeApiForm::UrlWithPrefix => URL_PREFIX.to_string(),
        };
        let telemetry = telemetry::TelemetryApi::new(
            telemetry::TelemetrySettings {
                enabled: cfg.telemetry_api,
                managed_instances: cfg.managed_instances,
                function_name: cfg.function_name.clone(),
                memory_mb: cfg.memory_mb,
            },
            journal.clone(),
        );
        let front = Front::start(
            FrontConfig {
                upstream: sim.addr(),
                extension_names: ext_names.clone(),
                managed_instances: cfg.managed_instances,
                prefix: prefix.clone(),
                telemetry: telemetry.clone(),
            },
            journal.clone(),
        )
        .await?;
        let runtime_api = match cfg.runtime_api_form {
            RuntimeApiForm::HostPort => format!("127.0.0.1:{}", front.addr.port()),
            RuntimeApiForm::UrlWithPrefix => {
                format!("http://127.0.0.1:{}{prefix}", front.addr.port())
            }
        };

        let core_port = cfg.core_port.unwrap_or_else(free_port);
        let session_token = format!("IQoJb3JpZ2luX2Vj{}", random_hex(24));
        let core_token = match &cfg.token {
            CoreToken::Random => random_hex(16),
            CoreToken::Fixed(t) => t.clone(),
            CoreToken::SessionToken => session_token.clone(),
        };

        let mut env: BTreeMap<String, String> = sim.lambda_env_vars().into_iter().collect();
        env.insert("AWS_LAMBDA_RUNTIME_API".into(), runtime_api);
        env.insert(
            "AWS_ACCESS_KEY_ID".into(),
            format!("ASIA{}", random_hex(8).to_uppercase()),
        );
        env.insert("AWS_SECRET_ACCESS_KEY".into(), random_hex(20));
        env.insert("AWS_SESSION_TOKEN".into(), session_token);
        env.insert("AWS_LAMBDA_FUNCTION_ARN".into(), function_arn(&cfg.function_name));
        if cfg.managed_instances {
            env.insert(
                "AWS_LAMBDA_INITIALIZATION_TYPE".into(),
                "lambda-managed-instances".into(),
            );
            env.insert("AWS_LAMBDA_MAX_CONCURRENCY".into(), cfg.max_concurrency.to_string());
        }
        env.insert(CORE_PORT_ENV.into(), core_port.to_string());
        // Every environment shares this machine's loopback (each Lambda sandbox has its own): a port of its own.
        env.insert(telemetry::TELEMETRY_PORT_ENV.into(), free_port().to_string());
        if cfg.token != CoreToken::SessionToken {
            env.insert(CORE_TOKEN_ENV.into(), core_token.clone());
        }
        for var in PASSTHROUGH_VARS {
            if let Ok(v) = std::env::var(var) {
                env.insert(var.into(), v);
            }
        }
        for (k, v) in &cfg.env {
            env.insert(k.clone(), v.clone());
        }
        let mut ext_env = env.clone();
        for var in RUNTIME_ONLY_VARS {
            ext_env.remove(var);
        }

        let dir = tempfile::Builder::new().prefix("mk-lambda-").tempdir()?;
        let sim = Arc::new(sim);
        let started = Instant::now();
        telemetry.init_start();
        let init_deadline = tokio::time::Instant::from_std(started + cfg.init_timeout);

        // Extension init: all extension files start in parallel.
        let mut extensions = Vec::new();
        for (name, path) in ext_names.iter().zip(&ext_paths) {
            let p = Proc::spawn(name, path, Role::Extension, &ext_env, dir.path(), &journal)?;
            if freeze_mode {
                sim.register_freeze_pid(group_of(p.pid));
            }
            extensions.push(p);
        }
        let n_ext = extensions.len();
        let registered = journal
            .wait_for(init_deadline, |ev, _| {
                if let Some(fail) = init_problem(ev) {
                    return Some(Err(fail));
                }
                let names: std::collections::HashSet<&str> = ev
                    .iter()
                    .filter_map(|e| match &e.kind {
                        ApiEventKind::ExtensionRegistered { name, .. } => Some(name.as_str()),
                        _ => None,
                    })
                    .collect();
                (names.len() >= n_ext).then_some(Ok(()))
            })
            .await
            .unwrap_or_else(|| {
                Err(format!(
                    "extensions did not register within {:?} (Init limit)",
                    cfg.init_timeout
                ))
            });

        // Runtime init starts only once every extension has registered.
        if let Err(reason) = registered {
            return Err(init_failed(reason, extensions, &journal).await);
        }
        let runtime = Proc::spawn(
            &cfg.function_name,
            &function_path,
            Role::Runtime,
            &env,
            dir.path(),
            &journal,
        )?;
        if freeze_mode {
            sim.register_freeze_pid(group_of(runtime.pid));
        }

        // Init ends when the runtime and every extension have called `next`.
        let ready = journal
            .wait_for(init_deadline, |ev, _| {
                if let Some(fail) = init_problem(ev) {
                    return Some(Err(fail));
                }
                let runtime_next = ev.iter().any(|e| matches!(e.kind, ApiEventKind::RuntimeNext));
                let ext_next = ev
                    .iter()
                    .filter_map(|e| match &e.kind {
                        ApiEventKind::ExtensionNext { name, .. } => Some(name.as_str()),
                        _ => None,
                    })
                    .collect::<std::collections::HashSet<_>>()
                    .len();
                (runtime_next && ext_next >= n_ext).then_some(Ok(()))
            })
            .await
            .unwrap_or_else(|| Err(format!("Init did not complete within {:?}", cfg.init_timeout)));
        if let Err(reason) = ready {
            let procs: Vec<Proc> = extensions.into_iter().chain(std::iter::once(runtime)).collect();
            return Err(init_failed(reason, procs, &journal).await);
        }

        let (init, ext_ids) = init_report(&journal.events(), &extensions, &runtime, started);
        telemetry.init_done(init.init_duration);
        Ok(Self {
            cfg,
            sim: Mutex::new(Some(sim)),
            front,
            journal,
            extensions,
            runtime,
            core_port,
            core_token,
            freeze_mode,
            manual_frozen: AtomicBool::new(false),
            init,
            ext_ids,
            _dir: dir,
        })
    }

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

    /// The environment's Telemetry API: the platform events emitted (e.g. each `platform.report`).
    pub fn telemetry(&self) -> &telemetry::TelemetryApi {
        &self.front.telemetry
    }

    fn pids(&self) -> Vec<u32> {
        self.processes().filter(|p| !p.has_exited()).map(|p| p.pid).collect()
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
                ev.iter().find_map(|e| match &e.kind {
                    ApiEventKind::RuntimeResponse { request_id } if *request_id == rid => Some((e.at, None)),
                    ApiEventKind::RuntimeError { request_id, error_type } if *request_id == rid => {
                        Some((e.at, Some(error_type.clone())))
                    }
                    ApiEventKind::ProcessExited {
                        role: Role::Runtime,
                        exit,
                        ..
                    } if e.at >= since => Some((e.at, Some(format!("Runtime.ExitError ({exit})")))),
                    _ => None,
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
            .iter()
            .filter_map(|e| match &e.kind {
                ApiEventKind::ExtensionRegistered { id, events, .. }
                    if events.iter().any(|ev| ev.eq_ignore_ascii_case("INVOKE")) =>
                {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect();
        let settle_deadline = tokio::time::Instant::now() + self.cfg.timeout;
        let overhead = self
            .journal
            .wait_for(settle_deadline, |ev, _| {
                let mut last = done_at;
                for id in &invoke_subscribers {
                    // Ready = a `next` after this INVOKE was delivered to it (possibly before the runtime answered).
                    let delivered = ev.iter().position(|e| {
                        matches!(&e.kind, ApiEventKind::ExtensionEvent { id: eid, request_id: Some(r), .. } if eid == id && *r == rid)
                    });
                    let next = delivered.and_then(|i| {
                        ev[i..].iter().find_map(|e| match &e.kind {
                            ApiEventKind::ExtensionNext { id: eid, .. } if eid == id => Some(e.at),
                            _ => None,
                        })
                    });
                    // An extension that died is not waited for (Lambda would report Extension.Crash).
                    let died = ev.iter().any(|e| matches!(&e.kind, ApiEventKind::ProcessExited { role: Role::Extension, .. }));
                    match next {
                        Some(at) => last = last.max(at),
                        None if died => {}
                        None => return None,
                    }
                }
                Some(last - done_at)
            })
            .await;
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
        Ok(InvokeOutcome {
            request_id: rid,
            status,
            response,
            error,
            duration: done_at - pending.enqueued_at,
            extensions_overhead: overhead,
            frozen,
        })
    }

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
            .iter()
            .filter_map(|e| match &e.kind {
                ApiEventKind::ExtensionRegistered { name, events, .. } => Some((
                    name.clone(),
                    events.iter().any(|ev| ev.eq_ignore_ascii_case("SHUTDOWN")),
                )),
                _ => None,
            })
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
                    let id = ids.get(n).cloned().unwrap_or_default();
                    ev.iter().any(|e| match &e.kind {
                        ApiEventKind::ProcessExited {
                            name,
                            role: Role::Extension,
                            ..
                        } => name == n,
                        ApiEventKind::ExtensionNextAfterShutdown { id: eid, .. } => *eid == id,
                        _ => false,
                    })
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
            let received_shutdown = events.iter().any(|e| {
                matches!(&e.kind, ApiEventKind::ExtensionEvent { id: eid, event_type, .. } if *eid == id && event_type == "SHUTDOWN")
            });
            let acknowledged_via_next = events
                .iter()
                .any(|e| matches!(&e.kind, ApiEventKind::ExtensionNextAfterShutdown { id: eid, .. } if *eid == id));
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
fn init_problem(ev: &[ApiEvent]) -> Option<String> {
    ev.iter().find_map(|e| match &e.kind {
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
        ApiEventKind::ProcessExited { role, name, exit, .. } => Some(format!(
            "{} {name} exited during Init ({exit}): {}",
            if *role == Role::Extension {
                "extension"
            } else {
                "runtime"
            },
            if *role == Role::Extension {
                "Extension.Crash"
            } else {
                "Runtime.ExitError"
            }
        )),
        _ => None,
    })
}

/// Builds the InitFailure: lets extensions that reported an error exit by themselves (bounded), kills the rest.
async fn init_failed(reason: String, mut procs: Vec<Proc>, journal: &Arc<Journal>) -> HarnessError {
    let grace = tokio::time::Instant::now() + Duration::from_millis(1500);
    let reporters: Vec<String> = journal
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            ApiEventKind::ExtensionInitError { name, .. } | ApiEventKind::ExtensionExitError { name, .. } => {
                name.clone()
            }
            _ => None,
        })
        .collect();
    for p in procs.iter().filter(|p| reporters.contains(&p.name)) {
        p.wait_exit(grace).await;
    }
    for p in &procs {
        p.signal(Signal::SIGCONT);
        p.signal(Signal::SIGKILL);
    }
    let drain = tokio::time::Instant::now() + Duration::from_secs(2);
    for p in procs.iter_mut() {
        p.wait_exit(drain).await;
        p.drain_logs(drain).await;
    }
    let events = journal.events();
    let extension_init_errors = events
        .iter()
        .filter_map(|e| match &e.kind {
            ApiEventKind::ExtensionInitError {
                name, error_type, body, ..
            } => Some((name.clone().unwrap_or_default(), error_type.clone(), body.clone())),
            _ => None,
        })
        .collect();
    let runtime_init_error = events.iter().find_map(|e| match &e.kind {
        ApiEventKind::RuntimeInitError { error_type, body } => Some((error_type.clone(), body.clone())),
        _ => None,
    });
    let exits = procs
        .iter()
        .filter_map(|p| p.exit().map(|(_, e)| (p.name.clone(), e)))
        .collect();
    HarnessError::InitFailed(Box::new(InitFailure {
        reason,
        extension_init_errors,
        runtime_init_error,
        exits,
        logs: journal.logs(),
    }))
}

fn init_report(
    ev: &[ApiEvent],
    extensions: &[Proc],
    runtime: &Proc,
    started: Instant,
) -> (InitReport, HashMap<String, String>) {
    let mut ids = HashMap::new();
    let mut exts = Vec::new();
    let mut end = started;
    for p in extensions {
        let reg = ev.iter().find_map(|e| match &e.kind {
            ApiEventKind::ExtensionRegistered { id, name, events } if *name == p.name => {
                Some((e.at, id.clone(), events.clone()))
            }
            _ => None,
        });
        let Some((reg_at, id, events)) = reg else {
            continue;
        };
        let next_at = ev
            .iter()
            .find_map(|e| match &e.kind {
                ApiEventKind::ExtensionNext { id: eid, .. } if *eid == id => Some(e.at),
                _ => None,
            })
            .unwrap_or(reg_at);
        end = end.max(next_at);
        ids.insert(p.name.clone(), id.clone());
        exts.push(ExtensionInit {
            name: p.name.clone(),
            pid: p.pid,
            id,
            events,
            spawn_to_registered: reg_at.saturating_duration_since(p.spawned_at),
            spawn_to_first_next: next_at.saturating_duration_since(p.spawned_at),
        });
    }
    let rt_next = ev
        .iter()
        .find_map(|e| matches!(e.kind, ApiEventKind::RuntimeNext).then_some(e.at))
        .unwrap_or(end);
    end = end.max(rt_next);
    (
        InitReport {
            extensions: exts,
            runtime_spawn_to_first_next: rt_next.saturating_duration_since(runtime.spawned_at),
            init_duration: end.saturating_duration_since(started),
        },
        ids,
    )
}

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
