//! From the publishes of one read of a connection to ingest jobs.
//!
//! The front ([`super::front`]) hands every PUBLISH of one read to a
//! [`Gather`]: each is routed to its log topic and grouped with the others
//! of the same topic and QoS class, so a burst costs one queue operation
//! per topic instead of one per message. [`Intake::submit`] then queues
//! the groups through the same per-service queues and scheduler as HTTP:
//!
//! - acknowledged publishes (QoS 1 and 2) wait for room: when the
//!   service's queue is full or its rate limit says wait, the connection is
//!   not read until there is room (TCP backpressure on that connection
//!   only; its other topics wait with it). Each such group carries a reply
//!   that the front turns into PUBACKs once the records are appended (and
//!   durable, for `sync` services).
//! - QoS 0 publishes follow the service's `on_full` policy and are dropped
//!   over the rate limit, counted.

use super::route::{Drop, Router};
use super::MqttStats;
use crate::ingest::{Appended, IngestError, Job, Rejected};
use crate::state::Shared;
use crate::topics::TopicError;
use sluice_config::{Durability, OnFull};
use sluice_store::scheduler::ServiceId;
use sluice_store::Record;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Longest pause between two tries to queue acknowledged publishes into a
/// full service queue.
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// Publishes of one read, grouped per (log topic, acknowledged).
#[derive(Debug, Default)]
pub(super) struct Gather {
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    topic: String,
    acked: bool,
    records: Vec<Record>,
    bytes: u64,
}

impl Gather {
    /// Encoded bytes gathered so far.
    pub(super) fn bytes(&self) -> u64 {
        self.groups.iter().map(|g| g.bytes).sum()
    }

    /// Whether nothing was gathered.
    pub(super) fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// A queued group, on its way to the log.
#[derive(Debug)]
pub(super) struct Pending {
    /// Answers once the writer appended the group.
    pub(super) appended: oneshot::Receiver<Result<Appended, IngestError>>,
    /// The service the records belong to (its counters).
    pub(super) service: ServiceId,
    /// Records in the group.
    pub(super) records: u64,
    /// Whether the group holds acknowledged publishes.
    pub(super) acked: bool,
}

impl Pending {
    /// Waits until the group is appended, and durable when it was queued
    /// as `sync`.
    pub(super) async fn stored(&mut self) -> Result<(), NotStored> {
        let appended =
            (&mut self.appended).await.map_err(|_| NotStored::Evicted)?.map_err(NotStored::Failed)?;
        if let Some(durable) = appended.durable {
            durable
                .await
                .map_err(|_| NotStored::Failed(IngestError::ShuttingDown))?
                .map_err(NotStored::Failed)?;
        }
        Ok(())
    }
}

/// Why a group was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// Its log topic is unknown while auto-creation is off.
    InvalidTopic,
    /// The store could not create its log topic (disk full, I/O error):
    /// not a property of the publish, so 3.1.1 connections are closed.
    StoreFailed,
    /// sluice is shutting down.
    ShuttingDown,
    /// QoS 0 publishes dropped by the `on_full` policy or the rate limit.
    Policy,
}

/// Why a queued group did not reach the log.
#[derive(Debug)]
pub(super) enum NotStored {
    /// Taken out of the full queue by another publish's `drop_oldest`.
    Evicted,
    /// The store failed, or sluice was shutting down.
    Failed(IngestError),
}

/// Routing and queueing of MQTT publishes, shared by every connection.
#[derive(Debug)]
pub(super) struct Intake {
    shared: Shared,
    stats: Arc<MqttStats>,
    router: Router,
}

