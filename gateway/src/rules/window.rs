//! Time windows per key and their aggregates: pure state, no I/O, no clock
//! (times are passed in), serializable so it commits with the rule's
//! input positions.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Shape of the windows of a rule, in ms of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window length.
    pub size_ms: i64,
    /// A window starts every `hop_ms` (= `size_ms` for tumbling windows).
    pub hop_ms: i64,
    /// How long after its end a window still takes records.
    pub lateness_ms: i64,
    /// How long inputs stay idle before stream time follows the wall clock.
    pub idle_ms: i64,
    /// Session windows: `size_ms` is the gap (see [`super::session`]).
    pub session: bool,
}

impl WindowSpec {
    /// Starts of the windows that contain `t`, oldest first.
    pub fn starts(&self, t: i64) -> impl Iterator<Item = i64> {
        let last = t.div_euclid(self.hop_ms) * self.hop_ms;
        let n = (self.size_ms / self.hop_ms).max(1);
        let (hop, size) = (self.hop_ms, self.size_ms);
        (0..n).rev().map(move |i| last - i * hop).filter(move |s| t < s + size)
    }
}

/// What an aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// Records in the window.
    Count,
    /// Sum of the argument.
    Sum,
    /// Smallest argument.
    Min,
    /// Largest argument.
    Max,
    /// Mean of the argument.
    Avg,
    /// Argument of the earliest record (event time; ties: first arrived).
    First,
    /// Argument of the latest record (event time; ties: last arrived).
    Last,
    /// The given percentile (1..=99) of the argument, nearest rank, over
    /// at most [`MAX_SAMPLES`] values (a uniform sample beyond).
    Percentile(u8),
}

/// Values a percentile keeps per window and key; beyond, a uniform
/// reservoir sample of this many (bounded memory, approximate result).
pub const MAX_SAMPLES: usize = 1000;

impl AggKind {
    /// From its name in the configuration.
    pub fn parse(name: &str) -> Option<AggKind> {
        Some(match name {
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "avg" => AggKind::Avg,
            "first" => AggKind::First,
            "last" => AggKind::Last,
            _ => {
                let p = name.strip_prefix('p')?.parse::<u8>().ok().filter(|p| (1..=99).contains(p))?;
                AggKind::Percentile(p)
            }
        })
    }

    /// Whether the argument must be a number.
    pub fn numeric(self) -> bool {
        matches!(self, AggKind::Sum | AggKind::Min | AggKind::Max | AggKind::Avg | AggKind::Percentile(_))
    }
}

/// One aggregate's running state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acc {
    /// count, sum, min, max, avg: count and sum, and the extremes.
    Num { n: u64, sum: f64, min: f64, max: f64 },
    /// first / last: event time and the value.
    Pick { t: i64, v: Value },
    /// Percentiles: values seen and (a sample of) the values.
    Samples { n: u64, v: Vec<f64> },
    /// Nothing yet.
    Empty,
}

impl Acc {
    /// Adds one record's argument (`Value::Null` for `count()`).
    pub fn add(&mut self, kind: AggKind, t: i64, arg: &Value) {
        match kind {
            AggKind::Percentile(_) => {
                let x = arg.as_f64().unwrap_or(0.0);
                if !matches!(self, Acc::Samples { .. }) {
                    *self = Acc::Samples { n: 0, v: Vec::new() };
                }
                if let Acc::Samples { n, v } = self {
                    *n += 1;
                    if v.len() < MAX_SAMPLES {
                        v.push(x);
                    } else {
                        // Reservoir sampling, with a hash of the count as the
                        // random draw (replays give the same sample).
                        let j = (splitmix(*n) % *n) as usize;
                        if j < MAX_SAMPLES {
                            v[j] = x;
                        }
                    }
                }
            }
            AggKind::First | AggKind::Last => {
                let replace = match self {
                    Acc::Pick { t: seen, .. } => {
                        if kind == AggKind::First {
                            t < *seen
                        } else {
                            t >= *seen
                        }
                    }
                    _ => true,
                };
                if replace {
                    *self = Acc::Pick { t, v: arg.clone() };
                }
            }
            _ => {
                let x = arg.as_f64().unwrap_or(0.0);
                match self {
                    Acc::Num { n, sum, min, max } => {
                        *n += 1;
                        *sum += x;
                        *min = min.min(x);
                        *max = max.max(x);
                    }
                    _ => *self = Acc::Num { n: 1, sum: x, min: x, max: x },
                }
            }
        }
    }

