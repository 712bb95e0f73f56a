//! The Kafka sink: produces each batch to a Kafka cluster with rskafka (a
//! pure-Rust client) and returns once the cluster acknowledged it.
//!
//! Mapping of a [`Batch`]:
//! - one batch is one produce request holding one Kafka record batch,
//!   compressed with the uplink's `compression`, with `acks = all` (rskafka
//!   always waits for every in-sync replica). The broker appends all of its
//!   records or none.
//! - topic: `batch.remote_topic`. A topic missing on the cluster is created
//!   with `batch.partitions` partitions and the uplink's
//!   `replication_factor` when `create_topics` is true; otherwise the send
//!   fails with an error that names the topic and the fix.
//! - partition: local partition mod the remote topic's partition count (read
//!   from the cluster once per connection). A key always lands in one local
//!   partition, so it lands in one remote partition too and keeps its
//!   order; with equal counts the remote partition is the local one.
//! - records keep key, value, timestamp (`CreateTime`, milliseconds) and
//!   headers. rskafka holds headers in a map, so when a record has several
//!   headers of one name only the last is sent. The provenance headers
//!   (`sluice.node`, `sluice.offset`, ...) come last in
//!   [`OutRecord::headers`], so they win over a record's own header of the
//!   same name.
//!
//! Connection: nothing happens in [`KafkaSink::new`]; the first `send`
//! connects (TLS and SASL when configured, client id `sluice-<node>`).
//! rskafka retries failed requests internally with backoff (connection
//! errors, leader changes, a new topic without a leader yet); a small
//! budget ([`KafkaSinkOptions::retry_deadline`]) turns a dead cluster into
//! an error within seconds, so the worker's own backoff and status take
//! over. The budget counts rskafka's sleeps per request, and retries nest (a
//! produce retries its reconnect, which retries too), so a send to a dead
//! broker fails after a few times the budget. [`KafkaSinkOptions::send_timeout`]
//! bounds a whole `send` even against a broker that accepts connections but
//! never answers. [`Sink::reset`] drops the client with its cached partition
//! counts and partition clients.
//!
//! Pipelining: sends take `&self` and run concurrently, one connection per
//! broker (rskafka multiplexes requests on it). rskafka has no idempotent
//! producer (no producer id, no sequence numbers), so with two batches of
//! one partition in flight a retried first batch could land after the
//! second. Order is kept instead by the worker: at most one batch in flight
//! per partition, many partitions at once ([`Sink::max_in_flight`] is
//! unbounded here; the uplink's `max_in_flight` caps it). A retry of a
//! batch may duplicate it, never reorder it.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use sluice_config::{SaslMechanism, UplinkConfig, UplinkSasl, UplinkTls};

use crate::sink::{Batch, OutRecord, Sink, SinkError};

/// Timeouts of a [`KafkaSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkOptions {
    /// Total backoff sleep rskafka may spend retrying one request (connect,
    /// metadata, create topic, produce) before the send fails; nested
    /// retries make the wall-clock time a few times this. Default 1s.
    pub retry_deadline: Duration,
    /// Longest time one `send` may take in all; past it the connection is
    /// dropped and the send fails. Longer than the broker's produce timeout
    /// (30s). Default 60s.
    pub send_timeout: Duration,
    /// How long the cluster may take to create a topic. Default 10s.
    pub create_topic_timeout: Duration,
}

impl Default for KafkaSinkOptions {
    fn default() -> KafkaSinkOptions {
        KafkaSinkOptions {
            retry_deadline: Duration::from_secs(1),
            send_timeout: Duration::from_secs(60),
            create_topic_timeout: Duration::from_secs(10),
        }
    }
}

/// Sends batches to a Kafka cluster (see the module docs for the mapping).
#[derive(Debug)]
pub struct KafkaSink {
    settings: Settings,
    /// Held only to connect and to look up a partition's client, never
    /// during a produce.
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// Set by [`Sink::reset`] and after a timeout: the next lookup drops
    /// the connection (sends in flight keep theirs).
    stale: AtomicBool,
}

/// What the sink was configured with.
#[derive(Debug)]
struct Settings {
    uplink: String,
    brokers: Vec<String>,
    client_id: String,
    compression: Compression,
    create_topics: bool,
    replication_factor: i16,
    tls: Option<UplinkTls>,
    sasl: Option<UplinkSasl>,
    options: KafkaSinkOptions,
}

/// A connected client and what was learnt through it.
#[derive(Debug)]
struct Connection {
    client: Arc<Client>,
    /// Remote topics by name.
    topics: HashMap<String, RemoteTopic>,
}

#[derive(Debug)]
struct RemoteTopic {
    /// Partition count on the cluster.
    partitions: i32,
    /// Clients of the partitions used so far.
    clients: HashMap<i32, Arc<PartitionClient>>,
}

