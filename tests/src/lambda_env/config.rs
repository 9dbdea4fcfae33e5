//! What an environment is started with: the contract's variables as the harness sets them, how the Runtime API
//! address and the token are given to the processes, and [`EnvConfig`].

use super::*;

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
pub(super) const RUNTIME_ONLY_VARS: [&str; 10] = [
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
pub(super) const PASSTHROUGH_VARS: [&str; 2] = ["RUST_LOG", "RUST_BACKTRACE"];
/// Path prefix used for [`RuntimeApiForm::UrlWithPrefix`] (what `cargo lambda watch` uses).
pub(super) const URL_PREFIX: &str = "/.rt";

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
    pub(super) fn to_sim(self) -> lambda_simulator::ShutdownReason {
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
}
