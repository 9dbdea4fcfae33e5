//! Per-group rate governor for Upbit, shared by every caller in the environment.
//!
//! Rule: at most `rate` requests of a group in any sliding window of 1000 ms. A request occupies its slot from the
//! moment it is sent until one window after its reply arrived: Upbit counts arrival times, which lie between our send
//! and our receive, so "receive + 1 s" can never be early, whatever the latency jitter (a send-time window would
//! occasionally let an 11th request arrive within Upbit's second).
//!
//! Upbit's own signals tighten it:
//! - `Remaining-Req: ...; sec=0`: the group is blocked until its window frees. When our own window is full this is
//!   just our accounting agreeing (block until our oldest slot expires); when it is not, someone else behind the same
//!   IP (NAT) used the budget and we wait a whole window.
//! - 429: the group pauses for a whole window before anything else is sent.
//! - 418: the group is blocked for the time Upbit gave (requests during the block never leave the extension).
//!
//! Callers wait for a slot until their own deadline; if the earliest possible slot is past it they get
//! `upstream_deadline` at once instead of a hopeless wait.

use crate::error::Error;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Upbit quotation rate-limit groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// `/v1/market/all`.
    Market,
    /// `/v1/candles/*` (header says `candles`).
    Candles,
    /// `/v1/ticker*`.
    Ticker,
    /// `/v1/orderbook*`.
    Orderbook,
    /// `/v1/trades/ticks`.
    Trade,
}

impl Group {
    /// All groups, in index order.
    pub const ALL: [Group; 5] = [
        Group::Market,
        Group::Candles,
        Group::Ticker,
        Group::Orderbook,
        Group::Trade,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// Name used in messages (Upbit's header spelling).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Market => "market",
            Self::Candles => "candles",
            Self::Ticker => "ticker",
            Self::Orderbook => "orderbook",
            Self::Trade => "trade",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockReason {
    /// `sec=0` or a 429.
    RateLimited,
    /// 418: Upbit blocked this IP.
    Banned,
}

#[derive(Debug, Default)]
struct GroupState {
    in_flight: u32,
    /// Reply times of finished requests still inside the window (ascending).
    recent: VecDeque<Instant>,
    blocked_until: Option<(Instant, BlockReason)>,
}

impl GroupState {
    fn purge(&mut self, now: Instant, window: Duration) {
        while self.recent.front().is_some_and(|t| *t + window <= now) {
            self.recent.pop_front();
        }
        if self.blocked_until.is_some_and(|(t, _)| t <= now) {
            self.blocked_until = None;
        }
    }

    fn used(&self) -> u32 {
        self.in_flight + u32::try_from(self.recent.len()).unwrap_or(u32::MAX)
    }
}

/// The governor: one per process (each Lambda environment has one extension).
#[derive(Debug)]
pub struct Governor {
    rate: u32,
    window: Duration,
    groups: [Mutex<GroupState>; 5],
    notify: [Notify; 5],
}

/// A granted slot. Call [`Permit::finish`] when the reply arrived; dropping it unfinished (cancelled request)
/// finishes it too, conservatively.
#[derive(Debug)]
pub struct Permit<'a> {
    governor: &'a Governor,
    group: Group,
    done: bool,
}

impl Permit<'_> {
    /// Records the reply time: the slot stays occupied for one window from now.
    pub fn finish(mut self) {
        self.done = true;
        self.governor.complete(self.group);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.governor.complete(self.group);
        }
    }
}

impl Governor {
    /// `rate` requests per `window` per group.
    #[must_use]
    pub fn new(rate: u32, window: Duration) -> Self {
        Self {
            rate: rate.max(1),
            window,
            groups: Default::default(),
            notify: Default::default(),
        }
    }

