//! `sluice bench mqtt`: acknowledged QoS 1 throughput and publish ->
//! PUBACK latency of a group of publishers ([`super::publish`]) against
//! any MQTT 3.1.1 broker; against sluice, optionally also what sluice
//! received, persisted and dropped (from its `/metrics`).

use super::publish::Publishers;
use super::stats::{sample_each_second, Meter, Summary};
use rumqttc::QoS;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

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
    /// Records persisted per second, from the first publish until
    /// persisting caught up.
    pub persisted_per_s: f64,
}

/// Runs `sluice bench mqtt`.
pub async fn run(bench: MqttBench) -> anyhow::Result<MqttReport> {
    let p = &bench.publishers;
    let before = match bench.sluice_http {
        Some(a) => Some(super::http::metric_sums(a).await?),
        None => None,
    };
    let running = p.start().await?;
    let started = Instant::now();
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
        (Some(addr), Some(before)) => Some(sluice_ingest(addr, &before, started).await?),
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
    before: &HashMap<String, f64>,
    started: Instant,
) -> anyhow::Result<SluiceIngest> {
    let ended = Instant::now();
    let delta = |now: &HashMap<String, f64>, name: &str| {
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
                persisted_per_s: persisted as f64 / started.elapsed().as_secs_f64(),
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
                "sluice: received {}, persisted {} ({:.0}/s), dropped {} (caught up {:.1} s after the run)",
                s.received, s.persisted, s.persisted_per_s, s.dropped, s.catch_up_s
            )?;
        }
        write!(f, "connection errors: {}", self.errors)
    }
}
