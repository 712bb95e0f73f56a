//! The consumer side of the priority bench. It drains at a fixed rate
//! (a token bucket), so a flood faster than the drain builds a backlog,
//! and records for every message its service, when it was published and
//! when the consumer got it.
//!
//! - [`Source::Sluice`]: sluice's durable consumer API, one consumer group:
//!   `POST /v1/groups/{group}/fetch` (long-poll; records across the topics
//!   in priority order) for as many records as the bucket allows, then
//!   `POST .../commit`, as a careful consumer does. The group first
//!   commits the high watermarks, so only new records count.
//! - [`Source::Sse`]: sluice's push stream over Server-Sent Events
//!   (`GET /v1/groups/{group}/stream`), read only as fast as the bucket
//!   allows (what is not taken waits in the sockets and in sluice), with
//!   a commit of what was taken every `commit_every`.
//! - [`Source::Mqtt`]: a subscriber on a broker (QoS 1 by default); the
//!   broker queues in arrival order what the consumer has not read yet.

use super::deliveries::{Call, Deliveries};
use super::http::Conn;
use super::payload;
use super::stats::{wall_us, TokenBucket};
use anyhow::Context as _;
use hyper::body::Bytes;
use hyper::Method;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the sluice consumer's fetch waits for records.
const FETCH_WAIT_MS: u64 = 200;
/// The token bucket holds at most this much of a second's drain.
const BURST_SECONDS: f64 = 0.25;

/// Where the consumer reads from.
#[derive(Debug, Clone)]
pub enum Source {
    /// sluice's HTTP consumer-group API.
    Sluice {
        /// sluice's HTTP address.
        http: SocketAddr,
        /// Consumer group.
        group: String,
        /// Log topics to read.
        topics: Vec<String>,
    },
    /// sluice's SSE group stream.
    Sse {
        /// sluice's HTTP address.
        http: SocketAddr,
        /// Consumer group.
        group: String,
        /// Log topics to read.
        topics: Vec<String>,
        /// Interval between commits.
        commit_every: Duration,
    },
    /// An MQTT subscription.
    Mqtt {
        /// Broker address.
        addr: SocketAddr,
        /// Topic filters.
        filters: Vec<String>,
        /// Subscription QoS.
        qos: QoS,
        /// A persistent session (clean session 0).
        persistent: bool,
    },
}

impl Source {
    /// A short name for reports.
    pub fn label(&self) -> String {
        match self {
            Source::Sluice { .. } => "sluice-http".to_owned(),
            Source::Sse { commit_every, .. } => format!("sluice-sse-commit-{}ms", commit_every.as_millis()),
            Source::Mqtt { qos, persistent: false, .. } => format!("mqtt-qos{}", *qos as u8),
            Source::Mqtt { qos, persistent: true, .. } => format!("mqtt-qos{}-persistent", *qos as u8),
        }
    }
}

/// A running consumer.
#[derive(Debug)]
pub struct Consumer {
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Consumer {
    /// Connects (and subscribes or positions the group), then drains at
    /// `drain_rate` records/s into `deliveries`.
    pub async fn start(
        source: Source,
        drain_rate: f64,
        deliveries: Arc<Deliveries>,
    ) -> anyhow::Result<Consumer> {
        let (stop, stop_rx) = watch::channel(false);
        let bucket = TokenBucket::new(drain_rate, drain_rate * BURST_SECONDS);
        let task = match source {
            Source::Sluice { http, group, topics } => {
                let sluice = SluiceConsumer::open(http, group, topics).await?;
                tokio::spawn(sluice.run(bucket, deliveries, stop_rx))
            }
            Source::Sse { http, group, topics, commit_every } => {
                let sluice = SluiceConsumer::open(http, group, topics).await?;
                let stream = SseStream::open(http, &sluice.group, &sluice.topics).await?;
                tokio::spawn(sse_loop(sluice, stream, commit_every, bucket, deliveries, stop_rx))
            }
            Source::Mqtt { addr, filters, qos, persistent } => {
                let (client, eventloop) = subscribe(addr, &filters, qos, persistent).await?;
                tokio::spawn(mqtt_loop(client, eventloop, bucket, deliveries, stop_rx))
            }
        };
        Ok(Consumer { stop, task })
    }

    /// Stops consuming; fails if the consumer had failed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("the consumer task panicked")?
    }
}

struct SluiceConsumer {
    conn: Conn,
    group: String,
    topics: Vec<String>,
    addr: SocketAddr,
}

