//! Damaged data files at start: a truncated or partly overwritten log,
//! garbage in sled's `conf`, a damaged or deleted blob, a deleted log, a
//! damaged watermark file. Each start either refuses with a clear error
//! naming the data directory and what to do (exit non-zero, no panic), or
//! serves every record that was stored; never less, silently. A refusal for
//! lost records is followed by `--accept-data-loss`: then what is left is
//! served unchanged and new offsets continue after the lost ones.

use crate::common::load::read_partition;
use crate::common::Gateway;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"
[[topic]]
name = "events"
partitions = 2
"#;

type Stored = BTreeMap<(u64, u64), Value>;

async fn all_records(gw: &Gateway) -> Stored {
    let mut out = Stored::new();
    for p in 0..2 {
        for (o, v) in read_partition(gw, "events", p).await {
            out.insert((p, o), v);
        }
    }
    out
}

/// A data directory with 3000 records of ~400 bytes over several of sled's
/// 512 KiB segments and one 200 KiB record (which sled keeps in a blob
/// file), written and stopped cleanly.
async fn populate(data_dir: &Path) -> Stored {
    let gw = Gateway::start(data_dir, Some(CONFIG)).await;
    let filler = "r".repeat(400);
    for batch in 0..30 {
        let recs: Vec<Value> = (0..100)
            .map(|i| json!({ "key": format!("k{}", i % 2), "value": format!("{batch}-{i}-{filler}") }))
            .collect();
        let (s, body) = gw.post_json("/v1/topics/events/records", &json!({ "records": recs })).await;
        assert_eq!(s, 200, "{body}");
        if batch == 15 {
            let big = json!({ "records": [{ "key": "k0", "value": "b".repeat(200 << 10) }] });
            assert_eq!(gw.post_json("/v1/topics/events/records", &big).await.0, 200);
        }
    }
    let stored = all_records(&gw).await;
    assert_eq!(stored.len(), 3001);
    let mut gw = gw;
    gw.terminate();
    stored
}

fn overwrite(file: &Path, at: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect();
    f.write_all(&garbage).unwrap();
}

fn first_blob(log: &Path) -> std::path::PathBuf {
    let mut blobs: Vec<_> =
        std::fs::read_dir(log.join("blobs")).unwrap().map(|e| e.unwrap().path()).collect();
    blobs.sort();
    blobs.into_iter().next().expect("the 200 KiB record should be in a blob file")
}

/// One kind of damage, applied to `log` (sled's directory).
type Damage = fn(&Path);

const DAMAGES: &[(&str, Damage)] = &[
    ("log truncated in the middle", |log| {
        let f = std::fs::OpenOptions::new().write(true).open(log.join("db")).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
    }),
    ("4 KiB overwritten in the middle of the log", |log| {
        let len = std::fs::metadata(log.join("db")).unwrap().len();
        overwrite(&log.join("db"), len / 2, 4096);
    }),
    ("garbage in sled's conf", |log| std::fs::write(log.join("conf"), vec![0xa5; 100]).unwrap()),
    ("a blob file overwritten", |log| overwrite(&first_blob(log), 0, 4096)),
    ("a blob file deleted", |log| std::fs::remove_file(first_blob(log)).unwrap()),
    ("the log deleted", |log| std::fs::remove_file(log.join("db")).unwrap()),
    ("the watermark file garbled", |log| {
        std::fs::write(log.join("sluice-watermarks"), b"sluice-wat").unwrap()
    }),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_files_are_refused_clearly_or_fully_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let original = populate(&pristine).await;
    let hw: BTreeMap<u64, u64> = original.keys().fold(BTreeMap::new(), |mut m, (p, o)| {
        let e = m.entry(*p).or_insert(0);
        *e = (*e).max(o + 1);
        m
    });
    let mut figures = Vec::new();
    for (i, (what, damage)) in DAMAGES.iter().enumerate() {
        let data_dir = dir.path().join(format!("case-{i}"));
        let st = Command::new("cp").arg("-a").arg(&pristine).arg(&data_dir).status().unwrap();
        assert!(st.success());
        damage(&data_dir.join("log"));
        let outcome = match Gateway::try_start(&data_dir, Some(CONFIG), &[]).await {
            Ok(mut gw) => {
                assert_eq!(all_records(&gw).await, original, "{what}: started but records differ");
                gw.terminate();
                "recovered everything".to_owned()
            }
            Err(stderr) => {
                assert!(!stderr.contains("panicked"), "{what}: panic instead of an error:\n{stderr}");
                assert!(
                    stderr.contains(data_dir.to_str().unwrap()),
                    "{what}: error does not name the data:\n{stderr}"
                );
                let advice = ["backup", "--accept-data-loss", "move the directory away"];
                assert!(advice.iter().any(|a| stderr.contains(a)), "{what}: no advice:\n{stderr}");
                if stderr.contains("--accept-data-loss") {
                    accept(&data_dir, &original, &hw, what).await
                } else {
                    "refused".to_owned()
                }
            }
        };
        figures.push(format!("{what}: {outcome}"));
    }
    eprintln!("fault figures: damaged data files: {}", figures.join("; "));
}

/// Starts with `--accept-data-loss`: what is left is unchanged, new
/// offsets continue after the lost ones, and a plain start works again.
async fn accept(data_dir: &Path, original: &Stored, hw: &BTreeMap<u64, u64>, what: &str) -> String {
    let gw = Gateway::try_start(data_dir, Some(CONFIG), &["--accept-data-loss"])
        .await
        .unwrap_or_else(|e| panic!("{what}: --accept-data-loss did not start:\n{e}"));
    let left = all_records(&gw).await;
    for (k, v) in &left {
        assert_eq!(original.get(k), Some(v), "{what}: record {k:?} changed");
    }
    for p in 0..2u64 {
        let rec = json!({ "records": [{ "key": format!("k{p}"), "value": "new" }] });
        let (s, body) = gw.post_json("/v1/topics/events/records", &rec).await;
        assert_eq!(s, 200, "{body}");
        let (np, no) = crate::common::offsets(&body)[0];
        assert!(no >= hw[&np], "{what}: offset {np}/{no} reused (flushed up to {})", hw[&np]);
    }
    let mut gw = gw;
    gw.terminate();
    let mut gw = Gateway::try_start(data_dir, Some(CONFIG), &[])
        .await
        .unwrap_or_else(|e| panic!("{what}: a plain start after accepting failed:\n{e}"));
    gw.terminate();
    format!("refused, then {} of {} records kept with --accept-data-loss", left.len(), original.len())
}
