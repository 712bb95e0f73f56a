//! `[[rule]]`: edge processing that reads local topics and writes a derived
//! topic. This module holds the shape of the section and its structural
//! checks (names, topics, ranges); the expressions themselves are compiled
//! by the gateway, which reports their errors with the same field paths
//! (`rule["hot"].filter: column 19: ...`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{entry_labels, FieldError};
use crate::validate::{dur_range, topic_ref};
use crate::Config;

/// `[[rule]]`: a filter, projection, re-key, routing, deadband or window
/// over local topics, with results in a derived topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Required. Same characters as topic names; names the rule's consumer
    /// group (`rule:<name>`) and its state.
    pub name: String,
    /// Required. Topics the rule reads (all their partitions).
    pub inputs: Vec<String>,
    /// Required. The derived topic results go to (when no `routes` entry
    /// matches). Its service's weight, durability, TTL and retention apply.
    pub output: String,
    /// Records for which this is not true are dropped (counted as filtered).
    #[serde(default)]
    pub filter: Option<String>,
    /// New key of each result (a string, number or null); default: the
    /// input record's key. Deadband and windows group by this key.
    #[serde(default)]
    pub key: Option<String>,
    /// Event time in ms since the epoch; default: the record timestamp.
    #[serde(default)]
    pub time: Option<String>,
    /// The output value, built from expressions: `{ device = "key", t =
    /// "value.temp" }`. Default: the input value (or the window's result).
    #[serde(default)]
    pub project: Option<BTreeMap<String, String>>,
    /// Routing: each result goes to the topic of every entry whose `when`
    /// is true, or to `output` when none is.
    #[serde(default)]
    pub routes: Vec<RuleRoute>,
    /// Report by exception.
    #[serde(default)]
    pub deadband: Option<DeadbandConfig>,
    /// Aggregation per key over time windows.
    #[serde(default)]
    pub window: Option<WindowConfig>,
    /// What happens to a record an expression fails on. Default `"skip"`.
    #[serde(default)]
    pub on_error: OnError,
    /// Topic that receives the records expressions failed on (with
    /// `on_error = "side_topic"`) with a `sluice-rule-error` header.
    #[serde(default)]
    pub side_topic: Option<String>,
    /// Most keys the rule keeps state for (deadband, windows). Default
    /// 10000, 1..=1000000.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    /// Most input records processed per atomic commit. Default 10000,
    /// 1..=100000 (fewer commits, each a sync of the outputs and a
    /// metadata flush, cost less CPU per record).
    #[serde(default = "default_batch")]
    pub batch: u32,
}

fn default_max_keys() -> u32 {
    10_000
}

fn default_batch() -> u32 {
    10_000
}

/// One entry of a rule's `routes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleRoute {
    /// Boolean expression over the result.
    pub when: String,
    /// Topic that receives the results it is true for.
    pub topic: String,
}

/// A rule's `on_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// `"skip"`: drop the record, count it.
    #[default]
    Skip,
    /// `"side_topic"`: write the input record to `side_topic`, count it.
    SideTopic,
}

/// A window's `on_late`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLate {
    /// `"drop"`: drop the record, count it.
    #[default]
    Drop,
    /// `"side_topic"`: write it to the rule's `side_topic`, count it.
    SideTopic,
}

/// `[rule.deadband]`: emit a reading only when it moved enough.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadbandConfig {
    /// Required. The numeric reading, e.g. `"value.temp"`.
    pub value: String,
    /// Emit when |reading - last emitted| > absolute.
    #[serde(default)]
    pub absolute: Option<f64>,
    /// Emit when |reading - last emitted| > relative * |last emitted|.
    #[serde(default)]
    pub relative: Option<f64>,
    /// Emit anyway when the last emitted reading of the key is this old
    /// (in event time). Default none.
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub heartbeat: Option<Duration>,
}

/// Window kinds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// `"tumbling"`: back-to-back windows of `size`.
    #[default]
    Tumbling,
    /// `"hopping"`: windows of `size` starting every `hop`.
    Hopping,
    /// `"count"`: per key, a window closes after `count` records.
    Count,
    /// `"session"`: per key, a window grows while records come within
    /// `gap` of each other.
    Session,
}

impl WindowKind {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Tumbling => "tumbling",
            WindowKind::Hopping => "hopping",
            WindowKind::Count => "count",
            WindowKind::Session => "session",
        }
    }
}

