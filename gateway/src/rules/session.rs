//! Session windows per key: a window grows while records come within
//! `gap` of each other (in event time) and closes when stream time passes
//! its last record plus the gap (plus lateness). Pure state, serializable.

use super::window::{Acc, AggKind, Closed, Refused, WindowSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Open sessions, one per key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sessions {
    open: BTreeMap<String, Session>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    /// Earliest and latest event time in the session.
    first: i64,
    last: i64,
    accs: Vec<Acc>,
}

impl Sessions {
    /// Keys with an open session.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Adds a record at event time `t`; returns the session it ended (a
    /// record more than the gap after a key's session starts a new one).
    /// A record that falls before its key's open session by more than the
    /// gap, or whose session would have closed, is late.
    #[allow(clippy::too_many_arguments)] // one record's fields and the limits, all plain values
    pub fn add(
        &mut self,
        spec: &WindowSpec,
        kinds: &[AggKind],
        key: &str,
        t: i64,
        args: &[Value],
        closed_before: Option<i64>,
        max_keys: usize,
    ) -> Result<Option<Closed>, Refused> {
        let gap = spec.size_ms;
        if closed_before.is_some_and(|c| t + gap <= c) {
            return Err(Refused::Late);
        }
        let mut ended = None;
        match self.open.get(key) {
            Some(s) if t < s.first - gap => return Err(Refused::Late),
            Some(s) if t > s.last + gap => {
                ended = self.open.remove(key).map(|s| closed(key, s, gap));
            }
            Some(_) => {}
            None if self.open.len() >= max_keys => return Err(Refused::Full),
            None => {}
        }
        let s = self.open.entry(key.to_owned()).or_insert_with(|| Session {
            first: t,
            last: t,
            accs: vec![Acc::Empty; kinds.len()],
        });
        s.first = s.first.min(t);
        s.last = s.last.max(t);
        for ((acc, kind), arg) in s.accs.iter_mut().zip(kinds).zip(args) {
            acc.add(*kind, t, arg);
        }
        Ok(ended)
    }

    /// Removes and returns the sessions whose last record plus the gap is
    /// at or below `upto`, in key order.
    pub fn close(&mut self, spec: &WindowSpec, upto: i64) -> Vec<Closed> {
        let gap = spec.size_ms;
        let done: Vec<String> =
            self.open.iter().filter(|(_, s)| s.last + gap <= upto).map(|(k, _)| k.clone()).collect();
        done.into_iter().filter_map(|k| self.open.remove(&k).map(|s| closed(&k, s, gap))).collect()
    }

    /// Keys with an open session.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.open.keys().map(String::as_str)
    }

    /// The earliest end (last record + gap) of an open session.
    pub fn next_end(&self, spec: &WindowSpec) -> Option<i64> {
        self.open.values().map(|s| s.last + spec.size_ms).min()
    }
}

fn closed(key: &str, s: Session, gap: i64) -> Closed {
    Closed { key: key.to_owned(), start: s.first, end: s.last + gap, accs: s.accs }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn sessions_grow_within_the_gap_and_close_after_it() {
        let spec = WindowSpec { size_ms: 1000, hop_ms: 1000, lateness_ms: 0, idle_ms: 1000, session: true };
        let kinds = [AggKind::Count];
        let mut s = Sessions::default();
        let n = [json!(null)];
        for t in [0, 500, 1400, 2300] {
            assert_eq!(s.add(&spec, &kinds, "a", t, &n, None, 10), Ok(None));
        }
        // 4000 is more than the gap after 2300: the first session ends.
        let ended = s.add(&spec, &kinds, "a", 4000, &n, None, 10).unwrap().unwrap();
        assert_eq!((ended.start, ended.end, ended.accs[0].result(AggKind::Count)), (0, 3300, json!(4)));
        s.add(&spec, &kinds, "b", 4100, &n, None, 10).unwrap();
        assert_eq!(s.next_end(&spec), Some(5000));
        assert!(s.close(&spec, 4999).is_empty());
        let closed = s.close(&spec, 5100);
        assert_eq!(closed.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.add(&spec, &kinds, "c", 3000, &n, Some(5100), 10), Err(Refused::Late));
        assert_eq!(s.add(&spec, &kinds, "c", 6000, &n, Some(5100), 0), Err(Refused::Full));
    }
}
