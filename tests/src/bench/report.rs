//! What the benchmark measured (serialised to `bench-out/results.json`, which `bench/plot.py` charts) and its
//! Markdown form (`docs/benchmarks.md`): a goal table with verdicts, then one table per figure.

use std::fmt::Write as _;

use serde::Serialize;

use super::stats::Summary;
use super::Options;

/// The performance goals (README "Performance").
pub const GOAL_WARM_RATIO: f64 = 20.0;
/// Warm handler time of makenaide-core (a) over the in-process floor (d), at most (issue "one round trip").
pub const GOAL_FLOOR_RATIO: f64 = 1.25;
pub const GOAL_HOP_ADDED_US: f64 = 50.0;
pub const GOAL_REGISTERED_MS: f64 = 5.0;
pub const GOAL_COLD_ADDED_MS: f64 = 10.0;
pub const GOAL_PCT_OF_LIMIT: f64 = 95.0;
pub const GOAL_EXT_RSS_KIB: u64 = 15 * 1024;
pub const GOAL_FN_RSS_KIB: u64 = 8 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub key: String,
    pub name: String,
    /// Invoke → response at the Runtime API.
    pub summary: Summary,
    /// The handler's own `execution_time` (inside the function process).
    pub handler: Summary,
}

impl Variant {
    pub fn new(key: &str, name: &str, summary: Summary, handler: Summary) -> Self {
        Self {
            key: key.into(),
            name: name.into(),
            summary,
            handler,
        }
    }
}

