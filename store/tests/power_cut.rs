//! Power-cut model test: the production store runs over an in-memory file
//! layer ([`MemFs`]) that keeps what a power cut would keep apart from what
//! it may lose:
//!
//! - per file, the bytes made durable by `sync_data` and, after them, the
//!   writes and truncations since (a cut keeps an arbitrary subset of
//!   those, each write kept whole, dropped, or torn at 512-byte sectors);
//!   `write_back` (`sync_file_range`) promises nothing;
//! - per directory, the entries as of its last `sync_dir`: a file or
//!   directory created since is gone after a cut, one removed since comes
//!   back;
//! - sled (the metadata, outside this layer): a copy of its files taken at
//!   each [`Fs::checkpointed`] (after every sled flush), which is what sled
//!   promises for a completed flush; a cut restores that copy.
//!
//! A seeded loop drives a store through appends, flushes, syncs, paced
//! flushes, reads, commits, cursors, atomic commits, retention and
//! eviction, with small segments. Cut images are taken between operations
//! and in the middle of them (at a random call into the layer). Each image
//! is reopened (the surviving files in a fresh layer, the sled copy in a
//! fresh directory) and must keep the contract:
//!
//! - open succeeds without `accept_data_loss`;
//! - every record that was durable before the operation (below the durable
//!   end the store reported, and not deleted by retention) is there with
//!   its offset and content; every record read back is one that was
//!   appended at that offset;
//! - offsets are never reused: the next offset is at least that durable
//!   end;
//! - committed group offsets and uplink cursors are values that were set,
//!   and never past the recovered durable end.
//!
//! Some recovered stores take more appends and a flush, and are cut again.
//! `POWER_CUT_SEEDS` (a count) runs more seeds for a soak.
#![allow(clippy::unwrap_used)]

