#![allow(clippy::unwrap_used)]
use sluice_store::*;
use std::path::Path;
use std::io::{Seek, Write};

fn opts(p: &Path) -> StoreOptions { StoreOptions { path: p.to_path_buf(), cache_capacity: 1 << 20 } }

fn try_open(p: &Path, what: &str) {
    let r = std::panic::catch_unwind(|| Store::open(&opts(p)).map(|s| s.topic("t").map(|t| t.partitions[0].high_watermark)));
    eprintln!("{what}: {:?}", r.map(|r| r.map_err(|e| e.to_string())));
}

fn make(p: &Path) {
    let s = Store::open(&opts(p)).unwrap();
    s.ensure_topic(&TopicSpec { name: "t".into(), partitions: 2, service: "s".into(), retention: Retention::default() }).unwrap();
    for i in 0..3000u64 { s.append("t", PartitionId(0), &[Record { value: vec![i as u8; 500], ..Record::default() }]).unwrap(); if i % 100 == 0 { s.flush().unwrap(); } }
    s.flush().unwrap();
}

#[test]
fn exp() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x");
    make(&p);
    for e in std::fs::read_dir(&p).unwrap() { let e = e.unwrap(); eprintln!("{:?} {}", e.path(), e.metadata().unwrap().len()); }
    for off in [0u64, 20, 100, 4096, 200_000, 524_288, 524_300, 1_000_000, 1_048_600] {
        let p = d.path().join(format!("db{off}"));
        make(&p);
        let mut f = std::fs::OpenOptions::new().write(true).open(p.join("db")).unwrap();
        f.seek(std::io::SeekFrom::Start(off)).unwrap();
        let garbage: Vec<u8> = (0..64).map(|i| (i * 7919 % 251) as u8).collect();
        f.write_all(&garbage).unwrap();
        drop(f);
        try_open(&p, &format!("db garbage at {off}"));
    }
    let p = d.path().join("snap");
    make(&p);
    for e in std::fs::read_dir(&p).unwrap() { let e = e.unwrap(); if e.file_name().to_string_lossy().starts_with("snap") { std::fs::write(e.path(), b"garbagegarbagegarbage").unwrap(); } }
    try_open(&p, "snap garbage");
}
