//! The telemetry listener: a minimal hyper HTTP/1 server taking Lambda's POSTed batches (a JSON array of events)
//! and handing them to the [`Recorder`] in arrival order. It answers 200 once the batch is processed; anything
//! malformed is answered 400 and otherwise ignored. Never ends the process.

use crate::metrics::Recorder;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::TcpListener;

/// Lambda's batches are at most `2 * maxBytes` + metadata (we ask for 256 KiB); anything beyond this is refused.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

pub(super) async fn serve(listener: TcpListener, recorder: &'static Recorder) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "telemetry accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let service = service_fn(move |req| async move { Ok::<_, Infallible>(handle(recorder, req).await) });
        tokio::spawn(async move {
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "telemetry connection ended with an error");
            }
        });
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

async fn handle(recorder: &Recorder, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let body = match Limited::new(req.into_body(), MAX_BATCH_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "telemetry batch unreadable");
            return status(StatusCode::BAD_REQUEST);
        }
    };
    match serde_json::from_slice::<Vec<serde_json::Value>>(&body) {
        Ok(events) => {
            recorder.on_events(&events);
            status(StatusCode::OK)
        }
        Err(e) => {
            tracing::debug!(error = %e, "telemetry batch is not a JSON array");
            status(StatusCode::BAD_REQUEST)
        }
    }
}
