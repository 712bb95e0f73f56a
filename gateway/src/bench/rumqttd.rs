//! `sluice bench rumqttd`: the baseline "stock rumqttd, not persisting".
//! The same rumqttd version sluice embeds, started with the same settings
//! ([`crate::mqtt::rumqttd_config`] from the same `[mqtt]` section), but
//! without sluice's ingest link, so comparing the two isolates what
//! persisting costs. With `drain_link`, a local link subscribes to `#` and
//! discards what it reads: the router then does the same fan-out work as
//! in sluice, and only persisting is missing.

use anyhow::Context as _;
use sluice_config::MqttConfig;
use std::net::SocketAddr;

/// Starts the broker on its own threads; returns the listening address
/// once it answers an MQTT CONNECT. rumqttd cannot be stopped: the
/// process ends it.
pub fn start_stock(mqtt: &MqttConfig, listen: SocketAddr, drain_link: bool) -> anyhow::Result<SocketAddr> {
    let addr = crate::mqtt::reserve(listen, "--listen")?;
    let mut broker = rumqttd::Broker::new(crate::mqtt::rumqttd_config(mqtt, addr, None));
    if drain_link {
        let (mut tx, mut rx) = broker.link("bench-drain").context("cannot attach a link to rumqttd")?;
        tx.subscribe("#").context("cannot subscribe the drain link")?;
        std::thread::Builder::new().name("bench-drain".into()).spawn(move || loop {
            match rx.recv() {
                // The router paused the link because its buffer was full.
                Ok(Some(rumqttd::Notification::Unschedule)) => {
                    if rx.ready().is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        })?;
    }
    std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "rumqttd stopped");
        }
    })?;
    crate::mqtt::wait_listening(addr, false)?;
    Ok(addr)
}
