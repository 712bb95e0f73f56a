//! MQTT over TLS: sluice terminates TLS on `mqtt.listen` (and
//! `mqtt.listen_v5`) and forwards the decrypted bytes to the embedded
//! broker, which then listens on 127.0.0.1 only.
//!
//! Why not rumqttd's own TLS (its `use-rustls` feature): rumqttd 0.20 runs
//! the TLS handshake inside its accept loop without a deadline, so one
//! client that connects and sends nothing stops every later connection on
//! that listener; it re-reads the certificate files on every connection and
//! reports bad ones only in its log; and client certificates need a
//! compile-time feature that also rewrites topics by the certificate's
//! organisation. Here the files are read once at start (a bad one fails
//! the start naming the field), each handshake runs in its own task under
//! `mqtt.tls.handshake_timeout`, and connections over
//! `mqtt.max_connections` are closed at once and counted.

use crate::listener::{Gate, ListenerStats, TlsListener};
use anyhow::Context as _;
use sluice_config::MqttConfig;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

/// The bound TLS listeners, before they serve.
#[derive(Debug)]
pub(super) struct TlsFronts {
    tls: TlsListener,
    listeners: Vec<std::net::TcpListener>,
    gate: Gate,
}

impl TlsFronts {
    /// Binds `mqtt.listen` (and `listen_v5`) and reads the TLS files, when
    /// `[mqtt.tls]` is configured.
    pub(super) fn bind(mqtt: &MqttConfig, stats: Arc<ListenerStats>) -> anyhow::Result<Option<TlsFronts>> {
        let Some(tls) = &mqtt.tls else { return Ok(None) };
        let tls = TlsListener::new(tls, "mqtt.tls", &[b"mqtt"])?;
        let mut listeners = vec![bind(mqtt.listen, "mqtt.listen")?];
        if let Some(v5) = mqtt.listen_v5 {
            listeners.push(bind(v5, "mqtt.listen_v5")?);
        }
        Ok(Some(TlsFronts { tls, listeners, gate: Gate::new(mqtt.max_connections, stats) }))
    }

    /// The public addresses: MQTT 3.1.1, then MQTT 5 if configured.
    pub(super) fn addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.listeners.iter().map(|l| Ok(l.local_addr()?)).collect()
    }

    /// Loopback addresses for the broker's own (plain) listeners, one per
    /// TLS listener.
    pub(super) fn broker_addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        self.listeners
            .iter()
            .map(|_| super::broker::reserve(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), "mqtt.listen"))
            .collect()
    }

    /// Serves each TLS listener, forwarding to the broker listener at the
    /// same index of `brokers`. Runs until the process exits, like the
    /// broker itself.
    pub(super) fn serve(self, brokers: &[SocketAddr]) -> anyhow::Result<()> {
        for (listener, &broker) in self.listeners.into_iter().zip(brokers) {
            listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(listener)?;
            tokio::spawn(accept_loop(listener, broker, self.tls.clone(), self.gate.clone()));
        }
        Ok(())
    }
}

fn bind(addr: SocketAddr, field: &str) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen for MQTT on {addr} ({field})"))
}

async fn accept_loop(listener: TcpListener, broker: SocketAddr, tls: TlsListener, gate: Gate) {
    loop {
        let (tcp, peer, admitted) = gate.accept(&listener, "mqtt.max_connections").await;
        let (tls, stats) = (tls.clone(), gate.stats().clone());
        tokio::spawn(async move {
            let _admitted = admitted;
            let _ = tcp.set_nodelay(true);
            let Some(mut client) = tls.accept(tcp, peer, &stats).await else { return };
            let mut backend = match TcpStream::connect(broker).await {
                Ok(backend) => backend,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot reach the embedded MQTT broker");
                    return;
                }
            };
            let _ = backend.set_nodelay(true);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
                tracing::debug!(%peer, error = %e, "MQTT TLS connection ended");
            }
        });
    }
}
