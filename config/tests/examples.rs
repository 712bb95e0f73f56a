//! The example files shipped with the crate, the example from DESIGN.md,
//! and `Config::load`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_config::{
    ByteSize, Compression, Config, ConfigError, Durability, HttpConfig, ListenerTls, MqttConfig, OnFull,
    SchedulerConfig, StoreConfig, UplinkKind,
};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)
}

fn load(path: &Path) -> Config {
    match Config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => panic!("{} should load: {e}", path.display()),
    }
}

const DESIGN_EXAMPLE: &str = r#"
[node]
id = "pi-01"
data_dir = "/var/lib/sluice"
[mqtt]
listen = "0.0.0.0:1883"
[http]
listen = "0.0.0.0:8080"
[store]
max_bytes = "2GiB"            # disk budget; eviction by priority beyond it
sync_window = "2ms"           # group-commit window for durability = "sync"
flush_interval = "50ms"       # background flush for durability = "buffered"
[scheduler]
mode = "weighted"             # "fifo" exists only to measure the difference
express_max_share = 0.5

[[service]]
name = "alarms"
express = true
durability = "sync"
ttl = "1h"
[[service]]
name = "telemetry"
weight = 4
max_pending = "8MiB"
on_full = "drop_oldest"
[[service]]
name = "logs"
weight = 1
reserved_bytes = "100MiB"

[[topic]]
name = "telemetry"
service = "telemetry"
partitions = 4
retention = { max_age = "7d", max_bytes = "1GiB" }

[[route]]                     # MQTT filter -> log topic, key from a topic level
mqtt = "plant/+/alarm"
topic = "alarms"
key = "level:2"

[[uplink]]
name = "central"
kind = "kafka"                # or "mqtt", "http"
brokers = ["kafka-1:9092"]
topics = ["alarms", "telemetry"]
remote_topic = "edge.{node}.{topic}"
linger = "5ms"
batch_max_bytes = "256KiB"
compression = "lz4"
max_bytes_per_sec = "1MiB"
live_share = 0.3
"#;

#[test]
fn design_example_parses() {
    let cfg = match Config::from_toml_str(DESIGN_EXAMPLE) {
        Ok(cfg) => cfg,
        Err(e) => panic!("DESIGN.md example should load: {e}"),
    };
    assert_eq!(cfg.node.id, "pi-01");
    assert_eq!(cfg.store.max_bytes, ByteSize::gib(2));
    let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["alarms", "telemetry", "logs", "default"]);
    let alarms = cfg.service("alarms").expect("alarms");
    assert!(alarms.express);
    assert_eq!(alarms.durability, Durability::Sync);
    assert_eq!(alarms.ttl, Some(Duration::from_secs(3600)));
    let telemetry = cfg.service("telemetry").expect("telemetry");
    assert_eq!(telemetry.weight, 4);
    assert_eq!(telemetry.on_full, OnFull::DropOldest);
    assert_eq!(cfg.service("logs").map(|s| s.reserved_bytes), Some(ByteSize::mib(100)));
    let topic = cfg.topic("telemetry").expect("topic");
    assert_eq!(topic.partitions, 4);
    assert_eq!(topic.retention.max_age, Some(Duration::from_secs(7 * 86_400)));
    assert_eq!(topic.retention.max_bytes, Some(ByteSize::gib(1)));
    // "alarms" is not a configured topic: allowed because auto_create_topics
    // defaults to true.
    assert_eq!(cfg.routes[0].topic, "alarms");
    assert_eq!(cfg.routes[0].key.as_deref(), Some("level:2"));
    let up = &cfg.uplinks[0];
    assert_eq!(up.kind, UplinkKind::Kafka);
    assert_eq!(up.compression, Compression::Lz4);
    assert_eq!(up.max_bytes_per_sec, Some(ByteSize::mib(1)));
    assert_eq!(up.remote_topic_for("pi-01", "alarms", "alarms"), "edge.pi-01.alarms");
}

#[test]
fn design_example_needs_auto_create_for_unconfigured_topics() {
    let strict = DESIGN_EXAMPLE.replace("[scheduler]", "auto_create_topics = false\n[scheduler]");
    let err = Config::from_toml_str(&strict).expect_err("alarms topic is not configured");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["route[0].topic", "uplink[\"central\"].topics[0]"]);
}

