//! Configuration: every environment variable the extension reads, as a documented `const`, parsed once at start
//! into [`Config`]. A bad value is a [`ConfigError`] whose message names the variable and says how to fix it; the
//! lifecycle reports it to Lambda through `/extension/init/error` (so it shows up in the function's Init report)
//! instead of crashing later inside a request.
//!
//! Secrets (the token, the database password, the AWS secret key) never appear in `Debug` output or in error
//! messages.
//!
//! Where the database password comes from (one of three, see [`Config::from_lookup`]):
//! - in [`ENV_DATABASE_URL`] itself;
//! - [`ENV_DATABASE_SECRET_ID`]: a Secrets Manager secret the extension reads at start (in the background) and again
//!   when PostgreSQL refuses the password (rotation); the function's configuration holds only the secret's id;
//! - [`ENV_DB_IAM_AUTH`]: RDS IAM authentication; [`ENV_DATABASE_URL`] has no password and the extension signs a
//!   token for every new connection.

use makenaide_contract::env::Token;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// PostgreSQL URL: `postgres://user:pass@host:port/db?sslmode=disable|prefer|require|verify-ca|verify-full`
/// (plus optional `sslrootcert=/path/to/ca-bundle.pem`, e.g. the RDS global bundle). Unset: DB routes answer 503
/// `db_not_configured`.
pub const ENV_DATABASE_URL: &str = "MAKENAIDE_DATABASE_URL";
/// Secrets Manager secret (ARN or name) holding the database credentials: a `postgres://` URL, or the JSON of an
/// RDS-managed secret (`username`, `password`, `host`, `port`, `dbname`, `engine`). Read by the extension during
/// Init in the background, kept in memory only, read again (once at a time) when PostgreSQL answers 28P01
/// (password rotated). Mutually exclusive with [`ENV_DATABASE_URL`] (both set is a configuration error).
pub const ENV_DATABASE_SECRET_ID: &str = "MAKENAIDE_DATABASE_SECRET_ID";
/// `true`: RDS IAM authentication. [`ENV_DATABASE_URL`] carries no password; every new connection gets a fresh
/// SigV4-presigned token (service `rds-db`, valid 15 minutes, reused until 10 minutes old) as its password. Needs
/// `sslmode` `require` or stricter. Default false.
pub const ENV_DB_IAM_AUTH: &str = "MAKENAIDE_DB_IAM_AUTH";
/// `sslmode` for the database, winning over the URL's own: `disable`, `prefer`, `require`, `verify-ca`,
/// `verify-full`. Unset: the URL's `sslmode`, else [`DEFAULT_SSLMODE_SECRET`] for a secret or IAM authentication
/// and `prefer` (libpq's default) for a plain [`ENV_DATABASE_URL`].
pub const ENV_DB_SSLMODE: &str = "MAKENAIDE_DB_SSLMODE";
/// CA bundle (PEM file) for `verify-ca`/`verify-full`, winning over the URL's `sslrootcert` (e.g. the RDS global
/// bundle, which a JSON secret cannot name).
pub const ENV_DB_SSLROOTCERT: &str = "MAKENAIDE_DB_SSLROOTCERT";
/// For tests only, never set on Lambda: every AWS call of the extension (Secrets Manager) goes to this
/// AWS-compatible endpoint (e.g. `http://127.0.0.1:5000` for moto) instead of the regional one. deploy.sh honours
/// the same variable for its AWS CLI calls.
pub const ENV_AWS_ENDPOINT_URL: &str = "MAKENAIDE_AWS_ENDPOINT_URL";
/// Set by Lambda: the region, for signing AWS calls ([`ENV_AWS_DEFAULT_REGION`] is the fallback).
pub const ENV_AWS_REGION: &str = "AWS_REGION";
/// Set by Lambda too; used when [`ENV_AWS_REGION`] is not set.
pub const ENV_AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
/// Set by Lambda: the execution role's access key id (with [`ENV_AWS_SECRET_ACCESS_KEY`] and
/// [`ENV_AWS_SESSION_TOKEN`]), which signs the Secrets Manager call and the RDS IAM token. Never logged.
pub const ENV_AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// Set by Lambda: the execution role's secret key. Never logged.
pub const ENV_AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// Upbit REST base URL, without `/v1`. Default [`DEFAULT_UPBIT_BASE_URL`].
pub const ENV_UPBIT_BASE_URL: &str = "MAKENAIDE_UPBIT_BASE_URL";
/// Lambda's session token: the token fallback (as AWS's Parameters and Secrets extension does).
pub use makenaide_contract::env::AWS_SESSION_TOKEN as ENV_AWS_SESSION_TOKEN;
/// Localhost port of the extension's API (bound on 127.0.0.1 only). Default [`DEFAULT_PORT`].
pub use makenaide_contract::env::CORE_PORT as ENV_PORT;
/// Shared secret expected in header `X-Makenaide-Token`. Falls back to [`ENV_AWS_SESSION_TOKEN`].
pub use makenaide_contract::env::CORE_TOKEN as ENV_TOKEN;
/// Max PostgreSQL connections of this environment. Default 4.
pub const ENV_DB_POOL_SIZE: &str = "MAKENAIDE_DB_POOL_SIZE";
/// Connect + pool checkout bound in ms: a down database answers 503 within it. Default 2000.
pub const ENV_DB_CONNECT_TIMEOUT_MS: &str = "MAKENAIDE_DB_CONNECT_TIMEOUT_MS";
/// Default bound of a request in ms (`SET LOCAL statement_timeout`, and a cancel request from the extension when it
/// passes; 0 = none). Default 10000.
pub const ENV_DB_STATEMENT_TIMEOUT_MS: &str = "MAKENAIDE_DB_STATEMENT_TIMEOUT_MS";
/// `true`: every transaction is `READ ONLY` (writes answer 403 `read_only`). Default false.
pub const ENV_DB_READ_ONLY: &str = "MAKENAIDE_DB_READ_ONLY";
/// `false`: do not keep prepared statements across requests (PgBouncer transaction pooling before 1.21, which
/// cannot route named statements); each statement is then closed before its transaction commits. Default true.
pub const ENV_DB_STATEMENT_CACHE: &str = "MAKENAIDE_DB_STATEMENT_CACHE";
/// Default row cap of one `/db/query` or `/db/transaction` (all statements together): past it the request fails
/// with 400 `row_limit_exceeded` while the rows are being read, before the result is held. A request may set its
/// own `max_rows` up to [`HARD_MAX_ROWS`]. Default [`DEFAULT_DB_MAX_ROWS`].
pub const ENV_DB_MAX_ROWS: &str = "MAKENAIDE_DB_MAX_ROWS";
/// Default cap on the bytes of a DB response's rows (their JSON, all statements together): past it the request
/// fails with 400 `response_too_large` while the rows are being read. A request may set its own
/// `max_response_bytes` up to [`HARD_MAX_RESPONSE_BYTES`]. Default [`DEFAULT_DB_MAX_RESPONSE_BYTES`].
pub const ENV_DB_MAX_RESPONSE_BYTES: &str = "MAKENAIDE_DB_MAX_RESPONSE_BYTES";
/// [`ENV_DB_MAX_ROWS`]'s default: far above what the functions read at once (their largest reads are a few
/// thousand rows), far below the 1M-row result that once took the extension to 370 MB.
pub const DEFAULT_DB_MAX_ROWS: u64 = 100_000;
/// [`ENV_DB_MAX_RESPONSE_BYTES`]'s default, 6 MiB: the default request body limit and Lambda's own payload limit
/// (a function cannot pass on more in one reply anyway). The response is held once before it is sent, so this
/// bounds what a single request adds to the extension's memory.
pub const DEFAULT_DB_MAX_RESPONSE_BYTES: u64 = 6 * 1024 * 1024;
/// The most rows any request may ask for (`max_rows`), and the most [`ENV_DB_MAX_ROWS`] may be set to.
pub const HARD_MAX_ROWS: u64 = 10_000_000;
/// The most bytes any request may ask for (`max_response_bytes`), and the most [`ENV_DB_MAX_RESPONSE_BYTES`] may
/// be set to: 256 MiB, a quarter of a 1 GiB function's memory.
pub const HARD_MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;
/// Upbit requests per second per rate-limit group, for the whole environment. Default 10 (Upbit's quotation limit).
pub const ENV_UPBIT_RATE_PER_SEC: &str = "MAKENAIDE_UPBIT_RATE_PER_SEC";
/// Deadline in ms of an Upbit call whose caller sent no `X-Makenaide-Deadline-Ms`. Default 10000.
pub const ENV_UPBIT_TIMEOUT_MS: &str = "MAKENAIDE_UPBIT_TIMEOUT_MS";
/// TTL in ms of the short cache of identical quotation GETs (0 = off). Default 1000.
pub const ENV_UPBIT_CACHE_TTL_MS: &str = "MAKENAIDE_UPBIT_CACHE_TTL_MS";
/// Request body limit in bytes (413 above it). Default 6 MiB, Lambda's own payload limit.
pub const ENV_MAX_BODY_BYTES: &str = "MAKENAIDE_MAX_BODY_BYTES";
/// Inbound connection cap. At the cap a new connection makes room by closing the longest-idle one (idle between
/// requests, or still sending its request head); only when every connection is serving a request does the new one
/// get 429 `too_many_connections`. Default 256.
pub const ENV_MAX_CONNECTIONS: &str = "MAKENAIDE_MAX_CONNECTIONS";
/// A connection that has sent part of a request head but not all of it within this many ms is closed (slowloris).
/// Default 10000. Time while Lambda has the environment frozen does not count (`server::conn`).
pub const ENV_HEADER_READ_TIMEOUT_MS: &str = "MAKENAIDE_HEADER_READ_TIMEOUT_MS";
/// A keep-alive connection with no request for this many ms is closed; `0` = never. Default 90000: longer than
/// the functions' own client keeps an idle connection (60 s, `makenaide-pipeline`), so the extension never closes
/// one that client would still reuse. Time while Lambda has the environment frozen does not count.
pub const ENV_IDLE_TIMEOUT_MS: &str = "MAKENAIDE_IDLE_TIMEOUT_MS";
/// Upper bound in bytes of the Upbit cache (bodies + keys + a fixed overhead per entry); the oldest entries go
/// first. Default 8 MiB; `0` = no caching.
pub const ENV_UPBIT_CACHE_MAX_BYTES: &str = "MAKENAIDE_UPBIT_CACHE_MAX_BYTES";
/// `off` (or `false`, `0`, `no`): no Telemetry API subscription, no telemetry listener, no EMF lines (`GET /metrics`
/// still answers: the counters are plain atomics). Default on.
pub const ENV_METRICS: &str = "MAKENAIDE_METRICS";
/// CloudWatch namespace of the EMF lines. Default [`makenaide_contract::metrics::DEFAULT_NAMESPACE`].
pub const ENV_METRICS_NAMESPACE: &str = "MAKENAIDE_METRICS_NAMESPACE";
/// Port of the telemetry listener (where Lambda POSTs Telemetry API batches). Default [`DEFAULT_TELEMETRY_PORT`];
/// `0` takes any free port (the subscription names the port actually bound).
pub const ENV_TELEMETRY_PORT: &str = "MAKENAIDE_TELEMETRY_PORT";
/// Lambda Managed Instances only (no per-invocation report there): one aggregated EMF line per this many ms.
/// Default [`DEFAULT_METRICS_INTERVAL`].
pub const ENV_METRICS_INTERVAL_MS: &str = "MAKENAIDE_METRICS_INTERVAL_MS";
/// Set by Lambda: the function's name, the EMF dimension `function_name`.
pub const ENV_AWS_LAMBDA_FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";
/// Set by Lambda: `lambda-managed-instances` means "register SHUTDOWN only" (INVOKE is refused there).
pub const ENV_AWS_LAMBDA_INITIALIZATION_TYPE: &str = "AWS_LAMBDA_INITIALIZATION_TYPE";
/// Set by Lambda: where the Runtime/Extensions API listens. May carry a scheme and a path prefix
/// (`cargo lambda watch` gives `http://127.0.0.1:9000/.rt`); parsed by `lambda::api::Endpoint`.
pub const ENV_AWS_LAMBDA_RUNTIME_API: &str = "AWS_LAMBDA_RUNTIME_API";

