//! Embedded defaults: what an empty file gives, and the implicit default
//! service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_config::{
    ByteSize, Compression, Config, Durability, OnFull, SchedulerMode, ServiceConfig, TopicConfig,
    UplinkConfig, UplinkKind, DEFAULT_SERVICE,
};

fn load(text: &str) -> Config {
    match Config::from_toml_str(text) {
        Ok(cfg) => cfg,
        Err(e) => panic!("config should load: {e}"),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn empty_file_equals_default() {
    assert_eq!(load(""), Config::default());
}

#[test]
fn default_values() {
    let cfg = Config::default();
    assert_eq!(cfg.node.id, "sluice");
    assert_eq!(cfg.node.data_dir, PathBuf::from("sluice-data"));
    assert_eq!(cfg.mqtt.listen, addr("0.0.0.0:1883"));
    assert_eq!(cfg.mqtt.max_payload, ByteSize::kib(256));
    assert_eq!(cfg.http.listen, addr("0.0.0.0:8080"));
    assert_eq!(cfg.http.max_body, ByteSize::mib(4));
    assert_eq!(cfg.http.max_wait, Duration::from_secs(30));
    assert_eq!(cfg.store.max_bytes, ByteSize::gib(1));
    assert_eq!(cfg.store.sync_window, Duration::ZERO);
    assert_eq!(cfg.store.flush_interval, Duration::from_millis(50));
    assert_eq!(cfg.store.cache_capacity, ByteSize::mib(4));
    assert_eq!(cfg.store.segment_bytes, ByteSize::mib(16));
    assert_eq!(cfg.store.segment_age, Duration::from_secs(3600));
    assert_eq!(cfg.store.writeback_step, ByteSize::kib(64));
    assert_eq!(cfg.store.max_dirty, ByteSize::mib(4));
    assert_eq!(cfg.store.checkpoint_interval, Duration::from_secs(1));
    assert!(cfg.store.auto_create_topics);
    assert_eq!(cfg.store.default_partitions, 1);
    assert_eq!(cfg.scheduler.mode, SchedulerMode::Weighted);
    assert_eq!(cfg.scheduler.express_max_share, 0.5);
    assert!(cfg.topics.is_empty());
    assert!(cfg.routes.is_empty());
    assert!(cfg.uplinks.is_empty());
    assert_eq!(cfg.services, vec![ServiceConfig::new(DEFAULT_SERVICE)]);
}

#[test]
fn default_validates() {
    assert!(Config::default().validate().is_ok());
}

#[test]
fn service_defaults() {
    let cfg = load("[[service]]\nname = \"a\"\n");
    let a = cfg.service("a").expect("service a");
    assert_eq!(a, &ServiceConfig::new("a"));
    assert_eq!(a.weight, 1);
    assert!(!a.express);
    assert_eq!(a.durability, Durability::Buffered);
    assert_eq!(a.ttl, None);
    assert_eq!(a.max_pending, ByteSize::mib(8));
    assert_eq!(a.on_full, OnFull::DropNewest);
    assert_eq!(a.reserved_bytes, ByteSize(0));
}

#[test]
fn implicit_default_service_is_appended_last() {
    let cfg = load("[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n");
    let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b", DEFAULT_SERVICE]);
}

#[test]
fn configured_default_service_is_kept_not_duplicated() {
    let cfg = load("[[service]]\nname = \"default\"\nweight = 7\n[[service]]\nname = \"b\"\n");
    let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [DEFAULT_SERVICE, "b"]);
    assert_eq!(cfg.service(DEFAULT_SERVICE).map(|s| s.weight), Some(7));
}

#[test]
fn normalize_is_idempotent() {
    let mut cfg = Config::default();
    cfg.normalize();
    cfg.normalize();
    assert_eq!(cfg, Config::default());
}

#[test]
fn topic_defaults_and_lookup() {
    let cfg = load("[[topic]]\nname = \"t\"\n");
    assert_eq!(cfg.topic("t"), Some(&TopicConfig::new("t")));
    let t = cfg.topic("t").expect("topic t");
    assert_eq!(t.service, DEFAULT_SERVICE);
    assert_eq!(t.partitions, 1);
    assert_eq!(t.retention.max_age, None);
    assert_eq!(t.retention.max_bytes, None);
    assert_eq!(cfg.topic("nope"), None);
    assert_eq!(cfg.service_of_topic("t"), DEFAULT_SERVICE);
    assert_eq!(cfg.service_of_topic("auto-created"), DEFAULT_SERVICE);
}

#[test]
fn uplink_defaults_and_helpers() {
    let cfg = load("[[uplink]]\nname = \"c\"\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\n");
    let u = &cfg.uplinks[0];
    assert_eq!(u, &UplinkConfig::new("c", UplinkKind::Kafka, vec!["k:9092".to_owned()]));
    assert!(u.topics.is_empty());
    assert_eq!(u.remote_topic, "edge.{node}.{topic}");
    assert_eq!(u.linger, Duration::from_millis(5));
    assert_eq!(u.batch_max_bytes, ByteSize::kib(256));
    assert_eq!(u.compression, Compression::None);
    assert_eq!(u.max_bytes_per_sec, None);
    assert_eq!(u.live_share, 0.3);
    assert_eq!(u.max_in_flight, 5);
    assert_eq!(u.backlog_batch_max_bytes, None);
    assert_eq!(u.backlog_batch_bytes(), ByteSize::kib(768));
    assert_eq!(u.checkpoint_interval, Duration::from_secs(1));
    let http = UplinkConfig::new("h", UplinkKind::Http, vec!["http://c/".to_owned()]);
    assert_eq!(http.backlog_batch_bytes(), http.batch_max_bytes, "no growth for http");
    assert!(u.forwards("anything"));
    assert_eq!(u.remote_topic_for("pi-01", "alarms", "alarms"), "edge.pi-01.alarms");
}

#[test]
fn enum_spellings() {
    let cfg = load(
        "[scheduler]\nmode = \"fifo\"\n\
         [[service]]\nname = \"a\"\ndurability = \"sync\"\non_full = \"drop_oldest\"\n\
         [[uplink]]\nname = \"h\"\nkind = \"http\"\nbrokers = [\"https://c.example/in\"]\ncompression = \"zstd\"\n",
    );
    assert_eq!(cfg.scheduler.mode, SchedulerMode::Fifo);
    assert_eq!(cfg.scheduler.mode.as_str(), "fifo");
    let a = cfg.service("a").expect("service a");
    assert_eq!(a.durability, Durability::Sync);
    assert_eq!(a.on_full, OnFull::DropOldest);
    assert_eq!(cfg.uplinks[0].kind, UplinkKind::Http);
    assert_eq!(cfg.uplinks[0].kind.as_str(), "http");
    assert_eq!(cfg.uplinks[0].compression.as_str(), "zstd");
}
