//! sluice-gateway: the `sluice` binary's library half.
//!
//! Module map:
//! - [`run`]: starts everything (store, ingest pipeline, HTTP), writes
//!   `listen.json`, waits for a signal and drains.
//! - [`services`]: per-service runtime state (weights, limits, counters).
//! - [`topics`]: topic -> service/partition resolution and auto-creation.
//! - [`ingest`]: the bounded per-service queues, the writer thread that
//!   persists in scheduler order, and the group-commit flusher.
//! - [`delivery`]: reads for consumers: partition fetch, group fetch in
//!   priority order (from committed or explicit positions), long-poll and
//!   commit notifications.
//! - `kafka` (feature `kafka-listener`): the local Kafka-protocol listener
//!   (`[kafka]`): produce, fetch in priority order, classic consumer groups.
//! - [`mqtt`]: the embedded rumqttd broker, routing, MQTT ingest.
//! - [`rate`]: per-service ingest rate limits (token buckets).
//! - [`uplinks`]: runs the configured uplinks (sinks, the uplink's view of
//!   topics and priorities).
//! - [`http`]: the axum API (`/v1/...`, `/metrics`, health), including the
//!   group push stream over SSE and WebSocket, and its serve loop (TLS,
//!   timeouts, connection limit).
//! - [`listener`]: what the HTTP and MQTT TLS listeners share: connection
//!   limit, TLS handshake deadline, counters, the check of TLS files.
//! - [`metrics`]: Prometheus text rendering.
//! - [`maintenance`]: retention and disk-budget eviction on a timer.
//! - [`systemd`]: readiness, watchdog and stopping notifications.
//! - `rules` (feature `rules`): edge rules from local topics into derived
//!   topics, exactly once (gateway/src/rules/).
//! - [`bench`]: the `sluice bench` load tool.

pub mod bench;
pub mod delivery;
pub mod histograms;
pub mod http;
pub mod ingest;
#[cfg(feature = "kafka-listener")]
pub mod kafka;
pub mod listener;
pub mod logs;
pub mod maintenance;
pub mod metrics;
pub mod mqtt;
pub mod rate;
#[cfg(feature = "rules")]
pub mod rules;
pub mod run;
pub mod services;
pub mod state;
pub mod systemd;
pub mod topics;
pub mod uplinks;

pub use sluice_store::now_ms;
