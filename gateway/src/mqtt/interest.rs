//! Which MQTT topics a live subscriber could want.
//!
//! Every publish sluice reads is stored by the front; the embedded broker
//! is only there for live subscribers and retained messages. Passing a
//! publish nobody subscribed to through the broker costs a write, the
//! broker's read and routing, its PUBACK and the front's read of that, per
//! message: on a node whose consumers read the log (HTTP, Kafka, the
//! uplink) that is most of the MQTT CPU. [`Interest`] holds the filters of
//! every subscription the front passed to the broker, so the front sends
//! the broker only the publishes one of them matches (and every retained
//! publish, and every publish that uses a topic alias).
//!
//! It errs on the side of sending: a filter counts from the moment its
//! SUBSCRIBE is passed on (before the broker has it) until its UNSUBSCRIBE
//! or the end of its connection. A persistent session is served from the
//! log for what is stored ([`super::sessions`]): its filters count only for
//! publishes that are not stored (and `$share` ones for every publish).

use sluice_config::mqtt_filter_matches;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

/// Subscription filters of all connections, counted.
#[derive(Debug, Default)]
pub(super) struct Interest {
    /// Read on every publish while any subscription exists: a read lock.
    /// Per filter: (subscriptions that want every publish, those that want
    /// only publishes not stored).
    filters: RwLock<HashMap<Box<str>, (usize, usize)>>,
    /// Distinct filters: zero makes [`Interest::wanted`] a load.
    distinct: AtomicUsize,
}

/// The part of a filter that matches topics: `$share/{group}/f` matches
/// like `f`.
pub(super) fn matching_part(filter: &str) -> &str {
    filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')).map_or(filter, |(_, f)| f)
}

/// Whether a subscription of a persistent session is served from the log
/// (every one but `$share` ones).
pub(super) fn from_log(filter: &str) -> bool {
    !filter.starts_with("$share/")
}

impl Interest {
    /// Whether some subscription could want a publish to `topic`; `stored`:
    /// the publish is in the log.
    pub(super) fn wanted(&self, topic: &str, stored: bool) -> bool {
        if self.distinct.load(Ordering::Acquire) == 0 {
            return false;
        }
        let filters = self.filters.read().unwrap_or_else(PoisonError::into_inner);
        filters.iter().any(|(f, (all, unstored))| {
            (*all > 0 || (!stored && *unstored > 0)) && mqtt_filter_matches(matching_part(f), topic)
        })
    }

    /// Counts `filter` once more; `persistent`: a persistent session's.
    pub(super) fn add(&self, filter: &str, persistent: bool) {
        let mut filters = self.filters.write().unwrap_or_else(PoisonError::into_inner);
        let n = filters.entry(filter.into()).or_insert((0, 0));
        if persistent && from_log(filter) {
            n.1 += 1;
        } else {
            n.0 += 1;
        }
        self.distinct.store(filters.len(), Ordering::Release);
    }

    /// Counts `filter` once less; `persistent` as when added.
    pub(super) fn remove(&self, filter: &str, persistent: bool) {
        let mut filters = self.filters.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = filters.get_mut(filter) {
            let count = if persistent && from_log(filter) { &mut n.1 } else { &mut n.0 };
            *count = count.saturating_sub(1);
            if *n == (0, 0) {
                filters.remove(filter);
            }
        }
        self.distinct.store(filters.len(), Ordering::Release);
    }
}

/// One subscription of a connection, as passed to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Sub {
    pub(super) filter: Box<str>,
    /// The QoS granted (sluice grants at most 1 to live subscribers).
    pub(super) qos: u8,
    /// MQTT 5 No Local: not the connection's own publishes.
    pub(super) no_local: bool,
}

/// What [`Subs::delivery`] decides for a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// At most this QoS (the highest of the matching subscriptions).
    Granted(u8),
    /// No subscription of the connection matches (a topic alias, or a
    /// subscription the connection does not know of): as the broker sent it.
    Unknown,
    /// Only No Local subscriptions match the connection's own publish.
    Skip,
}

/// A connection's subscriptions: kept by its reader, read by the loop that
/// passes the broker's deliveries on.
#[derive(Debug, Default)]
pub(super) struct Subs(Mutex<Vec<Sub>>, AtomicU64);

impl Subs {
    /// Adds or replaces (MQTT-3.8.4-3) the subscription of `sub.filter`;
    /// true when it is new.
    pub(super) fn set(&self, sub: Sub) -> bool {
        self.1.fetch_add(1, Ordering::Release);
        let mut subs = lock(&self.0);
        match subs.iter_mut().find(|s| s.filter == sub.filter) {
            Some(s) => {
                *s = sub;
                false
            }
            None => {
                subs.push(sub);
                true
            }
        }
    }

