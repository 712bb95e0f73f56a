//! The single-instance sections of the file: `[node]`, `[mqtt]`, `[http]`,
//! `[store]` and `[scheduler]`, and the [`Config`] that holds everything.
//!
//! Every field has a default, so an empty file is a valid configuration.
//! The `[[service]]`, `[[topic]]`, `[[route]]` and `[[uplink]]` entries
//! live in [`crate::items`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::items::{ListenerTls, RouteConfig, ServiceConfig, TopicConfig, UplinkConfig};
use crate::security::{HttpToken, MqttUser};
use crate::size::ByteSize;

/// The whole configuration file. Build it with
/// [`Config::from_toml_str`](crate::Config::from_toml_str) or
/// [`Config::load`](crate::Config::load), which also normalize and
/// validate it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: identity and data directory of this edge node.
    #[serde(default)]
    pub node: NodeConfig,
    /// `[mqtt]`: the embedded MQTT broker.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// `[http]`: the HTTP API.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[kafka]`: the local Kafka-protocol listener (off unless `listen` is
    /// set).
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// `[store]`: the on-disk topic log.
    #[serde(default)]
    pub store: StoreConfig,
    /// `[scheduler]`: how contended capacity is shared between services.
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// `[[service]]` entries. After loading, always contains a service named
    /// [`DEFAULT_SERVICE`](crate::DEFAULT_SERVICE) (appended if missing).
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// `[[topic]]` entries: topics created at start-up.
    #[serde(default, rename = "topic")]
    pub topics: Vec<TopicConfig>,
    /// `[[route]]` entries: MQTT topic filters mapped to log topics.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[[uplink]]` entries: sinks that forward to the central cluster.
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<UplinkConfig>,
    /// `[[rule]]` entries: edge processing into derived topics.
    #[serde(default, rename = "rule")]
    pub rules: Vec<crate::rules::RuleConfig>,
}

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Name of this edge node, sent upstream in the `{node}` part of
    /// `remote_topic` and in a record header. Same characters as topic
    /// names. Default `"sluice"`.
    pub id: String,
    /// Directory of the log database and `listen.json`. A relative path is
    /// relative to the working directory. Default `"sluice-data"`.
    pub data_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { id: "sluice".to_owned(), data_dir: PathBuf::from("sluice-data") }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Address the MQTT front listens on; port 0 picks a free port.
    /// Default `0.0.0.0:1883`.
    pub listen: SocketAddr,
    /// Largest accepted PUBLISH payload. Default 256KiB, at most 256MiB - 1
    /// (MQTT's own packet limit).
    pub max_payload: ByteSize,
    /// Optional second MQTT listener (every listener serves MQTT 3.1.1 and
    /// 5; kept for configurations that give MQTT 5 clients a port of their
    /// own).
    pub listen_v5: Option<SocketAddr>,
    /// Most concurrent MQTT connections. Default 1000.
    pub max_connections: u32,
    /// Most unacknowledged QoS 1 messages per connection. Default 100.
    pub max_inflight: u32,
    /// How much a live subscriber may have in front of an alarm, in time:
    /// sluice keeps that subscriber's unacknowledged QoS 1 window at about
    /// what it acknowledges in this long (learned from its PUBACKs, at
    /// least 2, at most `max_inflight`), paces QoS 0 to what it reads in
    /// this long (learned from the same PUBACKs), and orders the rest by
    /// service priority. Default 2ms, 1ms to 10s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub delivery_target_delay: Duration,
    /// Publishes sluice queues for one live subscriber that does not keep
    /// up, in bytes; past it the oldest publish of the lowest-priority
    /// service is dropped (counted). Default 4MiB, 64KiB to 1GiB.
    pub delivery_queue: ByteSize,
    /// Longest a persistent session (3.1.1 clean session 0, MQTT 5 session
    /// expiry) is kept while its client is away: an MQTT 5 client's own
    /// expiry interval is capped to it, a 3.1.1 session gets it. Its
    /// subscriptions and its place in the log are forgotten after that.
    /// Default 7d, 1s to 365d.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub session_expiry: Duration,
    /// What happens to a publish that matches no `[[route]]`.
    pub unrouted: Unrouted,
    /// Whether clients without credentials may connect. Default: true
    /// when no `users` are configured, false as soon as one is; see
    /// [`MqttConfig::anonymous_allowed`].
    pub allow_anonymous: Option<bool>,
    /// MQTT filters anonymous clients may publish to. Default `["#"]`.
    pub anonymous_publish: Vec<String>,
    /// MQTT filters anonymous clients may subscribe to. Default `["#"]`.
    pub anonymous_subscribe: Vec<String>,
    /// `[[mqtt.users]]`: clients that authenticate with a user name and
    /// password. Default none.
    pub users: Vec<MqttUser>,
    /// `[mqtt.tls]`: serve `listen` and `listen_v5` over TLS. Default none
    /// (plain TCP).
    pub tls: Option<ListenerTls>,
}

