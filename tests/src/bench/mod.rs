//! The benchmark suite (`./bench.sh` runs `makenaide-bench`): makenaide-core against the old Python
//! layer and against the physical floor, every comparison measured side by side in the same run and quoted as a
//! ratio. It prints the figures, writes `bench-out/results.json` (the chart is drawn from it) and
//! `docs/benchmarks.md`. Benchmarks never assert timings: they report them, with each goal's verdict.
//!
//! Set-up shared by the figures: a throwaway PostgreSQL with SCRAM password auth and TLS ([`PgCluster`]), as a
//! managed database; the extension connects with `sslmode=verify-full` and the cluster's CA, the Python baseline
//! with `sslmode=require`, direct Rust connections with TLS verified against the same CA. The schema comes from
//! the real `makenaide-db-initializer`. Each figure starts the simulated Upbit it needs.
//!
//! Variants: (a) makenaide-core = the extension + `makenaide-data-collector`; (b) the Python baseline
//! (`bench/python_baseline`, run by `awslambdaric` from the benchmark venv); (c) `bench-direct-collector`, a
//! Rust function with no extension that connects to PostgreSQL per invocation; (e) the data collector moved onto
//! the layer (`examples/python/data_collector` with the layer's `makenaide_core`, run by `awslambdaric` from the
//! benchmark venv, the layer unpacked as Lambda does: [`crate::python_layer`]).

pub mod direct;
pub mod figures;
mod report;
pub mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::lambda_env::{EnvConfig, LambdaEnv};
use crate::pg::{self, ClusterOptions, PgCluster};
use crate::python_layer::UnpackedLayer;

pub use report::Report;

/// The benchmark's database on its cluster.
const BENCH_DB: &str = "bench";
/// Password of the cluster's superuser (SCRAM-SHA-256).
const BENCH_PASSWORD: &str = "bench-scram-7c1f";
/// The data collector (variant a).
pub const COLLECTOR: &str = makenaide_contract::functions::DATA_COLLECTOR;
/// The schema owner.
const INITIALIZER: &str = makenaide_contract::functions::DB_INITIALIZER;
/// Variant c's binary.
pub const DIRECT_COLLECTOR: &str = "bench-direct-collector";
/// Function timeout of every benchmark environment (the throughput run takes ~25 s).
const FUNCTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Extension knobs the benchmark sets (contract names, docs/contracts.md).
pub const ENV_DATABASE_URL: &str = "MAKENAIDE_DATABASE_URL";
pub const ENV_UPBIT_BASE_URL: &str = "MAKENAIDE_UPBIT_BASE_URL";
pub const ENV_UPBIT_RATE_PER_SEC: &str = "MAKENAIDE_UPBIT_RATE_PER_SEC";
pub const ENV_UPBIT_CACHE_TTL_MS: &str = "MAKENAIDE_UPBIT_CACHE_TTL_MS";
/// The Python baseline's interpreter (read by `bench/python_baseline/bootstrap`).
pub const ENV_BENCH_PYTHON: &str = "BENCH_PYTHON";

/// Command-line options of `makenaide-bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where results.json and the raw files go (`bench-out`).
    pub out_dir: PathBuf,
    /// Where benchmarks.md is written (`docs`).
    pub docs_dir: PathBuf,
    /// The benchmark venv's python (has awslambdaric, requests, psycopg2-binary).
    pub python: PathBuf,
    /// `bench/python_baseline`.
    pub python_dir: PathBuf,
    /// `dist` (zips from layer-build/build.sh, read if present).
    pub dist_dir: PathBuf,
    /// Hand-written analysis appended to benchmarks.md (`bench/notes.md`), if present.
    pub notes: PathBuf,
    /// Warm invocations per variant (figure 1).
    pub warm: usize,
    /// Requests per variant (figure 2).
    pub hop: usize,
    /// Cold starts per variant (figure 3).
    pub cold: usize,
    /// Skip the Python row-by-row run of figure 5.
    pub skip_python_bulk: bool,
    /// Figures to run (1-7); empty = all.
    pub only: Vec<u8>,
}

impl Options {
    pub const USAGE: &'static str =
        "usage: makenaide-bench --python VENV_PYTHON [--out DIR] [--docs DIR] [--python-dir DIR]
                       [--dist DIR] [--notes FILE] [--warm N] [--hop N] [--cold N] [--quick] [--skip-python-bulk]
                       [--only 1,2,...]
  --python PATH   the benchmark venv's python (awslambdaric, requests, psycopg2-binary), required
  --warm N        warm invocations per variant (default 200)   --hop N   requests per variant (default 3000)
  --cold N        cold starts per variant (default 20)         --quick   warm 50, hop 500, cold 3
  --only LIST     run only these figures (1-5, 7; memory (6) is collected along the way)";