/// Default localhost port: not used by any well-known layer (2772/2773 AWS agents, 4000 demos, 8124-8126 Datadog,
/// 9001 Lambda, 9002/9003 the lambda-extension crate's listeners).
pub const DEFAULT_PORT: u16 = makenaide_contract::env::DEFAULT_CORE_PORT;
/// Default telemetry listener port: clear of every port in the map above, of 8999 (Datadog's telemetry listener),
/// 4243 (AWS's telemetry samples) and of [`DEFAULT_PORT`].
pub const DEFAULT_TELEMETRY_PORT: u16 = 4572;
/// Default aggregation interval of the EMF lines under Lambda Managed Instances.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);
/// Default Upbit base URL.
pub const DEFAULT_UPBIT_BASE_URL: &str = "https://api.upbit.com";
/// `sslmode` of a database reached through [`ENV_DATABASE_SECRET_ID`] or [`ENV_DB_IAM_AUTH`] when neither
/// [`ENV_DB_SSLMODE`] nor the URL says: encrypted (a managed database; IAM authentication requires it), without
/// certificate check unless a CA bundle is given (libpq's `require`).
pub const DEFAULT_SSLMODE_SECRET: SslMode = SslMode::Require;
/// Value of [`ENV_AWS_LAMBDA_INITIALIZATION_TYPE`] on Lambda Managed Instances.
pub const INIT_TYPE_MANAGED_INSTANCES: &str = "lambda-managed-instances";

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself: only for comparing or sending, never for logging.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// TLS policy for PostgreSQL, with libpq's meaning for each `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without certificate checks (libpq's default).
    Prefer,
    /// TLS required; no certificate check unless `sslrootcert` is given (then like `verify-ca`, as libpq does).
    Require,
    /// TLS; the chain must lead to a trusted root, any host name.
    VerifyCa,
    /// TLS; trusted chain and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Parses libpq's spelling (`allow` counts as `prefer`).
    ///
    /// # Errors
    /// What to use instead.
    pub fn parse(v: &str) -> Result<Self, String> {
        Ok(match v {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other:?} is unknown: use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }

    /// Encrypted (every mode from `require` on).
    #[must_use]
    pub fn encrypts(self) -> bool {
        matches!(self, Self::Require | Self::VerifyCa | Self::VerifyFull)
    }
}

