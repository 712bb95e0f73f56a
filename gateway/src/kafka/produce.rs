//! Produce: each topic's records become one ingest job of its service, so
//! priority, the pending and rate limits and the durability of the service
//! apply exactly as to an HTTP produce. The client chose the partitions.
//!
//! - acks=0: queued, no answer.
//! - acks=1: answered once appended (as HTTP answers a buffered service).
//! - acks=all: answered once durable per the service's durability (after
//!   the group commit for `sync`, after the append for `buffered`).
//!
//! Batches of idempotent producers go through [`super::idempotence`]
//! first: a retry is answered with its original offset, not appended.
//!
//! A service over its rate or pending limit is throttled as Kafka quotas
//! do it: this connection stops being read for the wait (the producer
//! feels it even when it ignores `throttle_time_ms`), other connections
//! are not delayed. A request that cannot be queued within its
//! `timeout_ms` is answered REQUEST_TIMED_OUT (retriable).

use super::auth::Access;
use super::idempotence::{BaseOffset, Decision};
use super::records::decode_produced;
use super::versions::{frame, Reply};
use super::{Broker, KafkaStats};
use crate::ingest::{Appended, IngestError, Job, PartBatch, Rejected};
use crate::topics::TopicError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId, TopicName,
};
use kafka_protocol::ResponseError;
use sluice_config::Durability;
use sluice_store::PartitionId;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest pause between two tries to queue into a full service queue.
const FULL_BACKOFF_MAX: Duration = Duration::from_millis(50);

/// What one topic of the request turned into.
struct TopicOutcome {
    name: TopicName,
    /// (partition, error) of partitions refused before queueing.
    refused: Vec<(i32, i16)>,
    /// (partition, index of its first record in the job) of queued ones.
    queued: Vec<(i32, usize)>,
    reply: Option<oneshot::Receiver<Result<Appended, IngestError>>>,
    /// Idempotent batches queued: (partition, where to publish the base
    /// offset, producer id, first sequence).
    idem: Vec<(i32, Sender, i64, i32)>,
    /// Retries of batches already taken: (partition, their base offset).
    dups: Vec<(i32, BaseOffset)>,
}

type Sender = tokio::sync::watch::Sender<Option<Result<i64, i16>>>;

/// InitProducerId: idempotent producers only (no transactions).
pub(super) fn init_producer_id(broker: &Broker, req: InitProducerIdRequest) -> InitProducerIdResponse {
    if req.transactional_id.is_some() {
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let (id, epoch) = broker.producers().init(req.producer_id.0, req.producer_epoch);
    InitProducerIdResponse::default().with_producer_id(ProducerId(id)).with_producer_epoch(epoch)
}

pub(super) async fn produce(
    broker: &Arc<Broker>,
    req: ProduceRequest,
    corr: i32,
    version: i16,
    access: &Access,
) -> Reply {
    if req.transactional_id.is_some() {
        let outcomes = refuse_all(req, ResponseError::TransactionalIdAuthorizationFailed.code());
        return answer(broker.clone(), outcomes, 0, -1, corr, version);
    }
    let acks = req.acks;
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).max(1));
    let deadline = Instant::now() + timeout;
    let mut throttled = Duration::ZERO;
    let mut outcomes = Vec::with_capacity(req.topic_data.len());
    for td in req.topic_data {
        if !access.may_produce(&td.name.0) {
            KafkaStats::count(&broker.stats.not_authorized);
            let code = ResponseError::TopicAuthorizationFailed.code();
            let refused = td.partition_data.iter().map(|p| (p.index, code)).collect();
            outcomes.push(TopicOutcome {
                name: td.name,
                refused,
                queued: Vec::new(),
                reply: None,
                idem: Vec::new(),
                dups: Vec::new(),
            });
            continue;
        }
        outcomes.push(queue_topic(broker, td, acks, deadline, &mut throttled).await);
    }
    let throttle_ms = i32::try_from(throttled.as_millis()).unwrap_or(i32::MAX);
    if acks == 0 {
        return Box::pin(async { Ok(None) });
    }
    answer(broker.clone(), outcomes, throttle_ms, acks, corr, version)
}

