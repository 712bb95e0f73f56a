//! Model-based test of the topic log: random sequences of topic creation and
//! growth, appends, syncs, reads, commits, retention, eviction, flushes and
//! reopens run against a real [`Store`] and against a plain in-memory model
//! (per partition: the durable segments as lists of batches, the batches
//! appended but not yet durable, a log start). After every operation the
//! watermarks, sizes and topic list must agree; reads must return exactly
//! the model's durable records (nothing appended is visible before a flush
//! or sync); commits past the durable end are refused; a reopen keeps what
//! was durable and hands the offsets of what was not out again; committed
//! offsets survive reopening.
//!
//! The model knows how batches are framed and when segments roll (small
//! segments, no rolling by age), so sizes and whole-segment retention are
//! predicted exactly. Eviction is checked as a contract instead: the log
//! read back must be a suffix of what was there, cut at segment
//! boundaries, and the model follows the store's new log start; budget,
//! priority order, reservations and oldest-segment-first are invariants.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sluice_store::{
    EvictionPolicy, Offset, PartitionId, Record, Retention, SegmentLimits, Store, StoreError, StoreOptions,
    TopicSpec,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

const TOPICS: [&str; 3] = ["t0", "t1", "t2"];
const SERVICES: [&str; 3] = ["s0", "s1", "s2"];
const GROUPS: [&str; 2] = ["g0", "g1"];

/// Small segments (a few batches each), never rolled by age.
const SEGMENT_BYTES: u64 = 800;
/// Bytes of a batch header.
const BATCH_HEADER: u64 = sluice_store::log::segment::HEADER_LEN as u64;
/// Largest batch the appender builds: `partition::MAX_BATCH` (64 KiB) or a
/// quarter of a segment, at least 1 KiB.
const MAX_BATCH: u64 = 1024;

/// `cases` per property, unless `PROPTEST_CASES` asks for a longer soak.
fn config(cases: u32) -> ProptestConfig {
    let soak = std::env::var("PROPTEST_CASES").ok();
    ProptestConfig {
        cases: soak.and_then(|n| n.parse().ok()).unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A record without its timestamp (the test clock assigns that).
#[derive(Debug, Clone)]
struct RecordGen {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
enum Op {
    /// Create or grow a topic (a shrink must be refused); may move it to
    /// another service.
    EnsureTopic {
        topic: usize,
        partitions: u32,
        service: usize,
    },
    /// Append a batch; `tick` advances the clock first.
    Append {
        topic: usize,
        partition: u32,
        tick: i64,
        records: Vec<RecordGen>,
    },
    Read {
        topic: usize,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    },
    /// `offset` is taken as `hw + past_end - 2`, clamped at 0: a few land
    /// past the high watermark and must be refused.
    Commit {
        group: usize,
        topic: usize,
        partition: u32,
        back: u64,
        past_end: u64,
    },
    /// Set a topic's retention, then enforce every topic's retention now.
    Retention {
        topic: usize,
        max_bytes: Option<u64>,
        max_age_ms: Option<u64>,
    },
    /// Evict to `budget_pct` % of the current total under these policies
    /// (`None`: the service is left out and gets the fallback).
    Evict {
        budget_pct: u64,
        policies: Vec<Option<(u32, bool, u64)>>,
    },
    Flush,
    /// The sync lane: makes one partition durable.
    Sync {
        topic: usize,
        partition: u32,
    },
    Reopen,
}

fn record_gen() -> impl Strategy<Value = RecordGen> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => proptest::collection::vec(any::<u8>(), 64..400),
        ],
        proptest::collection::vec(("[a-z]{0,4}", proptest::collection::vec(any::<u8>(), 0..8)), 0..3),
    )
        .prop_map(|(key, value, headers)| RecordGen { key, value, headers })
}

/// A partition index, now and then one past any topic's partitions.
fn partition() -> impl Strategy<Value = u32> {
    prop_oneof![12 => 0..3u32, 1 => 3..5u32]
}

