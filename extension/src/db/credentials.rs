//! Where the pool's connection settings come from: fixed ([`Source::Fixed`], `MAKENAIDE_DATABASE_URL`, with or
//! without RDS IAM tokens) or a Secrets Manager secret ([`Source::Secret`], `MAKENAIDE_DATABASE_SECRET_ID`).
//!
//! A secret is fetched in the background at start ([`SecretCredentials::start`]); database requests wait for it
//! within the connect timeout and otherwise answer 503 `db_credentials_unavailable` with what is pending or what
//! failed. When PostgreSQL refuses the password (28P01: rotated), [`SecretCredentials::refresh_after_rejected`]
//! reads the secret again, one fetch at a time: every connection refused meanwhile waits for that one fetch, then
//! retries once with its result. A failed fetch keeps the previous settings. Fetches after a failed fetch, and
//! re-reads after refused passwords, are spaced by [`REFETCH_MIN_INTERVAL`], so a wrong password never turns into
//! a stream of Secrets Manager calls.
//!
//! The secret's value lives only in memory, inside the connection settings; it is never logged.

use super::pool::{tls_config, Tls};
use crate::config::{DatabaseConfig, SecretSource, SslMode};
use crate::error::Error;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Fetches closer together than this are not made (one second: rotation finishes within it, a wrong password
/// costs at most one call a second).
pub const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Connection settings of one generation of credentials, prepared for connecting (TLS configuration built once).
pub struct Target {
    /// tokio-postgres settings (password included, or IAM below), with the pool's socket options applied.
    pub pg: tokio_postgres::Config,
    /// TLS per `sslmode`.
    pub tls: Tls,
    /// `user@host:port/db` for logs.
    pub display: String,
    /// RDS IAM authentication: a token per new connection.
    pub iam: Option<crate::aws::rds_iam::IamAuth>,
    /// 0 for fixed settings; 1, 2, ... per successful fetch of a secret.
    pub generation: u64,
}

impl Target {
    /// Prepares `db` for connecting: `adjust` applies the pool's socket options, TLS is set up for `sslmode`.
    ///
    /// # Errors
    /// The CA bundle cannot be read.
    pub fn new(
        db: &DatabaseConfig,
        generation: u64,
        adjust: impl Fn(&mut tokio_postgres::Config),
    ) -> Result<Self, String> {
        let mut pg = db.pg.clone();
        adjust(&mut pg);
        let tls = match db.ssl_mode {
            SslMode::Disable => Tls::Disabled,
            mode => Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                mode,
                db.ssl_root_cert.as_deref(),
            )?)),
        };
        Ok(Self {
            pg,
            tls,
            display: db.display.clone(),
            iam: db.iam.clone(),
            generation,
        })
    }
}

/// The pool's source of connection settings.
#[derive(Clone)]
pub enum Source {
    /// `MAKENAIDE_DATABASE_URL`.
    Fixed(Arc<Target>),
    /// `MAKENAIDE_DATABASE_SECRET_ID`.
    Secret(Arc<SecretCredentials>),
}

impl Source {
    /// The settings to connect with now (`None` while a secret has not been fetched yet).
    #[must_use]
    pub fn current(&self) -> Option<Arc<Target>> {
        match self {
            Self::Fixed(t) => Some(t.clone()),
            Self::Secret(s) => s.current(),
        }
    }
}

#[derive(Clone, Default)]
struct State {
    target: Option<Arc<Target>>,
    generation: u64,
    fetching: bool,
    /// When the last fetch ended (success or failure).
    last_fetch: Option<Instant>,
    /// The last fetch's failure, cleared by a success.
    error: Option<String>,
    /// When a refused password last made a fetch start (those are spaced by [`REFETCH_MIN_INTERVAL`]).
    last_reread: Option<Instant>,
}

/// The credentials of a Secrets Manager secret, fetched in the background and again after a rejected password.
pub struct SecretCredentials {
    source: SecretSource,
    http: reqwest::Client,
    adjust: Box<dyn Fn(&mut tokio_postgres::Config) + Send + Sync>,
    state: watch::Sender<State>,
    started: Instant,
}

