//! MQTT publishers (rumqttc) for the MQTT benches, against any MQTT 3.1.1
//! broker.
//!
//! Each publisher is one connection with its own event loop task and a
//! producer task. The producer pushes publishes into rumqttc's request
//! channel (capacity = the in-flight limit); the event loop writes at most
//! `inflight` unacknowledged QoS 1 publishes and blocks further requests
//! until PUBACKs come back, so every connection keeps up to `inflight`
//! publishes in flight. Latency is measured per packet id, from the
//! moment the event loop wrote the publish to the moment its PUBACK was
//! read.

use super::payload;
use super::stats::Latencies;
use anyhow::Context as _;
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// Connection errors logged per publisher before going quiet.
const LOGGED_ERRORS: u64 = 3;

/// A group of identical publishers.
#[derive(Debug, Clone)]
pub struct Publishers {
    /// Broker address.
    pub addr: SocketAddr,
    /// Connections.
    pub count: usize,
    /// Unacknowledged QoS 1 publishes per connection (1..=65535).
    pub inflight: u16,
    /// QoS of every publish.
    pub qos: QoS,
    /// Payload size in bytes (a JSON stamp padded to this size).
    pub payload: usize,
    /// Publishes per second per connection; 0 = as fast as acknowledged.
    pub rate: f64,
    /// Topic; `{i}` is replaced by the publisher's index.
    pub topic: String,
    /// Service index written into every payload.
    pub service: u32,
    /// Client ids are `{client_prefix}-{i}`.
    pub client_prefix: String,
}

/// Counters of a running group.
#[derive(Debug, Default)]
pub struct PubCounters {
    /// Publishes written to the network.
    pub sent: Arc<AtomicU64>,
    /// PUBACKs received.
    pub acked: Arc<AtomicU64>,
    /// Connection errors.
    pub errors: Arc<AtomicU64>,
}

/// A started group of publishers.
#[derive(Debug)]
pub struct Running {
    /// Its counters.
    pub counters: Arc<PubCounters>,
    recording: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Latencies>>,
}

impl Running {
    /// Keeps latency samples from now on (discarding a warm-up).
    pub fn record(&self) {
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops sending, closes the connections and returns the latency
    /// samples recorded.
    pub async fn stop(self) -> Latencies {
        let _ = self.stop.send(true);
        let mut all = Latencies::default();
        for t in self.tasks {
            if let Ok(l) = t.await {
                all.append(l);
            }
        }
        all
    }
}

impl Publishers {
    /// Connects every publisher (waits for all CONNACKs), then starts
    /// sending.
    pub async fn start(&self) -> anyhow::Result<Running> {
        let spec = Arc::new(self.clone());
        let counters = Arc::new(PubCounters::default());
        let recording = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(false);
        let (go, go_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut connected = Vec::new();
        for i in 0..self.count {
            let (tx, rx) = oneshot::channel();
            connected.push(rx);
            let ctx = Ctx {
                spec: spec.clone(),
                index: i,
                counters: counters.clone(),
                recording: recording.clone(),
                stop: stop_rx.clone(),
                go: go_rx.clone(),
            };
            tasks.push(tokio::spawn(publisher(ctx, tx)));
        }
        for rx in connected {
            rx.await.context("a publisher task ended before connecting")??;
        }
        let _ = go.send(true);
        Ok(Running { counters, recording, stop, tasks })
    }
}

struct Ctx {
    spec: Arc<Publishers>,
    index: usize,
    counters: Arc<PubCounters>,
    recording: Arc<AtomicBool>,
    stop: watch::Receiver<bool>,
    go: watch::Receiver<bool>,
}

/// rumqttc options of one bench client.
pub(super) fn options(addr: SocketAddr, client_id: String, max_packet: usize) -> MqttOptions {
    let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    let max = max_packet.max(64 << 10);
    opts.set_max_packet_size(max, max);
    opts
}

/// Polls until the CONNACK; an error names the broker and the reason.
pub(super) async fn connect(eventloop: &mut rumqttc::EventLoop, addr: SocketAddr) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Packet::ConnAck(ack)))) if ack.code == ConnectReturnCode::Success => Ok(()),
        Ok(Ok(other)) => anyhow::bail!("MQTT broker {addr} answered the CONNECT with {other:?}"),
        Ok(Err(e)) => anyhow::bail!("cannot connect to the MQTT broker {addr}: {e}"),
        Err(_) => anyhow::bail!("MQTT broker {addr} did not answer the CONNECT within 10 s"),
    }
}