fn op() -> impl Strategy<Value = Op> {
    let topic = 0..TOPICS.len();
    prop_oneof![
        2 => (topic.clone(), 1..=3u32, 0..SERVICES.len())
            .prop_map(|(topic, partitions, service)| Op::EnsureTopic { topic, partitions, service }),
        12 => (topic.clone(), partition(), 0..5i64, proptest::collection::vec(record_gen(), 1..=10))
            .prop_map(|(topic, partition, tick, records)| Op::Append { topic, partition, tick, records }),
        4 => (topic.clone(), partition(), 0..40u64, 0..12usize, prop_oneof![0..400usize, Just(usize::MAX)])
            .prop_map(|(topic, partition, from, max_records, max_bytes)| {
                Op::Read { topic, partition, from, max_records, max_bytes }
            }),
        3 => (0..GROUPS.len(), topic.clone(), partition(), 0..6u64, 0..6u64).prop_map(
            |(group, topic, partition, back, past_end)| Op::Commit { group, topic, partition, back, past_end }
        ),
        2 => (topic, proptest::option::of(0..3000u64), proptest::option::of(0..60u64))
            .prop_map(|(topic, max_bytes, max_age_ms)| Op::Retention { topic, max_bytes, max_age_ms }),
        2 => (
            prop_oneof![1 => 0..50u64, 3 => 50..=110u64],
            proptest::collection::vec(proptest::option::of((1..=3u32, any::<bool>(), 0..1500u64)), 3)
        )
            .prop_map(|(budget_pct, policies)| Op::Evict { budget_pct, policies }),
        2 => Just(Op::Flush),
        2 => (0..TOPICS.len(), partition()).prop_map(|(topic, partition)| Op::Sync { topic, partition }),
        1 => Just(Op::Reopen),
    ]
}

/// Bytes a record adds to its batch (length prefix and encoded record).
fn size(r: &Record) -> u64 {
    r.encoded_len() as u64 + 4
}

#[derive(Debug, Clone, Default)]
struct Batch {
    records: Vec<(u64, Record)>,
}

impl Batch {
    fn bytes(&self) -> u64 {
        BATCH_HEADER + self.records.iter().map(|(_, r)| size(r)).sum::<u64>()
    }
}

#[derive(Debug, Clone, Default)]
struct Segment {
    batches: Vec<Batch>,
}

impl Segment {
    fn bytes(&self) -> u64 {
        self.batches.iter().map(Batch::bytes).sum()
    }

    fn records(&self) -> impl Iterator<Item = &(u64, Record)> {
        self.batches.iter().flat_map(|b| b.records.iter())
    }

    fn first_ts(&self) -> Option<i64> {
        self.records().next().map(|(_, r)| r.timestamp_ms)
    }

    fn max_ts(&self) -> Option<i64> {
        self.records().map(|(_, r)| r.timestamp_ms).max()
    }

    fn end(&self) -> Option<u64> {
        self.records().last().map(|(o, _)| o + 1)
    }
}

#[derive(Debug, Clone)]
struct ModelPartition {
    log_start: u64,
    /// Next offset to hand out.
    next: u64,
    /// Durable end: reads stop here.
    flushed: u64,
    /// Durable segments, oldest first; the last is the active one (never
    /// missing, maybe empty).
    segments: Vec<Segment>,
    /// Appended, not durable: sealed batches, then the open one when
    /// `open`.
    pending: Vec<Batch>,
    open: bool,
}

impl Default for ModelPartition {
    fn default() -> Self {
        ModelPartition {
            log_start: 0,
            next: 0,
            flushed: 0,
            segments: vec![Segment::default()],
            pending: Vec::new(),
            open: false,
        }
    }
}

impl ModelPartition {
    fn bytes(&self) -> u64 {
        self.segments.iter().map(Segment::bytes).sum::<u64>()
            + self.pending.iter().map(Batch::bytes).sum::<u64>()
    }

    /// Durable records, oldest first.
    fn durable(&self) -> Vec<(u64, Record)> {
        self.segments.iter().flat_map(|s| s.records().cloned()).collect()
    }

    fn records(&self) -> u64 {
        (self.durable().len() + self.pending.iter().map(|b| b.records.len()).sum::<usize>()) as u64
    }

    fn append(&mut self, records: Vec<Record>) {
        for r in records {
            let len = size(&r);
            if self.open && self.pending.last().unwrap().bytes() + len > MAX_BATCH {
                self.open = false;
            }
            if !self.open {
                self.pending.push(Batch::default());
                self.open = true;
            }
            self.pending.last_mut().unwrap().records.push((self.next, r));
            self.next += 1;
        }
    }

