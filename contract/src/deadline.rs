//! The one rule for deadlines given as absolute Unix epoch milliseconds: Lambda's `Lambda-Runtime-Deadline-Ms`
//! (read by the functions), the `X-Makenaide-Deadline-Ms` header and the INVOKE event's `deadlineMs` (read by the
//! extension).
//!
//! Lambda itself always sends a future epoch time at most 15 minutes ahead (the longest function timeout).
//! Emulators do not: cargo-lambda 1.9's `watch` sends `600000` (a duration), aws-lambda-go's local invokes send the
//! invocation's own timestamp (already past), older .NET test tools sent nothing, others send 0 or a literal 15
//! minutes. Taken literally each of these is a deadline in 1970 and every call would fail at once. So a value that
//! is not a plausible absolute time is *unknown*: the caller falls back to the function timeout or its default
//! bound, warns once naming the value, and never fails a call because of it.

use std::fmt;

/// Lambda's longest function timeout.
pub const MAX_LAMBDA_TIMEOUT_MS: u64 = 15 * 60 * 1000;
/// Accepted beyond [`MAX_LAMBDA_TIMEOUT_MS`]: clock steps between the Lambda service and the sandbox.
pub const FUTURE_SLACK_MS: u64 = 60 * 1000;

/// Why a deadline value was not taken as an absolute time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineProblem {
    /// No value at all.
    Absent,
    /// `0`.
    Zero,
    /// At or before the time it was received (a duration such as `600000`, or an expired timestamp).
    Past,
    /// Further ahead than Lambda's 15-minute maximum plus [`FUTURE_SLACK_MS`].
    TooFar,
}

impl fmt::Display for DeadlineProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Absent => "absent",
            Self::Zero => "zero",
            Self::Past => "not in the future (a duration, or an expired time)",
            Self::TooFar => "more than 15 minutes ahead",
        })
    }
}

/// A deadline value after the plausibility rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// A plausible absolute deadline, Unix epoch ms.
    At(u64),
    /// Not usable as an absolute time.
    Unknown(DeadlineProblem),
}

impl Deadline {
    /// Applies the rule to `value` received at `now_ms` (both Unix epoch ms).
    #[must_use]
    pub fn classify(value: Option<u64>, now_ms: u64) -> Self {
        match value {
            None => Self::Unknown(DeadlineProblem::Absent),
            Some(0) => Self::Unknown(DeadlineProblem::Zero),
            Some(v) if v <= now_ms => Self::Unknown(DeadlineProblem::Past),
            Some(v) if v - now_ms > MAX_LAMBDA_TIMEOUT_MS + FUTURE_SLACK_MS => Self::Unknown(DeadlineProblem::TooFar),
            Some(v) => Self::At(v),
        }
    }

    /// The absolute deadline, if plausible.
    #[must_use]
    pub fn at(self) -> Option<u64> {
        match self {
            Self::At(v) => Some(v),
            Self::Unknown(_) => None,
        }
    }

    /// A function invocation's deadline: the Runtime API's value when plausible, else `received + timeout` from
    /// `AWS_LAMBDA_FUNCTION_TIMEOUT` (seconds, as the Runtime Interface Emulator sets it) when that parses as 1 to
    /// 900 s, else none (the caller's documented default bounds apply). The problem, if any, is returned for the
    /// caller to log.
    #[must_use]
    pub fn for_invocation(
        runtime_deadline_ms: Option<u64>,
        function_timeout_s: Option<&str>,
        now_ms: u64,
    ) -> (Option<u64>, Option<DeadlineProblem>) {
        match Self::classify(runtime_deadline_ms, now_ms) {
            Self::At(v) => (Some(v), None),
            Self::Unknown(problem) => {
                let timeout_ms = function_timeout_s
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .filter(|s| (1..=MAX_LAMBDA_TIMEOUT_MS / 1000).contains(s))
                    .map(|s| s * 1000);
                (timeout_ms.map(|t| now_ms + t), Some(problem))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_764_600_000_000; // 2025-12-01T14:40:00Z

    #[test]
    fn every_form_an_emulator_sends() {
        use DeadlineProblem::*;
        let cases = [
            (None, Deadline::Unknown(Absent)),
            (Some(0), Deadline::Unknown(Zero)),
            // cargo-lambda 1.9 `watch`: a duration.
            (Some(600_000), Deadline::Unknown(Past)),
            // aws-lambda-go local invoke: the invocation's own timestamp.
            (Some(NOW), Deadline::Unknown(Past)),
            (Some(NOW - 1), Deadline::Unknown(Past)),
            (
                Some(NOW + MAX_LAMBDA_TIMEOUT_MS + FUTURE_SLACK_MS + 1),
                Deadline::Unknown(TooFar),
            ),
            (Some(u64::MAX), Deadline::Unknown(TooFar)),
            // Lambda itself: a real epoch deadline, 3 s and 15 min ahead.
            (Some(NOW + 3_000), Deadline::At(NOW + 3_000)),
            (
                Some(NOW + MAX_LAMBDA_TIMEOUT_MS),
                Deadline::At(NOW + MAX_LAMBDA_TIMEOUT_MS),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(Deadline::classify(value, NOW), want, "{value:?}");
        }
    }

    #[test]
    fn invocation_falls_back_to_the_function_timeout() {
        let inv = Deadline::for_invocation;
        assert_eq!(inv(Some(NOW + 5_000), Some("3"), NOW), (Some(NOW + 5_000), None));
        assert_eq!(
            inv(Some(600_000), Some("300"), NOW),
            (Some(NOW + 300_000), Some(DeadlineProblem::Past))
        );
        assert_eq!(
            inv(Some(0), Some(" 60 "), NOW),
            (Some(NOW + 60_000), Some(DeadlineProblem::Zero))
        );
        assert_eq!(inv(None, None, NOW), (None, Some(DeadlineProblem::Absent)));
        for bad in ["", "0", "abc", "901", "-1"] {
            assert_eq!(
                inv(Some(600_000), Some(bad), NOW),
                (None, Some(DeadlineProblem::Past)),
                "{bad:?}"
            );
        }
    }
}
