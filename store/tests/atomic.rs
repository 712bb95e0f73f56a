//! `Store::commit_atomic`: records in several partitions, consumer-group
//! positions and state, made durable as one step (what rules and the Kafka
//! listener's producer state need).
#![allow(clippy::unwrap_used)]

use sluice_store::{AtomicWrite, Offset, PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use std::path::Path;

fn open(path: &Path) -> Store {
    Store::open(&StoreOptions::new(path)).unwrap()
}

fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec { name: name.into(), partitions, service: "s".into(), retention: Retention::default() }
}

fn rec(v: &str) -> Record {
    Record { key: None, value: v.as_bytes().to_vec(), headers: vec![], timestamp_ms: 1 }
}

fn values(store: &Store, topic: &str, p: u32) -> Vec<(u64, String)> {
    store
        .read(topic, PartitionId(p), Offset(0), usize::MAX, usize::MAX)
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.offset.0, String::from_utf8(r.record.value).unwrap()))
        .collect()
}

#[test]
fn records_positions_and_state_commit_together_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.ensure_topic(&spec("in", 1)).unwrap();
    store.ensure_topic(&spec("out", 2)).unwrap();
    store.append("in", PartitionId(0), &[rec("a"), rec("b"), rec("c")]).unwrap();
    store.flush().unwrap();
    // Appended but not yet durable when the commit starts: it goes out with
    // (and before) the commit's own records.
    store.append("out", PartitionId(0), &[rec("plain")]).unwrap();

    let w = AtomicWrite {
        records: vec![
            ("out".into(), PartitionId(0), vec![rec("sum-1"), rec("sum-2")]),
            ("out".into(), PartitionId(1), vec![rec("other")]),
        ],
        positions: vec![("rule-1".into(), "in".into(), PartitionId(0), Offset(3))],
        state: vec![(b"rule-1/window".to_vec(), Some(b"{\"n\":3}".to_vec()))],
    };
    let firsts = store.commit_atomic(&w).unwrap();
    assert_eq!(firsts, vec![Offset(1), Offset(0)]);
    // Durable and visible at once, without a flush.
    assert_eq!(values(&store, "out", 0), vec![(0, "plain".into()), (1, "sum-1".into()), (2, "sum-2".into())]);
    assert_eq!(values(&store, "out", 1), vec![(0, "other".into())]);
    assert_eq!(store.committed("rule-1", "in", PartitionId(0)).unwrap(), Some(Offset(3)));
    assert_eq!(store.state(b"rule-1/window").unwrap().as_deref(), Some(&b"{\"n\":3}"[..]));
    drop(store);

    // No flush, no checkpoint after the commit: it must be durable by itself.
    let store = open(dir.path());
    assert_eq!(values(&store, "out", 0).len(), 3);
    assert_eq!(values(&store, "out", 1), vec![(0, "other".into())]);
    assert_eq!(store.committed("rule-1", "in", PartitionId(0)).unwrap(), Some(Offset(3)));
    assert_eq!(store.state(b"rule-1/window").unwrap().as_deref(), Some(&b"{\"n\":3}"[..]));

    // State can be deleted in a later commit; offsets go on.
    let w = AtomicWrite {
        records: vec![("out".into(), PartitionId(0), vec![rec("sum-3")])],
        positions: vec![],
        state: vec![(b"rule-1/window".to_vec(), None)],
    };
    assert_eq!(store.commit_atomic(&w).unwrap(), vec![Offset(3)]);
    assert_eq!(store.state(b"rule-1/window").unwrap(), None);
}

#[test]
fn a_position_past_the_data_refuses_the_whole_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.ensure_topic(&spec("in", 1)).unwrap();
    store.ensure_topic(&spec("out", 1)).unwrap();
    let w = AtomicWrite {
        records: vec![("out".into(), PartitionId(0), vec![rec("x")])],
        positions: vec![("g".into(), "in".into(), PartitionId(0), Offset(5))],
        state: vec![(b"k".to_vec(), Some(b"v".to_vec()))],
    };
    let err = store.commit_atomic(&w).unwrap_err();
    assert!(err.to_string().contains("past the high watermark"), "{err}");
    assert!(values(&store, "out", 0).is_empty());
    assert_eq!(store.state(b"k").unwrap(), None);
    assert_eq!(store.committed("g", "in", PartitionId(0)).unwrap(), None);
}

/// A commit whose batches reached the segment but whose metadata did not
/// (a crash in between) leaves nothing: recovery cuts the batch, and the
/// next append takes its offsets (nobody ever saw them).
#[test]
fn a_commit_cut_short_by_a_crash_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        store.ensure_topic(&spec("out", 1)).unwrap();
        store.append("out", PartitionId(0), &[rec("before")]).unwrap();
        store.flush().unwrap();
    }
    // What a crash after the segment write and before the metadata commit
    // leaves: a batch flagged as commit 1 at the end of the segment, and
    // no "commit 1 done" in the metadata.
    let seg_dir = dir.path().join("segments").join("out-0");
    let seg = std::fs::read_dir(&seg_dir).unwrap().next().unwrap().unwrap().path();
    let mut batch = sluice_store::log::segment::encode(Offset(1), &[rec("half-done")]);
    batch[5] = sluice_store::log::segment::FLAG_ATOMIC;
    batch[40..48].copy_from_slice(&1i64.to_be_bytes());
    // Re-seal the CRC over the changed header.
    let mut crc = crc32c(&batch[..52]);
    crc = crc32c_append(crc, &batch[56..]);
    batch[52..56].copy_from_slice(&crc.to_be_bytes());
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&batch);
    std::fs::write(&seg, bytes).unwrap();
    let store = open(dir.path());
    assert_eq!(values(&store, "out", 0), vec![(0, "before".into())]);
    assert_eq!(store.append("out", PartitionId(0), &[rec("after")]).unwrap(), Offset(1));
    store.flush().unwrap();
    assert_eq!(values(&store, "out", 0), vec![(0, "before".into()), (1, "after".into())]);
}

// CRC32C (Castagnoli), bitwise: the test does not depend on the store's
// own implementation to forge a batch.
fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
        }
    }
    !c
}

fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}