    fn state(&self, group: Group) -> std::sync::MutexGuard<'_, GroupState> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is still consistent enough.
        self.groups[group.index()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a slot of `group`, until `deadline`.
    ///
    /// # Errors
    /// `upstream_deadline` when no slot can be had before the deadline (immediately when that is already certain).
    pub async fn acquire(&self, group: Group, deadline: Instant) -> Result<Permit<'_>, Error> {
        loop {
            let notified = self.notify[group.index()].notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let wait_until = {
                let mut st = self.state(group);
                st.purge(now, self.window);
                if let Some((until, reason)) = st.blocked_until {
                    Some((until, Some(reason)))
                } else if st.used() < self.rate {
                    st.in_flight += 1;
                    return Ok(Permit {
                        governor: self,
                        group,
                        done: false,
                    });
                } else {
                    // Full: the oldest finished slot frees first; if all are in flight, wait for a reply.
                    st.recent.front().map(|t| (*t + self.window, None))
                }
            };
            if let Some((until, reason)) = wait_until {
                if until > deadline {
                    return Err(self.deadline_error(group, until - now, reason));
                }
                tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = &mut notified => {}
                }
            } else {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = &mut notified => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(self.deadline_error(group, Duration::ZERO, None));
            }
        }
    }

    fn deadline_error(&self, group: Group, wait: Duration, reason: Option<BlockReason>) -> Error {
        let g = group.name();
        Error::UpstreamDeadline(match reason {
            Some(BlockReason::Banned) => format!(
                "Upbit blocked this IP (HTTP 418) for the {g} group: no request possible for another {} ms, after the caller's deadline",
                wait.as_millis()
            ),
            _ if wait.is_zero() => format!("no Upbit rate slot for the {g} group before the caller's deadline"),
            _ => format!(
                "no Upbit rate slot for the {g} group before the caller's deadline (next slot in {} ms; {} requests/s per group)",
                wait.as_millis(),
                self.rate
            ),
        })
    }

    fn complete(&self, group: Group) {
        let now = Instant::now();
        {
            let mut st = self.state(group);
            st.in_flight = st.in_flight.saturating_sub(1);
            st.recent.push_back(now);
        }
        self.notify[group.index()].notify_waiters();
    }

    /// A reply said `Remaining-Req: ...; sec=0`: block the group until its window frees (see module docs).
    pub fn observe_exhausted(&self, group: Group) {
        let now = Instant::now();
        let mut st = self.state(group);
        st.purge(now, self.window);
        let until = if st.used() >= self.rate {
            st.recent.front().map_or(now + self.window, |t| *t + self.window)
        } else {
            now + self.window
        };
        Self::block(&mut st, until, BlockReason::RateLimited);
    }

    /// Upbit answered 429: pause the group for a whole window.
    pub fn too_many_requests(&self, group: Group) {
        let now = Instant::now();
        Self::block(&mut self.state(group), now + self.window, BlockReason::RateLimited);
    }

    /// Upbit answered 418: nothing is sent to the group for `duration`.
    pub fn banned(&self, group: Group, duration: Duration) {
        let now = Instant::now();
        Self::block(&mut self.state(group), now + duration, BlockReason::Banned);
    }

    fn block(st: &mut GroupState, until: Instant, reason: BlockReason) {
        match st.blocked_until {
            Some((t, r)) if t >= until => {
                st.blocked_until = Some((t, if r == BlockReason::Banned { r } else { reason }))
            }
            _ => st.blocked_until = Some((until, reason)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(1000);

    #[tokio::test(start_paused = true)]
    async fn at_most_rate_per_window() {
        let g = Governor::new(10, W);
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        let mut times = Vec::new();
        for _ in 0..25 {
            let p = g.acquire(Group::Candles, far).await.unwrap();
            times.push(Instant::now() - start);
            p.finish();
        }
        // 10 at once, then the next 10 one window later, then the rest another window later.
        assert!(times[..10].iter().all(|t| *t == Duration::ZERO), "{times:?}");
        assert!(times[10..20].iter().all(|t| *t == W), "{times:?}");
        assert!(times[20..].iter().all(|t| *t == 2 * W), "{times:?}");
        // In any 1000 ms sliding window no more than 10 slots were granted.
        for (i, t) in times.iter().enumerate() {
            let in_window = times.iter().filter(|u| **u >= *t && **u < *t + W).count();
            assert!(in_window <= 10, "window starting at #{i}: {in_window}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn groups_are_independent() {
        let g = Governor::new(2, W);
        let far = Instant::now() + Duration::from_secs(60);
        for _ in 0..2 {
            g.acquire(Group::Ticker, far).await.unwrap().finish();
        }
        let start = Instant::now();
        g.acquire(Group::Market, far).await.unwrap().finish();
        assert_eq!(Instant::now(), start, "market is not limited by ticker's use");
    }

    #[tokio::test(start_paused = true)]
    async fn slot_counts_from_reply_not_send() {
        let g = Governor::new(1, W);
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        let p = g.acquire(Group::Trade, far).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await; // slow reply
        p.finish();
        g.acquire(Group::Trade, far).await.unwrap().finish();
        assert_eq!(Instant::now() - start, Duration::from_millis(1300));
    }

    #[tokio::test(start_paused = true)]
    async fn hopeless_wait_fails_fast() {
        let g = Governor::new(1, W);
        let start = Instant::now();
        g.acquire(Group::Candles, start + W * 10).await.unwrap().finish();
        let err = g
            .acquire(Group::Candles, start + Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.code(), makenaide_contract::ErrorCode::UpstreamDeadline.as_str());
        assert_eq!(Instant::now(), start, "no waiting when the slot is after the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_in_flight_replies_respects_deadline() {
        let g = Governor::new(1, W);
        let start = Instant::now();
        let _held = g.acquire(Group::Orderbook, start + W).await.unwrap();
        let err = g
            .acquire(Group::Orderbook, start + Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err.code(), makenaide_contract::ErrorCode::UpstreamDeadline.as_str());
        assert_eq!(Instant::now() - start, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn sec_zero_from_others_blocks_a_full_window() {
        let g = Governor::new(10, W);
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        g.acquire(Group::Ticker, far).await.unwrap().finish();
        // Our window has 1 of 10 used, yet Upbit says 0 left: other clients behind the IP.
        g.observe_exhausted(Group::Ticker);
        g.acquire(Group::Ticker, far).await.unwrap().finish();
        assert_eq!(Instant::now() - start, W);
    }

    #[tokio::test(start_paused = true)]
    async fn sec_zero_consistent_with_own_window_does_not_slow_down() {
        let g = Governor::new(2, W);
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        g.acquire(Group::Candles, far).await.unwrap().finish();
        tokio::time::sleep(Duration::from_millis(900)).await;
        g.acquire(Group::Candles, far).await.unwrap().finish();
        g.observe_exhausted(Group::Candles); // our 2nd of 2: expected
        g.acquire(Group::Candles, far).await.unwrap().finish();
        assert_eq!(
            Instant::now() - start,
            W,
            "next slot when the first one expires, not a window after the sec=0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ban_blocks_until_it_ends_and_says_so() {
        let g = Governor::new(10, W);
        let start = Instant::now();
        g.banned(Group::Candles, Duration::from_secs(30));
        let err = g
            .acquire(Group::Candles, start + Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.code(), makenaide_contract::ErrorCode::UpstreamDeadline.as_str());
        assert!(err.to_string().contains("418"), "{err}");
        g.acquire(Group::Candles, start + Duration::from_secs(60))
            .await
            .unwrap()
            .finish();
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
        // A 429 afterwards does not shorten nor relabel a longer ban.
        g.banned(Group::Market, Duration::from_secs(30));
        g.too_many_requests(Group::Market);
        assert!(g
            .acquire(Group::Market, Instant::now() + W * 2)
            .await
            .unwrap_err()
            .to_string()
            .contains("418"));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_all_get_slots_in_order_of_windows() {
        let g = std::sync::Arc::new(Governor::new(3, W));
        let start = Instant::now();
        let far = start + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for _ in 0..9 {
            let g = g.clone();
            tasks.push(tokio::spawn(async move {
                let p = g.acquire(Group::Ticker, far).await.unwrap();
                let t = Instant::now() - start;
                p.finish();
                t
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        assert_eq!(
            times,
            vec![
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                W,
                W,
                W,
                2 * W,
                2 * W,
                2 * W
            ]
        );
    }
}
