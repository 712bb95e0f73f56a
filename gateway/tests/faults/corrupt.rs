//! Damaged data files at start: a sealed segment truncated, deleted or
//! overwritten in the middle, the active segment's tail overwritten, a
//! partition's directory deleted, garbage in sled's `conf`, the metadata
//! database deleted. Each start either refuses with a clear error naming
//! the data directory and what to do (exit non-zero, no panic), or serves
//! every record that was stored, or (damage inside a sealed segment, whose
//! CRCs are checked when read, not at every start) serves everything else
//! and refuses the damaged batch naming the file; never less, silently. A
//! refusal is followed by `--accept-data-loss`: then what is left is served
//! unchanged and new offsets continue after the lost ones.

use crate::common::load::read_partition;
use crate::common::Gateway;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"
[store]
segment_bytes = "256KiB"
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

/// Reads every partition page by page; the first refused page's error.
async fn read_error(gw: &Gateway) -> Option<String> {
    for p in 0..2 {
        let mut offset = 0u64;
        loop {
            let (s, body) = gw
                .get_json(&format!(
                    "/v1/topics/events/partitions/{p}/records?offset={offset}&max_records=200"
                ))
                .await;
            if s != 200 {
                return Some(body.to_string());
            }
            let recs = body["records"].as_array().unwrap();
            let Some(last) = recs.last() else { break };
            offset = last["offset"].as_u64().unwrap() + 1;
        }
    }
    None
}

/// A data directory with 3000 records of ~400 bytes over several 256 KiB
/// segments per partition and one 200 KiB record, written and stopped
/// cleanly.
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
    gw.settle("events").await;
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

/// The segment files of partition `p`, oldest first.
fn segments(log: &Path, p: u32) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(log.join("segments").join(format!("events-{p}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "expected several segments: {files:?}");
    files
}

/// One kind of damage, applied to `log` (the store's directory).
type Damage = fn(&Path);

const DAMAGES: &[(&str, Damage)] = &[
    ("a sealed segment truncated in the middle", |log| {
        let f = std::fs::OpenOptions::new().write(true).open(&segments(log, 1)[1]).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len / 2).unwrap();
    }),
    ("a sealed segment deleted", |log| std::fs::remove_file(&segments(log, 1)[1]).unwrap()),
    ("4 KiB overwritten in the middle of a sealed segment", |log| {
        let file = &segments(log, 1)[3];
        let len = std::fs::metadata(file).unwrap().len();
        overwrite(file, len / 2, 4096);
    }),
    ("the active segment's tail overwritten", |log| {
        let files = segments(log, 1);
        let file = files.last().unwrap();
        let len = std::fs::metadata(file).unwrap().len();
        overwrite(file, len.saturating_sub(1000), 1000);
    }),
    ("a partition's directory deleted", |log| {
        std::fs::remove_dir_all(log.join("segments").join("events-1")).unwrap()
    }),
    ("garbage in sled's conf", |log| std::fs::write(log.join("conf"), vec![0xa5; 100]).unwrap()),
    ("the metadata database deleted", |log| {
        for name in ["db", "conf"] {
            std::fs::remove_file(log.join(name)).unwrap();
        }
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
            Ok(mut gw) => match read_error(&gw).await {
                None => {
                    assert_eq!(all_records(&gw).await, original, "{what}: started but records differ");
                    gw.terminate();
                    "recovered everything".to_owned()
                }
                Some(err) => {
                    // Damage inside a sealed segment: found when read.
                    assert!(err.contains(".log") && err.contains("--accept-data-loss"), "{what}: {err}");
                    gw.terminate();
                    format!(
                        "served, the damaged batch refused on read naming the file; {}",
                        accept(&data_dir, &original, &hw, what).await
                    )
                }
            },
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
