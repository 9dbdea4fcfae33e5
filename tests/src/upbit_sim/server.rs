//! The HTTP side of the simulated Upbit: the accept loop (which counts TCP connections), one hyper HTTP/1.1
//! connection task per socket (keep-alive, so a client's connection reuse is visible), and the per-request
//! pipeline: route → latency → IP block (418) → injected fault → rate limit (429) → answer with `Remaining-Req`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};

use super::api::{self, Query, Route};
use super::faults::{Fault, FaultProbabilities, FaultRule};
use super::limiter::{Limiter, RateLimit};
use super::model::MarketData;
use super::{ConnStats, ServedCandle, SimConfig, SimStats};

/// The 429 body pyupbit compares with `resp.text` (reference §7).
pub const TOO_MANY_BODY: &str = "Too many API requests.";
const JSON: &str = "application/json; charset=utf-8";
const CACHE_CONTROL: &str = "no-cache, no-store, max-age=0, must-revalidate";

/// Knobs that can change while the server runs.
#[derive(Clone, Debug)]
pub(crate) struct Knobs {
    pub latency: Duration,
    pub rate_limit: RateLimit,
    pub queue: Vec<FaultRule>,
    pub probabilities: FaultProbabilities,
    pub draws: u64,
    pub now: Option<DateTime<Utc>>,
}

impl Knobs {
    pub fn from_config(c: &SimConfig) -> Self {
        Self {
            latency: c.latency,
            rate_limit: c.rate_limit.clone(),
            queue: Vec::new(),
            probabilities: c.fault_probabilities.clone(),
            draws: 0,
            now: c.now,
        }
    }
}

/// Kill switch of one connection.
pub(crate) struct ConnCtl {
    kill: Notify,
    reset: AtomicBool,
}

/// State shared by the accept loop, the connection tasks and the `SimHandle`.
pub(crate) struct Shared {
    pub data: MarketData,
    pub config: SimConfig,
    pub knobs: Mutex<Knobs>,
    pub limiter: Mutex<Limiter>,
    pub stats: Mutex<SimStatsInner>,
    pub served: Mutex<Vec<ServedCandle>>,
    pub conns: Mutex<BTreeMap<u64, Arc<ConnCtl>>>,
    /// Bumped on every stats change (for `SimHandle::wait_for`).
    pub changed: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
}

/// Mutable stats; `SimStats` is its snapshot.
#[derive(Default)]
pub(crate) struct SimStatsInner {
    pub stats: SimStats,
    pub conns: BTreeMap<u64, ConnStats>,
    pub next_conn: u64,
    pub next_served: u64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub fn new(config: SimConfig) -> Self {
        Self {
            data: MarketData::new(config.catalog.clone()),
            knobs: Mutex::new(Knobs::from_config(&config)),
            config,
            limiter: Mutex::new(Limiter::default()),
            stats: Mutex::new(SimStatsInner::default()),
            served: Mutex::new(Vec::new()),
            conns: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            shutdown: watch::channel(false).0,
        }
    }

    /// The simulated clock: the fixed "now" when set, else the real UTC time.
    pub fn now(&self) -> DateTime<Utc> {
        lock(&self.knobs).now.unwrap_or_else(Utc::now)
    }

