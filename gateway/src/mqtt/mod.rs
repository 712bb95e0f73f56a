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
//! [`outbox`]: publishes in the priority of their services, QoS 1
//! delivered by sluice within a window sized in time, so rumqttd's
//! first-in-first-out queues stay empty. Persistent sessions are sluice's
//! and are served from the log ([`sessions`]), so they survive a restart
//! and get what they missed in priority order.
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
mod sessions;

pub use broker::{reserve, rumqttd_config, start, wait_listening, MqttHandle};

use std::collections::HashMap;
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
    /// Connections with subscriptions, by connection number: client id and
    /// what waits in sluice for them (see [`MqttStats::session_lags`]).
    sessions: std::sync::Mutex<HashMap<u64, (String, std::sync::Weak<outbox::Outbox>)>>,
}

/// What waits in sluice for one live subscriber, per service.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionLag {
    pub client_id: String,
    pub service: String,
    /// Publishes queued for the subscriber, not yet sent to it.
    pub records: u64,
    /// Age of the oldest of them (0 when none).
    pub seconds: f64,
}

/// At most this many subscriber sessions are reported (the most behind).
const SESSIONS_REPORTED: usize = 100;

impl MqttStats {
    /// Connection `origin` of `client_id` subscribed: its lag is reported.
    fn track_session(&self, origin: u64, client_id: &str, out: &std::sync::Arc<outbox::Outbox>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        sessions.entry(origin).or_insert_with(|| (client_id.to_owned(), std::sync::Arc::downgrade(out)));
    }

    /// Connection `origin` ended.
    fn untrack_session(&self, origin: u64) {
        self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&origin);
    }

    /// Per live subscriber session (a connection with subscriptions) and
    /// service: what sluice holds for it, not yet sent. The 100 sessions
    /// with the oldest waiting publish come first; the rest are left out.
    pub fn session_lags(&self) -> Vec<SessionLag> {
        let sessions: Vec<(String, std::sync::Arc<outbox::Outbox>)> = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(|(id, out)| Some((id.clone(), out.upgrade()?)))
            .collect();
        let mut per_session: Vec<(f64, Vec<SessionLag>)> = sessions
            .iter()
            .map(|(client_id, out)| {
                let lags: Vec<SessionLag> = out
                    .lag()
                    .into_iter()
                    .map(|(service, records, oldest)| SessionLag {
                        client_id: client_id.clone(),
                        service,
                        records,
                        seconds: oldest.as_secs_f64(),
                    })
                    .collect();
                (lags.iter().map(|l| l.seconds).fold(0.0, f64::max), lags)
            })
            .collect();
        per_session.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then_with(|| a.1.first().map(|l| &l.client_id).cmp(&b.1.first().map(|l| &l.client_id)))
        });
        per_session.into_iter().take(SESSIONS_REPORTED).flat_map(|(_, l)| l).collect()
    }
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
