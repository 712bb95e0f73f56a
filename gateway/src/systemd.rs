//! systemd integration through the notify socket (`Type=notify`):
//! `READY=1` once the store is open and every listener accepts, watchdog
//! pings while the ingest pipeline is alive, `STOPPING=1` when draining.
//! Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use crate::state::Shared;
use sd_notify::NotifyState;
use std::sync::atomic::Ordering;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the service is up, with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a graceful stop is under way.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pings the watchdog at half its period while the ingest writer is alive,
/// so a wedged pipeline gets the service restarted. Returns at once when
/// `WATCHDOG_USEC` is not set for this process.
pub async fn watchdog(shared: Shared) {
    let Some(period) = sd_notify::watchdog_enabled() else { return };
    tracing::info!(period_ms = period.as_millis() as u64, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(period / 2);
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if shared.ingest.writer_alive.load(Ordering::Relaxed) {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!("ingest writer stopped: withholding watchdog pings");
        }
    }
}
