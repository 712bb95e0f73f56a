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
    /// The Kafka listener's SASL users (set when it starts with
    /// `kafka.sasl`; reloaded in place).
    #[cfg(feature = "kafka-listener")]
    pub kafka_accounts: std::sync::OnceLock<Arc<crate::kafka::Accounts>>,
    /// Bumped after every consumer-group commit.
    pub commits: watch::Sender<u64>,
    /// Where each consumer group stopped in the weighted rounds.
    pub group_rounds: std::sync::Mutex<std::collections::HashMap<String, crate::delivery::Rounds>>,
    /// Status of each running uplink (set once they start).
    pub uplinks: std::sync::OnceLock<Vec<Arc<sluice_uplink::UplinkStatus>>>,
    /// The HTTP bearer tokens in force (replaced by a reload).
    pub http_tokens: std::sync::RwLock<Arc<crate::http::auth::Tokens>>,
    /// The MQTT users in force (set once the MQTT front starts; reloaded
    /// in place).
    pub mqtt_guard: std::sync::OnceLock<Arc<crate::mqtt::auth::Guard>>,
    /// The configuration file, when sluice was started with one (what a
    /// reload re-reads).
    pub config_path: Option<std::path::PathBuf>,
    /// The TLS listeners (their certificates are reloaded in place).
    pub tls_listeners: std::sync::Mutex<Vec<crate::listener::TlsListener>>,
    /// The running rules (set once they start).
    #[cfg(feature = "rules")]
    pub rules: std::sync::OnceLock<Arc<crate::rules::Rules>>,
}

impl Inner {
    /// The HTTP bearer tokens in force.
    pub fn tokens(&self) -> Arc<crate::http::auth::Tokens> {
        self.http_tokens.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
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
