//! Shared application state: configuration, the database side, the Upbit side and the shutdown flag. Cheap to clone
//! (one `Arc`); handlers only ever see this.

use crate::config::Config;
use crate::db::Db;
use crate::error::Error;
use crate::upbit::Upbit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    db: Db,
    upbit: Upbit,
    shutting_down: AtomicBool,
}

impl AppState {
    /// Builds the pool and the Upbit client without connecting (see [`AppState::warm_up`]). Needs a Tokio runtime.
    ///
    /// # Errors
    /// TLS setup failed (unreadable `sslrootcert`, ...).
    pub fn new(config: Config) -> Result<Self, Error> {
        let upbit = Upbit::new(&config)?;
        // Secrets Manager is called with the Upbit client: one HTTP and TLS stack in the extension.
        let db = Db::with_http(&config, config.database_secret.is_some().then(|| upbit.http_client()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                db,
                upbit,
                shutting_down: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The database side.
    #[must_use]
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The Upbit side.
    #[must_use]
    pub fn upbit(&self) -> &Upbit {
        &self.inner.upbit
    }

    /// Opens one PostgreSQL connection and the Upbit TLS connection, concurrently. Never fails: outcomes show in
    /// `/ping` and the logs.
    pub async fn warm_up(&self) {
        futures_util::future::join(self.db().warm_up(), self.upbit().warm_up()).await;
    }

    /// From now on every new request gets 503 `shutting_down`.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether SHUTDOWN began.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Closes the pool (sessions end on the server) within `budget`.
    pub async fn close(&self, budget: Duration) {
        self.begin_shutdown();
        self.db().close(budget).await;
    }
}
