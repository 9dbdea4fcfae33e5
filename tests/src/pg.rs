//! PostgreSQL for tests: [`TestDb`] makes a uniquely named database on an existing server (default: the
//! machine's PostgreSQL on 127.0.0.1:5432, trust auth) and drops it on drop; [`PgCluster`] starts a throwaway
//! server with the installed binaries (`initdb`, `pg_ctl`) on a free port in a temporary directory, optionally
//! with SCRAM password authentication and TLS (a CA and a server certificate made with `openssl`), for tests that
//! need to stop, restart or kill the server, or that need auth/TLS like a managed database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::error::{HarnessError, Result};

/// Admin URL of the server test databases are made on.
pub const TEST_PG_ENV: &str = "MAKENAIDE_TEST_PG";
/// Default of [`TEST_PG_ENV`]: the machine's PostgreSQL (trust auth for `postgres`).
pub const DEFAULT_TEST_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// `1`: keep test databases after the test (for debugging).
pub const KEEP_DB_ENV: &str = "MAKENAIDE_TEST_KEEP_DB";
/// Directory of the PostgreSQL server binaries (default: the newest `/usr/lib/postgresql/*/bin`).
pub const PG_BIN_DIR_ENV: &str = "MAKENAIDE_PG_BIN_DIR";

/// Prefix of every test database name (so leftovers are easy to find: `\l mk_test_*`).
pub const TEST_DB_PREFIX: &str = "mk_test_";

/// One session of `pg_stat_activity`.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub pid: i32,
    pub application_name: String,
    pub backend_start: chrono::DateTime<chrono::Utc>,
    pub state: Option<String>,
    pub client_port: Option<i32>,
}

/// Connects with tokio-postgres (no TLS) and drives the connection in a background task.
pub async fn connect(url: &str) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Replaces the database name (path) of a PostgreSQL URL, keeping the query string.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // scheme://authority/dbname
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A database made for one test, dropped (its sessions terminated first) when this value is dropped.
pub struct TestDb {
    name: String,
    admin_url: String,
    url: String,
}

impl TestDb {
    /// Creates a database on the server at `$MAKENAIDE_TEST_PG` (default [`DEFAULT_TEST_PG`]).
    pub async fn create() -> Result<Self> {
        let admin = std::env::var(TEST_PG_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_TEST_PG.into());
        Self::create_on(&admin).await
    }

    /// Creates a database on the server of `admin_url` (a URL of a role allowed to create databases).
    pub async fn create_on(admin_url: &str) -> Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{TEST_DB_PREFIX}{}_{}_{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            crate::lambda_env::random_hex(3)
        );
        let admin = connect(admin_url).await?;
        admin.batch_execute(&format!("create database {name}")).await?;
        Ok(Self {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL of the test database (same role and server as the admin URL).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new helper connection to the test database.
    pub async fn connect(&self) -> Result<Client> {
        connect(&self.url).await
    }

    /// Sessions connected to this database, other than the helper connection used to look. With
    /// `application_name`, only those.
    pub async fn sessions(&self, application_name: Option<&str>) -> Result<Vec<Session>> {
        let admin = connect(&self.admin_url).await?;
        let rows = admin
            .query(
                "select pid, coalesce(application_name, ''), backend_start, state, client_port
                   from pg_stat_activity
                  where datname = $1 and pid <> pg_backend_pid()
                    and ($2::text is null or application_name = $2)
                  order by pid",
                &[&self.name, &application_name],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Session {
                pid: r.get(0),
                application_name: r.get(1),
                backend_start: r.get(2),
                state: r.get(3),
                client_port: r.get(4),
            })
            .collect())
    }

    /// Terminates sessions of this database (optionally only those with `application_name`); returns how many.
    pub async fn terminate_sessions(&self, application_name: Option<&str>) -> Result<usize> {
        let admin = connect(&self.admin_url).await?;
        let rows = admin
            .query(
                "select pg_terminate_backend(pid) from pg_stat_activity
                  where datname = $1 and pid <> pg_backend_pid()
                    and ($2::text is null or application_name = $2)",
                &[&self.name, &application_name],
            )
            .await?;
        Ok(rows.len())
    }

    /// Waits (bounded) until no session other than the harness's is connected, e.g. after SHUTDOWN. Polls
    /// `pg_stat_activity` (the server's own record) with a short backoff.
    pub async fn wait_no_sessions(&self, application_name: Option<&str>, timeout: Duration) -> Result<Vec<Session>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = Duration::from_millis(5);
        loop {
            let left = self.sessions(application_name).await?;
            if left.is_empty() || tokio::time::Instant::now() + backoff > deadline {
                return Ok(left);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    fn drop_now(name: &str, admin_url: &str) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let admin = connect(admin_url).await?;
            admin
                .execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
                    &[&name],
                )
                .await?;
            admin.batch_execute(&format!("drop database if exists {name} with (force)")).await?;
            Ok(())
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::env::var(KEEP_DB_ENV).is_ok_and(|v| v == "1") {
            eprintln!("keeping test database {} ({})", self.name, self.url);
            return;
        }
        // Drop may run inside a tokio runtime, which cannot be blocked on: do it on a thread of its own.
        let (name, admin) = (self.name.clone(), self.admin_url.clone());
        let done = std::thread::spawn(move || Self::drop_now(&name, &admin)).join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Options of a throwaway cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Password of the superuser `postgres`; when set, TCP connections use SCRAM-SHA-256.
    pub password: Option<String>,
    /// Serve TLS (self-signed CA + server certificate for `localhost` and 127.0.0.1).
    pub tls: bool,
    /// Refuse non-TLS TCP connections.
    pub require_tls: bool,
    /// `max_connections`.
    pub max_connections: Option<u32>,
    /// Extra `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
}

impl ClusterOptions {
    /// Like a managed database: SCRAM with a random superuser password, and TLS.
    pub fn scram_tls() -> Self {
        Self {
            password: Some(format!("admin-{}", crate::lambda_env::random_hex(8))),
            tls: true,
            ..Default::default()
        }
    }
}

/// A PostgreSQL server of its own, in a temporary directory; stopped (immediate) and removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    opts: ClusterOptions,
}

impl PgCluster {
    /// initdb + configure + start (waits for readiness with `pg_ctl -w`).
    pub async fn start(opts: ClusterOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::start_blocking(opts))
            .await
            .map_err(|e| HarnessError::State(format!("cluster start task: {e}")))?
    }