impl KafkaSink {
    /// A sink for the `kafka` uplink `config` of node `node_id`, with
    /// default [`KafkaSinkOptions`]. Does no I/O: the first send connects.
    pub fn new(config: &UplinkConfig, node_id: &str) -> KafkaSink {
        KafkaSink::with_options(config, node_id, KafkaSinkOptions::default())
    }

    /// [`KafkaSink::new`] with other timeouts.
    pub fn with_options(config: &UplinkConfig, node_id: &str, options: KafkaSinkOptions) -> KafkaSink {
        let settings = Settings {
            uplink: config.name.clone(),
            brokers: config.brokers.clone(),
            client_id: format!("sluice-{node_id}"),
            compression: compression(config.compression),
            create_topics: config.create_topics,
            // Validation keeps it in 1..=32.
            replication_factor: i16::try_from(config.replication_factor).unwrap_or(i16::MAX),
            tls: config.tls.clone(),
            sasl: config.sasl.clone(),
            options,
        };
        KafkaSink { settings, conn: tokio::sync::Mutex::new(None), stale: AtomicBool::new(false) }
    }

    /// Connects when needed, learns the remote topic and returns the client
    /// of the remote partition of `batch`. The lock is held to connect and
    /// to learn a topic's partition count, not while a partition's leader is
    /// looked up: the first batches of many partitions find their leaders
    /// concurrently (one round trip, not one per partition).
    async fn partition_client(&self, batch: &Batch) -> Result<Arc<PartitionClient>, SinkError> {
        let settings = &self.settings;
        let (client, partition) = {
            let mut slot = self.conn.lock().await;
            if self.stale.swap(false, Ordering::AcqRel) {
                *slot = None;
            }
            let conn = match slot.take() {
                Some(conn) => conn,
                None => Connection { client: Arc::new(settings.connect().await?), topics: HashMap::new() },
            };
            let conn = slot.insert(conn);
            let partitions = match conn.topics.get(&batch.remote_topic) {
                Some(topic) => topic.partitions,
                None => settings.remote_partitions(&conn.client, batch).await?,
            };
            let partition = remote_partition(batch.partition, partitions);
            let topic = conn
                .topics
                .entry(batch.remote_topic.clone())
                .or_insert_with(|| RemoteTopic { partitions, clients: HashMap::new() });
            if let Some(known) = topic.clients.get(&partition) {
                return Ok(known.clone());
            }
            (conn.client.clone(), partition)
        };
        let found = client
            // Retry: a topic created a moment ago may not have a leader yet.
            .partition_client(batch.remote_topic.as_str(), partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| {
                let what = format_args!(
                    "cannot find the leader of topic {:?} partition {partition}",
                    batch.remote_topic
                );
                SinkError::new(&settings.context(what), e)
            })?;
        let found = Arc::new(found);
        let mut slot = self.conn.lock().await;
        // Kept unless the connection was replaced meanwhile.
        if let Some(conn) = slot.as_mut().filter(|c| Arc::ptr_eq(&c.client, &client)) {
            if let Some(topic) = conn.topics.get_mut(&batch.remote_topic) {
                if let Entry::Vacant(v) = topic.clients.entry(partition) {
                    v.insert(found.clone());
                }
            }
        }
        Ok(found)
    }

    async fn try_send(&self, batch: &Batch) -> Result<(), SinkError> {
        let records: Vec<Record> = batch.records.iter().map(to_record).collect();
        let compression = self.settings.compression;
        let context = self.settings.context(format_args!(
            "produce to topic {:?} (local {:?} partition {}, offsets {}..={})",
            batch.remote_topic,
            batch.topic,
            batch.partition,
            batch.records.first().map_or(0, |r| r.offset),
            batch.records.last().map_or(0, |r| r.offset),
        ));
        let client = self.partition_client(batch).await?;
        let partition = client.partition();
        let offsets = client
            .produce(records, compression)
            .await
            .map_err(|e| SinkError::new(&format!("{context} failed on partition {partition}"), e))?;
        tracing::debug!(
            uplink = %self.settings.uplink,
            topic = %batch.remote_topic,
            partition,
            records = offsets.len(),
            first_offset = offsets.first().copied(),
            "batch produced"
        );
        Ok(())
    }
}

impl Settings {
    /// Error context: the uplink and its brokers, then `what`.
    fn context(&self, what: impl Display) -> String {
        format!("kafka uplink {:?} (brokers {}): {what}", self.uplink, self.brokers.join(", "))
    }

