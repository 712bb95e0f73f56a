//! The synced high-watermark file: how the store notices that sled lost
//! flushed data.
//!
//! sled recovers the longest readable prefix of its log. A torn tail after
//! a crash is expected, but damage in the middle of the file (a bad block,
//! a flipped sector) looks the same to it: it keeps what comes before and
//! silently drops the rest. So after each flush that moved a partition's
//! high watermark, the store records the flushed watermarks in a small file
//! next to sled's (`sluice-watermarks`), and `open` compares them with what
//! sled recovered.
//!
//! The file only ever needs to be a lower bound of what was flushed: the
//! watermarks are taken *before* sled's flush, and an older version of the
//! file is always valid. That is why it is written by a thread of its own
//! (coalescing the flushes that happened meanwhile) instead of inside the
//! flush a `sync` producer waits for: the two extra device syncs stay off
//! the acknowledgement path. One small file per burst of flushes, never a
//! write per record (SD cards wear out).
//!
//! Format (text, one line each, topic names never contain spaces):
//!
//! ```text
//! sluice-watermarks/1
//! <topic> <partition> <high watermark>
//! ...
//! end <number of entries>
//! ```
//!
//! Written as `sluice-watermarks.tmp`, `fdatasync`ed, renamed over the old
//! file, then the directory is `fsync`ed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Name of the file in the store directory.
pub(super) const FILE_NAME: &str = "sluice-watermarks";
const HEADER: &str = "sluice-watermarks/1";

/// Flushed high watermarks by (topic, partition).
pub(super) type Marks = BTreeMap<(String, u32), u64>;

/// Reads the file; `Ok(None)` when there is none (a new store, or one
/// written before this file existed). The error says what is wrong.
pub(super) fn load(dir: &Path) -> Result<Option<Marks>, String> {
    let text = match std::fs::read(dir.join(FILE_NAME)) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_owned())?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!("first line is not {HEADER:?}"));
    }
    let mut marks = Marks::new();
    for (n, line) in lines.enumerate() {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["end", count] if count.parse() == Ok(marks.len()) && n == marks.len() => return Ok(Some(marks)),
            [topic, partition, hw] => {
                let (Ok(p), Ok(hw)) = (partition.parse(), hw.parse()) else {
                    return Err(format!("line {}: {line:?} is not `topic partition offset`", n + 2));
                };
                marks.insert((topic.to_owned(), p), hw);
            }
            _ => return Err(format!("line {}: {line:?} is not `topic partition offset`", n + 2)),
        }
    }
    Err("truncated: no valid `end` line".to_owned())
}

/// Writes `marks` atomically (see the module doc).
pub(super) fn write(dir: &Path, marks: &Marks) -> io::Result<()> {
    let mut text = String::with_capacity(32 + marks.len() * 32);
    text.push_str(HEADER);
    text.push('\n');
    for ((topic, partition), hw) in marks {
        text.push_str(&format!("{topic} {partition} {hw}\n"));
    }
    text.push_str(&format!("end {}\n", marks.len()));
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE_NAME))?;
    File::open(dir)?.sync_all()
}

#[derive(Default)]
struct State {
    /// Marks offered since the last write, merged (by maximum) with it.
    pending: Option<Marks>,
    stop: bool,
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
}

/// The writer thread; a final write happens when it is dropped.
pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer for `dir`, whose file currently holds `written`.
    pub(super) fn start(dir: &Path, written: Marks) -> io::Result<Writer> {
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread =
            std::thread::Builder::new().name("sluice-watermarks".into()).spawn(move || run(&s, written))?;
        Ok(Writer { shared, thread: Some(thread) })
    }

    /// Offers watermarks taken before a successful flush. A failed write
    /// (disk full) is logged and retried with the next offer: until then
    /// the file is an older lower bound, which is still correct.
    pub(super) fn offer(&self, marks: Marks) {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        merge(state.pending.get_or_insert_with(Marks::new), marks);
        self.shared.wake.notify_one();
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn merge(into: &mut Marks, from: Marks) {
    for (k, v) in from {
        let e = into.entry(k).or_insert(v);
        *e = (*e).max(v);
    }
}

fn run(shared: &Shared, mut written: Marks) {
    // What a failed write still owes; retried with the next offer.
    let mut unwritten: Option<Marks> = None;
    let mut failing = false;
    loop {
        let (offered, stop) = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            while state.pending.is_none() && !state.stop {
                state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            (state.pending.take(), state.stop)
        };
        let mut next = written.clone();
        for marks in [unwritten.take(), offered].into_iter().flatten() {
            merge(&mut next, marks);
        }
        if next != written {
            match write(&shared.dir, &next) {
                Ok(()) => {
                    written = next;
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(file = %shared.dir.join(FILE_NAME).display(), error = %e,
                            "cannot write the high-watermark file; retrying with the next flush");
                    }
                    failing = true;
                    unwritten = Some(next);
                }
            }
        }
        if stop {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), Ok(None));
        let marks: Marks = [(("a".to_owned(), 0), 5), (("b.c".to_owned(), 3), 7)].into();
        write(dir.path(), &marks).unwrap();
        assert_eq!(load(dir.path()), Ok(Some(marks)));
        let path = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        let without_end = text.trim_end().rsplit_once('\n').unwrap().0;
        std::fs::write(&path, without_end).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("truncated"));
        std::fs::write(&path, &text[..text.len() - 4]).unwrap();
        assert!(load(dir.path()).is_err());
        std::fs::write(&path, text.replace("a 0 5", "a x 5")).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("line 2"));
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn writer_keeps_the_maximum_and_writes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let w = Writer::start(dir.path(), Marks::new()).unwrap();
        w.offer([(("t".to_owned(), 0), 9)].into());
        w.offer([(("t".to_owned(), 0), 4), (("t".to_owned(), 1), 2)].into());
        drop(w);
        let marks = load(dir.path()).unwrap().unwrap();
        assert_eq!(marks, [(("t".to_owned(), 0), 9), (("t".to_owned(), 1), 2)].into());
    }
}
