//! Every validation rule: the error names the field path and the bad value.

use sluice_config::{Config, ConfigError, ServiceConfig};

/// The problems of an invalid config, as `field: message` strings.
fn problems(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect(),
        Err(other) => panic!("expected a validation error, got: {other}"),
    }
}

/// Asserts the config has exactly one problem, on `field`, whose message
/// contains every one of `parts`.
#[track_caller]
fn assert_problem(text: &str, field: &str, parts: &[&str]) {
    let all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    let prefix = format!("{field}: ");
    assert!(all[0].starts_with(&prefix), "expected field {field}: {}", all[0]);
    for part in parts {
        assert!(all[0].contains(part), "expected {part:?} in: {}", all[0]);
    }
}

const SERVICES: &str = "[[service]]\nname = \"alarms\"\n[[service]]\nname = \"telemetry\"\n";

#[test]
fn weight_out_of_range_names_service_and_value() {
    assert_problem(
        &format!("{SERVICES}[[service]]\nname = \"logs\"\nweight = 0\n"),
        "service[\"logs\"].weight",
        &["0 is out of range 1..=1000"],
    );
    assert_problem("[[service]]\nname = \"x\"\nweight = 1001\n", "service[\"x\"].weight", &["1001"]);
}

#[test]
fn entries_without_a_usable_name_are_named_by_position() {
    let text = format!("{SERVICES}[[service]]\nname = \"bad name\"\nweight = 0\n");
    let all = problems(&text);
    assert_eq!(
        all,
        [
            "service[2].name: \"bad name\" contains ' ' at character 4; only A-Z a-z 0-9 . _ - are allowed",
            "service[2].weight: 0 is out of range 1..=1000",
        ]
    );
}

#[test]
fn duplicate_names() {
    assert_problem(
        "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"\n",
        "service[1].name",
        &["\"a\" is defined twice (also service[0])"],
    );
    assert_problem(
        "[[topic]]\nname = \"t\"\n[[topic]]\nname = \"t\"\n",
        "topic[1].name",
        &["\"t\" is defined twice"],
    );
    assert_problem(
        "[[uplink]]\nname = \"u\"\nkind = \"kafka\"\nbrokers = [\"k:1\"]\n\
         [[uplink]]\nname = \"u\"\nkind = \"mqtt\"\nbrokers = [\"m:1883\"]\n",
        "uplink[1].name",
        &["\"u\" is defined twice (also uplink[0])"],
    );
}

#[test]
fn name_charset() {
    assert_problem("[[topic]]\nname = \"a/b\"\n", "topic[0].name", &["\"a/b\"", "'/'"]);
    assert_problem(
        &format!("[[topic]]\nname = \"{}\"\n", "x".repeat(250)),
        "topic[0].name",
        &["250 characters long"],
    );
    assert_problem("[node]\nid = \"pi 01\"\n", "node.id", &["\"pi 01\"", "' '"]);
    assert_problem("[[service]]\nname = \"\"\n", "service[0].name", &["is empty"]);
}

#[test]
fn topic_service_must_exist() {
    assert_problem(
        &format!("{SERVICES}[[topic]]\nname = \"telemetry\"\nservice = \"telemtry\"\n"),
        "topic[\"telemetry\"].service",
        &["service \"telemtry\" is not defined (defined: alarms, telemetry, default)"],
    );
}

#[test]
fn topic_partitions_and_retention() {
    assert_problem(
        "[[topic]]\nname = \"t\"\npartitions = 0\n",
        "topic[\"t\"].partitions",
        &["0 is out of range 1..=256"],
    );
    assert_problem("[[topic]]\nname = \"t\"\npartitions = 257\n", "topic[\"t\"].partitions", &["257"]);
    assert_problem(
        "[[topic]]\nname = \"t\"\nretention = { max_age = \"0s\" }\n",
        "topic[\"t\"].retention.max_age",
        &["0s"],
    );
    assert_problem(
        "[[topic]]\nname = \"t\"\nretention = { max_bytes = 0 }\n",
        "topic[\"t\"].retention.max_bytes",
        &["0B"],
    );
}