    fn start_blocking(opts: ClusterOptions) -> Result<Self> {
        let bin = pg_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("mk-pg-").tempdir()?;
        let data = dir.path().join("data");
        let port = crate::lambda_env::free_port();
        let as_root = nix::unistd::geteuid().is_root();
        // initdb refuses to run as root: the cluster then belongs to the `postgres` system user.
        if as_root {
            chown_postgres(dir.path())?;
        }
        let mut initdb = vec![
            bin.join("initdb").display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-U".into(),
            "postgres".into(),
            "-E".into(),
            "UTF8".into(),
            "--no-sync".into(),
            "--auth-local=trust".into(),
        ];
        if let Some(pw) = &opts.password {
            let pwfile = dir.path().join("pwfile");
            std::fs::write(&pwfile, format!("{pw}\n"))?;
            if as_root {
                chown_postgres(&pwfile)?;
            }
            initdb.push(format!("--pwfile={}", pwfile.display()));
            initdb.push("--auth-host=scram-sha-256".into());
        } else {
            initdb.push("--auth-host=trust".into());
        }
        run(&initdb, as_root)?;

        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_buffers = 32MB".into(),
            "password_encryption = 'scram-sha-256'".into(),
        ];
        if let Some(n) = opts.max_connections {
            conf.push(format!("max_connections = {n}"));
        }
        if opts.tls {
            make_certs(dir.path(), as_root)?;
            conf.push("ssl = on".into());
            conf.push(format!("ssl_cert_file = '{}'", dir.path().join("server.crt").display()));
            conf.push(format!("ssl_key_file = '{}'", dir.path().join("server.key").display()));
        }
        conf.extend(opts.extra_conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"))?;
        let method = if opts.password.is_some() {
            "scram-sha-256"
        } else {
            "trust"
        };
        let hba = if opts.require_tls {
            format!("local all all trust\nhostssl all all 127.0.0.1/32 {method}\nhostnossl all all 0.0.0.0/0 reject\n")
        } else {
            format!("local all all trust\nhost all all 127.0.0.1/32 {method}\n")
        };
        std::fs::write(data.join("pg_hba.conf"), hba)?;
        if as_root {
            chown_postgres(&data.join("pg_hba.conf"))?;
        }
        let cluster = Self { dir, bin, port, opts };
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<()> {
        let mut cmd = vec![
            self.bin.join("pg_ctl").display().to_string(),
            "-D".into(),
            self.data().display().to_string(),
        ];
        cmd.extend(args.iter().map(|s| s.to_string()));
        run(&cmd, nix::unistd::geteuid().is_root())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let log = self.dir.path().join("server.log").display().to_string();
        self.pg_ctl(&["-l", &log, "-w", "-t", "60", "start"])
    }

    /// Starts the server again after [`Self::stop`].
    pub async fn start_again(&self) -> Result<()> {
        let (bin, dir) = (self.bin.clone(), self.dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            let log = dir.join("server.log").display().to_string();
            run(
                &[
                    bin.join("pg_ctl").display().to_string(),
                    "-D".into(),
                    dir.join("data").display().to_string(),
                    "-l".into(),
                    log,
                    "-w".into(),
                    "-t".into(),
                    "60".into(),
                    "start".into(),
                ],
                nix::unistd::geteuid().is_root(),
            )
        })
        .await
        .map_err(|e| HarnessError::State(e.to_string()))?
    }

