//! The invocation's time budget, in one place: which deadline the function works to, how much of it is kept back
//! for storing and answering, and how long a request to the extension may take.
//!
//! The Runtime API's `Lambda-Runtime-Deadline-Ms` goes through the contract's plausibility rule
//! ([`makenaide_contract::deadline`]): under emulators it is often a duration (`600000` from `cargo lambda watch`),
//! 0 or an expired time, which taken literally would fail every call at once. Such a value is replaced by
//! `AWS_LAMBDA_FUNCTION_TIMEOUT` seconds from receipt when that is set (the Runtime Interface Emulator sets it),
//! else by no deadline at all (each request is then bounded by [`DEFAULT_REQUEST_TIMEOUT`] and the extension's own
//! defaults), with one warning per process naming the value.

use makenaide_contract::{env, Deadline};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Taken off the invocation's deadline before it is passed to the extension: time left for us to store what we
/// have, build the result and return it before Lambda ends the invocation. Never more than half the time left.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(750);
/// Extra time we wait for an answer past the deadline we gave the extension (it needs a moment to answer
/// `upstream_deadline`), still well inside [`DEADLINE_MARGIN`].
pub const DEADLINE_GRACE: Duration = Duration::from_millis(250);
/// Extra time the collector's final store gets past the fetch deadline, taken from [`DEADLINE_MARGIN`]: with
/// [`DEADLINE_GRACE`] on top it still ends 150 ms before the invocation's deadline.
pub const STORE_GRACE: Duration = Duration::from_millis(350);
/// Per-request bound when there is no deadline (unknown under an emulator, tests, local runs).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Current Unix epoch time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The deadline (epoch ms) to send the extension for an invocation whose Runtime API deadline is
/// `runtime_deadline_ms`, margin already taken off; `None` when there is no usable deadline.
pub fn for_invocation(runtime_deadline_ms: u64) -> Option<u64> {
    let now = now_ms();
    let timeout = std::env::var(env::AWS_LAMBDA_FUNCTION_TIMEOUT).ok();
    let (deadline, problem) = Deadline::for_invocation(Some(runtime_deadline_ms), timeout.as_deref(), now);
    if let Some(problem) = problem {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            let fallback = match deadline {
                Some(d) => format!(
                    "{} = {timeout:?} s from receipt, until {d}",
                    env::AWS_LAMBDA_FUNCTION_TIMEOUT
                ),
                None => format!(
                    "no deadline ({} unset): each request is bounded by {} s",
                    env::AWS_LAMBDA_FUNCTION_TIMEOUT,
                    DEFAULT_REQUEST_TIMEOUT.as_secs()
                ),
            };
            tracing::warn!(
                "Lambda-Runtime-Deadline-Ms = {runtime_deadline_ms} is not a plausible deadline ({problem}); using \
                 {fallback} (an emulator's quirk; Lambda sends an epoch time at most 15 minutes ahead)"
            );
        }
    }
    deadline.map(|d| with_margin(d, now))
}

/// `deadline` minus [`DEADLINE_MARGIN`], or minus half the time left when less than twice the margin is left, so
/// that what is sent is still in the future (the extension ignores a deadline that has passed).
fn with_margin(deadline: u64, now: u64) -> u64 {
    let left = deadline.saturating_sub(now);
    deadline - (DEADLINE_MARGIN.as_millis() as u64).min(left / 2)
}

/// Time left until `deadline_ms` (epoch ms); [`DEFAULT_REQUEST_TIMEOUT`] without one.
pub fn time_left(deadline_ms: Option<u64>) -> Duration {
    match deadline_ms {
        Some(d) => Duration::from_millis(d.saturating_sub(now_ms())),
        None => DEFAULT_REQUEST_TIMEOUT,
    }
}

/// How long to wait for the extension's reply: the time left plus [`DEADLINE_GRACE`].
pub fn request_timeout(deadline_ms: Option<u64>) -> Duration {
    match deadline_ms {
        Some(_) => time_left(deadline_ms) + DEADLINE_GRACE,
        None => DEFAULT_REQUEST_TIMEOUT,
    }
}

/// The deadline for the collector's final store: [`STORE_GRACE`] past the fetch deadline.
pub fn for_store(deadline_ms: Option<u64>) -> Option<u64> {
    deadline_ms.map(|d| d + STORE_GRACE.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_taken_but_never_past_now() {
        let now = 1_764_600_000_000;
        assert_eq!(with_margin(now + 10_000, now), now + 10_000 - 750);
        assert_eq!(with_margin(now + 1_000, now), now + 500);
        assert_eq!(with_margin(now + 1, now), now + 1);
    }

    #[test]
    fn emulator_forms_never_become_a_deadline_in_1970() {
        // The process environment has no AWS_LAMBDA_FUNCTION_TIMEOUT in unit tests (the contract's tests cover the
        // fallback to it); a real deadline keeps the margin.
        if std::env::var_os(env::AWS_LAMBDA_FUNCTION_TIMEOUT).is_some() {
            return;
        }
        for value in [0, 600_000, 900_000, now_ms() - 1, u64::MAX] {
            assert_eq!(for_invocation(value), None, "{value}");
        }
        let real = now_ms() + 30_000;
        let sent = for_invocation(real).unwrap_or_default();
        assert!(sent <= real - 750 && sent > real - 2_000, "{sent} for {real}");
    }
}
