//! `sluice bench mqtt-priority`: several services publish over MQTT, each
//! on its own topic at its own rate, while one consumer drains at a fixed
//! rate ([`super::consume`]). First the probe service (the express alarms)
//! publishes alone: its publish -> consumer latency idle. Then every
//! service publishes (a flood faster than the drain builds a backlog) and
//! the same latency is measured loaded, with the share of deliveries each
//! service got. Against sluice the consumer reads the group API in
//! priority order; against a plain broker (Mosquitto) it subscribes, and
//! the same load goes through a first-in-first-out queue.

use super::consume::{Consumer, Source};
use super::deliveries::{CallStats, Deliveries, Split};
use super::publish::{Publishers, Running};
use super::stats::{sample_each_second, wall_us, Meter, Summary};
use rumqttc::QoS;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// One publishing service: `NAME:MQTT_TOPIC:RATE[/qQOS][/xCONNECTIONS]`
/// on the command line, e.g. `bulk:plant/{i}/bulk:8000/q0/x4` (8000/s in
/// all at QoS 0 from 4 connections; `{i}` is the connection's index).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// Name in reports.
    pub name: String,
    /// MQTT topic it publishes to.
    pub topic: String,
    /// Publishes per second, all connections together (0 = as fast as
    /// acknowledged).
    pub rate: f64,
    /// QoS of its publishes (default: `--qos`).
    pub qos: Option<QoS>,
    /// Publishing connections (default 1).
    pub connections: usize,
}

impl std::str::FromStr for ServiceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ServiceSpec, String> {
        let shape = || {
            format!(
                "{s:?}: expected NAME:MQTT_TOPIC:RATE[/qQOS][/xCONNECTIONS], e.g. alarms:alarms/dev-1:20/q1"
            )
        };
        let (name, rest) = s.split_once(':').ok_or_else(shape)?;
        let (topic, rate) = rest.rsplit_once(':').ok_or_else(shape)?;
        let mut parts = rate.split('/');
        let rate = parts.next().unwrap_or_default();
        let rate: f64 = rate.parse().map_err(|_| format!("{s:?}: rate {rate:?} is not a number"))?;
        if name.is_empty() || topic.is_empty() || !(rate >= 0.0 && rate.is_finite()) {
            return Err(shape());
        }
        let (mut qos, mut connections) = (None, 1);
        for part in parts {
            match (part.get(..1), part.get(1..)) {
                (Some("q"), Some("0")) => qos = Some(QoS::AtMostOnce),
                (Some("q"), Some("1")) => qos = Some(QoS::AtLeastOnce),
                (Some("x"), Some(n)) => connections = n.parse().ok().filter(|n| *n > 0).ok_or_else(shape)?,
                _ => return Err(shape()),
            }
        }
        Ok(ServiceSpec { name: name.to_owned(), topic: topic.to_owned(), rate, qos, connections })
    }
}

/// The whole scenario.
#[derive(Debug, Clone)]
pub struct PriorityBench {
    /// Broker the publishers talk to.
    pub mqtt: SocketAddr,
    /// The services.
    pub services: Vec<ServiceSpec>,
    /// Index of the service measured idle vs loaded.
    pub probe: usize,
    /// Where the consumer reads.
    pub source: Source,
    /// Records per second the consumer takes.
    pub drain_rate: f64,
    /// Payload bytes.
    pub payload: usize,
    /// Publish QoS.
    pub qos: QoS,
    /// In flight per publisher.
    pub inflight: u16,
    /// Seconds measured, idle and loaded each.
    pub duration: Duration,
    /// Seconds of load before measuring (the backlog builds).
    pub warmup: Duration,
    /// Seconds the consumer keeps draining after the publishers stop, so
    /// late deliveries of the window are counted.
    pub grace: Duration,
}

/// One service's figures in the loaded window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServiceResult {
    /// Name.
    pub name: String,
    /// Configured rate (0 = max).
    pub rate: f64,
    /// Acknowledged (QoS 1) or sent (QoS 0) per second.
    pub published_per_s: f64,
    /// Delivered to the consumer per second.
    pub delivered_per_s: f64,
    /// Fraction of all deliveries in the window.
    pub share: f64,
    /// Fraction of what it published in the window that was delivered by
    /// the end of the grace time.
    pub delivered_fraction: f64,
    /// Publish -> consumer latency of what it published in the window and
    /// was delivered.
    pub latency: Summary,
    /// The p99 over everything it published in the window, counting what
    /// was not delivered by the end of the grace time as later than the
    /// rest: `None` when more than 1% was not (the p99 is then beyond the
    /// grace time).
    pub p99_all_ms: Option<f64>,
}