    pub fn parse(args: impl IntoIterator<Item = String>) -> std::result::Result<Self, String> {
        let root = crate::lambda_env::bins::workspace_root();
        let mut o = Self {
            out_dir: root.join("bench-out"),
            docs_dir: root.join("docs"),
            python: PathBuf::new(),
            python_dir: root.join("bench").join("python_baseline"),
            dist_dir: root.join("dist"),
            notes: root.join("bench").join("notes.md"),
            warm: 200,
            hop: 3000,
            cold: 20,
            skip_python_bulk: false,
            only: Vec::new(),
        };
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                "--out" => o.out_dir = val("--out")?.into(),
                "--docs" => o.docs_dir = val("--docs")?.into(),
                "--python" => o.python = val("--python")?.into(),
                "--python-dir" => o.python_dir = val("--python-dir")?.into(),
                "--dist" => o.dist_dir = val("--dist")?.into(),
                "--notes" => o.notes = val("--notes")?.into(),
                "--warm" => o.warm = num(&val("--warm")?)?,
                "--hop" => o.hop = num(&val("--hop")?)?,
                "--cold" => o.cold = num(&val("--cold")?)?,
                "--quick" => {
                    o.warm = 50;
                    o.hop = 500;
                    o.cold = 3;
                }
                "--skip-python-bulk" => o.skip_python_bulk = true,
                "--only" => {
                    o.only = val("--only")?
                        .split(',')
                        .map(|f| {
                            f.trim()
                                .parse::<u8>()
                                .map_err(|_| format!("--only: `{f}` is not a figure number"))
                        })
                        .collect::<std::result::Result<_, _>>()?;
                }
                "-h" | "--help" => return Err(Self::USAGE.into()),
                other => return Err(format!("unknown argument `{other}`\n{}", Self::USAGE)),
            }
        }
        if o.python.as_os_str().is_empty() {
            return Err(format!("--python is required\n{}", Self::USAGE));
        }
        Ok(o)
    }
}

fn num(s: &str) -> std::result::Result<usize, String> {
    s.parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or(format!("`{s}` is not a number >= 1"))
}

/// Shared state of one benchmark run.
pub struct Bench {
    pub opts: Options,
    _cluster: PgCluster,
    /// For the extension: `sslmode=verify-full&sslrootcert=<ca>`.
    pub ext_url: String,
    /// For psycopg2: `sslmode=require`.
    pub py_url: String,
    /// For direct tokio-postgres connections: `sslmode=require`, verified against [`Self::ca`].
    pub direct_url: String,
    pub ca: PathBuf,
    /// Helper connection (no TLS) to the bench database: truncate, count.
    pub admin: tokio_postgres::Client,
    pub report: Report,
}

impl Bench {
    /// Starts the cluster, creates the database and applies the schema with the real db-initializer.
    pub async fn setup(opts: Options) -> Result<Self> {
        let cluster = PgCluster::start(ClusterOptions {
            password: Some(BENCH_PASSWORD.into()),
            tls: true,
            ..Default::default()
        })
        .await?;
        cluster.create_database(BENCH_DB).await?;
        let ca = cluster
            .ca_cert()
            .ok_or_else(|| HarnessError::State("cluster has no CA".into()))?;
        let ext_url = format!(
            "{}&sslrootcert={}",
            cluster.url(BENCH_DB, Some("verify-full")),
            ca.display()
        );
        let py_url = cluster.url(BENCH_DB, Some("require"));
        let direct_url = py_url.clone();
        let admin = pg::connect(&cluster.url(BENCH_DB, Some("disable"))).await?;
        let pg_version: String = admin.query_one("show server_version", &[]).await?.get(0);
        let mut report = Report::new(&opts, &pg_version);
        report.setup_note = format!(
            "PostgreSQL {pg_version} (throwaway cluster, SCRAM-SHA-256 + TLS); extension sslmode=verify-full, \
             Python sslmode=require, direct Rust TLS verified against the cluster CA"
        );
        let bench = Self {
            opts,
            _cluster: cluster,
            ext_url,
            py_url,
            direct_url,
            ca,
            admin,
            report,
        };
        bench.init_schema().await?;
        Ok(bench)
    }

    async fn init_schema(&self) -> Result<()> {
        let env = LambdaEnv::start(
            EnvConfig::makenaide(INITIALIZER)
                .env(ENV_DATABASE_URL, &self.ext_url)
                .timeout(FUNCTION_TIMEOUT),
        )
        .await?;
        let out = env.invoke(serde_json::json!({})).await?;
        out.ok()
            .map_err(|e| HarnessError::State(format!("db-initializer: {e}")))?;
        env.shutdown(Duration::from_secs(2)).await?;
        Ok(())
    }

    /// (a) makenaide-core: the extension + the Rust data collector.
    pub fn core_env(&self, upbit: &str) -> EnvConfig {
        EnvConfig::makenaide(COLLECTOR)
            .env(ENV_DATABASE_URL, &self.ext_url)
            .env(ENV_UPBIT_BASE_URL, upbit)
            .timeout(FUNCTION_TIMEOUT)
    }

