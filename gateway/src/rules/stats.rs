//! Per-rule counters and gauges, shown by `/v1/rules` and `/metrics`.

use super::engine::{Counts, Engine};
use super::RuleHandle;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Totals since start (counters move only once a commit succeeded).
#[derive(Debug, Default)]
pub struct RuleStats {
    /// Records read.
    pub records_in: AtomicU64,
    /// Records written to the output and route topics.
    pub records_out: AtomicU64,
    /// Records the filter dropped.
    pub filtered: AtomicU64,
    /// Records that came after their windows closed (dropped).
    pub late: AtomicU64,
    /// Records or results an expression failed on.
    pub errors: AtomicU64,
    /// Readings the deadband held back.
    pub suppressed: AtomicU64,
    /// Bytes (value and key) of those readings: kept off the uplink.
    pub bytes_saved: AtomicU64,
    /// Records refused because the state was at `max_keys`.
    pub state_full: AtomicU64,
    /// Input records retention deleted before the rule read them.
    pub retention_skipped: AtomicU64,
    /// Atomic commits.
    pub commits: AtomicU64,
    /// Restarts after a failure.
    pub restarts: AtomicU64,
    /// Input records not processed yet (gauge).
    pub lag_records: AtomicU64,
    /// Age in ms of the oldest input record not processed yet, by its
    /// timestamp (gauge; 0 when caught up).
    pub lag_ms: AtomicU64,
    /// (key, window) pairs open (gauge).
    pub open_windows: AtomicU64,
    /// Keys with state (gauge).
    pub state_keys: AtomicU64,
    /// Size of the serialized state at the last commit (gauge).
    pub state_bytes: AtomicU64,
    /// The last failure.
    last_error: Mutex<Option<String>>,
}

impl RuleStats {
    /// Adds a committed step.
    pub fn add(&self, c: &Counts, retention_skipped: u64) {
        let pairs = [
            (&self.records_in, c.records_in),
            (&self.records_out, c.records_out),
            (&self.filtered, c.filtered),
            (&self.late, c.late),
            (&self.errors, c.errors),
            (&self.suppressed, c.suppressed),
            (&self.bytes_saved, c.bytes_saved),
            (&self.state_full, c.state_full),
            (&self.retention_skipped, retention_skipped),
            (&self.commits, 1),
        ];
        for (counter, n) in pairs {
            counter.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(e) = &c.last_error {
            self.set_error(e.clone());
        }
    }

    /// Updates the gauges.
    pub fn publish_state(&self, engine: &Engine, lag: u64, lag_ms: Option<i64>) {
        self.lag_records.store(lag, Ordering::Relaxed);
        self.lag_ms.store(lag_ms.unwrap_or(0).max(0) as u64, Ordering::Relaxed);
        self.open_windows.store(engine.open_windows() as u64, Ordering::Relaxed);
        self.state_keys.store(engine.state_keys() as u64, Ordering::Relaxed);
    }

    /// Remembers the last failure.
    pub fn set_error(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
    }

    /// The last failure.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Every counter and gauge by name, in a stable order.
    pub fn values(&self) -> [(&'static str, bool, u64); 16] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("records_in", true, g(&self.records_in)),
            ("records_out", true, g(&self.records_out)),
            ("filtered", true, g(&self.filtered)),
            ("late", true, g(&self.late)),
            ("errors", true, g(&self.errors)),
            ("suppressed", true, g(&self.suppressed)),
            ("bytes_saved", true, g(&self.bytes_saved)),
            ("state_full", true, g(&self.state_full)),
            ("retention_skipped", true, g(&self.retention_skipped)),
            ("commits", true, g(&self.commits)),
            ("restarts", true, g(&self.restarts)),
            ("lag_records", false, g(&self.lag_records)),
            ("lag_ms", false, g(&self.lag_ms)),
            ("open_windows", false, g(&self.open_windows)),
            ("state_keys", false, g(&self.state_keys)),
            ("state_bytes", false, g(&self.state_bytes)),
        ]
    }
}

/// The body of `GET /v1/rules`.
pub fn rules_json(rules: &[std::sync::Arc<RuleHandle>]) -> serde_json::Value {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|h| {
            let p = &h.program;
            let mut m = serde_json::Map::new();
            m.insert("name".into(), p.name.clone().into());
            m.insert("inputs".into(), p.inputs.clone().into());
            m.insert("outputs".into(), p.topics.clone().into());
            let kind = if p.window.is_some() || p.count.is_some() {
                "window"
            } else if p.deadband.is_some() {
                "deadband"
            } else {
                "stateless"
            };
            m.insert("kind".into(), kind.into());
            for (name, _, v) in h.stats.values() {
                m.insert(name.into(), v.into());
            }
            m.insert("last_error".into(), h.stats.last_error().into());
            serde_json::Value::Object(m)
        })
        .collect();
    serde_json::json!({ "rules": rules })
}

/// The rules' series of `/metrics` as (family, is counter, help, rule,
/// value), for the renderer in [`crate::metrics`].
pub fn help(name: &str) -> &'static str {
    match name {
        "records_in" => "Records a rule read",
        "records_out" => "Records a rule wrote to its outputs",
        "filtered" => "Records a rule's filter dropped",
        "late" => "Records that came after their window closed (dropped)",
        "errors" => "Records or results an expression failed on",
        "suppressed" => "Readings a deadband held back",
        "bytes_saved" => "Value and key bytes a deadband kept off the uplink",
        "state_full" => "Records refused because the rule's state was at max_keys",
        "retention_skipped" => "Input records retention deleted before the rule read them",
        "commits" => "Atomic commits of outputs, positions and state",
        "restarts" => "Restarts of a rule from its last commit after a failure",
        "lag_records" => "Input records a rule has not processed yet",
        "lag_ms" => "Age in ms of the oldest input record a rule has not processed yet",
        "open_windows" => "Open (key, window) pairs",
        "state_keys" => "Keys a rule holds state for",
        _ => "Bytes of a rule's serialized state at its last commit",
    }
}
