//! Exponential backoff with jitter for reconnects and retries.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth per failed attempt.
    pub factor: f64,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial: Duration::from_millis(100), max: Duration::from_secs(30), factor: 2.0 }
    }
}

/// Delays for consecutive failures: each is drawn uniformly from
/// [delay / 2, delay] ("equal jitter"), where delay grows by `factor` up to
/// `max`, so many edge nodes reconnecting at once spread out.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff { config, attempt: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.config.factor.powi(i32::try_from(self.attempt).unwrap_or(i32::MAX));
        let full = (self.config.initial.as_secs_f64() * exp).min(self.config.max.as_secs_f64());
        self.attempt = self.attempt.saturating_add(1);
        let jittered = full / 2.0 + full / 2.0 * unit_random();
        Duration::from_secs_f64(jittered)
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A uniform number in [0, 1]: std's randomly keyed hasher is random
/// enough for jitter and needs no extra dependency.
fn unit_random() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut last_upper = 0.0;
        for i in 0..20 {
            let d = b.next_delay().as_secs_f64();
            let upper = (0.1 * 2f64.powi(i)).min(30.0);
            assert!(
                d >= upper / 2.0 - 1e-9 && d <= upper + 1e-9,
                "attempt {i}: {d} not in [{}, {upper}]",
                upper / 2.0
            );
            assert!(upper >= last_upper);
            last_upper = upper;
        }
        assert_eq!(b.attempts(), 20);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
