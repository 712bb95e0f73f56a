//! Fetch and ListOffsets. Reads see durable records only (below the
//! flushed watermark, which is the high watermark clients are told).
//!
//! A Fetch reads every asked partition (at most its `partition_max_bytes`),
//! then fills the request's `max_bytes` budget in priority order with the
//! same weighted scheduler as every other delivery path: express services
//! first (within `scheduler.express_max_share`), then by weight, cost in
//! bytes; each partition returns the prefix of its records that won a
//! place. With less than `min_bytes` to return it waits, up to
//! `max_wait_ms`, on the topics' append notification (the one HTTP
//! long-polls use), never by polling.

use super::auth::Access;
use super::records::encode_fetched;
use super::{Broker, KafkaStats};
use crate::delivery::MAX_FETCH_BYTES;
use crate::topics::Topic;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::*;
use kafka_protocol::ResponseError;
use sluice_store::scheduler::Scheduler;
use sluice_store::{Offset, PartitionId, StoredRecord};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Longest long-poll a Fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Records read per partition per Fetch, at most.
const MAX_RECORDS: usize = 100_000;

/// One partition of the request and what was read for it.
struct Slot {
    partition: i32,
    error: i16,
    high_watermark: i64,
    log_start: i64,
    /// Records that may be returned, in offset order.
    read: Vec<StoredRecord>,
    /// How many of `read` won a place in the budget.
    taken: usize,
}

pub(super) async fn fetch(
    broker: &Arc<Broker>,
    req: FetchRequest,
    version: i16,
    access: &Access,
) -> anyhow::Result<FetchResponse> {
    let shared = &broker.shared;
    let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0).max(1);
    loop {
        let rx = shared.topics.subscribe_any();
        let (topics, bytes, errors) = read_once(broker, &req, access)?;
        if bytes >= min_bytes || errors || !wait_for(broker, rx, deadline).await {
            observe_delivery(broker, &topics);
            return respond(topics, version);
        }
    }
}

/// The records a fetch hands out, in the delivery-age histogram (path
/// `kafka`).
fn observe_delivery(broker: &Broker, topics: &TopicSlots) {
    for (name, slots) in topics {
        let Some(t) = broker.shared.topics.get(&name.0) else { continue };
        for s in slots {
            crate::histograms::delivered(
                &t.service,
                "kafka",
                s.read.iter().take(s.taken).map(|r| r.record.timestamp_ms),
            );
        }
    }
}

/// Waits until some topic grows (true), or the deadline or shutdown.
async fn wait_for(
    broker: &Broker,
    mut rx: tokio::sync::watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> bool {
    let mut shutdown = broker.shared.shutdown.clone();
    if tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
        return false;
    }
    tokio::select! {
        r = rx.changed() => r.is_ok(),
        _ = tokio::time::sleep_until(deadline) => false,
        _ = shutdown.changed() => false,
    }
}

type TopicSlots = Vec<(TopicName, Vec<Slot>)>;

/// Reads every asked partition and picks what fits the budget by priority;
/// returns the slots, the bytes picked, and whether a partition had an
/// error (answered at once).
fn read_once(
    broker: &Broker,
    req: &FetchRequest,
    access: &Access,
) -> anyhow::Result<(TopicSlots, usize, bool)> {
    let shared = &broker.shared;
    let services = &shared.services;
    let now = crate::now_ms();
    let mut out: TopicSlots = Vec::with_capacity(req.topics.len());
    let mut errors = false;
    // Scheduler items: (topic index, slot index, record size).
    let mut sched: Scheduler<(usize, usize, usize)> =
        Scheduler::new(shared.ingest_mode(), shared.config.scheduler.express_max_share);
    for s in services.iter() {
        sched.add_service(s.class());
    }
    for (ti, ft) in req.topics.iter().enumerate() {
        let allowed = access.may_consume(&ft.topic.0);
        if !allowed {
            KafkaStats::count(&broker.stats.not_authorized);
        }
        let topic = shared.topics.get(&ft.topic.0).filter(|_| allowed);
        let mut slots = Vec::with_capacity(ft.partitions.len());
        for fp in &ft.partitions {
            let slot = match &topic {
                _ if !allowed => error_slot(fp.partition, ResponseError::TopicAuthorizationFailed.code()),
                Some(t) => read_partition(broker, t, fp)?,
                None => error_slot(fp.partition, ResponseError::UnknownTopicOrPartition.code()),
            };
            errors |= slot.error != 0;
            slots.push(slot);
        }
        if let Some(t) = &topic {
            let service = services.resolve(&t.service);
            let cutoff = service.ttl.map(|ttl| sluice_store::older_than_cutoff(now, ttl));
            for (si, slot) in slots.iter_mut().enumerate() {
                if let Some(c) = cutoff {
                    let before = slot.read.len();
                    slot.read.retain(|r| r.record.timestamp_ms >= c);
                    let expired = (before - slot.read.len()) as u64;
                    service.counters.ttl_expired.fetch_add(expired, Ordering::Relaxed);
                }
                for r in &slot.read {
                    let size = r.record.encoded_len();
                    sched.push(service.id, size as u64, (ti, si, size));
                }
            }
        }
        out.push((ft.topic.clone(), slots));
    }
    let budget = usize::try_from(req.max_bytes).unwrap_or(0);
    let mut picked = 0usize;
    while let Some((_, (ti, si, size))) = sched.pop() {
        if picked > 0 && picked + size > budget {
            break;
        }
        picked += size;
        out[ti].1[si].taken += 1;
    }
    Ok((out, picked, errors))
}