    /// The aggregate's result.
    pub fn result(&self, kind: AggKind) -> Value {
        match (self, kind) {
            (Acc::Num { n, .. }, AggKind::Count) => Value::from(*n),
            (Acc::Num { sum, .. }, AggKind::Sum) => super::expr::number(*sum),
            (Acc::Num { min, .. }, AggKind::Min) => super::expr::number(*min),
            (Acc::Num { max, .. }, AggKind::Max) => super::expr::number(*max),
            (Acc::Num { n, sum, .. }, AggKind::Avg) if *n > 0 => super::expr::number(*sum / *n as f64),
            (Acc::Pick { v, .. }, _) => v.clone(),
            (Acc::Samples { v, .. }, AggKind::Percentile(p)) if !v.is_empty() => {
                let mut sorted = v.clone();
                sorted.sort_by(f64::total_cmp);
                let rank = (f64::from(p) / 100.0 * sorted.len() as f64).ceil() as usize;
                super::expr::number(sorted[rank.clamp(1, sorted.len()) - 1])
            }
            (_, AggKind::Count) => Value::from(0),
            _ => Value::Null,
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Open windows: start -> key -> one accumulator per aggregate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    open: BTreeMap<i64, BTreeMap<String, Vec<Acc>>>,
    /// (key, window) pairs open.
    entries: usize,
}

/// A window that closed: its key, bounds and results in aggregate order.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    /// Group key.
    pub key: String,
    /// Window start, ms.
    pub start: i64,
    /// Window end (exclusive), ms.
    pub end: i64,
    /// One result per aggregate.
    pub accs: Vec<Acc>,
}

/// Why a record was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every window it belongs to has closed.
    Late,
    /// It would open state beyond `max_keys`.
    Full,
}

impl Windows {
    /// (key, window) pairs open.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Distinct keys with an open window.
    pub fn keys(&self) -> usize {
        let mut keys: Vec<&String> = self.open.values().flat_map(|m| m.keys()).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }

    /// Adds a record at event time `t` with its aggregate arguments;
    /// `closed_before` is the end below which windows have closed.
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
    ) -> Result<(), Refused> {
        let starts: Vec<i64> =
            spec.starts(t).filter(|s| closed_before.is_none_or(|c| s + spec.size_ms > c)).collect();
        if starts.is_empty() {
            return Err(Refused::Late);
        }
        let new = starts.iter().filter(|s| !self.open.get(s).is_some_and(|m| m.contains_key(key))).count();
        if new > 0 && self.entries + new > max_keys {
            return Err(Refused::Full);
        }
        self.entries += new;
        for s in starts {
            let accs = self
                .open
                .entry(s)
                .or_default()
                .entry(key.to_owned())
                .or_insert_with(|| vec![Acc::Empty; kinds.len()]);
            for ((acc, kind), arg) in accs.iter_mut().zip(kinds).zip(args) {
                acc.add(*kind, t, arg);
            }
        }
        Ok(())
    }

    /// Removes and returns the windows whose end is at or below `upto`,
    /// oldest first, keys in order.
    pub fn close(&mut self, spec: &WindowSpec, upto: i64) -> Vec<Closed> {
        let mut out = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            let start = *entry.key();
            if start + spec.size_ms > upto {
                break;
            }
            for (key, accs) in entry.remove() {
                self.entries -= 1;
                out.push(Closed { key, start, end: start + spec.size_ms, accs });
            }
        }
        out
    }

    /// (key, start) of every open window.
    pub fn open_ids(&self) -> impl Iterator<Item = (&str, i64)> {
        self.open.iter().flat_map(|(s, m)| m.keys().map(move |k| (k.as_str(), *s)))
    }

    /// End of the oldest open window.
    pub fn next_end(&self, spec: &WindowSpec) -> Option<i64> {
        self.open.keys().next().map(|s| s + spec.size_ms)
    }
}

/// Count windows: per key, a window closes after `count` records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CountWindows {
    open: BTreeMap<String, Counted>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counted {
    n: u64,
    /// Earliest and latest event time in the window.
    start: i64,
    end: i64,
    accs: Vec<Acc>,
}