impl MqttConfig {
    /// Whether clients without credentials may connect: `allow_anonymous`,
    /// or when it is not set, whether no users are configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or(self.users.is_empty())
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            listen: any_addr(1883),
            max_payload: ByteSize::kib(256),
            listen_v5: None,
            max_connections: 1000,
            max_inflight: 100,
            delivery_target_delay: Duration::from_millis(2),
            delivery_queue: ByteSize::mib(4),
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            unrouted: Unrouted::FirstLevel,
            allow_anonymous: None,
            anonymous_publish: crate::security::everything(),
            anonymous_subscribe: crate::security::everything(),
            users: Vec::new(),
            tls: None,
        }
    }
}

/// `mqtt.unrouted`: what to do with a publish no `[[route]]` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrouted {
    /// The first topic level names the log topic, the rest is the key
    /// (`plant/dev-7/temp` -> topic `plant`, key `dev-7/temp`); a first
    /// level that is not a valid topic name is dropped and counted.
    #[default]
    FirstLevel,
    /// Drop and count.
    Drop,
}

impl Unrouted {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Unrouted::FirstLevel => "first_level",
            Unrouted::Drop => "drop",
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the HTTP API listens on; port 0 picks a free port.
    /// Default `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// Largest accepted request body. Default 4MiB.
    pub max_body: ByteSize,
    /// Longest long-poll `wait_ms` a fetch may ask for; longer requests are
    /// clamped or refused by the API. Default 30s, at most 1h.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub max_wait: Duration,
    /// `[[http.tokens]]`: bearer tokens. With none, the API is open; with
    /// any, every endpoint but `/healthz` and `/readyz` needs one.
    pub tokens: Vec<HttpToken>,
    /// Longest time from the first byte of a request to the end of its
    /// headers; a slower client is disconnected. Default 10s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub header_timeout: Duration,
    /// Longest time from the end of a request's headers to the end of its
    /// body; a slower body is answered 408 and counted. Default 30s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub body_timeout: Duration,
    /// Longest time a connection may go without a request: from accept, or
    /// from the end of the previous response, to the end of the next
    /// request's headers. Default 60s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Most concurrent connections (streams and long-polls included); more
    /// are closed at once and counted. Default 1000.
    pub max_connections: u32,
    /// `[http.tls]`: serve the API over TLS (HTTPS). Default none (plain
    /// HTTP).
    pub tls: Option<ListenerTls>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: any_addr(8080),
            max_body: ByteSize::mib(4),
            max_wait: Duration::from_secs(30),
            tokens: Vec::new(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1000,
            tls: None,
        }
    }
}

