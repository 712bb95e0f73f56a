//! Deleting old data: per-topic retention (age, bytes) and the total disk
//! budget, whose overflow is evicted by priority: the lowest-priority
//! service first (weighted before express, lower weight first), its oldest
//! records first, never taking a service below its reserved bytes.

use super::{Store, Topic};
use crate::error::StoreError;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// How eviction treats one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvictionPolicy {
    /// Scheduler weight: lower weights are evicted first.
    pub weight: u32,
    /// Express services are evicted only after every weighted one.
    pub express: bool,
    /// Eviction never takes the service's stored bytes below this.
    pub reserved_bytes: u64,
}

impl EvictionPolicy {
    /// Sort key: smaller is evicted first.
    fn rank(&self) -> (bool, u32) {
        (self.express, self.weight)
    }
}

/// What a retention or eviction pass deleted, per service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Service name -> (records, bytes) deleted.
    pub deleted: BTreeMap<String, (u64, u64)>,
}

impl RetentionReport {
    fn add(&mut self, service: &str, records: u64, bytes: u64) {
        if records > 0 {
            let e = self.deleted.entry(service.to_owned()).or_default();
            e.0 += records;
            e.1 += bytes;
        }
    }

    /// Total records deleted.
    pub fn records(&self) -> u64 {
        self.deleted.values().map(|v| v.0).sum()
    }
}

/// Records deleted per partition per step, so appends are not blocked long.
const CHUNK: usize = 512;

impl Store {
    /// Applies every topic's retention (age and bytes) at time `now_ms`.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, StoreError> {
        let mut report = RetentionReport::default();
        for topic in self.topics_snapshot() {
            let spec = topic.spec();
            let per_partition = spec.retention.max_bytes.map(|b| b / u64::from(spec.partitions.max(1)));
            let cutoff = spec.retention.max_age.map(|age| crate::record::older_than_cutoff(now_ms, age));
            if per_partition.is_none() && cutoff.is_none() {
                continue;
            }
            for part in topic.partitions() {
                loop {
                    let (n, bytes) = part.delete_oldest(CHUNK, |ts, left, _, _| {
                        cutoff.is_some_and(|c| ts < c) || per_partition.is_some_and(|max| left > max)
                    })?;
                    self.sub_bytes(bytes);
                    report.add(&spec.service, n, bytes);
                    if n < CHUNK as u64 {
                        break;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Bytes stored per service.
    pub fn service_bytes(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for topic in self.topics_snapshot() {
            let b: u64 = topic.partitions().iter().map(|p| p.bytes()).sum();
            *out.entry(topic.spec().service).or_default() += b;
        }
        out
    }

    /// Evicts until the stored bytes fit `max_bytes`, by priority. Services
    /// missing from `policies` are treated as weight 1, not express, nothing
    /// reserved. Stops early when everything left is reserved.
    pub fn evict_to_budget(
        &self,
        max_bytes: u64,
        policies: &HashMap<String, EvictionPolicy>,
    ) -> Result<RetentionReport, StoreError> {
        const FALLBACK: EvictionPolicy = EvictionPolicy { weight: 1, express: false, reserved_bytes: 0 };
        let mut report = RetentionReport::default();
        // Services that cannot give up another record without going below
        // their reservation.
        let mut exhausted = HashSet::new();
        while self.total_bytes() > max_bytes {
            let topics = self.topics_snapshot();
            let mut by_service = self.service_bytes();
            by_service.retain(|s, _| !exhausted.contains(s));
            let Some(Victim { service, partition: victim, next_oldest }) =
                pick_victim(&topics, &by_service, policies, FALLBACK)?
            else {
                break;
            };
            let policy = policies.get(&service).copied().unwrap_or(FALLBACK);
            let service_bytes = by_service.get(&service).copied().unwrap_or(0);
            let over = self.total_bytes() - max_bytes;
            // Oldest first across the service's partitions: stop where another
            // partition holds older records (but always make progress).
            let (n, bytes) = victim.delete_oldest(CHUNK, |ts, _, freed, size| {
                freed < over
                    && service_bytes.saturating_sub(freed + size) >= policy.reserved_bytes
                    && (freed == 0 || next_oldest.is_none_or(|next| ts <= next))
            })?;
            self.sub_bytes(bytes);
            report.add(&service, n, bytes);
            if n == 0 {
                exhausted.insert(service);
            }
        }
        Ok(report)
    }
}

/// Where eviction deletes next.
struct Victim {
    service: String,
    /// The service's partition holding its oldest record.
    partition: Arc<super::partition::Partition>,
    /// Oldest record timestamp among the service's other partitions.
    next_oldest: Option<i64>,
}

/// The lowest-priority service above its reservation, and its partition
/// holding the oldest record.
fn pick_victim(
    topics: &[Arc<Topic>],
    by_service: &BTreeMap<String, u64>,
    policies: &HashMap<String, EvictionPolicy>,
    fallback: EvictionPolicy,
) -> Result<Option<Victim>, StoreError> {
    let mut candidates: Vec<(&String, EvictionPolicy)> = by_service
        .iter()
        .map(|(s, b)| (s, policies.get(s).copied().unwrap_or(fallback), *b))
        .filter(|(_, p, b)| *b > p.reserved_bytes)
        .map(|(s, p, _)| (s, p))
        .collect();
    candidates.sort_by_key(|(s, p)| (p.rank(), (*s).clone()));
    for (service, _) in candidates {
        let mut heads: Vec<(i64, Arc<super::partition::Partition>)> = Vec::new();
        for topic in topics.iter().filter(|t| &t.spec().service == service) {
            for part in topic.partitions() {
                if let Some(ts) = part.oldest_timestamp()? {
                    heads.push((ts, part.clone()));
                }
            }
        }
        heads.sort_by_key(|(ts, _)| *ts);
        let next_oldest = heads.get(1).map(|(ts, _)| *ts);
        if let Some((_, partition)) = heads.into_iter().next() {
            return Ok(Some(Victim { service: service.clone(), partition, next_oldest }));
        }
    }
    Ok(None)
}