impl SecretCredentials {
    /// Prepares the source (no call yet: [`SecretCredentials::start`]). `adjust` applies the pool's socket options
    /// to every generation of settings.
    #[must_use]
    pub fn new(
        source: SecretSource,
        http: reqwest::Client,
        adjust: impl Fn(&mut tokio_postgres::Config) + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            source,
            http,
            adjust: Box::new(adjust),
            state: watch::channel(State::default()).0,
            started: Instant::now(),
        })
    }

    /// The secret's ARN or name.
    #[must_use]
    pub fn secret_id(&self) -> &str {
        &self.source.secret_id
    }

    /// The latest successfully fetched settings.
    #[must_use]
    pub fn current(&self) -> Option<Arc<Target>> {
        self.state.borrow().target.clone()
    }

    /// Starts the first fetch in the background (at Init: never blocks registration or `next`).
    pub fn start(self: &Arc<Self>) {
        self.fetch_unless_running();
    }

    /// Starts a fetch unless one is running; returns whether this call started it.
    fn fetch_unless_running(self: &Arc<Self>) -> bool {
        let started = self.state.send_if_modified(|s| {
            if s.fetching {
                return false;
            }
            s.fetching = true;
            true
        });
        if started {
            let this = self.clone();
            tokio::spawn(async move { this.fetch().await });
        }
        started
    }

    async fn fetch(self: Arc<Self>) {
        let started = Instant::now();
        let outcome = crate::aws::secrets::fetch_database(&self.http, &self.source)
            .await
            .and_then(|db| {
                let generation = self.state.borrow().generation + 1;
                Target::new(&db, generation, &self.adjust).map_err(|message| crate::aws::secrets::FetchError {
                    message: format!("secret {}: {message}", self.source.secret_id),
                    transient: false,
                })
            });
        let elapsed_us = started.elapsed().as_micros() as u64;
        match &outcome {
            Ok(t) => tracing::info!(
                secret_id = %self.source.secret_id,
                target_db = %t.display,
                generation = t.generation,
                elapsed_us,
                "database secret fetched"
            ),
            Err(e) => tracing::warn!(
                secret_id = %self.source.secret_id,
                error = %e,
                elapsed_us,
                "database secret fetch failed"
            ),
        }
        self.state.send_modify(|s| {
            s.fetching = false;
            s.last_fetch = Some(Instant::now());
            match outcome {
                Ok(t) => {
                    s.generation = t.generation;
                    s.target = Some(Arc::new(t));
                    s.error = None;
                }
                Err(e) => s.error = Some(e.message),
            }
        });
    }

    /// Waits (at most `wait`) for the fetch in flight to end.
    async fn wait_fetch(&self, wait: Duration) {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| !s.fetching)).await;
    }

    /// The settings for a request: at once when fetched; else waits up to `wait` for the fetch in flight (starting
    /// one when the last failure is older than [`REFETCH_MIN_INTERVAL`]).
    ///
    /// # Errors
    /// 503 `db_credentials_unavailable`: still pending after `wait`, or the fetch failed (its message says what to
    /// fix).
    pub async fn ready(self: &Arc<Self>, wait: Duration) -> Result<Arc<Target>, Error> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        let retry = {
            let s = self.state.borrow();
            s.fetching || s.last_fetch.is_none_or(|at| at.elapsed() >= REFETCH_MIN_INTERVAL)
        };
        if retry {
            self.fetch_unless_running();
            self.wait_fetch(wait).await;
        }
        let s = self.state.borrow().clone();
        match (s.target, s.error) {
            (Some(t), _) => Ok(t),
            (None, Some(e)) if !s.fetching => Err(Error::DbCredentials(format!(
                "the database credentials could not be read: {e} (read again by the first request 1 s after the \
                 failure)"
            ))),
            _ => Err(Error::DbCredentials(format!(
                "the database credentials are still being read from Secrets Manager (secret {}, for {} ms so far): \
                 retry shortly",
                self.source.secret_id,
                self.started.elapsed().as_millis()
            ))),
        }
    }

    /// PostgreSQL refused the password of generation `rejected`: returns newer settings, fetching the secret again
    /// unless another connection already did (or is doing it: then waits for that fetch, at most `wait`). `None`
    /// when there is nothing newer (the secret still holds the refused password, or the fetch failed).
    pub async fn refresh_after_rejected(self: &Arc<Self>, rejected: u64, wait: Duration) -> Option<Arc<Target>> {
        let newer = |s: &State| s.target.clone().filter(|t| t.generation > rejected);
        let (fetching, recent) = {
            let s = self.state.borrow();
            if let Some(t) = newer(&s) {
                return Some(t);
            }
            (
                s.fetching,
                s.last_reread.is_some_and(|at| at.elapsed() < REFETCH_MIN_INTERVAL),
            )
        };
        if fetching || !recent {
            if !fetching {
                self.state.send_modify(|s| s.last_reread = Some(Instant::now()));
            }
            if self.fetch_unless_running() {
                tracing::info!(
                    secret_id = %self.source.secret_id,
                    generation = rejected,
                    "postgres refused the password (28P01): reading the secret again"
                );
            }
            self.wait_fetch(wait).await;
        }
        let s = self.state.borrow();
        newer(&s)
    }
}