/// `[kafka]`: the local Kafka-protocol listener, where sluice is the only
/// broker, the leader of every partition and the group coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Address the Kafka listener binds; port 0 picks a free port. Default
    /// none: no Kafka listener.
    pub listen: Option<SocketAddr>,
    /// `host:port` clients are told to connect to (Metadata,
    /// FindCoordinator). Default: the bound address, with `127.0.0.1` in
    /// place of a wildcard (`0.0.0.0`, `::`) address.
    pub advertised: Option<String>,
    /// Largest request frame accepted; a larger one closes the connection
    /// (counted). Default 16MiB, 1KiB to 1GiB.
    pub max_request: ByteSize,
    /// Most concurrent Kafka connections. Default 1000.
    pub max_connections: u32,
    /// `[kafka.tls]`: serve the listener over TLS (Kafka's `SSL` security
    /// protocol; `SASL_SSL` with `sasl`). Default none (plain TCP).
    pub tls: Option<ListenerTls>,
    /// SASL mechanisms offered: `"PLAIN"`, `"SCRAM-SHA-256"`,
    /// `"SCRAM-SHA-512"`. Default `[]`: no SASL, every client is let in.
    /// When set, a connection must authenticate as one of `users` before
    /// anything but ApiVersions and SaslHandshake, or it is closed.
    pub sasl: Vec<String>,
    /// `[[kafka.users]]`: SASL users, their credentials and topics.
    /// Default none.
    pub users: Vec<crate::KafkaUser>,
    /// A connection without a request for this long, and no answer owed
    /// (a long-polling fetch is not idle), is closed (counted), as Kafka's
    /// `connections.max.idle.ms`. Default 10m, 1ms to 1h.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub idle_timeout: Duration,
    /// A client that does not take a response within this long is closed
    /// (counted) and its `max_connections` slot freed. Default 30s, 1ms
    /// to 1h.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub write_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listen: None,
            advertised: None,
            max_request: ByteSize::mib(16),
            max_connections: 1000,
            tls: None,
            sasl: Vec::new(),
            users: Vec::new(),
            idle_timeout: Duration::from_secs(600),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Disk budget of stored records. Beyond it, records are evicted by
    /// priority (lowest priority and oldest first, never below a service's
    /// `reserved_bytes`). Default 1GiB, at least 1MiB.
    pub max_bytes: ByteSize,
    /// Extra linger of a `sync` group commit. A group commit takes
    /// everything that queued while the previous sync was in flight, so no
    /// linger is needed; a non-zero window delays every sync acknowledgement
    /// by up to this much to gather more. Default 0, at most 1s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub sync_window: Duration,
    /// Background flush period for `durability = "buffered"`; also the
    /// bound on what a crash can lose from MQTT. Default 50ms, 1ms..=10s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub flush_interval: Duration,
    /// sled page cache (metadata only since records live in segment files).
    /// RSS can grow to several times this. Default 4MiB, at least 1MiB.
    pub cache_capacity: ByteSize,
    /// A partition's segment file is rolled at this size; retention and
    /// eviction delete whole segments. Default 16MiB, 4KiB..=1GiB.
    pub segment_bytes: ByteSize,
    /// A segment is rolled once its first record is this old, so retention
    /// by age can delete it. Default 1h, 1s..=7d.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub segment_age: Duration,
    /// Bulk writeback is paced in steps of this many bytes
    /// (`sync_file_range`), so an express sync never waits behind more than
    /// one step. Default 64KiB, 4KiB..=64MiB.
    pub writeback_step: ByteSize,
    /// Most bytes buffered services may have appended and not yet made
    /// durable; beyond it their jobs wait in their queues (HTTP gets 429,
    /// MQTT is not read) while `sync` and express services keep going.
    /// Default 4MiB, at least 64KiB.
    pub max_dirty: ByteSize,
    /// How often the metadata (group offsets, uplink cursors, the durable
    /// position of each partition) is made durable. A crash re-delivers or
    /// re-sends at most this much. Default 1s, 10ms..=60s.
    #[serde(deserialize_with = "crate::duration::deserialize")]
    pub checkpoint_interval: Duration,
    /// Create unknown topics on first use (under the default service, with
    /// `default_partitions` partitions). Default true.
    pub auto_create_topics: bool,
    /// Partitions of auto-created topics. Default 1, 1..=256.
    pub default_partitions: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_bytes: ByteSize::gib(1),
            sync_window: Duration::ZERO,
            flush_interval: Duration::from_millis(50),
            cache_capacity: ByteSize::mib(4),
            segment_bytes: ByteSize::mib(16),
            segment_age: Duration::from_secs(3600),
            writeback_step: ByteSize::kib(64),
            max_dirty: ByteSize::mib(4),
            checkpoint_interval: Duration::from_secs(1),
            auto_create_topics: true,
            default_partitions: 1,
        }
    }
}