impl SluiceConsumer {
    /// Connects and commits the group to the current high watermarks.
    async fn open(addr: SocketAddr, group: String, topics: Vec<String>) -> anyhow::Result<SluiceConsumer> {
        let mut c = SluiceConsumer { conn: Conn::open(addr).await?, group, topics, addr };
        let path = format!("/v1/groups/{}/offsets?topics={}", c.group, c.topics.join(","));
        let body = c.call(Method::GET, &path, None).await?;
        let offsets: Vec<serde_json::Value> = body["offsets"]
            .as_array()
            .context("GET .../offsets: no \"offsets\" list")?
            .iter()
            .map(|o| {
                serde_json::json!({ "topic": o["topic"], "partition": o["partition"], "offset": o["high_watermark"] })
            })
            .collect();
        let commit = format!("/v1/groups/{}/commit", c.group);
        c.call(Method::POST, &commit, Some(serde_json::json!({ "offsets": offsets }))).await?;
        Ok(c)
    }

    /// One API call; anything but 200 is an error naming the call.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let (status, resp) = self.conn.request(method.clone(), path, body).await?;
        anyhow::ensure!(
            status == 200,
            "{method} http://{}{path} answered {status}: {}",
            self.addr,
            String::from_utf8_lossy(&resp)
        );
        Ok(serde_json::from_slice(&resp)?)
    }

    async fn run(
        mut self,
        mut bucket: TokenBucket,
        deliveries: Arc<Deliveries>,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let fetch = format!("/v1/groups/{}/fetch", self.group);
        let commit = format!("/v1/groups/{}/commit", self.group);
        while !*stop.borrow() {
            let n = bucket.ready().await.min(10_000);
            let req =
                serde_json::json!({ "topics": self.topics, "max_records": n, "wait_ms": FETCH_WAIT_MS });
            let asked = std::time::Instant::now();
            let body = tokio::select! {
                b = self.call(Method::POST, &fetch, Some(req)) => b?,
                _ = stop.changed() => break,
            };
            let got = wall_us();
            let fetch_us = asked.elapsed().as_micros() as u64;
            let records = body["records"].as_array().context("fetch: no \"records\" list")?;
            // Next offset to read per (topic, partition).
            let mut next: BTreeMap<(String, u64), u64> = BTreeMap::new();
            for r in records {
                if let Some(stamp) = payload::from_value(&r["value"]) {
                    deliveries.record(stamp, got, r["timestamp"].as_u64());
                }
                let (Some(topic), Some(p), Some(o)) =
                    (r["topic"].as_str(), r["partition"].as_u64(), r["offset"].as_u64())
                else {
                    anyhow::bail!("fetch: a record without topic, partition or offset: {r}");
                };
                let e = next.entry((topic.to_owned(), p)).or_insert(0);
                *e = (*e).max(o + 1);
            }
            bucket.take(records.len());
            let mut call = Call { at: got, fetch_us, commit_us: 0, records: records.len() };
            if !next.is_empty() {
                let offsets: Vec<_> = next
                    .into_iter()
                    .map(|((topic, partition), offset)| {
                        serde_json::json!({ "topic": topic, "partition": partition, "offset": offset })
                    })
                    .collect();
                let committing = std::time::Instant::now();
                self.call(Method::POST, &commit, Some(serde_json::json!({ "offsets": offsets }))).await?;
                call.commit_us = committing.elapsed().as_micros() as u64;
            }
            deliveries.call(call);
        }
        Ok(())
    }
}

/// A Server-Sent Events group stream, read on demand.
struct SseStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    events: std::collections::VecDeque<serde_json::Value>,
}

impl SseStream {
    async fn open(addr: SocketAddr, group: &str, topics: &[String]) -> anyhow::Result<SseStream> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = format!("/v1/groups/{group}/stream?topics={}", topics.join(","));
        let req = hyper::Request::builder()
            .uri(&path)
            .header("host", addr.to_string())
            .header("accept", "text/event-stream")
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        anyhow::ensure!(resp.status() == 200, "GET http://{addr}{path} answered {}", resp.status());
        Ok(SseStream { body: resp.into_body(), buf: Vec::new(), events: Default::default() })
    }

    /// The next record, reading from the connection only when none is
    /// buffered.
    async fn next(&mut self) -> anyhow::Result<serde_json::Value> {
        use http_body_util::BodyExt as _;
        loop {
            if let Some(r) = self.events.pop_front() {
                return Ok(r);
            }
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let data: Vec<&str> =
                    text.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim_start).collect();
                if !data.is_empty() {
                    self.events.push_back(serde_json::from_str(&data.join("\n"))?);
                }
            }
            if !self.events.is_empty() {
                continue;
            }
            let frame = self.body.frame().await.context("the SSE stream ended")??;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// Takes records from the stream at the bucket's pace; commits what it took
