//! The Init phase: every extension started at once, the runtime once all have registered, Init over when the
//! runtime and every extension have called `next`; its timings ([`InitReport`]) or why it failed
//! ([`InitFailure`]).

use super::journal::Events;
use super::*;

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
        let front = Front::start(
            FrontConfig {
                upstream: sim.addr(),
                extension_names: ext_names.clone(),
                managed_instances: cfg.managed_instances,
                prefix: prefix.clone(),
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
                if let Some(fail) = ev.init_problem() {
                    return Some(Err(fail));
                }
                let names: std::collections::HashSet<&str> = ev.registrations().iter().map(|r| r.name).collect();
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
                if let Some(fail) = ev.init_problem() {
                    return Some(Err(fail));
                }
                let runtime_next = ev.first_runtime_next().is_some();
                (runtime_next && ev.extensions_that_called_next().len() >= n_ext).then_some(Ok(()))
            })
            .await
            .unwrap_or_else(|| Err(format!("Init did not complete within {:?}", cfg.init_timeout)));
        if let Err(reason) = ready {
            let procs: Vec<Proc> = extensions.into_iter().chain(std::iter::once(runtime)).collect();
            return Err(init_failed(reason, procs, &journal).await);
        }

        let (init, ext_ids) = init_report(&journal.events(), &extensions, &runtime, started);
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
}

/// Builds the InitFailure: lets extensions that reported an error exit by themselves (bounded), kills the rest.
pub(super) async fn init_failed(reason: String, mut procs: Vec<Proc>, journal: &Arc<Journal>) -> HarnessError {
    let grace = tokio::time::Instant::now() + Duration::from_millis(1500);
    let reporters = journal.events().extensions_that_reported_errors();
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
    let extension_init_errors = events.extension_init_errors();
    let runtime_init_error = events.runtime_init_error();
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

pub(super) fn init_report(
    ev: &[ApiEvent],
    extensions: &[Proc],
    runtime: &Proc,
    started: Instant,
) -> (InitReport, HashMap<String, String>) {
    let mut ids = HashMap::new();
    let mut exts = Vec::new();
    let mut end = started;
    for p in extensions {
        let Some(reg) = ev.registration_of(&p.name) else {
            continue;
        };
        let (reg_at, id, events) = (reg.at, reg.id.to_owned(), reg.events.to_vec());
        let next_at = ev.next_of(&id, 0).unwrap_or(reg_at);
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
    let rt_next = ev.first_runtime_next().unwrap_or(end);
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
