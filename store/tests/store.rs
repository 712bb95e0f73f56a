//! Behaviour of the store through its public API: restart, corrupt or
//! foreign data directories (sled metadata and segment files), retention
//! and eviction by whole segments, error cases, partition growth and the
//! key partitioner.
#![allow(clippy::unwrap_used)]

use sluice_store::{
    partition_for_key, EvictionPolicy, Offset, PartitionId, Record, Retention, SegmentLimits, Store,
    StoreError, StoreOptions, TopicSpec,
};
use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

const P0: PartitionId = PartitionId(0);
const P1: PartitionId = PartitionId(1);

/// Bytes of a batch header in a segment file.
const BATCH_HEADER: u64 = sluice_store::log::segment::HEADER_LEN as u64;

/// Segments of up to 14 000 bytes, never rolled by age (the test records carry
/// timestamps from 1970).
const LIMITS: SegmentLimits = SegmentLimits { max_bytes: 14_000, max_age_ms: i64::MAX / 2 };

/// Every batch gets a segment of its own: retention and eviction, which
/// delete whole segments, then work record by record when each record is
/// made durable on its own.
const ONE_PER_SEGMENT: SegmentLimits = SegmentLimits { max_bytes: 1, max_age_ms: i64::MAX / 2 };

fn open_with(path: &Path, segments: SegmentLimits, accept_data_loss: bool) -> Result<Store, StoreError> {
    Store::open(&StoreOptions {
        cache_capacity: 1 << 20,
        segments,
        accept_data_loss,
        ..StoreOptions::new(path)
    })
}

fn open(path: &Path) -> Result<Store, StoreError> {
    open_with(path, LIMITS, false)
}

fn open_small(path: &Path) -> Store {
    open_with(path, ONE_PER_SEGMENT, false).unwrap()
}

fn spec(name: &str, partitions: u32, service: &str) -> TopicSpec {
    TopicSpec { name: name.into(), partitions, service: service.into(), retention: Retention::default() }
}

/// A record with `len` value bytes and timestamp `ts`; its size does not
/// depend on `ts`.
fn rec(ts: i64, len: usize) -> Record {
    Record {
        key: Some(b"device-1".to_vec()),
        value: vec![(ts % 251) as u8; len],
        headers: vec![("h".into(), b"v".to_vec())],
        timestamp_ms: ts,
    }
}

/// Bytes a batch of `records` takes in a segment file (header, then a
/// length and the encoded record each): what partition sizes and the disk
/// budget count.
fn batch_len(records: &[Record]) -> u64 {
    BATCH_HEADER + records.iter().map(|r| 4 + r.encoded_len() as u64).sum::<u64>()
}

/// Bytes of a record made durable on its own (a batch of one).
fn stored_len(r: &Record) -> u64 {
    batch_len(std::slice::from_ref(r))
}

/// Appends each record as its own durable batch (and, with
/// [`ONE_PER_SEGMENT`], its own segment).
fn append_each(store: &Store, topic: &str, p: PartitionId, records: &[Record]) {
    for r in records {
        store.append(topic, p, std::slice::from_ref(r)).unwrap();
        store.sync_partitions(&[(topic.to_owned(), p)]).unwrap();
    }
}

fn all(store: &Store, topic: &str, p: PartitionId) -> Vec<(u64, Record)> {
    let r = store.read(topic, p, Offset(0), usize::MAX, usize::MAX).unwrap();
    r.records.into_iter().map(|s| (s.offset.0, s.record)).collect()
}

fn timestamps(store: &Store, topic: &str, p: PartitionId) -> Vec<i64> {
    all(store, topic, p).into_iter().map(|(_, r)| r.timestamp_ms).collect()
}

/// Bytes of all partitions (segments and batches not yet written).
fn partition_bytes(store: &Store) -> u64 {
    store.topics().iter().flat_map(|t| t.partitions.iter()).map(|p| p.bytes).sum()
}

/// What the disk budget counts besides the partitions: sled's files (as
/// of the last checkpoint).
fn sled_bytes(store: &Store) -> u64 {
    store.total_bytes() - partition_bytes(store)
}

fn seg_dir(path: &Path, topic: &str, p: u32) -> PathBuf {
    path.join("segments").join(format!("{topic}-{p}"))
}

/// The segment files of a partition, oldest first.
fn segment_files(path: &Path, topic: &str, p: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(seg_dir(path, topic, p))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| f.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

fn segment_file(path: &Path, topic: &str, p: u32, base: u64) -> PathBuf {
    seg_dir(path, topic, p).join(format!("{base:020}.log"))
}

/// Bytes of a partition's segment files on disk.
fn file_bytes(path: &Path, topic: &str, p: u32) -> u64 {
    segment_files(path, topic, p).iter().map(|f| std::fs::metadata(f).unwrap().len()).sum()
}

fn assert_names_path(err: &StoreError, path: &Path) {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "error does not name {}: {msg}", path.display());
}

/// A store with one topic of 2 partitions and `records` flushed records of
/// 500 bytes (alternating partitions, a flush every 10 records: batches of
/// 5 records, segments of 5 batches = 25 records; above 200 records a
/// flush every 100), then closed.
fn populated(path: &Path, records: u32) {
    let store = open(path).unwrap();
    store.ensure_topic(&spec("t", 2, "s")).unwrap();
    for i in 0..records {
        store.append("t", PartitionId(i % 2), &[rec(i64::from(i), 500)]).unwrap();
        if i % 10 == 9 && (records <= 200 || i % 100 == 99) {
            store.flush().unwrap();
        }
    }
    store.flush().unwrap();
}

fn overwrite(file: &Path, at: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    f.write_all(&garbage).unwrap();
}

