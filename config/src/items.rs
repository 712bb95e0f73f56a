//! The repeated entries of the file: `[[service]]`, `[[topic]]`,
//! `[[route]]` and `[[uplink]]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::size::ByteSize;
use crate::DEFAULT_SERVICE;

/// When an ingest request is answered relative to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `"sync"`: answered after a group commit has flushed the records.
    Sync,
    /// `"buffered"`: answered after the append; flushed within
    /// `store.flush_interval`.
    #[default]
    Buffered,
}

/// What MQTT ingest does when a service's queue is at `max_pending`.
/// (HTTP answers 429 with Retry-After instead.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// `"drop_newest"`: drop the arriving message.
    #[default]
    DropNewest,
    /// `"drop_oldest"`: drop queued messages, oldest first, to make room.
    DropOldest,
}

/// `[[service]]`: a local edge service and its share of the box.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Required. Same characters as topic names.
    pub name: String,
    /// Share of contended capacity relative to other services, 1..=1000.
    /// Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Served before weighted services (up to
    /// `scheduler.express_max_share`). Default false.
    #[serde(default)]
    pub express: bool,
    /// `"sync"` or `"buffered"` (default).
    #[serde(default)]
    pub durability: Durability,
    /// Records older than this are skipped (and counted) where they would be
    /// delivered or forwarded. Default none (keep forever).
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub ttl: Option<Duration>,
    /// Bound on bytes queued for persisting. Default 8MiB, at least 1KiB.
    #[serde(default = "default_max_pending")]
    pub max_pending: ByteSize,
    /// MQTT policy when `max_pending` is reached. Default `"drop_newest"`.
    #[serde(default)]
    pub on_full: OnFull,
    /// Disk bytes eviction never takes from this service. The sum over all
    /// services must fit in `store.max_bytes`. Default 0.
    #[serde(default)]
    pub reserved_bytes: ByteSize,
    /// Ingest rate limit in records per second (HTTP and MQTT together).
    /// Default none (unlimited).
    #[serde(default)]
    pub max_records_per_sec: Option<u32>,
    /// Ingest rate limit in bytes per second of record values. Default none
    /// (unlimited).
    #[serde(default)]
    pub max_bytes_per_sec: Option<ByteSize>,
    /// How much unused rate the limits save up: a burst of up to this many
    /// seconds' worth passes at once. Default 1s, 1ms..=1h.
    #[serde(default = "default_rate_burst", deserialize_with = "crate::duration::deserialize")]
    pub rate_burst: Duration,
}

impl ServiceConfig {
    /// A service with the given name and every other field at its default.
    pub fn new(name: impl Into<String>) -> ServiceConfig {
        ServiceConfig {
            name: name.into(),
            weight: default_weight(),
            express: false,
            durability: Durability::Buffered,
            ttl: None,
            max_pending: default_max_pending(),
            on_full: OnFull::DropNewest,
            reserved_bytes: ByteSize(0),
            max_records_per_sec: None,
            max_bytes_per_sec: None,
            rate_burst: default_rate_burst(),
        }
    }
}

fn default_weight() -> u32 {
    1
}

fn default_rate_burst() -> Duration {
    Duration::from_secs(1)
}

fn default_max_pending() -> ByteSize {
    ByteSize::mib(8)
}

/// `[[topic]]`: a topic created at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Required. 1..=249 characters of `[A-Za-z0-9._-]`, as in Kafka.
    pub name: String,
    /// The `[[service]]` this topic belongs to. Default `"default"`.
    #[serde(default = "default_service")]
    pub service: String,
    /// Number of partitions, 1..=256. Default 1.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Retention by age and size; both unlimited by default (the global
    /// `store.max_bytes` still applies).
    #[serde(default)]
    pub retention: RetentionConfig,
}

impl TopicConfig {
    /// A topic with the given name under the default service, 1 partition.
    pub fn new(name: impl Into<String>) -> TopicConfig {
        TopicConfig {
            name: name.into(),
            service: default_service(),
            partitions: default_partitions(),
            retention: RetentionConfig::default(),
        }
    }
}

fn default_service() -> String {
    DEFAULT_SERVICE.to_owned()
}

fn default_partitions() -> u32 {
    1
}