    pub fn update_stats(&self, f: impl FnOnce(&mut SimStatsInner)) {
        f(&mut lock(&self.stats));
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn snapshot(&self) -> SimStats {
        let st = lock(&self.stats);
        let mut s = st.stats.clone();
        s.connections = st.conns.values().cloned().collect();
        s
    }

    /// Back to the start configuration: knobs, counters, blocks, served log.
    pub fn reset(&self) {
        *lock(&self.knobs) = Knobs::from_config(&self.config);
        *lock(&self.limiter) = Limiter::default();
        lock(&self.served).clear();
        self.update_stats(|st| {
            let open = st.stats.connections_open;
            st.stats = SimStats {
                connections_open: open,
                ..SimStats::default()
            };
            st.conns.retain(|_, c| c.open);
            for c in st.conns.values_mut() {
                c.requests = 0;
                c.control_requests = 0;
            }
        });
    }

    /// Drops every open connection (FIN, or RST when `reset`), as a server or load balancer closing idle sockets.
    pub fn close_connections(&self, reset: bool) {
        for c in lock(&self.conns).values() {
            if reset {
                c.reset.store(true, Ordering::SeqCst);
            }
            c.kill.notify_one();
        }
    }

    /// The fault for this request: the first matching queued rule, else a probability draw.
    fn next_fault(&self, group: &str, path: &str, q: &Query) -> Option<Fault> {
        let mut k = lock(&self.knobs);
        let markets = q.markets();
        if let Some(i) = k.queue.iter().position(|r| r.matches(group, path, &markets)) {
            let fault = k.queue[i].fault.clone();
            k.queue[i].times = k.queue[i].times.saturating_sub(1);
            if k.queue[i].times == 0 {
                k.queue.remove(i);
            }
            return Some(fault);
        }
        if k.probabilities.any() {
            k.draws += 1;
            return k.probabilities.draw(k.draws);
        }
        None
    }
}

/// Binds and serves until the handle is dropped.
pub(crate) async fn start(shared: Arc<Shared>) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(shared.config.bind).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(shared, listener));
    Ok((addr, task))
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut id = 0;
        shared.update_stats(|st| {
            st.next_conn += 1;
            id = st.next_conn;
            st.stats.connections_accepted += 1;
            st.stats.connections_open += 1;
            st.conns.insert(
                id,
                ConnStats {
                    id,
                    peer: peer.to_string(),
                    requests: 0,
                    control_requests: 0,
                    open: true,
                },
            );
        });
        let ctl = Arc::new(ConnCtl {
            kill: Notify::new(),
            reset: AtomicBool::new(false),
        });
        lock(&shared.conns).insert(id, ctl.clone());
        tokio::spawn(serve_conn(shared.clone(), stream, peer, id, ctl));
    }
}

