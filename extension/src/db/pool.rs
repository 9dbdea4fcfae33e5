//! The PostgreSQL connection manager under bb8: connecting (TLS per `sslmode`, keepalives, `tcp_user_timeout`,
//! a hard connect bound), the per-connection prepared-statement cache, stale-connection detection without a
//! round trip, and the bookkeeping that lets SHUTDOWN close every session cleanly.
//!
//! Why a custom `ManageConnection` rather than `bb8_postgres::PostgresConnectionManager`:
//! - its `is_valid` is `simple_query("")`, one round trip on every checkout. After a Lambda thaw a dead socket is
//!   usually already *known* dead (the server's FIN/FATAL sits in the receive buffer and the connection task sees it
//!   as soon as it runs), so our `is_valid` only checks `Client::is_closed()` and a `broken` flag: zero round trips.
//!   The one case it cannot see (the request races the connection task) is handled by the caller retrying once on a
//!   fresh connection when the first round trip fails at the connection level (see `db::exec`).
//! - the connection type carries the statement cache (`PgConn::statements`), keyed by SQL text, so a repeated
//!   statement costs no Parse/Describe round trip.
//! - connection tasks are counted, so shutdown can wait for every `Terminate` to be sent.
//! - each connection can be retired two ways: gracefully (`retire`: healthy, but its session is no longer the one
//!   a fresh connection would have) or at once (`broken`: its state is unknown, e.g. abandoned mid-statement or in
//!   COPY): dropping a broken connection drops its socket, so the backend ends (and rolls back) instead of sitting
//!   `idle in transaction` behind a connection task that waits for a reply that never comes.
//! - each connection watches the session parameters PostgreSQL reports (`ParameterStatus`: `TimeZone`,
//!   `session_authorization`, `is_superuser`, `DateStyle`, ...; also `search_path` and `role` on servers that
//!   report them): [`PgConn::session_changed`] compares them with their values at connect, for free (no round
//!   trip), so a request that changed one for the session gets its connection retired.
//! - the connection settings come from a [`Source`]: fixed, or a Secrets Manager secret read again when the server
//!   refuses the password (28P01), after which the connection is retried once; with RDS IAM authentication each new
//!   connection gets a token as its password.

use super::credentials::{Source, Target};
use crate::config::SslMode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Notify};
use tokio_postgres::{CancelToken, Client, NoTls, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Prepared statements kept per connection before the cache is flushed (bounded memory on the server too).
const STATEMENT_CACHE_CAPACITY: usize = 256;
/// TCP keepalive: idle time before the first probe. Short, because Lambda NATs/firewalls drop idle flows at 350 s
/// and a silently dropped connection should be found before a request needs it.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;
/// Linux `TCP_USER_TIMEOUT`: unacknowledged data older than this kills the socket. Bounds a write into a black
/// hole (peer vanished without RST, e.g. after a failover) instead of hanging for the kernel's ~15 minutes.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// `is_valid` failure: a pooled connection found dead at checkout (bb8 then opens or picks another one).
pub const DISCARDED: &str = "stale connection discarded at checkout";
/// SQLSTATE `invalid_password`: wrong password, an expired IAM token, or a rotated secret.
pub const INVALID_PASSWORD: &str = "28P01";

/// Error type of the manager: a message safe to show and the SQLSTATE when the server sent one.
#[derive(Clone, Debug)]
pub struct ConnectError {
    /// Human message (never contains the password: tokio-postgres does not echo it).
    pub message: String,
    /// SQLSTATE, e.g. `53300` (too many connections), `28P01` (bad password), `57P03` (starting up).
    pub sqlstate: Option<String>,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ConnectError {
    /// The contract's answer to a connection that could not be made: 503 `db_unavailable` with the real cause.
    #[must_use]
    pub fn unavailable(&self) -> crate::error::Error {
        crate::error::Error::DbUnavailable {
            message: format!(
                "PostgreSQL is unreachable: {} (retrying in the background)",
                self.message
            ),
            sqlstate: self.sqlstate.clone(),
        }
    }
}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(e: tokio_postgres::Error) -> Self {
        let sqlstate = e.code().map(|c| c.code().to_owned());
        let message = match e.as_db_error() {
            Some(db) => db.message().to_owned(),
            None => std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| format!("{e}: {s}")),
        };
        Self { message, sqlstate }
    }
}

/// Session parameters PostgreSQL reports with `ParameterStatus` when they change (`GUC_REPORT`), compared after
/// each request. Not `in_hot_standby` (the server's state, not the session's). Names a server does not report are
/// simply absent before and after.
const REPORTED_PARAMETERS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "IntervalStyle",
    "integer_datetimes",
    "is_superuser",
    "role",
    "scram_iterations",
    "search_path",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// Reads the connection task's view of the reported parameters: the first one whose value differs from its value
