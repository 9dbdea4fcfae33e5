//! PostgreSQL and Upbit used directly, without the extension: the TLS connector the benchmark's own direct
//! connections use (figure 2's floor, figure 5's row-by-row inserts) and the body of `bench-direct-collector`
//! (figures 1 and 3): variant (c) connects to PostgreSQL on every invocation; variant (d), with
//! [`KEEP_CONNECTION_ENV`] set, keeps one warm TLS connection and its prepared upsert across invocations (the
//! in-process floor that any sidecar design is measured against, issue "one round trip").

use std::path::Path;
use std::sync::Arc;

use makenaide_pipeline::upbit::Candle;
use serde_json::{json, Value};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{HarnessError, Result};

/// PostgreSQL URL of the direct collector (`sslmode=require`; the CA below makes it verify the server).
pub const DATABASE_URL_ENV: &str = "MAKENAIDE_DATABASE_URL";
/// Upbit base URL (no `/v1`), as for the extension.
pub const UPBIT_BASE_URL_ENV: &str = "MAKENAIDE_UPBIT_BASE_URL";
/// PEM file of the CA that signed the server certificate (what libpq's `sslrootcert` is).
pub const PG_CA_FILE_ENV: &str = "BENCH_PG_CA_FILE";
/// `1`: keep the PostgreSQL connection (and the prepared upsert) across invocations: variant (d).
pub const KEEP_CONNECTION_ENV: &str = "BENCH_DIRECT_KEEP_CONNECTION";

/// Upsert of a batch of candles in one statement (the same `unnest` shape the makenaide collector sends).
pub const BATCH_UPSERT_SQL: &str = r#"INSERT INTO ohlcv (market, "interval", candle_date_time_utc, candle_date_time_kst,
    opening_price, high_price, low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, "timestamp",
    updated_at)
SELECT m, $1::text, u::timestamp, k::timestamp, o, h, l, c, v, p, ts, now()
FROM unnest($2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[], $7::float8[], $8::float8[],
    $9::float8[], $10::float8[], $11::int8[]) AS t(m, u, k, o, h, l, c, v, p, ts)
ON CONFLICT (market, "interval", candle_date_time_utc) DO UPDATE SET
    candle_date_time_kst = EXCLUDED.candle_date_time_kst, opening_price = EXCLUDED.opening_price,
    high_price = EXCLUDED.high_price, low_price = EXCLUDED.low_price, trade_price = EXCLUDED.trade_price,
    candle_acc_trade_volume = EXCLUDED.candle_acc_trade_volume,
    candle_acc_trade_price = EXCLUDED.candle_acc_trade_price, "timestamp" = EXCLUDED."timestamp",
    updated_at = EXCLUDED.updated_at"#;

/// Upsert of one candle (row-by-row, the old way).
pub const ROW_UPSERT_SQL: &str = r#"INSERT INTO ohlcv (market, "interval", candle_date_time_utc, candle_date_time_kst,
    opening_price, high_price, low_price, trade_price, candle_acc_trade_volume, candle_acc_trade_price, "timestamp",
    updated_at)
VALUES ($1, $2, $3::text::timestamp, $4::text::timestamp, $5, $6, $7, $8, $9, $10, $11, now())
ON CONFLICT (market, "interval", candle_date_time_utc) DO UPDATE SET
    candle_date_time_kst = EXCLUDED.candle_date_time_kst, opening_price = EXCLUDED.opening_price,
    high_price = EXCLUDED.high_price, low_price = EXCLUDED.low_price, trade_price = EXCLUDED.trade_price,
    candle_acc_trade_volume = EXCLUDED.candle_acc_trade_volume,
    candle_acc_trade_price = EXCLUDED.candle_acc_trade_price, "timestamp" = EXCLUDED."timestamp",
    updated_at = EXCLUDED.updated_at"#;

