//! The HTTP benches, and the keep-alive client the other benches use to
//! talk to sluice's API.
//!
//! - `sluice bench http`: N clients, each on its own keep-alive connection,
//!   produce batches of records as fast as acknowledged (or at a rate);
//!   reports records/s and latency percentiles.
//! - `sluice bench isolation`: an express service sends at a low rate, first
//!   alone (idle), then while a low-priority service floods; reports the
//!   express latency percentiles loaded vs idle.

use super::stats::Latencies;
use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One keep-alive HTTP/1.1 connection.
pub(super) struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    pub(super) async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, host: addr.to_string() })
    }

    /// Sends a request (a JSON body, if any) and returns the status and body.
    pub(super) async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// POSTs JSON and returns the status.
    async fn post(&mut self, path: &str, body: Bytes) -> anyhow::Result<u16> {
        Ok(self.request(hyper::Method::POST, path, Some(body)).await?.0)
    }

    fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("host", &self.host).finish()
    }
}

fn batch_body(batch: usize, payload: usize, seq: u64) -> Bytes {
    let value = "x".repeat(payload.saturating_sub(2));
    let recs: Vec<_> = (0..batch)
        .map(|i| serde_json::json!({ "key": format!("k{}", (seq as usize + i) % 64), "value": value }))
        .collect();
    Bytes::from(serde_json::json!({ "records": recs }).to_string())
}

/// Result of one load run.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Records acknowledged.
    pub records: u64,
    /// Requests answered 429.
    pub rejected: u64,
    /// Other failures.
    pub errors: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-request latency.
    pub latencies: Latencies,
}

/// What one load generator does.
#[derive(Debug, Clone)]
pub struct Load {
    /// Target.
    pub addr: SocketAddr,
    /// Topic to produce to.
    pub topic: String,
    /// Concurrent connections.
    pub clients: usize,
    /// Records per request.
    pub batch: usize,
    /// Value size in bytes.
    pub payload: usize,
    /// Requests per second per client; 0 = as fast as acknowledged.
    pub rate: f64,
}

/// Runs `load` until `stop` turns true.
pub async fn run_load(load: Load, stop: Arc<AtomicBool>) -> anyhow::Result<LoadResult> {
    let records = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let path = format!("/v1/topics/{}/records", load.topic);
    let mut tasks = Vec::new();
    for c in 0..load.clients {
        let (load, stop, path) = (load.clone(), stop.clone(), path.clone());
        let (records, rejected, errors) = (records.clone(), rejected.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(load.addr).await?;
            let mut lat = Vec::new();
            let period = (load.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / load.rate));
            let mut next = Instant::now() + Duration::from_micros((c as u64 * 7919) % 10_000);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let body = batch_body(load.batch, load.payload, seq);
                seq += 1;
                let t = Instant::now();
                match conn.post(&path, body).await {
                    Ok(200) => {
                        lat.push(t.elapsed().as_micros() as u64);
                        records.fetch_add(load.batch as u64, Ordering::Relaxed);
                    }
                    Ok(429) => {
                        rejected.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(_) | Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if conn.is_closed() {
                            conn = Conn::open(load.addr).await?;
                        }
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(LoadResult {
        records: records.load(Ordering::Relaxed),
        rejected: rejected.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies: all.into_iter().collect(),
    })
}

async fn timed(load: Load, duration: Duration) -> anyhow::Result<LoadResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let handle = tokio::spawn(run_load(load, stop.clone()));
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    handle.await?
}

/// `sluice bench http`: throughput and latency of one load.
pub async fn http(load: Load, duration: Duration) -> anyhow::Result<String> {
    let r = timed(load.clone(), duration).await?;
    Ok(format!(
        "clients={} batch={} payload={}B: {:.0} records/s, {:.0} requests/s, latency p50 {:.2} ms p99 {:.2} ms, 429s {}, errors {}",
        load.clients,
        load.batch,
        load.payload,
        r.records as f64 / r.elapsed.as_secs_f64(),
        r.latencies.len() as f64 / r.elapsed.as_secs_f64(),
        r.latencies.quantile_ms(0.5),
        r.latencies.quantile_ms(0.99),
        r.rejected,
        r.errors
    ))
}

/// `sluice bench isolation`: express latency idle vs under a flood.
pub async fn isolation(express: Load, flood: Load, duration: Duration) -> anyhow::Result<String> {
    let idle = timed(express.clone(), duration).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let flood_task = tokio::spawn(run_load(flood.clone(), stop.clone()));
    // Let the flood fill the queues before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = timed(express, duration).await?;
    stop.store(true, Ordering::Relaxed);
    let f = flood_task.await??;
    let ratio = loaded.latencies.quantile_ms(0.99) / idle.latencies.quantile_ms(0.99);
    Ok(format!(
        "express idle:   n={} p50 {:.2} ms p99 {:.2} ms\n\
         express loaded: n={} p50 {:.2} ms p99 {:.2} ms\n\
         loaded/idle p99: {:.2}\n\
         flood: {:.0} records/s acknowledged, {} requests refused with 429",
        idle.latencies.len(),
        idle.latencies.quantile_ms(0.5),
        idle.latencies.quantile_ms(0.99),
        loaded.latencies.len(),
        loaded.latencies.quantile_ms(0.5),
        loaded.latencies.quantile_ms(0.99),
        ratio,
        f.records as f64 / f.elapsed.as_secs_f64(),
        f.rejected
    ))
}

/// sluice's `/metrics`, each metric summed over its labels.
pub(super) async fn metric_sums(addr: SocketAddr) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let mut conn = Conn::open(addr).await?;
    let (status, body) = conn.request(hyper::Method::GET, "/metrics", None).await?;
    anyhow::ensure!(status == 200, "GET http://{addr}/metrics answered {status}");
    let mut sums = std::collections::HashMap::new();
    for line in std::str::from_utf8(&body)?.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *sums.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Ok(sums)
}