#[test]
fn service_limits() {
    assert_problem(
        "[[service]]\nname = \"a\"\nmax_pending = \"1000B\"\n",
        "service[\"a\"].max_pending",
        &["1kB is too small; the minimum is 1KiB"],
    );
    assert_problem("[[service]]\nname = \"a\"\nttl = \"0s\"\n", "service[\"a\"].ttl", &["0s"]);
}

#[test]
fn reserved_bytes_must_fit_the_budget() {
    assert_problem(
        "[store]\nmax_bytes = \"1GiB\"\n\
         [[service]]\nname = \"a\"\nreserved_bytes = \"768MiB\"\n\
         [[service]]\nname = \"b\"\nreserved_bytes = \"512MiB\"\n",
        "service[*].reserved_bytes",
        &["1280MiB", "a 768MiB", "b 512MiB", "store.max_bytes 1GiB"],
    );
    // Exactly the budget is fine.
    let ok = "[store]\nmax_bytes = \"1GiB\"\n[[service]]\nname = \"a\"\nreserved_bytes = \"1GiB\"\n";
    assert!(Config::from_toml_str(ok).is_ok());
}

#[test]
fn store_limits() {
    assert_problem(
        "[store]\nsync_window = \"1001ms\"\n",
        "store.sync_window",
        &["1s1ms is out of range 0s..=1s"],
    );
    assert!(Config::from_toml_str("[store]\nsync_window = \"1s\"\n").is_ok());
    assert!(Config::from_toml_str("[store]\nsync_window = 0\n").is_ok());
    assert_problem(
        "[store]\nflush_interval = \"500us\"\n",
        "store.flush_interval",
        &["500us is out of range 1ms..=10s"],
    );
    assert_problem("[store]\nflush_interval = \"11s\"\n", "store.flush_interval", &["11s"]);
    assert_problem("[store]\nmax_bytes = \"512KiB\"\n", "store.max_bytes", &["512KiB"]);
    assert_problem("[store]\ncache_capacity = 1024\n", "store.cache_capacity", &["1KiB"]);
    assert_problem(
        "[store]\ndefault_partitions = 0\n",
        "store.default_partitions",
        &["0 is out of range 1..=256"],
    );
}

#[test]
fn listener_limits() {
    assert_problem("[mqtt]\nmax_payload = \"256MiB\"\n", "mqtt.max_payload", &["256MiB"]);
    assert_problem("[http]\nmax_body = 0\n", "http.max_body", &["0B"]);
    assert_problem("[http]\nmax_wait = \"61m\"\n", "http.max_wait", &["1h1m"]);
    assert_problem("[node]\ndata_dir = \"\"\n", "node.data_dir", &["empty"]);
}

#[test]
fn express_max_share_range() {
    for bad in ["0.0", "1.01", "-0.5", "nan"] {
        assert_problem(
            &format!("[scheduler]\nexpress_max_share = {bad}\n"),
            "scheduler.express_max_share",
            &["out of range (0, 1]"],
        );
    }
    assert!(Config::from_toml_str("[scheduler]\nexpress_max_share = 1.0\n").is_ok());
}

#[test]
fn route_mqtt_filter_syntax() {
    for (filter, part) in [
        ("", "is empty"),
        ("a/#/b", "'#' in level 2"),
        ("a/b#", "'#' in level 2 (\"b#\")"),
        ("a/+b", "'+' in level 2 (\"+b\")"),
    ] {
        assert_problem(
            &format!("[[route]]\nmqtt = \"{filter}\"\ntopic = \"t\"\n"),
            "route[0].mqtt",
            &[&format!("{filter:?}"), part],
        );
    }
}