/// Flips one byte of `file` at `at`.
fn flip(file: &Path, at: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    bytes[at as usize] ^= 0x5a;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn restart_keeps_topics_data_and_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let (written, bytes) = {
        let store = open(&path).unwrap();
        store.ensure_topic(&spec("alarms", 1, "alarms")).unwrap();
        store.ensure_topic(&spec("telemetry", 2, "telemetry")).unwrap();
        let mut written = Vec::new();
        for i in 0..10 {
            let r = rec(1000 + i, 10 * i as usize);
            assert_eq!(store.append("telemetry", P1, std::slice::from_ref(&r)).unwrap(), Offset(i as u64));
            written.push(r);
        }
        store.append("alarms", P0, &[rec(5, 1), rec(6, 2)]).unwrap();
        store.flush().unwrap();
        store.commit("g", "telemetry", P1, Offset(7)).unwrap();
        store.commit("g", "alarms", P0, Offset(2)).unwrap();
        store.commit("other", "telemetry", P1, Offset(0)).unwrap();
        store.flush().unwrap();
        (written, partition_bytes(&store))
    };
    let store = open(&path).unwrap();
    let names: Vec<String> = store.topics().into_iter().map(|t| t.spec.name).collect();
    assert_eq!(names, ["alarms", "telemetry"]);
    let t = store.topic("telemetry").unwrap();
    assert_eq!((t.spec.partitions, t.spec.service.as_str()), (2, "telemetry"));
    assert_eq!((t.partitions[1].high_watermark, t.partitions[1].flushed), (Offset(10), Offset(10)));
    assert_eq!(t.partitions[1].records, 10);
    assert_eq!(all(&store, "telemetry", P1).into_iter().map(|(_, r)| r).collect::<Vec<_>>(), written);
    assert_eq!(partition_bytes(&store), bytes);
    assert_eq!(store.committed("g", "telemetry", P1).unwrap(), Some(Offset(7)));
    assert_eq!(store.committed("g", "alarms", P0).unwrap(), Some(Offset(2)));
    assert_eq!(store.committed("other", "telemetry", P1).unwrap(), Some(Offset(0)));
    assert_eq!(store.committed("g", "telemetry", P0).unwrap(), None);
    // Offsets continue.
    assert_eq!(store.append("telemetry", P1, &[rec(1, 1)]).unwrap(), Offset(10));
    assert_eq!(store.append("alarms", P0, &[rec(1, 1)]).unwrap(), Offset(2));
}

/// Appends are in memory until a flush: nothing is readable before, and a
/// store dropped without a flush comes back without them.
#[test]
fn nothing_is_readable_or_kept_until_it_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    {
        let store = open(&path).unwrap();
        store.ensure_topic(&spec("t", 2, "s")).unwrap();
        store.append("t", P0, &[rec(1, 10), rec(2, 10)]).unwrap();
        let r = store.read("t", P0, Offset(0), usize::MAX, usize::MAX).unwrap();
        assert_eq!((r.records.len(), r.high_watermark, r.log_start), (0, Offset(0), Offset(0)));
        let info = store.topic("t").unwrap().partitions[0];
        assert_eq!((info.high_watermark, info.flushed, info.records), (Offset(2), Offset(0), 2));
        // sync_partitions makes only the partitions named durable.
        store.append("t", P1, &[rec(3, 10)]).unwrap();
        store.sync_partitions(&[("t".to_owned(), P0)]).unwrap();
        assert_eq!(timestamps(&store, "t", P0), [1, 2]);
        assert_eq!(store.read("t", P1, Offset(0), 10, usize::MAX).unwrap().high_watermark, Offset(0));
        // flush_paced only the topics it includes.
        store.ensure_topic(&spec("u", 1, "s")).unwrap();
        store.append("u", P0, &[rec(4, 10)]).unwrap();
        store.flush_paced(4096, &|t| t == "u").unwrap();
        assert_eq!(timestamps(&store, "u", P0), [4]);
        assert_eq!(store.read("t", P1, Offset(0), 10, usize::MAX).unwrap().records.len(), 0);
        store.append("t", P0, &[rec(5, 10)]).unwrap();
        assert!(store.undurable_bytes() > 0);
    }
    let store = open(&path).unwrap();
    assert_eq!(timestamps(&store, "t", P0), [1, 2]);
    assert_eq!(timestamps(&store, "t", P1), Vec::<i64>::new());
    assert_eq!(timestamps(&store, "u", P0), [4]);
    assert_eq!(store.append("t", P0, &[rec(6, 10)]).unwrap(), Offset(2));
}

#[test]
fn data_dir_that_is_a_regular_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-dir");
    std::fs::write(&path, b"hello").unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.is_io());
    assert_names_path(&err, &path);
}

#[test]
fn garbage_sled_conf_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 100);
    std::fs::write(path.join("conf"), vec![0xa5; 100]).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert_names_path(&err, &path);
}

/// Opens `path` expecting an error naming it; a panic fails the test.
fn assert_open_fails(path: &Path, what: &str) {
    match std::panic::catch_unwind(|| open(path).map(|_| ())) {
        Err(_) => panic!("Store::open panicked on {what}"),
        Ok(Ok(())) => panic!("Store::open accepted {what}"),
        Ok(Err(err)) => {
            assert!(matches!(err, StoreError::Open { .. }), "{what}: {err:?}");
            assert!(err.is_io());
            assert_names_path(&err, path);
        }
    }
}

