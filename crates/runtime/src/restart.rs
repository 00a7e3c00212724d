//! When to restart an instance that exited: the backoff between restarts and the crash-loop
//! rule, as pure functions of the policy and the times of earlier exits.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::spec::RestartPolicy;

/// The exits of one instance so far, as far as restarting it is concerned.
#[derive(Debug, Default)]
pub(crate) struct Restarts {
    /// The wait before the last restart, if there was one since the backoff last started over.
    last_backoff: Option<Duration>,
    /// When the exits within the crash-loop window happened, oldest first.
    exits: VecDeque<Instant>,
}

/// What to do about one exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decision {
    /// How long to wait before starting the instance again.
    pub(crate) delay: Duration,
    /// Whether the instance is in a crash loop.
    pub(crate) crash_loop: bool,
    /// How many exits, this one included, happened within the crash-loop window.
    pub(crate) recent_exits: usize,
}

impl Restarts {
    /// Records an exit at `now` and decides when to restart. `stable` tells whether the
    /// instance had been healthy for [`RestartPolicy::stable_after`] when it exited.
    pub(crate) fn on_exit(&mut self, now: Instant, stable: bool, policy: &RestartPolicy) -> Decision {
        let delay = next_backoff(self.last_backoff, stable, policy);
        self.last_backoff = Some(delay);
        while self.exits.front().is_some_and(|&at| now.saturating_duration_since(at) > policy.crash_loop_window) {
            self.exits.pop_front();
        }
        self.exits.push_back(now);
        // Only the last `crash_loop_after` exits can matter.
        let threshold = policy.crash_loop_after.max(1);
        let threshold_len = usize::try_from(threshold).unwrap_or(usize::MAX);
        while self.exits.len() > threshold_len {
            self.exits.pop_front();
        }
        let recent_exits = self.exits.len();
        Decision { delay, crash_loop: recent_exits >= threshold_len, recent_exits }
    }
}

/// The wait before the next restart, given the wait before the last one (`None` if there has
/// been none since the backoff started over) and whether the instance ran stably: the initial
/// backoff, or twice the last one, capped at the maximum.
pub(crate) fn next_backoff(last: Option<Duration>, stable: bool, policy: &RestartPolicy) -> Duration {
    let initial = policy.initial_backoff.max(RestartPolicy::MIN_BACKOFF);
    let cap = policy.max_backoff.max(initial);
    match last {
        Some(last) if !stable => last.saturating_mul(2).clamp(initial, cap),
        _ => initial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy(initial: u64, max: u64, after: u32, window: u64) -> RestartPolicy {
        RestartPolicy {
            initial_backoff: ms(initial),
            max_backoff: ms(max),
            crash_loop_after: after,
            crash_loop_window: ms(window),
            stable_after: ms(1000),
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_the_cap_and_starts_over_when_stable() {
        let default = RestartPolicy::default();
        // (policy, last backoff, stable, expected)
        let cases = [
            (&default, None, false, ms(200)),
            (&default, Some(ms(200)), false, ms(400)),
            (&default, Some(ms(6_000)), false, ms(10_000)),
            (&default, Some(ms(10_000)), false, ms(10_000)),
            (&default, Some(ms(10_000)), true, ms(200)),
            (&default, None, true, ms(200)),
            // Too small a start is raised; a cap below the start is raised to it.
            (&policy(0, 0, 3, 1000), None, false, RestartPolicy::MIN_BACKOFF),
            (&policy(0, 0, 3, 1000), Some(ms(10)), false, RestartPolicy::MIN_BACKOFF),
            (&policy(500, 100, 3, 1000), Some(ms(500)), false, ms(500)),
            // A huge backoff saturates instead of overflowing.
            (&policy(1, u64::MAX, 3, 1000), Some(Duration::MAX), false, ms(u64::MAX)),
        ];
        for (policy, last, stable, want) in cases {
            assert_eq!(next_backoff(last, stable, policy), want, "{policy:?} {last:?} {stable}");
        }
    }

    #[test]
    fn exits_within_the_window_make_a_crash_loop() {
        // (policy, exit times in ms with whether the instance was stable, expected decisions
        // as (delay ms, crash loop, recent exits))
        type Case = (RestartPolicy, &'static [(u64, bool)], &'static [(u64, bool, usize)]);
        let cases: Vec<Case> = vec![
            (
                policy(200, 10_000, 3, 60_000),
                &[(0, false), (1_000, false), (2_000, false), (3_000, false)],
                &[(200, false, 1), (400, false, 2), (800, true, 3), (1_600, true, 3)],
            ),
            // Exits spread wider than the window never make a crash loop.
            (
                policy(200, 10_000, 3, 1_000),
                &[(0, false), (800, false), (1_700, false), (2_600, false)],
                &[(200, false, 1), (400, false, 2), (800, false, 2), (1_600, false, 2)],
            ),
            // A stable run starts the backoff over but still counts as an exit.
            (
                policy(100, 1_000, 3, 60_000),
                &[(0, false), (100, false), (5_000, true)],
                &[(100, false, 1), (200, false, 2), (100, true, 3)],
            ),
            // 0 exits counts as 1: every exit is a crash loop.
            (policy(100, 1_000, 0, 60_000), &[(0, false), (10, false)], &[(100, true, 1), (200, true, 1)]),
            // An exit exactly at the window's edge still counts.
            (
                policy(100, 1_000, 2, 1_000),
                &[(0, false), (1_000, false), (2_001, false)],
                &[(100, false, 1), (200, true, 2), (400, false, 1)],
            ),
        ];
        for (policy, exits, want) in cases {
            let start = Instant::now();
            let mut restarts = Restarts::default();
            let got: Vec<(u64, bool, usize)> = exits
                .iter()
                .map(|&(at, stable)| {
                    let d = restarts.on_exit(start + ms(at), stable, &policy);
                    (u64::try_from(d.delay.as_millis()).unwrap_or(u64::MAX), d.crash_loop, d.recent_exits)
                })
                .collect();
            assert_eq!(got, want, "{policy:?} {exits:?}");
        }
    }
}
