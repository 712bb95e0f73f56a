//! The local Kafka-protocol listener (`[kafka]`): edge applications use
//! their Kafka clients against sluice, which is the only broker, the leader
//! of every partition and the coordinator of every group.
//!
//! The wire codec is the `kafka-protocol` crate; the semantics are
//! sluice's. Module map:
//! - [`conn`]: one connection: frames (capped at `kafka.max_request`),
//!   request headers, answers in request order, bad input counted.
//! - [`versions`]: the APIs and versions served (ApiVersions), and the
//!   dispatch of a request to its handler.
//! - [`metadata`]: Metadata and FindCoordinator (a one-broker cluster).
//! - [`configs`]: DescribeConfigs (sluice's settings under Kafka's names).
//! - [`produce`]: Produce through the services' ingest path (priority,
//!   rate and pending limits, durability).
//! - [`fetch`]: Fetch (long-poll, the byte budget filled in priority
//!   order) and ListOffsets.
//! - [`records`]: RecordBatch <-> sluice records; [`batch`]: the parts of
//!   the format sluice writes itself (headers with repeated names).
//! - [`idempotence`]: producer ids and sequence numbers (retries keep
//!   their offsets).
//! - [`group`]: the classic group protocol's state machine (join, sync,
//!   heartbeat, leave, session timeouts), free of I/O.
//! - [`auth`]: SASL users (`[[kafka.users]]`) and the topics each may use.
//! - [`sasl`]: the PLAIN and SCRAM exchanges, free of I/O.
//! - [`group_api`]: its requests, and OffsetCommit/OffsetFetch over the
//!   store's group offsets (the same ones HTTP groups use).

mod auth;
mod batch;
mod configs;
mod conn;
mod fetch;
mod group;
mod group_api;
mod idempotence;
mod metadata;
mod produce;
mod records;
pub mod sasl;
mod versions;

pub use auth::Accounts;

use crate::listener::{Gate, ListenerStats, TlsListener};
use crate::state::Shared;
use anyhow::Context as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The broker id sluice answers with (it is the only one).
const NODE_ID: i32 = 0;

/// Counters of the Kafka listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct KafkaStats {
    /// Open and refused connections.
    pub connections: Arc<ListenerStats>,
    /// Requests answered (or taken, for acks=0 produce).
    pub requests: AtomicU64,
    /// Frames that could not be decoded (connection closed).
    pub malformed: AtomicU64,
    /// Frames larger than `kafka.max_request` or with a negative length
    /// (connection closed).
    pub oversized: AtomicU64,
    /// Requests for an API key or version sluice does not serve.
    pub unsupported: AtomicU64,
    /// Produce requests delayed by a service's rate or pending limit.
    pub throttled: AtomicU64,
    /// Successful SASL authentications.
    pub sasl_authenticated: AtomicU64,
    /// Failed SASL authentications (bad password, unknown user, mechanism
    /// not offered); the connection is closed.
    pub sasl_failed: AtomicU64,
    /// Connections closed for a request other than ApiVersions and SASL
    /// before authenticating.
    pub unauthenticated: AtomicU64,
    /// Requests (topics) refused TOPIC_AUTHORIZATION_FAILED.
    pub not_authorized: AtomicU64,
    /// Connections closed after `kafka.idle_timeout` without a request.
    pub idle_closed: AtomicU64,
    /// Connections closed after `kafka.write_timeout` without the client
    /// reading.
    pub write_timeouts: AtomicU64,
}