/// Damage at the start of sled's log (the metadata: topics, catalog,
/// checkpoints): sled either panics ("tried to serialize Uninitialized",
/// spacejam/sled#1387) or recovers an empty database; both must be an
/// error naming the directory.
#[test]
fn damaged_sled_log_is_an_error_not_a_panic_nor_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    for at in [0u64, 20] {
        let path = dir.path().join(format!("garbage-at-{at}"));
        populated(&path, 3000);
        let len = std::fs::metadata(path.join("db")).unwrap().len();
        let mut segment = 0;
        while at + segment * 512 * 1024 < len {
            overwrite(&path.join("db"), at + segment * 512 * 1024, 64);
            segment += 1;
        }
        assert_open_fails(&path, &format!("a db file with garbage at {at} of each segment"));
    }
    let path = dir.path().join("small");
    populated(&path, 100);
    overwrite(&path.join("db"), 0, 64);
    assert_open_fails(&path, "a one-segment db file with garbage at its start");
    let path = dir.path().join("replaced");
    populated(&path, 100);
    std::fs::write(path.join("db"), b"0123456789").unwrap();
    assert_open_fails(&path, "a db file replaced by 10 bytes");
}

/// Damage in one place of sled's log: sled panics on some, skips or
/// truncates at others (dropping everything after the damage). The store
/// must never panic nor lose flushed records silently: either an error
/// naming the directory, or every record is there.
#[test]
fn local_damage_in_sled_log_never_panics_nor_loses_silently() {
    let dir = tempfile::tempdir().unwrap();
    let mut refused = 0;
    let probe = dir.path().join("probe");
    populated(&probe, 3000);
    let len = std::fs::metadata(probe.join("db")).unwrap().len();
    for at in [20u64, len / 5, len / 2, len * 4 / 5, len.saturating_sub(100)] {
        let path = dir.path().join(format!("garbage-at-{at}"));
        populated(&path, 3000);
        overwrite(&path.join("db"), at, 64);
        match std::panic::catch_unwind(|| open(&path)) {
            Err(_) => panic!("Store::open panicked on a db file with garbage at {at}"),
            Ok(Err(err)) => {
                assert_names_path(&err, &path);
                refused += 1;
            }
            Ok(Ok(store)) => {
                for p in [P0, P1] {
                    let r = store.read("t", p, Offset(0), usize::MAX, usize::MAX);
                    if let Ok(r) = r {
                        assert_eq!(r.records.len(), 1500, "garbage at {at}: {p:?} lost records silently");
                    }
                }
            }
        }
    }
    assert!(refused > 0, "no damage was detected: the test damages nothing");
}

/// `populated(.., 200)`: partition 1 holds offsets 0..100 in segments of
/// 25 records (5 batches of 5): sealed 0, 25, 50; active 75.
fn sealed_segment_of_p1(path: &Path, base: u64) -> PathBuf {
    let files = segment_files(path, "t", 1);
    assert_eq!(files.len(), 4, "{files:?}");
    segment_file(path, "t", 1, base)
}

fn expect_data_loss(err: &StoreError, path: &Path, ranges: &[(u32, u64, u64)]) {
    match err {
        StoreError::DataLoss { file, lost } => {
            assert_eq!(file, &seg_dir(path, "t", ranges[0].0));
            assert_eq!(
                lost.iter().map(|l| (l.topic.as_str(), l.partition, l.from, l.to)).collect::<Vec<_>>(),
                ranges.iter().map(|&(p, from, to)| ("t", p, from, to)).collect::<Vec<_>>()
            );
        }
        other => panic!("expected DataLoss, got {other:?}"),
    }
}

#[test]
fn a_truncated_sealed_segment_is_refused_naming_directory_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 200);
    let seg = sealed_segment_of_p1(&path, 50);
    let len = std::fs::metadata(&seg).unwrap().len();
    // Cut into the last batch (offsets 70..75).
    std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 100).unwrap();
    let err = open(&path).unwrap_err();
    expect_data_loss(&err, &path, &[(1, 70, 75)]);
    let msg = err.to_string();
    for needle in ["segments/t-1", "t/1 offsets 70..75", "--accept-data-loss", "backup"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // Refusing changed nothing: the same answer again.
    assert!(matches!(open(&path).unwrap_err(), StoreError::DataLoss { .. }));

    // Accepted: the gap is skipped, offsets are not reused, and the next
    // open is clean.
    {
        let store = open_with(&path, LIMITS, true).unwrap();
        assert_eq!(store.accepted_loss().len(), 1);
        assert_eq!(store.watermarks("t", P1).unwrap().1, Offset(100));
        let offsets: Vec<u64> = all(&store, "t", P1).into_iter().map(|(o, _)| o).collect();
        assert_eq!(offsets, (0..70).chain(75..100).collect::<Vec<_>>());
        assert_eq!(all(&store, "t", P0).len(), 100);
        assert_eq!(store.append("t", P1, &[rec(1, 1)]).unwrap(), Offset(100));
        store.flush().unwrap();
    }
    let store = open(&path).unwrap();
    assert!(store.accepted_loss().is_empty());
    assert_eq!(all(&store, "t", P1).len(), 96);
    assert_eq!(store.append("t", P1, &[rec(2, 1)]).unwrap(), Offset(101));
}

#[test]
fn a_missing_sealed_segment_is_refused_naming_offsets() {
    let dir = tempfile::tempdir().unwrap();
    for (base, from, to) in [(25u64, 25u64, 50u64), (0, 0, 25)] {
        let path = dir.path().join(format!("missing-{base}"));
        populated(&path, 200);
        std::fs::remove_file(sealed_segment_of_p1(&path, base)).unwrap();
        expect_data_loss(&open(&path).unwrap_err(), &path, &[(1, from, to)]);
        {
            let store = open_with(&path, LIMITS, true).unwrap();
            let offsets: Vec<u64> = all(&store, "t", P1).into_iter().map(|(o, _)| o).collect();
            assert_eq!(offsets, (0..from).chain(to..100).collect::<Vec<_>>());
            assert_eq!(store.append("t", P1, &[rec(1, 1)]).unwrap(), Offset(100));
            store.flush().unwrap();
        }
        let store = open(&path).unwrap();
        assert!(store.accepted_loss().is_empty());
        assert_eq!(store.watermarks("t", P1).unwrap().1, Offset(101));
    }
}