/// The outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PriorityReport {
    /// Consumer kind.
    pub consumer: String,
    /// Drain rate.
    pub drain_rate: f64,
    /// Probe service.
    pub probe: String,
    /// Probe latency, publishing alone.
    pub idle: Summary,
    /// Fraction of the probe's idle messages delivered.
    pub idle_delivered_fraction: f64,
    /// Probe latency under load.
    pub loaded: Summary,
    /// Probe p99 idle, undelivered messages counted (see
    /// [`ServiceResult::p99_all_ms`]).
    pub idle_p99_ms: Option<f64>,
    /// Probe p99 loaded, undelivered messages counted.
    pub loaded_p99_ms: Option<f64>,
    /// loaded p99 / idle p99 (`None` when either is beyond the grace time).
    pub p99_ratio: Option<f64>,
    /// Grace time, seconds: the bound of a `None` p99.
    pub grace_s: f64,
    /// Per service, loaded window.
    pub services: Vec<ServiceResult>,
    /// Where the probe's latency went, idle (sluice consumer).
    pub idle_split: Option<Split>,
    /// Where the probe's latency went, loaded (sluice consumer).
    pub loaded_split: Option<Split>,
    /// The sluice consumer's calls, idle window.
    pub idle_calls: Option<CallStats>,
    /// The sluice consumer's calls, loaded window.
    pub loaded_calls: Option<CallStats>,
    /// Publisher connection errors.
    pub errors: u64,
}

impl PriorityBench {
    fn publishers(&self, svc: usize) -> Publishers {
        let s = &self.services[svc];
        Publishers {
            addr: self.mqtt,
            count: s.connections,
            inflight: self.inflight,
            qos: s.qos.unwrap_or(self.qos),
            payload: self.payload,
            rate: s.rate / s.connections as f64,
            topic: s.topic.clone(),
            service: svc as u32,
            client_prefix: format!("sluice-bench-{}-{}", std::process::id(), s.name),
        }
    }

    fn meters(&self, deliveries: &Deliveries) -> Vec<Meter> {
        self.services.iter().enumerate().map(|(i, s)| Meter::new(&s.name, deliveries.counter(i))).collect()
    }
}

/// Publishes acknowledged (QoS 1) or sent (QoS 0) so far.
fn published(r: &Running, qos: Option<QoS>, default: QoS) -> u64 {
    let qos = qos.unwrap_or(default);
    let c = if qos == QoS::AtMostOnce { &r.counters.sent } else { &r.counters.acked };
    c.load(Ordering::Relaxed)
}

/// Publishes written so far: the count closest to the payload stamps.
fn sent(r: &Running) -> u64 {
    r.counters.sent.load(Ordering::Relaxed)
}

/// Runs the scenario: idle phase, then loaded phase.
pub async fn run(b: PriorityBench) -> anyhow::Result<PriorityReport> {
    anyhow::ensure!(b.probe < b.services.len(), "the probe service is not among the services");
    let deliveries = Deliveries::new(b.services.len());
    let consumer = Consumer::start(b.source.clone(), b.drain_rate, deliveries.clone()).await?;
    let meters = b.meters(&deliveries);
    let mut errors = 0;

    eprintln!("idle: {} alone for {:?}", b.services[b.probe].name, b.duration);
    let probe = b.publishers(b.probe).start().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (idle_from, idle_sent) = (wall_us(), sent(&probe));
    sample_each_second("idle", &meters, b.duration).await;
    let (idle_to, idle_sent) = (wall_us(), sent(&probe) - idle_sent);
    errors += probe.counters.errors.load(Ordering::Relaxed);
    probe.stop().await;
    tokio::time::sleep(b.grace).await;

    eprintln!("loaded: every service for {:?} after {:?} of warm-up", b.duration, b.warmup);
    let mut running = Vec::new();
    for svc in 0..b.services.len() {
        running.push(b.publishers(svc).start().await?);
    }
    tokio::time::sleep(b.warmup).await;
    let from = wall_us();
    let before: Vec<(u64, u64)> =
        running.iter().zip(&b.services).map(|(r, s)| (published(r, s.qos, b.qos), sent(r))).collect();
    sample_each_second("loaded", &meters, b.duration).await;
    let to = wall_us();
    let counts: Vec<(u64, u64)> = running
        .iter()
        .zip(&before)
        .zip(&b.services)
        .map(|((r, (p, s)), svc)| (published(r, svc.qos, b.qos) - p, sent(r) - s))
        .collect();
    for r in running {
        errors += r.counters.errors.load(Ordering::Relaxed);
        r.stop().await;
    }
    tokio::time::sleep(b.grace).await;
    consumer.stop().await?;

    let secs = (to - from) as f64 / 1e6;
    let delivered: Vec<u64> =
        (0..b.services.len()).map(|i| deliveries.delivered_between(i, from, to)).collect();
    let total = delivered.iter().sum::<u64>().max(1) as f64;
    let services: Vec<ServiceResult> = b
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let latencies = deliveries.latencies(i, from, to);
            let missing = counts[i].1.saturating_sub(latencies.len() as u64);
            ServiceResult {
                name: s.name.clone(),
                rate: s.rate,
                published_per_s: counts[i].0 as f64 / secs,
                delivered_per_s: delivered[i] as f64 / secs,
                share: delivered[i] as f64 / total,
                delivered_fraction: fraction(latencies.len() as u64, counts[i].1),
                latency: latencies.summary(),
                p99_all_ms: latencies.quantile_with_missing_ms(0.99, missing),
            }
        })
        .collect();
    let idle_latencies = deliveries.latencies(b.probe, idle_from, idle_to);
    let idle = idle_latencies.summary();
    let idle_p99_ms =
        idle_latencies.quantile_with_missing_ms(0.99, idle_sent.saturating_sub(idle_latencies.len() as u64));
    let loaded = services[b.probe].latency;
    let loaded_p99_ms = services[b.probe].p99_all_ms;
    Ok(PriorityReport {
        consumer: b.source.label(),
        drain_rate: b.drain_rate,
        probe: b.services[b.probe].name.clone(),
        idle,
        idle_delivered_fraction: fraction(idle_latencies.len() as u64, idle_sent),
        loaded,
        idle_p99_ms,
        loaded_p99_ms,
        p99_ratio: loaded_p99_ms.zip(idle_p99_ms).map(|(l, i)| l / i),
        grace_s: b.grace.as_secs_f64(),
        services,
        idle_split: deliveries.split(b.probe, idle_from, idle_to),
        loaded_split: deliveries.split(b.probe, from, to),
        idle_calls: deliveries.call_stats(idle_from, idle_to),
        loaded_calls: deliveries.call_stats(from, to),
        errors,
    })
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        f64::NAN
    } else {
        (part as f64 / whole as f64).min(1.0)
    }
}

