//! [`Guarded`]: rumqttd's MQTT codec wrapped with authentication and
//! per-user publish permissions.
//!
//! rumqttd has no topic ACLs, and the publishes its router hands sluice's
//! ingest link do not say which client sent them. But each connection
//! decodes its packets through its own copy of a `Protocol` value, so a
//! wrapper around the codec sees every packet of one connection in order:
//! the CONNECT (and so the user) first, then each PUBLISH. That is where
//! sluice enforces:
//!
//! - CONNECT: [`Guard::on_connect`] decides; the password is replaced by a
//!   ticket for the auth hook. A refused CONNECT is turned into one rumqttd
//!   itself refuses with a CONNACK (empty client id without clean session),
//!   and that CONNACK's code is rewritten to the real reason on the way
//!   out. A will message on a topic the user may not publish to is removed.
//! - PUBLISH outside the user's filters: rewritten, before the router sees
//!   it, into an empty, non-retained publish on [`DENIED_TOPIC`], which
//!   sluice does not ingest (`$` topics are not matched by `#`). The router
//!   still acknowledges it as usual (PUBACK for QoS 1), so the client is not
//!   told. Topic aliases (MQTT 5) are resolved per connection first.

use super::auth::{Acl, Admission, Guard, Refusal};
use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{ConnectReturnCode, Login, Packet, Protocol};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Where publishes outside a user's filters go (empty, not retained).
pub const DENIED_TOPIC: &str = "$sluice/denied";

/// The codec `P` of one connection, with sluice's checks.
#[derive(Clone)]
pub struct Guarded<P> {
    inner: P,
    guard: Arc<Guard>,
    /// Who is connected: `None` before CONNECT or for anonymous clients.
    user: Option<Arc<str>>,
    acl: Option<Arc<Acl>>,
    refused: Option<Refusal>,
    aliases: HashMap<u16, Bytes>,
}

impl<P> std::fmt::Debug for Guarded<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("user", &self.user).field("refused", &self.refused).finish()
    }
}

impl<P> Guarded<P> {
    /// Wraps `inner`; every connection of the listener gets a clone.
    pub fn new(inner: P, guard: Arc<Guard>) -> Guarded<P> {
        Guarded { inner, guard, user: None, acl: None, refused: None, aliases: HashMap::new() }
    }

    fn not_allowed(&self, what: &str, topic: &[u8]) {
        self.guard.not_allowed(self.user.as_deref(), what, topic);
    }

    fn connect(&mut self, packet: Packet) -> Packet {
        let Packet::Connect(mut connect, props, mut will, will_props, login) = packet else {
            return packet;
        };
        let admission =
            self.guard.on_connect(login.as_ref().map(|l| (l.username.as_str(), l.password.as_str())));
        let username = login.as_ref().map(|l| l.username.clone()).unwrap_or_default();
        let ticket = match admission {
            Admission::Accept { ticket, user, acl } => {
                (self.user, self.acl) = (user, acl);
                ticket
            }
            Admission::Verify { ticket, user, acl } => {
                (self.user, self.acl) = (Some(user), acl);
                Some(ticket)
            }
            Admission::Refuse { ticket, why } => {
                let counter = match why {
                    Refusal::NoCredentials => &self.guard.stats.refused_no_credentials,
                    Refusal::BadCredentials => &self.guard.stats.refused_bad_credentials,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client_id = connect.client_id, user = username, reason = ?why, "MQTT CONNECT refused");
                self.refused = Some(why);
                // rumqttd answers this with CONNACK "client identifier not
                // valid" and closes; `write` puts the real code in.
                connect.client_id.clear();
                connect.clean_session = false;
                connect.keep_alive = connect.keep_alive.max(1);
                will = None;
                ticket
            }
        };
        if let (Some(acl), Some(w)) = (&self.acl, &will) {
            if !std::str::from_utf8(&w.topic).is_ok_and(|t| acl.allows(t)) {
                self.not_allowed("will message", &w.topic);
                will = None;
            }
        }
        let login = match ticket {
            Some(password) => Some(Login { username, password }),
            None => login,
        };
        Packet::Connect(connect, props, will, will_props, login)
    }

    fn publish(&mut self, packet: Packet) -> Packet {
        let Packet::Publish(mut publish, mut props) = packet else { return packet };
        let Some(acl) = self.acl.clone() else { return Packet::Publish(publish, props) };
        let alias = props.as_ref().and_then(|p| p.topic_alias);
        let topic = match alias {
            Some(a) if publish.topic.is_empty() => self.aliases.get(&a).cloned().unwrap_or_default(),
            Some(a) => {
                // A copy: a slice would keep the read buffer alive.
                let topic = Bytes::copy_from_slice(&publish.topic);
                self.aliases.insert(a, topic.clone());
                topic
            }
            None => publish.topic.clone(),
        };
        // An unknown alias or a topic that is not UTF-8 is the router's to
        // refuse (it disconnects the client).
        let allowed = topic.is_empty() || std::str::from_utf8(&topic).map_or(true, |t| acl.allows(t));
        if !allowed {
            self.not_allowed("publish", &topic);
            publish.topic = Bytes::from_static(DENIED_TOPIC.as_bytes());
            publish.payload = Bytes::new();
            publish.retain = false;
            if let Some(p) = props.as_mut() {
                p.topic_alias = None;
            }
        }
        Packet::Publish(publish, props)
    }
}

impl<P: Protocol> Protocol for Guarded<P> {
    fn read_mut(
        &mut self,
        stream: &mut BytesMut,
        max_size: usize,
    ) -> Result<Packet, rumqttd::protocol::Error> {
        let packet = self.inner.read_mut(stream, max_size)?;
        Ok(match packet {
            Packet::Connect(..) => self.connect(packet),
            Packet::Publish(..) => self.publish(packet),
            other => other,
        })
    }

    fn write(&self, packet: Packet, write: &mut BytesMut) -> Result<usize, rumqttd::protocol::Error> {
        let packet = match (packet, self.refused) {
            (Packet::ConnAck(mut ack, props), Some(why)) => {
                ack.code = match why {
                    Refusal::NoCredentials => ConnectReturnCode::NotAuthorized,
                    Refusal::BadCredentials => ConnectReturnCode::BadUserNamePassword,
                };
                Packet::ConnAck(ack, props)
            }
            (packet, _) => packet,
        };
        self.inner.write(packet, write)
    }
}