/// The TLS settings that apply to a database URL: [`ENV_DB_SSLMODE`] / [`ENV_DB_SSLROOTCERT`] when set (they win),
/// else the URL's own, else `default_mode`.
#[derive(Clone, Debug)]
pub struct SslSettings {
    /// [`ENV_DB_SSLMODE`].
    pub mode: Option<SslMode>,
    /// [`ENV_DB_SSLROOTCERT`].
    pub root_cert: Option<PathBuf>,
    /// When neither the variable nor the URL says.
    pub default_mode: SslMode,
}

impl Default for SslSettings {
    /// libpq's behaviour: the URL decides, `prefer` by default.
    fn default() -> Self {
        Self {
            mode: None,
            root_cert: None,
            default_mode: SslMode::Prefer,
        }
    }
}

/// [`ENV_DATABASE_SECRET_ID`]: where the credentials are read from.
#[derive(Clone, Debug)]
pub struct SecretSource {
    /// ARN or name.
    pub secret_id: String,
    /// TLS settings for the URL built from the secret (default `require`).
    pub ssl: SslSettings,
    /// Region, credentials, endpoint.
    pub aws: crate::aws::AwsSettings,
}

/// Where PostgreSQL lives. `Debug` redacts the password.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// Connection parameters for tokio-postgres (host, port, user, password, dbname, ...). `sslmode` and
    /// `sslrootcert` are removed from the URL first: tokio-postgres does not know `verify-ca`/`verify-full`.
    pub pg: tokio_postgres::Config,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// CA bundle (PEM) to trust instead of the built-in webpki roots (RDS certificates need the RDS bundle).
    pub ssl_root_cert: Option<PathBuf>,
    /// `user@host:port/db` for log lines: never includes the password.
    pub display: String,
    /// RDS IAM authentication ([`ENV_DB_IAM_AUTH`]): a token per new connection instead of a password.
    pub iam: Option<crate::aws::rds_iam::IamAuth>,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("target", &self.display)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("iam", &self.iam.is_some())
            .finish_non_exhaustive()
    }
}

/// Everything the extension needs to know, parsed and validated. Fields are public so tests can build one
/// literally (`Config { port: 0, ..Config::default() }`) without touching the process environment.
#[derive(Clone, Debug)]
pub struct Config {
    /// Localhost port ([`ENV_PORT`]); 0 only in tests (the listener is bound by the caller anyway).
    pub port: u16,
    /// Token expected in `X-Makenaide-Token`.
    pub token: Secret,
    /// PostgreSQL, when configured by [`ENV_DATABASE_URL`].
    pub database: Option<DatabaseConfig>,
    /// PostgreSQL, when configured by [`ENV_DATABASE_SECRET_ID`] (then `database` is `None`).
    pub database_secret: Option<SecretSource>,
    /// Max pool size.
    pub db_pool_size: u32,
    /// Connect + checkout bound.
    pub db_connect_timeout: Duration,
    /// Default statement timeout (zero = none).
    pub db_statement_timeout: Duration,
    /// Every transaction READ ONLY.
    pub db_read_only: bool,
    /// Keep prepared statements per connection across requests.
    pub db_statement_cache: bool,
    /// Default row cap per request ([`ENV_DB_MAX_ROWS`]).
    pub db_max_rows: u64,
    /// Default response-size cap per request ([`ENV_DB_MAX_RESPONSE_BYTES`]).
    pub db_max_response_bytes: u64,
    /// Upbit base URL without trailing slash.
    pub upbit_base_url: String,
    /// Requests per second per Upbit group.
    pub upbit_rate_per_sec: u32,
    /// Default Upbit deadline.
    pub upbit_timeout: Duration,
    /// Cache TTL (zero = off).
    pub upbit_cache_ttl: Duration,
    /// Body limit in bytes.
    pub max_body_bytes: usize,
    /// Inbound connection cap.
    pub max_connections: usize,
    /// Bound on sending a request head, from its first byte ([`ENV_HEADER_READ_TIMEOUT_MS`]).
    pub header_read_timeout: Duration,
    /// Keep-alive idle bound (zero = never) ([`ENV_IDLE_TIMEOUT_MS`]).
    pub idle_timeout: Duration,
    /// Upbit cache byte bound ([`ENV_UPBIT_CACHE_MAX_BYTES`]).
    pub upbit_cache_max_bytes: usize,
    /// Lambda Managed Instances mode.
    pub managed_instances: bool,
    /// Telemetry API subscription + EMF lines ([`ENV_METRICS`]).
    pub metrics: bool,
    /// CloudWatch namespace of the EMF lines.
    pub metrics_namespace: String,
    /// Telemetry listener port (0 = any free port).
    pub telemetry_port: u16,
    /// Aggregation interval under Managed Instances.
    pub metrics_interval: Duration,
}