/// `[rule.window]`: aggregates per key and time window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// `"tumbling"` (default), `"hopping"` or `"count"`.
    #[serde(default)]
    pub kind: WindowKind,
    /// Window length, 1ms..=7d; required for tumbling and hopping windows.
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub size: Option<Duration>,
    /// Count windows: records per window and key, 1..=1000000.
    #[serde(default)]
    pub count: Option<u32>,
    /// Session windows: the longest pause (event time) inside a session,
    /// 1ms..=7d.
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub gap: Option<Duration>,
    /// Hopping windows: how often one starts; divides `size`.
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub hop: Option<Duration>,
    /// How long after a window's end records may still arrive for it (in
    /// event time). Later records are dropped and counted. Default 0,
    /// at most 1d.
    #[serde(default, deserialize_with = "crate::duration::deserialize")]
    pub lateness: Duration,
    /// Windows of idle inputs close on the wall clock: once no record came
    /// for this long, stream time follows the wall clock. Default: `size`,
    /// 1ms..=7d.
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    pub idle_timeout: Option<Duration>,
    /// What happens to a record whose windows have all closed: `"drop"`
    /// (default; counted as late) or `"side_topic"` (also written to the
    /// rule's `side_topic` with a `sluice-rule-late` header).
    #[serde(default)]
    pub on_late: OnLate,
    /// Required. Output field = aggregate: `count()`, `sum(x)`, `min(x)`,
    /// `max(x)`, `avg(x)`, `first(x)`, `last(x)`, `p1(x)`..`p99(x)`.
    pub aggregates: BTreeMap<String, String>,
}

const MAX_KEYS: (u32, u32) = (1, 1_000_000);
const BATCH: (u32, u32) = (1, 100_000);
const WINDOW_SIZE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(7 * 86_400));
const MAX_LATENESS: Duration = Duration::from_secs(86_400);

/// Field labels of the rules, as in every other message.
pub(crate) fn labels(cfg: &Config) -> Vec<String> {
    entry_labels("rule", cfg.rules.iter().map(|r| Some(r.name.as_str())))
}

/// Structural problems of every `[[rule]]`.
pub(crate) fn problems(cfg: &Config) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut add = |field: String, message: String| out.push(FieldError { field, message });
    let labels = labels(cfg);
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (r, label)) in cfg.rules.iter().zip(&labels).enumerate() {
        if let Err(e) = crate::names::check_topic_name(&r.name) {
            add(format!("{label}.name"), format!("{:?}: {e}", r.name));
        }
        if let Some(first) = seen.insert(&r.name, i) {
            add(format!("{label}.name"), format!("{:?} is defined twice (also rule[{first}])", r.name));
        }
        if r.inputs.is_empty() {
            add(format!("{label}.inputs"), "is empty; name at least one topic to read".into());
        }
        for (j, t) in r.inputs.iter().enumerate() {
            if let Err(e) = topic_ref(cfg, t) {
                add(format!("{label}.inputs[{j}]"), e);
            }
        }
        let mut outputs = vec![(format!("{label}.output"), &r.output)];
        for (j, route) in r.routes.iter().enumerate() {
            outputs.push((format!("{label}.routes[{j}].topic"), &route.topic));
        }
        if let Some(side) = &r.side_topic {
            outputs.push((format!("{label}.side_topic"), side));
        }
        for (field, t) in outputs {
            if let Err(e) = topic_ref(cfg, t) {
                add(field, e);
            } else if r.inputs.contains(t) {
                add(field, format!("{t:?} is also an input of the rule; a rule cannot feed itself"));
            }
        }
        let late_to_side = r.window.as_ref().is_some_and(|w| w.on_late == OnLate::SideTopic);
        match (r.on_error == OnError::SideTopic || late_to_side, &r.side_topic) {
            (true, None) => add(
                format!("{label}.side_topic"),
                "is missing: on_error or window.on_late = \"side_topic\" needs the topic to write those records to"
                    .into(),
            ),
            (false, Some(_)) => add(
                format!("{label}.side_topic"),
                "is set but nothing goes there; set on_error or window.on_late = \"side_topic\", or remove it".into(),
            ),
            _ => {}
        }
        if !(MAX_KEYS.0..=MAX_KEYS.1).contains(&r.max_keys) {
            add(format!("{label}.max_keys"), format!("{} is out of range [1, {}]", r.max_keys, MAX_KEYS.1));
        }
        if !(BATCH.0..=BATCH.1).contains(&r.batch) {
            add(format!("{label}.batch"), format!("{} is out of range [1, {}]", r.batch, BATCH.1));
        }
        if let Some(d) = &r.deadband {
            if d.absolute.is_none() && d.relative.is_none() {
                add(format!("{label}.deadband"), "needs absolute, relative or both".into());
            }
            for (name, band) in [("absolute", d.absolute), ("relative", d.relative)] {
                if band.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
                    add(format!("{label}.deadband.{name}"), "must be a finite number >= 0".into());
                }
            }
            if d.heartbeat == Some(Duration::ZERO) {
                add(
                    format!("{label}.deadband.heartbeat"),
                    "0s would emit every reading; leave it out".into(),
                );
            }
        }
        if let Some(w) = &r.window {
            window_problems(w, label, &mut add);
            if w.aggregates.is_empty() {
                add(
                    format!("{label}.window.aggregates"),
                    "is empty; e.g. { avg_temp = \"avg(value.temp)\" }".into(),
                );
            }
            if r.deadband.is_some() {
                add(
                    format!("{label}.window"),
                    "a rule has a deadband or a window, not both; chain two rules".into(),
                );
            }
        }
    }
    out
}

