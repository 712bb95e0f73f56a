//! Reading for consumers: partition fetch and consumer-group fetch, with
//! long-poll. A group fetch orders records across its topics with the same
//! weighted scheduler that orders ingest, and skips records older than their
//! service's TTL (counted, and committed past when they lead a partition).
//!
//! The ordering itself ([`group_fetch_from`]) reads from explicit
//! [`Positions`], so a push stream can keep its own cursor in memory while
//! the request/response fetch ([`fetch_group`]) reads from the committed
//! offsets every time.

use crate::state::Shared;
use crate::topics::Topic;
use sluice_store::scheduler::{Mode, Scheduler, ServiceId, Turns};
use sluice_store::{Offset, PartitionId, ReadResult, StoreError, StoredRecord};
use std::collections::{HashMap, VecDeque};
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

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition in it.
    pub partition: PartitionId,
}

/// The next offset to read per (topic, partition) of a group read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Positions {
    next: HashMap<TopicPartition, Offset>,
}

impl Positions {
    /// The group's committed positions for every partition of `topics`;
    /// offset 0 (read as the log start) where it never committed.
    pub fn committed(shared: &Shared, group: &str, topics: &[Arc<Topic>]) -> Result<Positions, StoreError> {
        let mut next = HashMap::new();
        for topic in topics {
            for p in 0..topic.partitions {
                let partition = PartitionId(p);
                let pos = shared.store.committed(group, &topic.name, partition)?.unwrap_or(Offset(0));
                next.insert(TopicPartition { topic: topic.name.clone(), partition }, pos);
            }
        }
        Ok(Positions { next })
    }

    /// Where reading `partition` of `topic` continues (0 when unknown).
    pub fn get(&self, topic: &Arc<str>, partition: PartitionId) -> Offset {
        let key = TopicPartition { topic: topic.clone(), partition };
        self.next.get(&key).copied().unwrap_or(Offset(0))
    }

    /// Moves a position forward to `next`; never moves it back.
    pub fn advance(&mut self, topic: &Arc<str>, partition: PartitionId, next: Offset) {
        let pos = self.next.entry(TopicPartition { topic: topic.clone(), partition }).or_insert(next);
        *pos = (*pos).max(next);
    }
}

/// Where a group stands in the weighted rounds between two reads. Every
/// read rebuilds its scheduler from the log; resuming these turns makes
/// consecutive pages continue one deficit round robin, so a small page
/// does not hand every turn to the first service. In memory only: after a
/// restart the rounds begin again.
#[derive(Debug, Default, Clone)]
pub struct Rounds {
    /// Factor applied to record sizes, fixed by the group's first read so
    /// saved deficits keep their meaning.
    scale: u64,
    /// Where the last read left the rounds.
    turns: Option<Turns>,
    /// Request/response fetches only: the positions the last fetch read
    /// from and the rounds before it, so a fetch repeated without a commit
    /// (a retry) gets the same page again.
    last: Option<(Positions, Option<Turns>)>,
}

impl Rounds {
    /// Before a fetch from the committed `positions`: a repeat of the last
    /// fetch starts where that one started.
    fn before_fetch(&mut self, positions: &Positions) {
        match &self.last {
            Some((from, before)) if from == positions => self.turns = before.clone(),
            _ => self.last = Some((positions.clone(), self.turns.clone())),
        }
    }
}

/// Groups whose rounds are remembered between request/response fetches;
/// past this many the memory starts over (group names come from clients).
const MAX_REMEMBERED_GROUPS: usize = 4096;

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
        let positions = Positions::committed(shared, group, topics)?;
        let mut rounds = shared.group_rounds(group);
        rounds.before_fetch(&positions);
        let read = read_ordered(shared, topics, &positions, max_records, &mut rounds)?;
        shared.keep_group_rounds(group, rounds);
        for (topic, partition, next) in &read.expired_until {
            // Expired records are never delivered: move the group past them
            // so they are counted once, not on every fetch.
            shared.store.commit(group, topic, *partition, *next)?;
        }
        if !read.records.is_empty() || !wait_for(shared, rx, deadline).await {
            return Ok(read.records);
        }
    }
}

/// Records across `topics` from `positions`, in priority order, at most
/// `max_records`; `positions` move past what is returned and past skipped
/// TTL-expired records, so calling again continues without resending, and
/// `rounds` continue the weighted rounds.
/// Nothing is committed: durable progress is the caller's business.
pub fn group_fetch_from(
    shared: &Shared,
    topics: &[Arc<Topic>],
    positions: &mut Positions,
    rounds: &mut Rounds,
    max_records: usize,
) -> Result<Vec<GroupRecord>, StoreError> {
    let read = read_ordered(shared, topics, positions, max_records, rounds)?;
    for (topic, partition, next) in &read.expired_until {
        positions.advance(topic, *partition, *next);
    }
    for r in &read.records {
        positions.advance(&r.topic.name, r.partition, r.record.offset.next());
    }
    Ok(read.records)
}

/// What one ordered read found.
struct OrderedRead {
    /// Records in delivery order.
    records: Vec<GroupRecord>,
    /// Partitions whose first records read were TTL-expired, and the offset
    /// after those.
    expired_until: Vec<(Arc<str>, PartitionId, Offset)>,
}