#[test]
fn route_topic_must_exist_unless_auto_created() {
    let text = "[store]\nauto_create_topics = false\n[[topic]]\nname = \"a\"\n\
                [[route]]\nmqtt = \"x/#\"\ntopic = \"b\"\n";
    assert_problem(
        text,
        "route[0].topic",
        &["topic \"b\" is not defined", "auto_create_topics is false", "(defined: a)"],
    );
    // With auto-creation, any valid name is accepted, an invalid one is not.
    assert!(Config::from_toml_str("[[route]]\nmqtt = \"x/#\"\ntopic = \"b\"\n").is_ok());
    assert_problem(
        "[[route]]\nmqtt = \"x/#\"\ntopic = \"x/y\"\n",
        "route[0].topic",
        &["\"x/y\" contains '/'"],
    );
}

#[test]
fn route_key_syntax() {
    let route =
        |key: &str, filter: &str| format!("[[route]]\nmqtt = \"{filter}\"\ntopic = \"t\"\nkey = \"{key}\"\n");
    assert_problem(&route("level:0", "a/+"), "route[0].key", &["\"level:0\"", "from 1"]);
    assert_problem(&route("level:two", "a/+"), "route[0].key", &["\"two\" is not a level number"]);
    assert_problem(
        &route("level:3", "plant/+"),
        "route[0].key",
        &["\"level:3\" is past the last level of \"plant/+\", which has 2"],
    );
    assert_problem(&route("json:device", "a"), "route[0].key", &["must start with '/'"]);
    assert_problem(&route("json:/a~", "a"), "route[0].key", &["'~' must be followed by 0 or 1"]);
    assert_problem(&route("header:x", "a"), "route[0].key", &["\"header:x\"", "level:N"]);
    // A '#' filter can have any number of levels.
    assert!(Config::from_toml_str(&route("level:9", "plant/#")).is_ok());
    assert!(Config::from_toml_str(&route("json:/device/id", "plant/#")).is_ok());
}

fn uplink(kind: &str, extra: &str) -> String {
    format!("[[uplink]]\nname = \"up\"\nkind = \"{kind}\"\n{extra}")
}

#[test]
fn uplink_brokers() {
    assert_problem(
        &uplink("kafka", ""),
        "uplink[\"up\"].brokers",
        &["is empty; a kafka uplink needs at least one host:port address"],
    );
    assert_problem(&uplink("http", "brokers = []\n"), "uplink[\"up\"].brokers", &["http:// or https:// URL"]);
    assert_problem(
        &uplink("kafka", "brokers = [\"k:9092\", \"k2\"]\n"),
        "uplink[\"up\"].brokers[1]",
        &["\"k2\" has no port"],
    );
    assert_problem(
        &uplink("mqtt", "brokers = [\"m:1883,m2:1883\"]\n"),
        "uplink[\"up\"].brokers[0]",
        &["\"m:1883,m2:1883\" holds several addresses"],
    );
    assert_problem(
        &uplink("http", "brokers = [\"central:8080\"]\n"),
        "uplink[\"up\"].brokers[0]",
        &["\"central:8080\" must be an http:// or https:// URL"],
    );
}

#[test]
fn uplink_topics_must_exist_unless_auto_created() {
    let text = format!(
        "[store]\nauto_create_topics = false\n[[topic]]\nname = \"a\"\n{}",
        uplink("kafka", "brokers = [\"k:1\"]\ntopics = [\"a\", \"b\"]\n")
    );
    assert_problem(&text, "uplink[\"up\"].topics[1]", &["topic \"b\" is not defined"]);
    assert_problem(
        &uplink("kafka", "brokers = [\"k:1\"]\ntopics = [\"a\", \"a\"]\n"),
        "uplink[\"up\"].topics[1]",
        &["\"a\" is listed twice"],
    );
}

