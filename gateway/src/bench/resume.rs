//! `sluice bench mqtt-resume`: a subscriber with a persistent session is
//! away while a bulk flood with alarms among it is published, then comes
//! back. What it gets first, how soon it holds every alarm, and how fast it
//! catches up, against sluice (which serves the session from its log in
//! priority order) or any MQTT broker (which queues it first in, first
//! out; Mosquitto needs `max_queued_messages` above the flood).
//!
//! Every publish is QoS 1 from one connection with `inflight` in flight;
//! one alarm every `bulk / alarms` bulk publishes. The subscriber takes
//! what arrives as fast as it comes, or at `drain_rate` records/s.

use super::payload;
use super::stats::TokenBucket;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The scenario.
#[derive(Debug, Clone)]
pub struct ResumeBench {
    /// The broker.
    pub mqtt: SocketAddr,
    /// Topic of the bulk publishes.
    pub bulk_topic: String,
    /// Topic of the alarms.
    pub alarm_topic: String,
    /// Bulk publishes while the subscriber is away.
    pub bulk: u64,
    /// Alarms among them.
    pub alarms: u64,
    /// Payload bytes.
    pub payload: usize,
    /// Publishes in flight.
    pub inflight: u16,
    /// Records per second the subscriber takes (0: as they come).
    pub drain_rate: f64,
}

/// What the subscriber saw after it came back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResumeReport {
    /// The CONNACK said the session was kept.
    pub session_present: bool,
    /// Publishes acknowledged per second while the subscriber was away.
    pub published_per_s: f64,
    /// Distinct bulk publishes received, of those published.
    pub bulk_received: u64,
    pub bulk_published: u64,
    /// Distinct alarms received, of those published.
    pub alarms_received: u64,
    pub alarms_published: u64,
    /// Deliveries of a publish already received.
    pub duplicates: u64,
    /// From the CONNACK until the first delivery (ms).
    pub first_ms: f64,
    /// From the CONNACK until the subscriber held every alarm (ms);
    /// `None` when some never came.
    pub all_alarms_ms: Option<f64>,
    /// How many deliveries came before the last alarm.
    pub last_alarm_position: Option<u64>,
    /// From the CONNACK until the subscriber held everything (s).
    pub all_s: f64,
    /// Deliveries per second while catching up.
    pub catch_up_per_s: f64,
}

impl std::fmt::Display for ResumeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "session present: {}", self.session_present)?;
        writeln!(f, "published while away: {:.0}/s", self.published_per_s)?;
        writeln!(
            f,
            "received: bulk {} of {}, alarms {} of {}, {} duplicates",
            self.bulk_received,
            self.bulk_published,
            self.alarms_received,
            self.alarms_published,
            self.duplicates
        )?;
        writeln!(f, "first delivery after {:.1} ms", self.first_ms)?;
        match (self.all_alarms_ms, self.last_alarm_position) {
            (Some(ms), Some(pos)) => {
                writeln!(f, "every alarm after {ms:.1} ms (the last one was delivery #{pos})")?
            }
            _ => writeln!(f, "not every alarm arrived")?,
        }
        writeln!(f, "everything after {:.2} s ({:.0} deliveries/s)", self.all_s, self.catch_up_per_s)
    }
}

const ALARM: u32 = 0;
const BULK: u32 = 1;
/// The subscriber gives up after this long without a delivery.
const QUIET: Duration = Duration::from_secs(5);