/// A partition whose whole directory is gone (its durable end was in the
/// checkpoint) is refused; accepted, its offsets continue after the lost
/// ones.
#[test]
fn a_deleted_partition_directory_is_refused_not_started_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 50);
    std::fs::remove_dir_all(seg_dir(&path, "t", 0)).unwrap();
    let err = open(&path).unwrap_err();
    expect_data_loss(&err, &path, &[(0, 0, 25)]);
    {
        let store = open_with(&path, LIMITS, true).unwrap();
        assert_eq!(store.topic("t").unwrap().spec.partitions, 2);
        assert_eq!(all(&store, "t", P1).len(), 25);
        assert_eq!(store.append("t", P0, &[rec(1, 1)]).unwrap(), Offset(25));
        store.flush().unwrap();
    }
    let store = open(&path).unwrap();
    assert_eq!(all(&store, "t", P0).into_iter().map(|(o, _)| o).collect::<Vec<_>>(), [25]);
}

/// A damaged byte inside a sealed segment is not looked at on open (only
/// the data after the checkpoint is scanned); reading it is an error
/// naming the file, never wrong data.
#[test]
fn a_damaged_sealed_segment_is_a_read_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 200);
    let seg = sealed_segment_of_p1(&path, 25);
    let len = std::fs::metadata(&seg).unwrap().len();
    flip(&seg, len / 2);
    let store = open(&path).unwrap();
    let err = store.read("t", P1, Offset(0), usize::MAX, usize::MAX).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { partition: 1, .. }), "{err:?}");
    assert_names_path(&err, &seg);
    // Before the damage and after it reads fine.
    assert_eq!(store.read("t", P1, Offset(0), 25, usize::MAX).unwrap().records.len(), 25);
    assert_eq!(store.read("t", P1, Offset(50), usize::MAX, usize::MAX).unwrap().records.len(), 50);
}

/// A damaged batch at the end of the active segment, written after the
/// last checkpoint, is a torn tail: cut on open, the rest kept.
#[test]
fn a_damaged_tail_of_the_active_segment_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 200);
    {
        let store = open(&path).unwrap();
        store.append("t", P1, &[rec(1000, 10), rec(1001, 10)]).unwrap();
        store.sync_partitions(&[("t".to_owned(), P1)]).unwrap();
        store.append("t", P1, &[rec(1002, 10), rec(1003, 10)]).unwrap();
        store.sync_partitions(&[("t".to_owned(), P1)]).unwrap();
    }
    let active = segment_files(&path, "t", 1).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    flip(&active, len - 3);
    let store = open(&path).unwrap();
    assert!(store.accepted_loss().is_empty());
    let ts: Vec<i64> = timestamps(&store, "t", P1);
    assert_eq!(ts.len(), 102);
    assert_eq!(ts[100..], [1000, 1001]);
    assert_eq!(std::fs::metadata(&active).unwrap().len(), len - batch_len(&[rec(1002, 10), rec(1003, 10)]));
    assert_eq!(store.append("t", P1, &[rec(1, 1)]).unwrap(), Offset(102));
}

/// sled's metadata deleted, the segments left: refused (group offsets,
/// cursors and the catalog are gone), never started as an empty store.
#[test]
fn deleted_metadata_with_segments_left_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 50);
    for f in std::fs::read_dir(&path).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != "segments" {
            if f.is_dir() {
                std::fs::remove_dir_all(&f).unwrap();
            } else {
                std::fs::remove_file(&f).unwrap();
            }
        }
    }
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert_names_path(&err, &path);
    assert!(err.to_string().contains("segments"), "{err}");
    // Refusing wrote nothing: the same answer again.
    assert!(matches!(open(&path).unwrap_err(), StoreError::Open { .. }));
}

#[test]
fn foreign_sled_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = raw_sled(dir.path());
        db.insert("someone", "else").unwrap();
        db.flush().unwrap();
    }
    assert_open_fails(dir.path(), "a sled database without the sluice format marker");
}

#[test]
fn second_open_of_a_locked_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let _first = open(&path).unwrap();
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert_names_path(&err, &path);
}

#[test]
fn format_marker_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 100);
    {
        let db = raw_sled(&path);
        db.open_tree("meta").unwrap().insert("format", "sluice-store/999").unwrap();
        db.flush().unwrap();
    }
    let err = open(&path).unwrap_err();
    match &err {
        StoreError::Format { found, expected, .. } => {
            assert_eq!(found, "sluice-store/999");
            assert_eq!(*expected, "sluice-store/3");
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    assert_names_path(&err, &path);
    // The refusal did not rewrite the marker.
    let db = raw_sled(&path);
    assert_eq!(db.open_tree("meta").unwrap().get("format").unwrap().unwrap().as_ref(), b"sluice-store/999");
}

#[test]
fn corrupt_topic_metadata_is_an_error_naming_the_topic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    populated(&path, 100);
    {
        let db = raw_sled(&path);
        db.open_tree("meta").unwrap().insert("topic/t", "{not json").unwrap();
        db.flush().unwrap();
    }
    let err = open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Metadata { .. }), "{err:?}");
    assert!(err.to_string().contains("\"t\""), "{err}");
}