async fn serve_conn(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, id: u64, ctl: Arc<ConnCtl>) {
    // A duplicate of the socket lets us set SO_LINGER=0 after hyper owns the stream, so "reset" is a real RST.
    let (stream, dup) = match stream.into_std() {
        Ok(std) => {
            let dup = std.try_clone().ok();
            match TcpStream::from_std(std) {
                Ok(s) => (Some(s), dup),
                Err(_) => (None, None),
            }
        }
        Err(_) => (None, None),
    };
    if let Some(stream) = stream {
        let sh = shared.clone();
        let c = ctl.clone();
        let svc = service_fn(move |req| {
            let sh = sh.clone();
            let c = c.clone();
            async move { Ok::<_, Infallible>(handle(sh, peer, id, c, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let mut shutdown = shared.shutdown.subscribe();
        tokio::select! {
            _ = conn.as_mut() => {}
            _ = ctl.kill.notified() => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        if ctl.reset.load(Ordering::SeqCst) {
            if let Some(d) = dup.as_ref().and_then(|d| d.try_clone().ok()) {
                let _ = TcpSocket::from_std_stream(d).set_zero_linger();
            }
        }
    }
    drop(dup);
    lock(&shared.conns).remove(&id);
    shared.update_stats(|st| {
        st.stats.connections_open = st.stats.connections_open.saturating_sub(1);
        if let Some(c) = st.conns.get_mut(&id) {
            c.open = false;
        }
    });
}

/// The response body: whole, or cut short with the connection aborted after what was sent is flushed.
pub(crate) struct SimBody {
    data: Option<Bytes>,
    len: u64,
    truncate: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SimBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let data: Bytes = b.into();
        Self {
            len: data.len() as u64,
            data: Some(data),
            truncate: None,
        }
    }

    fn truncated(b: Bytes) -> Self {
        Self {
            len: 0,
            data: Some(b),
            truncate: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        }
    }
}

impl hyper::body::Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(sleep) = self.truncate.as_mut() {
            // Pending first so hyper flushes the partial body, then abort the connection.
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.truncate = None;
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "truncated body",
            ))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.truncate.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.truncate.is_some() {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.len)
        }
    }
}

pub(crate) fn response(status: u16, content_type: &str, body: SimBody) -> Response<SimBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Headers of every routed quotation reply.
fn routed(mut r: Response<SimBody>, group: &str, min: u64, sec: u32) -> Response<SimBody> {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("group={group}; min={min}; sec={sec}")) {
        h.insert("remaining-req", v);
    }
    h.insert("limit-by-ip", HeaderValue::from_static("Yes"));
    h.insert(http::header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    r
}

/// Kong's reply to a path no route matches: no `Remaining-Req` (reference §3.2, §4).
fn unrouted() -> Response<SimBody> {
    response(
        404,
        JSON,
        SimBody::full(&br#"{"error":{"name":"not_found","message":"no Route matched with those values"}}"#[..]),
    )
}

fn blocked_body(left: Duration) -> SimBody {
    let secs = left.as_millis().div_ceil(1000).max(1);
    SimBody::full(format!(
        r#"{{"error":{{"name":418,"message":"Too many API requests. Blocked for {secs} seconds."}}}}"#
    ))
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    conn_id: u64,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<SimBody> {
    let path = req.uri().path().to_string();
    if path == "/__sim" || path.starts_with("/__sim/") {
        shared.update_stats(|st| {
            if let Some(c) = st.conns.get_mut(&conn_id) {
                c.control_requests += 1;
            }
        });
        return super::control::handle(&shared, req).await;
    }
    let q = Query::parse(req.uri().query().unwrap_or(""));
    let route = Route::of(req.method(), &path);
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let group = route.map(|r| r.group());
    shared.update_stats(|st| {
        st.stats.requests_total += 1;
        if let Some(c) = st.conns.get_mut(&conn_id) {
            c.requests += 1;
        }
        match group {
            Some(g) => *st.stats.requests_by_group.entry(g.to_string()).or_default() += 1,
            None => st.stats.unrouted += 1,
        }
        if let Some(o) = &origin {
            st.stats.origin_requests += 1;
            st.stats.origins.push(o.clone());
        }
    });
    let (latency, rl) = {
        let k = lock(&shared.knobs);
        (k.latency, k.rate_limit.clone())
    };
    let before = latency / 2;
    if !before.is_zero() {
        tokio::time::sleep(before).await;
    }
    let resp = answer(&shared, peer, conn_id, &ctl, route, &path, &q, origin.is_some(), &rl).await;
    let after = latency - before;
    if !after.is_zero() {
        tokio::time::sleep(after).await;
    }
    let status = resp.status().as_u16();
    shared.update_stats(|st| *st.stats.responses_by_status.entry(status).or_default() += 1);
    resp
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    shared: &Shared,
    peer: SocketAddr,
    conn_id: u64,
    ctl: &ConnCtl,
    route: Option<Route>,
    path: &str,
    q: &Query,
    has_origin: bool,
    rl: &RateLimit,
) -> Response<SimBody> {
    let Some(route) = route else { return unrouted() };
    let group = route.group();
    let (limit_group, limit, window) = if has_origin {
        ("origin", rl.origin_limit, Duration::from_millis(rl.origin_window_ms))
    } else {
        (group, rl.per_second, Duration::from_millis(rl.window_ms))
    };
    let min = rl.min_value(has_origin);
    let ip = peer.ip();

    if let Some(left) = lock(&shared.limiter).banned(ip, Instant::now()) {
        shared.update_stats(|st| st.stats.responses_418 += 1);
        return routed(response(418, JSON, blocked_body(left)), limit_group, min, 0);
    }

    let fault = shared.next_fault(group, path, q);
    if let Some(f) = &fault {
        shared.update_stats(|st| *st.stats.faults_injected.entry(f.name().to_string()).or_default() += 1);
    }
    match &fault {
        Some(Fault::TooManyRequests) => {
            shared.update_stats(|st| st.stats.responses_429 += 1);
            return routed(
                response(429, "text/plain; charset=utf-8", SimBody::full(TOO_MANY_BODY)),
                limit_group,
                min,
                0,
            );
        }
        Some(Fault::Blocked { secs }) => {
            let len = Duration::from_secs(*secs);
            lock(&shared.limiter).ban(ip, len, Instant::now());
            shared.update_stats(|st| st.stats.responses_418 += 1);
            return routed(response(418, JSON, blocked_body(len)), limit_group, min, 0);
        }
        Some(Fault::ServerError { status }) => {
            return if *status == 500 {
                let body = api::ApiError {
                    status: 500,
                    message: "Internal Server Error",
                }
                .body();
                routed(
                    response(500, JSON, SimBody::full(body)),
                    limit_group,
                    min,
                    limit.saturating_sub(1),
                )
            } else {
                let text = format!(
                    "<html><head><title>{status}</title></head><body><center><h1>{status}</h1></center></body></html>"
                );
                response(*status, "text/html", SimBody::full(text))
            };
        }
        Some(Fault::Reset) => {
            ctl.reset.store(true, Ordering::SeqCst);
            ctl.kill.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Slow { ms }) => tokio::time::sleep(Duration::from_millis(*ms)).await,
        _ => {}
    }

    let admitted = lock(&shared.limiter).admit(ip, limit_group, limit, window, rl.enabled, Instant::now());
    let remaining = match admitted {
        Some(r) => r,
        None => {
            let ban = lock(&shared.limiter).note_429(ip, rl, Instant::now());
            shared.update_stats(|st| {
                st.stats.responses_429 += 1;
                if ban.is_some() {
                    st.stats.bans += 1;
                }
            });
            return routed(
                response(429, "text/plain; charset=utf-8", SimBody::full(TOO_MANY_BODY)),
                limit_group,
                min,
                0,
            );
        }
    };

    let now = shared.now();
    let reply = match api::dispatch(&shared.data, route, q, now) {
        Ok(r) => r,
        Err(e) => {
            return routed(
                response(e.status, JSON, SimBody::full(e.body())),
                limit_group,
                min,
                remaining,
            )
        }
    };
    let body = match &fault {
        Some(Fault::MalformedJson) => {
            // The body loses its closing bracket and gains a dangling comma: not JSON.
            let mut b = reply.body.clone();
            b.pop();
            b.extend_from_slice(b",{\"market\":");
            SimBody::full(b)
        }
        Some(Fault::TruncatedBody) => SimBody::truncated(Bytes::copy_from_slice(&reply.body[..reply.body.len() / 2])),
        _ => SimBody::full(reply.body.clone()),
    };
    let damaged = matches!(fault, Some(Fault::MalformedJson | Fault::TruncatedBody));
    if let Some((interval, candles)) = reply.candles {
        if !candles.is_empty() && shared.config.record_served {
            let fault_name = fault.as_ref().map(|f| f.name().to_string());
            let mut served = lock(&shared.served);
            let mut seq = 0;
            shared.update_stats(|st| {
                seq = st.next_served;
                st.next_served += candles.len() as u64;
            });
            for (i, c) in candles.into_iter().enumerate() {
                served.push(ServedCandle {
                    seq: seq + i as u64,
                    conn_id,
                    interval: interval.name(),
                    market: c.market.clone(),
                    candle: c,
                    fault: fault_name.clone(),
                    delivered: !damaged,
                });
            }
        }
    }
    let mut r = routed(response(200, JSON, body), limit_group, min, remaining);
    if damaged && matches!(fault, Some(Fault::TruncatedBody)) {
        if let Ok(v) = HeaderValue::from_str(&reply.body.len().to_string()) {
            r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
        }
    }
    r
}