    /// Writes the pending batches to the segments (rolling a non-empty
    /// active segment a batch would take past the size limit).
    fn sync(&mut self) {
        for b in std::mem::take(&mut self.pending) {
            let active = self.segments.last().unwrap();
            if active.bytes() > 0 && active.bytes() + b.bytes() > SEGMENT_BYTES {
                self.segments.push(Segment::default());
            }
            self.segments.last_mut().unwrap().batches.push(b);
        }
        self.open = false;
        self.flushed = self.next;
    }

    /// A crash or a drop without a flush: what was not durable is gone,
    /// its offsets are handed out again.
    fn lose_pending(&mut self) {
        self.pending.clear();
        self.open = false;
        self.next = self.flushed;
    }

    /// Index of the oldest segment holding records.
    fn oldest_segment(&self) -> Option<usize> {
        self.segments.iter().position(|s| s.bytes() > 0)
    }

    /// Deletes segment `i` (rolling first when it is the active one);
    /// returns it.
    fn delete_segment(&mut self, i: usize) -> Segment {
        if i + 1 == self.segments.len() {
            self.segments.push(Segment::default());
        }
        let seg = self.segments.remove(i);
        self.log_start = self.log_start.max(seg.end().unwrap());
        seg
    }
}

#[derive(Debug, Clone)]
struct ModelTopic {
    service: String,
    retention: Retention,
    partitions: Vec<ModelPartition>,
}

#[derive(Debug, Default)]
struct Model {
    topics: BTreeMap<String, ModelTopic>,
    committed: BTreeMap<(String, String, u32), u64>,
    /// The test clock, ms; appends stamp records with it, so timestamps
    /// never decrease within a partition.
    now: i64,
}

impl Model {
    fn spec(&self, name: &str) -> TopicSpec {
        let t = &self.topics[name];
        TopicSpec {
            name: name.to_owned(),
            partitions: t.partitions.len() as u32,
            service: t.service.clone(),
            retention: t.retention,
        }
    }

    /// Partition bytes (the store's total adds sled's files).
    fn total_bytes(&self) -> u64 {
        self.topics.values().flat_map(|t| &t.partitions).map(ModelPartition::bytes).sum()
    }

    fn service_bytes(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for t in self.topics.values() {
            *out.entry(t.service.clone()).or_default() +=
                t.partitions.iter().map(ModelPartition::bytes).sum::<u64>();
        }
        out
    }

    /// What a lookup of `topic`/`partition` should fail with, if anything.
    fn lookup_error(&self, topic: &str, partition: u32) -> Option<(String, Option<u32>)> {
        match self.topics.get(topic) {
            None => Some((topic.to_owned(), None)),
            Some(t) if partition as usize >= t.partitions.len() => {
                Some((topic.to_owned(), Some(t.partitions.len() as u32)))
            }
            Some(_) => None,
        }
    }
}

fn open(path: &Path) -> Store {
    Store::open(&StoreOptions {
        cache_capacity: 1 << 20,
        segments: SegmentLimits { max_bytes: SEGMENT_BYTES, max_age_ms: i64::MAX / 2 },
        ..StoreOptions::new(path)
    })
    .unwrap()
}

fn assert_lookup_error(err: StoreError, expected: &(String, Option<u32>), partition: u32) {
    match (&err, expected) {
        (StoreError::UnknownTopic(t), (et, None)) => assert_eq!(t, et),
        (StoreError::UnknownPartition { topic, partition: p, partitions }, (et, Some(n))) => {
            assert_eq!((topic, *p, *partitions), (et, partition, *n));
        }
        _ => panic!("expected an unknown topic/partition error {expected:?}, got {err:?}"),
    }
}

