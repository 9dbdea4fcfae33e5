//! Telemetry API (`/2022-07-01/telemetry`): the subscription, made during Init (after register, before the first
//! `next`), and the listener Lambda POSTs its batches to. Platform events only; schema `2022-12-13` on demand,
//! `2025-01-29` under Lambda Managed Instances (the only one it accepts there).
//!
//! **Where the listener binds.** Lambda delivers to an address inside the sandbox, written
//! `http://sandbox.localdomain:PORT` in AWS's documentation and samples. Our references do not say what that
//! name resolves to; AWS's own samples bind the name itself (Python `HTTPServer(("sandbox.localdomain", port))`,
//! Go `Addr: "sandbox.localdomain:" + port`), which only works because the sandbox resolves it to one of its own
//! addresses (through `/etc/hosts`). So the extension resolves `sandbox.localdomain` at start and binds exactly the
//! address it resolves to; where it does not resolve (a local run, an emulator) it binds `127.0.0.1` and
//! subscribes with that. Never `0.0.0.0` (the `lambda-extension` crate's telemetry listener binds
//! `0.0.0.0:9003`, with a hard-coded `2022-07-01` schema and a bind `unwrap()`: which is why it is not used).
//!
//! **Failures are never fatal.** A subscription refused or unknown (the Runtime Interface Emulator answers 202
//! `Telemetry.NotSupported`, other emulators 404), a port already taken or a name that resolves to an address we
//! cannot bind: one warning, metrics off for this environment, everything else unchanged.

mod listener;

use crate::config::Config;
use crate::metrics::Recorder;
use http::{Method, StatusCode};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::net::TcpListener;

/// The name Lambda's documentation gives the sandbox for telemetry destinations.
pub const SANDBOX_HOST: &str = "sandbox.localdomain";
/// Telemetry API subscription path.
pub const SUBSCRIBE_PATH: &str = "/2022-07-01/telemetry";
/// Schema on demand (`function`/`extension` records may be objects; we take platform events only).
pub const SCHEMA_ON_DEMAND: &str = "2022-12-13";
/// Schema Lambda Managed Instances requires.
pub const SCHEMA_MANAGED_INSTANCES: &str = "2025-01-29";
/// Lambda's header naming the registered extension.
/// Bound on resolving `sandbox.localdomain` (an `/etc/hosts` hit is instant; a DNS miss must not slow Init).
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on the subscription call (Init waits for it).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Delivery batching asked of Lambda: small batches, soon (the minimum `timeoutMs` is 25).
const BUFFERING: &str = r#"{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}"#;

/// Where to listen and what to put in the subscription's URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Address to bind.
    pub bind: IpAddr,
    /// Host of the destination URI.
    pub uri_host: String,
}

/// Resolves [`SANDBOX_HOST`]: its first IPv4 address (else its first address), or `127.0.0.1` when it does not
/// resolve in time.
pub async fn destination() -> Destination {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((SANDBOX_HOST, 0))).await;
    let addrs: Vec<SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        _ => Vec::new(),
    };
    let chosen = addrs.iter().find(|a| a.is_ipv4()).or_else(|| addrs.first());
    match chosen {
        Some(a) if !a.ip().is_unspecified() => Destination {
            bind: a.ip(),
            uri_host: SANDBOX_HOST.to_owned(),
        },
        _ => Destination {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            uri_host: Ipv4Addr::LOCALHOST.to_string(),
        },
    }
}

/// What [`start`] set up.
#[derive(Debug)]
pub struct Started {
    /// The recorder receiving the batches.
    pub recorder: &'static Recorder,
    /// Where the listener is.
    pub addr: SocketAddr,
}

/// Binds the listener, subscribes, and starts the Managed Instances interval writer. `None` (after one warning,
/// or silently when `MAKENAIDE_METRICS=off`) when metrics are off for this environment.
pub async fn start(config: &Config, extension_id: &str, function_name: &str, process_start_ms: i64) -> Option<Started> {
    if !config.metrics {
        tracing::debug!(
            "metrics off ({}=off): no telemetry subscription",
            crate::config::ENV_METRICS
        );
        return None;
    }
    let dest = destination().await;
    let listener = match TcpListener::bind((dest.bind, config.telemetry_port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "metrics off: cannot listen for telemetry on {}:{} ({e}); set {} to a free port",
                dest.bind,
                config.telemetry_port,
                crate::config::ENV_TELEMETRY_PORT
            );
            return None;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("metrics off: telemetry listener has no address ({e})");
            return None;
        }
    };
    let recorder = Recorder::install(
        &config.metrics_namespace,
        function_name,
        config.managed_instances,
        process_start_ms,
    );
    // Listening before subscribing: Lambda's first delivery finds it.
    let serving = tokio::spawn(listener::serve(listener, recorder));
    let schema = if config.managed_instances {
        SCHEMA_MANAGED_INSTANCES
    } else {
        SCHEMA_ON_DEMAND
    };
    let uri = format!("http://{}:{}", dest.uri_host, addr.port());
    match subscribe(extension_id, schema, &uri).await {
        Ok(()) => {
            tracing::info!(destination = %uri, bind = %addr, schema, "telemetry subscribed: one metrics line per invocation");
        }
        Err(why) => {
            tracing::warn!(
                "metrics off: the Telemetry API subscription failed ({why}); an emulator without a Telemetry API?"
            );
            recorder.deactivate();
            serving.abort();
            return None;
        }
    }
    if config.managed_instances {
        let interval = config.metrics_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                recorder.write_interval();
            }
        });
    }
    Some(Started { recorder, addr })
}

/// `PUT /2022-07-01/telemetry`. Success is a 2xx whose body is not an error object (the RIE answers 202 with
/// `{"errorType":"Telemetry.NotSupported"}`).
async fn subscribe(extension_id: &str, schema: &str, uri: &str) -> Result<(), String> {
    let uri_json = serde_json::to_string(uri).map_err(|e| e.to_string())?;
    let body = format!(
        r#"{{"schemaVersion":"{schema}","types":["platform"],"buffering":{BUFFERING},"destination":{{"protocol":"HTTP","URI":{uri_json}}}}}"#
    );
    let api = crate::lambda::api::Api::new(crate::lambda::endpoint().map_err(|e| e.to_string())?);
    let headers = [(crate::lambda::ID_HEADER, extension_id)];
    let call = api.call(Method::PUT, SUBSCRIBE_PATH, &headers, bytes::Bytes::from(body));
    let reply = tokio::time::timeout(SUBSCRIBE_TIMEOUT, call)
        .await
        .map_err(|_| format!("no answer within {} ms", SUBSCRIBE_TIMEOUT.as_millis()))?
        .map_err(|e| e.to_string())?;
    let (status, body) = (reply.status, reply.body);
    let error_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errorType").and_then(|t| t.as_str()).map(str::to_owned));
    match (status, error_type) {
        (s, None) if s.is_success() => Ok(()),
        (s, Some(t)) => Err(format!("HTTP {} {t}", s.as_u16())),
        (s, None) if s == StatusCode::NOT_FOUND => Err("HTTP 404: no such API".into()),
        (s, None) => Err(format!(
            "HTTP {}: {}",
            s.as_u16(),
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unresolvable_sandbox_name_means_loopback() {
        // Outside Lambda sandbox.localdomain does not resolve (this machine has no such /etc/hosts entry).
        let d = destination().await;
        if d.uri_host == SANDBOX_HOST {
            assert!(!d.bind.is_unspecified());
        } else {
            assert_eq!(d.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
            assert_eq!(d.uri_host, "127.0.0.1");
        }
    }
}
