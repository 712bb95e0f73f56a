//! Crash safety: SIGKILL under concurrent `sync` produce load, several
//! cycles; every acknowledged record must be readable at its offset after
//! restart, and offsets must never be reused.
#![allow(clippy::unwrap_used)]

mod common;

use common::load::{assert_stored, producer, Acked};
use common::{offsets, Gateway};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIG: &str = r#"
[store]
sync_window = "1ms"
[[service]]
name = "critical"
durability = "sync"
[[topic]]
name = "events"
service = "critical"
partitions = 3
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_sync_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&dir.path().join("d"), Some(CONFIG)).await;
    let acked: Acked = Arc::new(Mutex::new(BTreeMap::new()));
    for cycle in 0..5u64 {
        let mut tasks = Vec::new();
        for id in 0..8 {
            tasks.push(tokio::spawn(producer(gw.base.clone(), gw.http.clone(), "events", id, acked.clone())));
        }
        // Let load build up; the kill lands at a different moment each cycle.
        let before = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < before + 50 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(17 * cycle)).await;
        gw.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        gw = gw.crash_and_restart().await;

        let snapshot = acked.lock().unwrap().clone();
        assert_stored(&gw, "events", &snapshot, &format!("cycle {cycle}")).await;
        let mut per_partition: BTreeMap<u64, Vec<(u64, &String)>> = BTreeMap::new();
        for ((p, o), v) in &snapshot {
            per_partition.entry(*p).or_default().push((*o, v));
        }
        // New offsets continue after every acknowledged one.
        let (s, body) = gw
            .post_json(
                "/v1/topics/events/records",
                &json!({ "records": [{ "key": "k0-0", "value": "probe" }, { "key": "k1-0", "value": "probe" }, { "key": "k2-2", "value": "probe" }] }),
            )
            .await;
        assert_eq!(s, 200);
        let mut a = acked.lock().unwrap();
        for (i, (p, o)) in offsets(&body).into_iter().enumerate() {
            if let Some(max) = per_partition.get(&p).and_then(|r| r.iter().map(|x| x.0).max()) {
                assert!(o > max, "cycle {cycle}: offset {p}/{o} reused (acknowledged up to {max})");
            }
            a.insert((p, o), "probe".to_owned());
            let _ = i;
        }
    }
    assert!(acked.lock().unwrap().len() > 250);
}
