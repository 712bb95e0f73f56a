//! Opening a directory written by `sluice-store/2`, whose records lived in
//! sled trees `log/<topic>/<partition>` as chunks (see [`super::chunk`]).
//!
//! Every partition's records are appended to the new segments at their
//! old offsets (gaps left by an accepted data loss stay gaps), made
//! durable, and checkpointed; then, in one step, the format marker becomes
//! `sluice-store/3`; only after that are the old trees dropped. Group
//! offsets and uplink cursors keep their trees and keys. A crash before
//! the marker changes leaves a format-2 directory: `open` removes the
//! half-written segments and migrates again.

use super::{chunk, meta, partition, Store, FORMAT};
use crate::error::StoreError;
use crate::record::{Offset, Record};

/// Records per append while copying.
const COPY_BATCH: usize = 512;

pub(super) fn from_v2(store: &Store, floors: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
    let trees = store.meta().trees()?;
    let started = std::time::Instant::now();
    // Left by an interrupted earlier attempt (its segments were removed).
    for tree in [&trees.checkpoints, &trees.segments, &trees.index] {
        tree.clear().map_err(StoreError::io("migrating"))?;
    }
    let mut copied = 0u64;
    let mut old_trees = Vec::new();
    for topic in store.topics_snapshot() {
        let name = topic.spec().name;
        for part in topic.partitions() {
            let tree_name = format!("log/{name}/{}", part.id.0);
            let tree = trees.db.open_tree(&tree_name).map_err(StoreError::io("migrating"))?;
            let log_start = partition::read_offset(
                &trees.meta,
                &partition::start_key(&name, part.id),
                "log start",
                &name,
                part.id,
            )?;
            let mut pending: Vec<Record> = Vec::new();
            let mut pending_first = Offset(0);
            for item in tree.iter() {
                let (k, v) = item.map_err(StoreError::io("migrating"))?;
                let first = Offset(meta::key_u64(&k));
                let recs = chunk::decode(first, &v).map_err(|source| StoreError::Corrupt {
                    topic: name.clone(),
                    partition: part.id.0,
                    offset: first.0,
                    source,
                })?;
                for (offset, raw) in recs {
                    if offset < log_start {
                        continue;
                    }
                    let record = Record::decode(raw).map_err(|source| StoreError::Corrupt {
                        topic: name.clone(),
                        partition: part.id.0,
                        offset: offset.0,
                        source,
                    })?;
                    let expected = Offset(pending_first.0 + pending.len() as u64);
                    if !pending.is_empty() && (offset != expected || pending.len() >= COPY_BATCH) {
                        copy(part, pending_first, &mut pending)?;
                    }
                    if pending.is_empty() {
                        pending_first = offset;
                    }
                    pending.push(record);
                    copied += 1;
                }
            }
            if !pending.is_empty() {
                copy(part, pending_first, &mut pending)?;
            }
            let floor_key = partition::floor_key(&name, part.id);
            if let Some((_, v)) = floors.iter().find(|(k, _)| *k == floor_key) {
                if let Some(floor) = meta::val_u64(v, 0) {
                    part.skip_to(Offset(floor))?;
                }
            }
            part.sync(None)?;
            old_trees.push(tree_name);
        }
    }
    store.checkpoint()?;
    trees.meta.insert("format", FORMAT).map_err(StoreError::io("migrating"))?;
    trees.sync().map_err(StoreError::io("migrating"))?;
    for name in old_trees {
        trees.db.drop_tree(name).map_err(StoreError::io("migrating"))?;
    }
    trees.sync().map_err(StoreError::io("migrating"))?;
    let _ = std::fs::remove_file(store.path().join("sluice-watermarks"));
    tracing::info!(
        records = copied,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "migrated the data directory from sluice-store/2 to sluice-store/3"
    );
    Ok(())
}

/// Appends `records` so the first lands at `first` (skipping forward over
/// a gap the old log had).
fn copy(part: &partition::Partition, first: Offset, records: &mut Vec<Record>) -> Result<(), StoreError> {
    let next = part.info().high_watermark;
    if first > next {
        part.skip_to(first)?;
    }
    let (got, _) = part.append(records);
    if got != first {
        return Err(StoreError::Metadata {
            what: format!("migration of {}/{}", part.topic, part.id.0),
            detail: format!("record at offset {first} would land at {got}"),
        });
    }
    records.clear();
    if part.undurable_bytes() > 8 << 20 {
        part.sync(None)?;
    }
    Ok(())
}