fn refuse_all(req: ProduceRequest, error: i16) -> Vec<TopicOutcome> {
    req.topic_data
        .into_iter()
        .map(|td| TopicOutcome {
            name: td.name,
            refused: td.partition_data.iter().map(|p| (p.index, error)).collect(),
            queued: Vec::new(),
            reply: None,
            idem: Vec::new(),
            dups: Vec::new(),
        })
        .collect()
}

async fn queue_topic(
    broker: &Arc<Broker>,
    td: kafka_protocol::messages::produce_request::TopicProduceData,
    acks: i16,
    deadline: Instant,
    throttled: &mut Duration,
) -> TopicOutcome {
    let shared = &broker.shared;
    let mut out = TopicOutcome {
        name: td.name.clone(),
        refused: Vec::new(),
        queued: Vec::new(),
        reply: None,
        idem: Vec::new(),
        dups: Vec::new(),
    };
    let topic = match shared.topics.get_or_create(&td.name.0, &shared.store, &shared.services) {
        Ok(t) => t,
        Err(e) => {
            let code = match e {
                TopicError::InvalidName { .. } => ResponseError::InvalidTopicException.code(),
                _ => ResponseError::UnknownTopicOrPartition.code(),
            };
            out.refused = td.partition_data.iter().map(|p| (p.index, code)).collect();
            return out;
        }
    };
    let service = shared.services.resolve(&topic.service);
    let now = crate::now_ms();
    let mut parts = Vec::new();
    let mut next_index = 0;
    let mut cost = 0u64;
    for pd in td.partition_data {
        if pd.index < 0 || pd.index as u32 >= topic.partitions {
            out.refused.push((pd.index, ResponseError::UnknownTopicOrPartition.code()));
            continue;
        }
        let (produced, producer) = match pd.records.map(|data| decode_produced(data, now)).transpose() {
            Ok(p) => p.map(|p| (p.records, p.producer)).unwrap_or_default(),
            Err(e) => {
                tracing::debug!(topic = %topic.name, partition = pd.index, error = %e, "Kafka produce: bad record batch");
                out.refused.push((pd.index, ResponseError::CorruptMessage.code()));
                continue;
            }
        };
        if produced.is_empty() {
            out.refused.push((pd.index, ResponseError::InvalidRecord.code()));
            continue;
        }
        if let Some((pid, epoch, first)) = producer {
            let count = i32::try_from(produced.len()).unwrap_or(i32::MAX);
            match broker.producers().check(pid, epoch, &topic.name, pd.index as u32, first, count) {
                Decision::Append(tx) => out.idem.push((pd.index, tx, pid, first)),
                Decision::Duplicate(base) => {
                    out.dups.push((pd.index, base));
                    continue;
                }
                Decision::Refuse(code) => {
                    out.refused.push((pd.index, code));
                    continue;
                }
            }
        }
        cost += produced.iter().map(|r| r.encoded_len() as u64).sum::<u64>();
        let n = produced.len();
        out.queued.push((pd.index, next_index));
        parts.push(PartBatch {
            partition: PartitionId(pd.index as u32),
            records: produced,
            input_index: (next_index..next_index + n).collect(),
        });
        next_index += n;
    }
    if parts.is_empty() {
        return out;
    }
    let refuse_queued = |out: &mut TopicOutcome, code: i16| {
        out.refused.extend(out.queued.drain(..).map(|(p, _)| (p, code)));
        for (p, _, pid, first) in out.idem.drain(..) {
            broker.producers().failed(pid, &topic.name, p as u32, first);
        }
    };
    if cost > service.max_pending {
        refuse_queued(&mut out, ResponseError::MessageTooLarge.code());
        return out;
    }
    if let Some(rate) = &service.rate {
        loop {
            match rate.try_take(Instant::now(), next_index as u64, cost) {
                Ok(()) => break,
                Err(wait) if Instant::now() + wait <= deadline => {
                    KafkaStats::count(&broker.stats.throttled);
                    service.counters.rejected_rate.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    *throttled += wait;
                    tokio::time::sleep(wait).await;
                }
                Err(_) => {
                    refuse_queued(&mut out, ResponseError::RequestTimedOut.code());
                    return out;
                }
            }
        }
    }
    let (tx, rx) = oneshot::channel();
    let mut job = Job {
        topic: topic.clone(),
        parts,
        service: service.id,
        cost,
        // The durability of the service decides when acks=all is answered.
        sync: service.durability == Durability::Sync,
        enqueued: Instant::now(),
        reply: (acks != 0).then_some(tx),
    };
    let mut backoff = Duration::from_millis(1);
    loop {
        match shared.ingest.submit(job) {
            Ok(()) => break,
            Err((Rejected::Full { .. }, back)) if Instant::now() + backoff <= deadline => {
                KafkaStats::count(&broker.stats.throttled);
                *throttled += backoff;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(FULL_BACKOFF_MAX);
                job = back;
            }
            Err((why, _)) => {
                let code = match why {
                    Rejected::Full { .. } => ResponseError::RequestTimedOut.code(),
                    Rejected::ShuttingDown => ResponseError::BrokerNotAvailable.code(),
                };
                refuse_queued(&mut out, code);
                return out;
            }
        }
    }
    out.reply = Some(rx);
    out
}

