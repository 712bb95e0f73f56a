//! Measurement shared by every bench: latency samples and their
//! percentiles (the one implementation), medians, a token bucket that paces
//! senders and consumers, and the live progress line on stderr.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<u64>);

/// Percentiles of a set of latency samples, in milliseconds (NaN without
/// samples).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latencies {
    /// Adds one sample.
    pub fn push(&mut self, micros: u64) {
        self.0.push(micros);
    }

    /// Adds every sample of `other`.
    pub fn append(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// The q-quantile (0..=1) in milliseconds, by the nearest rank.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        quantile_sorted(&v, q)
    }

    /// The q-quantile in milliseconds when `missing` more samples are
    /// known to be larger than every sample here (messages never
    /// delivered); `None` when the quantile falls among those.
    pub fn quantile_with_missing_ms(&self, q: f64, missing: u64) -> Option<f64> {
        let total = self.0.len() as u64 + missing;
        if total == 0 {
            return None;
        }
        let rank = ((total - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        if rank >= self.0.len() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_unstable();
        Some(v[rank] as f64 / 1000.0)
    }

    /// p50, p99 and max with one sort.
    pub fn summary(&self) -> Summary {
        let mut v = self.0.clone();
        v.sort_unstable();
        Summary {
            n: v.len(),
            p50_ms: quantile_sorted(&v, 0.5),
            p90_ms: quantile_sorted(&v, 0.9),
            p99_ms: quantile_sorted(&v, 0.99),
            max_ms: quantile_sorted(&v, 1.0),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<u64> for Latencies {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        Latencies(iter.into_iter().collect())
    }
}

fn quantile_sorted(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The median of `values` (NaN when empty); NaNs are left out.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Microseconds since the Unix epoch: the clock embedded in payloads, so
/// a publisher and a consumer (in one process or on one machine) agree.
pub fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Paces work to `rate` units per second with bursts of at most `burst`
/// units (a token bucket). A rate of 0 means no limit.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that starts empty.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket { rate, burst: burst.max(1.0), tokens: 0.0, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
    }

    /// Waits until at least one unit is available; returns how many whole
    /// units are (at most `burst`; `usize::MAX` without a limit). Nothing
    /// is taken: call [`TokenBucket::take`] with what was used.
    pub async fn ready(&mut self) -> usize {
        if self.rate <= 0.0 {
            return usize::MAX;
        }
        loop {
            self.refill();
            if self.tokens >= 1.0 {
                return self.tokens as usize;
            }
            let missing = (1.0 - self.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(missing)).await;
        }
    }

    /// Takes `n` units (the balance may go negative after a large batch).
    pub fn take(&mut self, n: usize) {
        if self.rate > 0.0 {
            self.tokens -= n as f64;
        }
    }
}

/// A counter shown on the progress line and sampled once a second.
#[derive(Debug, Clone)]
pub struct Meter {
    /// Label on the progress line.
    pub name: String,
    /// The running total.
    pub count: Arc<AtomicU64>,
}

impl Meter {
    /// A meter over `count`.
    pub fn new(name: impl Into<String>, count: Arc<AtomicU64>) -> Meter {
        Meter { name: name.into(), count }
    }
}

/// What [`sample_each_second`] saw of one meter.
#[derive(Debug, Clone, Default)]
pub struct Rates {
    /// The rate of each whole second.
    pub per_second: Vec<f64>,
    /// The rate over the whole window.
    pub average: f64,
}

impl Rates {
    /// The median of the per-second rates.
    pub fn median(&self) -> f64 {
        median(&self.per_second)
    }
}

/// Samples `meters` once a second for `duration`, printing one progress
/// line per second on stderr.
pub async fn sample_each_second(label: &str, meters: &[Meter], duration: Duration) -> Vec<Rates> {
    let started = Instant::now();
    let first: Vec<u64> = meters.iter().map(|m| m.count.load(Ordering::Relaxed)).collect();
    let mut last = first.clone();
    let mut last_at = started;
    let mut rates = vec![Rates::default(); meters.len()];
    let mut tick =
        tokio::time::interval_at((started + Duration::from_secs(1)).into(), Duration::from_secs(1));
    while started.elapsed() + Duration::from_millis(1) < duration {
        let remaining = duration.saturating_sub(started.elapsed());
        let at = tokio::select! {
            t = tick.tick() => t.into_std(),
            () = tokio::time::sleep(remaining) => Instant::now(),
        };
        let secs = at.duration_since(last_at).as_secs_f64().max(1e-3);
        // A partial last second is shown but not kept as a sample.
        let whole = secs > 0.9;
        let mut line = format!("[{label} {:>3.0}s]", started.elapsed().as_secs_f64());
        for (i, m) in meters.iter().enumerate() {
            let now = m.count.load(Ordering::Relaxed);
            let rate = now.saturating_sub(last[i]) as f64 / secs;
            if whole {
                rates[i].per_second.push(rate);
            }
            line.push_str(&format!("  {} {rate:.0}/s", m.name));
            last[i] = now;
        }
        last_at = at;
        eprintln!("{line}");
    }
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    for (i, m) in meters.iter().enumerate() {
        rates[i].average = m.count.load(Ordering::Relaxed).saturating_sub(first[i]) as f64 / secs;
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let l: Latencies = (1..=100).map(|ms| ms * 1000).collect();
        let s = l.summary();
        assert_eq!(s.n, 100);
        assert_eq!(s.p50_ms, 51.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.max_ms, 100.0);
        assert!(Latencies::default().quantile_ms(0.5).is_nan());
        // 100 delivered, 1 never: the p99 is still among the delivered.
        assert_eq!(l.quantile_with_missing_ms(0.99, 1), Some(100.0));
        assert_eq!(l.quantile_with_missing_ms(0.99, 5), None);
        assert_eq!(Latencies::default().quantile_with_missing_ms(0.5, 0), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[f64::NAN, 5.0]), 5.0);
        assert!(median(&[]).is_nan());
    }
}