    /// Stops the server (`fast`: disconnect clients and shut down; `immediate`: like a crash).
    pub async fn stop(&self, immediate: bool) -> Result<()> {
        let (bin, data) = (self.bin.clone(), self.data());
        let mode = if immediate { "immediate" } else { "fast" };
        tokio::task::spawn_blocking(move || {
            run(
                &[
                    bin.join("pg_ctl").display().to_string(),
                    "-D".into(),
                    data.display().to_string(),
                    "-m".into(),
                    mode.into(),
                    "-w".into(),
                    "stop".into(),
                ],
                nix::unistd::geteuid().is_root(),
            )
        })
        .await
        .map_err(|e| HarnessError::State(e.to_string()))?
    }

    /// Restarts the server (fast stop, start).
    pub async fn restart(&self) -> Result<()> {
        self.stop(false).await?;
        self.start_again().await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL for database `db` as the superuser, with the password if there is one, and `sslmode` when given.
    pub fn url(&self, db: &str, sslmode: Option<&str>) -> String {
        let auth = match &self.opts.password {
            Some(pw) => format!("postgres:{pw}@"),
            None => "postgres@".to_string(),
        };
        let q = sslmode.map(|m| format!("?sslmode={m}")).unwrap_or_default();
        format!("postgres://{auth}127.0.0.1:{}/{db}{q}", self.port)
    }

    /// Admin URL for the helpers (no TLS: the helpers connect with `NoTls`, so not usable with `require_tls`).
    pub fn admin_url(&self) -> String {
        self.url("postgres", Some("disable"))
    }

    /// The CA certificate that signed the server certificate (for `sslmode=verify-ca|verify-full` clients).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.opts.tls.then(|| self.dir.path().join("ca.crt"))
    }

    /// Creates database `db` (if missing).
    pub async fn create_database(&self, db: &str) -> Result<()> {
        let admin = connect(&self.admin_url()).await?;
        let exists = admin
            .query_opt("select 1 from pg_database where datname = $1", &[&db])
            .await?
            .is_some();
        if !exists {
            admin.batch_execute(&format!("create database {db}")).await?;
        }
        Ok(())
    }

    /// The server's log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
    }
}

/// The newest installed server binaries (`$MAKENAIDE_PG_BIN_DIR` overrides).
pub fn pg_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(PG_BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| HarnessError::Command {
        command: "initdb".into(),
        detail: "no /usr/lib/postgresql/*/bin/initdb (install postgresql, or set MAKENAIDE_PG_BIN_DIR)".into(),
    })
}

fn run(argv: &[String], as_postgres: bool) -> Result<()> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).args(argv);
        c
    } else {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    // The server must not inherit the test's pipes: a captured stdout would keep `cargo test` waiting.
    cmd.stdin(std::process::Stdio::null());
    let out = cmd.output().map_err(|e| HarnessError::Command {
        command: argv.join(" "),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: argv.join(" "),
            detail: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    writeln!(f, "\n# makenaide test harness\n{text}")?;
    Ok(())
}

fn postgres_ids() -> Result<(u32, u32)> {
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .ok_or_else(|| HarnessError::Command {
            command: "getpwnam postgres".into(),
            detail: "no `postgres` user".into(),
        })?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

fn chown_postgres(path: &Path) -> Result<()> {
    let (uid, gid) = postgres_ids()?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

/// A CA and a server certificate (CN localhost, SAN localhost + 127.0.0.1) signed by it. rustls/webpki reject a
/// self-signed CA certificate used directly as the server's, hence the two-level chain.
fn make_certs(dir: &Path, as_root: bool) -> Result<()> {
    let p = |f: &str| dir.join(f).display().to_string();
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| HarnessError::Command {
                command: format!("openssl {}", args.join(" ")),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(HarnessError::Command {
                command: format!("openssl {}", args.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    };
    let ext = dir.join("server.ext");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
        "-days",
        "3",
        "-subj",
        "/CN=makenaide-test-ca",
    ])?;
    openssl(&[
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
        "-subj",
        "/CN=localhost",
    ])?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-out",
        &p("server.crt"),
        "-days",
        "3",
        "-extfile",
        &ext.display().to_string(),
    ])?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
    if as_root {
        chown_postgres(&dir.join("server.key"))?;
        chown_postgres(&dir.join("server.crt"))?;
    }
    Ok(())
}
