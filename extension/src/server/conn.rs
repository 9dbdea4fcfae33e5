//! What each open connection of the localhost server is doing, and the IO wrapper that acts on it:
//!
//! - **the cap makes room**: at `MAKENAIDE_MAX_CONNECTIONS` a new connection closes the longest-idle one (idle
//!   between requests, or still sending a request head) instead of being refused, so connections that sit open
//!   (idle keep-alives, slowloris heads) can never lock the function out. Only when every connection is serving a
//!   request does a new one get 429, written at once ([`reply_and_close`]);
//! - **timeouts**: a request head not complete `MAKENAIDE_HEADER_READ_TIMEOUT_MS` after its first byte, and a
//!   keep-alive connection with no request for `MAKENAIDE_IDLE_TIMEOUT_MS`, are closed by a sweep;
//! - **hyper's own errors inside the contract**: hyper answers a request it cannot parse (bad request line, header
//!   syntax, head too large, URI too long) with an empty-bodied 400/431/414 and no hook to change it. Those are
//!   the only bytes hyper writes on a connection with no request in progress once every response byte has been
//!   flushed, so [`ConnIo`] recognises them there and writes the contract's JSON error body instead.
//!
//! Timeouts count **awake time**: a sweep every [`SWEEP_PERIOD`] advances the clock by the time since the last
//! sweep, but by at most [`FREEZE_GAP`]. When Lambda freezes the environment between invocations, tokio's clock
//! keeps running, and every timer that "expired" while frozen would fire at thaw, the very moment the function
//! sends its next request on its kept-alive connection: a close then races that request (the function would see
//! a reset). With awake time, a freeze adds at most `FREEZE_GAP` to any idle time, so a connection is only ever
//! closed after the function itself left it unused, running, for the whole timeout. (hyper's own
//! `header_read_timeout` is not used: it runs from the end of the previous response, so it is an idle timeout and a
//! header timeout in one, on tokio's clock.) The callers handle the close that remains possible: the functions'
//! client (`makenaide-pipeline`) stops reusing an idle connection after 60 s of wall time, which is never less than
//! awake time, so before the default 90 s here, and it retries once on a pooled connection closed under it; the
//! README's Python snippet (`urllib.request`) opens a connection per call with `Connection: close`.