use sluice_store::log::fs::{Fs, SegFile};
use sluice_store::{
    AtomicWrite, EvictionPolicy, Offset, PartitionId, Record, Retention, SegmentLimits, Store, StoreOptions,
    TopicSpec,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const SECTOR: u64 = 512;

// ---------------------------------------------------------------- rng

/// splitmix64: small, seeded, good enough.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

// ---------------------------------------------------------------- layer

#[derive(Debug, Clone)]
enum FileOp {
    Write { pos: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Debug, Clone, Default)]
struct FileData {
    /// Content as of the last `sync_data`.
    synced: Vec<u8>,
    /// What happened since, in order.
    unsynced: Vec<FileOp>,
    /// What reads see.
    current: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir(u64),
}

#[derive(Debug, Clone, Default)]
struct DirData {
    current: BTreeMap<String, Entry>,
    /// Entries as of the last `sync_dir`.
    durable: BTreeMap<String, Entry>,
}

/// What survives a cut: files (path relative to the root, content),
/// directories, and the sled copy.
#[derive(Debug, Clone, Default)]
struct Image {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, Vec<u8>)>,
    sled: Vec<(PathBuf, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct State {
    files: HashMap<u64, FileData>,
    /// Directory 0 is the root (the store's directory): always there.
    dirs: HashMap<u64, DirData>,
    next_id: u64,
    /// Calls into the layer that change something.
    calls: u64,
    /// Take an image just before this call.
    capture_at: Option<u64>,
    images: Vec<Image>,
    /// sled's files at the last checkpoint.
    sled: Vec<(PathBuf, Vec<u8>)>,
    rng: Option<Rng>,
}

/// The in-memory file layer (see the module docs).
#[derive(Debug, Clone)]
struct MemFs {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct MemFile {
    id: u64,
    fs: MemFs,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", p.display()))
}

impl MemFs {
    fn new(root: &Path, seed: u64) -> MemFs {
        let mut st = State { next_id: 1, rng: Some(Rng(seed)), ..State::default() };
        st.dirs.insert(0, DirData::default());
        MemFs { root: root.to_owned(), state: Arc::new(Mutex::new(st)) }
    }

    /// A layer holding `image` (all of it durable), rooted at `root`.
    fn load(root: &Path, image: &Image, seed: u64) -> MemFs {
        let fs = MemFs::new(root, seed);
        for d in &image.dirs {
            fs.create_dir_all(&root.join(d)).unwrap();
        }
        for (p, data) in &image.files {
            let f = fs.create(&root.join(p)).unwrap();
            f.write_all_at(0, data).unwrap();
            f.sync_data().unwrap();
        }
        let mut st = fs.state.lock().unwrap();
        for d in st.dirs.values_mut() {
            d.durable = d.current.clone();
        }
        st.calls = 0;
        // The sled files restored are durable as they are.
        st.sled = image.sled.clone();
        drop(st);
        fs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn rel(&self, p: &Path) -> io::Result<Vec<String>> {
        let rel = p.strip_prefix(&self.root).map_err(|_| not_found(p))?;
        Ok(rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect())
    }

    /// The directory id of `parts` (current entries).
    fn dir_id(st: &State, parts: &[String]) -> Option<u64> {
        let mut id = 0;
        for name in parts {
            match st.dirs[&id].current.get(name) {
                Some(Entry::Dir(d)) => id = *d,
                _ => return None,
            }
        }
        Some(id)
    }

    /// Counts a changing call; takes an image first when one is due.
    fn tick(&self, st: &mut State) {
        st.calls += 1;
        if st.capture_at == Some(st.calls) {
            st.capture_at = None;
            let img = Self::image(st);
            st.images.push(img);
        }
    }

    /// Arms an image at one of the next `within` changing calls.
    fn arm(&self, within: u64) {
        let mut st = self.lock();
        let n = 1 + st.rng.as_mut().unwrap().below(within.max(1));
        st.capture_at = Some(st.calls + n);
    }

    fn disarm(&self) {
        self.lock().capture_at = None;
    }

    /// An image of a cut now.
    fn cut(&self) -> Image {
        let mut st = self.lock();
        Self::image(&mut st)
    }

    fn take_images(&self) -> Vec<Image> {
        std::mem::take(&mut self.lock().images)
    }

    fn image(st: &mut State) -> Image {
        let mut rng = st.rng.take().unwrap();
        let mut img = Image { sled: st.sled.clone(), ..Image::default() };
        let mut todo = vec![(0u64, PathBuf::new())];
        while let Some((id, path)) = todo.pop() {
            for (name, e) in &st.dirs[&id].durable {
                let p = path.join(name);
                match e {
                    Entry::Dir(d) => {
                        img.dirs.push(p.clone());
                        todo.push((*d, p));
                    }
                    Entry::File(f) => img.files.push((p, survive(&st.files[f], &mut rng))),
                }
            }
        }
        st.rng = Some(rng);
        img
    }

    fn with_file<T>(&self, id: u64, change: bool, f: impl FnOnce(&mut FileData) -> T) -> T {
        let mut st = self.lock();
        if change {
            self.tick(&mut st);
        }
        f(st.files.get_mut(&id).unwrap())
    }
}

/// What a cut leaves of a file: the synced bytes, then each later change
/// kept, dropped, or (a write) torn at sectors, in order.
fn survive(f: &FileData, rng: &mut Rng) -> Vec<u8> {
    let mut out = f.synced.clone();
    for op in &f.unsynced {
        match op {
            FileOp::Truncate(len) => {
                if rng.chance(2) {
                    out.resize(*len as usize, 0);
                }
            }
            FileOp::Write { pos, data } => {
                let mode = rng.below(3);
                let end = pos + data.len() as u64;
                let mut at = *pos;
                while at < end {
                    let next = ((at / SECTOR) + 1) * SECTOR;
                    let next = next.min(end);
                    let keep = match mode {
                        0 => false,
                        1 => true,
                        _ => rng.chance(2),
                    };
                    if keep {
                        if out.len() < next as usize {
                            out.resize(next as usize, 0);
                        }
                        let (a, b) = ((at - pos) as usize, (next - pos) as usize);
                        out[at as usize..next as usize].copy_from_slice(&data[a..b]);
                    }
                    at = next;
                }
            }
        }
    }
    out
}

impl SegFile for MemFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.fs.with_file(self.id, false, |f| {
            let len = f.current.len() as u64;
            if pos >= len {
                return Ok(0);
            }
            let n = buf.len().min((len - pos) as usize);
            buf[..n].copy_from_slice(&f.current[pos as usize..pos as usize + n]);
            Ok(n)
        })
    }

    fn write_all_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        self.fs.with_file(self.id, true, |f| {
            let end = pos as usize + buf.len();
            if f.current.len() < end {
                f.current.resize(end, 0);
            }
            f.current[pos as usize..end].copy_from_slice(buf);
            f.unsynced.push(FileOp::Write { pos, data: buf.to_vec() });
            Ok(())
        })
    }

    fn write_back(&self, _pos: u64, _len: u64) -> io::Result<()> {
        // Starts writeback; durable nothing (no size, no journal commit).
        self.fs.with_file(self.id, true, |_| Ok(()))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.with_file(self.id, true, |f| {
            f.synced = f.current.clone();
            f.unsynced.clear();
            Ok(())
        })
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.fs.with_file(self.id, true, |f| {
            f.current.resize(len as usize, 0);
            f.unsynced.push(FileOp::Truncate(len));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.fs.with_file(self.id, false, |f| Ok(f.current.len() as u64))
    }
}

impl Fs for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let parts = self.rel(dir)?;
        let mut st = self.lock();
        let mut id = 0;
        for name in parts {
            let found = st.dirs[&id].current.get(&name).copied();
            id = match found {
                Some(Entry::Dir(d)) => d,
                Some(Entry::File(_)) => return Err(io::Error::other(format!("{name} is a file"))),
                None => {
                    self.tick(&mut st);
                    let d = st.next_id;
                    st.next_id += 1;
                    st.dirs.insert(d, DirData::default());
                    st.dirs.get_mut(&id).unwrap().current.insert(name, Entry::Dir(d));
                    d
                }
            };
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let parts = self.rel(dir)?;
        let st = self.lock();
        let id = Self::dir_id(&st, &parts).ok_or_else(|| not_found(dir))?;
        Ok(st.dirs[&id].current.keys().cloned().collect())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegFile>> {
        let parts = self.rel(path)?;
        let (name, parent) = parts.split_last().ok_or_else(|| not_found(path))?;
        let st = self.lock();
        let dir = Self::dir_id(&st, parent).ok_or_else(|| not_found(path))?;
        match st.dirs[&dir].current.get(name) {
            Some(Entry::File(id)) => Ok(Arc::new(MemFile { id: *id, fs: self.clone() })),
            _ => Err(not_found(path)),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegFile>> {
        let parts = self.rel(path)?;
        let (name, parent) = parts.split_last().ok_or_else(|| not_found(path))?;
        let mut st = self.lock();
        let dir = Self::dir_id(&st, parent).ok_or_else(|| not_found(path))?;
        if st.dirs[&dir].current.contains_key(name) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
        }
        self.tick(&mut st);
        let id = st.next_id;
        st.next_id += 1;
        st.files.insert(id, FileData::default());
        st.dirs.get_mut(&dir).unwrap().current.insert(name.clone(), Entry::File(id));
        Ok(Arc::new(MemFile { id, fs: self.clone() }))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let parts = self.rel(path)?;
        let (name, parent) = parts.split_last().ok_or_else(|| not_found(path))?;
        let mut st = self.lock();
        let dir = Self::dir_id(&st, parent).ok_or_else(|| not_found(path))?;
        if !matches!(st.dirs[&dir].current.get(name), Some(Entry::File(_))) {
            return Err(not_found(path));
        }
        self.tick(&mut st);
        // The data stays: an entry a cut brings back still points at it.
        st.dirs.get_mut(&dir).unwrap().current.remove(name);
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let parts = self.rel(dir)?;
        let Some((name, parent)) = parts.split_last() else { return Ok(()) };
        let mut st = self.lock();
        let Some(p) = Self::dir_id(&st, parent) else { return Ok(()) };
        self.tick(&mut st);
        st.dirs.get_mut(&p).unwrap().current.remove(name);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let parts = self.rel(dir)?;
        let mut st = self.lock();
        let id = Self::dir_id(&st, &parts).ok_or_else(|| not_found(dir))?;
        self.tick(&mut st);
        let d = st.dirs.get_mut(&id).unwrap();
        d.durable = d.current.clone();
        Ok(())
    }

    fn checkpointed(&self, meta_dir: &Path) {
        let mut st = self.lock();
        self.tick(&mut st);
        st.sled = copy_sled(meta_dir);
    }
}

/// sled's files under `dir` (everything but `segments/`), relative paths.
fn copy_sled(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_owned();
            if rel == Path::new("segments") {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.push((rel.join(""), Vec::new()));
                walk(base, &p, out);
            } else if let Ok(data) = std::fs::read(&p) {
                out.push((rel, data));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

fn restore_sled(dir: &Path, files: &[(PathBuf, Vec<u8>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (rel, data) in files {
        let p = dir.join(rel);
        if rel.as_os_str().to_string_lossy().ends_with('/') {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, data).unwrap();
        }
    }
}

// ---------------------------------------------------------------- model

const LIMITS: SegmentLimits = SegmentLimits { max_bytes: 2048, max_age_ms: i64::MAX / 2 };
const PARTS: [(&str, u32); 3] = [("a", 0), ("a", 1), ("b", 0)];

fn specs(retention_bytes: Option<u64>) -> [TopicSpec; 2] {
    [
        TopicSpec {
            name: "a".into(),
            partitions: 2,
            service: "x".into(),
            retention: Retention { max_age: None, max_bytes: retention_bytes },
        },
        TopicSpec { name: "b".into(), partitions: 1, service: "y".into(), retention: Retention::default() },
    ]
}

fn open(path: &Path, fs: &MemFs) -> Result<Store, sluice_store::StoreError> {
    Store::open(&StoreOptions {
        cache_capacity: 1 << 20,
        segments: LIMITS,
        fs: Arc::new(fs.clone()),
        ..StoreOptions::new(path)
    })
}

/// What the test knows: every record ever appended (one run never reuses
/// an offset), and the values positions were set to.
#[derive(Debug, Default, Clone)]
struct Known {
    appended: BTreeMap<(String, u32, u64), Record>,
    positions: BTreeMap<(String, String, u32), BTreeSet<u64>>,
}

/// What the store reported durable: per partition (log start, durable end).
type Durable = BTreeMap<(String, u32), (u64, u64)>;

fn durable(store: &Store) -> Durable {
    let mut out = BTreeMap::new();
    for t in store.topics() {
        for p in &t.partitions {
            out.insert((t.spec.name.clone(), p.partition.0), (p.log_start.0, p.flushed.0));
        }
    }
    out
}

fn record(rng: &mut Rng, topic: &str, p: u32, n: u64) -> Record {
    let len = match rng.below(8) {
        0 => 600 + rng.below(900),
        _ => rng.below(200),
    } as usize;
    Record {
        key: rng.chance(3).then(|| format!("k{}", rng.below(50)).into_bytes()),
        value: (0..len).map(|i| (n as usize * 31 + i) as u8).collect(),
        headers: if rng.chance(2) {
            vec![("at".into(), format!("{topic}/{p}/{n}").into_bytes())]
        } else {
            vec![]
        },
        timestamp_ms: 1_000 + n as i64,
    }
}

fn append(store: &Store, known: &mut Known, rng: &mut Rng, n: &mut u64) {
    let (topic, p) = PARTS[rng.below(3) as usize];
    let count = 1 + rng.below(6);
    let recs: Vec<Record> = (0..count)
        .map(|_| {
            *n += 1;
            record(rng, topic, p, *n)
        })
        .collect();
    let first = store.append(topic, PartitionId(p), &recs).unwrap();
    for (i, r) in recs.into_iter().enumerate() {
        let prev = known.appended.insert((topic.to_owned(), p, first.0 + i as u64), r);
        assert!(prev.is_none(), "offset {} of {topic}/{p} handed out twice", first.0 + i as u64);
    }
}

/// One random operation.
fn step(store: &Store, known: &mut Known, rng: &mut Rng, n: &mut u64) {
    match rng.below(20) {
        0..=7 => append(store, known, rng, n),
        8 | 9 => {
            store.flush().unwrap();
            for t in store.topics() {
                for p in &t.partitions {
                    assert_eq!(
                        p.flushed, p.high_watermark,
                        "flush left {}/{} behind",
                        t.spec.name, p.partition.0
                    );
                }
            }
        }
        10 | 11 => {
            let (topic, p) = PARTS[rng.below(3) as usize];
            store.sync_partitions(&[(topic.to_owned(), PartitionId(p))]).unwrap();
            let info = store.topic(topic).unwrap().partitions[p as usize];
            assert_eq!(info.flushed, info.high_watermark);
        }
        12 => store.flush_paced(1024, &|t| t == "a").unwrap(),
        13 => {
            let (topic, p) = PARTS[rng.below(3) as usize];
            let info = store.topic(topic).unwrap().partitions[p as usize];
            let from = info.log_start.0 + rng.below(info.flushed.0 - info.log_start.0 + 2);
            let r = store
                .read(topic, PartitionId(p), Offset(from), 1 + rng.below(40) as usize, usize::MAX)
                .unwrap();
            assert_eq!(r.high_watermark, info.flushed);
            for s in r.records {
                assert!(s.offset < info.flushed);
                assert_eq!(Some(&s.record), known.appended.get(&(topic.to_owned(), p, s.offset.0)));
            }
        }
        14 | 15 => {
            let (topic, p) = PARTS[rng.below(3) as usize];
            let info = store.topic(topic).unwrap().partitions[p as usize];
            let at = rng.below(info.flushed.0 + 1);
            let (owner, cursor) = if rng.chance(2) { ("g", false) } else { ("up", true) };
            let r = if cursor {
                store.set_cursor(owner, topic, PartitionId(p), Offset(at))
            } else {
                store.commit(owner, topic, PartitionId(p), Offset(at))
            };
            r.unwrap();
            known.positions.entry((owner.to_owned(), topic.to_owned(), p)).or_default().insert(at);
            // Past the durable end: refused.
            let past = info.flushed.0 + 1 + rng.below(3);
            assert!(store.commit(owner, topic, PartitionId(p), Offset(past)).is_err());
        }
        16 => {
            // Records and a position in one durable step.
            let info = store.topic("b").unwrap().partitions[0];
            let count = 1 + rng.below(4);
            let recs: Vec<Record> = (0..count)
                .map(|_| {
                    *n += 1;
                    record(rng, "b", 0, *n)
                })
                .collect();
            let end = info.high_watermark.0 + count;
            let w = AtomicWrite {
                records: vec![("b".into(), PartitionId(0), recs.clone())],
                positions: vec![("ga".into(), "b".into(), PartitionId(0), Offset(end))],
                state: vec![],
            };
            let firsts = store.commit_atomic(&w).unwrap();
            for (i, r) in recs.into_iter().enumerate() {
                known.appended.insert(("b".into(), 0, firsts[0].0 + i as u64), r);
            }
            known.positions.entry(("ga".into(), "b".into(), 0)).or_default().insert(end);
            let after = store.topic("b").unwrap().partitions[0];
            assert_eq!((after.flushed.0, after.high_watermark.0), (end, end));
        }
        17 => {
            store.enforce_retention(0).unwrap();
        }
        18 => {
            let total = store.total_bytes();
            store.evict_to_budget(total - total / 8, &HashMap::<String, EvictionPolicy>::new()).unwrap();
        }
        _ => store.checkpoint().unwrap(),
    }
}

// ---------------------------------------------------------------- check

struct Checker {
    dir: PathBuf,
    cuts: usize,
    rng: Rng,
}

impl Checker {
    /// Reopens `image` and checks it against what was durable before the
    /// operation during which it was taken (`before`) and what retention
    /// had deleted by the end of it (`after`). Returns the reopened store
    /// with its layer.
    fn check(
        &mut self,
        image: &Image,
        known: &Known,
        before: &Durable,
        after: &Durable,
        what: &str,
    ) -> (Store, MemFs, PathBuf) {
        self.cuts += 1;
        let path = self.dir.join(format!("cut-{}", self.cuts));
        restore_sled(&path, &image.sled);
        let fs = MemFs::load(&path, image, self.cuts as u64 * 7919);
        // Now and then the power goes again during the recovery itself.
        let cut_open = !what.contains("during recovery") && self.rng.chance(4);
        if cut_open {
            fs.arm(1 + self.rng.below(24));
        }
        let store = match open(&path, &fs) {
            Ok(s) => s,
            Err(e) => panic!("{what}: open after a cut failed: {e}"),
        };
        fs.disarm();
        for img in fs.take_images() {
            let (s, _, p) = self.check(&img, known, before, after, &format!("{what}, cut during recovery"));
            drop(s);
            let _ = std::fs::remove_dir_all(p);
        }
        assert!(store.accepted_loss().is_empty());
        for (topic, p) in PARTS {
            let key = (topic.to_owned(), p);
            let (_, end_before) = before.get(&key).copied().unwrap_or((0, 0));
            let (start_after, _) = after.get(&key).copied().unwrap_or((0, 0));
            let Some(t) = store.topic(topic) else {
                assert_eq!(end_before, 0, "{what}: topic {topic} lost");
                continue;
            };
            let info = t.partitions[p as usize];
            assert!(
                info.high_watermark.0 >= end_before,
                "{what}: {topic}/{p} next offset {} below the durable end {end_before}: offsets reused",
                info.high_watermark.0
            );
            assert_eq!(info.flushed, info.high_watermark);
            // Only retention moves the log start.
            assert!(
                info.log_start.0 <= start_after,
                "{what}: {topic}/{p} log start {} past {start_after}",
                info.log_start.0
            );
            let got = store.read(topic, PartitionId(p), Offset(0), usize::MAX, usize::MAX).unwrap();
            let mut have = BTreeSet::new();
            for s in &got.records {
                assert_eq!(
                    Some(&s.record),
                    known.appended.get(&key_of(topic, p, s.offset.0)),
                    "{what}: {topic}/{p} offset {} is not what was appended there",
                    s.offset.0
                );
                have.insert(s.offset.0);
            }
            for o in start_after..end_before {
                assert!(
                    have.contains(&o),
                    "{what}: durable record {topic}/{p} offset {o} lost (log start {})",
                    info.log_start.0
                );
            }
            for owner in ["g", "up", "ga"] {
                let v = if owner == "up" {
                    store.cursor(owner, topic, PartitionId(p)).unwrap()
                } else {
                    store.committed(owner, topic, PartitionId(p)).unwrap()
                };
                if let Some(v) = v {
                    assert!(
                        v <= info.flushed,
                        "{what}: {owner} at {v} past the durable end {}",
                        info.flushed
                    );
                    let set = known.positions.get(&(owner.to_owned(), topic.to_owned(), p));
                    assert!(set.is_some_and(|s| s.contains(&v.0)), "{what}: {owner} at {v} was never set");
                }
            }
        }
        (store, fs, path)
    }
}

fn key_of(topic: &str, p: u32, o: u64) -> (String, u32, u64) {
    (topic.to_owned(), p, o)
}

fn run(seed: u64, steps: usize, checker: &mut Checker) {
    let mut rng = Rng(seed);
    let path = checker.dir.join(format!("seed-{seed}"));
    let fs = MemFs::new(&path, seed ^ 0x5555);
    let store = open(&path, &fs).unwrap();
    let retention = if rng.chance(2) { Some(12_000) } else { None };
    for s in specs(retention) {
        store.ensure_topic(&s).unwrap();
    }
    let mut known = Known::default();
    let mut n = 0u64;
    for i in 0..steps {
        let before = durable(&store);
        // Now and then a cut in the middle of the next operations.
        if rng.chance(4) {
            fs.arm(1 + rng.below(12));
        }
        step(&store, &mut known, &mut rng, &mut n);
        let after = durable(&store);
        let mut images = fs.take_images();
        // And between operations.
        if rng.chance(6) {
            images.push(fs.cut());
        }
        for img in images {
            let what = format!("seed {seed} step {i}");
            let (recovered, rfs, rpath) = checker.check(&img, &known, &before, &after, &what);
            // Life goes on after a recovery: more records, a flush, and
            // another cut.
            if rng.chance(3) {
                // Offsets that were never durable are handed out again.
                let mut known2 = known.clone();
                let ends = durable(&recovered);
                known2.appended.retain(|(t, p, o), _| *o < ends[&(t.clone(), *p)].1);
                let mut n2 = n + 1_000_000;
                for _ in 0..1 + rng.below(6) {
                    append(&recovered, &mut known2, &mut rng, &mut n2);
                }
                recovered.flush().unwrap();
                let d = durable(&recovered);
                let img2 = rfs.cut();
                drop(recovered);
                let _ = std::fs::remove_dir_all(&rpath);
                let (again, _, p2) =
                    checker.check(&img2, &known2, &d, &d, &format!("{what}, recovered and cut again"));
                drop(again);
                let _ = std::fs::remove_dir_all(p2);
            } else {
                drop(recovered);
                let _ = std::fs::remove_dir_all(&rpath);
            }
        }
    }
    fs.disarm();
}

#[test]
fn the_store_keeps_its_durability_contract_across_power_cuts() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut checker = Checker { dir: dir.path().to_owned(), cuts: 0, rng: Rng(42) };
    let seeds: u64 = std::env::var("POWER_CUT_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    for seed in 0..seeds {
        run(0x00c0_ffee + seed, 120, &mut checker);
    }
    eprintln!("{} cut images checked in {:?}", checker.cuts, started.elapsed());
    assert!(checker.cuts >= 50 * seeds as usize / 6, "only {} cuts", checker.cuts);
}
