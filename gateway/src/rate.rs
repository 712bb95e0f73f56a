//! Per-service ingest rate limits (`max_records_per_sec`,
//! `max_bytes_per_sec`, `rate_burst`): token buckets, pure (time is passed
//! in), shared by HTTP produce (429 + Retry-After) and MQTT ingest (drop
//! and count).
//!
//! A bucket holds at most `rate x rate_burst` tokens and refills at
//! `rate` per second. A request of cost `c` passes when the bucket holds
//! `min(c, capacity)`; it then takes `c`, which may leave the bucket in debt.
//! So a batch larger than the burst is not refused forever: it passes with
//! a full bucket and the debt holds back what follows, and over time the
//! rate holds either way.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
}

impl Bucket {
    fn new(rate: f64, burst: Duration) -> Bucket {
        let capacity = (rate * burst.as_secs_f64()).max(1.0);
        Bucket { rate, capacity, tokens: capacity }
    }

    fn refill(&mut self, elapsed: Duration) {
        self.tokens = (self.tokens + self.rate * elapsed.as_secs_f64()).min(self.capacity);
    }

    /// How long until `cost` passes; zero when it passes now.
    fn wait(&self, cost: f64) -> Duration {
        let need = cost.min(self.capacity) - self.tokens;
        if need <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.rate)
        }
    }
}

#[derive(Debug)]
struct State {
    records: Option<Bucket>,
    bytes: Option<Bucket>,
    last: Instant,
}

/// The rate limit of one service.
#[derive(Debug)]
pub struct RateLimit(Mutex<State>);

impl RateLimit {
    /// `None` when neither limit is set (unlimited).
    pub fn new(
        records_per_sec: Option<u32>,
        bytes_per_sec: Option<u64>,
        burst: Duration,
    ) -> Option<RateLimit> {
        if records_per_sec.is_none() && bytes_per_sec.is_none() {
            return None;
        }
        let records = records_per_sec.map(|r| Bucket::new(f64::from(r), burst));
        let bytes = bytes_per_sec.map(|b| Bucket::new(b as f64, burst));
        Some(RateLimit(Mutex::new(State { records, bytes, last: Instant::now() })))
    }

    /// Takes `records` records of `bytes` bytes in total, or says how long
    /// to wait before they would pass (nothing is taken then).
    pub fn try_take(&self, now: Instant, records: u64, bytes: u64) -> Result<(), Duration> {
        let mut guard = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = &mut *guard;
        let elapsed = now.saturating_duration_since(s.last);
        s.last = s.last.max(now);
        let (records, bytes) = (records as f64, bytes as f64);
        let mut wait = Duration::ZERO;
        for (bucket, cost) in [(&mut s.records, records), (&mut s.bytes, bytes)] {
            if let Some(b) = bucket {
                b.refill(elapsed);
                wait = wait.max(b.wait(cost));
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        for (bucket, cost) in [(&mut s.records, records), (&mut s.bytes, bytes)] {
            if let Some(b) = bucket {
                b.tokens -= cost;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn unlimited_is_none() {
        assert!(RateLimit::new(None, None, S).is_none());
    }

    #[test]
    fn records_pass_up_to_the_burst_then_at_the_rate() {
        let limit = RateLimit::new(Some(10), None, S).expect("limited");
        let t0 = Instant::now();
        for _ in 0..10 {
            limit.try_take(t0, 1, 100).expect("within the burst");
        }
        let wait = limit.try_take(t0, 1, 100).expect_err("burst used up");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        limit.try_take(t0 + Duration::from_millis(100), 1, 100).expect("refilled one");
        limit.try_take(t0 + Duration::from_millis(100), 1, 100).expect_err("only one");
        // Idle time refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            limit.try_take(later, 1, 0).expect("full bucket");
        }
        limit.try_take(later, 1, 0).expect_err("capped at the burst");
    }

    #[test]
    fn a_batch_larger_than_the_burst_needs_a_full_bucket_and_leaves_debt() {
        let limit = RateLimit::new(Some(10), None, S).expect("limited");
        let t0 = Instant::now();
        limit.try_take(t0, 30, 0).expect("full bucket admits the big batch");
        // 20 records of debt plus one: 2.1 s.
        let wait = limit.try_take(t0, 1, 0).expect_err("in debt");
        assert!((wait.as_secs_f64() - 2.1).abs() < 1e-6, "{wait:?}");
        limit.try_take(t0 + Duration::from_millis(2100), 1, 0).expect("debt paid");
    }

    #[test]
    fn both_limits_must_pass_and_a_refusal_takes_nothing() {
        let limit = RateLimit::new(Some(100), Some(1000), S).expect("limited");
        let t0 = Instant::now();
        limit.try_take(t0, 1, 900).expect("fits");
        let wait = limit.try_take(t0, 1, 200).expect_err("bytes over");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // The refused request took no record tokens: 99 are left.
        for _ in 0..99 {
            limit.try_take(t0, 1, 0).expect("records left");
        }
        limit.try_take(t0, 1, 0).expect_err("records used up");
    }
}
