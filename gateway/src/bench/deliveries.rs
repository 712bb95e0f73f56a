//! What the priority bench's consumer saw: every delivery per service
//! (published, taken in by sluice, delivered), and the sluice consumer's
//! API calls, summarised per time window.

use super::payload::Stamp;
use super::stats::{Latencies, Summary};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Every delivery, per service, and the sluice consumer's API calls.
#[derive(Debug)]
pub struct Deliveries {
    services: Vec<ServiceLog>,
    calls: Mutex<Vec<Call>>,
}

/// One fetch (and commit) of the sluice consumer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    /// When the fetch returned, microseconds since the epoch.
    pub(super) at: u64,
    pub(super) fetch_us: u64,
    /// 0 when nothing was fetched (no commit).
    pub(super) commit_us: u64,
    pub(super) records: usize,
}

/// The sluice consumer's calls in a window: where a consumer's time goes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CallStats {
    /// Fetches that returned records.
    pub fetches: usize,
    /// Mean records per such fetch.
    pub records_per_fetch: f64,
    /// Fetch round trip (includes the long-poll wait when idle).
    pub fetch: Summary,
    /// Commit round trip (sluice answers once the commit is on disk).
    pub commit: Summary,
}

/// When one message was published and delivered (microseconds since the
/// epoch), and taken in by sluice's ingest (its record timestamp,
/// milliseconds).
#[derive(Debug, Clone, Copy)]
struct Times {
    sent: u64,
    got: u64,
    ingest_ms: Option<u64>,
}

/// Where the probe's latency went (sluice consumer only): publish ->
/// ingest (sluice's record timestamp, millisecond resolution) and ingest
/// -> consumer.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Split {
    /// Publish -> the record's timestamp (MQTT, broker, ingest link).
    pub to_ingest: Summary,
    /// The record's timestamp -> the consumer (queue, persisting,
    /// delivery, the consumer's own pace).
    pub ingest_to_consumer: Summary,
}

#[derive(Debug, Default)]
struct ServiceLog {
    delivered: Arc<AtomicU64>,
    times: Mutex<Vec<Times>>,
}

impl Deliveries {
    /// Logs for `services` services.
    pub fn new(services: usize) -> Arc<Deliveries> {
        Arc::new(Deliveries {
            services: (0..services).map(|_| ServiceLog::default()).collect(),
            calls: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn call(&self, call: Call) {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
    }

    /// The sluice consumer's fetches that returned records in `[from, to)`;
    /// `None` for other consumers or without such fetches.
    pub fn call_stats(&self, from: u64, to: u64) -> Option<CallStats> {
        let calls: Vec<Call> = self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|c| c.at >= from && c.at < to && c.records > 0)
            .copied()
            .collect();
        if calls.is_empty() {
            return None;
        }
        Some(CallStats {
            fetches: calls.len(),
            records_per_fetch: calls.iter().map(|c| c.records).sum::<usize>() as f64 / calls.len() as f64,
            fetch: calls.iter().map(|c| c.fetch_us).collect::<Latencies>().summary(),
            commit: calls.iter().map(|c| c.commit_us).collect::<Latencies>().summary(),
        })
    }

    pub(super) fn record(&self, stamp: Stamp, delivered_us: u64, ingest_ms: Option<u64>) {
        // Messages of other publishers (not ours) are not counted.
        if let Some(s) = self.services.get(stamp.svc as usize) {
            s.delivered.fetch_add(1, Ordering::Relaxed);
            let times = Times { sent: stamp.sent_us, got: delivered_us, ingest_ms };
            s.times.lock().unwrap_or_else(PoisonError::into_inner).push(times);
        }
    }

    /// The running count of deliveries of a service.
    pub fn counter(&self, svc: usize) -> Arc<AtomicU64> {
        self.services[svc].delivered.clone()
    }

    fn times(&self, svc: usize) -> Vec<Times> {
        self.services[svc].times.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Publish -> delivery latency of the service's messages published in
    /// `[from, to)` (microseconds since the epoch).
    pub fn latencies(&self, svc: usize, from: u64, to: u64) -> Latencies {
        self.times(svc)
            .into_iter()
            .filter(|t| t.sent >= from && t.sent < to)
            .map(|t| t.got.saturating_sub(t.sent))
            .collect()
    }

    /// The latency split of the service's messages published in
    /// `[from, to)`; `None` without record timestamps.
    pub fn split(&self, svc: usize, from: u64, to: u64) -> Option<Split> {
        let times: Vec<(u64, u64, u64)> = self
            .times(svc)
            .into_iter()
            .filter(|t| t.sent >= from && t.sent < to)
            .filter_map(|t| t.ingest_ms.map(|ms| (t.sent, ms * 1000, t.got)))
            .collect();
        if times.is_empty() {
            return None;
        }
        Some(Split {
            to_ingest: times
                .iter()
                .map(|&(sent, ingest, _)| ingest.saturating_sub(sent))
                .collect::<Latencies>()
                .summary(),
            ingest_to_consumer: times
                .iter()
                .map(|&(_, ingest, got)| got.saturating_sub(ingest))
                .collect::<Latencies>()
                .summary(),
        })
    }

    /// Messages delivered in `[from, to)`.
    pub fn delivered_between(&self, svc: usize, from: u64, to: u64) -> u64 {
        self.times(svc).iter().filter(|t| t.got >= from && t.got < to).count() as u64
    }
}