/// at connect.
type SessionProbe = Box<dyn Fn() -> Option<&'static str> + Send + Sync>;

/// A pooled connection plus what we remember about it.
pub struct PgConn {
    /// The tokio-postgres client (its connection task runs separately).
    pub client: Client,
    /// Prepared statements by SQL text (only when the statement cache is enabled).
    pub statements: HashMap<String, Statement>,
    /// Set when a request saw a connection-level failure or left the session in an unknown state: bb8 then
    /// discards the connection, and dropping it drops the socket at once (see [`Drop`]).
    pub broken: bool,
    /// Set when the session is healthy but no longer fresh (a reported parameter changed, opaque code ran): bb8
    /// discards the connection, which closes normally (`Terminate`).
    pub retire: bool,
    /// Set while a request runs on the connection: still set when the connection comes back means the request was
    /// abandoned midway (its future dropped, e.g. the caller hung up), so the backend may sit in a transaction.
    pub in_request: bool,
    /// Set once the request's `COMMIT` has been handed to the connection: from then on an abandoned or failed
    /// request's outcome is unknown (`db_outcome_unknown`), never "rolled back".
    pub commit_sent: bool,
    /// Set when that `COMMIT` was pipelined behind the statements (one round trip, see `db::exec`).
    pub commit_early: bool,
    probe: SessionProbe,
    /// Dropping the socket of a broken connection (see [`Drop`]).
    drop_socket: Option<oneshot::Sender<()>>,
    /// The TLS of this connection, for cancel requests (`None`: no TLS).
    cancel_tls: Option<MakeRustlsConnect>,
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if self.broken || self.in_request {
            if let Some(tx) = self.drop_socket.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Sends a PostgreSQL cancel request for whatever a connection's backend runs (a new TCP connection, with the
/// connection's TLS).
pub struct Canceller {
    token: CancelToken,
    tls: Option<MakeRustlsConnect>,
}

impl Canceller {
    /// Sends the cancel request (the server acts on it asynchronously; a backend that is idle ignores it).
    ///
    /// # Errors
    /// The cancel connection failed.
    pub async fn cancel(&self) -> Result<(), tokio_postgres::Error> {
        match &self.tls {
            None => self.token.cancel_query(NoTls).await,
            Some(make) => self.token.cancel_query(make.clone()).await,
        }
    }
}

impl PgConn {
    fn new(
        client: Client,
        probe: SessionProbe,
        drop_socket: oneshot::Sender<()>,
        cancel_tls: Option<MakeRustlsConnect>,
    ) -> Self {
        Self {
            client,
            statements: HashMap::new(),
            broken: false,
            retire: false,
            in_request: false,
            commit_sent: false,
            commit_early: false,
            probe,
            drop_socket: Some(drop_socket),
            cancel_tls,
        }
    }

    /// The first reported session parameter whose value is no longer the one the connection started with (the
    /// request changed it for the session, e.g. `set_config('TimeZone', ..., false)` inside a function).
    #[must_use]
    pub fn session_changed(&self) -> Option<&'static str> {
        (self.probe)()
    }

    /// A handle that can cancel what this connection's backend is running.
    #[must_use]
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.client.cancel_token(),
            tls: self.cancel_tls.clone(),
        }
    }

    /// Remembers a prepared statement, flushing the cache when full (dropping a `Statement` sends `Close`).
    pub fn cache_statement(&mut self, sql: &str, statement: Statement) {
        if self.statements.len() >= STATEMENT_CACHE_CAPACITY {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), statement);
    }
}

/// Counts live connection tasks and lets shutdown wait for them.
#[derive(Default)]
pub struct LiveConnections {
    count: AtomicUsize,
    changed: Notify,
}