/// `retention = { max_age = "7d", max_bytes = "1GiB" }` of a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Records older than this are deleted. Default none.
    #[serde(deserialize_with = "crate::duration::deserialize_opt")]
    pub max_age: Option<Duration>,
    /// Oldest records are deleted when the topic is larger than this
    /// (over all its partitions). Default none.
    pub max_bytes: Option<ByteSize>,
}

/// `[[route]]`: MQTT publishes matching a filter go to a log topic.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Required. An MQTT topic filter (`+` and `#` wildcards).
    pub mqtt: String,
    /// Required. The log topic the messages are appended to.
    pub topic: String,
    /// Where the record key comes from: `"level:N"` (the N-th level of the
    /// MQTT topic, counted from 1) or `"json:/pointer"` (an RFC 6901 JSON
    /// pointer into the payload). Default none (keyless). See
    /// [`RouteKey`](crate::RouteKey).
    #[serde(default)]
    pub key: Option<String>,
}

/// The protocol an uplink speaks to the central side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkKind {
    /// `"kafka"`: `brokers` are bootstrap `host:port` addresses.
    Kafka,
    /// `"mqtt"`: `brokers` are `host:port` of central MQTT brokers.
    Mqtt,
    /// `"http"`: `brokers` are `http://` or `https://` URLs batches are
    /// POSTed to.
    Http,
}

impl UplinkKind {
    /// The configuration spelling, e.g. `"kafka"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            UplinkKind::Kafka => "kafka",
            UplinkKind::Mqtt => "mqtt",
            UplinkKind::Http => "http",
        }
    }
}

/// Batch compression of an uplink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// `"none"` (default).
    #[default]
    None,
    /// `"gzip"`.
    Gzip,
    /// `"lz4"`.
    Lz4,
    /// `"zstd"`.
    Zstd,
    /// `"snappy"`.
    Snappy,
}

impl Compression {
    /// The configuration spelling, e.g. `"lz4"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Snappy => "snappy",
        }
    }
}

/// `[[uplink]]`: forwarding of local topics to the central cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Required. Same characters as topic names; names the sink's cursors.
    pub name: String,
    /// Required. `"kafka"`, `"mqtt"` or `"http"`.
    pub kind: UplinkKind,
    /// Required, non-empty. `host:port` for kafka and mqtt; URLs for http.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Local topics to forward. Empty (the default) forwards every topic,
    /// including auto-created ones.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Name of the remote topic; `{node}`, `{topic}` and `{service}` are
    /// replaced. Default `"edge.{node}.{topic}"`.
    #[serde(default = "default_remote_topic")]
    pub remote_topic: String,
    /// How long a batch waits for more records before it is sent.
    /// Default 5ms, at most 1m.
    #[serde(default = "default_linger", deserialize_with = "crate::duration::deserialize")]
    pub linger: Duration,
    /// A batch is sent once it holds this many (uncompressed) bytes.
    /// Default 256KiB, at least 1KiB.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: ByteSize,
    /// `"none"` (default), `"gzip"`, `"lz4"`, `"zstd"` or `"snappy"`.
    #[serde(default)]
    pub compression: Compression,
    /// Bandwidth cap in bytes per second, shared among services by weight.
    /// Default none (unlimited).
    #[serde(default)]
    pub max_bytes_per_sec: Option<ByteSize>,
    /// While a backlog drains, the share of sending capacity given to fresh
    /// records, in [0, 1]. Default 0.3.
    #[serde(default = "default_live_share")]
    pub live_share: f64,
    /// Most batches in flight at once (sent, not acknowledged yet), 1..=64;
    /// never more than one per partition, so each partition keeps its
    /// order. Default 5. The MQTT and HTTP sinks send one at a time.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// While a partition has a backlog, its batches grow (doubling after
    /// each acknowledged one) from `batch_max_bytes` up to this many
    /// uncompressed bytes. Default 768KiB for kafka (under the broker's
    /// default `message.max.bytes` of 1MiB even uncompressed, with the
    /// record framing), 512KiB for mqtt, `batch_max_bytes` (no growth) for
    /// http. With
    /// `max_bytes_per_sec`, at most a quarter of a second's allowance.
    #[serde(default)]
    pub backlog_batch_max_bytes: Option<ByteSize>,
    /// How often acknowledged cursors are made durable (a store flush), at
    /// most: never one device sync per batch. A crash re-sends at most what
    /// was acknowledged in one interval plus the batches in flight. Default
    /// 1s, 10ms..=1m.
    #[serde(default = "default_checkpoint_interval", deserialize_with = "crate::duration::deserialize")]
    pub checkpoint_interval: Duration,
    /// Kafka only: replication factor of the remote topics this uplink
    /// creates, 1..=32. Default 1.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// Kafka only: create a missing remote topic, with as many partitions
    /// as the local topic. When false, a missing topic is an error that
    /// names it. Default true.
    #[serde(default = "default_create_topics")]
    pub create_topics: bool,
    /// Connect over TLS (kafka, mqtt; http uses it for `https://` URLs).
    /// Default none (plain TCP).
    #[serde(default)]
    pub tls: Option<UplinkTls>,
    /// Kafka only: authenticate with SASL. Default none.
    #[serde(default)]
    pub sasl: Option<UplinkSasl>,
    /// A metered link: a byte budget per period, spent in priority order.
    /// Default none (unmetered).
    #[serde(default)]
    pub budget: Option<UplinkBudget>,
}

