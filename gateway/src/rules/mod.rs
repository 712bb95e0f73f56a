//! Edge rules (`[[rule]]`, issue #15): filter, project, re-key, route,
//! report by exception (deadband) and aggregate in time windows, from local
//! topics into derived topics, exactly once on the node.
//!
//! - [`expr`]: the expression language (compiled once, always terminates).
//! - [`program`]: a `[[rule]]` compiled, with errors naming field and column.
//! - [`engine`]: the pure engine, (state, record) -> (state, outputs).
//! - [`window`]: windows per key and their aggregates.
//! - [`gate`]: which rule computes next, by its service's priority.
//! - [`runner`]: the consumer loop; outputs, input positions and state go
//!   out in one atomic commit of the store.
//! - [`stats`]: per-rule counters for `/v1/rules` and `/metrics`.
//! - [`dry_run`]: `sluice rule test`, a rule over a file without a node.

pub mod dry_run;
pub mod engine;
pub mod expr;
pub mod gate;
pub mod program;
pub mod runner;
pub mod stats;
pub mod window;

use crate::state::Shared;
use program::Program;
use sluice_config::{Config, ConfigError};
use stats::RuleStats;
use std::sync::Arc;

/// A running rule: its program and counters.
#[derive(Debug)]
pub struct RuleHandle {
    /// The compiled rule.
    pub program: Arc<Program>,
    /// Its counters.
    pub stats: RuleStats,
}

/// Compiles the rules of `config`; the errors read like every other
/// configuration error (`rule["hot"].filter: column 19: ...`).
pub fn compile(config: &Config) -> Result<Vec<Arc<Program>>, ConfigError> {
    program::compile_all(config).map_err(|problems| ConfigError::Invalid { problems })
}

/// Starts one task per rule; they stop at shutdown.
pub fn start(shared: &Shared, programs: Vec<Arc<Program>>) -> Vec<tokio::task::JoinHandle<()>> {
    let handles: Vec<Arc<RuleHandle>> = programs
        .into_iter()
        .map(|program| Arc::new(RuleHandle { program, stats: RuleStats::default() }))
        .collect();
    let _ = shared.rules.set(handles.clone());
    let services: Vec<_> = shared.services.iter().map(|s| (s.name.clone(), s.class())).collect();
    let gate = gate::Gate::new(
        crate::ingest::scheduler_mode(&shared.config),
        shared.config.scheduler.express_max_share,
        &services,
    );
    handles
        .into_iter()
        .map(|h| {
            tracing::info!(rule = %h.program.name, inputs = ?h.program.inputs, outputs = ?h.program.topics, "rule started");
            tokio::spawn(runner::run(shared.clone(), h, gate.clone()))
        })
        .collect()
}
