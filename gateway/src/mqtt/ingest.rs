//! The loop that reads publishes from the embedded broker's local link and
//! queues them for persisting.
//!
//! Publishes that arrive together are grouped per log topic into one job
//! (up to [`MAX_JOB_BYTES`]), so a burst costs one queue operation and one
//! sled batch per topic and partition instead of one per message. A burst
//! lasts [`LINGER`] from its first publish: every sled batch rolls sled's
//! IO buffer (a write and a wake-up of its IO threads), so many publishes
//! trickling in from many connections would otherwise cost one batch each.
//! Publishes of express services do not linger: they are queued as soon as
//! the link has nothing more to hand over at once.

use super::route::{Drop, Router};
use super::MqttStats;
use crate::ingest::{Job, Rejected};
use crate::state::Shared;
use crate::topics::TopicError;
use rumqttd::local::LinkRx;
use rumqttd::Notification;
use sluice_config::OnFull;
use sluice_store::Record;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest job built from a burst of publishes.
const MAX_JOB_BYTES: u64 = 256 << 10;

/// How long a burst gathers publishes after its first one (express
/// services excepted).
const LINGER: Duration = Duration::from_millis(2);

pub(super) struct IngestLoop {
    shared: Shared,
    stats: Arc<MqttStats>,
    link: LinkRx,
    stop: Arc<AtomicBool>,
    router: Router,
    /// Records gathered from the current burst, per log topic.
    pending: Vec<Pending>,
}

/// The records of one log topic gathered from the current burst.
struct Pending {
    topic: String,
    records: Vec<Record>,
    bytes: u64,
    /// The topic belongs to an express service: do not linger.
    express: bool,
}

impl IngestLoop {
    pub(super) fn new(
        shared: Shared,
        stats: Arc<MqttStats>,
        link: LinkRx,
        stop: Arc<AtomicBool>,
    ) -> IngestLoop {
        let router = Router::new(&shared.config);
        IngestLoop { shared, stats, link, stop, router, pending: Vec::new() }
    }