/// `budget = { bytes = "50MiB", period = "1d", reserve = 0.1,
/// windows = ["01:00-05:00"], always = ["alarms"] }` of an uplink: what a
/// metered link may carry per period, and when bulk data may use it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkBudget {
    /// Required. Bytes the uplink may send per period (keys, values,
    /// headers and the framing of records and batches, counted before
    /// compression: the wire carries at most this).
    pub bytes: ByteSize,
    /// Length of a budget period; periods start at multiples of it since
    /// 1970-01-01 00:00 UTC (a day: at midnight UTC). Default 1d, 1s..=366d.
    #[serde(default = "default_budget_period", deserialize_with = "crate::duration::deserialize")]
    pub period: Duration,
    /// Share of the budget kept for the `always` services, in [0, 1): the
    /// others stop when less than this is left. Default 0.1.
    #[serde(default = "default_budget_reserve")]
    pub reserve: f64,
    /// UTC time windows `"HH:MM-HH:MM"` (may wrap past midnight) when the
    /// services not in `always` may send. Default none: at any time.
    #[serde(default)]
    pub windows: Vec<String>,
    /// Services that may spend the reserve and send outside `windows`.
    /// Default: the express services.
    #[serde(default)]
    pub always: Option<Vec<String>>,
}

impl UplinkBudget {
    /// `windows` as (start, end) minutes of the UTC day; end may be lower
    /// than start (the window wraps past midnight). An error names the
    /// first window that is not `"HH:MM-HH:MM"`.
    pub fn window_minutes(&self) -> Result<Vec<(u32, u32)>, String> {
        self.windows
            .iter()
            .enumerate()
            .map(|(i, w)| {
                parse_window(w).ok_or_else(|| format!("windows[{i}]: {w:?} is not \"HH:MM-HH:MM\""))
            })
            .collect()
    }
}

fn parse_window(w: &str) -> Option<(u32, u32)> {
    let minute = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() != 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = w.split_once('-')?;
    let (a, b) = (minute(a)?, minute(b)?);
    (a != b).then_some((a, b))
}

fn default_budget_period() -> Duration {
    Duration::from_secs(86_400)
}

fn default_budget_reserve() -> f64 {
    0.1
}

/// `tls = { ca = "...", cert = "...", key = "..." }` of an uplink.
/// `tls = {}` connects over TLS, trusting the system's CA bundle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UplinkTls {
    /// PEM file of the CA certificates that sign the brokers' certificates.
    /// Default [`UplinkTls::SYSTEM_CA_BUNDLE`].
    pub ca: Option<PathBuf>,
    /// PEM file of this node's certificate chain, for brokers that require
    /// client certificates (mutual TLS). Needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM file of the private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl UplinkTls {
    /// The CA bundle used when `ca` is not set: Debian's and Raspberry Pi
    /// OS's system bundle (package `ca-certificates`).
    pub const SYSTEM_CA_BUNDLE: &'static str = "/etc/ssl/certs/ca-certificates.crt";

    /// The CA file in force: `ca`, or the system bundle.
    pub fn ca_file(&self) -> &Path {
        self.ca.as_deref().unwrap_or(Path::new(Self::SYSTEM_CA_BUNDLE))
    }
}