/// One connection: connects, reports, then runs its event loop until
/// stopped, timing each publish by packet id.
async fn publisher(mut ctx: Ctx, connected: oneshot::Sender<anyhow::Result<()>>) -> Latencies {
    let spec = ctx.spec.clone();
    let mut opts =
        options(spec.addr, format!("{}-{}", spec.client_prefix, ctx.index), spec.payload + spec.topic.len());
    opts.set_inflight(spec.inflight.max(1));
    let (client, mut eventloop) = AsyncClient::new(opts, usize::from(spec.inflight.max(1)));
    if let Err(e) = connect(&mut eventloop, spec.addr).await {
        let _ = connected.send(Err(e));
        return Latencies::default();
    }
    let _ = connected.send(Ok(()));
    let producer = tokio::spawn(produce(client.clone(), spec.clone(), ctx.index, ctx.go, ctx.stop.clone()));
    let mut sent_at: Vec<Option<Instant>> = vec![None; usize::from(spec.inflight) + 2];
    let mut latencies = Latencies::default();
    let mut errors = 0u64;
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = ctx.stop.changed() => break,
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                ctx.counters.sent.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = sent_at.get_mut(usize::from(pkid)) {
                    *slot = Some(Instant::now());
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                ctx.counters.acked.fetch_add(1, Ordering::Relaxed);
                let sent = sent_at.get_mut(usize::from(ack.pkid)).and_then(Option::take);
                if let (Some(t), true) = (sent, ctx.recording.load(Ordering::Relaxed)) {
                    latencies.push(t.elapsed().as_micros() as u64);
                }
            }
            Ok(_) => {}
            Err(e) => {
                ctx.counters.errors.fetch_add(1, Ordering::Relaxed);
                errors += 1;
                if errors <= LOGGED_ERRORS {
                    tracing::warn!(publisher = ctx.index, error = %e, "MQTT publisher connection failed; reconnecting");
                }
                // In-flight packet ids restart with the new session.
                sent_at.iter_mut().for_each(|s| *s = None);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    producer.abort();
    disconnect(client, eventloop).await;
    latencies
}

/// Sends a DISCONNECT and polls until the broker closes the connection
/// (at most 1 s), so it sees a clean close rather than a reset.
pub(super) async fn disconnect(client: AsyncClient, mut eventloop: rumqttc::EventLoop) {
    // The request channel may be full: queue the DISCONNECT from a task
    // while the event loop below makes room.
    tokio::spawn(async move { client.disconnect().await });
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if eventloop.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// Feeds publishes into the request channel, at `rate` or as fast as the
/// event loop takes them.
async fn produce(
    client: AsyncClient,
    spec: Arc<Publishers>,
    index: usize,
    mut go: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    if go.wait_for(|g| *g).await.is_err() {
        return;
    }
    let topic = spec.topic.replace("{i}", &index.to_string());
    let period = (spec.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / spec.rate));
    // Spread the first publish of rate-limited publishers over one period.
    let offset = period.map_or(Duration::ZERO, |p| p.mul_f64(index as f64 / spec.count.max(1) as f64));
    let mut epoch = Instant::now() + offset;
    let mut due = 0u64;
    let mut seq = 0u64;
    while !*stop.borrow() {
        if let Some(p) = period {
            let at = epoch + p.mul_f64(due as f64);
            let now = Instant::now();
            if at > now {
                tokio::time::sleep_until(at.into()).await;
            } else if now - at > Duration::from_secs(1) {
                // Fell more than a second behind (the broker is slower than
                // the rate): restart the schedule instead of bursting.
                epoch = now;
                due = 0;
            }
            due += 1;
        }
        let body = payload::encode(spec.service, seq, spec.payload);
        if client.publish(topic.as_str(), spec.qos, false, body).await.is_err() {
            return;
        }
        seq += 1;
    }
}
