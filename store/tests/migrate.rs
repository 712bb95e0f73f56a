//! A data directory written by `sluice-store/2` (records inside sled; the
//! fixture in `tests/fixtures/store-v2` was written by the code of commit
//! 3a27344) opens with the segment store and keeps every record, offset,
//! log start, group offset and uplink cursor; offsets continue after it.
//!
//! The fixture: topic `telemetry` (2 partitions, service `tele`) with 1200
//! and 1000 records, retention by age moved both log starts to 300 (in the
//! middle of an old chunk); topic `alarms` (1 partition, service `alarm`)
//! with 700 records; records are [`rec`] of (topic, partition, offset).
#![allow(clippy::unwrap_used)]

use sluice_store::{Offset, PartitionId, Record, SegmentLimits, Store, StoreOptions};
use std::path::Path;

/// The record the fixture holds at `i` (as written by the old code).
fn rec(topic: &str, p: u32, i: u64) -> Record {
    let mut headers = vec![("seq".to_owned(), i.to_be_bytes().to_vec())];
    if i % 3 == 0 {
        headers.push(("src".to_owned(), format!("{topic}-{p}").into_bytes()));
    }
    Record {
        key: if i % 5 == 0 { None } else { Some(format!("dev-{}", i % 17).into_bytes()) },
        value: {
            let mut v = format!("{topic}/{p}/{i}:").into_bytes();
            v.extend(std::iter::repeat_n((i % 251) as u8, (i % 40) as usize));
            v
        },
        headers,
        timestamp_ms: 1_700_000_000_000 + i as i64 * 10,
    }
}

/// (topic, partition, log start, high watermark).
const PARTS: [(&str, u32, u64, u64); 3] =
    [("alarms", 0, 0, 700), ("telemetry", 0, 300, 1200), ("telemetry", 1, 300, 1000)];

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn open(path: &Path) -> Store {
    // Small segments, so the migration rolls several per partition.
    Store::open(&StoreOptions {
        cache_capacity: 1 << 20,
        segments: SegmentLimits { max_bytes: 16 << 10, max_age_ms: i64::MAX / 2 },
        ..StoreOptions::new(path)
    })
    .unwrap()
}

fn check(store: &Store, extra: u64) {
    let names: Vec<String> = store.topics().into_iter().map(|t| t.spec.name).collect();
    assert_eq!(names, ["alarms", "telemetry"]);
    let t = store.topic("telemetry").unwrap();
    assert_eq!((t.spec.partitions, t.spec.service.as_str()), (2, "tele"));
    let a = store.topic("alarms").unwrap();
    assert_eq!((a.spec.partitions, a.spec.service.as_str()), (1, "alarm"));
    for (topic, p, start, hw) in PARTS {
        let info = store.topic(topic).unwrap().partitions[p as usize];
        let end = hw + extra;
        assert_eq!(
            (info.log_start.0, info.high_watermark.0, info.flushed.0),
            (start, end, end),
            "{topic}/{p}"
        );
        assert_eq!(info.records, end - start, "{topic}/{p}");
        let got = store.read(topic, PartitionId(p), Offset(0), usize::MAX, usize::MAX).unwrap();
        assert_eq!((got.log_start.0, got.high_watermark.0), (start, end));
        let offsets: Vec<u64> = got.records.iter().map(|s| s.offset.0).collect();
        assert_eq!(offsets, (start..end).collect::<Vec<_>>(), "{topic}/{p}");
        for s in &got.records {
            let i = s.offset.0;
            let want = if i < hw { rec(topic, p, i) } else { rec("new", p, i) };
            assert_eq!(s.record, want, "{topic}/{p} offset {i}");
        }
        // A read from the middle finds its place (sparse index, segments).
        let mid = store.read(topic, PartitionId(p), Offset(start + 123), 2, usize::MAX).unwrap();
        assert_eq!(mid.records.iter().map(|s| s.offset.0).collect::<Vec<_>>(), [start + 123, start + 124]);
    }
    let g = |group, topic, p| store.committed(group, topic, PartitionId(p)).unwrap().map(|o| o.0);
    assert_eq!(g("g1", "telemetry", 0), Some(1000));
    assert_eq!(g("g1", "telemetry", 1), Some(950));
    assert_eq!(g("g2", "alarms", 0), Some(700));
    assert_eq!(g("g2", "telemetry", 0), Some(301));
    assert_eq!(g("g1", "alarms", 0), None);
    let c = |topic, p| store.cursor("central", topic, PartitionId(p)).unwrap().map(|o| o.0);
    assert_eq!(c("telemetry", 0), Some(1100));
    assert_eq!(c("alarms", 0), Some(650));
    assert_eq!(c("telemetry", 1), None);
}

#[test]
fn a_format_2_directory_opens_with_everything_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2"), &path);
    {
        let store = open(&path);
        check(&store, 0);
        // The records now live in segment files.
        let segs = std::fs::read_dir(path.join("segments/telemetry-0")).unwrap().count();
        assert!(segs >= 1, "{segs} segment files");
        assert!(!path.join("sluice-watermarks").exists());
        // Offsets continue where the old log ended.
        for (topic, p, _, hw) in PARTS {
            for i in hw..hw + 5 {
                assert_eq!(store.append(topic, PartitionId(p), &[rec("new", p, i)]).unwrap(), Offset(i));
                store.flush().unwrap();
            }
        }
        store.flush().unwrap();
        check(&store, 5);
        store.commit("g1", "alarms", PartitionId(0), Offset(705)).unwrap();
        store.flush().unwrap();
    }
    // Reopened: migrated once, nothing lost, nothing migrated again.
    let store = open(&path);
    check_after_reopen(&store);
    drop(store);
    let store = open(&path);
    check_after_reopen(&store);
}

fn check_after_reopen(store: &Store) {
    assert!(store.accepted_loss().is_empty());
    assert_eq!(store.committed("g1", "alarms", PartitionId(0)).unwrap(), Some(Offset(705)));
    store.commit("g1", "alarms", PartitionId(0), Offset(0)).unwrap();
    store.commit("g1", "alarms", PartitionId(0), Offset(705)).unwrap();
    // check() expects g1/alarms unset: look at the rest by hand.
    for (topic, p, start, hw) in PARTS {
        let got = store.read(topic, PartitionId(p), Offset(0), usize::MAX, usize::MAX).unwrap();
        let offsets: Vec<u64> = got.records.iter().map(|s| s.offset.0).collect();
        assert_eq!(offsets, (start..hw + 5).collect::<Vec<_>>(), "{topic}/{p}");
        for s in &got.records {
            let i = s.offset.0;
            let want = if i < hw { rec(topic, p, i) } else { rec("new", p, i) };
            assert_eq!(s.record, want, "{topic}/{p} offset {i}");
        }
        assert_eq!(store.append(topic, PartitionId(p), &[rec("x", p, 0)]).unwrap(), Offset(hw + 5));
    }
    assert_eq!(store.cursor("central", "telemetry", PartitionId(0)).unwrap(), Some(Offset(1100)));
    assert_eq!(store.committed("g1", "telemetry", PartitionId(1)).unwrap(), Some(Offset(950)));
}
