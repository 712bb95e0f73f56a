//! MQTT publishers (rumqttc) and `sluice bench mqtt`: acknowledged QoS 1
//! throughput and publish -> PUBACK latency against any MQTT 3.1.1 broker.
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
use super::stats::{sample_each_second, Latencies, Meter, Summary};
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
    let _ = client.try_disconnect();
    latencies
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

/// `sluice bench mqtt`: options beyond the publishers.
#[derive(Debug, Clone)]
pub struct MqttBench {
    /// The publishers.
    pub publishers: Publishers,
    /// Seconds measured.
    pub duration: Duration,
    /// Seconds sent before measuring (not counted).
    pub warmup: Duration,
    /// sluice's HTTP address: also report what sluice persisted.
    pub sluice_http: Option<SocketAddr>,
}

/// The outcome of `sluice bench mqtt`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MqttReport {
    /// Publishers.
    pub publishers: usize,
    /// In flight per publisher.
    pub inflight: u16,
    /// QoS.
    pub qos: u8,
    /// Payload bytes.
    pub payload: usize,
    /// Acknowledged (QoS 1) or sent (QoS 0) publishes per second over the window.
    pub msgs_per_s: f64,
    /// Median of the per-second rates.
    pub median_msgs_per_s: f64,
    /// The per-second rates.
    pub per_second: Vec<f64>,
    /// Publish -> PUBACK latency (QoS 1).
    pub ack_latency: Summary,
    /// Connection errors.
    pub errors: u64,
    /// With `--sluice-http`: records persisted during the run and after, and
    /// publishes sluice dropped (sums over all services).
    pub sluice: Option<SluiceIngest>,
}

/// What sluice did with the publishes of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SluiceIngest {
    /// Publishes sluice's ingest link received.
    pub received: u64,
    /// Records persisted.
    pub persisted: u64,
    /// Publishes dropped (full queues and other reasons).
    pub dropped: u64,
    /// Seconds after the end of the window until persisting caught up.
    pub catch_up_s: f64,
}

/// Runs `sluice bench mqtt`.
pub async fn run(bench: MqttBench) -> anyhow::Result<MqttReport> {
    let p = &bench.publishers;
    let before = match bench.sluice_http {
        Some(a) => Some(super::http::metric_sums(a).await?),
        None => None,
    };
    let running = p.start().await?;
    let counted = if p.qos == QoS::AtMostOnce { &running.counters.sent } else { &running.counters.acked };
    if !bench.warmup.is_zero() {
        tokio::time::sleep(bench.warmup).await;
    }
    running.record();
    let meters = [
        Meter::new(if p.qos == QoS::AtMostOnce { "sent" } else { "acked" }, counted.clone()),
        Meter::new("errors", running.counters.errors.clone()),
    ];
    let rates = sample_each_second("mqtt", &meters, bench.duration).await;
    let errors = running.counters.errors.load(Ordering::Relaxed);
    let latencies = running.stop().await;
    let sluice = match (bench.sluice_http, before) {
        (Some(addr), Some(before)) => Some(sluice_ingest(addr, &before).await?),
        _ => None,
    };
    Ok(MqttReport {
        publishers: p.count,
        inflight: p.inflight,
        qos: p.qos as u8,
        payload: p.payload,
        msgs_per_s: rates[0].average,
        median_msgs_per_s: rates[0].median(),
        per_second: rates[0].per_second.clone(),
        ack_latency: latencies.summary(),
        errors,
        sluice,
    })
}

/// Waits (up to 30 s) until sluice has persisted or dropped everything
/// its ingest link received, and reports the counts of the run.
async fn sluice_ingest(
    addr: SocketAddr,
    before: &std::collections::HashMap<String, f64>,
) -> anyhow::Result<SluiceIngest> {
    let ended = Instant::now();
    let delta = |now: &std::collections::HashMap<String, f64>, name: &str| {
        (now.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)).max(0.0) as u64
    };
    let mut last_received = u64::MAX;
    loop {
        let now = super::http::metric_sums(addr).await?;
        let received = delta(&now, "sluice_mqtt_received_total");
        let persisted = delta(&now, "sluice_service_records_in_total");
        let dropped = delta(&now, "sluice_mqtt_dropped_total");
        let settled = received == last_received && persisted + dropped >= received;
        if settled || ended.elapsed() > Duration::from_secs(30) {
            return Ok(SluiceIngest {
                received,
                persisted,
                dropped,
                catch_up_s: ended.elapsed().as_secs_f64(),
            });
        }
        last_received = received;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl std::fmt::Display for MqttReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.qos == 0 { "sent" } else { "acknowledged" };
        writeln!(
            f,
            "{} publishers x {} in flight, QoS {}, {} B payload: {what} {:.0} msg/s (median per second {:.0})",
            self.publishers, self.inflight, self.qos, self.payload, self.msgs_per_s, self.median_msgs_per_s
        )?;
        if self.qos > 0 {
            let l = &self.ack_latency;
            writeln!(
                f,
                "publish -> PUBACK latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
                l.p50_ms, l.p99_ms, l.max_ms, l.n
            )?;
        }
        if let Some(s) = &self.sluice {
            writeln!(
                f,
                "sluice: received {}, persisted {}, dropped {} (caught up {:.1} s after the run)",
                s.received, s.persisted, s.dropped, s.catch_up_s
            )?;
        }
        write!(f, "connection errors: {}", self.errors)
    }
}