fn answer(
    broker: Arc<Broker>,
    outcomes: Vec<TopicOutcome>,
    throttle_ms: i32,
    acks: i16,
    corr: i32,
    version: i16,
) -> Reply {
    Box::pin(async move {
        let mut responses = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            let mut parts: Vec<PartitionProduceResponse> =
                o.refused.iter().map(|&(p, code)| partition(p, code, -1, version)).collect();
            if let Some(rx) = o.reply {
                let result = match rx.await {
                    Ok(Ok(appended)) => wait_durable(appended, acks).await,
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(IngestError::ShuttingDown),
                };
                for &(p, first) in &o.queued {
                    let (code, base) = match &result {
                        Ok(offsets) => (0, offsets.get(first).map_or(-1, |&(_, o)| o.0 as i64)),
                        Err(e) => {
                            tracing::warn!(topic = %o.name.0, partition = p, error = %e, "Kafka produce failed");
                            (ResponseError::KafkaStorageError.code(), -1)
                        }
                    };
                    if let Some((_, tx, pid, seq)) = o.idem.iter().find(|i| i.0 == p) {
                        tx.send_replace(Some(if code == 0 { Ok(base) } else { Err(code) }));
                        if code != 0 {
                            broker.producers().failed(*pid, &o.name.0, p as u32, *seq);
                        }
                    }
                    parts.push(partition(p, code, base, version));
                }
            }
            for (p, mut base) in o.dups {
                let known = base.wait_for(Option::is_some).await.map(|v| *v);
                let (code, offset) = match known {
                    Ok(Some(Ok(offset))) => (0, offset),
                    Ok(Some(Err(code))) => (code, -1),
                    _ => (ResponseError::KafkaStorageError.code(), -1),
                };
                parts.push(partition(p, code, offset, version));
            }
            parts.sort_by_key(|p| p.index);
            responses.push(TopicProduceResponse::default().with_name(o.name).with_partition_responses(parts));
        }
        let mut resp = ProduceResponse::default().with_responses(responses);
        if version >= 1 {
            resp.throttle_time_ms = throttle_ms;
        }
        frame(corr, version, &resp).map(Some)
    })
}

async fn wait_durable(
    appended: Appended,
    acks: i16,
) -> Result<Vec<(PartitionId, sluice_store::Offset)>, IngestError> {
    if acks == -1 {
        if let Some(durable) = appended.durable {
            durable.await.map_err(|_| IngestError::ShuttingDown)??;
        }
    }
    Ok(appended.offsets)
}

fn partition(index: i32, error: i16, base_offset: i64, version: i16) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(error)
        .with_base_offset(base_offset);
    if version >= 2 {
        p.log_append_time_ms = -1;
    }
    p
}