#[test]
fn uplink_remote_topic() {
    assert_problem(
        &uplink("kafka", "brokers = [\"k:1\"]\nremote_topic = \"edge.{host}\"\n"),
        "uplink[\"up\"].remote_topic",
        &["unknown placeholder {host}"],
    );
    assert_problem(
        &uplink("kafka", "brokers = [\"k:1\"]\nremote_topic = \"edge/{topic}\"\n"),
        "uplink[\"up\"].remote_topic",
        &["\"edge/{topic}\" gives \"edge/t\"", "'/'"],
    );
    // '/' is fine for an MQTT uplink, wildcards are not.
    assert!(Config::from_toml_str(&uplink(
        "mqtt",
        "brokers = [\"m:1883\"]\nremote_topic = \"edge/{node}/{service}/{topic}\"\n"
    ))
    .is_ok());
    assert_problem(
        &uplink("mqtt", "brokers = [\"m:1883\"]\nremote_topic = \"edge/+\"\n"),
        "uplink[\"up\"].remote_topic",
        &["not a valid MQTT topic name"],
    );
}

#[test]
fn uplink_numbers() {
    let base = "brokers = [\"k:1\"]\n";
    assert_problem(
        &uplink("kafka", &format!("{base}live_share = 1.5\n")),
        "uplink[\"up\"].live_share",
        &["1.5 is out of range [0, 1]"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}live_share = -0.1\n")),
        "uplink[\"up\"].live_share",
        &["-0.1"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}linger = \"90s\"\n")),
        "uplink[\"up\"].linger",
        &["1m30s is out of range 0s..=1m"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}batch_max_bytes = 100\n")),
        "uplink[\"up\"].batch_max_bytes",
        &["100B"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}max_bytes_per_sec = 0\n")),
        "uplink[\"up\"].max_bytes_per_sec",
        &["0B"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}max_in_flight = 0\n")),
        "uplink[\"up\"].max_in_flight",
        &["0 is out of range [1, 64]"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}max_in_flight = 65\n")),
        "uplink[\"up\"].max_in_flight",
        &["65"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}backlog_batch_max_bytes = \"64KiB\"\n")),
        "uplink[\"up\"].backlog_batch_max_bytes",
        &["64KiB is too small; the minimum is 256KiB"],
    );
    assert_problem(
        &uplink("kafka", &format!("{base}checkpoint_interval = \"5ms\"\n")),
        "uplink[\"up\"].checkpoint_interval",
        &["out of range 10ms..=1m"],
    );
    for ok in ["0.0", "1.0"] {
        let text = uplink("kafka", &format!("{base}live_share = {ok}\n"));
        assert!(Config::from_toml_str(&text).is_ok(), "{ok}");
    }
}

#[test]
fn uplink_budget() {
    let base = "brokers = [\"k:1\"]\n";
    let budget = |fields: &str| uplink("kafka", &format!("{base}budget = {{ {fields} }}\n"));
    assert_problem(&budget("bytes = 0"), "uplink[\"up\"].budget.bytes", &["0B"]);
    assert_problem(
        &budget("bytes = \"1MiB\", period = \"0s\""),
        "uplink[\"up\"].budget.period",
        &["out of range"],
    );
    assert_problem(
        &budget("bytes = \"1MiB\", reserve = 1.0"),
        "uplink[\"up\"].budget.reserve",
        &["1 is out of range [0, 1)"],
    );
    assert_problem(
        &budget("bytes = \"1MiB\", windows = [\"01:00-05:00\", \"25:00-26:00\"]"),
        "uplink[\"up\"].budget.windows",
        &["windows[1]", "\"25:00-26:00\"", "HH:MM-HH:MM"],
    );
    assert_problem(
        &budget("bytes = \"1MiB\", always = [\"nobody\"]"),
        "uplink[\"up\"].budget.always[0]",
        &["unknown service \"nobody\""],
    );
    let ok = budget("bytes = \"1MiB\", period = \"1h\", reserve = 0.0, windows = [\"22:00-06:00\"]");
    let cfg = Config::from_toml_str(&ok).expect("a valid budget");
    let b = cfg.uplinks[0].budget.as_ref().expect("budget");
    assert_eq!(b.window_minutes(), Ok(vec![(22 * 60, 6 * 60)]));
}

