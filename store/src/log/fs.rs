//! The file layer under the segment files: every read, write, sync,
//! truncation, creation and deletion of a segment goes through [`Fs`], so a
//! test can put a layer underneath that models a power cut (synced and
//! unsynced bytes kept apart, torn sectors, lost directory entries); see
//! `tests/power_cut.rs`. Production uses [`RealFs`]: `pread`/`pwrite` on
//! plain files, `fdatasync`, `sync_file_range` for paced writeback, and an
//! `fsync` of the directory after a file is created, renamed or removed.
//! No mmap (32-bit armv7 has little address space to spare).
//!
//! sled (the metadata) writes its own files; the power-cut test models it
//! as durable at each checkpoint, which is what sled promises for a
//! completed `flush`.

use std::fmt::Debug;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// An open segment file.
pub trait SegFile: Send + Sync + Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read
    /// (fewer only at the end of the file).
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `buf` at `pos` (into the page cache).
    fn write_all_at(&self, pos: u64, buf: &[u8]) -> io::Result<()>;
    /// Starts writeback of `[pos, pos + len)` and waits for it, without
    /// the journal commit an `fdatasync` makes (paced bulk writeback).
    fn write_back(&self, pos: u64, len: u64) -> io::Result<()>;
    /// Makes the data (and the size) durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, len: u64) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// True when the file holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// Directory and file operations of the segment store.
pub trait Fs: Send + Sync + Debug {
    /// Creates the directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Entry names of a directory (files and directories).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegFile>>;
    /// Creates a new empty file (failing if it exists).
    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegFile>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Called after each sled flush (checkpoints, and every other sync of
    /// the metadata) made the metadata under `meta_dir` durable (a test
    /// layer snapshots it there).
    fn checkpointed(&self, _meta_dir: &Path) {}
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(std::fs::File);

#[cfg(unix)]
impl SegFile for RealFile {
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], pos + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_all_at(&self, pos: u64, buf: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.0.write_all_at(buf, pos)
    }

    fn write_back(&self, pos: u64, len: u64) -> io::Result<()> {
        sync_range(&self.0, pos, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`: writes the range
/// back and waits, without a journal commit (the final `fdatasync` of a
/// flush does that once).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn sync_range(f: &std::fs::File, pos: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(pos), Ok(len)) = (libc::off64_t::try_from(pos), libc::off64_t::try_from(len)) else {
        return f.sync_data();
    };
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain system call on a file descriptor `f` keeps open for the
    // duration of the call; no memory is passed.
    let r = unsafe { libc::sync_file_range(f.as_raw_fd(), pos, len, flags) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_range(f: &std::fs::File, _pos: u64, _len: u64) -> io::Result<()> {
    f.sync_data()
}

impl Fs for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            out.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegFile>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealFile(f)))
    }

    fn create(&self, path: &Path) -> io::Result<Arc<dyn SegFile>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Arc::new(RealFile(f)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}