/// every `commit_every`.
async fn sse_loop(
    mut sluice: SluiceConsumer,
    mut stream: SseStream,
    commit_every: Duration,
    mut bucket: TokenBucket,
    deliveries: Arc<Deliveries>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let commit = format!("/v1/groups/{}/commit", sluice.group);
    let mut next: BTreeMap<(String, u64), u64> = BTreeMap::new();
    let mut last_commit = tokio::time::Instant::now();
    let mut taken = 0;
    while !*stop.borrow() {
        // Commits are due on time, also while no record comes.
        let due = last_commit + commit_every;
        let r = tokio::select! {
            r = stream.next() => Some(r?),
            _ = tokio::time::sleep_until(due), if !next.is_empty() => None,
            _ = stop.changed() => break,
        };
        let Some(r) = r else {
            let offsets: Vec<_> = std::mem::take(&mut next)
                .into_iter()
                .map(|((topic, partition), offset)| {
                    serde_json::json!({ "topic": topic, "partition": partition, "offset": offset })
                })
                .collect();
            sluice.call(Method::POST, &commit, Some(serde_json::json!({ "offsets": offsets }))).await?;
            last_commit = tokio::time::Instant::now();
            continue;
        };
        bucket.ready().await;
        bucket.take(1);
        let got = wall_us();
        if let Some(stamp) = payload::from_value(&r["value"]) {
            deliveries.record(stamp, got, r["timestamp"].as_u64());
        }
        if let (Some(topic), Some(p), Some(o)) =
            (r["topic"].as_str(), r["partition"].as_u64(), r["offset"].as_u64())
        {
            let e = next.entry((topic.to_owned(), p)).or_insert(0);
            *e = (*e).max(o + 1);
        }
        taken += 1;
        if last_commit.elapsed() >= commit_every && !next.is_empty() {
            let offsets: Vec<_> = std::mem::take(&mut next)
                .into_iter()
                .map(|((topic, partition), offset)| {
                    serde_json::json!({ "topic": topic, "partition": partition, "offset": offset })
                })
                .collect();
            let committing = std::time::Instant::now();
            sluice.call(Method::POST, &commit, Some(serde_json::json!({ "offsets": offsets }))).await?;
            let commit_us = committing.elapsed().as_micros() as u64;
            deliveries.call(Call { at: got, fetch_us: 0, commit_us, records: taken });
            taken = 0;
            last_commit = tokio::time::Instant::now();
        }
    }
    Ok(())
}

/// Connects a subscriber and waits for the SUBACK of every filter.
async fn subscribe(
    addr: SocketAddr,
    filters: &[String],
    qos: QoS,
    persistent: bool,
) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    let id = format!("sluice-bench-consumer-{}", std::process::id());
    let mut opts = super::publish::options(addr, id, 1 << 20);
    opts.set_clean_session(!persistent);
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    super::publish::connect(&mut eventloop, addr).await?;
    for f in filters {
        client.subscribe(f.as_str(), qos).await?;
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked < filters.len() {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("subscribing on the MQTT broker {addr} failed: {e}"),
            Err(_) => anyhow::bail!("the MQTT broker {addr} did not acknowledge the subscriptions in 10 s"),
        }
    }
    Ok((client, eventloop))
}

async fn mqtt_loop(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    mut bucket: TokenBucket,
    deliveries: Arc<Deliveries>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        let event = tokio::select! {
            e = eventloop.poll() => e,
            _ = stop.changed() => {
                super::publish::disconnect(client, eventloop).await;
                return Ok(());
            }
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                // Take the message only when there is capacity: what is not
                // taken waits at the broker, in arrival order.
                bucket.ready().await;
                bucket.take(1);
                if let Some(stamp) = payload::decode(&p.payload) {
                    deliveries.record(stamp, wall_us(), None);
                }
            }
            Ok(_) => {}
            Err(e) => anyhow::bail!("the MQTT consumer lost its connection: {e}"),
        }
    }
}
