//! The localhost HTTP/1 server (hyper directly: axum would add size for two JSON routes and a path mirror):
//! accept loop, inbound connection cap, graceful drain on shutdown. Routing, auth and handlers live in `router`.
//!
//! The listener is bound by the caller (127.0.0.1 only) so `main` can fail loudly on `EADDRINUSE` before
//! registering, and tests can bind port 0.

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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub(crate) use router::error_response;

#[cfg(test)]
mod tests;

/// Connections over the cap still get a proper 429 (not a reset) while at most this many such answers are in
/// progress; beyond that the socket is closed at once.
const OVERFLOW_ANSWERS_MAX: usize = 64;
/// Pause after an accept error (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

struct ConnGuard(Arc<AtomicUsize>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn claim(counter: &Arc<AtomicUsize>, max: usize) -> Option<ConnGuard> {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
        .ok()
        .map(|_| ConnGuard(counter.clone()))
}

/// Serves the localhost API on `listener` until `shutdown` resolves, then stops accepting, answers new requests on
/// open connections with 503 `shutting_down`, closes idle keep-alive connections and returns once every in-flight
/// request has finished. Bound the wait from outside (`tokio::time::timeout`) if a deadline applies.
pub async fn serve(state: AppState, listener: TcpListener, shutdown: impl Future<Output = ()> + Send) {
    let graceful = GracefulShutdown::new();
    let active = Arc::new(AtomicUsize::new(0));
    let overflow = Arc::new(AtomicUsize::new(0));
    let max_connections = state.config().max_connections;
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
        let io = TokioIo::new(stream);
        if let Some(guard) = claim(&active, max_connections) {
            let state = state.clone();
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(router::handle(state, req).await) }
            });
            // No header-read timeout: after a Lambda thaw an idle keep-alive connection from the function must not
            // be closed by a timer that "expired" while frozen, racing the function's next request on it.
            let conn = http1::Builder::new().keep_alive(true).serve_connection(io, service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _guard = guard;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        } else if let Some(guard) = claim(&overflow, OVERFLOW_ANSWERS_MAX) {
            tracing::warn!(limit = max_connections, "connection cap reached: answering 429");
            let service = service_fn(move |_req| async move {
                Ok::<_, Infallible>(error_response(&Error::TooManyConnections { limit: max_connections }))
            });
            let conn = http1::Builder::new().keep_alive(false).serve_connection(io, service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _guard = guard;
                let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
            });
        }
        // else: dropped, the client sees a closed connection.
    }
    drop(listener);
    state.begin_shutdown();
    tracing::debug!(open = graceful.count(), "draining connections");
    graceful.shutdown().await;
}

/// Type of every response body.
pub(crate) type Body = Full<Bytes>;