    pub(super) fn run(mut self) {
        loop {
            let stopping = self.stop.load(Ordering::Acquire);
            // Block briefly for the first notification of a burst, then
            // gather until LINGER has passed (while stopping: only what is
            // already there).
            let wait = if stopping { Duration::from_millis(50) } else { Duration::from_millis(100) };
            let mut got = 0usize;
            let mut deadline = Instant::now() + wait;
            let mut burst_end = None;
            loop {
                // Take what the link holds without waiting; before waiting
                // for more, queue what express services sent.
                let received = match self.link.recv_deadline(Instant::now()) {
                    Err(rumqttd::local::LinkError::RecvTimeout(_)) => {
                        self.flush_express();
                        self.link.recv_deadline(deadline)
                    }
                    other => other,
                };
                match received {
                    Ok(Some(n)) => {
                        got += 1;
                        self.notification(n);
                        // While stopping, drain without lingering.
                        let end = *burst_end.get_or_insert_with(|| Instant::now() + LINGER);
                        deadline = if stopping { Instant::now() } else { end };
                    }
                    Ok(None) => deadline = burst_end.unwrap_or_else(Instant::now),
                    Err(rumqttd::local::LinkError::RecvTimeout(_)) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "MQTT ingest link closed");
                        self.flush_pending();
                        return;
                    }
                }
            }
            self.flush_pending();
            // While stopping, keep draining until the broker has nothing more.
            if stopping && got == 0 {
                return;
            }
        }
    }

    fn notification(&mut self, n: Notification) {
        match n {
            Notification::Forward(forward) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                self.publish(&forward.publish.topic, forward.publish.payload.to_vec());
            }
            // The router paused the link because its buffer was full: we
            // have read it, ask for more.
            Notification::Unschedule => {
                if let Err(e) = self.link.ready() {
                    tracing::error!(error = %e, "cannot resume the MQTT ingest link");
                }
            }
            _ => {}
        }
    }

    fn publish(&mut self, topic: &[u8], payload: Vec<u8>) {
        let Ok(mqtt_topic) = std::str::from_utf8(topic) else {
            self.stats.dropped_invalid_topic.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let dest = match self.router.route(mqtt_topic, &payload) {
            Ok(d) => d,
            Err(Drop::Unrouted) => {
                self.stats.dropped_unrouted.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(Drop::InvalidTopic) => {
                self.stats.dropped_invalid_topic.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if dest.key_missing {
            self.stats.key_missing.fetch_add(1, Ordering::Relaxed);
        }
        let record = Record {
            key: dest.key,
            value: payload,
            headers: vec![("mqtt.topic".to_owned(), mqtt_topic.as_bytes().to_vec())],
            timestamp_ms: crate::now_ms(),
        };
        let size = record.encoded_len() as u64;
        let at = match self.pending.iter().position(|p| p.topic == dest.topic) {
            Some(at) => at,
            None => {
                let express = self.is_express(&dest.topic);
                self.pending.push(Pending { topic: dest.topic, records: Vec::new(), bytes: 0, express });
                self.pending.len() - 1
            }
        };
        let entry = &mut self.pending[at];
        entry.records.push(record);
        entry.bytes += size;
        if entry.bytes >= MAX_JOB_BYTES {
            let p = self.pending.swap_remove(at);
            self.submit(&p.topic, p.records);
        }
    }

    /// True when the log topic exists and belongs to an express service
    /// (a topic that does not exist yet is created under the default
    /// service when its records are submitted).
    fn is_express(&self, topic: &str) -> bool {
        let shared = &self.shared;
        shared.topics.lookup(topic).is_ok_and(|t| shared.services.resolve(&t.service).class().express)
    }

    /// Queues the records of express services gathered so far.
    fn flush_express(&mut self) {
        if !self.pending.iter().any(|p| p.express) {
            return;
        }
        let (express, rest) = std::mem::take(&mut self.pending).into_iter().partition(|p| p.express);
        self.pending = rest;
        for p in express {
            self.submit(&p.topic, p.records);
        }
    }

    fn flush_pending(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.submit(&p.topic, p.records);
        }
    }

    fn submit(&self, topic: &str, records: Vec<Record>) {
        let shared = &self.shared;
        let count = records.len() as u64;
        let topic = match shared.topics.get_or_create(topic, &shared.store, &shared.services) {
            Ok(t) => t,
            Err(TopicError::Store(e)) => {
                tracing::error!(topic, error = %e, "cannot create topic for MQTT publishes");
                self.stats.dropped_invalid_topic.fetch_add(count, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                tracing::debug!(topic, error = %e, "MQTT publishes dropped");
                self.stats.dropped_invalid_topic.fetch_add(count, Ordering::Relaxed);
                return;
            }
        };
        let service = shared.services.resolve(&topic.service);
        let mut job = Job::new(topic.clone(), service.id, records, false, None);
        loop {
            match shared.ingest.submit(job) {
                Ok(()) => {
                    service.counters.mqtt_in.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Err((Rejected::ShuttingDown, _)) => {
                    self.stats.dropped_shutting_down.fetch_add(count, Ordering::Relaxed);
                    return;
                }
                Err((Rejected::Full { .. }, back)) => match service.on_full {
                    OnFull::DropNewest => {
                        service.counters.mqtt_dropped_full.fetch_add(count, Ordering::Relaxed);
                        return;
                    }
                    OnFull::DropOldest => match shared.ingest.drop_oldest(service.id) {
                        Some(dropped) => {
                            service.counters.mqtt_dropped_full.fetch_add(dropped as u64, Ordering::Relaxed);
                            job = back;
                        }
                        // Nothing queued to drop: the queue holds only
                        // in-flight work; this burst cannot fit.
                        None => {
                            service.counters.mqtt_dropped_full.fetch_add(count, Ordering::Relaxed);
                            return;
                        }
                    },
                },
            }
        }
    }
}