impl CountWindows {
    /// Keys with an open window.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Keys with an open window.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.open.keys().map(String::as_str)
    }

    /// Adds a record; returns the window it completed, if any. Its `start`
    /// and `end` are the earliest and latest event times in it.
    pub fn add(
        &mut self,
        kinds: &[AggKind],
        key: &str,
        t: i64,
        args: &[Value],
        count: u64,
        max_keys: usize,
    ) -> Result<Option<Closed>, Refused> {
        if !self.open.contains_key(key) && self.open.len() >= max_keys {
            return Err(Refused::Full);
        }
        let w = self.open.entry(key.to_owned()).or_insert_with(|| Counted {
            n: 0,
            start: t,
            end: t,
            accs: vec![Acc::Empty; kinds.len()],
        });
        w.n += 1;
        w.start = w.start.min(t);
        w.end = w.end.max(t);
        for ((acc, kind), arg) in w.accs.iter_mut().zip(kinds).zip(args) {
            acc.add(*kind, t, arg);
        }
        if w.n < count {
            return Ok(None);
        }
        Ok(self.open.remove(key).map(|w| Closed {
            key: key.to_owned(),
            start: w.start,
            end: w.end,
            accs: w.accs,
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const MIN: i64 = 60_000;

    #[test]
    fn tumbling_and_hopping_starts() {
        let t = WindowSpec { size_ms: MIN, hop_ms: MIN, lateness_ms: 0, idle_ms: MIN, session: false };
        assert_eq!(t.starts(61_000).collect::<Vec<_>>(), [MIN]);
        assert_eq!(t.starts(-1).collect::<Vec<_>>(), [-MIN]);
        let h = WindowSpec { size_ms: MIN, hop_ms: 20_000, lateness_ms: 0, idle_ms: MIN, session: false };
        assert_eq!(h.starts(61_000).collect::<Vec<_>>(), [20_000, 40_000, 60_000]);
    }

    #[test]
    fn aggregates_over_a_window() {
        let spec = WindowSpec { size_ms: MIN, hop_ms: MIN, lateness_ms: 0, idle_ms: MIN, session: false };
        let kinds = [
            AggKind::Count,
            AggKind::Sum,
            AggKind::Min,
            AggKind::Max,
            AggKind::Avg,
            AggKind::First,
            AggKind::Last,
        ];
        let mut w = Windows::default();
        for (t, x) in [(1_000, 4.0), (500, 2.0), (59_999, 9.0), (30_000, 1.0)] {
            let v = json!(x);
            let args = [json!(null), v.clone(), v.clone(), v.clone(), v.clone(), v.clone(), v];
            w.add(&spec, &kinds, "k", t, &args, None, 10).unwrap();
        }
        assert!(w.close(&spec, MIN - 1).is_empty());
        let closed = w.close(&spec, MIN);
        assert_eq!(closed.len(), 1);
        let got: Vec<Value> = closed[0].accs.iter().zip(kinds).map(|(a, k)| a.result(k)).collect();
        assert_eq!(got, [json!(4), json!(16), json!(1), json!(9), json!(4), json!(2.0), json!(9.0)]);
        assert_eq!(w.entries(), 0);
    }

    #[test]
    fn count_windows_close_after_n_records_per_key() {
        let mut w = CountWindows::default();
        let kinds = [AggKind::Count, AggKind::Sum];
        let mut closed = Vec::new();
        for (i, key) in ["a", "b", "a", "a", "b"].iter().enumerate() {
            let t = i as i64 * 10;
            let args = [json!(null), json!(i)];
            closed.extend(w.add(&kinds, key, t, &args, 3, 10).unwrap());
        }
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].key.as_str(), closed[0].start, closed[0].end), ("a", 0, 30));
        assert_eq!(closed[0].accs[1].result(AggKind::Sum), json!(5));
        assert_eq!(w.len(), 1);
        assert_eq!(w.add(&kinds, "c", 0, &[json!(null), json!(1)], 3, 1), Err(Refused::Full));
    }

    #[test]
    fn percentiles_by_nearest_rank_and_bounded() {
        let kinds = [AggKind::Percentile(50), AggKind::Percentile(95), AggKind::Percentile(99)];
        assert_eq!(AggKind::parse("p95"), Some(AggKind::Percentile(95)));
        assert_eq!(AggKind::parse("p100"), None);
        let mut accs = vec![Acc::Empty; 3];
        for x in (1..=100).rev() {
            for (a, k) in accs.iter_mut().zip(kinds) {
                a.add(k, 0, &json!(x));
            }
        }
        let got: Vec<Value> = accs.iter().zip(kinds).map(|(a, k)| a.result(k)).collect();
        assert_eq!(got, [json!(50), json!(95), json!(99)]);
        let mut big = Acc::Empty;
        for x in 0..100_000 {
            big.add(AggKind::Percentile(50), 0, &json!(x));
        }
        let Acc::Samples { n, v } = &big else { panic!("samples") };
        assert_eq!((*n, v.len()), (100_000, MAX_SAMPLES));
        let p50 = big.result(AggKind::Percentile(50)).as_f64().unwrap();
        assert!((40_000.0..60_000.0).contains(&p50), "{p50}");
    }

    #[test]
    fn late_and_full_are_refused() {
        let spec = WindowSpec { size_ms: MIN, hop_ms: MIN, lateness_ms: 0, idle_ms: MIN, session: false };
        let mut w = Windows::default();
        let args = [json!(null)];
        assert_eq!(w.add(&spec, &[AggKind::Count], "a", 10, &args, Some(MIN), 2), Err(Refused::Late));
        w.add(&spec, &[AggKind::Count], "a", MIN + 1, &args, Some(MIN), 2).unwrap();
        w.add(&spec, &[AggKind::Count], "b", MIN + 1, &args, Some(MIN), 2).unwrap();
        assert_eq!(w.add(&spec, &[AggKind::Count], "c", MIN + 1, &args, Some(MIN), 2), Err(Refused::Full));
        // An existing key still counts.
        w.add(&spec, &[AggKind::Count], "a", MIN + 2, &args, Some(MIN), 2).unwrap();
        assert_eq!((w.entries(), w.keys()), (2, 2));
        let state = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<Windows>(&state).unwrap(), w);
    }
}