/// Everything observable about topics and sizes agrees with the model.
fn check_state(store: &Store, model: &Model) {
    let topics = store.topics();
    assert_eq!(
        topics.iter().map(|t| t.spec.name.as_str()).collect::<Vec<_>>(),
        model.topics.keys().collect::<Vec<_>>()
    );
    let mut sum = 0;
    for info in &topics {
        let mt = &model.topics[&info.spec.name];
        assert_eq!(info.spec, model.spec(&info.spec.name));
        assert_eq!(info.partitions.len(), mt.partitions.len());
        for (i, (p, mp)) in info.partitions.iter().zip(&mt.partitions).enumerate() {
            assert_eq!(p.partition, PartitionId(i as u32));
            assert_eq!(
                (p.log_start.0, p.high_watermark.0, p.flushed.0, p.records, p.bytes),
                (mp.log_start, mp.next, mp.flushed, mp.records(), mp.bytes()),
                "{}/{i}",
                info.spec.name
            );
            sum += p.bytes;
        }
    }
    // The total adds sled's files.
    assert!(store.total_bytes() >= sum);
    assert_eq!(sum, model.total_bytes());
}

fn check_committed(store: &Store, model: &Model) {
    for group in GROUPS {
        for (name, t) in &model.topics {
            for p in 0..t.partitions.len() as u32 {
                let expected = model.committed.get(&(group.to_owned(), name.clone(), p)).copied().map(Offset);
                assert_eq!(
                    store.committed(group, name, PartitionId(p)).unwrap(),
                    expected,
                    "{group} {name}/{p}"
                );
            }
        }
    }
}

fn read_all(store: &Store, topic: &str, p: u32) -> Vec<(u64, Record)> {
    let r = store.read(topic, PartitionId(p), Offset(0), usize::MAX, usize::MAX).unwrap();
    r.records.into_iter().map(|s| (s.offset.0, s.record)).collect()
}

/// Runs `ops` against a fresh store and the model.
fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let mut store = Some(open(&path));
    let mut model = Model { now: 1_000_000, ..Model::default() };
    for op in ops {
        let s = store.as_ref().unwrap();
        apply(s, &mut model, op);
        if matches!(op, Op::Reopen) {
            drop(store.take());
            for t in model.topics.values_mut() {
                t.partitions.iter_mut().for_each(ModelPartition::lose_pending);
            }
            let s = open(&path);
            // Topics and data come back, with default retention.
            for name in model.topics.keys() {
                assert_eq!(s.topic(name).unwrap().spec.retention, Retention::default());
            }
            for name in model.topics.keys() {
                s.ensure_topic(&model.spec(name)).unwrap();
            }
            check_committed(&s, &model);
            store = Some(s);
        }
        check_state(store.as_ref().unwrap(), &model);
    }
    let s = store.unwrap();
    check_committed(&s, &model);
    for (name, t) in &model.topics {
        for (p, mp) in t.partitions.iter().enumerate() {
            assert_eq!(read_all(&s, name, p as u32), mp.durable(), "{name}/{p}");
        }
    }
}

