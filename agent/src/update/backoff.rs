//! The update loop's retry schedule after a failure, pure (the simulator follows it too).

use std::time::Duration;

/// 1 s, doubling to 300 s; each wait plus a jitter of up to half the step, so devices that
/// failed together do not retry together. A success starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { step: Self::FIRST }
    }
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(1);
    pub const MAX: Duration = Duration::from_secs(300);

    /// The next failure's wait, before its jitter.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// After a success: the next failure waits [`Self::FIRST`] again.
    pub fn reset(&mut self) {
        self.step = Self::FIRST;
    }

    /// The wait after a failure, its jitter drawn from `random` (any value: it is reduced to
    /// 0..=step/2 ms); the step doubles, up to [`Self::MAX`].
    pub fn next_wait(&mut self, random: u64) -> Duration {
        let jitter = Duration::from_millis(random % (self.step.as_millis() as u64 / 2 + 1));
        let wait = self.step + jitter;
        self.step = (self.step * 2).min(Self::MAX);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_doubles_to_five_minutes_with_up_to_half_of_it_as_jitter() {
        let mut b = Backoff::default();
        assert_eq!(b.next_wait(0), Duration::from_secs(1));
        // The jitter is `random` modulo step/2 + 1 ms: 1_500 % 1_001.
        assert_eq!(b.next_wait(1_500), Duration::from_millis(2_000 + 499));
        assert_eq!(
            b.next_wait(u64::MAX),
            Duration::from_millis(4_000 + u64::MAX % 2_001)
        );
        for _ in 0..10 {
            b.next_wait(0);
        }
        assert_eq!(b.step(), Backoff::MAX);
        let wait = b.next_wait(u64::MAX);
        assert!(
            wait >= Backoff::MAX && wait <= Backoff::MAX * 3 / 2,
            "{wait:?}"
        );
        b.reset();
        assert_eq!(b.next_wait(7), Duration::from_millis(1_000 + 7));
    }
}