impl PriorityReport {
    /// A p99 for display: `>N` (the grace time) when beyond it.
    fn p99(&self, p99: Option<f64>) -> String {
        p99.map_or_else(|| format!(">{:.0}", self.grace_s * 1000.0), |v| format!("{v:.2}"))
    }
}

impl std::fmt::Display for PriorityReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "consumer {} draining {:.0} records/s; loaded window:", self.consumer, self.drain_rate)?;
        writeln!(
            f,
            "{:<12} {:>9} {:>12} {:>12} {:>7} {:>10} {:>10} {:>10}",
            "service", "rate", "published/s", "delivered/s", "share", "delivered", "p50 ms", "p99 ms"
        )?;
        for s in &self.services {
            let rate = if s.rate > 0.0 { format!("{:.0}", s.rate) } else { "max".to_owned() };
            writeln!(
                f,
                "{:<12} {:>9} {:>12.0} {:>12.0} {:>6.1}% {:>9.1}% {:>10.2} {:>10}",
                s.name,
                rate,
                s.published_per_s,
                s.delivered_per_s,
                s.share * 100.0,
                s.delivered_fraction * 100.0,
                s.latency.p50_ms,
                self.p99(s.p99_all_ms)
            )?;
        }
        write!(
            f,
            "{} publish -> consumer: idle p50 {:.2} ms p99 {} ms ({:.1}% delivered); \
             loaded p50 {:.2} ms p99 {} ms; loaded/idle p99 {}; publisher errors {}",
            self.probe,
            self.idle.p50_ms,
            self.p99(self.idle_p99_ms),
            self.idle_delivered_fraction * 100.0,
            self.loaded.p50_ms,
            self.p99(self.loaded_p99_ms),
            self.p99_ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.2}")),
            self.errors
        )?;
        for (phase, split) in [("idle", &self.idle_split), ("loaded", &self.loaded_split)] {
            if let Some(s) = split {
                write!(
                    f,
                    "\n{} {phase}: publish -> ingest p50 {:.2} ms p99 {:.2} ms, ingest -> consumer p50 {:.2} ms \
                     p99 {:.2} ms (record timestamps have millisecond resolution)",
                    self.probe,
                    s.to_ingest.p50_ms,
                    s.to_ingest.p99_ms,
                    s.ingest_to_consumer.p50_ms,
                    s.ingest_to_consumer.p99_ms
                )?;
            }
        }
        for (phase, calls) in [("idle", &self.idle_calls), ("loaded", &self.loaded_calls)] {
            if let Some(c) = calls {
                write!(
                    f,
                    "\nconsumer {phase}: {} fetches of {:.1} records on average; fetch p50 {:.2} ms p99 {:.2} ms, \
                     commit p50 {:.2} ms p99 {:.2} ms",
                    c.fetches,
                    c.records_per_fetch,
                    c.fetch.p50_ms,
                    c.fetch.p99_ms,
                    c.commit.p50_ms,
                    c.commit.p99_ms
                )?;
            }
        }
        Ok(())
    }
}