#[test]
fn retention_by_age_deletes_old_segments_and_advances_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    let mut s = spec("t", 2, "s");
    s.retention.max_age = Some(Duration::from_secs(60));
    store.ensure_topic(&s).unwrap();
    store.ensure_topic(&spec("forever", 1, "s")).unwrap();
    let now = 1_000_000_000;
    // Partition 0: five old, three new, a segment each. Partition 1: all
    // new.
    let p0: Vec<Record> =
        [600, 300, 120, 61, 60, 59, 10, 0].iter().map(|age_s| rec(now - age_s * 1000, 20)).collect();
    append_each(&store, "t", P0, &p0);
    append_each(&store, "t", P1, &[rec(now - 1000, 20), rec(now, 20)]);
    append_each(&store, "forever", P0, &[rec(0, 20)]);
    let before = store.total_bytes();

    let report = store.enforce_retention(now).unwrap();

    // A segment whose newest record is strictly older than the cutoff
    // goes; exactly 60 s old stays.
    assert_eq!(report.records(), 4);
    let freed = 4 * stored_len(&rec(0, 20));
    assert_eq!(report.deleted.get("s"), Some(&(4, freed)));
    assert_eq!(store.total_bytes(), before - freed);
    assert_eq!(timestamps(&store, "t", P0), [now - 60_000, now - 59_000, now - 10_000, now]);
    assert_eq!(store.watermarks("t", P0).unwrap(), (Offset(4), Offset(8)));
    assert_eq!(store.watermarks("t", P1).unwrap(), (Offset(0), Offset(2)));
    assert_eq!(all(&store, "forever", P0).len(), 1);
    // A read from a deleted offset starts at the log start.
    let r = store.read("t", P0, Offset(0), 1, usize::MAX).unwrap();
    assert_eq!((r.log_start, r.records[0].offset), (Offset(4), Offset(4)));
    // Idempotent.
    assert_eq!(store.enforce_retention(now).unwrap().records(), 0);
}

/// Retention deletes whole segments: an old record shares the fate of the
/// newest one in its segment.
#[test]
fn retention_by_age_keeps_a_segment_holding_a_new_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    let mut s = spec("t", 1, "s");
    s.retention.max_age = Some(Duration::from_secs(60));
    store.ensure_topic(&s).unwrap();
    let now = 1_000_000_000;
    store.append("t", P0, &[rec(now - 600_000, 20), rec(now, 20)]).unwrap();
    store.flush().unwrap();
    assert_eq!(store.enforce_retention(now).unwrap().records(), 0);
    assert_eq!(timestamps(&store, "t", P0), [now - 600_000, now]);
    assert_eq!(store.enforce_retention(now + 61_000).unwrap().records(), 2);
    assert_eq!(store.watermarks("t", P0).unwrap(), (Offset(2), Offset(2)));
}

/// After a restart the active segment's newest timestamp is known (not
/// only that of what recovery scanned after the checkpoint): retention by
/// age keeps recent records.
#[test]
fn retention_by_age_after_a_restart_keeps_recent_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let mut s = spec("t", 1, "s");
    s.retention.max_age = Some(Duration::from_secs(60));
    let now = 1_000_000_000;
    {
        let store = open(&path).unwrap();
        store.ensure_topic(&s).unwrap();
        store.append("t", P0, &[rec(now - 1000, 20), rec(now, 20)]).unwrap();
        store.flush().unwrap();
    }
    let store = open(&path).unwrap();
    store.ensure_topic(&s).unwrap();
    assert_eq!(store.enforce_retention(now).unwrap().records(), 0);
    assert_eq!(timestamps(&store, "t", P0), [now - 1000, now]);
    assert_eq!(store.enforce_retention(now + 60_001).unwrap().records(), 2);
}

#[test]
fn retention_by_bytes_keeps_the_newest_within_the_per_partition_share() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    let one = stored_len(&rec(0, 100));
    let mut s = spec("t", 2, "s");
    // 2 partitions share 7 records' worth: 3.5 each. As in Kafka, a
    // segment goes only while the rest still holds the share, so 4 stay.
    s.retention.max_bytes = Some(7 * one);
    store.ensure_topic(&s).unwrap();
    append_each(&store, "t", P0, &(0..10).map(|i| rec(100 + i, 100)).collect::<Vec<_>>());
    append_each(&store, "t", P1, &[rec(1, 100), rec(2, 100)]);
    let report = store.enforce_retention(0).unwrap();
    assert_eq!(report.deleted.get("s"), Some(&(6, 6 * one)));
    assert_eq!(timestamps(&store, "t", P0), [106, 107, 108, 109]);
    assert_eq!(timestamps(&store, "t", P1), [1, 2]);
    let info = store.topic("t").unwrap();
    assert_eq!((info.partitions[0].log_start, info.partitions[0].bytes), (Offset(6), 4 * one));
    assert_eq!(partition_bytes(&store), 6 * one);
    assert_eq!(file_bytes(dir.path(), "t", 0), 4 * one);
    // The active segment is never deleted for size.
    s.retention.max_bytes = Some(0);
    store.ensure_topic(&s).unwrap();
    assert_eq!(store.enforce_retention(0).unwrap().deleted.get("s"), Some(&(4, 4 * one)));
    assert_eq!(timestamps(&store, "t", P0), [109]);
    assert_eq!(timestamps(&store, "t", P1), [2]);
}

#[test]
fn offsets_are_not_reused_after_everything_is_deleted_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let mut s = spec("t", 1, "s");
    s.retention.max_age = Some(Duration::from_millis(1));
    {
        let store = open(&path).unwrap();
        store.ensure_topic(&s).unwrap();
        store.append("t", P0, &[rec(1, 5), rec(2, 5), rec(3, 5)]).unwrap();
        store.flush().unwrap();
        store.enforce_retention(1_000).unwrap();
        assert_eq!(store.watermarks("t", P0).unwrap(), (Offset(3), Offset(3)));
        assert_eq!(partition_bytes(&store), 0);
        store.flush().unwrap();
    }
    let store = open(&path).unwrap();
    assert_eq!(store.watermarks("t", P0).unwrap(), (Offset(3), Offset(3)));
    assert_eq!(store.append("t", P0, &[rec(4, 5)]).unwrap(), Offset(3));
}

fn policy(weight: u32, express: bool, reserved_bytes: u64) -> EvictionPolicy {
    EvictionPolicy { weight, express, reserved_bytes }
}