/// A rustls connector (ring) trusting only the CA in `ca_pem`.
pub fn tls_connector(ca_pem: &Path) -> Result<MakeRustlsConnect> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .map_err(|e| HarnessError::State(format!("CA file {}: {e}", ca_pem.display())))?
    {
        let cert = cert.map_err(|e| HarnessError::State(format!("CA file {}: {e}", ca_pem.display())))?;
        roots
            .add(cert)
            .map_err(|e| HarnessError::State(format!("CA certificate: {e}")))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| HarnessError::State(format!("rustls: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(cfg))
}

/// Opens a TLS connection (`url` with `sslmode=require`) verified against `ca_pem`; the connection is driven by
/// a task on the current runtime.
pub async fn connect_tls(url: &str, ca_pem: &Path) -> Result<Client> {
    connect_tls_with(url, tls_connector(ca_pem)?).await
}

async fn connect_tls_with(url: &str, tls: MakeRustlsConnect) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Configuration of `bench-direct-collector`, read once per environment.
pub struct DirectConfig {
    pub database_url: String,
    pub tls: MakeRustlsConnect,
    pub upbit_base: String,
    /// Kept across invocations (keep-alive).
    pub http: reqwest::Client,
    /// Variant (d): the warm connection and its prepared upsert, made by the first invocation. `None` inside means
    /// variant (c) (connect per invocation).
    pub kept: Option<tokio::sync::Mutex<Option<(Client, tokio_postgres::Statement)>>>,
}

impl DirectConfig {
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).map_err(|_| HarnessError::State(format!("{k} is not set")));
        lambda_simulator::ensure_default_crypto_provider();
        Ok(Self {
            database_url: var(DATABASE_URL_ENV)?,
            tls: tls_connector(Path::new(&var(PG_CA_FILE_ENV)?))?,
            upbit_base: var(UPBIT_BASE_URL_ENV)?.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().no_proxy().tcp_nodelay(true).build()?,
            kept: (std::env::var(KEEP_CONNECTION_ENV).as_deref() == Ok("1")).then(|| tokio::sync::Mutex::new(None)),
        })
    }
}

/// Columns of a batch of candles, in [`BATCH_UPSERT_SQL`]'s parameter order ($2..$11).
#[derive(Default)]
pub struct Columns {
    pub market: Vec<String>,
    pub utc: Vec<String>,
    pub kst: Vec<String>,
    pub open: Vec<f64>,
    pub high: Vec<f64>,
    pub low: Vec<f64>,
    pub close: Vec<f64>,
    pub volume: Vec<f64>,
    pub turnover: Vec<f64>,
    pub ts: Vec<i64>,
}

impl Columns {
    pub fn push(&mut self, c: &Candle) {
        self.market.push(c.market.clone());
        self.utc.push(c.candle_date_time_utc.clone());
        self.kst.push(c.candle_date_time_kst.clone());
        self.open.push(c.opening_price);
        self.high.push(c.high_price);
        self.low.push(c.low_price);
        self.close.push(c.trade_price);
        self.volume.push(c.candle_acc_trade_volume);
        self.turnover.push(c.candle_acc_trade_price);
        self.ts.push(c.timestamp);
    }
}

/// One invocation of the direct collector: candles over the kept HTTP client, then a fresh TLS connection to
/// PostgreSQL for one batch upsert, closed at the end.
pub async fn collect(cfg: &DirectConfig, event: &Value) -> Result<Value> {
    let interval = event
        .get("interval")
        .and_then(Value::as_str)
        .unwrap_or("days")
        .to_string();
    let count = event.get("count").and_then(Value::as_u64).unwrap_or(3);
    let markets: Vec<String> = event
        .get("markets")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut cols = Columns::default();
    let mut failed = serde_json::Map::new();
    for market in &markets {
        let url = format!("{}/v1/candles/{interval}?market={market}&count={count}", cfg.upbit_base);
        let resp = cfg.http.get(&url).send().await?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await?;
        if status != 200 {
            failed.insert(
                market.clone(),
                json!({"status": status, "message": String::from_utf8_lossy(&body)}),
            );
            continue;
        }
        let candles: Vec<Candle> = serde_json::from_slice(&body)?;
        for c in &candles {
            cols.push(c);
        }
    }
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 11] = [
        &interval,
        &cols.market,
        &cols.utc,
        &cols.kst,
        &cols.open,
        &cols.high,
        &cols.low,
        &cols.close,
        &cols.volume,
        &cols.turnover,
        &cols.ts,
    ];
    let stored = if let Some(kept) = &cfg.kept {
        // (d): one warm connection, the statement prepared once; a connection that broke is replaced.
        let mut kept = kept.lock().await;
        if kept.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            let client = connect_tls_with(&cfg.database_url, cfg.tls.clone()).await?;
            let stmt = client.prepare(BATCH_UPSERT_SQL).await?;
            *kept = Some((client, stmt));
        }
        let (client, stmt) = kept
            .as_ref()
            .ok_or_else(|| HarnessError::State("no kept connection".into()))?;
        client.execute(stmt, &params).await?
    } else {
        let (client, conn) = tokio_postgres::connect(&cfg.database_url, cfg.tls.clone()).await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let stored = client.execute(BATCH_UPSERT_SQL, &params).await?;
        // Closes the session (Terminate) like a per-invocation `conn.close()`.
        drop(client);
        let _ = driver.await;
        stored
    };
    Ok(json!({"interval": interval, "count": count, "rows_stored": stored, "failed": failed}))
}
