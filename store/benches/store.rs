//! Append throughput of the store, in records per second, for 100 B and
//! 1 KiB values, against the physical limit of the disk underneath:
//!
//! - `buffered/<size>/<batch>`: one `append` of `batch` records per
//!   iteration (what a `buffered` service pays per request); the batches
//!   are written out every 4 MiB outside the timed section, as the bulk
//!   lane does in the background.
//! - `buffered_flush/<size>/<batch>`: the same, plus one `flush` at the end
//!   of each timed run of iterations (a background flush amortised).
//! - `sync/<size>/<group>`: `group` single-record appends (one per request,
//!   as the gateway's writer thread does), then `sync_partitions`: one group
//!   commit of a `sync` service (the sync lane: write, one fdatasync).
//! - `fdatasync_loop/<size>/<group>`: the baseline: the same encoded bytes
//!   (offset key + record) for `group` records appended to a plain file with
//!   one `write` and one `sync_data` (fdatasync) per group, in the same
//!   directory as the stores. Every append grows the file, so every
//!   fdatasync also commits the size change to the filesystem journal.
//! - `fdatasync_prealloc/<size>/<group>`: the physical floor: the same, but
//!   written over an already written and synced 16 MiB file (wrapping
//!   around), so fdatasync writes data only; sled similarly grows its file
//!   a segment at a time.
//!
//! The stores and the baseline file live in a temporary directory under the
//! system temp directory (`TMPDIR` to choose another filesystem). Each
//! benchmark starts from a fresh store with one topic of one partition.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_store::{PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const SIZES: [(&str, usize); 2] = [("100B", 100), ("1KiB", 1024)];
const GROUPS: [usize; 3] = [1, 16, 128];
const TOPIC: &str = "bench";
const P0: PartitionId = PartitionId(0);
/// The gateway's default `store.cache_capacity`.
const CACHE: u64 = 4 << 20;
/// Size of the preallocated baseline file.
const PREALLOC: u64 = 16 << 20;

/// A record shaped like the gateway's: a device key, one header, a value
/// of `len` bytes that does not compress trivially.
fn record(len: usize, i: u64) -> Record {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let value = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    Record {
        key: Some(format!("device-{:04}", i % 1000).into_bytes()),
        value,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        timestamp_ms: 1_700_000_000_000 + i as i64,
    }
}

fn records(len: usize, n: usize) -> Vec<Record> {
    (0..n as u64).map(|i| record(len, i)).collect()
}

fn scratch_dir() -> TempDir {
    tempfile::Builder::new().prefix("sluice-store-bench").tempdir_in(std::env::temp_dir()).unwrap_or_else(
        |e| panic!("cannot create a scratch directory in {}: {e}", std::env::temp_dir().display()),
    )
}

fn fresh_store(dir: &Path) -> Store {
    let store = Store::open(&StoreOptions { cache_capacity: CACHE, ..StoreOptions::new(dir.join("store")) })
        .unwrap_or_else(|e| panic!("{e}"));
    let spec = TopicSpec {
        name: TOPIC.into(),
        partitions: 1,
        service: "bench".into(),
        retention: Retention::default(),
    };
    store.ensure_topic(&spec).unwrap_or_else(|e| panic!("{e}"));
    store
}

fn append(store: &Store, batch: &[Record]) {
    store.append(TOPIC, P0, batch).unwrap_or_else(|e| panic!("append: {e}"));
}

fn flush(store: &Store) {
    store.flush().unwrap_or_else(|e| panic!("flush: {e}"));
}

fn sync_lane(store: &Store) {
    store.sync_partitions(&[(TOPIC.to_owned(), P0)]).unwrap_or_else(|e| panic!("sync: {e}"));
}

fn buffered(c: &mut Criterion) {
    for (size_name, len) in SIZES {
        let mut group = c.benchmark_group(format!("buffered/{size_name}"));
        for batch_len in GROUPS {
            let batch = records(len, batch_len);
            group.throughput(Throughput::Elements(batch_len as u64));
            let dir = scratch_dir();
            let store = fresh_store(dir.path());
            group.bench_function(BenchmarkId::from_parameter(batch_len), |b| {
                b.iter_custom(|iters| {
                    let mut timed = Duration::ZERO;
                    let mut start = Instant::now();
                    for i in 0..iters {
                        append(&store, &batch);
                        if i % 256 == 255 && store.undurable_bytes() > 4 << 20 {
                            timed += start.elapsed();
                            sync_lane(&store);
                            start = Instant::now();
                        }
                    }
                    timed + start.elapsed()
                })
            });
            drop(store);
            let dir = scratch_dir();
            let store = fresh_store(dir.path());
            group.bench_function(BenchmarkId::new("flush_at_end", batch_len), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        append(&store, &batch);
                    }
                    flush(&store);
                    start.elapsed()
                })
            });
        }
        group.finish();
    }
}

fn sync(c: &mut Criterion) {
    for (size_name, len) in SIZES {
        let mut group = c.benchmark_group(format!("sync/{size_name}"));
        for group_len in GROUPS {
            let recs = records(len, group_len);
            group.throughput(Throughput::Elements(group_len as u64));
            let dir = scratch_dir();
            let store = fresh_store(dir.path());
            group.bench_function(BenchmarkId::from_parameter(group_len), |b| {
                b.iter(|| {
                    for r in &recs {
                        append(&store, std::slice::from_ref(r));
                    }
                    sync_lane(&store);
                })
            });
            drop(store);

            // The same bytes the store keeps for these records.
            let mut bytes = Vec::new();
            for (i, r) in recs.iter().enumerate() {
                bytes.extend_from_slice(&(i as u64).to_be_bytes());
                r.encode_into(&mut bytes);
            }
            let dir = scratch_dir();
            let mut file = File::options()
                .create(true)
                .append(true)
                .open(dir.path().join("log"))
                .unwrap_or_else(|e| panic!("baseline file: {e}"));
            group.bench_function(BenchmarkId::new("fdatasync_loop", group_len), |b| {
                b.iter(|| {
                    file.write_all(&bytes).unwrap_or_else(|e| panic!("write: {e}"));
                    file.sync_data().unwrap_or_else(|e| panic!("fdatasync: {e}"));
                })
            });
            drop(file);

            let file = preallocated(dir.path());
            let mut at = 0u64;
            group.bench_function(BenchmarkId::new("fdatasync_prealloc", group_len), |b| {
                b.iter(|| {
                    if at + bytes.len() as u64 > PREALLOC {
                        at = 0;
                    }
                    file.write_all_at(&bytes, at).unwrap_or_else(|e| panic!("write: {e}"));
                    file.sync_data().unwrap_or_else(|e| panic!("fdatasync: {e}"));
                    at += bytes.len() as u64;
                })
            });
        }
        group.finish();
    }
}

/// A file of `PREALLOC` bytes, written and synced, so later writes inside
/// it change no metadata fdatasync would have to commit.
fn preallocated(dir: &Path) -> File {
    let mut file = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("prealloc"))
        .unwrap_or_else(|e| panic!("baseline file: {e}"));
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..PREALLOC / chunk.len() as u64 {
        file.write_all(&chunk).unwrap_or_else(|e| panic!("write: {e}"));
    }
    file.sync_all().unwrap_or_else(|e| panic!("fsync: {e}"));
    file
}

criterion_group! {
    name = benches;
    // Bounded so that `--quick` over all 30 cases stays within ~2 minutes.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    targets = buffered, sync
}
criterion_main!(benches);