fn service_bytes(store: &Store, service: &str) -> u64 {
    store.service_bytes().get(service).copied().unwrap_or(0)
}

#[test]
fn eviction_takes_lowest_priority_first_and_respects_reservations() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    store.ensure_topic(&spec("alarms", 1, "alarms")).unwrap();
    store.ensure_topic(&spec("telemetry", 2, "telemetry")).unwrap();
    store.ensure_topic(&spec("logs", 1, "logs")).unwrap();
    let one = stored_len(&rec(0, 100));
    // The express alarms are the oldest data: age alone must not pick them.
    for i in 0..10 {
        append_each(&store, "alarms", P0, &[rec(i, 100)]);
        append_each(&store, "telemetry", PartitionId((i % 2) as u32), &[rec(100 + i, 100)]);
        append_each(&store, "logs", P0, &[rec(200 + i, 100)]);
    }
    // The budget counts sled's files too; they do not change meanwhile.
    let sled = sled_bytes(&store);
    let policies: HashMap<String, EvictionPolicy> = [
        ("alarms".to_owned(), policy(1, true, 0)),
        ("telemetry".to_owned(), policy(4, false, 0)),
        ("logs".to_owned(), policy(1, false, 4 * one)),
    ]
    .into();
    assert_eq!(store.total_bytes(), sled + 30 * one);

    // 3 records over: logs (weight 1) alone pays.
    let report = store.evict_to_budget(sled + 27 * one, &policies).unwrap();
    assert_eq!(report.deleted.len(), 1, "{report:?}");
    assert_eq!(report.deleted.get("logs"), Some(&(3, 3 * one)));
    assert_eq!(timestamps(&store, "logs", P0), (203..210).collect::<Vec<_>>());

    // 10 more over: logs down to its 4 reserved records, then telemetry's
    // oldest 7, across both partitions in timestamp order.
    let report = store.evict_to_budget(sled + 17 * one, &policies).unwrap();
    assert_eq!(report.deleted.get("logs"), Some(&(3, 3 * one)));
    assert_eq!(report.deleted.get("telemetry"), Some(&(7, 7 * one)));
    assert_eq!(report.deleted.get("alarms"), None);
    assert_eq!(service_bytes(&store, "logs"), 4 * one);
    assert_eq!(timestamps(&store, "telemetry", P0), [108]);
    assert_eq!(timestamps(&store, "telemetry", P1), [107, 109]);

    // Far over: telemetry goes entirely, then express alarms, oldest first;
    // logs keep their reservation.
    let report = store.evict_to_budget(sled + 6 * one, &policies).unwrap();
    assert_eq!(report.deleted.get("telemetry"), Some(&(3, 3 * one)));
    assert_eq!(report.deleted.get("alarms"), Some(&(8, 8 * one)));
    assert_eq!(timestamps(&store, "alarms", P0), [8, 9]);
    assert_eq!(service_bytes(&store, "logs"), 4 * one);
    assert_eq!(store.total_bytes(), sled + 6 * one);

    // Below every reservation nothing more can go: eviction stops.
    let report = store.evict_to_budget(0, &policies).unwrap();
    assert_eq!(report.deleted.get("logs"), None);
    assert_eq!(service_bytes(&store, "logs"), 4 * one);
    assert_eq!(store.total_bytes(), sled + 4 * one);
    assert_eq!(partition_bytes(&store), 4 * one);
}

#[test]
fn eviction_is_oldest_first_across_a_services_partitions_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    store.ensure_topic(&spec("a", 2, "svc")).unwrap();
    store.ensure_topic(&spec("b", 1, "svc")).unwrap();
    let one = stored_len(&rec(0, 50));
    // Timestamps interleave: a/0 gets 0,3,6.., a/1 gets 1,4,7.., b/0 2,5,8..
    for ts in 0..30 {
        let (topic, p) = match ts % 3 {
            0 => ("a", P0),
            1 => ("a", P1),
            _ => ("b", P0),
        };
        append_each(&store, topic, p, &[rec(ts, 50)]);
    }
    let report = store.evict_to_budget(sled_bytes(&store) + 20 * one, &HashMap::new()).unwrap();
    assert_eq!(report.deleted.get("svc"), Some(&(10, 10 * one)));
    let mut left: Vec<i64> = timestamps(&store, "a", P0);
    left.extend(timestamps(&store, "a", P1));
    left.extend(timestamps(&store, "b", P0));
    left.sort_unstable();
    assert_eq!(left, (10..30).collect::<Vec<_>>(), "the 10 oldest records should have gone");
}

#[test]
fn eviction_never_takes_a_service_below_its_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    store.ensure_topic(&spec("logs", 1, "logs")).unwrap();
    store.ensure_topic(&spec("telemetry", 1, "telemetry")).unwrap();
    let one = stored_len(&rec(0, 100));
    for i in 0..10 {
        append_each(&store, "logs", P0, &[rec(i, 100)]);
        append_each(&store, "telemetry", P0, &[rec(100 + i, 100)]);
    }
    let sled = sled_bytes(&store);
    // Reservation of 4.5 records: logs may drop to 5 records, not to 4.
    let policies: HashMap<String, EvictionPolicy> = [
        ("logs".to_owned(), policy(1, false, 4 * one + one / 2)),
        ("telemetry".to_owned(), policy(5, false, 0)),
    ]
    .into();
    let report = store.evict_to_budget(sled + 12 * one, &policies).unwrap();
    assert!(service_bytes(&store, "logs") >= 4 * one + one / 2, "{report:?}");
    assert_eq!(report.deleted.get("logs"), Some(&(5, 5 * one)));
    // The rest came from the next service rather than stopping over budget.
    assert_eq!(report.deleted.get("telemetry"), Some(&(3, 3 * one)));
    assert_eq!(store.total_bytes(), sled + 12 * one);
}

