//! Edge rules (`[[rule]]`, issue #15): filter, project, re-key, route,
//! report by exception (deadband) and aggregate in time windows, from local
//! topics into derived topics, exactly once on the node.
//!
//! - [`expr`]: the expression language (compiled once, always terminates).
//! - [`program`]: a `[[rule]]` compiled, with errors naming field and column.
//! - [`engine`]: the pure engine, (state, record) -> (state, outputs).
//! - [`window`]: windows per key and their aggregates; [`session`]:
//!   session windows.
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
pub mod session;
pub mod stats;
pub mod window;

use crate::state::Shared;
use program::Program;
use sluice_config::{Config, ConfigError};
use stats::RuleStats;
use std::sync::Arc;
use tokio::sync::watch;

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

/// The running rules: started at start-up, changed by a reload.
#[derive(Debug)]
pub struct Rules {
    gate: Arc<gate::Gate>,
    /// What `/v1/rules` and `/metrics` show.
    handles: std::sync::RwLock<Vec<Arc<RuleHandle>>>,
    /// The tasks, each with its stop signal.
    running: tokio::sync::Mutex<Vec<Running>>,
}

#[derive(Debug)]
struct Running {
    handle: Arc<RuleHandle>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Rules {
    /// The running rules.
    pub fn handles(&self) -> Vec<Arc<RuleHandle>> {
        self.handles.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn spawn(&self, shared: &Shared, program: Arc<Program>) -> Running {
        let handle = Arc::new(RuleHandle { program, stats: RuleStats::default() });
        let (stop, stopped) = watch::channel(false);
        tracing::info!(rule = %handle.program.name, inputs = ?handle.program.inputs, outputs = ?handle.program.topics, "rule started");
        let task = tokio::spawn(runner::run(shared.clone(), handle.clone(), self.gate.clone(), stopped));
        Running { handle, stop, task }
    }

    /// Applies a new set of rules: unchanged ones keep running, changed
    /// ones stop (their step in progress commits or leaves nothing) and
    /// start again from their committed positions and state (kept unless
    /// their key, event time or window changed, see
    /// [`program::Program::shape`]), removed ones stop, new ones start.
    /// Returns how many rules changed.
    pub async fn apply(&self, shared: &Shared, programs: Vec<Arc<Program>>) -> usize {
        let mut running = self.running.lock().await;
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        let mut changed = 0;
        for program in programs {
            let same = old.iter().position(|r| r.handle.program.config == program.config);
            match same {
                Some(i) => running.push(old.swap_remove(i)),
                None => {
                    if let Some(i) = old.iter().position(|r| r.handle.program.name == program.name) {
                        stop(old.swap_remove(i)).await;
                        tracing::info!(rule = %program.name, "rule changed: restarting it");
                    }
                    changed += 1;
                    running.push(self.spawn(shared, program));
                }
            }
        }
        for r in old {
            tracing::info!(rule = %r.handle.program.name, "rule removed: stopping it");
            changed += 1;
            stop(r).await;
        }
        *self.handles.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            running.iter().map(|r| r.handle.clone()).collect();
        changed
    }

    /// Waits for every rule task (after the shutdown signal).
    pub async fn join(&self) {
        for r in self.running.lock().await.drain(..) {
            let _ = r.task.await;
        }
    }
}

async fn stop(r: Running) {
    let _ = r.stop.send(true);
    let _ = r.task.await;
}

/// Starts one task per rule; they stop at shutdown (see [`Rules::join`]).
pub async fn start(shared: &Shared, programs: Vec<Arc<Program>>) -> Arc<Rules> {
    let services: Vec<_> = shared.services.iter().map(|s| (s.name.clone(), s.class())).collect();
    let gate = gate::Gate::new(
        crate::ingest::scheduler_mode(&shared.config),
        shared.config.scheduler.express_max_share,
        &services,
    );
    let rules = Arc::new(Rules {
        gate,
        handles: std::sync::RwLock::new(Vec::new()),
        running: tokio::sync::Mutex::new(Vec::new()),
    });
    let _ = shared.rules.set(rules.clone());
    rules.apply(shared, programs).await;
    rules
}

/// SIGHUP: re-reads the rules of the file at `path`. An invalid rule
/// refuses the whole change (the running rules stay), and so does a rule
/// writing to a `[[topic]]` added since the start (topics and services are
/// created at start-up: restart sluice for those).
pub async fn reload(shared: &Shared, path: &std::path::Path) -> anyhow::Result<usize> {
    let config = Config::load(path)?;
    let programs = compile(&config)?;
    for p in &programs {
        if let Some(t) = p.topics.iter().find(|t| config.topic(t).is_some() && shared.topics.get(t).is_none())
        {
            anyhow::bail!(
                "rule {:?}: topic {t:?} is new in the configuration; restart sluice to create it",
                p.name
            );
        }
    }
    let Some(rules) = shared.rules.get() else { return Ok(0) };
    Ok(rules.apply(shared, programs).await)
}
