//! A full disk: a failed segment write or sync keeps its batches in memory
//! (written again by the next attempt), and a failed metadata write
//! poisons sled 0.34, which the store reopens. Once space is back the
//! store goes on without a restart, keeping every flushed record and every
//! record appended while the disk was full. Runs on a 4 MiB tmpfs the test
//! mounts (as root, like deploy/test.sh); it fails, never skips, when it
//! cannot.
#![allow(clippy::unwrap_used)]

use sluice_store::{Offset, PartitionId, Record, Retention, Store, StoreOptions, TopicSpec};
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

const P0: PartitionId = PartitionId(0);

fn rec(i: u64) -> Record {
    Record {
        key: None,
        value: format!("{i:06}-{}", "v".repeat(1000)).into_bytes(),
        headers: vec![],
        timestamp_ms: 1,
    }
}

#[test]
fn a_failed_write_reopens_the_database_and_keeps_what_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let out =
        Command::new("mount").args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"]).arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "cannot mount a tmpfs (needs root): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result = std::panic::catch_unwind(|| run(&mnt));
    let _ = Command::new("umount").arg("-l").arg(&mnt).status();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run(mnt: &std::path::Path) {
    let store =
        Store::open(&StoreOptions { cache_capacity: 1 << 20, ..StoreOptions::new(mnt.join("s")) }).unwrap();
    let spec =
        TopicSpec { name: "t".into(), partitions: 1, service: "s".into(), retention: Retention::default() };
    store.ensure_topic(&spec).unwrap();
    for i in 0..100 {
        store.append("t", P0, &[rec(i)]).unwrap();
    }
    store.flush().unwrap();
    // Fill the rest, then write until the store refuses.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    while f.write_all(&[0u8; 64 << 10]).is_ok() {}
    drop(f);
    let mut appended: Vec<Record> = (0..100).map(rec).collect();
    let mut refused = None;
    for i in 100..100_000 {
        appended.push(rec(i));
        let r = store.append("t", P0, &[rec(i)]).and_then(|_| store.flush());
        if let Err(e) = r {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("a full disk never refused a write");
    assert!(err.is_disk_full(), "{err}");
    // Space back: writes work again, without reopening by hand.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        appended.push(rec(1_000_000));
        if store.append("t", P0, &[rec(1_000_000)]).and_then(|_| store.flush()).is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "writes never resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = store.read("t", P0, Offset(0), usize::MAX, usize::MAX).unwrap();
    for (i, r) in read.records.iter().take(100).enumerate() {
        assert_eq!(r.offset, Offset(i as u64));
        assert_eq!(r.record, rec(i as u64), "flushed record {i} changed");
    }
    // Nothing appended was dropped: the records the full disk refused to
    // flush were written once there was room, at their offsets.
    assert_eq!(read.records.len(), appended.len());
    for (i, (r, want)) in read.records.iter().zip(&appended).enumerate() {
        assert_eq!((r.offset, &r.record), (Offset(i as u64), want), "record {i}");
    }
    assert!(store.take_discarded().is_empty());
    // And all of it is there after a restart.
    drop(store);
    let store =
        Store::open(&StoreOptions { cache_capacity: 1 << 20, ..StoreOptions::new(mnt.join("s")) }).unwrap();
    let read = store.read("t", P0, Offset(0), usize::MAX, usize::MAX).unwrap();
    assert_eq!(
        read.records.iter().map(|r| &r.record).collect::<Vec<_>>(),
        appended.iter().collect::<Vec<_>>()
    );
}