#[test]
fn eviction_within_budget_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_small(dir.path());
    store.ensure_topic(&spec("t", 1, "s")).unwrap();
    append_each(&store, "t", P0, &[rec(1, 10), rec(2, 10)]);
    let total = store.total_bytes();
    assert_eq!(store.evict_to_budget(total, &HashMap::new()).unwrap().records(), 0);
    // One byte over: exactly one record goes (the oldest).
    assert_eq!(store.evict_to_budget(total - 1, &HashMap::new()).unwrap().records(), 1);
    assert_eq!(timestamps(&store, "t", P0), [2]);
}

#[test]
fn unknown_topics_and_partitions_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.ensure_topic(&spec("t", 2, "s")).unwrap();
    let unknown_topic = |e: StoreError| matches!(e, StoreError::UnknownTopic(ref t) if t == "nope");
    assert!(unknown_topic(store.append("nope", P0, &[rec(0, 1)]).unwrap_err()));
    assert!(unknown_topic(store.read("nope", P0, Offset(0), 1, 1).unwrap_err()));
    assert!(unknown_topic(store.watermarks("nope", P0).unwrap_err()));
    assert!(unknown_topic(store.commit("g", "nope", P0, Offset(0)).unwrap_err()));
    assert!(store.topic("nope").is_none());

    let p2 = PartitionId(2);
    for err in [
        store.append("t", p2, &[rec(0, 1)]).unwrap_err(),
        store.read("t", p2, Offset(0), 1, 1).unwrap_err(),
        store.watermarks("t", p2).unwrap_err(),
        store.commit("g", "t", p2, Offset(0)).unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::UnknownPartition { ref topic, partition: 2, partitions: 2 } if topic == "t"),
            "{err:?}"
        );
        assert!(!err.is_io());
        assert!(err.to_string().contains("partition 2"), "{err}");
    }
}

#[test]
fn commit_past_the_durable_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.ensure_topic(&spec("t", 1, "s")).unwrap();
    let err = store.commit("g", "t", P0, Offset(1)).unwrap_err();
    assert!(matches!(err, StoreError::CommitPastEnd { offset: 1, high_watermark: 0, .. }), "{err:?}");
    store.commit("g", "t", P0, Offset(0)).unwrap();
    store.append("t", P0, &[rec(0, 1), rec(1, 1)]).unwrap();
    // Not durable yet: a position there would be ahead of the data.
    let err = store.commit("g", "t", P0, Offset(1)).unwrap_err();
    assert!(matches!(err, StoreError::CommitPastEnd { offset: 1, high_watermark: 0, .. }), "{err:?}");
    assert!(store.set_cursor("u", "t", P0, Offset(2)).is_err());
    store.flush().unwrap();
    store.commit("g", "t", P0, Offset(2)).unwrap();
    store.set_cursor("u", "t", P0, Offset(2)).unwrap();
    assert!(store.set_cursor("u", "t", P0, Offset(3)).is_err());
    assert!(store.commit("g", "t", P0, Offset(3)).is_err());
    assert_eq!(store.committed("g", "t", P0).unwrap(), Some(Offset(2)));
    // Moving back is allowed (a consumer may rewind).
    store.commit("g", "t", P0, Offset(1)).unwrap();
    assert_eq!(store.committed("g", "t", P0).unwrap(), Some(Offset(1)));
}

#[test]
fn reads_respect_limits_but_return_at_least_one_record() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.ensure_topic(&spec("t", 1, "s")).unwrap();
    let recs: Vec<Record> = (0..5).map(|i| rec(i, 100)).collect();
    store.append("t", P0, &recs).unwrap();
    store.flush().unwrap();
    let len = recs[0].encoded_len();
    let offsets = |from, max_records, max_bytes| -> Vec<u64> {
        let r = store.read("t", P0, Offset(from), max_records, max_bytes).unwrap();
        assert_eq!(r.high_watermark, Offset(5));
        r.records.iter().map(|s| s.offset.0).collect()
    };
    assert_eq!(offsets(0, 10, 1), [0]);
    assert_eq!(offsets(3, 10, 0), [3]);
    assert_eq!(offsets(0, 10, 2 * len), [0, 1]);
    assert_eq!(offsets(0, 10, 3 * len - 1), [0, 1]);
    assert_eq!(offsets(1, 2, usize::MAX), [1, 2]);
    assert_eq!(offsets(0, 0, usize::MAX), Vec::<u64>::new());
    assert_eq!(offsets(5, 10, usize::MAX), Vec::<u64>::new());
    assert_eq!(offsets(99, 10, usize::MAX), Vec::<u64>::new());
    let r = store.read("t", P0, Offset(2), 1, usize::MAX).unwrap();
    assert_eq!(r.records[0].record, recs[2]);
}

#[test]
fn partitions_grow_keeping_data_and_never_shrink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    {
        let store = open(&path).unwrap();
        store.ensure_topic(&spec("t", 1, "s")).unwrap();
        store.append("t", P0, &[rec(1, 10), rec(2, 10)]).unwrap();
        store.flush().unwrap();
        let bytes = partition_bytes(&store);
        let info = store.ensure_topic(&spec("t", 3, "other")).unwrap();
        assert_eq!(info.partitions.len(), 3);
        assert_eq!(info.spec.service, "other");
        assert_eq!(info.partitions[0].high_watermark, Offset(2));
        assert_eq!(partition_bytes(&store), bytes);
        assert_eq!(store.append("t", P0, &[rec(3, 10)]).unwrap(), Offset(2));
        assert_eq!(store.append("t", PartitionId(2), &[rec(4, 10)]).unwrap(), Offset(0));

        let err = store.ensure_topic(&spec("t", 2, "s")).unwrap_err();
        assert!(matches!(err, StoreError::PartitionShrink { existing: 3, requested: 2, .. }), "{err:?}");
        assert_eq!(store.topic("t").unwrap().partitions.len(), 3);
        // Zero partitions means one, which is a shrink here too.
        assert!(store.ensure_topic(&spec("t", 0, "s")).is_err());
        store.flush().unwrap();
    }
    let store = open(&path).unwrap();
    let info = store.topic("t").unwrap();
    assert_eq!((info.spec.partitions, info.spec.service.as_str()), (3, "other"));
    assert_eq!(timestamps(&store, "t", P0), [1, 2, 3]);
    assert_eq!(timestamps(&store, "t", PartitionId(2)), [4]);
    assert!(store.ensure_topic(&spec("t", 2, "s")).is_err());
}

