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
//! or the end of its clean session; a persistent session's filters stay
//! while it is away, since the broker keeps queueing for it, and go when
//! the client id connects again with a clean session.

use sluice_config::mqtt_filter_matches;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

/// Subscription filters of all connections (and of persistent sessions
/// that are away), counted.
#[derive(Debug, Default)]
pub(super) struct Interest {
    /// Read on every publish while any subscription exists: a read lock.
    filters: RwLock<HashMap<Box<str>, usize>>,
    /// Distinct filters: zero makes [`Interest::wanted`] a load.
    distinct: AtomicUsize,
    /// Filters of persistent sessions whose connection ended, by client id.
    away: Mutex<HashMap<String, Vec<Box<str>>>>,
}

/// The part of a filter that matches topics: `$share/{group}/f` matches
/// like `f`.
fn matching_part(filter: &str) -> &str {
    filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')).map_or(filter, |(_, f)| f)
}

impl Interest {
    /// Whether some subscription could match `topic`.
    pub(super) fn wanted(&self, topic: &str) -> bool {
        if self.distinct.load(Ordering::Acquire) == 0 {
            return false;
        }
        let filters = self.filters.read().unwrap_or_else(PoisonError::into_inner);
        filters.keys().any(|f| mqtt_filter_matches(matching_part(f), topic))
    }

    /// Counts `filter` once more.
    pub(super) fn add(&self, filter: &str) {
        let mut filters = self.filters.write().unwrap_or_else(PoisonError::into_inner);
        *filters.entry(filter.into()).or_insert(0) += 1;
        self.distinct.store(filters.len(), Ordering::Release);
    }

    /// Counts `filter` once less.
    pub(super) fn remove(&self, filter: &str) {
        let mut filters = self.filters.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = filters.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                filters.remove(filter);
            }
        }
        self.distinct.store(filters.len(), Ordering::Release);
    }

    /// A connection of `client_id` starts: the filters its persistent
    /// session kept while away, to carry on (`persistent`) or to drop (a
    /// clean session discards the old one).
    pub(super) fn resume(&self, client_id: &str, persistent: bool) -> Vec<Box<str>> {
        let kept = lock(&self.away).remove(client_id).unwrap_or_default();
        if persistent {
            return kept;
        }
        for f in &kept {
            self.remove(f);
        }
        Vec::new()
    }

    /// A connection of `client_id` ended with `filters` subscribed: a
    /// persistent session keeps them, a clean one lets them go.
    pub(super) fn end(&self, client_id: &str, persistent: bool, filters: Vec<Box<str>>) {
        if persistent && !filters.is_empty() {
            // A session taken over by a newer connection already resumed:
            // what it kept is merged, never counted twice.
            let mut away = lock(&self.away);
            let kept = away.entry(client_id.to_owned()).or_default();
            for f in filters {
                if kept.contains(&f) {
                    self.remove(&f);
                } else {
                    kept.push(f);
                }
            }
            return;
        }
        for f in &filters {
            self.remove(f);
        }
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
pub(super) struct Subs(Mutex<Vec<Sub>>);

impl Subs {
    /// Adds or replaces (MQTT-3.8.4-3) the subscription of `sub.filter`;
    /// true when it is new.
    pub(super) fn set(&self, sub: Sub) -> bool {
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
        let mut subs = lock(&self.0);
        let before = subs.len();
        subs.retain(|s| &*s.filter != filter);
        subs.len() != before
    }

    /// The filters, for [`Interest::end`].
    pub(super) fn filters(&self) -> Vec<Box<str>> {
        lock(&self.0).iter().map(|s| s.filter.clone()).collect()
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
        assert!(!i.wanted("a/b"), "nothing subscribed");
        i.add("a/+");
        i.add("a/+");
        i.add("$share/g/c/#");
        assert!(i.wanted("a/b") && i.wanted("c/d/e") && !i.wanted("b/a"));
        i.remove("a/+");
        assert!(i.wanted("a/b"), "still one subscription");
        i.remove("a/+");
        assert!(!i.wanted("a/b"));
        i.remove("$share/g/c/#");
        assert!(!i.wanted("c/d"));
        i.remove("never/added");
        assert!(!i.wanted("never/added"));
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

    #[test]
    fn persistent_sessions_keep_their_filters_while_away() {
        let i = Interest::default();
        i.add("p/#");
        i.end("keeper", true, vec!["p/#".into()]);
        assert!(i.wanted("p/1"), "the broker queues for the absent session");
        let kept = i.resume("keeper", true);
        assert_eq!(kept, vec![Box::<str>::from("p/#")]);
        assert!(i.wanted("p/1"));
        i.end("keeper", true, kept);
        assert!(i.resume("keeper", false).is_empty(), "a clean session discards the old one");
        assert!(!i.wanted("p/1"));
        i.add("q");
        i.end("clean", false, vec!["q".into()]);
        assert!(!i.wanted("q"));
    }
}
