//! What sluice's own listeners share: the connection limit, the TLS
//! handshake under a deadline, their counters, and the check of every TLS
//! file the configuration names (`sluice check-config` and `sluice run`
//! run the same check, so they agree).
//!
//! The HTTP API ([`crate::http::serve`]) and the MQTT TLS front
//! ([`crate::mqtt`]) accept through a [`Gate`]: a connection over the limit
//! is closed at once and counted, never queued. A TLS handshake that does
//! not complete within `handshake_timeout` is dropped and counted, so a
//! client that connects and sends nothing holds a slot for that long only.

use sluice_config::{Config, ListenerTls, UplinkKind, UplinkTls};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Counters of one listener kind (HTTP, or the MQTT TLS front).
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now (TLS handshakes included).
    pub open: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub refused: AtomicU64,
    /// TLS handshakes that failed or did not finish in time.
    pub handshake_failures: AtomicU64,
    /// Connections closed because request headers were too slow
    /// (`http.header_timeout`).
    pub header_timeouts: AtomicU64,
    /// Connections closed because no request came in time
    /// (`http.idle_timeout`).
    pub idle_timeouts: AtomicU64,
    /// Requests answered 408 because their body did not arrive within
    /// `http.body_timeout`.
    pub body_timeouts: AtomicU64,
}

/// Admits at most `max` connections at a time.
#[derive(Debug, Clone)]
pub struct Gate {
    permits: Arc<Semaphore>,
    max: u32,
    stats: Arc<ListenerStats>,
}

/// One admitted connection; gives its slot back on drop.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ListenerStats>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    /// A gate for `max` connections counting into `stats`.
    pub fn new(max: u32, stats: Arc<ListenerStats>) -> Gate {
        Gate { permits: Arc::new(Semaphore::new(max as usize)), max, stats }
    }

    /// Admits a new connection, or counts it refused (`None`: close it).
    fn admit(&self, peer: SocketAddr, field: &str) -> Option<Admitted> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.stats.open.fetch_add(1, Ordering::Relaxed);
                Some(Admitted { _permit: permit, stats: self.stats.clone() })
            }
            Err(_) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, max = self.max, "connection refused: {field} reached");
                None
            }
        }
    }

    /// The next connection on `listener` this gate admits; `field` names
    /// the limit in logs. Failed accepts (out of file descriptors,
    /// typically) are logged and retried after a pause. Cancel-safe.
    pub async fn accept(&self, listener: &TcpListener, field: &str) -> (TcpStream, SocketAddr, Admitted) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    if let Some(admitted) = self.admit(peer, field) {
                        return (tcp, peer, admitted);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a connection ({field})");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<ListenerStats> {
        &self.stats
    }
}

/// TLS on one listener: the acceptor and the handshake deadline. Clones
/// share the acceptor, which [`TlsListener::reload`] replaces.
#[derive(Clone)]
pub struct TlsListener {
    acceptor: Arc<std::sync::RwLock<TlsAcceptor>>,
    alpn: Vec<Vec<u8>>,
    timeout: Duration,
    field: &'static str,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("field", &self.field).field("timeout", &self.timeout).finish()
    }
}

impl TlsListener {
    /// Reads the files of `tls` (the table at `field`, e.g. `http.tls`);
    /// `alpn` lists the protocols offered, most preferred first.
    pub fn new(tls: &ListenerTls, field: &'static str, alpn: &[&[u8]]) -> anyhow::Result<TlsListener> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let mut config = sluice_config::tls::server_config(tls, field)?;
        config.alpn_protocols.clone_from(&alpn);
        Ok(TlsListener {
            acceptor: Arc::new(std::sync::RwLock::new(TlsAcceptor::from(Arc::new(config)))),
            alpn,
            timeout: tls.handshake_timeout,
            field,
        })
    }

    /// The configuration field of this listener, e.g. `http.tls`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Reads the certificate, key and client CA files of `tls` again and
    /// serves new handshakes with them; open connections keep theirs. On
    /// an error (named like at start) the files in force stay. (The
    /// handshake timeout is the one read at start.)
    pub fn reload(&self, tls: &ListenerTls) -> anyhow::Result<()> {
        let mut config = sluice_config::tls::server_config(tls, self.field)?;
        config.alpn_protocols.clone_from(&self.alpn);
        *self.acceptor.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            TlsAcceptor::from(Arc::new(config));
        Ok(())
    }

    /// The server side of the handshake, within the deadline; `None` (and
    /// counted) when it fails or takes too long.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        stats: &ListenerStats,
    ) -> Option<TlsStream<TcpStream>> {
        let acceptor = self.acceptor.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let failure = match tokio::time::timeout(self.timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => return Some(stream),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("not complete within {}.handshake_timeout ({:?})", self.field, self.timeout),
        };
        stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, listener = self.field, "TLS handshake failed: {failure}");
        None
    }
}

/// Reads every TLS file the configuration names (listeners and uplinks)
/// and reports every one that cannot be used, naming field and file.
pub fn check_tls_files(config: &Config) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let listeners =
        [("mqtt.tls", &config.mqtt.tls), ("http.tls", &config.http.tls), ("kafka.tls", &config.kafka.tls)];
    for (field, tls) in listeners {
        if let Some(tls) = tls {
            if let Err(e) = sluice_config::tls::server_config(tls, field) {
                problems.push(e.0);
            }
        }
    }
    for u in &config.uplinks {
        let https = u.kind == UplinkKind::Http && u.brokers.iter().any(|b| b.starts_with("https://"));
        let tls = match &u.tls {
            Some(tls) => tls.clone(),
            None if https => UplinkTls::default(),
            None => continue,
        };
        if let Err(e) = sluice_config::tls::client_config(&tls, &format!("uplink[{:?}].tls", u.name)) {
            problems.push(e.0);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("unusable TLS files:\n  {}", problems.join("\n  "))
    }
}
