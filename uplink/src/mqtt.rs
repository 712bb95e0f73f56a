//! The MQTT sink: publishes each record at QoS 1 to a central MQTT broker
//! and acknowledges a batch once the broker sent every PUBACK.
//!
//! Wire format (MQTT 5, through `rumqttc::v5`):
//! - one PUBLISH per record, QoS 1, not retained, to the batch's
//!   `remote_topic` (rendered by the worker; it may contain `/`);
//! - payload: the record value, byte for byte;
//! - user properties: the record's headers in order (values as lossy
//!   UTF-8, as on sluice's HTTP API), which end with the provenance headers
//!   `sluice.node`, `sluice.service`, `sluice.topic`, `sluice.partition`,
//!   `sluice.offset`; then `sluice.key` (a UTF-8 key) or `sluice.key_b64`
//!   (any other key, base64), absent for a record without key; then
//!   `sluice.timestamp` (milliseconds since the epoch).
//!
//! MQTT 5 rather than 3.1.1 because 3.1.1 has no place for key, headers
//! and provenance, and because an MQTT 5 PUBACK carries a reason code: a
//! broker that refuses a record (not authorized, quota exceeded) makes the
//! batch fail instead of being counted as delivered. A broker that only
//! speaks MQTT 3.1.1 refuses the connection.
//!
//! Size: a broker may announce a maximum packet size in its CONNACK. A
//! record whose PUBLISH would be larger can never be delivered to it: the
//! sink says so ([`Sink::cannot_carry`]) and the worker skips it, counted
//! (`unfit_skipped`) and logged, so one such record does not stop the
//! partition. A batch that holds one when the limit is first learned fails
//! once, before anything is published.
//!
//! Connection: the client id is `sluice-<node>-<uplink>`, with a clean
//! start. With a `tls` table the connection is MQTT over TLS (rustls with
//! ring): the broker's certificate must be signed by `tls.ca` (default the
//! system bundle) and name the host of `brokers`; `tls.cert` and
//! `tls.key` are presented to brokers that require client certificates. The first broker of `brokers` is tried first; on a connection
//! failure the next ones are tried in turn, and the one that answered is
//! tried first next time. The rumqttc event loop runs in a task owned by
//! the sink; it ends with the first connection error (no silent reconnect
//! and re-publish), and the next `send` connects again. Dropping the sink
//! or calling [`Sink::reset`] aborts the task.

use crate::sink::{Batch, OutRecord, Sink, SinkError};
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use sluice_config::UplinkConfig;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Publish requests queued between the sink and its event loop task.
const REQUEST_CAPACITY: usize = 64;
/// Notes queued from the event loop task to the sink.
const NOTE_CAPACITY: usize = 256;

/// Timeouts and limits of an [`MqttSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSinkOptions {
    /// Longest wait for the TCP connection and the CONNACK, per broker.
    /// Default 10s.
    pub connect_timeout: Duration,
    /// Longest wait for the next PUBACK while a batch is in flight; past it
    /// `send` fails. Default 10s.
    pub ack_timeout: Duration,
    /// MQTT keep-alive; at least 5s (rumqttc's minimum). Default 30s.
    pub keep_alive: Duration,
    /// Most publishes awaiting their PUBACK at once; the broker's Receive
    /// Maximum may lower it. Default 100.
    pub max_inflight: u16,
}

impl Default for MqttSinkOptions {
    fn default() -> MqttSinkOptions {
        MqttSinkOptions {
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            max_inflight: 100,
        }
    }
}

/// Sends batches to a central MQTT broker (see the module docs for the
/// wire format), one batch at a time.
#[derive(Debug)]
pub struct MqttSink {
    client_id: String,
    inner: tokio::sync::Mutex<Inner>,
}

/// The sink's connection state; one send holds it at a time.
#[derive(Debug)]
struct Inner {
    uplink: String,
    brokers: Vec<Broker>,
    client_id: String,
    options: MqttSinkOptions,
    /// The TLS client configuration, when the uplink has a `tls` table.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Index into `brokers` tried first.
    preferred: usize,
    session: Option<Session>,
    /// The maximum packet size the broker announced at the last connect.
    max_packet: Option<u32>,
}