fn apply(store: &Store, model: &mut Model, op: &Op) {
    match op {
        Op::EnsureTopic { topic, partitions, service } => {
            let name = TOPICS[*topic];
            let retention = model.topics.get(name).map(|t| t.retention).unwrap_or_default();
            let spec = TopicSpec {
                name: name.to_owned(),
                partitions: *partitions,
                service: SERVICES[*service].to_owned(),
                retention,
            };
            let have = model.topics.get(name).map_or(0, |t| t.partitions.len() as u32);
            let result = store.ensure_topic(&spec);
            if *partitions < have {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, StoreError::PartitionShrink { existing, requested, .. }
                        if existing == have && requested == *partitions),
                    "{err:?}"
                );
                return;
            }
            let info = result.unwrap();
            let t = model.topics.entry(name.to_owned()).or_insert_with(|| ModelTopic {
                service: String::new(),
                retention,
                partitions: Vec::new(),
            });
            t.service = spec.service.clone();
            t.partitions.resize_with(*partitions as usize, ModelPartition::default);
            assert_eq!(info.spec, model.spec(name));
        }
        Op::Append { topic, partition, tick, records } => {
            let name = TOPICS[*topic];
            model.now += tick;
            let records: Vec<Record> = records
                .iter()
                .map(|g| Record {
                    key: g.key.clone(),
                    value: g.value.clone(),
                    headers: g.headers.clone(),
                    timestamp_ms: model.now,
                })
                .collect();
            let result = store.append(name, PartitionId(*partition), &records);
            if let Some(expected) = model.lookup_error(name, *partition) {
                return assert_lookup_error(result.unwrap_err(), &expected, *partition);
            }
            let mp = &mut model.topics.get_mut(name).unwrap().partitions[*partition as usize];
            assert_eq!(result.unwrap(), Offset(mp.next), "first offset of the batch");
            mp.append(records);
        }
        Op::Read { topic, partition, from, max_records, max_bytes } => {
            let name = TOPICS[*topic];
            let result = store.read(name, PartitionId(*partition), Offset(*from), *max_records, *max_bytes);
            if let Some(expected) = model.lookup_error(name, *partition) {
                return assert_lookup_error(result.unwrap_err(), &expected, *partition);
            }
            let mp = &model.topics[name].partitions[*partition as usize];
            let start = (*from).max(mp.log_start);
            let mut expected = Vec::new();
            let mut bytes = 0;
            for (o, r) in mp.durable().into_iter().filter(|(o, _)| *o >= start) {
                let len = r.encoded_len();
                if expected.len() >= *max_records || (!expected.is_empty() && bytes + len > *max_bytes) {
                    break;
                }
                bytes += len;
                expected.push((o, r));
            }
            let got = result.unwrap();
            // Reads stop at the durable end.
            assert_eq!((got.log_start.0, got.high_watermark.0), (mp.log_start, mp.flushed));
            let got: Vec<(u64, Record)> = got.records.into_iter().map(|s| (s.offset.0, s.record)).collect();
            assert_eq!(
                got, expected,
                "read {name}/{partition} from {from} ({max_records} records, {max_bytes} B)"
            );
        }
        Op::Commit { group, topic, partition, back, past_end } => {
            let (group, name) = (GROUPS[*group], TOPICS[*topic]);
            let (hw, flushed) = model
                .topics
                .get(name)
                .and_then(|t| t.partitions.get(*partition as usize))
                .map_or((0, 0), |p| (p.next, p.flushed));
            // Around the appended end: between the durable end and it,
            // a position is refused too.
            let offset = (hw + past_end).saturating_sub(2).saturating_sub(*back);
            let result = store.commit(group, name, PartitionId(*partition), Offset(offset));
            if let Some(expected) = model.lookup_error(name, *partition) {
                return assert_lookup_error(result.unwrap_err(), &expected, *partition);
            }
            if offset > flushed {
                let err = result.unwrap_err();
                assert!(
                    matches!(err, StoreError::CommitPastEnd { offset: o, high_watermark: h, .. } if o == offset && h == flushed),
                    "{err:?}"
                );
            } else {
                result.unwrap();
                model.committed.insert((group.to_owned(), name.to_owned(), *partition), offset);
            }
            let expected = model.committed.get(&(group.to_owned(), name.to_owned(), *partition)).copied();
            assert_eq!(store.committed(group, name, PartitionId(*partition)).unwrap(), expected.map(Offset));
        }
        Op::Retention { topic, max_bytes, max_age_ms } => {
            let name = TOPICS[*topic];
            if let Some(t) = model.topics.get_mut(name) {
                t.retention =
                    Retention { max_bytes: *max_bytes, max_age: max_age_ms.map(Duration::from_millis) };
                store.ensure_topic(&model.spec(name)).unwrap();
            }
            let before = model.service_bytes();
            let report = store.enforce_retention(model.now).unwrap();
            let now = model.now;
            // Whole segments go, oldest first: while the newest record of
            // the oldest is past the age, or (as Kafka; never the active
            // segment) the rest still holds the partition's share of the
            // bytes (counting batches not yet written).
            for t in model.topics.values_mut() {
                let per_partition = t.retention.max_bytes.map(|b| b / t.partitions.len() as u64);
                let cutoff = t.retention.max_age.map(|a| now - a.as_millis() as i64);
                for mp in &mut t.partitions {
                    while let Some(i) = mp.oldest_segment() {
                        let too_old = cutoff.is_some_and(|c| mp.segments[i].max_ts().unwrap() < c);
                        let active = i + 1 == mp.segments.len();
                        let seg_bytes = mp.segments[i].bytes();
                        let too_big = !active && per_partition.is_some_and(|m| mp.bytes() - seg_bytes >= m);
                        if !(too_old || too_big) {
                            break;
                        }
                        mp.delete_segment(i);
                    }
                }
            }
            check_report(&report.deleted, &before, &model.service_bytes());
        }
        Op::Evict { budget_pct, policies } => evict(store, model, *budget_pct, policies),
        Op::Flush => {
            store.flush().unwrap();
            for t in model.topics.values_mut() {
                t.partitions.iter_mut().for_each(ModelPartition::sync);
            }
        }
        Op::Sync { topic, partition } => {
            let name = TOPICS[*topic];
            let result = store.sync_partitions(&[(name.to_owned(), PartitionId(*partition))]);
            if let Some(expected) = model.lookup_error(name, *partition) {
                return assert_lookup_error(result.unwrap_err(), &expected, *partition);
            }
            result.unwrap();
            model.topics.get_mut(name).unwrap().partitions[*partition as usize].sync();
        }
        Op::Reopen => {}
    }
}

