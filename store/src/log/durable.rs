//! The `fsync` half of a flush: sled 0.34 only calls `sync_file_range` on
//! its log file when flushing (and `fsync` from its periodic flusher, which
//! the store turns off), and never syncs its blob files. Syncing any file
//! descriptor of a file syncs the file, so the store keeps its own.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub(super) struct FileSync {
    db: File,
    blobs: PathBuf,
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl FileSync {
    /// Opens sled's log file in `dir` (after sled created it).
    pub(super) fn open(dir: &Path) -> io::Result<FileSync> {
        Ok(FileSync {
            db: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    /// fdatasync of the log, of blob files not synced before, and of the
    /// blob directory when it gained entries.
    pub(super) fn sync(&self) -> io::Result<()> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new_entry = false;
        let mut present = HashSet::new();
        match std::fs::read_dir(&self.blobs) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry?;
                    let name = entry.file_name();
                    if !synced.contains(&name) {
                        // sled may delete a blob it rewrote meanwhile.
                        match File::open(entry.path()) {
                            Ok(f) => f.sync_data()?,
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        }
                        new_entry = true;
                    }
                    present.insert(name);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if new_entry {
            File::open(&self.blobs)?.sync_all()?;
        }
        *synced = present;
        self.db.sync_data()
    }
}
