//! The consumer loop of one rule: read durable input records from the
//! rule's positions, run them through the [`Engine`], and commit outputs,
//! input positions and state in one [`Store::commit_atomic`], so after a
//! crash the derived topics hold every result exactly once and the state
//! matches the positions.

use super::engine::{Counts, Emit, Engine, RuleState};
use super::gate::Gate;
use super::RuleHandle;
use crate::state::Shared;
use crate::topics::Topic;
use anyhow::Context as _;
use sluice_store::{now_ms, AtomicWrite, Offset, PartitionId, Record};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes read per partition and step (a step reads at least one record).
const MAX_READ_BYTES: usize = 1 << 20;
/// Longest sleep while idle with open windows (the wall clock closes them).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// Pause after a failed step before starting again from the stored state.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Runs a rule until shutdown. A failure (store error) is logged and the
/// rule starts over from its last commit.
pub async fn run(shared: Shared, handle: Arc<RuleHandle>, gate: Arc<Gate>, stop: watch::Receiver<bool>) {
    let mut shutdown = shared.shutdown.clone();
    let mut stopped = stop.clone();
    loop {
        match run_from_commit(&shared, &handle, &gate, stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(rule = %handle.program.name, error = %message, "rule failed; restarting from its last commit");
                handle.stats.set_error(message);
                handle.stats.restarts.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
            _ = shutdown.wait_for(|s| *s) => return,
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

struct Input {
    /// `topic/partition`, the engine's name of the source.
    source: String,
    topic: Arc<Topic>,
    partition: PartitionId,
    next: Offset,
    moved: bool,
}

async fn run_from_commit(
    shared: &Shared,
    handle: &RuleHandle,
    gate: &Arc<Gate>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let prog = handle.program.clone();
    let store = &shared.store;
    let topic = |name: &String| {
        shared
            .topics
            .get_or_create(name, store, &shared.services)
            .with_context(|| format!("rule {:?}: topic {name:?}", prog.name))
    };
    let outputs: Vec<Arc<Topic>> = prog.topics.iter().map(topic).collect::<Result<_, _>>()?;
    let group = prog.group();
    let mut inputs = Vec::new();
    for name in &prog.inputs {
        let t = topic(name)?;
        for p in 0..t.partitions {
            let partition = PartitionId(p);
            let next = match store.committed(&group, name, partition)? {
                Some(o) => o,
                None => store.watermarks(name, partition)?.0,
            };
            let source = format!("{name}/{p}");
            inputs.push(Input { source, topic: t.clone(), partition, next, moved: false });
        }
    }
    let shape = prog.shape();
    let state = match store.state(&prog.state_key())? {
        Some(bytes) => serde_json::from_slice::<RuleState>(&bytes)
            .with_context(|| format!("rule {:?}: its stored state is not readable", prog.name))?,
        None => RuleState { shape: shape.clone(), ..RuleState::default() },
    };
    let state = if state.shape == shape {
        state
    } else {
        // Open windows or last readings of another key, window or
        // aggregate list would give wrong results: start them over.
        tracing::warn!(rule = %prog.name, was = %state.shape, now = %shape,
            "the rule's key, event time, deadband reading or window changed: its state starts fresh (input positions are kept)");
        handle
            .stats
            .set_error(format!("state started fresh: the rule changed from {} to {shape}", state.shape));
        RuleState { shape, ..RuleState::default() }
    };
    let mut engine = Engine::new(prog.clone(), state);
    handle.stats.publish_state(&engine, 0, None);
    let stateful = prog.window.is_some() || prog.count.is_some() || prog.deadband.is_some();
    let mut shutdown = shared.shutdown.clone();
    let mut first = 0;
    // The rule's priority is its output topic's service's.
    let service = outputs[0].service.clone();
    let mut step_bytes: u64 = 1024;
    loop {
        if *shutdown.borrow() || *stop.borrow() {
            return Ok(());
        }
        let appended = shared.topics.subscribe_any();
        let class = shared.services.resolve(&service).class();
        let permit = gate.acquire(&service, class, step_bytes).await;
        let now = now_ms();
        let (mut out, mut counts) = (Vec::new(), Counts::default());
        let mut budget = prog.batch;
        let mut lag = 0;
        let mut skipped = 0;
        let mut lagging = Vec::new();
        let mut bytes = 0;
        let mut oldest = i64::MAX;
        // Rotate the first partition read so a busy one cannot starve the rest.
        first = (first + 1) % inputs.len().max(1);
        let n = inputs.len();
        for i in 0..n {
            let input = &mut inputs[(first + i) % n];
            if budget > 0 {
                let res =
                    store.read(&input.topic.name, input.partition, input.next, budget, MAX_READ_BYTES)?;
                if res.log_start > input.next {
                    // Retention deleted input the rule had not processed.
                    skipped += res.log_start.0 - input.next.0;
                    engine.input_lost();
                    input.next = res.log_start;
                    input.moved = true;
                }
                let from = input.next;
                for r in res.records.iter().filter(|r| r.offset >= from) {
                    bytes += r.record.value.len() as u64;
                    engine.process(&r.record, &input.source, now, &mut out, &mut counts);
                    input.next = Offset(r.offset.0 + 1);
                    input.moved = true;
                    budget -= 1;
                }
            }
            let (_, end) = store.watermarks(&input.topic.name, input.partition)?;
            lag += end.0.saturating_sub(input.next.0);
            if end > input.next {
                lagging.push(input.source.clone());
                // How long the oldest record not processed yet has waited.
                let next = store.read(&input.topic.name, input.partition, input.next, 1, 1)?;
                if let Some(r) = next.records.first() {
                    oldest = oldest.min(r.record.timestamp_ms);
                }
            }
        }
        engine.advance(&lagging, &mut out, &mut counts);
        let read = counts.records_in > 0 || skipped > 0;
        if !read {
            engine.tick(now, &mut out, &mut counts);
        }
        // The commit is I/O: the next rule computes meanwhile.
        drop(permit);
        step_bytes = bytes.max(1024);
        if read || !out.is_empty() {
            let state = stateful.then(|| serde_json::to_vec(&engine.state)).transpose()?;
            if let Some(s) = &state {
                handle.stats.state_bytes.store(s.len() as u64, Ordering::Relaxed);
            }
            let state = state.map(|s| (prog.state_key(), s));
            let write = atomic_write(&group, &inputs, &outputs, out, state);
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.commit_atomic(&write))
                .await
                .context("commit task")?
                .with_context(|| format!("rule {:?}: atomic commit", prog.name))?;
            for input in &mut inputs {
                input.moved = false;
            }
            for t in &outputs {
                t.notify_appended();
            }
            handle.stats.add(&counts, skipped);
            handle.stats.publish_state(&engine, lag, (oldest != i64::MAX).then(|| now - oldest));
            continue;
        }
        handle.stats.publish_state(&engine, lag, (oldest != i64::MAX).then(|| now - oldest));
        let wait = engine
            .next_close_in(now_ms())
            .map_or(IDLE_TICK, |ms| Duration::from_millis(ms.clamp(10, IDLE_TICK.as_millis() as i64) as u64));
        let mut appended = appended;
        tokio::select! {
            _ = appended.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// Outputs grouped by partition (order kept within each), the positions
/// that moved, and the state.
fn atomic_write(
    group: &str,
    inputs: &[Input],
    outputs: &[Arc<Topic>],
    out: Vec<Emit>,
    state: Option<(Vec<u8>, Vec<u8>)>,
) -> AtomicWrite {
    let mut by_partition: BTreeMap<(usize, u32), Vec<Record>> = BTreeMap::new();
    for (topic, rec) in out {
        let p = outputs[topic].partition_for(rec.key.as_deref());
        by_partition.entry((topic, p.0)).or_default().push(rec);
    }
    AtomicWrite {
        records: by_partition
            .into_iter()
            .map(|((t, p), recs)| (outputs[t].name.to_string(), PartitionId(p), recs))
            .collect(),
        positions: inputs
            .iter()
            .filter(|i| i.moved)
            .map(|i| (group.to_owned(), i.topic.name.to_string(), i.partition, i.next))
            .collect(),
        state: state.map(|(k, v)| vec![(k, Some(v))]).unwrap_or_default(),
    }
}