/// The report's bytes per service match what the model lost.
fn check_report(
    deleted: &BTreeMap<String, (u64, u64)>,
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) {
    for (service, b) in before {
        let lost = b - after.get(service).copied().unwrap_or(0);
        assert_eq!(deleted.get(service).map_or(0, |d| d.1), lost, "bytes deleted from {service}");
    }
    assert!(deleted.keys().all(|s| before.contains_key(s)), "{deleted:?}");
}

fn evict(store: &Store, model: &mut Model, budget_pct: u64, policies: &[Option<(u32, bool, u64)>]) {
    let policies: HashMap<String, EvictionPolicy> = SERVICES
        .iter()
        .zip(policies)
        .filter_map(|(s, p)| {
            p.map(|(weight, express, reserved_bytes)| {
                ((*s).to_owned(), EvictionPolicy { weight, express, reserved_bytes })
            })
        })
        .collect();
    let policy = |s: &str| {
        policies.get(s).copied().unwrap_or(EvictionPolicy { weight: 1, express: false, reserved_bytes: 0 })
    };
    let total_before = model.total_bytes();
    // The store's budget counts sled's files too (unchanged by eviction).
    let sled = store.total_bytes() - total_before;
    let budget = total_before * budget_pct / 100;
    let before_services = model.service_bytes();

    let report = store.evict_to_budget(sled + budget, &policies).unwrap();

    // Every partition keeps a suffix of its durable records, cut at a
    // segment boundary; the model follows.
    let mut deleted: BTreeMap<String, Vec<Segment>> = BTreeMap::new();
    for (name, t) in model.topics.iter_mut() {
        for (p, mp) in t.partitions.iter_mut().enumerate() {
            let durable = mp.durable();
            let left = read_all(store, name, p as u32);
            let gone = durable.len() - left.len();
            assert_eq!(left[..], durable[gone..], "{name}/{p} after eviction is not a suffix");
            let (log_start, hw) = store.watermarks(name, PartitionId(p as u32)).unwrap();
            assert_eq!(hw.0, mp.next);
            assert!(log_start.0 >= mp.log_start, "log start moved back");
            assert_eq!(log_start.0, left.first().map_or(mp.flushed, |(o, _)| *o));
            while let Some(i) = mp.oldest_segment() {
                if mp.segments[i].end().unwrap() > log_start.0 {
                    break;
                }
                let seg = mp.delete_segment(i);
                deleted.entry(t.service.clone()).or_default().push(seg);
            }
            assert_eq!(mp.log_start, log_start.0, "{name}/{p}: eviction cut inside a segment");
        }
    }
    let after_services = model.service_bytes();
    check_report(&report.deleted, &before_services, &after_services);
    let total_after = model.total_bytes();
    let max_deleted = deleted.values().flatten().map(Segment::bytes).max();

    if total_before <= budget {
        assert_eq!(max_deleted, None, "evicted while within budget");
        return;
    }
    // Not more than needed: the last segment deleted crossed the budget.
    if let Some(max) = max_deleted {
        assert!(total_after + max > budget, "over-evicted: {total_after} left, budget {budget}");
    }
    let rank = |s: &str| (policy(s).express, policy(s).weight, s.to_owned());
    // The oldest durable segment of each of a service's partitions.
    let heads = |service: &str| -> Vec<Segment> {
        model
            .topics
            .values()
            .filter(|t| t.service == service)
            .flat_map(|t| {
                t.partitions.iter().filter_map(|p| p.oldest_segment().map(|i| p.segments[i].clone()))
            })
            .collect()
    };
    // A service that cannot give its oldest segment without going below its
    // reservation (or has none left).
    let exhausted = |service: &str| {
        let heads = heads(service);
        let Some(oldest) = heads.iter().filter_map(Segment::first_ts).min() else { return true };
        let bytes = after_services[service];
        heads
            .iter()
            .filter(|s| s.first_ts() == Some(oldest))
            .any(|s| bytes.saturating_sub(s.bytes()) < policy(service).reserved_bytes)
    };
    if total_after > budget {
        for s in after_services.keys() {
            assert!(exhausted(s), "stopped over budget ({total_after} > {budget}) while {s} could give more");
        }
    }
    for (service, b) in &before_services {
        let after = after_services[service];
        // Reservations hold.
        assert!(after >= (*b).min(policy(service).reserved_bytes), "{service} went below its reservation");
        if after < *b {
            // Everything ranked below a service that lost data was exhausted.
            for lower in before_services.keys().filter(|l| rank(l) < rank(service)) {
                assert!(exhausted(lower), "{service} lost data while lower-ranked {lower} could give more");
            }
            // Oldest first within the service: no segment kept started
            // before one deleted.
            let newest_deleted = deleted[service].iter().filter_map(Segment::first_ts).max().unwrap();
            let oldest_kept = model
                .topics
                .values()
                .filter(|t| &t.service == service)
                .flat_map(|t| {
                    t.partitions.iter().flat_map(|p| p.segments.iter().filter_map(Segment::first_ts))
                })
                .min();
            assert!(
                oldest_kept.is_none_or(|k| newest_deleted <= k),
                "{service}: deleted a segment starting at {newest_deleted} but kept one starting at {oldest_kept:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..100)) {
        // Most sequences start with a topic, so appends find one.
        let mut all = vec![Op::EnsureTopic { topic: 0, partitions: 2, service: 0 }];
        all.extend(ops);
        run(&all);
    }
}

/// A fixed sequence that touches every operation, so a regression shows up
/// even when the random cases happen to miss a path.
#[test]
fn every_operation_once() {
    let rec = |n: usize| RecordGen {
        key: Some(vec![n as u8]),
        value: vec![7; n],
        headers: vec![("h".into(), vec![1])],
    };
    run(&[
        Op::EnsureTopic { topic: 0, partitions: 2, service: 0 },
        Op::EnsureTopic { topic: 1, partitions: 1, service: 1 },
        Op::Append { topic: 0, partition: 1, tick: 1, records: (1..=10).map(rec).collect() },
        Op::Append { topic: 1, partition: 0, tick: 1, records: (1..=5).map(rec).collect() },
        Op::Append { topic: 2, partition: 0, tick: 1, records: vec![rec(1)] },
        Op::Append { topic: 0, partition: 3, tick: 1, records: vec![rec(1)] },
        Op::Read { topic: 0, partition: 1, from: 2, max_records: 3, max_bytes: 1 },
        Op::Sync { topic: 0, partition: 1 },
        Op::Sync { topic: 2, partition: 0 },
        Op::Read { topic: 0, partition: 1, from: 2, max_records: 3, max_bytes: 1 },
        Op::Commit { group: 0, topic: 0, partition: 1, back: 0, past_end: 2 },
        Op::Commit { group: 1, topic: 0, partition: 1, back: 0, past_end: 3 },
        Op::EnsureTopic { topic: 0, partitions: 3, service: 2 },
        Op::EnsureTopic { topic: 0, partitions: 1, service: 2 },
        Op::Retention { topic: 0, max_bytes: Some(300), max_age_ms: None },
        Op::Flush,
        Op::Reopen,
        Op::Append { topic: 0, partition: 1, tick: 1, records: vec![rec(3)] },
        Op::Append { topic: 1, partition: 0, tick: 1, records: (1..=5).map(rec).collect() },
        Op::Flush,
        Op::Append { topic: 0, partition: 0, tick: 1, records: vec![rec(4)] },
        Op::Evict { budget_pct: 50, policies: vec![Some((1, false, 100)), Some((2, true, 0)), None] },
        Op::Retention { topic: 1, max_bytes: None, max_age_ms: Some(0) },
        Op::Reopen,
        Op::Read { topic: 0, partition: 1, from: 0, max_records: 100, max_bytes: usize::MAX },
    ]);
}