impl Default for Config {
    /// The documented defaults, with an empty-string token placeholder and no database.
    fn default() -> Self {
        Self {
            port: DEFAULT_PORT,
            token: Secret::new(""),
            database: None,
            database_secret: None,
            db_pool_size: 4,
            db_connect_timeout: Duration::from_millis(2000),
            db_statement_timeout: Duration::from_millis(10_000),
            db_read_only: false,
            db_statement_cache: true,
            db_max_rows: DEFAULT_DB_MAX_ROWS,
            db_max_response_bytes: DEFAULT_DB_MAX_RESPONSE_BYTES,
            upbit_base_url: DEFAULT_UPBIT_BASE_URL.to_owned(),
            upbit_rate_per_sec: 10,
            upbit_timeout: Duration::from_millis(10_000),
            upbit_cache_ttl: Duration::from_millis(1000),
            max_body_bytes: 6 * 1024 * 1024,
            max_connections: 256,
            header_read_timeout: Duration::from_millis(10_000),
            idle_timeout: Duration::from_millis(90_000),
            upbit_cache_max_bytes: 8 * 1024 * 1024,
            managed_instances: false,
            metrics: true,
            metrics_namespace: makenaide_contract::metrics::DEFAULT_NAMESPACE.to_owned(),
            telemetry_port: DEFAULT_TELEMETRY_PORT,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
        }
    }
}

/// An invalid configuration value: says which variable and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable at fault.
    pub var: &'static str,
    /// What is wrong and how to fix it (never contains a secret).
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// The first invalid variable, with a message that says how to fix it.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (tests pass a map instead of the process environment).
    /// Empty values count as unset.
    ///
    /// # Errors
    /// The first invalid variable, with a message that says how to fix it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let d = Self::default();

        let port = match get(ENV_PORT) {
            None => DEFAULT_PORT,
            Some(v) => parse_port(&v)?,
        };
        // Not through `get`: an empty AWS_SESSION_TOKEN (what the RIE passes without credentials) deserves its
        // own message.
        let token = match Token::resolve(
            get(ENV_TOKEN).as_deref(),
            lookup(ENV_AWS_SESSION_TOKEN).map(|v| v.trim().to_owned()).as_deref(),
        ) {
            Token::Found { value, .. } => value,
            Token::Missing { session_token_empty } => {
                return Err(invalid(ENV_TOKEN, Token::missing_message(session_token_empty)))
            }
        };
        let (database, database_secret) = database_from(&get)?;
        let upbit_base_url = parse_upbit_base_url(get(ENV_UPBIT_BASE_URL).as_deref())?;
        let metrics_namespace = parse_namespace(get(ENV_METRICS_NAMESPACE))?;
        let telemetry_port = match get(ENV_TELEMETRY_PORT) {
            None => DEFAULT_TELEMETRY_PORT,
            Some(v) => parse_telemetry_port(&v, port)?,
        };

        Ok(Self {
            port,
            token: Secret::new(token),
            database,
            database_secret,
            db_pool_size: num(&get, ENV_DB_POOL_SIZE, u64::from(d.db_pool_size), 1, 100)? as u32,
            db_connect_timeout: millis(&get, ENV_DB_CONNECT_TIMEOUT_MS, d.db_connect_timeout, 1, 60_000)?,
            db_statement_timeout: millis(&get, ENV_DB_STATEMENT_TIMEOUT_MS, d.db_statement_timeout, 0, 3_600_000)?,
            db_read_only: flag(&get, ENV_DB_READ_ONLY, d.db_read_only)?,
            db_statement_cache: flag(&get, ENV_DB_STATEMENT_CACHE, d.db_statement_cache)?,
            db_max_rows: num(&get, ENV_DB_MAX_ROWS, d.db_max_rows, 1, HARD_MAX_ROWS)?,
            db_max_response_bytes: num(
                &get,
                ENV_DB_MAX_RESPONSE_BYTES,
                d.db_max_response_bytes,
                1024,
                HARD_MAX_RESPONSE_BYTES,
            )?,
            upbit_base_url,
            upbit_rate_per_sec: num(&get, ENV_UPBIT_RATE_PER_SEC, u64::from(d.upbit_rate_per_sec), 1, 1000)? as u32,
            upbit_timeout: millis(&get, ENV_UPBIT_TIMEOUT_MS, d.upbit_timeout, 1, 900_000)?,
            upbit_cache_ttl: millis(&get, ENV_UPBIT_CACHE_TTL_MS, d.upbit_cache_ttl, 0, 60_000)?,
            max_body_bytes: num(&get, ENV_MAX_BODY_BYTES, d.max_body_bytes as u64, 1024, 1 << 30)? as usize,
            max_connections: num(&get, ENV_MAX_CONNECTIONS, d.max_connections as u64, 1, 65_535)? as usize,
            header_read_timeout: millis(&get, ENV_HEADER_READ_TIMEOUT_MS, d.header_read_timeout, 100, 600_000)?,
            idle_timeout: millis(&get, ENV_IDLE_TIMEOUT_MS, d.idle_timeout, 0, 86_400_000)?,
            upbit_cache_max_bytes: num(
                &get,
                ENV_UPBIT_CACHE_MAX_BYTES,
                d.upbit_cache_max_bytes as u64,
                0,
                1 << 30,
            )? as usize,
            managed_instances: get(ENV_AWS_LAMBDA_INITIALIZATION_TYPE).as_deref() == Some(INIT_TYPE_MANAGED_INSTANCES),
            metrics: flag(&get, ENV_METRICS, d.metrics)?,
            metrics_namespace,
            telemetry_port,
            metrics_interval: millis(&get, ENV_METRICS_INTERVAL_MS, d.metrics_interval, 1000, 3_600_000)?,
        })
    }

    /// The Extensions API events to subscribe to: SHUTDOWN only on Managed Instances (INVOKE is refused there
    /// with `Extension.InvalidEventType`), INVOKE + SHUTDOWN otherwise.
    #[must_use]
    pub fn lambda_events(&self) -> &'static [&'static str] {
        if self.managed_instances {
            &["SHUTDOWN"]
        } else {
            &["INVOKE", "SHUTDOWN"]
        }
    }
}

