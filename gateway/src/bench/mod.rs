//! `sluice bench`: a load tool against a running sluice, and for
//! comparison against any MQTT broker.
//!
//! - [`http`]: `bench http` (produce throughput and latency over HTTP) and
//!   `bench isolation` (express HTTP latency idle vs under a flood); also
//!   the keep-alive HTTP client the other benches use.
//! - [`publish`]: MQTT publishers (rumqttc) keeping K publishes in flight.
//! - [`mqtt`]: `bench mqtt` (acknowledged QoS 1 msg/s, publish -> PUBACK
//!   latency) against any MQTT 3.1.1 broker.
//! - [`priority`] with [`consume`] and [`deliveries`]: `bench
//!   mqtt-priority`, services with their own rates and a consumer draining
//!   at a fixed rate, from sluice (priority order) or from a broker
//!   (arrival order).
//! - [`resume`]: `bench mqtt-resume`, a persistent session away during a
//!   flood with alarms, then back.
//! - [`rumqttd`]: `bench rumqttd`, stock rumqttd with sluice's settings.
//! - [`payload`]: the timestamped payload; [`stats`]: percentiles,
//!   medians, pacing and the progress line.
//!
//! Progress goes to stderr once a second; the final report to stdout.

pub mod consume;
pub mod deliveries;
pub mod http;
pub mod mqtt;
pub mod payload;
pub mod priority;
pub mod publish;
pub mod resume;
pub mod rumqttd;
pub mod stats;

pub use http::{http, isolation, Load};