/// The shape of a `[rule.window]`: size or count by kind, hop, lateness.
fn window_problems(w: &WindowConfig, label: &str, add: &mut impl FnMut(String, String)) {
    let kind = w.kind.as_str();
    if w.gap.is_some() && w.kind != WindowKind::Session {
        add(
            format!("{label}.window.gap"),
            format!("applies to session windows only, and this one is {kind}; remove gap"),
        );
    }
    match (w.kind, w.size, w.count) {
        (WindowKind::Session, size, count) => {
            for (field, set) in
                [("size", size.is_some()), ("hop", w.hop.is_some()), ("count", count.is_some())]
            {
                if set {
                    add(
                        format!("{label}.window.{field}"),
                        format!("a session window closes after `gap` without records; remove {field}"),
                    );
                }
            }
            match w.gap {
                None => add(
                    format!("{label}.window.gap"),
                    "is missing: a session window needs gap, e.g. \"5m\"".into(),
                ),
                Some(gap) => {
                    if let Err(e) = dur_range(gap, WINDOW_SIZE) {
                        add(format!("{label}.window.gap"), e);
                    }
                }
            }
        }
        (WindowKind::Count, size, count) => {
            if size.is_some() || w.hop.is_some() {
                let field = if size.is_some() { "size" } else { "hop" };
                add(
                    format!("{label}.window.{field}"),
                    format!("a count window closes after `count` records; remove {field}"),
                );
            }
            match count {
                None => add(format!("{label}.window.count"), "is missing: a count window needs count".into()),
                Some(n) if !(1..=1_000_000).contains(&n) => {
                    add(format!("{label}.window.count"), format!("{n} is out of range [1, 1000000]"))
                }
                Some(_) => {}
            }
        }
        (_, None, _) => add(
            format!("{label}.window.size"),
            format!("is missing: a {kind} window needs size, e.g. \"1m\""),
        ),
        (_, Some(size), count) => {
            if let Err(e) = dur_range(size, WINDOW_SIZE) {
                add(format!("{label}.window.size"), e);
            }
            if count.is_some() {
                add(
                    format!("{label}.window.count"),
                    format!("applies to count windows only, and this one is {kind}; remove count"),
                );
            }
            match (w.kind, w.hop) {
                (WindowKind::Hopping, None) => {
                    add(format!("{label}.window.hop"), "is missing: a hopping window needs hop".into())
                }
                (WindowKind::Hopping, Some(hop)) => {
                    if hop.is_zero() || hop > size || size.as_millis() % hop.as_millis().max(1) != 0 {
                        add(
                            format!("{label}.window.hop"),
                            format!(
                                "{} must be more than 0, at most size and divide size ({})",
                                crate::format_duration(hop),
                                crate::format_duration(size)
                            ),
                        );
                    }
                }
                (_, Some(_)) => add(
                    format!("{label}.window.hop"),
                    "applies to hopping windows only; set kind = \"hopping\" or remove hop".into(),
                ),
                (_, None) => {}
            }
        }
    }
    if let Some(idle) = w.idle_timeout {
        if let Err(e) = dur_range(idle, WINDOW_SIZE) {
            add(format!("{label}.window.idle_timeout"), e);
        }
    }
    if let Err(e) = dur_range(w.lateness, (Duration::ZERO, MAX_LATENESS)) {
        add(format!("{label}.window.lateness"), e);
    }
}
