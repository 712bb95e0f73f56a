//! The loop that reads publishes from the embedded broker's local link and
//! queues them for persisting.
//!
//! Publishes that arrive together are grouped per log topic into one job
//! (up to [`MAX_JOB_BYTES`]), so a burst costs one queue operation and one
//! sled batch per topic instead of one per message.

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

pub(super) struct IngestLoop {
    shared: Shared,
    stats: Arc<MqttStats>,
    link: LinkRx,
    stop: Arc<AtomicBool>,
    router: Router,
    /// Records gathered from the current burst, per log topic.
    pending: Vec<(String, Vec<Record>, u64)>,
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
            // Block briefly for the first notification of a burst, then take
            // what is already there without waiting.
            let wait = if stopping { Duration::from_millis(50) } else { Duration::from_millis(100) };
            let mut got = 0usize;
            let mut deadline = Instant::now() + wait;
            loop {
                match self.link.recv_deadline(deadline) {
                    Ok(Some(n)) => {
                        got += 1;
                        self.notification(n);
                        deadline = Instant::now();
                    }
                    Ok(None) => deadline = Instant::now(),
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
        let at = match self.pending.iter().position(|(t, _, _)| *t == dest.topic) {
            Some(at) => at,
            None => {
                self.pending.push((dest.topic, Vec::new(), 0));
                self.pending.len() - 1
            }
        };
        let entry = &mut self.pending[at];
        entry.1.push(record);
        entry.2 += size;
        if entry.2 >= MAX_JOB_BYTES {
            let (topic, records, _) = self.pending.swap_remove(at);
            self.submit(&topic, records);
        }
    }

    fn flush_pending(&mut self) {
        for (topic, records, _) in std::mem::take(&mut self.pending) {
            self.submit(&topic, records);
        }
    }

    fn submit(&self, topic: &str, mut records: Vec<Record>) {
        let shared = &self.shared;
        let mut count = records.len() as u64;
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
        if let Some(rate) = &service.rate {
            // MQTT has no backpressure here: what is over the limit is
            // dropped and counted.
            let now = Instant::now();
            let admitted =
                records.iter().take_while(|r| rate.try_take(now, 1, r.encoded_len() as u64).is_ok()).count();
            let dropped = (records.len() - admitted) as u64;
            if dropped > 0 {
                service.counters.mqtt_dropped_rate.fetch_add(dropped, Ordering::Relaxed);
                records.truncate(admitted);
                count -= dropped;
                if records.is_empty() {
                    return;
                }
            }
        }
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
