//! Reading for consumers: partition fetch and consumer-group fetch, with
//! long-poll. A group fetch orders records across its topics with the same
//! weighted scheduler that orders ingest, and skips records older than their
//! service's TTL (counted, and committed past when they lead a partition).

use crate::state::Shared;
use crate::topics::Topic;
use sluice_store::scheduler::{Mode, Scheduler, ServiceId};
use sluice_store::{Offset, PartitionId, ReadResult, StoreError, StoredRecord};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Upper bound of bytes read per partition per fetch.
pub const MAX_FETCH_BYTES: usize = 4 << 20;

/// A record delivered to a group, with where it came from.
#[derive(Debug)]
pub struct GroupRecord {
    /// Its topic.
    pub topic: Arc<Topic>,
    /// Its partition.
    pub partition: PartitionId,
    /// The record.
    pub record: StoredRecord,
}

/// Reads one partition, waiting up to `wait` for data when there is none.
pub async fn fetch_partition(
    shared: &Shared,
    topic: &Arc<Topic>,
    partition: PartitionId,
    from: Offset,
    max_records: usize,
    wait: Duration,
) -> Result<ReadResult, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let rx = topic.subscribe();
        let res = shared.store.read(&topic.name, partition, from, max_records, MAX_FETCH_BYTES)?;
        if !res.records.is_empty() || !wait_for(shared, rx, deadline).await {
            return Ok(res);
        }
    }
}

/// Waits until `rx` changes (true) or the deadline or shutdown (false).
async fn wait_for(shared: &Shared, mut rx: watch::Receiver<u64>, deadline: tokio::time::Instant) -> bool {
    if tokio::time::Instant::now() >= deadline || *shared.shutdown.borrow() {
        return false;
    }
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        r = rx.changed() => r.is_ok(),
        _ = tokio::time::sleep_until(deadline) => false,
        _ = shutdown.changed() => false,
    }
}

/// A group fetch across `topics`: records from the group's committed
/// positions (or the log start), in priority order, at most `max_records`.
pub async fn fetch_group(
    shared: &Shared,
    group: &str,
    topics: &[Arc<Topic>],
    max_records: usize,
    wait: Duration,
) -> Result<Vec<GroupRecord>, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let rx = shared.topics.subscribe_any();
        let out = group_fetch_once(shared, group, topics, max_records)?;
        if !out.is_empty() || !wait_for(shared, rx, deadline).await {
            return Ok(out);
        }
    }
}

fn group_fetch_once(
    shared: &Shared,
    group: &str,
    topics: &[Arc<Topic>],
    max_records: usize,
) -> Result<Vec<GroupRecord>, StoreError> {
    let services = &shared.services;
    let now = crate::now_ms();
    // Per service: one queue per partition, merged below by timestamp.
    let mut per_service: Vec<Vec<VecDeque<GroupRecord>>> = services.iter().map(|_| Vec::new()).collect();
    for topic in topics {
        let service = services.resolve(&topic.service);
        let cutoff =
            service.ttl.map(|ttl| now.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)));
        for p in 0..topic.partitions {
            let partition = PartitionId(p);
            let pos = shared.store.committed(group, &topic.name, partition)?.unwrap_or(Offset(0));
            let res = shared.store.read(&topic.name, partition, pos, max_records, MAX_FETCH_BYTES)?;
            let mut queue = VecDeque::with_capacity(res.records.len());
            let mut leading_expired = None;
            for record in res.records {
                if cutoff.is_some_and(|c| record.record.timestamp_ms < c) {
                    service.counters.ttl_expired.fetch_add(1, Ordering::Relaxed);
                    if queue.is_empty() {
                        leading_expired = Some(record.offset.next());
                    }
                    continue;
                }
                queue.push_back(GroupRecord { topic: topic.clone(), partition, record });
            }
            if let Some(next) = leading_expired {
                // Expired records are never delivered: move the group past them
                // so they are counted once, not on every fetch.
                shared.store.commit(group, &topic.name, partition, next)?;
            }
            if !queue.is_empty() {
                per_service[usize::from(service.id.0)].push(queue);
            }
        }
    }
    let mut sched: Scheduler<GroupRecord> =
        Scheduler::new(shared.ingest_mode(), shared.config.scheduler.express_max_share);
    for s in services.iter() {
        sched.add_service(s.class());
    }
    let ids: Vec<ServiceId> = services.iter().map(|s| s.id).collect();
    if shared.ingest_mode() == Mode::Fifo {
        // First in, first out across everything: one merge by timestamp.
        let all: Vec<(ServiceId, VecDeque<GroupRecord>)> = ids
            .iter()
            .zip(per_service)
            .flat_map(|(&id, parts)| parts.into_iter().map(move |q| (id, q)))
            .collect();
        merge_oldest_first(all, |id, r| sched.push(id, r.record.record.encoded_len() as u64, r));
    } else {
        for (&id, parts) in ids.iter().zip(per_service) {
            let parts = parts.into_iter().map(|q| (id, q)).collect();
            merge_oldest_first(parts, |id, r| sched.push(id, r.record.record.encoded_len() as u64, r));
        }
    }
    let mut out = Vec::with_capacity(max_records.min(sched.total_items()));
    while out.len() < max_records {
        match sched.pop() {
            Some((_, r)) => out.push(r),
            None => break,
        }
    }
    Ok(out)
}

/// Emits records oldest first across queues, keeping each queue's order.
fn merge_oldest_first(
    mut queues: Vec<(ServiceId, VecDeque<GroupRecord>)>,
    mut emit: impl FnMut(ServiceId, GroupRecord),
) {
    while let Some(best) = queues
        .iter()
        .enumerate()
        .filter_map(|(j, (_, q))| q.front().map(|r| (r.record.record.timestamp_ms, j)))
        .min()
        .map(|(_, j)| j)
    {
        let (id, q) = &mut queues[best];
        if let Some(r) = q.pop_front() {
            emit(*id, r);
        }
    }
}

impl Shared {
    /// Scheduler mode from the configuration.
    pub fn ingest_mode(&self) -> Mode {
        crate::ingest::scheduler_mode(&self.config)
    }
}