    /// (b) the Python baseline under awslambdaric.
    pub fn python_env(&self, upbit: &str) -> EnvConfig {
        let mut cfg = EnvConfig::new(self.opts.python_dir.join("bootstrap").display().to_string())
            .env(ENV_DATABASE_URL, &self.py_url)
            .env(ENV_UPBIT_BASE_URL, upbit)
            .env(ENV_BENCH_PYTHON, self.opts.python.display().to_string())
            // The environment is cleared (as on Lambda): the shell and Python need these.
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()))
            .env("LANG", "C.UTF-8")
            .timeout(FUNCTION_TIMEOUT);
        cfg.function_name = "makenaide-data-collector-python".into();
        cfg
    }

    /// (e) the Python data collector on the layer (the extension + `makenaide_core`). The layer directory must
    /// outlive the environment.
    pub fn python_layer_env(&self, upbit: &str) -> Result<(UnpackedLayer, EnvConfig)> {
        let layer = UnpackedLayer::with_built_extension()?;
        let cfg = layer
            .example_collector(&self.opts.python)
            .env(ENV_DATABASE_URL, &self.ext_url)
            .env(ENV_UPBIT_BASE_URL, upbit)
            .timeout(FUNCTION_TIMEOUT);
        Ok((layer, cfg))
    }

    /// (c) a Rust function with no extension, connecting to PostgreSQL per invocation.
    pub fn direct_env(&self, upbit: &str) -> EnvConfig {
        EnvConfig::new(DIRECT_COLLECTOR)
            .env(direct::DATABASE_URL_ENV, &self.direct_url)
            .env(direct::PG_CA_FILE_ENV, self.ca.display().to_string())
            .env(direct::UPBIT_BASE_URL_ENV, upbit)
            .timeout(FUNCTION_TIMEOUT)
    }

    /// Variant (d): the direct collector keeping its warm PostgreSQL connection across invocations.
    pub fn direct_kept_env(&self, upbit: &str) -> EnvConfig {
        self.direct_env(upbit).env(direct::KEEP_CONNECTION_ENV, "1")
    }

    /// Empties `ohlcv`.
    pub async fn truncate(&self) -> Result<()> {
        self.admin.batch_execute("truncate ohlcv").await?;
        Ok(())
    }

    /// Rows in `ohlcv`.
    pub async fn count_rows(&self) -> Result<i64> {
        Ok(self.admin.query_one("select count(*) from ohlcv", &[]).await?.get(0))
    }

    /// Runs every figure, then writes the report files.
    pub async fn run_all(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.opts.out_dir)?;
        self.run_figure(1, "1 warm invocation", |b| Box::pin(figures::warm(b)))
            .await;
        self.run_figure(2, "2 localhost hop", |b| Box::pin(figures::hop(b)))
            .await;
        self.run_figure(3, "3 cold start", |b| Box::pin(figures::cold(b))).await;
        self.run_figure(4, "4 throughput under Upbit's limit", |b| {
            Box::pin(figures::throughput(b))
        })
        .await;
        self.run_figure(5, "5 bulk storage", |b| Box::pin(figures::bulk(b)))
            .await;
        self.run_figure(7, "7 sizes", |b| Box::pin(figures::sizes(b))).await;
        self.report.finish_memory();
        self.write()?;
        Ok(())
    }

    /// Runs one figure; a failure is recorded in the report (the other figures still run).
    async fn run_figure(
        &mut self,
        number: u8,
        name: &str,
        f: impl for<'a> FnOnce(&'a mut Bench) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>,
    ) {
        if !self.opts.only.is_empty() && !self.opts.only.contains(&number) {
            return;
        }
        eprintln!("\n== figure {name} ==");
        let t0 = std::time::Instant::now();
        if let Err(e) = f(self).await {
            eprintln!("figure {name} FAILED: {e}");
            self.report.errors.push(format!("figure {name}: {e}"));
        }
        eprintln!("   ({:.1} s)", t0.elapsed().as_secs_f64());
    }

    fn write(&self) -> Result<()> {
        let json = serde_json::to_string_pretty(&self.report)?;
        std::fs::write(self.opts.out_dir.join("results.json"), json)?;
        let md = self.report.markdown(&self.opts);
        std::fs::create_dir_all(&self.opts.docs_dir)?;
        std::fs::write(self.opts.docs_dir.join("benchmarks.md"), &md)?;
        std::fs::write(self.opts.out_dir.join("benchmarks.md"), &md)?;
        println!("{md}");
        Ok(())
    }
}

/// Runs the whole suite (the body of `makenaide-bench`).
pub async fn main_with(opts: Options) -> Result<()> {
    let mut bench = Bench::setup(opts).await?;
    bench.run_all().await
}

/// `path` relative to the workspace root, for display.
pub fn rel(path: &Path) -> String {
    let root = crate::lambda_env::bins::workspace_root();
    path.strip_prefix(&root).unwrap_or(path).display().to_string()
}