/// The database settings: [`ENV_DATABASE_URL`] (optionally with [`ENV_DB_IAM_AUTH`]) or [`ENV_DATABASE_SECRET_ID`].
fn database_from(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<(Option<DatabaseConfig>, Option<SecretSource>), ConfigError> {
    let url = get(ENV_DATABASE_URL);
    let secret_id = get(ENV_DATABASE_SECRET_ID);
    let iam = flag(get, ENV_DB_IAM_AUTH, false)?;
    let mode = get(ENV_DB_SSLMODE)
        .map(|v| SslMode::parse(&v).map_err(|m| invalid(ENV_DB_SSLMODE, m)))
        .transpose()?;
    let root_cert = get(ENV_DB_SSLROOTCERT).map(PathBuf::from);
    if let Some(path) = &root_cert {
        if !path.is_file() {
            return Err(invalid(
                ENV_DB_SSLROOTCERT,
                format!("file {} does not exist", path.display()),
            ));
        }
    }
    if url.is_some() && secret_id.is_some() {
        return Err(invalid(
            ENV_DATABASE_SECRET_ID,
            format!(
                "both {ENV_DATABASE_URL} and {ENV_DATABASE_SECRET_ID} are set: keep one (the secret's id keeps the \
                 password out of the function's configuration)"
            ),
        ));
    }
    let secret_default = SslSettings {
        mode,
        root_cert: root_cert.clone(),
        default_mode: DEFAULT_SSLMODE_SECRET,
    };
    if let Some(secret_id) = secret_id {
        if iam {
            return Err(invalid(
                ENV_DB_IAM_AUTH,
                format!(
                    "{ENV_DB_IAM_AUTH}=true does not combine with {ENV_DATABASE_SECRET_ID}: use IAM authentication \
                     with a password-less {ENV_DATABASE_URL}, or the secret without {ENV_DB_IAM_AUTH}"
                ),
            ));
        }
        let aws = aws_settings(get, ENV_DATABASE_SECRET_ID)?;
        return Ok((
            None,
            Some(SecretSource {
                secret_id,
                ssl: secret_default,
                aws,
            }),
        ));
    }
    let Some(url) = url else {
        if iam {
            return Err(invalid(
                ENV_DB_IAM_AUTH,
                format!(
                    "{ENV_DB_IAM_AUTH}=true needs {ENV_DATABASE_URL} without a password, e.g. \
                     postgres://iam_user@mydb.xxxx.rds.amazonaws.com:5432/makenaide?sslmode=verify-full"
                ),
            ));
        }
        return Ok((None, None));
    };
    if !iam {
        let ssl = SslSettings {
            mode,
            root_cert,
            default_mode: SslMode::Prefer,
        };
        return Ok((Some(parse_database_url_with(&url, ENV_DATABASE_URL, &ssl)?), None));
    }
    let mut db = parse_database_url_with(&url, ENV_DATABASE_URL, &secret_default)?;
    if db.pg.get_password().is_some() {
        return Err(invalid(
            ENV_DATABASE_URL,
            format!(
                "has a password, but with {ENV_DB_IAM_AUTH}=true the extension generates it (an IAM token per \
                 connection): remove the password from the URL"
            ),
        ));
    }
    if !db.ssl_mode.encrypts() {
        return Err(invalid(
            ENV_DB_SSLMODE,
            format!(
                "sslmode={} with {ENV_DB_IAM_AUTH}=true: RDS IAM authentication requires TLS, use sslmode=require \
                 or verify-full (with the RDS CA bundle as sslrootcert)",
                db.ssl_mode.as_str()
            ),
        ));
    }
    let aws = aws_settings(get, ENV_DB_IAM_AUTH)?;
    db.iam = Some(crate::aws::rds_iam::IamAuth::new(&db, aws).map_err(|m| invalid(ENV_DATABASE_URL, m))?);
    Ok((Some(db), None))
}

/// Region and credentials for AWS calls, needed by `needed_by`.
fn aws_settings(
    get: &impl Fn(&str) -> Option<String>,
    needed_by: &'static str,
) -> Result<crate::aws::AwsSettings, ConfigError> {
    let region = get(ENV_AWS_REGION)
        .or_else(|| get(ENV_AWS_DEFAULT_REGION))
        .ok_or_else(|| {
            invalid(
                ENV_AWS_REGION,
                format!("{needed_by} needs the AWS region: Lambda sets {ENV_AWS_REGION}; elsewhere set it yourself"),
            )
        })?;
    let (Some(access_key_id), Some(secret)) = (get(ENV_AWS_ACCESS_KEY_ID), get(ENV_AWS_SECRET_ACCESS_KEY)) else {
        return Err(invalid(
            ENV_AWS_ACCESS_KEY_ID,
            format!(
                "{needed_by} needs the execution role's credentials ({ENV_AWS_ACCESS_KEY_ID}, \
                 {ENV_AWS_SECRET_ACCESS_KEY}, {ENV_AWS_SESSION_TOKEN}), which Lambda sets: do not override them with \
                 empty values"
            ),
        ));
    };
    let endpoint = match get(ENV_AWS_ENDPOINT_URL) {
        None => None,
        Some(v) => {
            let ok = url::Url::parse(&v)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.query().is_none());
            if !ok {
                return Err(invalid(
                    ENV_AWS_ENDPOINT_URL,
                    format!(
                        "{v:?} is not an http(s) URL (for tests only, e.g. http://127.0.0.1:5000; unset it on Lambda)"
                    ),
                ));
            }
            Some(v.trim_end_matches('/').to_owned())
        }
    };
    Ok(crate::aws::AwsSettings {
        region,
        credentials: crate::aws::AwsCredentials {
            access_key_id,
            secret_access_key: Secret::new(secret),
            session_token: get(ENV_AWS_SESSION_TOKEN).map(Secret::new),
        },
        endpoint,
    })
}

fn parse_port(v: &str) -> Result<u16, ConfigError> {
    let port: u16 = v.parse().map_err(|_| {
        invalid(
            ENV_PORT,
            format!("{v:?} is not a port number: use 1024-65535 (default {DEFAULT_PORT})"),
        )
    })?;
    if port == 0 {
        return Err(invalid(
            ENV_PORT,
            format!("0 is not a usable port: use 1024-65535 (default {DEFAULT_PORT})"),
        ));
    }
    if port == 9001 {
        return Err(invalid(
            ENV_PORT,
            format!("9001 is reserved by the Lambda Runtime API: pick another port (default {DEFAULT_PORT})"),
        ));
    }
    Ok(port)
}

fn parse_telemetry_port(v: &str, core_port: u16) -> Result<u16, ConfigError> {
    let hint = format!("use 0 (any free port) or 1024-65535 (default {DEFAULT_TELEMETRY_PORT})");
    let port: u16 = v
        .parse()
        .map_err(|_| invalid(ENV_TELEMETRY_PORT, format!("{v:?} is not a port number: {hint}")))?;
    if port == 9001 || port == core_port {
        let owner = if port == 9001 {
            "the Lambda Runtime API"
        } else {
            "MAKENAIDE_CORE_PORT"
        };
        return Err(invalid(
            ENV_TELEMETRY_PORT,
            format!("{port} is taken by {owner}: {hint}"),
        ));
    }
    Ok(port)
}

