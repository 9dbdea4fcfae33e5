//! The HTTP transport to the Lambda Extensions and Telemetry APIs: one kept-alive HTTP/1.1 connection to
//! `AWS_LAMBDA_RUNTIME_API`, requests with a JSON body, replies read whole. Protocol facts only; what the events
//! mean is `lambda/mod.rs`'s business.
//!
//! Why not the `lambda-extension` crate (which this module replaced): its events loop, tower services and its own
//! pooled client were ≈ 100 KiB of the extension's code (`cargo bloat --crates`: `lambda_runtime_api_client`
//! 59.5 KiB, `lambda_extension` 44.4 KiB) for four requests, and the layer zip has a 2 MiB budget. hyper's client
//! connection is already linked in (reqwest uses it), so this costs only the code below.
//!
//! `AWS_LAMBDA_RUNTIME_API` forms (shared/reference/production-and-peers.md): Lambda and the RIE give `host:port`;
//! `cargo lambda watch` gives `http://127.0.0.1:9000/.rt` (a scheme and a path prefix); the prefix is kept.

use crate::error::Error;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Where the Runtime API is: `host:port` and the path prefix every route is under (`""` on Lambda).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub authority: String,
    pub prefix: String,
}

impl Endpoint {
    /// Parses `AWS_LAMBDA_RUNTIME_API` (`host:port`, or `http://host:port[/prefix]`).
    ///
    /// # Errors
    /// A scheme other than `http`, or no `host:port`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let rest = match value.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "scheme {scheme:?} is not supported (the Runtime API is plain HTTP)"
                ))
            }
            None => value,
        };
        let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let uri: http::uri::Authority = authority
            .parse()
            .map_err(|e| format!("{authority:?} is not host:port: {e}"))?;
        if uri.port_u16().is_none() {
            return Err(format!("{authority:?} has no port"));
        }
        let prefix = prefix.trim_end_matches('/');
        Ok(Self {
            authority: authority.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("/{prefix}")
            },
        })
    }
}

/// A reply: status, headers, whole body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as text.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body for an error message (at most 300 bytes).
    #[must_use]
    pub fn body_excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
}

/// The client: one idle connection kept, opened on first use and again whenever the previous one closed. A call
/// made while another is in flight (the telemetry subscription while `next` waits) opens its own connection, so
/// a long poll never holds up anything else.
pub struct Api {
    endpoint: Endpoint,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Api {
    #[must_use]
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            conn: Mutex::new(None),
        }
    }

    /// Sends one request and reads the whole reply. No timeout: `next` is a long poll that lasts until the next
    /// event, and Lambda freezes the process in the middle of it.
    ///
    /// # Errors
    /// The Runtime API could not be reached or the connection broke.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Reply, Error> {
        let idle = self.conn.lock().await.take();
        let mut sender = match idle {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.endpoint.prefix))
            .header(http::header::HOST, self.endpoint.authority.as_str());
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Error::Lambda(format!("bad request to the Runtime API: {e}")))?;
        sender
            .ready()
            .await
            .map_err(|e| Error::Lambda(format!("Runtime API connection: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Error::Lambda(format!("Runtime API {path}: {e}")))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Error::Lambda(format!("Runtime API {path}: reading the reply: {e}")))?
            .to_bytes();
        let mut idle = self.conn.lock().await;
        if idle.is_none() {
            *idle = Some(sender);
        }
        drop(idle);
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Error> {
        let authority = &self.endpoint.authority;
        let stream = TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| Error::Lambda(format!("cannot connect to the Runtime API at {authority}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Lambda(format!("Runtime API handshake: {e}")))?;
        tokio::spawn(async move {
            // Ends when the connection closes; the next call opens another.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_api_form_parses() {
        let e = Endpoint::parse("127.0.0.1:9001").expect("host:port");
        assert_eq!((e.authority.as_str(), e.prefix.as_str()), ("127.0.0.1:9001", ""));
        let e = Endpoint::parse("http://127.0.0.1:9000/.rt").expect("cargo lambda form");
        assert_eq!((e.authority.as_str(), e.prefix.as_str()), ("127.0.0.1:9000", "/.rt"));
        let e = Endpoint::parse("http://localhost:9001/").expect("trailing slash");
        assert_eq!((e.authority.as_str(), e.prefix.as_str()), ("localhost:9001", ""));
        assert!(Endpoint::parse("https://127.0.0.1:9001").is_err());
        assert!(Endpoint::parse("127.0.0.1").is_err());
        assert!(Endpoint::parse("").is_err());
        assert!(Endpoint::parse("not a uri:port").is_err());
    }
}
