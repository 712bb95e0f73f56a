//! Disk full: the data directory on a small tmpfs (mounted by the test; it
//! runs as root under deploy/test.sh and fails, never skips, when it
//! cannot mount). A filler file takes the remaining space while producers
//! and MQTT publishers keep going; then it is deleted.
//!
//! Proves: producers get 507 naming the disk; nothing acknowledged before
//! is lost or damaged; what MQTT could not persist is counted; service
//! resumes by itself once space is back; everything acknowledged is there
//! after a restart.

use crate::common::load::{
    assert_stored, metric, mixed_config, producer, read_partition, wait_two_flushes, Acked,
};
use crate::common::Gateway;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A size-limited tmpfs, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {} for the disk-full test (it needs root, as under \
             deploy/test.sh): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir: dir.to_owned() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the filesystem is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0x5a; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&block) {
            Ok(0) => return written,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => return written,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
}

/// sled's cache small, so little is held in memory when the disk fills.
fn config() -> String {
    mixed_config(1, 1).replacen("[store]\n", "[store]\ncache_capacity = \"1MiB\"\n", 1)
}

async fn produce_big(gw: &Gateway, seq: u64) -> (u16, Value) {
    let value = format!("big-{seq}-{}", "x".repeat(2000));
    gw.post_json("/v1/topics/events/records", &json!({ "records": [{ "value": value }] })).await
}

async fn publish(gw: &Gateway, prefix: &str, count: u64) {
    let (h, p) = {
        let a: std::net::SocketAddr = gw.mqtt.clone().unwrap().parse().unwrap();
        (a.ip().to_string(), a.port().to_string())
    };
    for i in 0..count {
        // One connection per publish: a refused one must not stop the rest.
        let _ = Command::new("mosquitto_pub")
            .args(["-h", &h, "-p", &p, "-q", "1", "-t", "plant/dev", "-m", &format!("\"{prefix}-{i}\"")])
            .status()
            .expect("mosquitto_pub (deploy/install-test-peers.sh)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_clearly_keeps_what_was_acknowledged_and_resumes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("mnt"), "24m");
    let data_dir = fs.dir.join("d");
    let mut gw = Gateway::start(&data_dir, Some(&config())).await;

    // Before: acknowledged sync records and persisted MQTT publishes.
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    let client = gw.http.clone();
    let load = tokio::spawn(producer(gw.base.clone(), client, "events", 0, acked.clone()));
    publish(&gw, "before", 20).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 || read_partition(&gw, "plant", 0).await.len() < 20 {
        assert!(Instant::now() < deadline, "no load");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_two_flushes(&gw).await;
    let mqtt_before: BTreeMap<(u64, u64), String> = read_partition(&gw, "plant", 0)
        .await
        .into_iter()
        .map(|(o, v)| ((0, o), v.as_str().unwrap().to_owned()))
        .collect();

    // Full: the filler takes what is left; the producer runs into it.
    let filler = fs.dir.join("filler");
    let filled = fill(&filler);
    let mut refused = None;
    for seq in 0.. {
        let (status, body) = produce_big(&gw, seq).await;
        if status != 200 {
            refused = Some((status, body));
            break;
        }
        assert!(seq < 100_000, "the disk never filled up");
    }
    let (status, body) = refused.unwrap();
    assert_eq!(status, 507, "disk full: {body}");
    let msg = body["error"].as_str().unwrap_or_default().to_owned();
    assert!(msg.contains("No space left on device"), "the error should name the full disk: {body}");
    load.abort();
    let _ = load.await;
    let acked_full = acked.lock().unwrap().clone();
    // MQTT while full: whatever cannot be persisted is counted.
    publish(&gw, "full", 10).await;
    let health = gw.http.get(gw.url("/healthz")).send().await.unwrap().status();
    assert_eq!(health, 200, "the process stays up while the disk is full");

    // Space back: service resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seq = 1_000_000;
    loop {
        let (status, body) = produce_big(&gw, seq).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after space came back: {status} {body}");
        seq += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publish(&gw, "after", 10).await;
    let mut checked = assert_stored(&gw, "events", &acked_full, "after the disk filled").await;
    checked += assert_stored(&gw, "plant", &mqtt_before, "MQTT after the disk filled").await;
    // Each MQTT publish made while full is either persisted or counted as a
    // storage error; those made after are persisted.
    let count = |stored: &BTreeMap<u64, Value>, prefix: &str| {
        stored.values().filter(|v| v.as_str().is_some_and(|s| s.starts_with(prefix))).count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (persisted_while_full, lost_while_full) = loop {
        let stored = read_partition(&gw, "plant", 0).await;
        let lost = metric(&gw, "sluice_service_storage_errors_total{service=\"sensors\"}").await;
        let full = count(&stored, "full-");
        if full as f64 + lost == 10.0 && count(&stored, "after-") == 10 {
            break (full, lost);
        }
        assert!(
            Instant::now() < deadline,
            "MQTT publishes unaccounted for: {full} persisted, {lost} counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // And all of it survives a restart.
    gw = gw.restart().await;
    checked += assert_stored(&gw, "events", &acked_full, "after restart").await;
    checked += assert_stored(&gw, "plant", &mqtt_before, "MQTT after restart").await;
    eprintln!(
        "fault figures: disk full: {} MiB filler, refused with {status}, {checked} records checked, 0 lost, \
         {persisted_while_full} MQTT publishes persisted and {lost_while_full} counted while full, {:.0} s",
        filled >> 20,
        started.elapsed().as_secs_f64()
    );
    drop(gw);
}