#[test]
fn full_example_loads_and_shows_the_defaults() {
    let cfg = load(&example("sluice.toml"));
    // The single sections are written out with their default values, so
    // the comments in the file document the real defaults.
    assert_eq!(cfg.node, sluice_config::NodeConfig::default());
    let tls = ListenerTls::new("/etc/sluice/tls/server.crt", "/etc/sluice/tls/server.key");
    assert_eq!(
        cfg.mqtt,
        MqttConfig {
            listen_v5: Some("0.0.0.0:1884".parse().expect("address")),
            allow_anonymous: Some(false),
            users: cfg.mqtt.users.clone(),
            tls: Some(ListenerTls { client_ca: Some("/etc/sluice/tls/ca.crt".into()), ..tls.clone() }),
            ..MqttConfig::default()
        }
    );
    assert_eq!(cfg.mqtt.users.len(), 1);
    assert_eq!(
        cfg.http,
        HttpConfig { tokens: cfg.http.tokens.clone(), tls: Some(tls), ..HttpConfig::default() }
    );
    assert_eq!(cfg.http.tokens.len(), 2);
    assert_eq!(cfg.store, StoreConfig::default());
    assert_eq!(cfg.scheduler, SchedulerConfig::default());
    assert_eq!(cfg.services.len(), 4);
    assert_eq!(cfg.topics.len(), 3);
    assert_eq!(cfg.routes.len(), 2);
    assert_eq!(cfg.uplinks.len(), 1);
}

#[test]
fn minimal_example_loads() {
    let cfg = load(&example("minimal.toml"));
    assert_eq!(cfg.node.id, "pi-01");
    assert_eq!(cfg.topic("alarms").map(|t| t.service.as_str()), Some("alarms"));
}

/// Every field documented in the README's configuration table appears in the full example, so the
/// example really shows every field.
#[test]
fn full_example_shows_every_documented_field() {
    let fields_md = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md");
    let example = std::fs::read_to_string(example("sluice.toml")).expect("sluice.toml");
    let mut checked = 0;
    // Rows of the configuration table: a dotted field path in backticks.
    let is_field_row = |l: &&str| {
        l.starts_with("| `")
            && l.split('`').nth(1).is_some_and(|p| {
                p.contains('.')
                    && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._[]".contains(c))
            })
    };
    for line in fields_md.lines().filter(is_field_row) {
        let path = line.split('`').nth(1).expect("field path in backticks");
        let key = path.rsplit('.').next().expect("last path segment");
        let as_key = format!("{key} =");
        assert!(
            example.lines().any(|l| l.trim_start().starts_with(&as_key)
                || l.contains(&format!("{{ {as_key}"))
                || l.contains(&format!(", {as_key}"))),
            "{path} is documented in README.md but not shown in examples/sluice.toml"
        );
        checked += 1;
    }
    assert_eq!(checked, 144, "number of documented fields changed");
}

#[test]
fn load_names_the_missing_file() {
    let path = Path::new("/nonexistent/sluice/x.toml");
    let err = Config::load(path).expect_err("missing file");
    assert!(matches!(err, ConfigError::Read { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with("cannot read config file /nonexistent/sluice/x.toml: "), "{msg}");
    assert!(msg.contains("os error 2"), "{msg}");
}

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

/// The Debian package's /etc/sluice/sluice.toml gives the defaults with the
/// data under /var/lib/sluice, and its commented-out settings are the real
/// defaults: uncommented, the file still loads to the defaults.
#[test]
fn package_config_is_the_defaults() {
    let path = deploy_file("debian/sluice.toml");
    let cfg = load(&path);
    assert_eq!(cfg.node.data_dir, Path::new("/var/lib/sluice"));
    assert_eq!(
        (&cfg.mqtt, &cfg.http, &cfg.store),
        (&MqttConfig::default(), &HttpConfig::default(), &StoreConfig::default())
    );
    assert!(cfg.services.iter().all(|s| s.name == "default"), "services are only examples (commented out)");

    let text = std::fs::read_to_string(&path).expect("package config");
    let single_sections = text.split("#[[").next().expect("text");
    let uncommented: Vec<&str> = single_sections
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(setting)
                if setting.starts_with(|c: char| c.is_ascii_lowercase()) && setting.contains(" = ") =>
            {
                setting
            }
            _ => l,
        })
        .collect();
    let all_set = Config::from_toml_str(&uncommented.join("\n")).expect("uncommented package config");
    assert_eq!(
        all_set.node,
        sluice_config::NodeConfig { data_dir: "/var/lib/sluice".into(), ..Default::default() }
    );
    assert_eq!(
        (&all_set.mqtt, &all_set.http, &all_set.store),
        (&MqttConfig::default(), &HttpConfig::default(), &StoreConfig::default())
    );
}

/// deploy/small-box.toml (the README's profile for boards with 512 MiB or
/// less) loads and is smaller than the defaults where it says so.
#[test]
fn small_box_profile_loads() {
    let cfg = load(&deploy_file("small-box.toml"));
    assert_eq!(cfg.node.data_dir, Path::new("/var/lib/sluice"));
    assert_eq!(cfg.store.cache_capacity, ByteSize::mib(2));
    assert_eq!(cfg.store.segment_bytes, ByteSize::mib(4));
    assert_eq!(cfg.store.max_bytes, ByteSize::mib(256));
    assert_eq!(cfg.mqtt.max_payload, ByteSize::kib(64));
    assert_eq!((cfg.mqtt.max_connections, cfg.mqtt.max_inflight), (100, 20));
    assert_eq!(cfg.http.max_body, ByteSize::mib(1));
    assert_eq!(cfg.service("default").map(|s| s.max_pending), Some(ByteSize::mib(1)));
}