#[derive(Debug, Clone)]
struct Broker {
    host: String,
    port: u16,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl MqttSink {
    /// A sink for `config` (its `brokers` are `host:port` addresses) with
    /// default options. Does not connect yet; the first `send` does. The
    /// TLS files, if any, are read here: an unusable one is an error naming
    /// the field and file.
    pub fn new(config: &UplinkConfig, node: &str) -> Result<MqttSink, SinkError> {
        MqttSink::with_options(config, node, MqttSinkOptions::default())
    }

    /// A sink with explicit timeouts and limits.
    pub fn with_options(
        config: &UplinkConfig,
        node: &str,
        options: MqttSinkOptions,
    ) -> Result<MqttSink, SinkError> {
        if config.brokers.is_empty() {
            return Err(SinkError(format!(
                "uplink {}: brokers is empty; give host:port of the MQTT broker",
                config.name
            )));
        }
        let brokers = config
            .brokers
            .iter()
            .map(|b| {
                parse_broker(b).map_err(|e| SinkError(format!("uplink {}: broker {b:?}: {e}", config.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = config
            .tls
            .as_ref()
            .map(|tls| sluice_config::tls::client_config(tls, &format!("uplink[{:?}].tls", config.name)))
            .transpose()
            .map_err(|e| SinkError(e.0))?;
        let client_id = format!("sluice-{node}-{}", config.name);
        let inner = Inner {
            uplink: config.name.clone(),
            brokers,
            client_id: client_id.clone(),
            options,
            tls: tls.map(Arc::new),
            preferred: 0,
            session: None,
            max_packet: None,
        };
        Ok(MqttSink { client_id, inner: tokio::sync::Mutex::new(inner) })
    }

    /// The MQTT client id, `sluice-<node>-<uplink>`.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
}

impl Sink for MqttSink {
    async fn send(&self, batch: &Batch) -> Result<(), SinkError> {
        self.inner.lock().await.send(batch).await
    }

    fn reset(&self) {
        // The worker resets only between sends; a send in progress keeps
        // its session (it is dropped with its error anyway).
        if let Ok(mut inner) = self.inner.try_lock() {
            inner.session = None;
        }
    }

    fn cannot_carry(&self, record: &OutRecord, remote_topic: &str) -> Option<String> {
        // Asked between sends; during one the send itself checks.
        self.inner.try_lock().ok()?.cannot_carry(record, remote_topic)
    }
}

impl Inner {
    /// Connects to the preferred broker, then to the others in turn.
    async fn connect(&mut self) -> Result<Session, SinkError> {
        let mut failures = Vec::new();
        for i in 0..self.brokers.len() {
            let idx = (self.preferred + i) % self.brokers.len();
            let broker = &self.brokers[idx];
            match Session::open(broker, &self.client_id, &self.options, self.tls.clone()).await {
                Ok((session, max_packet)) => {
                    self.max_packet = max_packet;
                    if idx != self.preferred {
                        tracing::info!(uplink = %self.uplink, broker = %broker, "connected to another MQTT broker");
                    }
                    self.preferred = idx;
                    return Ok(session);
                }
                Err(e) => failures.push(format!("{broker}: {e}")),
            }
        }
        Err(SinkError(format!("cannot connect to any MQTT broker: {}", failures.join("; "))))
    }

    async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        check_topic(&batch.remote_topic)?;
        // Taken out for the duration of the send: if this future is dropped
        // half-way, the session (with unknown packets in flight) goes too.
        let usable = self.session.as_mut().is_some_and(Session::is_usable);
        let mut session = match self.session.take() {
            Some(s) if usable => s,
            _ => self.connect().await?,
        };
        // The broker's limit may have just been learned: fail before
        // publishing anything, and the worker skips the record next time.
        if let Some((offset, why)) = batch
            .records
            .iter()
            .find_map(|r| self.cannot_carry(r, &batch.remote_topic).map(|w| (r.offset, w)))
        {
            self.session = Some(session);
            return Err(SinkError(format!("the record at offset {offset} cannot be sent: {why}")));
        }
        session.publish_batch(batch, self.options.ack_timeout).await?;
        self.session = Some(session);
        Ok(())
    }

    fn cannot_carry(&self, record: &OutRecord, remote_topic: &str) -> Option<String> {
        let max = self.max_packet?;
        let mut publish =
            Publish::new(remote_topic, QoS::AtLeastOnce, record.value.clone(), Some(properties(record)));
        publish.pkid = 1;
        let size = publish.size();
        (size > max as usize).then(|| {
            format!("its PUBLISH packet is {size} bytes, larger than the broker's maximum packet size ({max} bytes)")
        })
    }
}

/// What the event loop task reports to the sink.
#[derive(Debug)]
enum Note {
    /// CONNACK, with the broker's maximum packet size if it gave one.
    Connected(Option<u32>),
    /// A publish was written with this packet id (in request order).
    Published(u16),
    Acked(PubAck),
    Failed(String),
}

/// One connection: the client handle, and the task polling its event loop.
#[derive(Debug)]
struct Session {
    broker: String,
    client: AsyncClient,
    notes: mpsc::Receiver<Note>,
    task: JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    async fn open(
        broker: &Broker,
        client_id: &str,
        options: &MqttSinkOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<(Session, Option<u32>), String> {
        let mut mqtt = MqttOptions::new(client_id, broker.host.clone(), broker.port);
        if let Some(tls) = tls {
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        }
        mqtt.set_keep_alive(options.keep_alive.max(Duration::from_secs(5)))
            .set_clean_start(true)
            .set_outgoing_inflight_upper_limit(options.max_inflight.max(1))
            // rumqttc counts whole seconds; our own timeout below is exact.
            .set_connection_timeout(options.connect_timeout.as_secs_f64().ceil().max(1.0) as u64);
        let (client, eventloop) = AsyncClient::new(mqtt, REQUEST_CAPACITY);
        let (tx, notes) = mpsc::channel(NOTE_CAPACITY);
        let task = tokio::spawn(drive(eventloop, tx));
        let mut session = Session { broker: broker.to_string(), client, notes, task };
        match tokio::time::timeout(options.connect_timeout, session.notes.recv()).await {
            Ok(Some(Note::Connected(max_packet))) => Ok((session, max_packet)),
            Ok(Some(Note::Failed(e))) => Err(e),
            Ok(other) => Err(format!("unexpected event before CONNACK: {other:?}")),
            Err(_) => Err(format!("no CONNACK within {:?}", options.connect_timeout)),
        }
    }

    /// Whether the connection is still up and idle (nothing left over from
    /// an earlier batch).
    fn is_usable(&mut self) -> bool {
        matches!(self.notes.try_recv(), Err(mpsc::error::TryRecvError::Empty)) && !self.task.is_finished()
    }

    /// Publishes every record and waits for every PUBACK.
    async fn publish_batch(&mut self, batch: &Batch, ack_timeout: Duration) -> Result<(), SinkError> {
        let n = batch.records.len();
        let (mut queued, mut written, mut acked) = (0, 0, 0);
        // Packet id -> index of the record it carries. Publishes are written
        // in request order, so the k-th `Published` note is record k.
        let mut in_flight: HashMap<u16, usize> = HashMap::new();
        let mut deadline = Instant::now() + ack_timeout;
        while acked < n {
            // Queue without blocking; a full queue drains as the event loop
            // writes (each write is reported as a note below).
            while let Some(record) = batch.records.get(queued) {
                let (payload, props) = (record.value.clone(), properties(record));
                match self.client.try_publish_with_properties(
                    batch.remote_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                    props,
                ) {
                    Ok(()) => queued += 1,
                    // Full, or the event loop ended (its note says why).
                    Err(_) => break,
                }
            }
            let note = match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                Ok(note) => note,
                Err(_) => {
                    return Err(self.error(
                        batch,
                        acked,
                        &format!("no PUBACK within {ack_timeout:?}; the broker stopped answering"),
                    ))
                }
            };
            match note {
                Some(Note::Published(pkid)) => {
                    if in_flight.insert(pkid, written).is_some() {
                        return Err(self.error(
                            batch,
                            acked,
                            &format!("packet id {pkid} reused before its PUBACK"),
                        ));
                    }
                    written += 1;
                }
                Some(Note::Acked(ack)) => {
                    let Some(idx) = in_flight.remove(&ack.pkid) else {
                        return Err(self.error(
                            batch,
                            acked,
                            &format!("PUBACK for unknown packet id {}", ack.pkid),
                        ));
                    };
                    if !matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
                        let why = ack.properties.and_then(|p| p.reason_string).map(|w| format!(" ({w})"));
                        let offset = batch.records.get(idx).map_or(0, |r| r.offset);
                        return Err(self.error(
                            batch,
                            acked,
                            &format!(
                                "broker refused the record at offset {offset}: {:?}{}",
                                ack.reason,
                                why.unwrap_or_default()
                            ),
                        ));
                    }
                    acked += 1;
                    deadline = Instant::now() + ack_timeout;
                }
                Some(Note::Connected(_)) => {
                    return Err(self.error(batch, acked, "unexpected reconnection while publishing"))
                }
                Some(Note::Failed(e)) => {
                    return Err(self.error(batch, acked, &format!("connection lost: {e}")))
                }
                None => return Err(self.error(batch, acked, "the MQTT event loop ended")),
            }
        }
        Ok(())
    }

    fn error(&self, batch: &Batch, acked: usize, what: &str) -> SinkError {
        SinkError(format!(
            "MQTT broker {} (topic {:?}, {} of {} records acknowledged): {what}",
            self.broker,
            batch.remote_topic,
            acked,
            batch.records.len()
        ))
    }
}

/// Polls the event loop and reports connection, writes and PUBACKs. Ends
/// with the first error: a lost connection fails the batch in flight, and
/// the next batch reconnects with a fresh session.
async fn drive(mut eventloop: EventLoop, notes: mpsc::Sender<Note>) {
    loop {
        let note = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                Note::Connected(ack.properties.and_then(|p| p.max_packet_size))
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Note::Published(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) => Note::Acked(ack),
            Ok(_) => continue,
            Err(e) => {
                let _ = notes.send(Note::Failed(e.to_string())).await;
                return;
            }
        };
        if notes.send(note).await.is_err() {
            return;
        }
    }
}

/// The MQTT 5 publish properties of a record (see the module docs).
fn properties(record: &OutRecord) -> PublishProperties {
    let mut user: Vec<(String, String)> =
        record.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
    if let Some(key) = &record.key {
        user.push(match crate::http::utf8_or_b64(key) {
            (Some(text), _) => ("sluice.key".to_owned(), text.to_owned()),
            (None, b64) => ("sluice.key_b64".to_owned(), b64.unwrap_or_default()),
        });
    }
    user.push(("sluice.timestamp".to_owned(), record.timestamp_ms.to_string()));
    PublishProperties { user_properties: user, ..PublishProperties::default() }
}

/// A topic name MQTT accepts for PUBLISH.
fn check_topic(topic: &str) -> Result<(), SinkError> {
    let bad = if topic.is_empty() {
        Some("it is empty")
    } else if topic.contains(['+', '#']) {
        Some("it contains the wildcard + or #")
    } else if topic.contains('\0') {
        Some("it contains a NUL character")
    } else if topic.len() > usize::from(u16::MAX) {
        Some("it is longer than 65535 bytes")
    } else {
        None
    };
    match bad {
        Some(why) => {
            Err(SinkError(format!("MQTT topic {topic:?} (from remote_topic) cannot be published to: {why}")))
        }
        None => Ok(()),
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn parse_broker(s: &str) -> Result<Broker, String> {
    let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}; expected host:port"))?;
    if host.is_empty() {
        return Err("missing host; expected host:port".to_owned());
    }
    if s.contains("://") {
        return Err("expected host:port, not a URL".to_owned());
    }
    Ok(Broker { host: host.to_owned(), port })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn brokers_parse_as_host_port() {
        assert_eq!(parse_broker("central:1883").map(|b| b.to_string()), Ok("central:1883".to_owned()));
        assert_eq!(parse_broker("[::1]:1883").map(|b| b.to_string()), Ok("[::1]:1883".to_owned()));
        assert!(parse_broker("central").is_err());
        assert!(parse_broker("central:x").is_err());
        assert!(parse_broker(":1883").is_err());
        assert!(parse_broker("mqtt://central:1883").is_err());
    }

    #[test]
    fn wildcard_topics_are_refused() {
        assert!(check_topic("edge/pi-01/alarms").is_ok());
        assert!(check_topic("edge/+/alarms").is_err());
        assert!(check_topic("edge/#").is_err());
        assert!(check_topic("").is_err());
    }

    #[test]
    fn properties_carry_headers_key_and_timestamp() {
        let rec = OutRecord {
            offset: 7,
            key: Some(vec![0xff, 0x00]),
            value: b"v".to_vec(),
            headers: vec![("h".to_owned(), b"x".to_vec()), ("sluice.offset".to_owned(), b"7".to_vec())],
            timestamp_ms: 1234,
        };
        let props = properties(&rec);
        let want: Vec<(String, String)> =
            [("h", "x"), ("sluice.offset", "7"), ("sluice.key_b64", "/wA="), ("sluice.timestamp", "1234")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        assert_eq!(props.user_properties, want);
    }
}