/// `[mqtt.tls]` or `[http.tls]`: TLS on one of sluice's listeners. The
/// files are read when sluice starts (and by `sluice check-config`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Required. PEM file of the server certificate chain, leaf first.
    pub cert: PathBuf,
    /// Required. PEM file of the private key of `cert` (PKCS#8, PKCS#1 or
    /// SEC1).
    pub key: PathBuf,
    /// PEM file of the CA certificates that sign client certificates. When
    /// set, every client must present a certificate signed by one of them.
    /// Default none (no client certificates asked for).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Longest time a new connection may take to complete its TLS
    /// handshake. Default 10s.
    #[serde(default = "default_handshake_timeout", deserialize_with = "crate::duration::deserialize")]
    pub handshake_timeout: Duration,
}

impl ListenerTls {
    /// TLS with `cert` and `key`, no client certificates, default timeout.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ListenerTls {
        ListenerTls {
            cert: cert.into(),
            key: key.into(),
            client_ca: None,
            handshake_timeout: default_handshake_timeout(),
        }
    }
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// SASL mechanism of a Kafka uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum SaslMechanism {
    /// `"plain"`: the password travels as is; use it with `tls` only.
    #[serde(rename = "plain")]
    Plain,
    /// `"scram-sha-256"`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `"scram-sha-512"`.
    #[serde(rename = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// The configuration spelling, e.g. `"scram-sha-512"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "plain",
            SaslMechanism::ScramSha256 => "scram-sha-256",
            SaslMechanism::ScramSha512 => "scram-sha-512",
        }
    }
}

/// `sasl = { mechanism = "...", username = "...", password = "..." }` of a
/// Kafka uplink. Every field is required, the password given inline or as
/// `password_file`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSasl {
    /// `"plain"`, `"scram-sha-256"` or `"scram-sha-512"`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (kept out of `Debug` output and logs). With
    /// `password_file`, [`Config::load`](crate::Config::load) fills it from
    /// the file.
    #[serde(default)]
    pub password: String,
    /// A file holding the password instead (see [`crate::secrets`]).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for UplinkSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkSasl")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl UplinkConfig {
    /// An uplink with the given name, kind and brokers; other fields at
    /// their defaults.
    pub fn new(name: impl Into<String>, kind: UplinkKind, brokers: Vec<String>) -> UplinkConfig {
        UplinkConfig {
            name: name.into(),
            kind,
            brokers,
            topics: Vec::new(),
            remote_topic: default_remote_topic(),
            linger: default_linger(),
            batch_max_bytes: default_batch_max_bytes(),
            compression: Compression::None,
            max_bytes_per_sec: None,
            live_share: default_live_share(),
            max_in_flight: default_max_in_flight(),
            backlog_batch_max_bytes: None,
            checkpoint_interval: default_checkpoint_interval(),
            replication_factor: default_replication_factor(),
            create_topics: default_create_topics(),
            tls: None,
            sasl: None,
            budget: None,
        }
    }

    /// Whether this uplink forwards `topic` (an empty `topics` list forwards
    /// every topic).
    pub fn forwards(&self, topic: &str) -> bool {
        self.topics.is_empty() || self.topics.iter().any(|t| t == topic)
    }

    /// The largest batch of a partition with a backlog (see
    /// `backlog_batch_max_bytes`), before the bandwidth cap's limit.
    pub fn backlog_batch_bytes(&self) -> ByteSize {
        let default = match self.kind {
            UplinkKind::Http => self.batch_max_bytes,
            UplinkKind::Kafka => ByteSize::kib(768),
            UplinkKind::Mqtt => ByteSize::kib(512),
        };
        ByteSize(self.backlog_batch_max_bytes.unwrap_or(default).as_u64().max(self.batch_max_bytes.as_u64()))
    }

    /// The remote topic for a local topic: `remote_topic` with `{node}`,
    /// `{topic}` and `{service}` replaced.
    pub fn remote_topic_for(&self, node: &str, topic: &str, service: &str) -> String {
        crate::names::render_template(&self.remote_topic, node, topic, service)
    }
}

fn default_remote_topic() -> String {
    "edge.{node}.{topic}".to_owned()
}

fn default_linger() -> Duration {
    Duration::from_millis(5)
}

fn default_batch_max_bytes() -> ByteSize {
    ByteSize::kib(256)
}

fn default_live_share() -> f64 {
    0.3
}

fn default_max_in_flight() -> u32 {
    5
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_replication_factor() -> u16 {
    1
}

fn default_create_topics() -> bool {
    true
}
