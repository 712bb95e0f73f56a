//! Deleting old data, whole segments at a time: per-topic retention (age,
//! bytes) and the total disk budget, whose overflow is evicted by priority:
//! the lowest-priority service first (weighted before express, lower weight
//! first), its oldest segment first, never taking a service below its
//! reserved bytes. Deleting the active segment rolls it first.

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

impl Store {
    /// Applies every topic's retention (age and bytes) at time `now_ms`,
    /// deleting whole segments: a segment goes when its newest record is
    /// older than `max_age` (the active one is rolled first), or, if it is
    /// sealed, while the partition holds at least its share of `max_bytes`
    /// without it.
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
                while let Some((_, _, bytes, max_ts, active)) = part.oldest_segment() {
                    let too_old = cutoff.is_some_and(|c| max_ts < c);
                    // As Kafka: a segment goes when the rest still holds the
                    // share, so the newest `max_bytes` are always kept; the
                    // active segment is never deleted for size.
                    let too_big = !active
                        && per_partition
                            .is_some_and(|max| part.bytes().saturating_sub(bytes) >= max && bytes > 0);
                    if !(too_old || too_big) {
                        break;
                    }
                    let (n, freed) = part.delete_oldest_segment()?;
                    report.add(&spec.service, n, freed);
                    if freed == 0 {
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

    /// Evicts whole segments until the stored bytes fit `max_bytes`, by
    /// priority: the lowest-priority service first, its oldest segment
    /// first, never taking a service below its reserved bytes. Services
    /// missing from `policies` are treated as weight 1, not express,
    /// nothing reserved. Stops early when everything left is reserved.
    pub fn evict_to_budget(
        &self,
        max_bytes: u64,
        policies: &HashMap<String, EvictionPolicy>,
    ) -> Result<RetentionReport, StoreError> {
        const FALLBACK: EvictionPolicy = EvictionPolicy { weight: 1, express: false, reserved_bytes: 0 };
        let mut report = RetentionReport::default();
        let mut exhausted = HashSet::new();
        while self.total_bytes() > max_bytes {
            let topics = self.topics_snapshot();
            let mut by_service = self.service_bytes();
            by_service.retain(|s, _| !exhausted.contains(s));
            let Some(Victim { service, partition: victim, .. }) =
                pick_victim(&topics, &by_service, policies, FALLBACK)?
            else {
                break;
            };
            let policy = policies.get(&service).copied().unwrap_or(FALLBACK);
            let service_bytes = by_service.get(&service).copied().unwrap_or(0);
            let seg_bytes = victim.oldest_segment().map_or(0, |s| s.2);
            if seg_bytes == 0 || service_bytes.saturating_sub(seg_bytes) < policy.reserved_bytes {
                exhausted.insert(service);
                continue;
            }
            let (n, bytes) = victim.delete_oldest_segment()?;
            report.add(&service, n, bytes);
            if bytes == 0 {
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
                if let Some(ts) = part.oldest_timestamp() {
                    heads.push((ts, part.clone()));
                }
            }
        }
        heads.sort_by_key(|(ts, _)| *ts);
        if let Some((_, partition)) = heads.into_iter().next() {
            return Ok(Some(Victim { service: service.clone(), partition }));
        }
    }
    Ok(None)
}