/// Growing a topic while another thread appends must neither reuse an offset
/// nor lose a record or byte count.
#[test]
fn growing_a_topic_during_appends_keeps_offsets_unique() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.ensure_topic(&spec("t", 1, "s")).unwrap();
    let appender = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut offsets = Vec::new();
            for i in 0..4000 {
                offsets.push(store.append("t", P0, &[rec(i, 8)]).unwrap().0);
            }
            offsets
        })
    };
    for n in 2..=200 {
        store.ensure_topic(&spec("t", n, "s")).unwrap();
    }
    let offsets = appender.join().unwrap();
    store.flush().unwrap();
    let reused = offsets.windows(2).filter(|w| w[1] != w[0] + 1).count();
    assert_eq!(reused, 0, "{reused} appends did not get the next offset (last {:?})", offsets.last());
    let info = store.topic("t").unwrap();
    assert_eq!((info.partitions[0].high_watermark, info.partitions[0].records), (Offset(4000), 4000));
    assert_eq!(all(&store, "t", P0).len(), 4000);
    assert_eq!(info.partitions[0].bytes, file_bytes(dir.path(), "t", 0));
    let sum: u64 = (0..200).map(|p| file_bytes(dir.path(), "t", p)).sum();
    assert_eq!(partition_bytes(&store), sum);
}

#[test]
fn partition_for_key_is_stable_and_matches_kafka() {
    // Kafka: Utils.toPositive(Utils.murmur2("foobar")) % n, murmur2 = -790332482.
    let positive = (-790_332_482i32 as u32) & 0x7fff_ffff;
    for n in 1..=64 {
        assert_eq!(partition_for_key(b"foobar", n), positive % n);
    }
    assert_eq!(partition_for_key(b"anything", 0), 0);
    // Keys spread over all partitions.
    let mut seen = [0u32; 8];
    for i in 0..800 {
        seen[partition_for_key(format!("dev-{i}").as_bytes(), 8) as usize] += 1;
    }
    assert!(seen.iter().all(|&c| c > 50), "{seen:?}");
}

#[test]
fn total_bytes_matches_partitions_and_disk_size_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).unwrap();
    store.ensure_topic(&spec("a", 2, "x")).unwrap();
    store.ensure_topic(&spec("b", 1, "y")).unwrap();
    let sled = sled_bytes(&store);
    assert!(sled > 0, "sled's files count");
    store.append("a", P1, &[rec(1, 1000), rec(2, 0)]).unwrap();
    store.append("b", P0, &[Record::default()]).unwrap();
    // Batches not yet written count already.
    let sum = partition_bytes(&store);
    assert_eq!(store.total_bytes(), sled + sum);
    assert_eq!(sum, batch_len(&[rec(1, 1000), rec(2, 0)]) + stored_len(&Record::default()));
    assert_eq!(service_bytes(&store, "y"), stored_len(&Record::default()));
    store.flush().unwrap();
    // Written: the same bytes, now in the segment files.
    assert_eq!(partition_bytes(&store), sum);
    assert_eq!(file_bytes(dir.path(), "a", 1) + file_bytes(dir.path(), "b", 0), sum);
    // What the budget counts is what the directory holds (within 5%).
    let total = store.total_bytes();
    assert_eq!(store.size_on_disk().unwrap(), total);
    let du = dir_bytes(dir.path());
    assert!(total.abs_diff(du) * 20 <= du, "total_bytes {total}, files {du}");
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

/// Opens the raw sled database under a store, waiting while the lock of a
/// store dropped a moment ago is still held by sled's background threads.
fn raw_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

/// Creating or growing the same topic from several threads at once, while
/// they append to it, never hands out an offset twice and loses nothing:
/// every appender ends up on the one partition object of each partition.
#[test]
fn concurrent_create_and_grow_never_reuse_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("d")).unwrap();
    for round in 0..20 {
        let name = format!("race-{round}");
        let appended: Vec<Vec<(u32, u64)>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4u32)
                .map(|w| {
                    let (store, name) = (&store, &name);
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for i in 0..20u32 {
                            // Threads ask for 1, 2 or 3 partitions: creation
                            // and growth race each other.
                            let partitions = 1 + (w + i) % 3;
                            let have = match store.ensure_topic(&spec(name, partitions, "svc")) {
                                Ok(info) => info.spec.partitions,
                                // Another thread grew it further already.
                                Err(StoreError::PartitionShrink { existing, .. }) => existing,
                                Err(e) => panic!("ensure_topic: {e}"),
                            };
                            let p = i % have;
                            let at = store.append(name, PartitionId(p), &[rec(i64::from(i), 10)]).unwrap();
                            got.push((p, at.0));
                        }
                        got
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        store.flush().unwrap();
        let mut seen = std::collections::HashSet::new();
        for (p, offset) in appended.iter().flatten() {
            assert!(seen.insert((*p, *offset)), "{name}: offset {offset} of partition {p} handed out twice");
        }
        let stored: usize = (0..3).map(|p| all(&store, &name, PartitionId(p)).len()).sum();
        assert_eq!(stored, 80, "{name}: every appended record is stored");
    }
}