    /// Removes the subscription of `filter`; true when there was one.
    pub(super) fn remove(&self, filter: &str) -> bool {
        self.1.fetch_add(1, Ordering::Release);
        let mut subs = lock(&self.0);
        let before = subs.len();
        subs.retain(|s| &*s.filter != filter);
        subs.len() != before
    }

    /// Changes with every [`Subs::set`] and [`Subs::remove`].
    pub(super) fn generation(&self) -> u64 {
        self.1.load(Ordering::Acquire)
    }

    /// The filters.
    pub(super) fn filters(&self) -> Vec<Box<str>> {
        lock(&self.0).iter().map(|s| s.filter.clone()).collect()
    }

    /// Every subscription.
    pub(super) fn all(&self) -> Vec<Sub> {
        lock(&self.0).clone()
    }

    /// The QoS a persistent session gets a stored publish to `topic` at
    /// from the log (the highest of its matching subscriptions but `$share`
    /// ones); `None` when none matches.
    pub(super) fn log_qos(&self, topic: &str) -> Option<u8> {
        lock(&self.0)
            .iter()
            .filter(|s| from_log(&s.filter) && mqtt_filter_matches(&s.filter, topic))
            .map(|s| s.qos)
            .max()
    }

    /// How a publish on `topic` (empty: sent with a topic alias) is
    /// delivered; `own`: this connection published it.
    pub(super) fn delivery(&self, topic: &str, own: bool) -> Delivery {
        let subs = lock(&self.0);
        let mut matching =
            subs.iter().filter(|s| mqtt_filter_matches(matching_part(&s.filter), topic)).peekable();
        if topic.is_empty() || matching.peek().is_none() {
            return Delivery::Unknown;
        }
        matching
            .filter(|s| !(own && s.no_local))
            .map(|s| s.qos)
            .max()
            .map_or(Delivery::Skip, Delivery::Granted)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_what_is_subscribed_until_it_is_not() {
        let i = Interest::default();
        assert!(!i.wanted("a/b", true), "nothing subscribed");
        i.add("a/+", false);
        i.add("a/+", false);
        i.add("$share/g/c/#", false);
        assert!(i.wanted("a/b", true) && i.wanted("c/d/e", true) && !i.wanted("b/a", true));
        i.remove("a/+", false);
        assert!(i.wanted("a/b", true), "still one subscription");
        i.remove("a/+", false);
        assert!(!i.wanted("a/b", true));
        i.remove("$share/g/c/#", false);
        assert!(!i.wanted("c/d", true));
        i.remove("never/added", false);
        assert!(!i.wanted("never/added", false));
    }

    #[test]
    fn persistent_sessions_want_only_what_the_log_does_not_hold() {
        let i = Interest::default();
        i.add("p/#", true);
        assert!(!i.wanted("p/1", true), "served from the log");
        assert!(i.wanted("p/1", false), "not stored: the broker delivers it");
        i.add("p/#", false);
        assert!(i.wanted("p/1", true), "a clean session wants it too");
        i.remove("p/#", false);
        assert!(!i.wanted("p/1", true));
        i.remove("p/#", true);
        assert!(!i.wanted("p/1", false));
        i.add("$share/g/s", true);
        assert!(i.wanted("s", true), "shared subscriptions stay the broker's");
    }

    #[test]
    fn deliveries_follow_the_connections_own_subscriptions() {
        let subs = Subs::default();
        let sub = |f: &str, qos, no_local| Sub { filter: f.into(), qos, no_local };
        assert!(subs.set(sub("a/#", 0, false)));
        assert!(subs.set(sub("a/b", 1, true)));
        assert_eq!(subs.delivery("a/b", false), Delivery::Granted(1), "highest matching QoS");
        assert_eq!(subs.delivery("a/b", true), Delivery::Granted(0), "own: the No Local one does not count");
        assert!(!subs.set(sub("a/#", 1, true)), "a repeated subscription replaces the first");
        assert_eq!(subs.delivery("a/c", false), Delivery::Granted(1));
        assert_eq!(subs.delivery("a/c", true), Delivery::Skip);
        assert_eq!(subs.delivery("z", false), Delivery::Unknown);
        assert_eq!(subs.delivery("", false), Delivery::Unknown, "topic alias");
        assert!(subs.remove("a/#") && !subs.remove("a/#"));
        assert_eq!(subs.filters(), vec![Box::<str>::from("a/b")]);
    }
}