/// Runs the scenario once.
pub async fn run(b: ResumeBench) -> anyhow::Result<ResumeReport> {
    anyhow::ensure!(b.alarms > 0 && b.bulk >= b.alarms, "--alarms must be between 1 and --bulk");
    let id = format!("sluice-bench-resume-{}", std::process::id());
    // Subscribe with a persistent session, then leave.
    let (client, mut events) = session(&b, &id).await?;
    for topic in [&b.bulk_topic, &b.alarm_topic] {
        client.subscribe(topic.as_str(), QoS::AtLeastOnce).await?;
    }
    let mut acked = 0;
    while acked < 2 {
        if let Event::Incoming(Packet::SubAck(_)) = poll(&mut events, "subscribing").await? {
            acked += 1;
        }
    }
    super::publish::disconnect(client, events).await;
    let published_per_s = publish(&b).await?;
    // Back.
    let (_client, mut events) = session(&b, &id).await?;
    let (connected, session_present) = loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = poll(&mut events, "reconnecting").await? {
            break (Instant::now(), ack.session_present);
        }
    };
    let mut bucket = (b.drain_rate > 0.0).then(|| TokenBucket::new(b.drain_rate, b.drain_rate * 0.25));
    let (mut seen, mut duplicates, mut n) = (HashSet::new(), 0u64, 0u64);
    let (mut alarms, mut bulk) = (0u64, 0u64);
    let (mut first, mut all_alarms, mut last_alarm, mut last) = (None, None, None, connected);
    while alarms + bulk < b.alarms + b.bulk {
        let event = match tokio::time::timeout(QUIET, events.poll()).await {
            Ok(event) => event?,
            Err(_) => break,
        };
        let Event::Incoming(Packet::Publish(p)) = event else { continue };
        if let Some(bucket) = &mut bucket {
            bucket.ready().await;
            bucket.take(1);
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        n += 1;
        let Some(stamp) = payload::decode(&p.payload) else { continue };
        if !seen.insert((stamp.svc, stamp.seq)) {
            duplicates += 1;
            continue;
        }
        if stamp.svc == ALARM {
            alarms += 1;
            if alarms == b.alarms {
                all_alarms = Some(now);
                last_alarm = Some(n);
            }
        } else {
            bulk += 1;
        }
    }
    let ms = |t: Instant| t.saturating_duration_since(connected).as_secs_f64() * 1000.0;
    let all_s = last.saturating_duration_since(connected).as_secs_f64();
    Ok(ResumeReport {
        session_present,
        published_per_s,
        bulk_received: bulk,
        bulk_published: b.bulk,
        alarms_received: alarms,
        alarms_published: b.alarms,
        duplicates,
        first_ms: first.map_or(0.0, ms),
        all_alarms_ms: all_alarms.map(ms),
        last_alarm_position: last_alarm,
        all_s,
        catch_up_per_s: if all_s > 0.0 { n as f64 / all_s } else { 0.0 },
    })
}

async fn session(b: &ResumeBench, id: &str) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let mut opts = super::publish::options(b.mqtt, id.to_owned(), b.payload + 256);
    opts.set_clean_session(false);
    opts.set_inflight(b.inflight.max(1));
    Ok(AsyncClient::new(opts, 64))
}

async fn poll(events: &mut rumqttc::EventLoop, what: &str) -> anyhow::Result<Event> {
    match tokio::time::timeout(Duration::from_secs(10), events.poll()).await {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(e)) => anyhow::bail!("{what}: {e}"),
        Err(_) => anyhow::bail!("{what}: the broker did not answer within 10 s"),
    }
}

/// Publishes the flood, one alarm every `bulk / alarms` bulk publishes;
/// returns the acknowledged publishes per second.
async fn publish(b: &ResumeBench) -> anyhow::Result<f64> {
    let id = format!("sluice-bench-resume-pub-{}", std::process::id());
    let mut opts = super::publish::options(b.mqtt, id, b.payload + 256);
    opts.set_inflight(b.inflight.max(1));
    let (client, mut events) = AsyncClient::new(opts, usize::from(b.inflight.max(1)));
    super::publish::connect(&mut events, b.mqtt).await?;
    let total = b.bulk + b.alarms;
    let every = b.bulk / b.alarms;
    let (bulk_topic, alarm_topic, size) = (b.bulk_topic.clone(), b.alarm_topic.clone(), b.payload);
    let (alarms, bulk) = (b.alarms, b.bulk);
    let started = Instant::now();
    let feeder = tokio::spawn(async move {
        let mut sent_alarms = 0;
        for i in 0..bulk {
            client
                .publish(bulk_topic.as_str(), QoS::AtLeastOnce, false, payload::encode(BULK, i, size))
                .await?;
            if (i + 1) % every == 0 && sent_alarms < alarms {
                let alarm = payload::encode(ALARM, sent_alarms, size);
                client.publish(alarm_topic.as_str(), QoS::AtLeastOnce, false, alarm).await?;
                sent_alarms += 1;
            }
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < total {
        if let Event::Incoming(Packet::PubAck(_)) = poll(&mut events, "publishing").await? {
            acked += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let client = feeder.await??;
    super::publish::disconnect(client, events).await;
    Ok(total as f64 / elapsed.max(1e-9))
}