/// CloudWatch's namespace rule: 1-255 of letters, digits and `.-_/#: `, not starting with `AWS/`.
fn parse_namespace(v: Option<String>) -> Result<String, ConfigError> {
    let Some(v) = v else {
        return Ok(makenaide_contract::metrics::DEFAULT_NAMESPACE.to_owned());
    };
    let valid_char = |c: char| c.is_ascii_alphanumeric() || ".-_/#: ".contains(c);
    if v.len() > 255 || !v.chars().all(valid_char) || v.starts_with("AWS/") {
        return Err(invalid(
            ENV_METRICS_NAMESPACE,
            format!(
                "{v:?} is not a CloudWatch namespace: use 1-255 letters, digits or . - _ / # : and space, not starting with AWS/ (default {})",
                makenaide_contract::metrics::DEFAULT_NAMESPACE
            ),
        ));
    }
    Ok(v)
}

fn num(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = get(var) else {
        return Ok(default);
    };
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            var,
            format!("{v:?} is invalid: use a whole number from {min} to {max} (default {default})"),
        )),
    }
}

fn millis(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    num(get, var, default_ms, min, max).map(Duration::from_millis)
}

fn flag(get: &impl Fn(&str) -> Option<String>, var: &'static str, default: bool) -> Result<bool, ConfigError> {
    let Some(v) = get(var) else {
        return Ok(default);
    };
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(
            var,
            format!("{v:?} is invalid: use true or false (default {default})"),
        )),
    }
}

