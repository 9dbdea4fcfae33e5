//! The processes of an environment: spawned with a Lambda-like environment, their stdout/stderr captured line by
//! line into the journal, their exit recorded as soon as it happens, and signals sent by pid (SIGSTOP/SIGCONT for
//! freezing, SIGTERM/SIGKILL for shutdown and fault tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::journal::{ApiEventKind, ExitInfo, Journal, LogLine, Role, Stream};
use crate::error::{HarnessError, Result};

/// A process of the environment.
pub struct Proc {
    pub name: String,
    pub path: PathBuf,
    pub role: Role,
    pub pid: u32,
    pub spawned_at: Instant,
    exited: Arc<AtomicBool>,
    exit_rx: watch::Receiver<Option<(Instant, ExitInfo)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Spawns `path` with exactly `env` (the parent's environment is not inherited, as on Lambda).
    pub(crate) fn spawn(
        name: &str,
        path: &Path,
        role: Role,
        env: &BTreeMap<String, String>,
        cwd: &Path,
        journal: &Arc<Journal>,
    ) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(path);
        cmd.env_clear()
            .envs(env)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        isolate(&mut cmd);
        let spawned_at = Instant::now();
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            what: format!("{name} ({})", path.display()),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let mut tasks = Vec::new();
        if let Some(out) = child.stdout.take() {
            tasks.push(tokio::spawn(read_lines(
                out,
                name.to_string(),
                pid,
                role,
                Stream::Stdout,
                journal.clone(),
            )));
        }
        if let Some(err) = child.stderr.take() {
            tasks.push(tokio::spawn(read_lines(
                err,
                name.to_string(),
                pid,
                role,
                Stream::Stderr,
                journal.clone(),
            )));
        }
        let exited = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit_rx) = watch::channel(None);
        {
            let journal = journal.clone();
            let exited = exited.clone();
            let name = name.to_string();
            // This task owns the Child: dropping it (env dropped) kills the process via kill_on_drop.
            tasks.push(tokio::spawn(async move {
                if let Ok(status) = child.wait().await {
                    let exit = ExitInfo::from_status(status);
                    exited.store(true, Ordering::SeqCst);
                    let _ = exit_tx.send(Some((Instant::now(), exit)));
                    journal.push(ApiEventKind::ProcessExited { role, name, pid, exit });
                }
            }));
        }
        Ok(Self {
            name: name.to_string(),
            path: path.to_path_buf(),
            role,
            pid,
            spawned_at,
            exited,
            exit_rx,
            tasks,
        })
    }

    /// Whether the process has ended (and been reaped).
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::SeqCst)
    }

    /// When and how it ended, if it has.
    pub fn exit(&self) -> Option<(Instant, ExitInfo)> {
        *self.exit_rx.borrow()
    }

    /// Waits until the process ends or `deadline` passes.
    pub async fn wait_exit(&self, deadline: tokio::time::Instant) -> Option<(Instant, ExitInfo)> {
        let mut rx = self.exit_rx.clone();
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|e| e.is_some())).await;
        match waited {
            Ok(Ok(v)) => *v,
            _ => self.exit(),
        }
    }

    /// The process state letter from `/proc/<pid>/stat` (`T` = stopped, i.e. frozen; `?` when gone).
    pub fn state(&self) -> char {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .unwrap_or('?')
    }

    /// Peak resident set size so far (`VmHWM`, KiB), while the process exists.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.status_kib("VmHWM:")
    }

    /// Current resident set size (`VmRSS`, KiB), while the process exists.
    pub fn rss_kib(&self) -> Option<u64> {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with(field))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Waits (bounded) until the kernel shows the process stopped (`true`) or not stopped (`false`): signals are
    /// delivered asynchronously, so right after SIGSTOP/SIGCONT the state may not have changed yet.
    pub async fn wait_stopped(&self, stopped: bool, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if (self.state() == 'T') == stopped {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Sends `signal` to the process and its children (its process group) unless it has already been reaped (so
    /// a recycled pid is never hit). Freezing the group is what Lambda does: the whole sandbox stops.
    pub fn signal(&self, signal: Signal) -> bool {
        if self.has_exited() || self.pid == 0 {
            return false;
        }
        killpg(Pid::from_raw(self.pid as i32), signal).is_ok() || kill(Pid::from_raw(self.pid as i32), signal).is_ok()
    }

    /// Aborts the reader tasks (used on drop, after the process is gone).
    pub(crate) fn abort_tasks(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Waits (bounded) until both output pipes reached EOF, so the journal holds every line the process wrote.
    pub(crate) async fn drain_logs(&mut self, deadline: tokio::time::Instant) {
        // The last task is the exit watcher; the others are the two readers.
        let n = self.tasks.len().saturating_sub(1);
        for t in self.tasks.iter_mut().take(n) {
            if !t.is_finished() {
                let _ = tokio::time::timeout_at(deadline, t).await;
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGKILL works on stopped (frozen) processes too; the exit watcher task reaps it. The group is killed even
        // when the leader is gone, so no child of it (a shell's curl, say) outlives the environment.
        if self.pid != 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// Own process group (so the harness can signal a process with its children) and SIGKILL when the harness dies
/// (so a killed test, e.g. by a test-runner timeout, leaves no extension listening or holding database sessions).
#[allow(unsafe_code)] // `pre_exec` is the only way to call prctl(PR_SET_PDEATHSIG) in the child
fn isolate(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    // SAFETY: the closure only calls prctl, which is async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from));
    }
}

async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    name: String,
    pid: u32,
    role: Role,
    stream: Stream,
    journal: Arc<Journal>,
) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                journal.push_log(LogLine {
                    at: Instant::now(),
                    process: name.clone(),
                    pid,
                    role,
                    stream,
                    line: String::from_utf8_lossy(&buf).into_owned(),
                });
            }
        }
    }
}