impl LiveConnections {
    /// Live connection tasks right now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until no connection task is left, or `timeout` passes. Returns whether all are gone.
    pub async fn wait_all_closed(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

struct LiveGuard(Arc<LiveConnections>);

impl LiveGuard {
    fn new(live: Arc<LiveConnections>) -> Self {
        live.count.fetch_add(1, Ordering::SeqCst);
        Self(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// TLS of a connection.
pub enum Tls {
    /// `sslmode=disable`.
    Disabled,
    /// Every other mode.
    Rustls(MakeRustlsConnect),
}

/// The socket options every connection gets (applied to each generation of settings).
pub fn adjust(pg: &mut tokio_postgres::Config, connect_timeout: Duration) {
    pg.connect_timeout(connect_timeout)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    if pg.get_application_name().is_none() {
        // Lets operators (and tests) find this extension's sessions in pg_stat_activity.
        pg.application_name("makenaide-core");
    }
}

/// bb8 connection manager for PostgreSQL.
pub struct Manager {
    source: Source,
    connect_timeout: Duration,
    /// `statement_timeout` set on each new connection (`None`: left to each request's `SET LOCAL`).
    session_timeout: Option<Duration>,
    live: Arc<LiveConnections>,
    /// Flipped to `true` at shutdown: connection tasks still alive after the grace period drop their sockets.
    kill: watch::Receiver<bool>,
}

impl Manager {
    /// Builds the manager over a source of settings (TLS configuration is prepared once per generation of
    /// settings, in [`Target::new`]: webpki roots parsed once, not per connect).
    #[must_use]
    pub fn new(
        source: Source,
        connect_timeout: Duration,
        session_timeout: Option<Duration>,
        live: Arc<LiveConnections>,
        kill: watch::Receiver<bool>,
    ) -> Self {
        Self {
            source,
            connect_timeout,
            session_timeout,
            live,
            kill,
        }
    }

    /// One connection attempt with `target`'s settings, bounded by the connect timeout.
    async fn connect_to(&self, target: &Target) -> Result<PgConn, ConnectError> {
        let pg = match &target.iam {
            None => std::borrow::Cow::Borrowed(&target.pg),
            Some(iam) => {
                let mut pg = target.pg.clone();
                pg.password(iam.token().as_bytes());
                std::borrow::Cow::Owned(pg)
            }
        };
        // tokio-postgres' connect_timeout covers the TCP connect only; this bounds TLS + auth too.
        let attempt = async {
            let conn = match &target.tls {
                Tls::Disabled => {
                    let (client, connection) = pg.connect(NoTls).await?;
                    let (probe, drop_socket) = self.spawn_connection(connection);
                    PgConn::new(client, probe, drop_socket, None)
                }
                Tls::Rustls(make) => {
                    let (client, connection) = pg.connect(make.clone()).await?;
                    let (probe, drop_socket) = self.spawn_connection(connection);
                    PgConn::new(client, probe, drop_socket, Some(make.clone()))
                }
            };
            if let Some(t) = self.session_timeout {
                // Once per connection, so that a request sends `SET LOCAL` only when it needs another timeout.
                // Not a reported parameter: the session probe is unaffected.
                crate::metrics::inc(crate::metrics::Counter::DbRoundTrips);
                conn.client
                    .batch_execute(&format!(
                        "SET statement_timeout = {}",
                        t.as_millis().min(i32::MAX as u128)
                    ))
                    .await?;
            }
            Ok::<_, tokio_postgres::Error>(conn)
        };
        Ok(tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| ConnectError {
                message: format!(
                    "no answer within {} ms (MAKENAIDE_DB_CONNECT_TIMEOUT_MS)",
                    self.connect_timeout.as_millis()
                ),
                sqlstate: None,
            })??)
    }

    /// Runs the connection in a task of its own. The connection sits behind a mutex that the task holds only while
    /// polling it, so the probe reads the parameters as of the last message processed: a `ParameterStatus` always
    /// precedes the reply that ends the request (`ReadyForQuery`), which the connection hands over while the task
    /// holds the lock, so the probe, which takes it after that reply, cannot miss it.
    fn spawn_connection<S, T>(
        &self,
        connection: tokio_postgres::Connection<S, T>,
    ) -> (SessionProbe, oneshot::Sender<()>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let initial: Vec<Option<String>> = REPORTED_PARAMETERS
            .iter()
            .map(|name| connection.parameter(name).map(str::to_owned))
            .collect();
        // `Option`: the task takes the connection out and drops it when it ends. Dropping it is what fails the
        // client's pending requests ("connection closed"); were it kept alive by the probe's handle, a request in
        // flight on a dead socket would wait for its deadline instead.
        let connection = Arc::new(std::sync::Mutex::new(Some(connection)));
        let watched = connection.clone();
        let probe: SessionProbe = Box::new(move || {
            let guard = watched.lock().ok()?;
            let conn = guard.as_ref()?;
            REPORTED_PARAMETERS
                .iter()
                .zip(&initial)
                .find(|(name, at_start)| conn.parameter(name) != at_start.as_deref())
                .map(|(name, _)| *name)
        });
        let driven = connection.clone();
        let drive = std::future::poll_fn(move |cx| match driven.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(conn) => std::pin::Pin::new(conn).poll(cx),
                None => std::task::Poll::Ready(Ok(())),
            },
            Err(_) => std::task::Poll::Ready(Ok(())),
        });
        let (drop_socket, dropped) = oneshot::channel::<()>();
        let guard = LiveGuard::new(self.live.clone());
        let mut kill = self.kill.clone();
        tokio::spawn(async move {
            let _guard = guard;
            // The connection future ends when the client is dropped (after sending Terminate) or the socket dies.
            tokio::select! {
                res = drive => {
                    if let Err(e) = res {
                        tracing::debug!(error = %ConnectError::from(e), "postgres connection closed");
                    }
                }
                _ = kill.wait_for(|k| *k) => {}
                Ok(()) = dropped => tracing::debug!("broken postgres connection: socket dropped"),
            }
            let ended = connection.lock().ok().and_then(|mut c| c.take());
            drop(ended);
        });
        (probe, drop_socket)
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = PgConn;
    type Error = ConnectError;

    async fn connect(&self) -> Result<PgConn, ConnectError> {
        let Some(target) = self.source.current() else {
            return Err(ConnectError {
                message: "the database credentials have not been read from Secrets Manager yet".into(),
                sqlstate: None,
            });
        };
        let client = match self.connect_to(&target).await {
            Err(e) if e.sqlstate.as_deref() == Some(INVALID_PASSWORD) => match (&self.source, &target.iam) {
                // Rotated? Read the secret again (one fetch at a time) and retry once with what it holds now.
                (Source::Secret(secret), _) => {
                    match secret
                        .refresh_after_rejected(target.generation, self.connect_timeout)
                        .await
                    {
                        Some(newer) => {
                            tracing::info!(
                                generation = newer.generation,
                                "retrying the connection with the secret's new credentials"
                            );
                            self.connect_to(&newer)
                                .await
                                .map_err(|e| refused_hint(e, secret.secret_id(), true))?
                        }
                        None => return Err(refused_hint(e, secret.secret_id(), false)),
                    }
                }
                (Source::Fixed(_), Some(iam)) => {
                    return Err(ConnectError {
                        message: format!(
                            "{} (IAM authentication: the execution role needs rds-db:connect on {}, and the user \
                             GRANT rds_iam)",
                            e.message,
                            iam.policy_resource()
                        ),
                        sqlstate: e.sqlstate,
                    })
                }
                (Source::Fixed(_), None) => return Err(e),
            },
            other => other?,
        };
        crate::metrics::inc(crate::metrics::Counter::DbNewConnections);
        Ok(client)
    }

    /// Zero round trips: see the module docs for why this is enough.
    async fn is_valid(&self, conn: &mut PgConn) -> Result<(), ConnectError> {
        // Still zero round trips: one pass through the scheduler first, which polls the I/O driver, so a FIN or
        // RST that arrived while Lambda had us frozen wakes the connection task and it ends (`is_closed`) before
        // a request is written to a dead socket.
        tokio::task::yield_now().await;
        if conn.broken || conn.retire || conn.client.is_closed() {
            return Err(ConnectError {
                message: DISCARDED.into(),
                sqlstate: None,
            });
        }
        Ok(())
    }

    fn has_broken(&self, conn: &mut PgConn) -> bool {
        if conn.in_request {
            // Abandoned mid-request: drop the socket so the backend rolls back and ends.
            conn.broken = true;
        }
        conn.broken || conn.retire || conn.client.is_closed()
    }
}

/// A refused password of secret `secret_id`, with what to do about it.
fn refused_hint(e: ConnectError, secret_id: &str, after_refresh: bool) -> ConnectError {
    let when = if after_refresh {
        "even after reading the secret again"
    } else {
        "and the secret holds no newer one"
    };
    ConnectError {
        message: format!(
            "{} ({when}: make secret {secret_id} hold the role's current password)",
            e.message
        ),
        sqlstate: e.sqlstate,
    }
}

/// rustls client configuration for an `sslmode`, with libpq's semantics.
pub fn tls_config(mode: SslMode, root_cert: Option<&std::path::Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let roots = || -> Result<Arc<RootCertStore>, String> {
        let mut store = RootCertStore::empty();
        match root_cert {
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                    store
                        .add(cert)
                        .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                }
            }
            None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        Ok(Arc::new(store))
    };
    let webpki = |roots: Arc<RootCertStore>| {
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| format!("TLS setup: {e}"))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        (SslMode::VerifyFull, _) => webpki(roots()?)?,
        (SslMode::VerifyCa, _) | (SslMode::Require, Some(_)) => Arc::new(AnyNameVerifier(webpki(roots()?)?)),
        _ => Arc::new(NoVerifier(provider)),
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `verify-ca`: the chain must verify, the host name may differ (rustls checks the chain before the name, so a
/// name error implies a good chain).
#[derive(Debug)]
struct AnyNameVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a root: encryption without authentication, exactly libpq's behaviour. The
/// handshake signature is still checked, so the session is bound to whoever holds the certificate's key.
#[derive(Debug)]
struct NoVerifier(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