    async fn connect(&self) -> Result<Client, SinkError> {
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            base: 3.0,
            deadline: Some(self.options.retry_deadline),
        };
        let mut builder = ClientBuilder::new(self.brokers.clone())
            .client_id(self.client_id.as_str())
            .backoff_config(backoff);
        if let Some(tls) = &self.tls {
            let field = format!("uplink[{:?}].tls", self.uplink);
            let config =
                sluice_config::tls::client_config(tls, &field).map_err(|e| SinkError(self.context(e)))?;
            builder = builder.tls_config(Arc::new(config));
        }
        if let Some(sasl) = &self.sasl {
            builder = builder.sasl_config(sasl_config(sasl));
        }
        builder.build().await.map_err(|e| SinkError::new(&self.context("cannot connect"), e))
    }

    /// The partition count of `topic` on the cluster; `None` when it does
    /// not exist.
    async fn find_topic(&self, client: &Client, topic: &str) -> Result<Option<i32>, SinkError> {
        let topics = client.list_topics().await.map_err(|e| {
            SinkError::new(&self.context(format_args!("cannot list topics to find {topic:?}")), e)
        })?;
        let Some(found) = topics.into_iter().find(|t| t.name == topic) else { return Ok(None) };
        match i32::try_from(found.partitions.len()) {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(SinkError(self.context(format_args!(
                "topic {topic:?} has {} partitions on the cluster",
                found.partitions.len()
            )))),
        }
    }

    /// The partition count of `batch.remote_topic`, creating the topic when
    /// it is missing and `create_topics` is true.
    async fn remote_partitions(&self, client: &Client, batch: &Batch) -> Result<i32, SinkError> {
        let topic = &batch.remote_topic;
        let wanted = i32::try_from(batch.partitions.max(1)).unwrap_or(i32::MAX);
        let found = self.find_topic(client, topic).await?;
        let partitions = match found {
            Some(n) => n,
            None if !self.create_topics => {
                return Err(SinkError(self.context(format_args!(
                    "topic {topic:?} does not exist and create_topics is false; create it on the \
                     cluster (with {wanted} partitions to keep the local partitioning) or set \
                     create_topics = true in uplink {:?}",
                    self.uplink
                ))));
            }
            None => {
                self.create_topic(client, topic, wanted).await?;
                // An older topic of that name may have won a race, with its own
                // partition count; a cluster whose metadata lags behind the
                // creation got the count asked for.
                self.find_topic(client, topic).await?.unwrap_or(wanted)
            }
        };
        if i64::from(partitions) != i64::from(batch.partitions) {
            tracing::warn!(
                uplink = %self.uplink,
                topic = %topic,
                remote_partitions = partitions,
                local_partitions = batch.partitions,
                "remote topic has another partition count than the local topic; \
                 local partition p goes to remote partition p mod {partitions}"
            );
        }
        Ok(partitions)
    }

    async fn create_topic(&self, client: &Client, topic: &str, partitions: i32) -> Result<(), SinkError> {
        let rf = self.replication_factor;
        let context = || {
            self.context(format_args!(
                "cannot create topic {topic:?} ({partitions} partitions, replication factor {rf})"
            ))
        };
        let controller = client.controller_client().map_err(|e| SinkError::new(&context(), e))?;
        let timeout_ms = i32::try_from(self.options.create_topic_timeout.as_millis()).unwrap_or(i32::MAX);
        match controller.create_topic(topic, partitions, rf, timeout_ms).await {
            Ok(()) => {
                tracing::info!(
                    uplink = %self.uplink,
                    topic = %topic,
                    partitions,
                    replication_factor = rf,
                    "created remote topic"
                );
                Ok(())
            }
            // Another node (or an earlier send that timed out) created it.
            Err(ClientError::ServerError { protocol_error: ProtocolError::TopicAlreadyExists, .. }) => Ok(()),
            Err(e) => Err(SinkError::new(&context(), e)),
        }
    }
}

impl Sink for KafkaSink {
    async fn send(&self, batch: &Batch) -> Result<(), SinkError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let limit = self.settings.options.send_timeout;
        match tokio::time::timeout(limit, self.try_send(batch)).await {
            Ok(result) => result,
            Err(_) => {
                // A request may be half written: never reuse that connection.
                self.stale.store(true, Ordering::Release);
                Err(SinkError(self.settings.context(format_args!(
                    "no answer within {}s producing to topic {:?} (local {:?} partition {})",
                    limit.as_secs_f64(),
                    batch.remote_topic,
                    batch.topic,
                    batch.partition
                ))))
            }
        }
    }

    fn max_in_flight(&self) -> usize {
        usize::MAX
    }

    fn reset(&self) {
        self.stale.store(true, Ordering::Release);
    }
}

/// The remote partition of a local partition: `local mod remote_count`.
pub fn remote_partition(local: u32, remote_count: i32) -> i32 {
    let index = i64::from(local) % i64::from(remote_count.max(1));
    i32::try_from(index).unwrap_or(0)
}

