//! A `[[rule]]` compiled once at load: its expressions parsed, its topics
//! numbered. Every error names the rule's field and the column.

use super::expr::{Expr, ExprError};
use super::window::{AggKind, WindowSpec};
use sluice_config::{Config, FieldError, OnError, OnLate, RuleConfig, WindowKind};
use std::sync::Arc;
use std::time::Duration;

/// One output expression of a projection.
#[derive(Debug, Clone)]
pub struct Field {
    /// Output field name.
    pub name: String,
    /// Its expression.
    pub expr: Expr,
}

/// A `routes` entry: results it is true for go to `topic`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Condition over the result.
    pub when: Expr,
    /// Index into [`Program::topics`].
    pub topic: usize,
}

/// `[rule.deadband]`, compiled.
#[derive(Debug, Clone)]
pub struct Deadband {
    /// The reading.
    pub value: Expr,
    /// Absolute band.
    pub absolute: Option<f64>,
    /// Relative band (fraction of the last emitted reading).
    pub relative: Option<f64>,
    /// Longest gap between emitted readings of a key, ms of event time.
    pub heartbeat_ms: Option<i64>,
}

/// One aggregate of a window: output field, kind, argument.
#[derive(Debug, Clone)]
pub struct Aggregate {
    /// Output field.
    pub name: String,
    /// What it computes.
    pub kind: AggKind,
    /// Its argument (none for `count()`).
    pub arg: Option<Expr>,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Program {
    /// Rule name.
    pub name: String,
    /// Input topics.
    pub inputs: Vec<String>,
    /// Topics written: `[output, route topics..., side topic]`, deduplicated.
    pub topics: Vec<String>,
    /// Records that are not true are filtered.
    pub filter: Option<Expr>,
    /// New key.
    pub key: Option<Expr>,
    /// Event time.
    pub time: Option<Expr>,
    /// Output value fields (sorted by name).
    pub project: Option<Vec<Field>>,
    /// Routing.
    pub routes: Vec<Route>,
    /// Report by exception.
    pub deadband: Option<Deadband>,
    /// Time windows.
    pub window: Option<WindowSpec>,
    /// Count windows: records per window and key.
    pub count: Option<u64>,
    /// Window aggregates.
    pub aggregates: Vec<Aggregate>,
    /// Index into `topics` of the side topic of failing records, with
    /// `on_error = "side_topic"`.
    pub side_topic: Option<usize>,
    /// Index into `topics` of the side topic of late records, with
    /// `window.on_late = "side_topic"`.
    pub late_topic: Option<usize>,
    /// State bound.
    pub max_keys: usize,
    /// Records per commit.
    pub batch: usize,
    /// The configuration it came from (for `/v1/rules`).
    pub config: RuleConfig,
}

impl Program {
    /// The consumer group the rule commits its input positions under.
    pub fn group(&self) -> String {
        format!("rule:{}", self.name)
    }

    /// The key of its state in the store.
    pub fn state_key(&self) -> Vec<u8> {
        format!("rule\0{}", self.name).into_bytes()
    }

    /// What the rule's state depends on (key, event time, deadband
    /// reading, window and aggregates): a state made under another shape is
    /// not used.
    pub fn shape(&self) -> String {
        let c = &self.config;
        format!(
            "key={:?} time={:?} deadband={:?} window={:?}",
            c.key,
            c.time,
            c.deadband.as_ref().map(|d| &d.value),
            c.window.as_ref().map(|w| (w.kind, w.size, w.hop, w.count, w.gap, &w.aggregates))
        )
    }