impl KafkaStats {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every connection shares.
#[derive(Debug)]
struct Broker {
    shared: Shared,
    /// Host and port put in Metadata and FindCoordinator.
    host: String,
    port: i32,
    max_request: usize,
    idle_timeout: Duration,
    write_timeout: Duration,
    /// SASL users; `None` when `kafka.sasl` is empty.
    accounts: Option<Arc<Accounts>>,
    stats: Arc<KafkaStats>,
    groups: Mutex<group::Coordinator>,
    producers: Mutex<idempotence::Producers>,
}

impl Broker {
    fn groups(&self) -> std::sync::MutexGuard<'_, group::Coordinator> {
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn producers(&self) -> std::sync::MutexGuard<'_, idempotence::Producers> {
        self.producers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The running listener.
#[derive(Debug)]
pub struct KafkaHandle {
    /// The bound address.
    pub addr: SocketAddr,
    /// The advertised `host:port`.
    pub advertised: String,
    /// Whether it speaks TLS.
    pub tls: bool,
}

/// Binds `kafka.listen` and serves until shutdown; `None` when the
/// listener is off.
pub async fn start(shared: &Shared) -> anyhow::Result<Option<KafkaHandle>> {
    let cfg = &shared.config.kafka;
    let Some(listen) = cfg.listen else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for Kafka clients on {listen} (kafka.listen)"))?;
    let addr = listener.local_addr()?;
    let (host, port) = match &cfg.advertised {
        Some(adv) => split_host_port(adv).with_context(|| format!("kafka.advertised {adv:?}"))?,
        None if addr.ip().is_unspecified() => ("127.0.0.1".to_owned(), i32::from(addr.port())),
        None => (addr.ip().to_string(), i32::from(addr.port())),
    };
    let advertised = format!("{host}:{port}");
    let stats = shared.kafka.clone();
    let accounts = Accounts::new(cfg);
    if let Some(a) = &accounts {
        // (A reload replaces its users.)
        let _ = shared.kafka_accounts.set(a.clone());
    }
    let broker = Arc::new(Broker {
        shared: shared.clone(),
        host,
        port,
        max_request: usize::try_from(cfg.max_request.as_u64()).unwrap_or(usize::MAX),
        idle_timeout: cfg.idle_timeout,
        write_timeout: cfg.write_timeout,
        accounts: accounts.clone(),
        stats: stats.clone(),
        groups: Mutex::new(group::Coordinator::default()),
        producers: Mutex::new(idempotence::Producers::new(crate::now_ms())),
    });
    let gate = Gate::new(cfg.max_connections, stats.connections.clone());
    let tls = cfg.tls.as_ref().map(|tls| TlsListener::new(tls, "kafka.tls", &[])).transpose()?;
    let tls_on = tls.is_some();
    if let Some(t) = &tls {
        // (A reload re-reads its files, like the other listeners'.)
        shared.tls_listeners.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(t.clone());
    }
    tokio::spawn(accept_loop(broker.clone(), listener, gate, tls));
    tokio::spawn(group_api::reaper(broker));
    tracing::info!(kafka = %addr, %advertised, tls = tls_on, sasl = ?cfg.sasl, "Kafka listener started");
    Ok(Some(KafkaHandle { addr, advertised, tls: tls_on }))
}

async fn accept_loop(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    gate: Gate,
    tls: Option<TlsListener>,
) {
    let mut shutdown = broker.shared.shutdown.clone();
    loop {
        tokio::select! {
            (tcp, peer, admitted) = gate.accept(&listener, "kafka.max_connections") => {
                let _ = tcp.set_nodelay(true);
                let broker = broker.clone();
                match tls.clone() {
                    None => drop(tokio::spawn(conn::serve(broker, tcp, peer, admitted))),
                    Some(tls) => drop(tokio::spawn(async move {
                        // The handshake runs in the connection's own task, under its deadline.
                        if let Some(stream) = tls.accept(tcp, peer, &broker.stats.connections).await {
                            conn::serve(broker, stream, peer, admitted).await;
                        }
                    })),
                }
            }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn split_host_port(addr: &str) -> anyhow::Result<(String, i32)> {
    let (host, port) = addr.rsplit_once(':').context("has no port")?;
    let port: u16 = port.parse().context("port is not a number")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((host.to_owned(), i32::from(port)))
}

/// How often group members' sessions are checked.
const REAP_EVERY: Duration = Duration::from_millis(200);
