use sluice_config::Config;
#[test]
fn show() {
    let cases = [
        r#"[node]
id = "pi 01"
data_dir = ""
[mqtt]
max_payload = "300MiB"
[http]
max_body = 0
max_wait = "2h"
[store]
max_bytes = "100KiB"
sync_window = "2s"
flush_interval = "0ms"
cache_capacity = "1KiB"
default_partitions = 0
[scheduler]
express_max_share = 0.0
[[service]]
name = "alarms"
weight = 0
max_pending = "100B"
ttl = "0s"
reserved_bytes = "1GiB"
[[service]]
name = "alarms"
[[service]]
name = "bad/name"
weight = 1001
[[topic]]
name = "telemetry"
service = "telemtry"
partitions = 300
retention = { max_age = "0s", max_bytes = 0 }
[[topic]]
name = "telemetry"
[[route]]
mqtt = "a/#/b"
topic = "no such"
key = "level:0"
[[route]]
mqtt = "plant/+/alarm"
topic = "telemetry"
key = "level:4"
[[route]]
mqtt = "x"
topic = "t"
key = "json:a"
[[uplink]]
name = "central"
kind = "kafka"
brokers = []
topics = ["telemetry", "telemetry", "x y"]
remote_topic = "edge/{node}/{nodes}"
linger = "2m"
batch_max_bytes = 10
max_bytes_per_sec = 0
live_share = 1.5
[[uplink]]
name = "h"
kind = "http"
brokers = ["kafka:9092"]
remote_topic = "{topic}"
[[uplink]]
name = "m"
kind = "mqtt"
brokers = ["mqtt://x:1883"]
remote_topic = "edge/{topic}/#"
"#,
        "[store]\nauto_create_topics = false\n[[route]]\nmqtt = \"a\"\ntopic = \"t\"\n",
    ];
    for c in cases {
        let e = Config::from_toml_str(c).unwrap_err();
        for p in e.problems() { println!("{p}"); }
        println!("----");
    }
}