fn compression(c: sluice_config::Compression) -> Compression {
    match c {
        sluice_config::Compression::None => Compression::NoCompression,
        sluice_config::Compression::Gzip => Compression::Gzip,
        sluice_config::Compression::Lz4 => Compression::Lz4,
        sluice_config::Compression::Zstd => Compression::Zstd,
        sluice_config::Compression::Snappy => Compression::Snappy,
    }
}

/// The rskafka record of an [`OutRecord`]. Headers of one name collapse to
/// the last one.
fn to_record(r: &OutRecord) -> Record {
    Record {
        key: r.key.clone(),
        value: Some(r.value.clone()),
        headers: r.headers.iter().cloned().collect(),
        timestamp: timestamp(r.timestamp_ms),
    }
}

/// Milliseconds since the epoch as a date, clamped to chrono's range (only
/// absurd values, hundreds of thousands of years away, are out of it).
fn timestamp(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

fn sasl_config(sasl: &UplinkSasl) -> SaslConfig {
    let credentials = Credentials::new(sasl.username.clone(), sasl.password.clone());
    match sasl.mechanism {
        SaslMechanism::Plain => SaslConfig::Plain(credentials),
        SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
        SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(headers: &[(&str, &str)], timestamp_ms: i64) -> OutRecord {
        OutRecord {
            offset: 7,
            key: Some(b"dev-1".to_vec()),
            value: b"{\"t\":21.5}".to_vec(),
            headers: headers.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect(),
            timestamp_ms,
        }
    }

    #[test]
    fn local_partitions_map_onto_the_remote_count() {
        assert_eq!((0..4).map(|p| remote_partition(p, 4)).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!((0..4).map(|p| remote_partition(p, 3)).collect::<Vec<_>>(), [0, 1, 2, 0]);
        assert_eq!(remote_partition(5, 1), 0);
        assert_eq!(remote_partition(5, 0), 0, "a bad count does not divide by zero");
        assert_eq!(remote_partition(u32::MAX, 7), (u32::MAX % 7) as i32);
    }

    #[test]
    fn records_keep_key_value_timestamp_and_headers() {
        let r = to_record(&out(&[("h", "1"), ("sluice.offset", "7")], 1_700_000_000_123));
        assert_eq!(r.key.as_deref(), Some(&b"dev-1"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"{\"t\":21.5}"[..]));
        assert_eq!(r.timestamp.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers["sluice.offset"], b"7");
    }

    #[test]
    fn repeated_header_names_keep_the_last_value() {
        let r = to_record(&out(&[("sluice.node", "spoofed"), ("a", "1"), ("sluice.node", "pi-01")], 0));
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers["sluice.node"], b"pi-01");
    }

    #[test]
    fn absurd_timestamps_are_clamped() {
        assert_eq!(timestamp(i64::MAX), DateTime::<Utc>::MAX_UTC);
        assert_eq!(timestamp(i64::MIN), DateTime::<Utc>::MIN_UTC);
        assert_eq!(timestamp(-1).timestamp_millis(), -1);
    }

    #[test]
    fn every_compression_maps() {
        use sluice_config::Compression as C;
        let all = [C::None, C::Gzip, C::Lz4, C::Zstd, C::Snappy].map(compression);
        assert_eq!(
            all,
            [
                Compression::NoCompression,
                Compression::Gzip,
                Compression::Lz4,
                Compression::Zstd,
                Compression::Snappy
            ]
        );
    }

    #[test]
    fn sasl_mechanisms_map() {
        let sasl = |mechanism| UplinkSasl {
            mechanism,
            username: "u".into(),
            password: "p".into(),
            password_file: None,
        };
        assert!(
            matches!(sasl_config(&sasl(SaslMechanism::Plain)), SaslConfig::Plain(c) if c.username == "u")
        );
        assert!(matches!(sasl_config(&sasl(SaslMechanism::ScramSha256)), SaslConfig::ScramSha256(_)));
        assert!(matches!(sasl_config(&sasl(SaslMechanism::ScramSha512)), SaslConfig::ScramSha512(_)));
    }

    #[test]
    fn new_does_no_io_and_reset_drops_nothing_yet() {
        let config =
            UplinkConfig::new("central", sluice_config::UplinkKind::Kafka, vec!["127.0.0.1:1".into()]);
        let sink = KafkaSink::new(&config, "pi-01");
        assert!(sink.conn.try_lock().is_ok_and(|c| c.is_none()));
        assert_eq!(sink.settings.client_id, "sluice-pi-01");
        sink.reset();
        assert!(sink.conn.try_lock().is_ok_and(|c| c.is_none()));
    }
}
