//! The localhost HTTP/1 server (hyper directly: axum would add size for two JSON routes and a path mirror):
//! accept loop, graceful drain on shutdown. The connection cap, the header-read and idle timeouts and hyper's own
//! error replies are `conn`'s; routing, auth and handlers live in `router`.
//!
//! The listener is bound by the caller (127.0.0.1 only) so `main` can fail loudly on `EADDRINUSE` before
//! registering, and tests can bind port 0.

mod conn;
mod neon;
mod router;

use crate::error::Error;
use crate::state::AppState;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

#[cfg(test)]
mod tests;

/// Pause after an accept error (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Serves the localhost API on `listener` until `shutdown` resolves, then stops accepting, answers new requests on
/// open connections with 503 `shutting_down`, closes idle keep-alive connections and returns once every in-flight
/// request has finished. Bound the wait from outside (`tokio::time::timeout`) if a deadline applies.
pub async fn serve(state: AppState, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    let graceful = GracefulShutdown::new();
    let registry = conn::Registry::new(state.config());
    let sweeper = tokio::spawn(registry.clone().sweep_forever(state.upbit().clone()));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            res = listener.accept() => res,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(guard) = registry.admit() else {
            // Every connection is serving a request: the 429 goes out at once, before any request is read.
            tracing::warn!(
                limit = registry.max(),
                "connection cap reached, every connection busy: answering 429"
            );
            registry.reply_and_close(stream, &Error::TooManyConnections { limit: registry.max() });
            continue;
        };
        let io = TokioIo::new(conn::ConnIo::new(stream, &guard));
        let state = state.clone();
        let slot = guard.slot();
        let reg = registry.clone();
        let service = service_fn(move |req| {
            let state = state.clone();
            let request = std::sync::Arc::new(reg.begin_request(&slot));
            async move {
                let mut response = router::handle(state, req).await;
                response.extensions_mut().insert(request);
                Ok::<_, Infallible>(response)
            }
        });
        // No hyper timer: the header-read and idle timeouts are `conn`'s sweep, on awake time (see there why).
        let conn = http1::Builder::new()
            .keep_alive(true)
            .max_header_size(conn::MAX_HEAD_BYTES)
            .max_headers(conn::MAX_HEADER_FIELDS)
            .serve_connection(io, service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    sweeper.abort();
    state.begin_shutdown();
    tracing::debug!(open = graceful.count(), "draining connections");
    graceful.shutdown().await;
}

/// Type of every response body.
pub(crate) type Body = Full<Bytes>;
