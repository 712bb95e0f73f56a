//! The rule engine as a pure function of (state, record) -> (state,
//! outputs): no I/O and no clock (the wall clock is passed in, used only to
//! close the windows of idle inputs), so it can be tested without a node.
//! The consumer loop in [`super::runner`] drives it and commits its state
//! with the outputs and input positions.

use super::expr::{type_name, EvalError, Input};
use super::program::Program;
use super::session::Sessions;
use super::window::{Closed, CountWindows, Refused, Windows};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_store::Record;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Header naming the failure on records written to a side topic.
pub const ERROR_HEADER: &str = "sluice-rule-error";
/// Header on late records written to a side topic: where the rule's
/// closed windows ended when the record came.
pub const LATE_HEADER: &str = "sluice-rule-late";

/// What a rule keeps between records (committed atomically with its
/// outputs and input positions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    /// The rule's [`Program::shape`] when the state was made.
    #[serde(default)]
    pub shape: String,
    /// Deadband: last emitted reading per key.
    #[serde(default)]
    pub deadband: BTreeMap<String, Last>,
    /// Open time windows.
    #[serde(default)]
    pub windows: Windows,
    /// Open count windows.
    #[serde(default)]
    pub counted: CountWindows,
    /// Open session windows.
    #[serde(default)]
    pub sessions: Sessions,
    /// Stream time: the largest event time seen.
    #[serde(default)]
    pub stream_ms: Option<i64>,
    /// The largest event time seen per input partition (`topic/partition`).
    #[serde(default)]
    pub sources: BTreeMap<String, i64>,
    /// Wall clock when the last record was processed.
    #[serde(default)]
    pub stream_wall_ms: i64,
    /// Windows that were open when retention deleted input the rule had
    /// not read (`key/start` for time windows, `key/*` for count and
    /// session windows): their results say `"incomplete": true`.
    #[serde(default)]
    pub incomplete: std::collections::BTreeSet<String>,
    /// Windows ending at or before this have closed: stream time minus
    /// lateness, moved on by the wall clock while inputs are idle.
    #[serde(default)]
    pub closed_ms: Option<i64>,
}

/// The last reading a deadband emitted for a key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Last {
    /// The reading.
    pub v: f64,
    /// Its event time.
    pub t: i64,
}

/// Counters of one step (added to the rule's totals once committed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Records read.
    pub records_in: u64,
    /// Records written (outputs, routes; not the side topic).
    pub records_out: u64,
    /// Records the filter dropped.
    pub filtered: u64,
    /// Records whose windows had closed.
    pub late: u64,
    /// Records (or window results) an expression failed on.
    pub errors: u64,
    /// Readings the deadband held back.
    pub suppressed: u64,
    /// Value and key bytes of those readings.
    pub bytes_saved: u64,
    /// Records refused because the state holds `max_keys` keys.
    pub state_full: u64,
    /// The last failure, `field: column N: ...`.
    pub last_error: Option<String>,
}

/// An output record and the index of its topic in [`Program::topics`].
pub type Emit = (usize, Record);

/// A rule's program and state.
#[derive(Debug, Clone)]
pub struct Engine {
    prog: Arc<Program>,
    /// The state (serialized into each commit).
    pub state: RuleState,
}

struct Failure {
    field: String,
    error: EvalError,
}

fn fail(field: impl Into<String>) -> impl FnOnce(EvalError) -> Failure {
    let field = field.into();
    move |error| Failure { field, error }
}

impl Engine {
    /// An engine starting from `state`.
    pub fn new(prog: Arc<Program>, state: RuleState) -> Engine {
        Engine { prog, state }
    }

    /// The program.
    pub fn program(&self) -> &Arc<Program> {
        &self.prog
    }

    /// Keys held in state.
    pub fn state_keys(&self) -> usize {
        self.state.deadband.len()
            + self.state.windows.keys()
            + self.state.counted.len()
            + self.state.sessions.len()
    }

    /// Open (key, window) pairs.
    pub fn open_windows(&self) -> usize {
        self.state.windows.entries() + self.state.counted.len() + self.state.sessions.len()
    }

