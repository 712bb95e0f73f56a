//! sluice-uplink: forwards the log to a central cluster, at least once, in
//! priority order, holding data while the uplink is down.
//!
//! Module map:
//! - [`sink`]: the `Sink` trait every destination implements and the
//!   `Batch` it is handed (records with provenance headers).
//! - `worker`: one loop per uplink: choose the next partition by priority
//!   (express first, weighted shares, `live_share` for fresh data), read a
//!   batch from its cursor, send (several batches in flight, one per
//!   partition), store the cursor after the ack and make cursors durable in
//!   periodic checkpoints, back off with jitter on errors, cap bandwidth.
//! - [`kafka`]: the Kafka sink (rskafka, pure Rust).
//! - [`mqtt`]: the MQTT 5 sink to a central broker (rumqttc).
//! - [`http`]: the HTTP sink (gzipped JSON lines).
//! - [`backoff`]: exponential backoff with jitter.
//! - [`status`]: per uplink and service lag, state and throughput.
//!
//! The uplink reads the log through `sluice-store` and learns about topics
//! and service priorities through the [`Host`] trait, which the gateway
//! implements; it knows nothing of HTTP ingest or MQTT ingest.

pub mod backoff;
mod budget;
pub mod http;
pub mod kafka;
pub mod mqtt;
pub mod sink;
pub mod status;
mod worker;

pub use budget::BudgetStatus;
pub use sink::{Batch, OutRecord, Sink, SinkError};
pub use status::{ServiceLag, State, UplinkSnapshot, UplinkStatus};
pub use worker::LIVE_AGE;

use sluice_store::scheduler::ServiceClass;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A topic as the uplink sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicView {
    /// Topic name.
    pub name: String,
    /// Owning service.
    pub service: String,
    /// Partition count.
    pub partitions: u32,
}

/// What the uplink needs from the process that runs it.
pub trait Host: Send + Sync + 'static {
    /// Every topic of the log.
    fn topics(&self) -> Vec<TopicView>;
    /// A service's current weight and express flag (weights can change at
    /// run time).
    fn class(&self, service: &str) -> ServiceClass;
    /// A service's TTL: older records are skipped, not forwarded.
    fn ttl(&self, service: &str) -> Option<Duration>;
    /// `scheduler.express_max_share`.
    fn express_max_share(&self) -> f64;
    /// The central side acknowledged records of `service` with these
    /// timestamps (for the host's latency histograms). Default: nothing.
    fn acked(&self, _uplink: &str, _service: &str, _timestamps_ms: &[i64]) {}
    /// Makes stored cursors durable (the uplink's checkpoints, at most every
    /// `checkpoint_interval`, never on a batch's critical path); resolves to
    /// false when the flush failed.
    fn flush(&self) -> Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// A running uplink.
#[derive(Debug)]
pub struct UplinkHandle {
    /// Its live status.
    pub status: std::sync::Arc<UplinkStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl UplinkHandle {
    /// Waits for the worker to stop (after `shutdown` turned true). Batches
    /// in flight are abandoned: their cursors were not moved, so they are
    /// sent again after the restart; acknowledged cursors get a last
    /// checkpoint.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "uplink worker failed");
        }
    }
}

/// Starts forwarding with `sink` on the current tokio runtime.
/// `appended` changes whenever the log grows; the worker stops when
/// `shutdown` turns true.
pub fn spawn<S: Sink>(
    config: sluice_config::UplinkConfig,
    node: String,
    store: sluice_store::Store,
    host: std::sync::Arc<dyn Host>,
    sink: S,
    appended: tokio::sync::watch::Receiver<u64>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> UplinkHandle {
    let status = std::sync::Arc::new(UplinkStatus::default());
    status.update(|s| {
        s.name.clone_from(&config.name);
        s.kind = config.kind.as_str().to_owned();
    });
    let worker = worker::Worker::new(config, node, store, host, sink, status.clone());
    let task = tokio::spawn(worker.run(appended, shutdown));
    UplinkHandle { status, task }
}