impl Intake {
    pub(super) fn new(shared: Shared, stats: Arc<MqttStats>) -> Intake {
        let router = Router::new(&shared.config);
        Intake { shared, stats, router }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(super) fn stats(&self) -> &Arc<MqttStats> {
        &self.stats
    }

    /// The service whose priority a publish to `mqtt_topic` gets on its way
    /// to live subscribers: the owner of the log topic it routes to, or
    /// the default service (unrouted topics, topics not created yet).
    pub(super) fn service_for(&self, mqtt_topic: &[u8]) -> ServiceId {
        let services = &self.shared.services;
        std::str::from_utf8(mqtt_topic)
            .ok()
            .and_then(|t| self.router.log_topic(t))
            .and_then(|name| self.shared.topics.get(name))
            .map_or(services.default_service().id, |topic| services.resolve(&topic.service).id)
    }

    /// The routing table.
    pub(super) fn router(&self) -> &Router {
        &self.router
    }

    /// Whether publishes to `mqtt_topic` are stored in the log (a
    /// persistent session gets them from there).
    pub(super) fn stored(&self, mqtt_topic: &[u8]) -> bool {
        std::str::from_utf8(mqtt_topic).ok().and_then(|t| self.router.log_topic(t)).is_some_and(|name| {
            sluice_config::check_topic_name(name).is_ok()
                && (self.shared.config.store.auto_create_topics || self.shared.topics.get(name).is_some())
        })
    }

    /// Routes one publish of QoS `qos` into `gather`; returns the index of
    /// its group, or why it is not stored (counted here). QoS 1 and 2
    /// publishes are acknowledged once stored, and their record carries an
    /// `mqtt.qos` header (a persistent session gets them at that QoS).
    pub(super) fn add(
        &self,
        gather: &mut Gather,
        topic: &[u8],
        payload: &[u8],
        qos: u8,
    ) -> Result<usize, Drop> {
        let acked = qos > 0;
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Ok(mqtt_topic) = std::str::from_utf8(topic) else {
            self.stats.dropped_invalid_topic.fetch_add(1, Ordering::Relaxed);
            return Err(Drop::InvalidTopic);
        };
        let dest = self.router.route(mqtt_topic, payload).inspect_err(|why| {
            let counter = match why {
                Drop::Unrouted => &self.stats.dropped_unrouted,
                Drop::InvalidTopic => &self.stats.dropped_invalid_topic,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        })?;
        if dest.key_missing {
            self.stats.key_missing.fetch_add(1, Ordering::Relaxed);
        }
        let record = Record {
            key: dest.key,
            value: payload.to_vec(),
            headers: if acked {
                vec![
                    ("mqtt.topic".to_owned(), topic.to_vec()),
                    ("mqtt.qos".to_owned(), vec![b'0' + qos.min(2)]),
                ]
            } else {
                vec![("mqtt.topic".to_owned(), topic.to_vec())]
            },
            timestamp_ms: crate::now_ms(),
        };
        let size = record.encoded_len() as u64;
        let at = match gather.groups.iter().position(|g| g.acked == acked && g.topic == dest.topic) {
            Some(at) => at,
            None => {
                gather.groups.push(Group { topic: dest.topic, acked, records: Vec::new(), bytes: 0 });
                gather.groups.len() - 1
            }
        };
        let group = &mut gather.groups[at];
        group.records.push(record);
        group.bytes += size;
        Ok(at)
    }

    /// Queues every group of `gather`; the result has one entry per group
    /// (by index), or why the group was not queued (counted).
    pub(super) async fn submit(&self, gather: Gather) -> Vec<Result<Pending, Refused>> {
        let mut out = Vec::with_capacity(gather.groups.len());
        for group in gather.groups {
            out.push(self.submit_group(group).await);
        }
        out
    }

    async fn submit_group(&self, group: Group) -> Result<Pending, Refused> {
        let shared = &self.shared;
        let count = group.records.len() as u64;
        let topic = match shared.topics.get_or_create(&group.topic, &shared.store, &shared.services) {
            Ok(t) => t,
            Err(TopicError::Store(e)) => {
                tracing::error!(topic = group.topic, error = %e, "cannot create topic for MQTT publishes");
                self.stats.dropped_invalid_topic.fetch_add(count, Ordering::Relaxed);
                return Err(Refused::StoreFailed);
            }
            Err(e) => {
                tracing::debug!(topic = group.topic, error = %e, "MQTT publishes dropped");
                self.stats.dropped_invalid_topic.fetch_add(count, Ordering::Relaxed);
                return Err(Refused::InvalidTopic);
            }
        };
        let service = shared.services.resolve(&topic.service);
        service.counters.mqtt_in.fetch_add(count, Ordering::Relaxed);
        let mut records = group.records;
        if let Some(rate) = &service.rate {
            if group.acked {
                // Backpressure: wait until each record passes (one at a
                // time, so a group larger than the burst passes too).
                for r in &records {
                    while let Err(wait) = rate.try_take(Instant::now(), 1, r.encoded_len() as u64) {
                        tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
                    }
                }
            } else {
                let now = Instant::now();
                let admitted = records
                    .iter()
                    .take_while(|r| rate.try_take(now, 1, r.encoded_len() as u64).is_ok())
                    .count();
                let dropped = (records.len() - admitted) as u64;
                if dropped > 0 {
                    service.counters.mqtt_dropped_rate.fetch_add(dropped, Ordering::Relaxed);
                    records.truncate(admitted);
                }
            }
        }
        if records.is_empty() {
            return Err(Refused::Policy);
        }
        let count = records.len() as u64;
        let sync = group.acked && service.durability == Durability::Sync;
        let (tx, rx) = oneshot::channel();
        let mut job = Job::new(topic.clone(), service.id, records, sync, Some(tx));
        let mut backoff = Duration::from_millis(1);
        loop {
            match shared.ingest.submit(job) {
                Ok(()) => {
                    return Ok(Pending {
                        appended: rx,
                        service: service.id,
                        records: count,
                        acked: group.acked,
                    })
                }
                Err((Rejected::ShuttingDown, _)) => {
                    self.stats.dropped_shutting_down.fetch_add(count, Ordering::Relaxed);
                    return Err(Refused::ShuttingDown);
                }
                Err((Rejected::Full { .. }, back)) if group.acked => {
                    // Not read further until there is room.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    job = back;
                }
                Err((Rejected::Full { .. }, back)) => match service.on_full {
                    OnFull::DropNewest => {
                        service.counters.mqtt_dropped_full.fetch_add(count, Ordering::Relaxed);
                        return Err(Refused::Policy);
                    }
                    // The dropped job's own waiter counts it (NotStored::Evicted).
                    OnFull::DropOldest => match shared.ingest.drop_oldest(service.id) {
                        Some(_) => job = back,
                        // Nothing queued to drop: the queue holds only
                        // in-flight work; this burst cannot fit.
                        None => {
                            service.counters.mqtt_dropped_full.fetch_add(count, Ordering::Relaxed);
                            return Err(Refused::Policy);
                        }
                    },
                },
            }
        }
    }
}