use crate::error::Error;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Period of the timeout sweep (and resolution of the awake clock).
pub(super) const SWEEP_PERIOD: Duration = Duration::from_millis(250);
/// A gap between two sweeps longer than this is time the process did not run (a freeze, a snapshot restore): it
/// counts as this much.
const FREEZE_GAP: Duration = Duration::from_secs(2);
/// Request line + headers hyper reads at most (then 431 `headers_too_large`).
pub(super) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields hyper reads at most (hyper's default; then 431 too).
pub(super) const MAX_HEADER_FIELDS: usize = 100;
/// Request target (path + query) the router accepts at most (then 414 `uri_too_long`); hyper's own limit is 64 KiB.
pub(super) const MAX_URI_BYTES: usize = 8 * 1024;
/// After an error reply the connection is closed; first the rest of what the client sent is read and dropped, for
/// at most this long and this many bytes, so the close is a FIN after the reply, not a reset that could destroy
/// the reply in the client's receive buffer before it reads it (RFC 9112 §9.6).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// Lingering closes at a time, beyond which a closed connection is dropped at once.
const LINGER_MAX: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Time the process has been running, frozen time excluded (see the module doc).
struct AwakeClock {
    /// (instant of the last sweep, awake time at it).
    at: Mutex<(Instant, Duration)>,
}

impl AwakeClock {
    fn new() -> Self {
        Self {
            at: Mutex::new((Instant::now(), Duration::ZERO)),
        }
    }

    fn now(&self) -> Duration {
        let (at, awake) = *lock(&self.at);
        awake + at.elapsed().min(FREEZE_GAP)
    }

    fn tick(&self) -> Duration {
        let mut at = lock(&self.at);
        let now = Instant::now();
        let awake = at.1 + now.saturating_duration_since(at.0).min(FREEZE_GAP);
        *at = (now, awake);
        awake
    }
}

/// One open connection's state, shared by its IO wrapper, its service and the registry.
pub(super) struct Slot {
    id: u64,
    /// Requests in progress: from the service call until hyper has taken the whole response body.
    busy: AtomicU32,
    /// Awake time (µs) when the connection became idle (accepted, or its last response body taken) or, while
    /// `reading_head`, when the head's first byte came.
    since_us: AtomicU64,
    /// Bytes of a new request head have arrived and no service call has started for it yet.
    reading_head: AtomicBool,
    /// Idle and every byte of the last response has been flushed: what hyper writes now is its own error reply.
    flushed: AtomicBool,
    /// Closed by the cap or a timeout: reads report end of stream from now on.
    closing: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn new(id: u64, now_us: u64) -> Self {
        Self {
            id,
            busy: AtomicU32::new(0),
            since_us: AtomicU64::new(now_us),
            reading_head: AtomicBool::new(false),
            flushed: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    fn evictable(&self) -> bool {
        !self.closing.load(Ordering::SeqCst)
            && self.busy.load(Ordering::SeqCst) == 0
            && (self.reading_head.load(Ordering::SeqCst) || self.flushed.load(Ordering::SeqCst))
    }

    fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }

    fn remember(&self, cx: &Context<'_>) {
        let mut w = lock(&self.waker);
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
    }
}

/// The open connections, the awake clock and the limits.
pub(super) struct Registry {
    clock: AwakeClock,
    max: usize,
    header_read_timeout: Duration,
    idle_timeout: Option<Duration>,
    slots: Mutex<Vec<Arc<Slot>>>,
    next_id: AtomicU64,
    lingering: Arc<AtomicUsize>,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Registry {
    pub(super) fn new(config: &crate::config::Config) -> Arc<Self> {
        Arc::new(Self {
            clock: AwakeClock::new(),
            max: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            idle_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            slots: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            lingering: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub(super) fn max(&self) -> usize {
        self.max
    }

    /// A slot for a new connection, closing the longest-idle connection when the cap is reached; `None` when every
    /// connection is serving a request.
    pub(super) fn admit(self: &Arc<Self>) -> Option<SlotGuard> {
        let now = micros(self.clock.now());
        let mut slots = lock(&self.slots);
        let open = slots.iter().filter(|s| !s.closing.load(Ordering::SeqCst)).count();
        if open >= self.max {
            let victim = slots
                .iter()
                .filter(|s| s.evictable())
                .min_by_key(|s| s.since_us.load(Ordering::SeqCst))?;
            tracing::debug!(
                limit = self.max,
                head = victim.reading_head.load(Ordering::SeqCst),
                "connection cap reached: closing the longest-idle connection"
            );
            victim.close();
        }
        let slot = Arc::new(Slot::new(self.next_id.fetch_add(1, Ordering::Relaxed), now));
        slots.push(slot.clone());
        Some(SlotGuard {
            registry: self.clone(),
            slot,
        })
    }

    /// Closes the connections past their header-read or idle timeout. Called every [`SWEEP_PERIOD`].
    pub(super) fn sweep(&self) {
        let now = micros(self.clock.tick());
        let head_limit = micros(self.header_read_timeout);
        let idle_limit = self.idle_timeout.map(micros);
        for s in lock(&self.slots).iter() {
            if s.closing.load(Ordering::SeqCst) || s.busy.load(Ordering::SeqCst) > 0 {
                continue;
            }
            let age = now.saturating_sub(s.since_us.load(Ordering::SeqCst));
            let expired = if s.reading_head.load(Ordering::SeqCst) {
                age >= head_limit
            } else {
                // Idle, or its client is not reading the last response: both hold the slot for nothing.
                idle_limit.is_some_and(|l| age >= l)
            };
            if expired {
                tracing::debug!(
                    head = s.reading_head.load(Ordering::SeqCst),
                    age_ms = age / 1000,
                    "closing a connection past its timeout"
                );
                s.close();
            }
        }
    }

    /// The sweep, forever (the caller aborts it).
    pub(super) async fn sweep_forever(self: Arc<Self>, upbit: crate::upbit::Upbit) {
        loop {
            tokio::time::sleep(SWEEP_PERIOD).await;
            self.sweep();
            // The same tick drops the Upbit cache's expired entries (one timer task for both, not one each).
            upbit.purge_expired();
        }
    }

    /// Writes `error` as a complete HTTP/1.1 reply on a connection no service will read, then closes it (see
    /// [`LINGER_TIME`]). Never waits: the reply goes to the new socket's empty send buffer.
    pub(super) fn reply_and_close(&self, stream: TcpStream, error: &Error) {
        let reply = raw_reply(error);
        let written = stream.try_write(&reply).unwrap_or(0);
        linger(stream, reply[written..].to_vec(), &self.lingering);
    }
}

/// Removes the slot when the connection ends.
pub(super) struct SlotGuard {
    registry: Arc<Registry>,
    slot: Arc<Slot>,
}

impl SlotGuard {
    pub(super) fn slot(&self) -> Arc<Slot> {
        self.slot.clone()
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut slots = lock(&self.registry.slots);
        if let Some(i) = slots.iter().position(|s| s.id == self.slot.id) {
            slots.swap_remove(i);
        }
    }
}

/// Held by a request from the service call until hyper has encoded the response head (the guard rides in the
/// response's extensions, dropped with the head). The body is then queued in the same step, and the connection
/// counts as answered only once hyper has flushed it (`Slot::flushed`). (Not a body wrapper: a second body or IO
/// type would compile hyper's whole HTTP/1 state machine a second time, next to the telemetry listener's: ~40 KB.)
pub(super) struct RequestGuard {
    slot: Arc<Slot>,
    registry: Arc<Registry>,
}

impl Registry {
    pub(super) fn begin_request(self: &Arc<Self>, slot: &Arc<Slot>) -> RequestGuard {
        slot.busy.fetch_add(1, Ordering::SeqCst);
        slot.reading_head.store(false, Ordering::SeqCst);
        slot.flushed.store(false, Ordering::SeqCst);
        RequestGuard {
            slot: slot.clone(),
            registry: self.clone(),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.slot
            .since_us
            .store(micros(self.registry.clock.now()), Ordering::SeqCst);
        self.slot.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The contract's error reply as raw HTTP/1.1 bytes, `Connection: close`.
fn raw_reply(error: &Error) -> Vec<u8> {
    let body = serde_json::to_vec(&error.to_json()).unwrap_or_default();
    let status = error.status();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{}: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        makenaide_contract::headers::SOURCE,
        makenaide_contract::headers::SOURCE_CORE,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// The contract's error for the reply hyper wrote itself (its status line is all it says).
fn error_for_hyper_reply(head: &[u8]) -> Error {
    match head.get(9..12) {
        Some(b"414") => Error::UriTooLong { limit: 65_534 },
        Some(b"431") => Error::HeadersTooLarge {
            limit: MAX_HEAD_BYTES,
            fields: MAX_HEADER_FIELDS,
        },
        _ => Error::invalid_request(
            "the request is not valid HTTP/1.1 (request line or header syntax); the connection is closed",
        ),
    }
}

/// Finishes writing `rest`, then closes gracefully: FIN, then what the client still sends is read and dropped
/// (bounded), so the reply is not lost to a reset. Beyond [`LINGER_MAX`] at a time, closes at once.
fn linger(mut stream: TcpStream, rest: Vec<u8>, lingering: &Arc<AtomicUsize>) {
    let taken = lingering
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < LINGER_MAX).then_some(n + 1)
        })
        .is_ok();
    if !taken {
        return;
    }
    let lingering = lingering.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER_TIME, async {
            stream.write_all(&rest).await?;
            stream.shutdown().await?;
            let mut buf = [0u8; 4096];
            let mut seen = 0;
            while seen < LINGER_BYTES {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => seen += n,
                }
            }
            Ok::<_, io::Error>(())
        })
        .await;
        lingering.fetch_sub(1, Ordering::SeqCst);
    });
}

/// The TCP stream as hyper sees it: reads end when the slot is closed, and hyper's own error replies are rewritten
/// (module doc).
pub(super) struct ConnIo {
    stream: Option<TcpStream>,
    slot: Arc<Slot>,
    lingering: Arc<AtomicUsize>,
    registry: Arc<Registry>,
    /// The rewritten error reply and how much of it is written; set once, then hyper's writes are dropped.
    replacement: Option<(Vec<u8>, usize)>,
}

impl ConnIo {
    pub(super) fn new(stream: TcpStream, guard: &SlotGuard) -> Self {
        Self {
            stream: Some(stream),
            slot: guard.slot.clone(),
            lingering: guard.registry.lingering.clone(),
            registry: guard.registry.clone(),
            replacement: None,
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Writes what is left of the replacement reply.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((bytes, done)) = self.replacement.take() else {
            return Poll::Ready(Ok(()));
        };
        let mut done = done;
        let result = loop {
            if done >= bytes.len() {
                break Poll::Ready(Ok(()));
            }
            let stream = match self.stream() {
                Ok(s) => s,
                Err(e) => break Poll::Ready(Err(e)),
            };
            match Pin::new(stream).poll_write(cx, &bytes[done..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => done += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.replacement = Some((bytes, done));
        result
    }

    /// `Some(len)` when these bytes are hyper's own reply (or follow it) and are replaced.
    fn intercept(&mut self, first: &[u8], len: usize) -> Option<usize> {
        if self.replacement.is_some() {
            return Some(len); // hyper has nothing more to say after its error reply: drop it
        }
        let ours = self.slot.busy.load(Ordering::SeqCst) > 0 || !self.slot.flushed.load(Ordering::SeqCst);
        if ours || !first.starts_with(b"HTTP/1.") {
            return None;
        }
        let error = error_for_hyper_reply(first);
        tracing::debug!(
            code = error.code(),
            "request hyper could not parse: answering with the error body"
        );
        self.replacement = Some((raw_reply(&error), 0));
        Some(len)
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if let (Some(stream), Some((bytes, done))) = (self.stream.take(), self.replacement.take()) {
            let rest = bytes.get(done..).unwrap_or_default().to_vec();
            linger(stream, rest, &self.lingering);
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.slot.remember(cx);
        if this.slot.closing.load(Ordering::SeqCst) || this.replacement.is_some() {
            return Poll::Ready(Ok(())); // end of stream: hyper closes the connection
        }
        let before = buf.filled().len();
        let polled = Pin::new(this.stream()?).poll_read(cx, buf);
        if buf.filled().len() > before
            && this.slot.busy.load(Ordering::SeqCst) == 0
            && !this.slot.reading_head.swap(true, Ordering::SeqCst)
        {
            this.slot
                .since_us
                .store(micros(this.registry.clock.now()), Ordering::SeqCst);
        }
        polled
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.slot.remember(cx);
        if let Some(n) = this.intercept(buf, buf.len()) {
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(n));
        }
        if this.slot.closing.load(Ordering::SeqCst) && this.slot.busy.load(Ordering::SeqCst) == 0 {
            // Closed by the idle timeout while its client would not take the last response.
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(this.stream()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.slot.remember(cx);
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
        let total = bufs.iter().map(|b| b.len()).sum();
        if let Some(n) = this.intercept(first, total) {
            let _ = this.poll_replacement(cx)?;
            return Poll::Ready(Ok(n));
        }
        if this.slot.closing.load(Ordering::SeqCst) && this.slot.busy.load(Ordering::SeqCst) == 0 {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(this.stream()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_replacement(cx))?;
        std::task::ready!(Pin::new(this.stream()?).poll_flush(cx))?;
        // hyper flushes the stream only once its own buffer is empty: an idle connection is now fully answered.
        if this.slot.busy.load(Ordering::SeqCst) == 0 {
            this.slot.flushed.store(true, Ordering::SeqCst);
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.poll_replacement(cx))?;
        if this.replacement.is_some() {
            // The lingering close (on drop) sends the FIN after reading what the client still sends.
            return Poll::Ready(Ok(()));
        }
        Pin::new(this.stream()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hyper_replies_map_to_contract_codes() {
        use makenaide_contract::ErrorCode;
        let code = |head: &[u8]| error_for_hyper_reply(head).kind();
        assert_eq!(code(b"HTTP/1.1 414 URI Too Long\r\n"), ErrorCode::UriTooLong);
        assert_eq!(
            code(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            ErrorCode::HeadersTooLarge
        );
        assert_eq!(code(b"HTTP/1.1 400 Bad Request\r\n"), ErrorCode::InvalidRequest);
        let reply = String::from_utf8(raw_reply(&Error::TooManyConnections { limit: 3 })).unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], ErrorCode::TooManyConnections.as_str());
    }

    #[tokio::test(start_paused = true)]
    async fn a_freeze_counts_as_at_most_the_freeze_gap() {
        let clock = AwakeClock::new();
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(clock.tick(), Duration::from_millis(500));
        // Frozen for an hour: the next reading, before and after the sweep has seen it, adds FREEZE_GAP only.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), Duration::from_millis(500) + FREEZE_GAP);
        assert_eq!(clock.tick(), Duration::from_millis(500) + FREEZE_GAP);
    }
}
