//! Log setup: `SLUICE_LOG` filters, journald-friendly output, and the
//! rumqttd lines that do not mean what their level says.
//!
//! rumqttd 0.20 logs every ordinary end of a connection at ERROR: the
//! router's "no-connection id N is already gone" (a DISCONNECT followed by
//! the socket closing is two disconnections to it), and the link's
//! "router-drop", "connection-stop" and "disconnected", and the broker's
//! "Remote link error" when the error is the link's channel closing
//! (`Link(Recv(Disconnected))`, the other side of the same end). sluice's front
//! sees every connection end itself (logged at DEBUG with the reason), so
//! these lines are dropped; everything else rumqttd logs at WARN or above
//! stays.

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

/// Starts of rumqttd messages that report a normal connection end.
const ORDINARY: &[&str] = &["no-connection id", "router-drop", "connection-stop", "disconnected"];

/// Drops rumqttd's ERROR lines about ordinary connection ends.
#[derive(Debug, Clone, Copy)]
pub struct QuietBroker;

/// The `message` and `error` fields of an event.
#[derive(Default)]
struct Message(Option<String>, Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.0 = Some(value.to_owned()),
            "error" => self.1 = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.0 = Some(format!("{value:?}")),
            "error" => self.1 = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Whether an event from `target` with `message` (and `error`) is one
/// rumqttd logs for an ordinary connection end.
fn ordinary(target: &str, message: &str, error: Option<&str>) -> bool {
    target.starts_with("rumqttd")
        && (ORDINARY.iter().any(|m| message.starts_with(m))
            || (message.starts_with("Remote link error")
                && error.is_some_and(|e| e.contains("Disconnected"))))
}

impl<S: Subscriber> Layer<S> for QuietBroker {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let target = event.metadata().target();
        if !target.starts_with("rumqttd") {
            return true;
        }
        let mut message = Message::default();
        event.record(&mut message);
        !message.0.is_some_and(|m| ordinary(target, &m, message.1.as_deref()))
    }
}

/// Installs the global subscriber: `SLUICE_LOG` (default `info` with
/// rumqttd at `warn`), to stderr, without time and colours under journald.
pub fn init() {
    let filter =
        EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn"));
    // Under systemd, journald adds its own timestamps and colours mean noise.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if journald {
        builder.with_ansi(false).without_time().finish().with(QuietBroker).init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(QuietBroker)
            .init();
    }
}

#[cfg(test)]
mod tests {
    use super::ordinary;

    #[test]
    fn only_rumqttds_connection_ends_are_dropped() {
        assert!(ordinary("rumqttd::router::routing", "no-connection id 3 is already gone", None));
        assert!(ordinary("rumqttd::server::broker", "router-drop", None));
        assert!(ordinary("rumqttd::server::broker", "Remote link error", Some("Link(Recv(Disconnected))")));
        assert!(!ordinary("rumqttd::server::broker", "Remote link error", Some("Io(TimedOut)")));
        assert!(!ordinary("rumqttd::router::routing", "no space for new connection", None));
        assert!(!ordinary("sluice_gateway::run", "disconnected", None));
    }
}