    fn topic_index(&mut self, name: &str) -> usize {
        match self.topics.iter().position(|t| t == name) {
            Some(i) => i,
            None => {
                self.topics.push(name.to_owned());
                self.topics.len() - 1
            }
        }
    }
}

/// Compiles every `[[rule]]` of a validated configuration; all expression
/// errors at once, each as `rule["name"].field: column N: message`.
pub fn compile_all(cfg: &Config) -> Result<Vec<Arc<Program>>, Vec<FieldError>> {
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for (rule, label) in cfg.rules.iter().zip(cfg.rule_labels()) {
        match compile(rule, &label) {
            Ok(p) => out.push(Arc::new(p)),
            Err(mut e) => problems.append(&mut e),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Compiles one rule; `label` is its field path (`rule["hot"]`).
pub fn compile(rule: &RuleConfig, label: &str) -> Result<Program, Vec<FieldError>> {
    let mut problems = Vec::new();
    let mut expr = |field: String, src: &str| -> Option<Expr> {
        Expr::compile(src)
            .map_err(|e: ExprError| problems.push(FieldError { field, message: e.to_string() }))
            .ok()
    };
    let filter = rule.filter.as_ref().and_then(|s| expr(format!("{label}.filter"), s));
    let key = rule.key.as_ref().and_then(|s| expr(format!("{label}.key"), s));
    let time = rule.time.as_ref().and_then(|s| expr(format!("{label}.time"), s));
    let project = rule.project.as_ref().map(|fields| {
        fields
            .iter()
            .filter_map(|(name, src)| {
                expr(format!("{label}.project.{name}"), src).map(|expr| Field { name: name.clone(), expr })
            })
            .collect::<Vec<_>>()
    });
    let route_exprs: Vec<Option<Expr>> = rule
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| expr(format!("{label}.routes[{i}].when"), &r.when))
        .collect();
    let deadband = rule.deadband.as_ref().and_then(|d| {
        Some(Deadband {
            value: expr(format!("{label}.deadband.value"), &d.value)?,
            absolute: d.absolute,
            relative: d.relative,
            heartbeat_ms: d.heartbeat.map(|h| h.as_millis() as i64),
        })
    });
    let mut aggregates = Vec::new();
    if let Some(w) = &rule.window {
        for (name, src) in &w.aggregates {
            let field = format!("{label}.window.aggregates.{name}");
            match aggregate(name, src) {
                Ok(a) => aggregates.push(a),
                Err(message) => problems.push(FieldError { field, message }),
            }
        }
    }
    let count =
        rule.window.as_ref().filter(|w| w.kind == WindowKind::Count).map(|w| u64::from(w.count.unwrap_or(1)));
    let window = rule.window.as_ref().filter(|w| w.kind != WindowKind::Count).map(|w| {
        let size = match w.kind {
            WindowKind::Session => w.gap,
            _ => w.size,
        }
        .unwrap_or(Duration::from_secs(60));
        let size_ms = size.as_millis() as i64;
        WindowSpec {
            size_ms,
            hop_ms: match w.kind {
                WindowKind::Hopping => w.hop.map_or(size_ms, |h| h.as_millis() as i64),
                WindowKind::Tumbling | WindowKind::Count | WindowKind::Session => size_ms,
            },
            lateness_ms: w.lateness.as_millis() as i64,
            idle_ms: w.idle_timeout.unwrap_or(size).as_millis() as i64,
            session: w.kind == WindowKind::Session,
        }
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut p = Program {
        name: rule.name.clone(),
        inputs: rule.inputs.clone(),
        topics: vec![rule.output.clone()],
        filter,
        key,
        time,
        project,
        routes: Vec::new(),
        deadband,
        window,
        count,
        aggregates,
        side_topic: None,
        late_topic: None,
        max_keys: rule.max_keys as usize,
        batch: rule.batch as usize,
        config: rule.clone(),
    };
    for (r, when) in rule.routes.iter().zip(route_exprs) {
        let topic = p.topic_index(&r.topic);
        p.routes.push(Route { when: when.expect("route expressions compiled (checked above)"), topic });
    }
    if let Some(side) = &rule.side_topic {
        let side = p.topic_index(side);
        p.side_topic = (rule.on_error == OnError::SideTopic).then_some(side);
        p.late_topic = rule.window.as_ref().is_some_and(|w| w.on_late == OnLate::SideTopic).then_some(side);
    }
    Ok(p)
}

/// `avg(value.temp)` and friends.
fn aggregate(name: &str, src: &str) -> Result<Aggregate, String> {
    let kinds = "count(), sum(x), min(x), max(x), avg(x), first(x), last(x), p50(x) (any of p1 to p99)";
    let Some((func, arg)) = Expr::split_call(src) else {
        return Err(format!("{src:?} is not an aggregate (use one of {kinds})"));
    };
    let kind = AggKind::parse(func)
        .ok_or_else(|| format!("unknown aggregate {func:?} in {src:?} (use one of {kinds})"))?;
    let column_shift = src.find('(').map_or(0, |i| src[..=i].chars().count());
    let arg = match (kind, arg.trim().is_empty()) {
        (AggKind::Count, true) => None,
        (AggKind::Count, false) => return Err("count() takes no argument (it counts records)".into()),
        (_, true) => return Err(format!("{func}() needs an argument, e.g. {func}(value.temp)")),
        (_, false) => Some(
            Expr::compile(arg).map_err(|e| format!("column {}: {}", e.column + column_shift, e.message))?,
        ),
    };
    Ok(Aggregate { name: name.to_owned(), kind, arg })
}