/// The ordering logic shared by every group read: per partition from
/// `positions`, TTL-expired records skipped (counted), then weighted
/// scheduling across services continuing `rounds` (or one merge by time
/// in FIFO mode).
fn read_ordered(
    shared: &Shared,
    topics: &[Arc<Topic>],
    positions: &Positions,
    max_records: usize,
    rounds: &mut Rounds,
) -> Result<OrderedRead, StoreError> {
    let services = &shared.services;
    let now = crate::now_ms();
    let mut expired_until = Vec::new();
    // Per service: one queue per partition, merged below by timestamp.
    let mut per_service: Vec<Vec<VecDeque<GroupRecord>>> = services.iter().map(|_| Vec::new()).collect();
    for topic in topics {
        let service = services.resolve(&topic.service);
        let cutoff = service.ttl.map(|ttl| sluice_store::older_than_cutoff(now, ttl));
        for p in 0..topic.partitions {
            let partition = PartitionId(p);
            let pos = positions.get(&topic.name, partition);
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
                expired_until.push((topic.name.clone(), partition, next));
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
    // A page holds few records, and a scheduler serves a whole quantum
    // (4 KiB x weight) per turn: with small records one service would fill
    // many pages alone before the next one's turn. Scaling every cost by
    // the same factor keeps the byte proportions and makes one turn of
    // weight 1 about one large record. The factor is fixed by the group's
    // first read so the deficits carried between reads stay comparable.
    if rounds.scale == 0 {
        let largest = per_service
            .iter()
            .flatten()
            .flat_map(|q| q.iter())
            .map(|r| r.record.record.encoded_len() as u64)
            .max();
        let Some(largest) = largest else {
            return Ok(OrderedRead { records: Vec::new(), expired_until });
        };
        rounds.scale = (sluice_store::scheduler::BASE_QUANTUM / largest.max(1)).max(1);
    }
    let scale = rounds.scale;
    let cost = |r: &GroupRecord| r.record.record.encoded_len() as u64 * scale;
    if shared.ingest_mode() == Mode::Fifo {
        // First in, first out across everything: one merge by timestamp.
        let all: Vec<(ServiceId, VecDeque<GroupRecord>)> = ids
            .iter()
            .zip(per_service)
            .flat_map(|(&id, parts)| parts.into_iter().map(move |q| (id, q)))
            .collect();
        merge_oldest_first(all, |id, r| sched.push(id, cost(&r), r));
    } else {
        for (&id, parts) in ids.iter().zip(per_service) {
            let parts = parts.into_iter().map(|q| (id, q)).collect();
            merge_oldest_first(parts, |id, r| sched.push(id, cost(&r), r));
        }
    }
    if let Some(turns) = &rounds.turns {
        sched.resume(turns);
    }
    let mut records = Vec::with_capacity(max_records.min(sched.total_items()));
    while records.len() < max_records {
        match sched.pop() {
            Some((_, r)) => records.push(r),
            None => break,
        }
    }
    rounds.turns = Some(sched.turns());
    Ok(OrderedRead { records, expired_until })
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

    /// The weighted rounds `group` stopped at in its last fetch.
    fn group_rounds(&self, group: &str) -> Rounds {
        let rounds = self.group_rounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rounds.get(group).cloned().unwrap_or_default()
    }

    /// Remembers where `group` stopped, for its next fetch.
    fn keep_group_rounds(&self, group: &str, kept: Rounds) {
        let mut rounds = self.group_rounds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if rounds.len() >= MAX_REMEMBERED_GROUPS && !rounds.contains_key(group) {
            rounds.clear();
        }
        rounds.insert(group.to_owned(), kept);
    }

    /// Announces that some group committed offsets (push streams waiting for
    /// their consumer's commit wake up instead of polling the store).
    pub fn notify_committed(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever some group commits offsets. A
    /// wake-up for another group only costs a re-check of committed offsets.
    pub fn subscribe_commits(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }
}

/// Where a consumer group stands in one partition.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupLag {
    /// The group.
    pub group: String,
    /// Topic and partition.
    pub topic: String,
    /// Partition.
    pub partition: PartitionId,
    /// Committed position (next offset to read).
    pub committed: u64,
    /// The durable end: what the group can read up to.
    pub durable: Option<u64>,
    /// Records between the two.
    pub lag_records: Option<u64>,
    /// Age of the oldest record the group has not committed (0 when it
    /// is caught up).
    pub lag_seconds: f64,
}

/// Every committed consumer-group position with its lag in records and in
/// seconds (the age of the first record after the committed position).
pub fn group_lags(store: &sluice_store::Store) -> Result<Vec<GroupLag>, sluice_store::StoreError> {
    let topics = store.topics();
    let now = sluice_store::now_ms();
    let positions = store.group_positions()?;
    Ok(positions
        .into_iter()
        .map(|(group, topic, partition, committed)| {
            let durable = topics
                .iter()
                .find(|t| t.spec.name == topic)
                .and_then(|t| t.partitions.iter().find(|p| p.partition == partition))
                .map(|p| p.flushed.0);
            let lag_records = durable.map(|d| d.saturating_sub(committed.0));
            let lag_seconds = if lag_records.unwrap_or(0) > 0 {
                store
                    .read(&topic, partition, committed, 1, 1)
                    .ok()
                    .and_then(|r| r.records.first().map(|r| r.record.timestamp_ms))
                    .map_or(0.0, |ts| now.saturating_sub(ts).max(0) as f64 / 1000.0)
            } else {
                0.0
            };
            GroupLag { group, topic, partition, committed: committed.0, durable, lag_records, lag_seconds }
        })
        .collect())
}