#[test]
fn all_problems_are_reported_together() {
    let text = "[store]\nsync_window = \"5s\"\n[[service]]\nname = \"a\"\nweight = 0\n";
    let err = Config::from_toml_str(text).expect_err("two problems");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["store.sync_window", "service[\"a\"].weight"]);
    assert_eq!(
        err.to_string(),
        "store.sync_window: 5s is out of range 0s..=1s; \
         service[\"a\"].weight: 0 is out of range 1..=1000"
    );
}

#[test]
fn validate_checks_programmatic_changes() {
    let mut cfg = Config::default();
    let mut s = ServiceConfig::new("bulk");
    s.weight = 5000;
    cfg.services.push(s);
    let err = cfg.validate().expect_err("weight too high");
    assert_eq!(err.to_string(), "service[\"bulk\"].weight: 5000 is out of range 1..=1000");
}

/// A well-formed argon2id hash (format only; not of any particular password).
const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn user(name: &str, hash: &str, publish: &str) -> String {
    format!("[[mqtt.users]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\npublish = {publish}\n")
}

#[test]
fn mqtt_users_parse_and_turn_anonymous_off() {
    let cfg = Config::from_toml_str(&user("sensor", HASH, "[\"plant/#\"]")).expect("valid");
    assert_eq!(cfg.mqtt.users[0].publish, ["plant/#"]);
    assert!(!cfg.mqtt.anonymous_allowed(), "users configured: anonymous is off unless allowed");
    assert!(!format!("{:?}", cfg.mqtt.users[0]).contains("argon2id"), "Debug shows the hash");
    let open = Config::from_toml_str("").expect("valid");
    assert!(open.mqtt.anonymous_allowed(), "no users: open as before");
    let both = format!("[mqtt]\nallow_anonymous = true\n{}", user("s", HASH, "[]"));
    assert!(Config::from_toml_str(&both).expect("valid").mqtt.anonymous_allowed());
}

#[test]
fn mqtt_user_problems_name_the_field() {
    assert_problem(
        &user("sensor", "$2b$12$notargon", "[]"),
        "mqtt.users[\"sensor\"].password_hash",
        &["is not a PHC password hash", "sluice hash-password"],
    );
    assert_problem(
        &user("sensor", &HASH.replace("argon2id", "argon2i"), "[]"),
        "mqtt.users[\"sensor\"].password_hash",
        &["\"argon2i\"", "argon2id only"],
    );
    assert_problem(
        &user("sensor", HASH, "[\"plant/#\", \"a/b#\"]"),
        "mqtt.users[\"sensor\"].publish[1]",
        &["\"a/b#\"", "'#' may only be the whole last level"],
    );
    assert_eq!(
        problems(&(user("s", HASH, "[]") + &user("s", HASH, "[]"))),
        ["mqtt.users[1].name: \"s\" is defined twice (also mqtt.users[0])"]
    );
    assert_problem(&user("", HASH, "[]"), "mqtt.users[0].name", &["is empty"]);
    assert_problem("[mqtt]\nallow_anonymous = false\n", "mqtt.allow_anonymous", &["every MQTT client"]);
    assert_problem("[mqtt]\nanonymous_publish = [\"\"]\n", "mqtt.anonymous_publish[0]", &["is empty"]);
    assert_problem(
        "[mqtt]\nanonymous_subscribe = [\"a/+b\"]\n",
        "mqtt.anonymous_subscribe[0]",
        &["\"a/+b\""],
    );
    assert_problem(
        &(user("sensor", HASH, "[]") + "subscribe = [\"x/#/y\"]\n"),
        "mqtt.users[\"sensor\"].subscribe[0]",
        &["\"x/#/y\"", "'#' may only be the whole last level"],
    );
}