    /// Processes one input record read from `source` (`topic/partition`).
    /// Windows close in [`Engine::advance`], once the step's reads are done.
    pub fn process(
        &mut self,
        rec: &Record,
        source: &str,
        now_wall: i64,
        out: &mut Vec<Emit>,
        counts: &mut Counts,
    ) {
        counts.records_in += 1;
        let value = serde_json::from_slice::<Value>(&rec.value)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&rec.value).into_owned()));
        let input = Input {
            value: &value,
            key: rec
                .key
                .as_ref()
                .map_or(Value::Null, |k| Value::String(String::from_utf8_lossy(k).into_owned())),
            headers: Value::Object(
                rec.headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(String::from_utf8_lossy(v).into_owned())))
                    .collect(),
            ),
            timestamp_ms: rec.timestamp_ms,
        };
        if let Err(f) = self.step(rec, &input, source, now_wall, out, counts) {
            self.failed(f, rec.clone(), out, counts);
        }
    }

    fn failed(&self, f: Failure, mut rec: Record, out: &mut Vec<Emit>, counts: &mut Counts) {
        let message = format!("rule {:?} {}: {}", self.prog.name, f.field, f.error);
        counts.errors += 1;
        if let Some(side) = self.prog.side_topic {
            rec.headers.push((ERROR_HEADER.to_owned(), message.clone().into_bytes()));
            out.push((side, rec));
        }
        counts.last_error = Some(message);
    }

    fn step(
        &mut self,
        rec: &Record,
        input: &Input<'_>,
        source: &str,
        now_wall: i64,
        out: &mut Vec<Emit>,
        counts: &mut Counts,
    ) -> Result<(), Failure> {
        let prog = self.prog.clone();
        if let Some(filter) = &prog.filter {
            if !filter.eval_bool(input).map_err(fail("filter"))? {
                counts.filtered += 1;
                return Ok(());
            }
        }
        let key = match &prog.key {
            Some(e) => key_string(e.eval(input).map_err(fail("key"))?).map_err(fail("key"))?,
            None => rec.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
        };
        let t = match &prog.time {
            Some(e) => e.eval_f64(input).map_err(fail("time"))? as i64,
            None => rec.timestamp_ms,
        };
        if prog.window.is_some() || prog.count.is_some() {
            let mut args = Vec::with_capacity(prog.aggregates.len());
            for a in &prog.aggregates {
                let field = || format!("window.aggregates.{}", a.name);
                let v = match &a.arg {
                    Some(e) => e.eval(input).map_err(fail(field()))?,
                    None => Value::Null,
                };
                if a.kind.numeric() && !v.is_number() {
                    let message = format!("gave {}, not a number", type_name(&v));
                    return Err(Failure { field: field(), error: whole(message) });
                }
                args.push(v);
            }
            let kinds: Vec<_> = prog.aggregates.iter().map(|a| a.kind).collect();
            let Some(spec) = prog.window else {
                let count = prog.count.unwrap_or(1);
                let k = key.as_deref().unwrap_or("");
                match self.state.counted.add(&kinds, k, t, &args, count, prog.max_keys) {
                    Ok(Some(closed)) => self.window_result(closed, out, counts),
                    Ok(None) => {}
                    Err(_) => counts.state_full += 1,
                }
                return Ok(());
            };
            let closed_before = self.state.closed_ms;
            let k = key.as_deref().unwrap_or("");
            let added = if spec.session {
                let added = self.state.sessions.add(&spec, &kinds, k, t, &args, closed_before, prog.max_keys);
                added.map(|ended| {
                    if let Some(ended) = ended {
                        self.window_result(ended, out, counts);
                    }
                })
            } else {
                self.state.windows.add(&spec, &kinds, k, t, &args, closed_before, prog.max_keys)
            };
            match added {
                Ok(()) => {}
                Err(Refused::Late) => {
                    counts.late += 1;
                    if let Some(side) = prog.late_topic {
                        let mut rec = rec.clone();
                        let why = format!(
                            "event time {t}: windows up to {} have closed",
                            closed_before.unwrap_or(t)
                        );
                        rec.headers.push((LATE_HEADER.to_owned(), why.into_bytes()));
                        out.push((side, rec));
                    }
                }
                Err(Refused::Full) => counts.state_full += 1,
            }
            self.state.stream_ms = Some(self.state.stream_ms.map_or(t, |s| s.max(t)));
            let seen = self.state.sources.entry(source.to_owned()).or_insert(t);
            *seen = (*seen).max(t);
            self.state.stream_wall_ms = now_wall;
            return Ok(());
        }
        if let Some(db) = &prog.deadband {
            let x = db.value.eval_f64(input).map_err(fail("deadband.value"))?;
            let k = key.clone().unwrap_or_default();
            let emit = match self.state.deadband.get(&k) {
                None => true,
                Some(last) => {
                    let moved = (x - last.v).abs();
                    db.absolute.is_some_and(|b| moved > b)
                        || db.relative.is_some_and(|r| moved > r * last.v.abs())
                        || db.heartbeat_ms.is_some_and(|h| t - last.t >= h)
                }
            };
            if !emit {
                counts.suppressed += 1;
                counts.bytes_saved += (rec.value.len() + rec.key.as_ref().map_or(0, Vec::len)) as u64;
                return Ok(());
            }
            if !self.state.deadband.contains_key(&k) && self.state.deadband.len() >= prog.max_keys {
                // Forget the key that emitted longest ago: its next reading
                // is emitted (as for a new key), nothing is lost.
                let oldest = self.state.deadband.iter().min_by_key(|(_, l)| l.t).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.state.deadband.remove(&oldest);
                }
            }
            self.state.deadband.insert(k, Last { v: x, t });
        }
        let value = match &prog.project {
            Some(_) => None,
            None => Some(rec.value.clone()),
        };
        self.emit(input, key, value, rec.headers.clone(), rec.timestamp_ms, out, counts)
    }

    /// Projects and routes one result. `raw` is the value to write when
    /// there is no projection (the input bytes, unchanged).
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &self,
        input: &Input<'_>,
        key: Option<String>,
        raw: Option<Vec<u8>>,
        headers: Vec<(String, Vec<u8>)>,
        timestamp_ms: i64,
        out: &mut Vec<Emit>,
        counts: &mut Counts,
    ) -> Result<(), Failure> {
        let (bytes, projected) = match (&self.prog.project, raw) {
            (Some(fields), _) => {
                let mut m = Map::new();
                for f in fields {
                    m.insert(
                        f.name.clone(),
                        f.expr.eval(input).map_err(fail(format!("project.{}", f.name)))?,
                    );
                }
                let v = Value::Object(m);
                (serde_json::to_vec(&v).unwrap_or_default(), Some(v))
            }
            (None, Some(raw)) => (raw, None),
            (None, None) => (serde_json::to_vec(input.value).unwrap_or_default(), None),
        };
        let result = Input {
            value: projected.as_ref().unwrap_or(input.value),
            key: key.as_ref().map_or(Value::Null, |k| Value::String(k.clone())),
            headers: input.headers.clone(),
            timestamp_ms,
        };
        let mut targets = Vec::new();
        for (i, r) in self.prog.routes.iter().enumerate() {
            if r.when.eval_bool(&result).map_err(fail(format!("routes[{i}].when")))? {
                targets.push(r.topic);
            }
        }
        if targets.is_empty() {
            targets.push(0);
        }
        for topic in targets {
            let rec = Record {
                key: key.as_ref().map(|k| k.clone().into_bytes()),
                value: bytes.clone(),
                headers: headers.clone(),
                timestamp_ms,
            };
            out.push((topic, rec));
            counts.records_out += 1;
        }
        Ok(())
    }

    /// Closes the windows ending at or before `upto` (and moves
    /// `closed_ms` there; it never goes back).
    fn close_upto(&mut self, upto: i64, out: &mut Vec<Emit>, counts: &mut Counts) {
        let Some(spec) = self.prog.window else { return };
        let upto = self.state.closed_ms.map_or(upto, |c| c.max(upto));
        self.state.closed_ms = Some(upto);
        let mut closed = self.state.windows.close(&spec, upto);
        closed.extend(self.state.sessions.close(&spec, upto));
        for c in closed {
            self.window_result(c, out, counts);
        }
    }

    fn window_result(&mut self, c: Closed, out: &mut Vec<Emit>, counts: &mut Counts) {
        let mut m = Map::new();
        let incomplete = self.state.incomplete.remove(&format!("{}/{}", c.key, c.start))
            | self.state.incomplete.remove(&format!("{}/*", c.key));
        m.insert("key".into(), if c.key.is_empty() { Value::Null } else { Value::String(c.key.clone()) });
        m.insert("start".into(), Value::from(c.start));
        m.insert("end".into(), Value::from(c.end));
        for (a, acc) in self.prog.aggregates.iter().zip(&c.accs) {
            m.insert(a.name.clone(), acc.result(a.kind));
        }
        if incomplete {
            m.insert("incomplete".into(), Value::Bool(true));
        }
        let value = Value::Object(m);
        let key = (!c.key.is_empty()).then(|| c.key.clone());
        let input = Input {
            value: &value,
            key: key.as_ref().map_or(Value::Null, |k| Value::String(k.clone())),
            headers: Value::Object(Map::new()),
            timestamp_ms: c.end,
        };
        if let Err(f) = self.emit(&input, key.clone(), None, Vec::new(), c.end, out, counts) {
            let rec = Record {
                key: key.map(String::into_bytes),
                value: serde_json::to_vec(&value).unwrap_or_default(),
                headers: Vec::new(),
                timestamp_ms: c.end,
            };
            self.failed(f, rec, out, counts);
        }
    }

    /// Closes the windows stream time has passed, after a step's reads.
    /// `lagging` are the input partitions with records left to read: stream
    /// time stops at the slowest of them (one read ahead must not make the
    /// other's records late); caught-up partitions do not hold it back.
    pub fn advance(&mut self, lagging: &[String], out: &mut Vec<Emit>, counts: &mut Counts) {
        let (Some(spec), Some(mut stream)) = (self.prog.window, self.state.stream_ms) else { return };
        for source in lagging {
            match self.state.sources.get(source) {
                Some(t) => stream = stream.min(*t),
                // Not read yet: its event times are unknown.
                None => return,
            }
        }
        self.close_upto(stream - spec.lateness_ms, out, counts);
    }

    /// Retention deleted input records before the rule read them: every
    /// open window may miss some, and its result will say so.
    pub fn input_lost(&mut self) {
        let s = &mut self.state;
        let ids: Vec<String> = s
            .windows
            .open_ids()
            .map(|(k, start)| format!("{k}/{start}"))
            .chain(s.counted.keys().chain(s.sessions.keys()).map(|k| format!("{k}/*")))
            .collect();
        s.incomplete.extend(ids);
    }

    /// Called while every input is idle: once they have been idle for the
    /// window's `idle_timeout`, stream time follows the wall clock, so the
    /// windows of idle inputs close.
    pub fn tick(&mut self, now_wall: i64, out: &mut Vec<Emit>, counts: &mut Counts) {
        let (Some(spec), Some(stream)) = (self.prog.window, self.state.stream_ms) else { return };
        let idle = now_wall - self.state.stream_wall_ms - spec.idle_ms;
        if idle > 0 {
            self.close_upto(stream - spec.lateness_ms + idle, out, counts);
        }
    }

    /// Wall-clock ms from `now_wall` until the oldest open window closes if
    /// the inputs stay idle.
    pub fn next_close_in(&self, now_wall: i64) -> Option<i64> {
        let spec = self.prog.window?;
        let end = match (self.state.windows.next_end(&spec), self.state.sessions.next_end(&spec)) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let stream = self.state.stream_ms?;
        let due_wall = self.state.stream_wall_ms + spec.idle_ms + (end + spec.lateness_ms - stream);
        Some((due_wall - now_wall).max(0))
    }
}

fn whole(message: String) -> EvalError {
    EvalError { column: 1, text: String::new(), message }
}

/// A key from an expression's result: strings as they are, numbers and
/// booleans as text, null for no key.
fn key_string(v: Value) -> Result<Option<String>, EvalError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(_) | Value::Bool(_) => Ok(Some(v.to_string())),
        other => Err(whole(format!("gave {}; a key is a string, a number or null", type_name(&other)))),
    }
}

#[cfg(test)]
mod tests;