fn parse_upbit_base_url(v: Option<&str>) -> Result<String, ConfigError> {
    let Some(v) = v else {
        return Ok(DEFAULT_UPBIT_BASE_URL.to_owned());
    };
    let url = url::Url::parse(v).map_err(|e| {
        invalid(
            ENV_UPBIT_BASE_URL,
            format!("{v:?} is not a URL ({e}): use e.g. {DEFAULT_UPBIT_BASE_URL}"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            ENV_UPBIT_BASE_URL,
            format!("{v:?} must be an http(s) URL with a host, e.g. {DEFAULT_UPBIT_BASE_URL}"),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            ENV_UPBIT_BASE_URL,
            format!("{v:?} must not have a query or fragment"),
        ));
    }
    let trimmed = v.trim_end_matches('/');
    if trimmed.ends_with("/v1") {
        return Err(invalid(
            ENV_UPBIT_BASE_URL,
            format!("{v:?} ends in /v1: give the base without it (the extension appends /v1/...), e.g. {DEFAULT_UPBIT_BASE_URL}"),
        ));
    }
    Ok(trimmed.to_owned())
}

const DB_URL_HINT: &str = "expected postgres://user:password@host:5432/dbname?sslmode=require";

/// Parses the database URL with libpq's defaults (`sslmode` from the URL, `prefer` without). Messages never
/// repeat the URL (it carries the password).
///
/// # Errors
/// What is wrong with the URL.
pub fn parse_database_url(raw: &str) -> Result<DatabaseConfig, ConfigError> {
    parse_database_url_with(raw, ENV_DATABASE_URL, &SslSettings::default())
}

/// Parses a database URL that came from `var` (errors name it), with the TLS settings `ssl`. Messages never repeat
/// the URL (it carries the password).
///
/// # Errors
/// What is wrong with the URL.
pub fn parse_database_url_with(raw: &str, var: &'static str, ssl: &SslSettings) -> Result<DatabaseConfig, ConfigError> {
    let mut url = url::Url::parse(raw).map_err(|e| invalid(var, format!("not a valid URL ({e}); {DB_URL_HINT}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(invalid(
            var,
            format!(
                "scheme {:?} is not postgres:// or postgresql://; {DB_URL_HINT}",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(var, format!("the URL has no host; {DB_URL_HINT}")));
    }

    let mut url_mode = None;
    let mut ssl_root_cert = None;
    let mut kept: Vec<(String, String)> = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => url_mode = Some(SslMode::parse(v.as_ref()).map_err(|m| invalid(var, m))?),
            // "system" (libpq 16) means the default trust store: our built-in webpki roots.
            "sslrootcert" if v != "system" => ssl_root_cert = Some(PathBuf::from(v.as_ref())),
            "sslrootcert" => {}
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    let ssl_mode = ssl.mode.or(url_mode).unwrap_or(ssl.default_mode);
    if ssl.root_cert.is_some() {
        ssl_root_cert.clone_from(&ssl.root_cert);
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept.iter());
    }
    if let Some(path) = &ssl_root_cert {
        if ssl_mode == SslMode::Disable {
            return Err(invalid(
                var,
                "sslrootcert is set but sslmode=disable: use sslmode=verify-full",
            ));
        }
        if !path.is_file() {
            return Err(invalid(
                var,
                format!("sslrootcert file {} does not exist", path.display()),
            ));
        }
    }

    let mut pg: tokio_postgres::Config = url.as_str().parse().map_err(|e: tokio_postgres::Error| {
        invalid(var, format!("rejected by the PostgreSQL driver ({e}); {DB_URL_HINT}"))
    })?;
    pg.ssl_mode(match ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    if pg.get_user().is_none() {
        return Err(invalid(var, format!("the URL has no user name; {DB_URL_HINT}")));
    }
    let display = format!(
        "{}@{}:{}/{}",
        pg.get_user().unwrap_or_default(),
        url.host_str().unwrap_or_default(),
        url.port().unwrap_or(5432),
        pg.get_dbname().or(pg.get_user()).unwrap_or_default(),
    );
    Ok(DatabaseConfig {
        pg,
        ssl_mode,
        ssl_root_cert,
        display,
        iam: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_with_session_token_fallback() {
        let c = cfg(&[(ENV_AWS_SESSION_TOKEN, "sess")]).unwrap();
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.token.expose(), "sess");
        assert!(c.database.is_none());
        assert_eq!(c.db_pool_size, 4);
        assert_eq!(c.db_connect_timeout, Duration::from_secs(2));
        assert_eq!(c.upbit_base_url, "https://api.upbit.com");
        assert_eq!(c.upbit_rate_per_sec, 10);
        assert_eq!(c.upbit_cache_ttl, Duration::from_secs(1));
        assert_eq!(c.max_body_bytes, 6_291_456);
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(90));
        assert_eq!(c.upbit_cache_max_bytes, 8 << 20);
        assert!(c.db_statement_cache);
        assert_eq!(c.lambda_events(), &["INVOKE", "SHUTDOWN"]);
    }

    #[test]
    fn explicit_token_wins_and_is_redacted() {
        let c = cfg(&[(ENV_TOKEN, "tok-123"), (ENV_AWS_SESSION_TOKEN, "sess")]).unwrap();
        assert_eq!(c.token.expose(), "tok-123");
        assert!(!format!("{c:?}").contains("tok-123"));
    }

    #[test]
    fn missing_token_is_an_error_naming_the_variable() {
        let e = cfg(&[]).unwrap_err();
        assert_eq!(e.var, ENV_TOKEN);
        assert!(e.message.contains("MAKENAIDE_CORE_TOKEN"));
        assert!(e.message.contains("is not set"), "{e}");
    }

    #[test]
    fn an_empty_session_token_is_named_as_empty() {
        // The Runtime Interface Emulator, given no credentials, passes AWS_SESSION_TOKEN="".
        let e = cfg(&[(ENV_AWS_SESSION_TOKEN, "")]).unwrap_err();
        assert_eq!(e.var, ENV_TOKEN);
        assert!(e.message.contains("is set but empty"), "{e}");
        assert!(e.message.contains("set MAKENAIDE_CORE_TOKEN"), "{e}");
    }

    #[test]
    fn bad_numbers_say_what_to_use() {
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_PORT, "abc")]).unwrap_err();
        assert_eq!(e.var, ENV_PORT);
        assert!(e.message.contains("1024-65535"), "{e}");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_PORT, "9001")]).unwrap_err();
        assert!(e.message.contains("reserved"), "{e}");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_DB_POOL_SIZE, "0")]).unwrap_err();
        assert_eq!(e.var, ENV_DB_POOL_SIZE);
        assert!(e.message.contains("from 1 to 100"), "{e}");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_DB_READ_ONLY, "maybe")]).unwrap_err();
        assert!(e.message.contains("true or false"), "{e}");
    }

    #[test]
    fn flags_and_managed_instances() {
        let c = cfg(&[
            (ENV_TOKEN, "t"),
            (ENV_DB_READ_ONLY, "TRUE"),
            (ENV_DB_STATEMENT_CACHE, "false"),
            (ENV_AWS_LAMBDA_INITIALIZATION_TYPE, "lambda-managed-instances"),
            (ENV_UPBIT_CACHE_TTL_MS, "0"),
        ])
        .unwrap();
        assert!(c.db_read_only);
        assert!(!c.db_statement_cache);
        assert!(c.managed_instances);
        assert_eq!(c.lambda_events(), &["SHUTDOWN"]);
        assert_eq!(c.upbit_cache_ttl, Duration::ZERO);
    }

    #[test]
    fn upbit_base_url_rules() {
        let c = cfg(&[(ENV_TOKEN, "t"), (ENV_UPBIT_BASE_URL, "http://127.0.0.1:8080/")]).unwrap();
        assert_eq!(c.upbit_base_url, "http://127.0.0.1:8080");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_UPBIT_BASE_URL, "https://api.upbit.com/v1")]).unwrap_err();
        assert!(e.message.contains("/v1"), "{e}");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_UPBIT_BASE_URL, "api.upbit.com")]).unwrap_err();
        assert_eq!(e.var, ENV_UPBIT_BASE_URL);
    }

    #[test]
    fn metrics_settings() {
        let c = cfg(&[(ENV_TOKEN, "t")]).unwrap();
        assert!(c.metrics);
        assert_eq!(c.metrics_namespace, "Makenaide");
        assert_eq!(c.telemetry_port, DEFAULT_TELEMETRY_PORT);
        assert_eq!(c.metrics_interval, Duration::from_secs(60));
        let c = cfg(&[
            (ENV_TOKEN, "t"),
            (ENV_METRICS, "off"),
            (ENV_METRICS_NAMESPACE, "Makenaide/prod"),
            (ENV_TELEMETRY_PORT, "0"),
            (ENV_METRICS_INTERVAL_MS, "5000"),
        ])
        .unwrap();
        assert!(!c.metrics);
        assert_eq!(c.metrics_namespace, "Makenaide/prod");
        assert_eq!(c.telemetry_port, 0);
        assert_eq!(c.metrics_interval, Duration::from_secs(5));
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_METRICS_NAMESPACE, "AWS/Lambda")]).unwrap_err();
        assert_eq!(e.var, ENV_METRICS_NAMESPACE);
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_METRICS_NAMESPACE, "a|b")]).unwrap_err();
        assert_eq!(e.var, ENV_METRICS_NAMESPACE);
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_TELEMETRY_PORT, "4571")]).unwrap_err();
        assert!(e.message.contains("MAKENAIDE_CORE_PORT"), "{e}");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_TELEMETRY_PORT, "9001")]).unwrap_err();
        assert!(e.message.contains("Runtime API"), "{e}");
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_METRICS, "sometimes")]).unwrap_err();
        assert_eq!(e.var, ENV_METRICS);
    }

    #[test]
    fn database_url_parsing_never_leaks_the_password() {
        let c = cfg(&[
            (ENV_TOKEN, "t"),
            (
                ENV_DATABASE_URL,
                "postgres://bob:s3cr3t@db.example:6543/market?sslmode=verify-full&application_name=x",
            ),
        ])
        .unwrap();
        let db = c.database.unwrap();
        assert_eq!(db.ssl_mode, SslMode::VerifyFull);
        assert_eq!(db.display, "bob@db.example:6543/market");
        assert_eq!(db.pg.get_dbname(), Some("market"));
        assert_eq!(db.pg.get_application_name(), Some("x"));
        assert!(!format!("{db:?}").contains("s3cr3t"));

        for (url, needle) in [
            ("mysql://bob:s3cr3t@h/db", "scheme"),
            ("postgres://bob:s3cr3t@h/db?sslmode=sometimes", "sslmode"),
            ("postgres://bob:s3cr3t@h:99999/db", "valid URL"),
            (
                "postgres://bob:s3cr3t@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem",
                "does not exist",
            ),
        ] {
            let e = cfg(&[(ENV_TOKEN, "t"), (ENV_DATABASE_URL, url)]).unwrap_err();
            assert_eq!(e.var, ENV_DATABASE_URL);
            assert!(e.message.contains(needle), "{url}: {e}");
            assert!(!e.message.contains("s3cr3t"), "{e}");
        }
    }

    const AWS_ENV: [(&str, &str); 4] = [
        (ENV_TOKEN, "t"),
        (ENV_AWS_REGION, "ap-northeast-2"),
        (ENV_AWS_ACCESS_KEY_ID, "ASIAEXAMPLE"),
        (ENV_AWS_SECRET_ACCESS_KEY, "sk-s3cr3t"),
    ];

    fn aws_cfg(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut pairs = AWS_ENV.to_vec();
        pairs.extend_from_slice(extra);
        cfg(&pairs)
    }

    #[test]
    fn a_secret_id_needs_no_url_and_defaults_to_require() {
        let c = aws_cfg(&[
            (
                ENV_DATABASE_SECRET_ID,
                "arn:aws:secretsmanager:ap-northeast-2:123456789012:secret:makenaide/db-AbCdEf",
            ),
            (ENV_AWS_SESSION_TOKEN, "sess-tok"),
        ])
        .unwrap();
        assert!(c.database.is_none());
        let s = c.database_secret.as_ref().unwrap();
        assert!(s.secret_id.ends_with("makenaide/db-AbCdEf"));
        assert_eq!(s.ssl.default_mode, SslMode::Require);
        assert_eq!(s.aws.region, "ap-northeast-2");
        assert_eq!(
            s.aws.credentials.session_token.as_ref().map(Secret::expose),
            Some("sess-tok")
        );
        assert_eq!(
            s.aws.endpoint_of("secretsmanager"),
            "https://secretsmanager.ap-northeast-2.amazonaws.com"
        );
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("sk-s3cr3t") && !dbg.contains("sess-tok"), "{dbg}");

        let c = aws_cfg(&[
            (ENV_DATABASE_SECRET_ID, "makenaide/db"),
            (ENV_DB_SSLMODE, "verify-full"),
            (ENV_AWS_ENDPOINT_URL, "http://127.0.0.1:5000/"),
        ])
        .unwrap();
        let s = c.database_secret.unwrap();
        assert_eq!(s.ssl.mode, Some(SslMode::VerifyFull));
        assert_eq!(s.aws.endpoint_of("secretsmanager"), "http://127.0.0.1:5000");
    }

    #[test]
    fn secret_and_iam_configuration_errors_say_what_to_fix() {
        let url = "postgres://u:pw@db.example:5432/app";
        for (pairs, var, needle) in [
            (
                vec![(ENV_DATABASE_SECRET_ID, "s"), (ENV_DATABASE_URL, url)],
                ENV_DATABASE_SECRET_ID,
                "keep one",
            ),
            (
                vec![(ENV_DATABASE_SECRET_ID, "s"), (ENV_DB_IAM_AUTH, "true")],
                ENV_DB_IAM_AUTH,
                "does not combine",
            ),
            (
                vec![(ENV_DB_IAM_AUTH, "true")],
                ENV_DB_IAM_AUTH,
                "needs MAKENAIDE_DATABASE_URL",
            ),
            (
                vec![(ENV_DB_IAM_AUTH, "true"), (ENV_DATABASE_URL, url)],
                ENV_DATABASE_URL,
                "remove the password",
            ),
            (
                vec![
                    (ENV_DB_IAM_AUTH, "true"),
                    (ENV_DATABASE_URL, "postgres://u@db.example/app?sslmode=prefer"),
                ],
                ENV_DB_SSLMODE,
                "requires TLS",
            ),
            (
                vec![
                    (ENV_DB_IAM_AUTH, "true"),
                    (ENV_DATABASE_URL, "postgres://u@db.example/app"),
                    (ENV_DB_SSLMODE, "disable"),
                ],
                ENV_DB_SSLMODE,
                "requires TLS",
            ),
            (
                vec![(ENV_DATABASE_SECRET_ID, "s"), (ENV_DB_SSLMODE, "always")],
                ENV_DB_SSLMODE,
                "unknown",
            ),
            (
                vec![(ENV_DATABASE_SECRET_ID, "s"), (ENV_DB_SSLROOTCERT, "/nonexistent.pem")],
                ENV_DB_SSLROOTCERT,
                "does not exist",
            ),
            (
                vec![(ENV_DATABASE_SECRET_ID, "s"), (ENV_AWS_ENDPOINT_URL, "localhost:5000")],
                ENV_AWS_ENDPOINT_URL,
                "tests only",
            ),
        ] {
            let e = aws_cfg(&pairs).unwrap_err();
            assert_eq!(e.var, var, "{pairs:?}: {e}");
            assert!(e.message.contains(needle), "{pairs:?}: {e}");
            assert!(!e.message.contains("pw@"), "{e}");
        }
        // No region / no credentials.
        let e = cfg(&[(ENV_TOKEN, "t"), (ENV_DATABASE_SECRET_ID, "s")]).unwrap_err();
        assert_eq!(e.var, ENV_AWS_REGION);
        let e = cfg(&[
            (ENV_TOKEN, "t"),
            (ENV_DATABASE_SECRET_ID, "s"),
            (ENV_AWS_DEFAULT_REGION, "us-east-1"),
        ])
        .unwrap_err();
        assert_eq!(e.var, ENV_AWS_ACCESS_KEY_ID);
        assert!(e.message.contains("Lambda sets"), "{e}");
    }

    #[test]
    fn iam_auth_takes_a_password_less_url_with_tls() {
        let c = aws_cfg(&[
            (ENV_DB_IAM_AUTH, "true"),
            (
                ENV_DATABASE_URL,
                "postgres://iam_user@mydb.xxxx.ap-northeast-2.rds.amazonaws.com/app",
            ),
        ])
        .unwrap();
        let db = c.database.unwrap();
        assert_eq!(db.ssl_mode, SslMode::Require, "IAM defaults to require");
        let iam = db.iam.unwrap();
        let token = iam.token();
        assert!(
            token.starts_with("mydb.xxxx.ap-northeast-2.rds.amazonaws.com:5432/?Action=connect&DBUser=iam_user&"),
            "{token}"
        );
        assert!(token.contains("%2Fap-northeast-2%2Frds-db%2Faws4_request"), "{token}");
        // MAKENAIDE_DB_SSLMODE wins over the URL's sslmode.
        let c = aws_cfg(&[
            (ENV_DATABASE_URL, "postgres://u:p@h/app?sslmode=disable"),
            (ENV_DB_SSLMODE, "require"),
        ])
        .unwrap();
        assert_eq!(c.database.unwrap().ssl_mode, SslMode::Require);
    }

    #[test]
    fn sslmode_defaults_to_prefer_and_disable_is_plain() {
        let db = parse_database_url("postgresql://u@localhost/db").unwrap();
        assert_eq!(db.ssl_mode, SslMode::Prefer);
        let db = parse_database_url("postgresql://u@localhost/db?sslmode=disable").unwrap();
        assert_eq!(db.ssl_mode, SslMode::Disable);
        assert_eq!(db.pg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);
    }
}
