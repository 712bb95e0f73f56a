//! MQTT: sluice's connection front and an embedded rumqttd broker.
//!
//! The front ([`front`]) owns the public listeners (plain or TLS, MQTT
//! 3.1.1 and 5 on every port). It reads each PUBLISH itself, routes it to a
//! log topic, queues it through the same per-service queues and scheduler
//! as HTTP, and acknowledges it once it is stored (PUBACK after the append,
//! after the flush for `sync` services). Every packet also reaches the
//! broker, which listens on loopback only and serves live subscribers and
//! retained messages; its own acknowledgements are dropped on the way back.
//! What the broker sends a client goes through the connection's
//! [`outbox`]: publishes in the priority of their services, QoS 1 to
//! clean-session subscribers delivered by sluice within a window sized in
//! time, so rumqttd's first-in-first-out queues stay empty.
//!
//! rumqttd runs on threads of its own (its router and listener threads
//! never stop; there is no shutdown API). sluice assembles it from
//! rumqttd's public parts (router, one `Server` per protocol version with
//! sluice's [`guarded`] codec for authentication, see [`auth`]). rumqttd
//! keeps publishes in in-memory segments per subscription filter for its
//! subscribers; they are configured small here (3 segments of 1 MiB or
//! 4 x `mqtt.max_payload`) because its defaults can hold a GiB per filter.

pub mod auth;
mod broker;
mod front;
pub mod guarded;
mod ingest;
mod interest;
mod outbox;
pub(crate) mod packet;
pub mod route;

pub use broker::{reserve, rumqttd_config, start, wait_listening, MqttHandle};

use std::sync::atomic::AtomicU64;

/// MQTT-wide counters (per-service ones live in the service counters).
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Publishes received from clients (and will messages).
    pub received: AtomicU64,
    /// Dropped: no route matched and `mqtt.unrouted = "drop"`.
    pub dropped_unrouted: AtomicU64,
    /// Dropped: the MQTT topic does not map to a valid log topic name, or
    /// is not UTF-8, or names an unknown topic while auto-creation is off.
    pub dropped_invalid_topic: AtomicU64,
    /// Dropped because sluice was shutting down.
    pub dropped_shutting_down: AtomicU64,
    /// Publishes (and will messages) outside the sender's publish filters.
    pub dropped_not_allowed: AtomicU64,
    /// Subscription filters refused (outside the subscribe filters).
    pub subscribe_refused: AtomicU64,
    /// CONNECTs refused: no credentials while anonymous access is off.
    pub refused_no_credentials: AtomicU64,
    /// CONNECTs refused: unknown user or wrong password.
    pub refused_bad_credentials: AtomicU64,
    /// CONNECTs refused: too many password checks waiting.
    pub refused_busy: AtomicU64,
    /// Connections closed because a reload removed their user.
    pub closed_removed_user: AtomicU64,
    /// Stored without key because the route's key was missing.
    pub key_missing: AtomicU64,
    /// Ports of the MQTT listeners (for the connection gauge).
    pub ports: std::sync::OnceLock<Vec<u16>>,
    /// Counters of the public listeners (connection limit, TLS).
    pub listener: std::sync::Arc<crate::listener::ListenerStats>,
}

/// Established TCP connections on the MQTT listener ports, read from
/// `/proc/net/tcp{,6}` (rumqttd exposes no connection count without its
/// metrics thread). `None` where `/proc` is not available.
pub fn connections(ports: &[u16]) -> Option<u64> {
    let mut n = 0u64;
    let mut any = false;
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        any = true;
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(local), Some(_remote), Some(state)) = (fields.nth(1), fields.next(), fields.next())
            else {
                continue;
            };
            let port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            // State 01 is ESTABLISHED.
            if state == "01" && port.is_some_and(|p| ports.contains(&p)) {
                n += 1;
            }
        }
    }
    any.then_some(n)
}