const TOKEN: &str = "0123456789abcdef0123";

#[test]
fn http_tokens_parse() {
    let digest = "sha256:".to_owned() + &"ab".repeat(32);
    let text = format!(
        "{SERVICES}[[http.tokens]]\ntoken = \"{TOKEN}\"\nservices = [\"alarms\"]\nproduce = true\n\
         [[http.tokens]]\ntoken_hash = \"{digest}\"\nservices = [\"*\"]\nconsume = true\n"
    );
    let cfg = Config::from_toml_str(&text).expect("valid");
    let t = &cfg.http.tokens;
    assert_eq!((t[0].produce, t[0].consume, t[0].admin), (true, false, false));
    assert_eq!(t[1].hash_digest(), Some([0xab; 32]));
    assert!(!format!("{:?}", t[0]).contains(TOKEN), "Debug shows the token");
}

#[test]
fn http_token_problems_name_the_field() {
    let tok = |body: &str| format!("{SERVICES}[[http.tokens]]\n{body}\n");
    assert_problem(&tok("token = \"\"\nadmin = true"), "http.tokens[0].token", &["is empty", "16"]);
    assert_problem(&tok("token = \"short\"\nadmin = true"), "http.tokens[0].token", &["too short"]);
    assert_problem(&tok("admin = true"), "http.tokens[0].token", &["give token, token_file or token_hash"]);
    assert_problem(
        &tok(&format!("token = \"{TOKEN}\"\ntoken_hash = \"sha256:00\"\nadmin = true")),
        "http.tokens[0].token_hash",
        &["not both"],
    );
    assert_problem(
        &tok("token_hash = \"md5:abc\"\nadmin = true"),
        "http.tokens[0].token_hash",
        &["\"md5:abc\"", "must start with \"sha256:\""],
    );
    assert_problem(&tok(&format!("token = \"{TOKEN}\"")), "http.tokens[0]", &["grants nothing"]);
    assert_problem(
        &tok(&format!("token = \"{TOKEN}\"\nproduce = true")),
        "http.tokens[0].services",
        &["is empty", "\"*\""],
    );
    assert_problem(
        &tok(&format!("token = \"{TOKEN}\"\nconsume = true\nservices = [\"nope\"]")),
        "http.tokens[0].services[0]",
        &["service \"nope\" is not defined"],
    );
    let twice = tok(&format!("token = \"{TOKEN}\"\nadmin = true"))
        + &format!("[[http.tokens]]\ntoken = \"{TOKEN}\"\nmetrics = true\n");
    assert_problem(&twice, "http.tokens[1]", &["same token as http.tokens[0]"]);
}

#[test]
fn rate_limits_parse_and_validate() {
    let text = "[[service]]\nname = \"t\"\nmax_records_per_sec = 100\nmax_bytes_per_sec = \"1MiB\"\nrate_burst = \"5s\"\n";
    let cfg = Config::from_toml_str(text).expect("valid");
    let s = cfg.service("t").expect("t");
    assert_eq!((s.max_records_per_sec, s.rate_burst.as_secs()), (Some(100), 5));
    assert_eq!(cfg.service("default").map(|d| d.max_records_per_sec), Some(None), "unlimited by default");
    assert_problem(
        "[[service]]\nname = \"t\"\nmax_records_per_sec = 0\n",
        "service[\"t\"].max_records_per_sec",
        &["0 is out of range"],
    );
    assert_problem(
        "[[service]]\nname = \"t\"\nmax_bytes_per_sec = 0\n",
        "service[\"t\"].max_bytes_per_sec",
        &["too small"],
    );
    assert_problem(
        "[[service]]\nname = \"t\"\nrate_burst = \"0s\"\n",
        "service[\"t\"].rate_burst",
        &["out of range"],
    );
}