/// One variant's time outside its handler in figure 1, split by the harness's journal: `delivery` = enqueue → the
/// event leaves the simulator for the runtime (thaw of the frozen processes, the simulator, its hop to the front);
/// `runtime` = that → the runtime's response reaches the front, minus the handler's own time (the front → runtime
/// → front hops and the runtime client's work around the handler); `forward` = the front forwarding that response to
/// the simulator and back (a harness cost: the invocation's time ends before it, at the front's receipt).
#[derive(Debug, Clone, Serialize)]
pub struct OutsideHandler {
    pub key: String,
    pub delivery: Summary,
    pub runtime: Summary,
    pub forward: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Warm {
    pub n: usize,
    pub variants: Vec<Variant>,
    /// Outside-the-handler split per variant (the harness's fixed cost).
    pub outside: Vec<OutsideHandler>,
    /// Handler time (the function's own `execution_time`), the goals: b/a ≥ 20, a/d ≤ 1.25.
    pub handler_ratio_b_over_a_p50: f64,
    pub handler_ratio_a_over_d_p50: f64,
    pub ratio_b_over_a_p50: f64,
    pub ratio_b_over_a_p99: f64,
    pub ratio_c_over_a_p50: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HopRow {
    pub name: String,
    pub summary: Summary,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub rows: Vec<HopRow>,
    /// The calls of a warm collector invocation, through the extension and directly.
    pub components: Vec<HopRow>,
    pub added_p50_us: f64,
    pub added_p99_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdVariant {
    pub key: String,
    pub name: String,
    pub n: usize,
    /// Median spawn of the first process to the end of Init (runtime and extensions called `next`).
    pub init_ms: f64,
    /// Median duration of the first invocation.
    pub first_invoke_ms: f64,
    /// Median spawn to the first response (Init + first invocation).
    pub first_response_ms: f64,
    pub first_response_max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Cold {
    pub variants: Vec<ColdVariant>,
    /// Median first response of (a) minus that of (c).
    pub added_by_extension_ms: f64,
    pub ratio_b_over_a: f64,
    /// Median `elapsed_us` of the extension's own "extension registered" log line (since its `main`).
    pub ext_registered_log_us: f64,
    pub ext_ready_log_us: f64,
    /// Median process spawn (harness) to the registration answered.
    pub ext_spawn_to_registered_ms: f64,
    pub ext_spawn_to_registered_max_ms: f64,
    /// Median process spawn to the extension's first `next`.
    pub ext_spawn_to_ready_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRun {
    pub name: String,
    pub markets: usize,
    pub wall_s: f64,
    pub candle_requests: u64,
    pub responses_429: u64,
    pub responses_418: u64,
    pub rows_stored: u64,
    pub rows_expected: u64,
    pub failed_markets: usize,
    /// Markets per second against Upbit's 10/s.
    pub pct_of_limit: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub bound_s: f64,
    pub limit_per_s: f64,
    pub latency_ms: u64,
    pub runs: Vec<ThroughputRun>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkRun {
    pub name: String,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bulk {
    pub rows_target: u64,
    pub runs: Vec<BulkRun>,
    pub ratio_vs_rust_row_by_row: f64,
    pub ratio_vs_python_row_by_row: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemSample {
    pub process: String,
    pub phase: String,
    pub peak_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    pub name: String,
    pub bytes: u64,
    pub budget_bytes: Option<u64>,
    pub ok: Option<bool>,
    pub modified: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    pub zips: Vec<SizeRow>,
    pub binaries: Vec<SizeRow>,
    pub python_deps_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub python: String,
    pub postgres: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub machine: Machine,
    pub setup_note: String,
    pub warm_n: usize,
    pub hop_n: usize,
    pub cold_n: usize,
    pub warm: Option<Warm>,
    pub hop: Option<Hop>,
    pub cold: Option<Cold>,
    pub throughput: Option<Throughput>,
    pub bulk: Option<Bulk>,
    pub memory: Vec<MemSample>,
    /// Highest peak RSS per process kind, KiB.
    pub memory_peaks: Vec<MemSample>,
    pub sizes: Option<Sizes>,
    pub errors: Vec<String>,
}

fn first_line_of(path: &str, key: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

impl Report {
    pub fn new(opts: &Options, postgres: &str) -> Self {
        let python = std::process::Command::new(&opts.python)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            generated_at: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            machine: Machine {
                cpu: first_line_of("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into()),
                cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                python,
                postgres: postgres.to_string(),
            },
            setup_note: String::new(),
            warm_n: opts.warm,
            hop_n: opts.hop,
            cold_n: opts.cold,
            warm: None,
            hop: None,
            cold: None,
            throughput: None,
            bulk: None,
            memory: Vec::new(),
            memory_peaks: Vec::new(),
            sizes: None,
            errors: Vec::new(),
        }
    }

    pub fn add_memory(&mut self, process: &str, phase: &str, peak_kib: u64) {
        self.memory.push(MemSample {
            process: process.into(),
            phase: phase.into(),
            peak_kib,
        });
    }

    /// Highest sample per process.
    pub fn finish_memory(&mut self) {
        let mut peaks: Vec<MemSample> = Vec::new();
        for s in &self.memory {
            match peaks.iter_mut().find(|p| p.process == s.process) {
                Some(p) if p.peak_kib >= s.peak_kib => {}
                Some(p) => *p = s.clone(),
                None => peaks.push(s.clone()),
            }
        }
        self.memory_peaks = peaks;
    }

    fn peak(&self, process: &str) -> Option<&MemSample> {
        self.memory_peaks.iter().find(|p| p.process == process)
    }

    /// `docs/benchmarks.md`.
    pub fn markdown(&self, opts: &Options) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# makenaide-core benchmarks\n");
        let _ = writeln!(
            s,
            "Generated by `./bench.sh` ({}) on {} ({} vCPU, Linux {}), {}, {}. This machine is not Lambda \
             hardware: read ratios and orders of magnitude, not absolute Lambda numbers. Every comparison below \
             was measured side by side in the same run. Samples: warm {} invocations per variant, hop {} \
             requests per variant, cold {} starts per variant. Raw data: `bench-out/results.json`; chart: \
             `docs/benchmarks.png`.\n",
            self.generated_at, m.cpu, m.cpus, m.kernel, m.python, self.setup_note, self.warm_n, self.hop_n, self.cold_n
        );
        let _ = writeln!(
            s,
            "Variants: **(a)** makenaide-core = the extension + the Rust `makenaide-data-collector`; **(b)** the \
             Python baseline (`bench/python_baseline`: requests without a session, psycopg2 with a new \
             connection per invocation, row-by-row upserts, run by AWS's `awslambdaric` against the same \
             emulated Runtime API); **(c)** `bench-direct-collector`, a Rust function with no extension that \
             connects to PostgreSQL (TLS + SCRAM) per invocation. All run as separate processes under the \
             emulated Lambda environment, frozen (SIGSTOP) between invocations.\n"
        );
        self.goals(&mut s);
        self.details(&mut s);
        if !self.errors.is_empty() {
            let _ = writeln!(s, "\n## Errors during this run\n");
            for e in &self.errors {
                let _ = writeln!(s, "- {}", e.replace('\n', " "));
            }
        }
        if let Ok(notes) = std::fs::read_to_string(&opts.notes) {
            let _ = writeln!(s, "\n{}", notes.trim_end());
        }
        s
    }

    fn goals(&self, s: &mut String) {
        let _ = writeln!(s, "## Goals\n");
        let _ = writeln!(s, "| # | figure | measured | goal | verdict |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        let v = |ok: bool| if ok { "**met**" } else { "**not met**" };
        match &self.warm {
            Some(w) => {
                let _ = writeln!(
                    s,
                    "| 1 | warm invocation p50, Python (b) / makenaide-core (a) | {:.2} ms vs {:.2} ms = **{:.1}×** | ≥ {GOAL_WARM_RATIO}× | {} |",
                    w.variants[1].summary.p50_ms(),
                    w.variants[0].summary.p50_ms(),
                    w.ratio_b_over_a_p50,
                    v(w.ratio_b_over_a_p50 >= GOAL_WARM_RATIO)
                );
                let _ = writeln!(
                    s,
                    "| 1 | warm handler time p50, Python (b) / makenaide-core (a) | {:.2} ms vs {:.2} ms = **{:.1}×** | ≥ {GOAL_WARM_RATIO}× | {} |",
                    w.variants[1].handler.p50_ms(),
                    w.variants[0].handler.p50_ms(),
                    w.handler_ratio_b_over_a_p50,
                    v(w.handler_ratio_b_over_a_p50 >= GOAL_WARM_RATIO)
                );
                if let Some(d) = w.variants.iter().find(|v| v.key == "d") {
                    let _ = writeln!(
                        s,
                        "| 1 | warm handler time p50, makenaide-core (a) / in-process floor (d) | {:.2} ms vs {:.2} ms = **{:.2}×** | ≤ {GOAL_FLOOR_RATIO}× | {} |",
                        w.variants[0].handler.p50_ms(),
                        d.handler.p50_ms(),
                        w.handler_ratio_a_over_d_p50,
                        v(w.handler_ratio_a_over_d_p50 <= GOAL_FLOOR_RATIO)
                    );
                }
            }
            None => {
                let _ = writeln!(s, "| 1 | warm invocation | not measured (see errors) | ≥ 20× | – |");
            }
        }
        match &self.hop {
            Some(h) => {
                let _ = writeln!(
                    s,
                    "| 2 | `select 1` via extension minus warm direct connection, p50 | **+{:.1} µs** (p99 +{:.1} µs) | ≤ +{GOAL_HOP_ADDED_US} µs | {} |",
                    h.added_p50_us,
                    h.added_p99_us,
                    v(h.added_p50_us <= GOAL_HOP_ADDED_US)
                );
            }
            None => {
                let _ = writeln!(s, "| 2 | localhost hop | not measured (see errors) | ≤ +50 µs | – |");
            }
        }
        match &self.cold {
            Some(c) => {
                let _ = writeln!(
                    s,
                    "| 3a | extension registered after exec (median of {}; own log: {:.2} ms after `main`) | **{:.2} ms** (max {:.2}) | ≤ {GOAL_REGISTERED_MS} ms | {} |",
                    c.variants[0].n,
                    c.ext_registered_log_us / 1000.0,
                    c.ext_spawn_to_registered_ms,
                    c.ext_spawn_to_registered_max_ms,
                    v(c.ext_spawn_to_registered_ms <= GOAL_REGISTERED_MS)
                );
                let _ = writeln!(
                    s,
                    "| 3b | first response, (a) minus (c) (median spawn → first response) | {:.1} ms vs {:.1} ms = **{:+.1} ms** | ≤ +{GOAL_COLD_ADDED_MS} ms | {} |",
                    c.variants[0].first_response_ms,
                    c.variants[2].first_response_ms,
                    c.added_by_extension_ms,
                    v(c.added_by_extension_ms <= GOAL_COLD_ADDED_MS)
                );
            }
            None => {
                let _ = writeln!(s, "| 3 | cold start | not measured (see errors) | | – |");
            }
        }
        match self.throughput.as_ref().and_then(|t| t.runs.first().map(|r| (t, r))) {
            Some((t, r)) => {
                let lossless = r.rows_stored == r.rows_expected && r.failed_markets == 0;
                let _ = writeln!(
                    s,
                    "| 4 | 230 markets under 10 req/s: share of the limit used, rows | **{:.1} %** ({:.2} s vs {:.0} s bound), {} × 429, rows {}/{} | ≥ {GOAL_PCT_OF_LIMIT} %, no row lost | {} |",
                    r.pct_of_limit,
                    r.wall_s,
                    t.bound_s,
                    r.responses_429,
                    r.rows_stored,
                    r.rows_expected,
                    v(r.pct_of_limit >= GOAL_PCT_OF_LIMIT && lossless)
                );
            }
            None => {
                let _ = writeln!(s, "| 4 | throughput | not measured (see errors) | ≥ 95 % | – |");
            }
        }
        if let Some(b) = &self.bulk {
            let _ = writeln!(
                s,
                "| 5 | bulk storage, extension (the collector's statements) vs row-by-row (Rust) | **{:.1}×** the rows/s{} | (no goal) | – |",
                b.ratio_vs_rust_row_by_row,
                b.ratio_vs_python_row_by_row
                    .map(|r| format!("; {r:.1}× Python row-by-row"))
                    .unwrap_or_default()
            );
        }
        let ext = self.peak("extension makenaide-core");
        let fun = self.peak(super::figures::MEM_RUST_FN);
        let py = self.peak(super::figures::MEM_PY_FN);
        if let (Some(e), Some(f)) = (ext, fun) {
            let py_txt = py
                .map(|p| format!("; Python baseline {:.1} MiB", p.peak_kib as f64 / 1024.0))
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "| 6 | peak RSS: extension / Rust function | **{:.1} MiB** ({}) / **{:.1} MiB** ({}){py_txt} | ≤ 15 MiB / ≤ 8 MiB | {} / {} |",
                e.peak_kib as f64 / 1024.0,
                e.phase,
                f.peak_kib as f64 / 1024.0,
                f.phase,
                v(e.peak_kib <= GOAL_EXT_RSS_KIB),
                v(f.peak_kib <= GOAL_FN_RSS_KIB)
            );
        }
        if let Some(z) = &self.sizes {
            if z.zips.is_empty() {
                let _ = writeln!(s, "| 7 | zip sizes | no `dist/*.zip` (run layer-build/build.sh) | layer ≤ 2 MiB, function ≤ 450 KiB | – |");
            } else {
                let bad: Vec<&str> = z
                    .zips
                    .iter()
                    .filter(|r| r.ok == Some(false))
                    .map(|r| r.name.as_str())
                    .collect();
                let largest = |layer: bool| {
                    z.zips
                        .iter()
                        .filter(|r| r.name.starts_with("makenaide-core-layer") == layer)
                        .map(|r| r.bytes)
                        .max()
                        .unwrap_or(0)
                };
                let _ = writeln!(
                    s,
                    "| 7 | zip sizes (`dist/`), largest layer / largest function | **{:.2} MiB** / **{:.0} KiB** | layer ≤ 2 MiB, function ≤ 450 KiB | {} |",
                    largest(true) as f64 / 1048576.0,
                    largest(false) as f64 / 1024.0,
                    if bad.is_empty() { "**met**".to_string() } else { format!("**not met**: {}", bad.join(", ")) }
                );
            }
        }
        let _ = writeln!(s);
    }

    fn details(&self, s: &mut String) {
        if let Some(w) = &self.warm {
            let _ = writeln!(
                s,
                "## 1. Warm invocation\n\nData collector, 1 market × 3 day candles, upsert; simulated Upbit with no \
                 added latency and no enforced limit; the extension's quotation cache off (every invocation reaches \
                 Upbit). {} invocations per variant after {} warm-up ones, interleaved a, b, c, a-off, d, e, a, b, … Time \
                 = invoke → the runtime's response at the emulated Runtime API (so it includes the Runtime API \
                 round trip and the thaw, the same for every variant); \"handler\" is the function's own \
                 `execution_time` from its result envelope. (e) is (b)'s job moved onto the layer: \
                 examples/python/data_collector with the layer's makenaide_core, same interpreter as (b).\n",
                w.n,
                super::figures::WARMUP_COUNT
            );
            let _ = writeln!(s, "| variant | p50 ms | p99 ms | mean ms | min ms | max ms | p50 vs (a) | handler p50 ms | handler p99 ms | outside handler p50 ms |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
            let a = w.variants[0].summary.p50_us;
            for v in &w.variants {
                let x = &v.summary;
                let _ = writeln!(
                    s,
                    "| ({}) {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}× | {:.2} | {:.2} | {:.2} |",
                    v.key,
                    v.name,
                    x.p50_ms(),
                    x.p99_ms(),
                    x.mean_us / 1e3,
                    x.min_us / 1e3,
                    x.max_us / 1e3,
                    x.p50_us / a,
                    v.handler.p50_ms(),
                    v.handler.p99_ms(),
                    x.p50_ms() - v.handler.p50_ms()
                );
            }
            let _ = writeln!(
                s,
                "\n(b)/(a): **{:.1}×** at p50, {:.1}× at p99. (c)/(a): {:.1}× at p50.\n",
                w.ratio_b_over_a_p50, w.ratio_b_over_a_p99, w.ratio_c_over_a_p50
            );
            let _ = writeln!(
                s,
                "Outside the handler, p50 µs (from the harness's journal): *delivery* = enqueue → the event leaves \
                 the simulator (thaw of the frozen processes, the simulator, its hop to the front); *runtime* = \
                 that → the runtime's response at the front, minus the handler (front ↔ runtime hops and the runtime \
                 client's own work); *forward* = the front handing the response on to the simulator: a harness \
                 cost Lambda does not have, so the times above end at the front's receipt of the response and do not \
                 include it.\n"
            );
            let _ = writeln!(s, "| variant | delivery | runtime | forward | sum |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            for o in &w.outside {
                let _ = writeln!(
                    s,
                    "| ({}) | {:.0} | {:.0} | {:.0} | {:.0} |",
                    o.key,
                    o.delivery.p50_us,
                    o.runtime.p50_us,
                    o.forward.p50_us,
                    o.delivery.p50_us + o.runtime.p50_us + o.forward.p50_us
                );
            }
            let _ = writeln!(s);
        }
        if let Some(h) = &self.hop {
            let _ = writeln!(
                s,
                "## 2. Localhost hop\n\nSequential requests from one current-thread tokio runtime (as the functions \
                 run), in blocks of 100 rotating between the rows; the extension's `/db/query` runs `select 1` in its \
                 own transaction over its warm TLS pool.\n"
            );
            let _ = writeln!(s, "| path | p50 µs | p99 µs | mean µs | min µs |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            for r in &h.rows {
                let x = &r.summary;
                let _ = writeln!(
                    s,
                    "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                    r.name, x.p50_us, x.p99_us, x.mean_us, x.min_us
                );
            }
            let _ = writeln!(
                s,
                "\nAdded by the extension (vs direct prepared): **{:+.1} µs** at p50, {:+.1} µs at p99.\n",
                h.added_p50_us, h.added_p99_us
            );
            if !h.components.is_empty() {
                let _ = writeln!(
                    s,
                    "Where a warm collector invocation's handler time goes (the same two calls it makes, timed one \
                     by one from the bench process, 300 each):\n"
                );
                let _ = writeln!(s, "| call | p50 µs | p99 µs | mean µs |");
                let _ = writeln!(s, "|---|---|---|---|");
                for r in &h.components {
                    let x = &r.summary;
                    let _ = writeln!(
                        s,
                        "| {} | {:.1} | {:.1} | {:.1} |",
                        r.name, x.p50_us, x.p99_us, x.mean_us
                    );
                }
                let _ = writeln!(s);
            }
        }
        if let Some(c) = &self.cold {
            let _ = writeln!(
                s,
                "## 3. Cold start\n\nA new environment per start; process spawn → first response = Init (first \
                 spawn → runtime and extensions called `next`) + the first invocation (which includes the first \
                 PostgreSQL and Upbit connections where they are not warmed during Init). Medians of {} starts per \
                 variant, rotated.\n",
                self.cold_n
            );
            let _ = writeln!(
                s,
                "| variant | Init ms | first invocation ms | spawn → first response ms | max ms |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|");
            for v in &c.variants {
                let _ = writeln!(
                    s,
                    "| ({}) {} | {:.1} | {:.1} | **{:.1}** | {:.1} |",
                    v.key, v.name, v.init_ms, v.first_invoke_ms, v.first_response_ms, v.first_response_max_ms
                );
            }
            let _ = writeln!(
                s,
                "\nExtension: registered {:.2} ms after spawn (harness; its own log says {:.2} ms after `main`), \
                 first `next` (ready for Init to end) {:.2} ms after spawn; its PostgreSQL pool and Upbit connection \
                 were warm {:.2} ms after `main` (own log `extension ready`, done in the background). \
                 (a) − (c): {:+.1} ms; (b)/(a): {:.1}×.\n",
                c.ext_spawn_to_registered_ms,
                c.ext_registered_log_us / 1000.0,
                c.ext_spawn_to_ready_ms,
                c.ext_ready_log_us / 1000.0,
                c.added_by_extension_ms,
                c.ratio_b_over_a
            );
        }
        if let Some(t) = &self.throughput {
            let _ = writeln!(
                s,
                "## 4. Throughput under Upbit's limit\n\n{} KRW markets × 3 day candles; simulated Upbit enforcing \
                 {} requests/s per group (sliding window, 429 then 418 blocks as Upbit does) with {} ms latency per \
                 request. Bound: {:.0} s. One invocation each, started cold.\n",
                t.runs.first().map(|r| r.markets).unwrap_or(0),
                t.limit_per_s,
                t.latency_ms,
                t.bound_s
            );
            let _ = writeln!(s, "| approach | wall s | % of limit | candle requests | 429s | 418s | rows stored / expected | failed markets |");
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
            for r in &t.runs {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {:.1} % | {} | {} | {} | {} / {} | {} |",
                    r.name,
                    r.wall_s,
                    r.pct_of_limit,
                    r.candle_requests,
                    r.responses_429,
                    r.responses_418,
                    r.rows_stored,
                    r.rows_expected,
                    r.failed_markets
                );
            }
            let _ = writeln!(s);
        }
        if let Some(b) = &self.bulk {
            let _ = writeln!(
                s,
                "## 5. Bulk storage\n\n{} rows (200 day candles × 230 markets) into an empty `ohlcv`, upsert \
                 semantics everywhere.\n",
                b.rows_target
            );
            let _ = writeln!(s, "| path | rows | seconds | rows/s | vs extension |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            let ext = b.runs.first().map(|r| r.rows_per_s).unwrap_or(0.0);
            for r in &b.runs {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.2} | {:.0} | {:.2}× |",
                    r.name,
                    r.rows,
                    r.seconds,
                    r.rows_per_s,
                    r.rows_per_s / ext
                );
            }
            let _ = writeln!(s);
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                s,
                "## 6. Memory\n\nPeak RSS (`VmHWM`) of each process at the end of each phase.\n"
            );
            let _ = writeln!(s, "| process | phase | peak RSS MiB |");
            let _ = writeln!(s, "|---|---|---|");
            for m in &self.memory {
                let _ = writeln!(s, "| {} | {} | {:.1} |", m.process, m.phase, m.peak_kib as f64 / 1024.0);
            }
            let _ = writeln!(s);
        }
        if let Some(z) = &self.sizes {
            let _ = writeln!(s, "## 7. Sizes\n");
            if z.zips.is_empty() {
                let _ = writeln!(s, "No `dist/*.zip` found (layer-build/build.sh makes them).\n");
            } else {
                let _ = writeln!(s, "| zip (`dist/`) | KiB | budget KiB | within | built |");
                let _ = writeln!(s, "|---|---|---|---|---|");
                for r in &z.zips {
                    let _ = writeln!(
                        s,
                        "| {} | {:.1} | {} | {} | {} |",
                        r.name,
                        r.bytes as f64 / 1024.0,
                        r.budget_bytes.map(|b| (b / 1024).to_string()).unwrap_or_default(),
                        match r.ok {
                            Some(true) => "yes",
                            Some(false) => "**no**",
                            None => "",
                        },
                        r.modified.clone().unwrap_or_default()
                    );
                }
                let _ = writeln!(s);
            }
            let _ = writeln!(s, "| release binary (host, x86_64-gnu) | KiB |");
            let _ = writeln!(s, "|---|---|");
            for r in &z.binaries {
                let _ = writeln!(s, "| {} | {:.1} |", r.name, r.bytes as f64 / 1024.0);
            }
            if let Some(p) = z.python_deps_bytes {
                let _ = writeln!(
                    s,
                    "| Python baseline's packages on disk (awslambdaric, requests, psycopg2-binary + deps; no pandas) | {:.1} |",
                    p as f64 / 1024.0
                );
            }
            let _ = writeln!(s);
        }
    }
}