fn error_slot(partition: i32, error: i16) -> Slot {
    Slot { partition, error, high_watermark: -1, log_start: -1, read: Vec::new(), taken: 0 }
}

fn read_partition(
    broker: &Broker,
    topic: &Arc<Topic>,
    fp: &kafka_protocol::messages::fetch_request::FetchPartition,
) -> anyhow::Result<Slot> {
    if fp.partition < 0 || fp.partition as u32 >= topic.partitions {
        return Ok(error_slot(fp.partition, ResponseError::UnknownTopicOrPartition.code()));
    }
    let store = &broker.shared.store;
    let partition = PartitionId(fp.partition as u32);
    let max_bytes = usize::try_from(fp.partition_max_bytes).unwrap_or(0).clamp(1, MAX_FETCH_BYTES);
    let from = u64::try_from(fp.fetch_offset).unwrap_or(u64::MAX);
    let res = store.read(&topic.name, partition, Offset(from), MAX_RECORDS, max_bytes)?;
    let (_, end) = store.watermarks(&topic.name, partition)?;
    let mut slot = Slot {
        partition: fp.partition,
        error: 0,
        high_watermark: res.high_watermark.0 as i64,
        log_start: res.log_start.0 as i64,
        read: Vec::new(),
        taken: 0,
    };
    // Past the durable end but within what was appended: nothing yet.
    if from < res.log_start.0 || from > end.0 {
        slot.error = ResponseError::OffsetOutOfRange.code();
    } else {
        slot.read = res.records;
    }
    Ok(slot)
}

fn respond(topics: TopicSlots, version: i16) -> anyhow::Result<FetchResponse> {
    let mut responses = Vec::with_capacity(topics.len());
    for (name, slots) in topics {
        let mut partitions = Vec::with_capacity(slots.len());
        for slot in slots {
            let records = encode_fetched(&slot.read[..slot.taken])?;
            let mut p = PartitionData::default()
                .with_partition_index(slot.partition)
                .with_error_code(slot.error)
                .with_high_watermark(slot.high_watermark)
                .with_records(Some(records));
            if version >= 4 {
                p.last_stable_offset = slot.high_watermark;
                p.aborted_transactions = Some(Vec::new());
            }
            if version >= 5 {
                p.log_start_offset = slot.log_start;
            }
            partitions.push(p);
        }
        responses.push(FetchableTopicResponse::default().with_topic(name).with_partitions(partitions));
    }
    Ok(FetchResponse::default().with_responses(responses))
}

/// ListOffsets: earliest (-2), latest (-1, the durable end) and by
/// timestamp (the first record at or after it, found by a scan).
pub(super) fn list_offsets(
    broker: &Broker,
    req: ListOffsetsRequest,
    access: &Access,
) -> anyhow::Result<ListOffsetsResponse> {
    let shared = &broker.shared;
    let mut topics = Vec::with_capacity(req.topics.len());
    for lt in req.topics {
        let allowed = access.may_consume(&lt.name.0);
        if !allowed {
            KafkaStats::count(&broker.stats.not_authorized);
        }
        let topic = shared.topics.get(&lt.name.0);
        let mut partitions = Vec::with_capacity(lt.partitions.len());
        for lp in lt.partitions {
            let mut out = ListOffsetsPartitionResponse::default().with_partition_index(lp.partition_index);
            let found = match &topic {
                _ if !allowed => Err(ResponseError::TopicAuthorizationFailed.code()),
                Some(t) if lp.partition_index >= 0 && (lp.partition_index as u32) < t.partitions => {
                    offset_for(broker, t, PartitionId(lp.partition_index as u32), lp.timestamp)?
                }
                _ => Err(ResponseError::UnknownTopicOrPartition.code()),
            };
            match found {
                Ok((timestamp, offset)) => {
                    out.timestamp = timestamp;
                    out.offset = offset;
                }
                Err(code) => out.error_code = code,
            }
            partitions.push(out);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(lt.name).with_partitions(partitions));
    }
    Ok(ListOffsetsResponse::default().with_topics(topics))
}

/// (timestamp, offset) for a ListOffsets query, or an error code.
fn offset_for(
    broker: &Broker,
    topic: &Topic,
    partition: PartitionId,
    timestamp: i64,
) -> anyhow::Result<Result<(i64, i64), i16>> {
    let store = &broker.shared.store;
    let info = store
        .topic(&topic.name)
        .and_then(|t| t.partitions.into_iter().find(|p| p.partition == partition))
        .ok_or_else(|| anyhow::anyhow!("topic {:?} partition {} vanished", topic.name, partition.0))?;
    Ok(match timestamp {
        -1 => Ok((-1, info.flushed.0 as i64)),
        -2 => Ok((-1, info.log_start.0 as i64)),
        ts if ts >= 0 => {
            let mut from = info.log_start;
            loop {
                let res = store.read(&topic.name, partition, from, MAX_RECORDS, MAX_FETCH_BYTES)?;
                if let Some(r) = res.records.iter().find(|r| r.record.timestamp_ms >= ts) {
                    break Ok((r.record.timestamp_ms, r.offset.0 as i64));
                }
                match res.records.last() {
                    Some(last) => from = last.offset.next(),
                    None => break Ok((-1, -1)),
                }
            }
        }
        _ => Err(ResponseError::UnsupportedVersion.code()),
    })
}
