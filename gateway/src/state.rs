//! What every handler and background task shares.

use crate::ingest::Ingest;
use crate::services::Services;
use crate::topics::Topics;
use sluice_config::Config;
use sluice_store::Store;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// Shared gateway state (cheap to clone).
#[derive(Debug, Clone)]
pub struct Shared(pub Arc<Inner>);

/// The contents of [`Shared`].
#[derive(Debug)]
pub struct Inner {
    /// The validated configuration.
    pub config: Config,
    /// The log.
    pub store: Store,
    /// Services by name and id.
    pub services: Arc<Services>,
    /// Topics at run time.
    pub topics: Topics,
    /// The ingest pipeline.
    pub ingest: Arc<Ingest>,
    /// Turns true when shutdown starts (long-polls return early).
    pub shutdown: watch::Receiver<bool>,
    /// True once listeners are up, false again while draining.
    pub ready: AtomicBool,
    /// Process start, for uptime.
    pub started: Instant,
    /// MQTT ingest counters.
    pub mqtt: Arc<crate::mqtt::MqttStats>,
    /// Connection counters of the HTTP listener.
    pub http_connections: Arc<crate::listener::ListenerStats>,
    /// Counters of the Kafka listener.
    #[cfg(feature = "kafka-listener")]
    pub kafka: Arc<crate::kafka::KafkaStats>,
    /// Bumped after every consumer-group commit.
    pub commits: watch::Sender<u64>,
    /// Where each consumer group stopped in the weighted rounds.
    pub group_rounds: std::sync::Mutex<std::collections::HashMap<String, crate::delivery::Rounds>>,
    /// Status of each running uplink (set once they start).
    pub uplinks: std::sync::OnceLock<Vec<Arc<sluice_uplink::UplinkStatus>>>,
}

impl Inner {
    /// Snapshots of every uplink.
    pub fn uplink_snapshots(&self) -> Vec<sluice_uplink::UplinkSnapshot> {
        self.uplinks.get().map(|u| u.iter().map(|s| s.snapshot()).collect()).unwrap_or_default()
    }
}

impl std::ops::Deref for Shared {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