/// How the scheduler orders work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerMode {
    /// `"weighted"`: deficit round robin by service weight, express first
    /// (capped by `express_max_share`).
    #[default]
    Weighted,
    /// `"fifo"`: first in, first out, ignoring weights; exists only to
    /// measure the difference.
    Fifo,
}

impl SchedulerMode {
    /// The configuration spelling, e.g. `"weighted"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SchedulerMode::Weighted => "weighted",
            SchedulerMode::Fifo => "fifo",
        }
    }
}

/// `[scheduler]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// `"weighted"` (default) or `"fifo"`.
    pub mode: SchedulerMode,
    /// Most of the capacity express services may take together while others
    /// are backlogged, in (0, 1]. Default 0.5.
    pub express_max_share: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { mode: SchedulerMode::Weighted, express_max_share: 0.5 }
    }
}

fn any_addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
}

/// The built-in limits that validation enforces, in one place so the
/// messages and the docs agree.
pub(crate) mod limits {
    use super::ByteSize;
    use std::time::Duration;

    pub(crate) const WEIGHT: (u32, u32) = (1, 1000);
    pub(crate) const PARTITIONS: (u32, u32) = (1, 256);
    pub(crate) const MIN_MAX_PENDING: ByteSize = ByteSize::kib(1);
    pub(crate) const MIN_STORE_BYTES: ByteSize = ByteSize::mib(1);
    pub(crate) const MIN_CACHE: ByteSize = ByteSize::mib(1);
    /// MQTT's remaining-length limit: 256MiB - 1.
    pub(crate) const MAX_MQTT_PAYLOAD: ByteSize = ByteSize((1 << 28) - 1);
    pub(crate) const MIN_BATCH: ByteSize = ByteSize::kib(1);
    pub(crate) const MAX_SYNC_WINDOW: Duration = Duration::from_secs(1);
    pub(crate) const SEGMENT_BYTES: (ByteSize, ByteSize) = (ByteSize::kib(4), ByteSize::gib(1));
    pub(crate) const SEGMENT_AGE: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(7 * 86_400));
    pub(crate) const WRITEBACK_STEP: (ByteSize, ByteSize) = (ByteSize::kib(4), ByteSize::mib(64));
    pub(crate) const MIN_DIRTY: ByteSize = ByteSize::kib(64);
    /// `store.checkpoint_interval` and an uplink's `checkpoint_interval`.
    pub(crate) const CHECKPOINT: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));
    pub(crate) const FLUSH_INTERVAL: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(10));
    pub(crate) const MAX_HTTP_WAIT: Duration = Duration::from_secs(3600);
    pub(crate) const MAX_LINGER: Duration = Duration::from_secs(60);
    /// An uplink's `budget.period`.
    pub(crate) const BUDGET_PERIOD: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(366 * 86_400));
    /// An uplink's `max_in_flight`.
    pub(crate) const MAX_IN_FLIGHT: u32 = 64;
    pub(crate) const RATE_BURST: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(3600));
    /// HTTP header, idle and TLS handshake timeouts.
    pub(crate) const LISTENER_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(3600));
    /// `mqtt.max_connections` and `http.max_connections`.
    pub(crate) const CONNECTIONS: (u32, u32) = (1, 100_000);
    /// `kafka.max_request`.
    pub(crate) const KAFKA_REQUEST: (ByteSize, ByteSize) = (ByteSize::kib(1), ByteSize::gib(1));
}
