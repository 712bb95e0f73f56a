//! Cross-field validation of a parsed, normalized [`Config`].
//!
//! Every rule reports into one list, so `sluice check-config` shows all
//! problems at once. Field paths follow the rule in [`crate::error`]: an
//! entry is `kind["name"]` when its name is valid and unique, else
//! `kind[index]`.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use crate::duration::format_duration;
use crate::error::{entry_labels, ConfigError, FieldError};
use crate::items::UplinkKind;
use crate::model::limits;
use crate::names::{self, check_mqtt_filter, check_topic_name, RouteKey};
use crate::size::ByteSize;
use crate::Config;

/// Replication factor of remote Kafka topics an uplink creates.
const REPLICATION_FACTOR: (u16, u16) = (1, 32);

/// Checks every rule; `Err` lists all problems found.
pub(crate) fn validate(cfg: &Config) -> Result<(), ConfigError> {
    let mut v = Problems::default();
    v.sections(cfg);
    v.services(cfg);
    v.topics(cfg);
    v.routes(cfg);
    v.uplinks(cfg);
    v.0.extend(crate::rules::problems(cfg));
    v.0.extend(crate::security::problems(cfg));
    v.0.extend(crate::kafka_auth::problems(cfg));
    if v.0.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { problems: v.0 })
    }
}

#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Display, message: impl Into<String>) {
        self.0.push(FieldError { field: field.to_string(), message: message.into() });
    }

    /// Records `check`'s error, if any, under `field`.
    fn check(&mut self, field: impl Display, check: Result<(), String>) {
        if let Err(message) = check {
            self.add(field, message);
        }
    }

    fn sections(&mut self, cfg: &Config) {
        self.check("node.id", name_rule(&cfg.node.id));
        if cfg.node.data_dir.as_os_str().is_empty() {
            self.add("node.data_dir", "is empty; give a directory path");
        }
        let max_payload = (ByteSize(1), limits::MAX_MQTT_PAYLOAD);
        self.check("mqtt.max_payload", range(cfg.mqtt.max_payload, max_payload));
        self.check("mqtt.max_connections", range(cfg.mqtt.max_connections, limits::CONNECTIONS));
        self.check("mqtt.max_inflight", range(cfg.mqtt.max_inflight, (1, 65_535)));
        self.check(
            "mqtt.delivery_target_delay",
            dur_range(cfg.mqtt.delivery_target_delay, (Duration::from_millis(1), Duration::from_secs(10))),
        );
        self.check(
            "mqtt.delivery_queue",
            range(cfg.mqtt.delivery_queue, (ByteSize::kib(64), ByteSize::gib(1))),
        );
        self.check(
            "mqtt.session_expiry",
            dur_range(
                cfg.mqtt.session_expiry,
                (Duration::from_secs(1), Duration::from_secs(365 * 24 * 3600)),
            ),
        );
        if let Some(v5) = cfg.mqtt.listen_v5 {
            if v5 == cfg.mqtt.listen && v5.port() != 0 {
                self.check(
                    "mqtt.listen_v5",
                    Err(format!("{v5} is also mqtt.listen; give the MQTT 5 listener its own port")),
                );
            }
        }
        self.check("http.max_body", at_least(cfg.http.max_body, ByteSize(1)));
        self.check("http.max_wait", dur_range(cfg.http.max_wait, (Duration::ZERO, limits::MAX_HTTP_WAIT)));
        self.check("http.header_timeout", dur_range(cfg.http.header_timeout, limits::LISTENER_TIMEOUT));
        self.check("http.body_timeout", dur_range(cfg.http.body_timeout, limits::LISTENER_TIMEOUT));
        self.check("http.idle_timeout", dur_range(cfg.http.idle_timeout, limits::LISTENER_TIMEOUT));
        self.check("http.max_connections", range(cfg.http.max_connections, limits::CONNECTIONS));
        self.kafka(cfg);
        self.listener_tls("mqtt.tls", cfg.mqtt.tls.as_ref());
        self.listener_tls("http.tls", cfg.http.tls.as_ref());
        let store = &cfg.store;
        self.check("store.max_bytes", at_least(store.max_bytes, limits::MIN_STORE_BYTES));
        let sync_window = (Duration::ZERO, limits::MAX_SYNC_WINDOW);
        self.check("store.sync_window", dur_range(store.sync_window, sync_window));
        self.check("store.flush_interval", dur_range(store.flush_interval, limits::FLUSH_INTERVAL));
        self.check("store.cache_capacity", at_least(store.cache_capacity, limits::MIN_CACHE));
        self.check("store.segment_bytes", size_range(store.segment_bytes, limits::SEGMENT_BYTES));
        self.check("store.segment_age", dur_range(store.segment_age, limits::SEGMENT_AGE));
        self.check("store.writeback_step", size_range(store.writeback_step, limits::WRITEBACK_STEP));
        self.check("store.max_dirty", at_least(store.max_dirty, limits::MIN_DIRTY));
        self.check("store.checkpoint_interval", dur_range(store.checkpoint_interval, limits::CHECKPOINT));
        self.check("store.default_partitions", range(store.default_partitions, limits::PARTITIONS));
        let share = cfg.scheduler.express_max_share;
        if !(share > 0.0 && share <= 1.0) {
            self.add(
                "scheduler.express_max_share",
                format!("{share} is out of range (0, 1]; e.g. 0.5 lets express services take at most half"),
            );
        }
    }

    fn kafka(&mut self, cfg: &Config) {
        let kafka = &cfg.kafka;
        self.check("kafka.max_request", size_range(kafka.max_request, limits::KAFKA_REQUEST));
        self.check("kafka.max_connections", range(kafka.max_connections, limits::CONNECTIONS));
        self.check("kafka.idle_timeout", dur_range(kafka.idle_timeout, limits::LISTENER_TIMEOUT));
        self.check("kafka.write_timeout", dur_range(kafka.write_timeout, limits::LISTENER_TIMEOUT));
        self.listener_tls("kafka.tls", kafka.tls.as_ref());
        if let Some(adv) = &kafka.advertised {
            self.check("kafka.advertised", names::check_host_port(adv));
        }
        if let Some(listen) = kafka.listen {
            let taken = [
                ("http.listen", Some(cfg.http.listen)),
                ("mqtt.listen", Some(cfg.mqtt.listen)),
                ("mqtt.listen_v5", cfg.mqtt.listen_v5),
            ];
            for (field, other) in taken {
                if other.is_some_and(|o| {
                    o.port() == listen.port()
                        && o.port() != 0
                        && (o.ip() == listen.ip() || o.ip().is_unspecified() || listen.ip().is_unspecified())
                }) {
                    self.add(
                        "kafka.listen",
                        format!("{listen} is also {field}; give the Kafka listener its own port"),
                    );
                }
            }
        } else if kafka.advertised.is_some() {
            self.add(
                "kafka.advertised",
                "is set but kafka.listen is not; set kafka.listen to turn the Kafka listener on",
            );
        }
    }

    fn services(&mut self, cfg: &Config) {
        let labels = entry_labels("service", cfg.services.iter().map(|s| Some(s.name.as_str())));
        self.names("service", &labels, cfg.services.iter().map(|s| s.name.as_str()));
        let mut reserved_total: u128 = 0;
        for (s, label) in cfg.services.iter().zip(&labels) {
            self.check(format!("{label}.weight"), range(s.weight, limits::WEIGHT));
            self.check(format!("{label}.max_pending"), at_least(s.max_pending, limits::MIN_MAX_PENDING));
            if s.ttl == Some(Duration::ZERO) {
                self.add(format!("{label}.ttl"), "0s would expire every record; leave ttl out for no limit");
            }
            if let Some(rate) = s.max_records_per_sec {
                self.check(format!("{label}.max_records_per_sec"), range(rate, (1, u32::MAX)));
            }
            if let Some(rate) = s.max_bytes_per_sec {
                self.check(format!("{label}.max_bytes_per_sec"), at_least(rate, ByteSize(1)));
            }
            self.check(format!("{label}.rate_burst"), dur_range(s.rate_burst, limits::RATE_BURST));
            reserved_total += u128::from(s.reserved_bytes.as_u64());
        }
        if reserved_total > u128::from(cfg.store.max_bytes.as_u64()) {
            let parts: Vec<String> = cfg
                .services
                .iter()
                .filter(|s| s.reserved_bytes.as_u64() > 0)
                .map(|s| format!("{} {}", s.name, s.reserved_bytes))
                .collect();
            let total = u64::try_from(reserved_total)
                .map_or_else(|_| format!("{reserved_total}B"), |t| ByteSize(t).to_string());
            self.add(
                "service[*].reserved_bytes",
                format!(
                    "reserved bytes sum to {total} ({}), more than store.max_bytes {}",
                    parts.join(", "),
                    cfg.store.max_bytes
                ),
            );
        }
    }

    fn topics(&mut self, cfg: &Config) {
        let labels = entry_labels("topic", cfg.topics.iter().map(|t| Some(t.name.as_str())));
        self.names("topic", &labels, cfg.topics.iter().map(|t| t.name.as_str()));
        for (t, label) in cfg.topics.iter().zip(&labels) {
            if cfg.service(&t.service).is_none() {
                let defined: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
                self.add(
                    format!("{label}.service"),
                    format!("service {:?} is not defined (defined: {})", t.service, defined.join(", ")),
                );
            }
            self.check(format!("{label}.partitions"), range(t.partitions, limits::PARTITIONS));
            if t.retention.max_age == Some(Duration::ZERO) {
                self.add(
                    format!("{label}.retention.max_age"),
                    "0s would delete every record; leave it out for no age limit",
                );
            }
            if t.retention.max_bytes == Some(ByteSize(0)) {
                self.add(
                    format!("{label}.retention.max_bytes"),
                    "0B would delete every record; leave it out for no size limit",
                );
            }
        }
    }

    fn routes(&mut self, cfg: &Config) {
        for (i, r) in cfg.routes.iter().enumerate() {
            let label = format!("route[{i}]");
            let filter_ok = check_mqtt_filter(&r.mqtt);
            let filter_valid = filter_ok.is_ok();
            self.check(format!("{label}.mqtt"), value_rule(&r.mqtt, filter_ok));
            self.check(format!("{label}.topic"), topic_ref(cfg, &r.topic));
            let Some(spec) = &r.key else { continue };
            match RouteKey::parse(spec) {
                Err(e) => self.add(format!("{label}.key"), format!("{spec:?}: {e}")),
                Ok(RouteKey::Level(n)) if filter_valid => {
                    let levels = r.mqtt.split('/').count();
                    if n > levels && !r.mqtt.ends_with('#') {
                        self.add(
                            format!("{label}.key"),
                            format!("{spec:?} is past the last level of {:?}, which has {levels}", r.mqtt),
                        );
                    }
                }
                Ok(_) => {}
            }
        }
    }

    fn uplinks(&mut self, cfg: &Config) {
        let labels = entry_labels("uplink", cfg.uplinks.iter().map(|u| Some(u.name.as_str())));
        self.names("uplink", &labels, cfg.uplinks.iter().map(|u| u.name.as_str()));
        for (u, label) in cfg.uplinks.iter().zip(&labels) {
            let kind = u.kind.as_str();
            if u.brokers.is_empty() {
                let what = match u.kind {
                    UplinkKind::Http => "http:// or https:// URL",
                    UplinkKind::Kafka | UplinkKind::Mqtt => "host:port address",
                };
                self.add(
                    format!("{label}.brokers"),
                    format!("is empty; a {kind} uplink needs at least one {what}"),
                );
            }
            for (j, b) in u.brokers.iter().enumerate() {
                let check = match u.kind {
                    UplinkKind::Http => names::check_http_url(b),
                    UplinkKind::Kafka | UplinkKind::Mqtt => names::check_host_port(b),
                };
                self.check(format!("{label}.brokers[{j}]"), value_rule(b, check));
            }
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (j, t) in u.topics.iter().enumerate() {
                let field = format!("{label}.topics[{j}]");
                if let Some(first) = seen.insert(t.as_str(), j) {
                    self.add(field, format!("{t:?} is listed twice (also topics[{first}])"));
                } else {
                    self.check(field, topic_ref(cfg, t));
                }
            }
            self.check(format!("{label}.remote_topic"), remote_topic(cfg, u));
            let linger = (Duration::ZERO, limits::MAX_LINGER);
            self.check(format!("{label}.linger"), dur_range(u.linger, linger));
            self.check(format!("{label}.batch_max_bytes"), at_least(u.batch_max_bytes, limits::MIN_BATCH));
            if let Some(cap) = u.max_bytes_per_sec {
                self.check(format!("{label}.max_bytes_per_sec"), at_least(cap, ByteSize(1)));
            }
            if !(0.0..=1.0).contains(&u.live_share) {
                self.add(format!("{label}.live_share"), format!("{} is out of range [0, 1]", u.live_share));
            }
            if !(1..=limits::MAX_IN_FLIGHT).contains(&u.max_in_flight) {
                self.add(
                    format!("{label}.max_in_flight"),
                    format!("{} is out of range [1, {}]", u.max_in_flight, limits::MAX_IN_FLIGHT),
                );
            }
            if let Some(b) = u.backlog_batch_max_bytes {
                self.check(format!("{label}.backlog_batch_max_bytes"), at_least(b, u.batch_max_bytes));
            }
            self.check(
                format!("{label}.checkpoint_interval"),
                dur_range(u.checkpoint_interval, limits::CHECKPOINT),
            );
            if let Some(b) = &u.budget {
                self.check(format!("{label}.budget.bytes"), at_least(b.bytes, ByteSize(1)));
                self.check(format!("{label}.budget.period"), dur_range(b.period, limits::BUDGET_PERIOD));
                if !(0.0..1.0).contains(&b.reserve) {
                    self.add(
                        format!("{label}.budget.reserve"),
                        format!("{} is out of range [0, 1)", b.reserve),
                    );
                }
                if let Err(e) = b.window_minutes() {
                    self.add(format!("{label}.budget.windows"), e);
                }
                for (j, name) in b.always.iter().flatten().enumerate() {
                    if !cfg.services.iter().any(|s| &s.name == name) {
                        self.add(format!("{label}.budget.always[{j}]"), format!("unknown service {name:?}"));
                    }
                }
            }
            self.kafka_options(u, label);
        }
    }

    /// The file names and timeout of a listener's `tls` table (the files
    /// themselves are read by [`crate::tls`] when sluice starts).
    fn listener_tls(&mut self, field: &str, tls: Option<&crate::ListenerTls>) {
        let Some(tls) = tls else { return };
        for (name, path) in
            [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())]
        {
            if path.is_some_and(|p| p.as_os_str().is_empty()) {
                self.add(format!("{field}.{name}"), "is empty; give the path of a PEM file");
            }
        }
        self.check(
            format!("{field}.handshake_timeout"),
            dur_range(tls.handshake_timeout, limits::LISTENER_TIMEOUT),
        );
    }

    /// `tls` of any uplink; `replication_factor` and `sasl` of Kafka ones.
    fn kafka_options(&mut self, u: &crate::UplinkConfig, label: &str) {
        self.check(format!("{label}.replication_factor"), range(u.replication_factor, REPLICATION_FACTOR));
        let kafka_only = |field: &str| {
            format!("applies to kafka uplinks only, and this one is {}; remove {field}", u.kind.as_str())
        };
        if let Some(tls) = &u.tls {
            if u.kind == UplinkKind::Http {
                for (i, url) in u.brokers.iter().enumerate() {
                    if !url.starts_with("https://") {
                        self.add(
                            format!("{label}.brokers[{i}]"),
                            format!(
                                "{url:?} is not an https:// URL, but tls is set; use https:// or remove tls"
                            ),
                        );
                    }
                }
            }
            for (name, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    self.add(format!("{label}.tls.{name}"), "is empty; give the path of a PEM file");
                }
            }
            match (&tls.cert, &tls.key) {
                (Some(_), None) => self.add(
                    format!("{label}.tls.key"),
                    "is missing: tls.cert needs the PEM file of its private key (or remove cert)",
                ),
                (None, Some(_)) => self.add(
                    format!("{label}.tls.cert"),
                    "is missing: tls.key needs the PEM file of its certificate (or remove key)",
                ),
                _ => {}
            }
        }
        if let Some(sasl) = &u.sasl {
            if u.kind != UplinkKind::Kafka {
                self.add(format!("{label}.sasl"), kafka_only("sasl"));
            }
            if sasl.username.is_empty() {
                self.add(format!("{label}.sasl.username"), "is empty; give the SASL user name");
            }
            if sasl.password.is_empty() && sasl.password_file.is_none() {
                self.add(format!("{label}.sasl.password"), "is missing: give password or password_file");
            }
        }
    }

    /// Name syntax and uniqueness of one kind of `[[table]]`.
    fn names<'a>(&mut self, kind: &str, labels: &[String], names: impl Iterator<Item = &'a str>) {
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        for (i, (name, label)) in names.zip(labels).enumerate() {
            match first_seen.get(name) {
                Some(first) => self.add(
                    format!("{label}.name"),
                    format!("{name:?} is defined twice (also {kind}[{first}])"),
                ),
                None => {
                    first_seen.insert(name, i);
                    self.check(format!("{label}.name"), name_rule(name));
                }
            }
        }
    }
}

fn value_rule(value: &str, check: Result<(), String>) -> Result<(), String> {
    check.map_err(|e| format!("{value:?} {e}"))
}

fn name_rule(name: &str) -> Result<(), String> {
    value_rule(name, check_topic_name(name))
}

/// A topic referred to by a route or uplink: configured, or auto-creatable.
pub(crate) fn topic_ref(cfg: &Config, topic: &str) -> Result<(), String> {
    if cfg.topic(topic).is_some() {
        return Ok(());
    }
    if cfg.store.auto_create_topics {
        return name_rule(topic);
    }
    let defined: Vec<&str> = cfg.topics.iter().map(|t| t.name.as_str()).collect();
    Err(format!(
        "topic {topic:?} is not defined and store.auto_create_topics is false (defined: {})",
        if defined.is_empty() { "none".to_owned() } else { defined.join(", ") }
    ))
}

/// The template's placeholders, and for Kafka and MQTT that the names it
/// produces are valid there.
fn remote_topic(cfg: &Config, u: &crate::UplinkConfig) -> Result<(), String> {
    let template = &u.remote_topic;
    value_rule(template, names::check_template(template))?;
    if check_topic_name(&cfg.node.id).is_err() {
        // Already reported at node.id; rendering it would only repeat that.
        return Ok(());
    }
    let samples: Vec<(&str, &str)> = if u.topics.is_empty() {
        vec![("t", crate::DEFAULT_SERVICE)]
    } else {
        u.topics
            .iter()
            .map(|t| (t.as_str(), cfg.topic(t).map_or(crate::DEFAULT_SERVICE, |c| &c.service)))
            .collect()
    };
    for (topic, service) in samples {
        let remote = u.remote_topic_for(&cfg.node.id, topic, service);
        let check = match u.kind {
            UplinkKind::Kafka => check_topic_name(&remote),
            UplinkKind::Mqtt if remote.is_empty() || remote.contains(['+', '#', '\0']) => {
                Err("is not a valid MQTT topic name (empty, or has '+', '#' or NUL)".to_owned())
            }
            UplinkKind::Mqtt | UplinkKind::Http => Ok(()),
        };
        check.map_err(|e| format!("{template:?} gives {remote:?} for topic {topic:?}, which {e}"))?;
    }
    Ok(())
}

fn range<T: PartialOrd + Display>(value: T, (lo, hi): (T, T)) -> Result<(), String> {
    if value < lo || value > hi {
        return Err(format!("{value} is out of range {lo}..={hi}"));
    }
    Ok(())
}

fn size_range(value: ByteSize, (lo, hi): (ByteSize, ByteSize)) -> Result<(), String> {
    at_least(value, lo)?;
    if value.as_u64() > hi.as_u64() {
        return Err(format!("{value} is more than the maximum of {hi}"));
    }
    Ok(())
}

fn at_least(value: ByteSize, min: ByteSize) -> Result<(), String> {
    if value < min {
        return Err(format!("{value} is too small; the minimum is {min}"));
    }
    Ok(())
}

pub(crate) fn dur_range(value: Duration, (lo, hi): (Duration, Duration)) -> Result<(), String> {
    if value < lo || value > hi {
        return Err(format!(
            "{} is out of range {}..={}",
            format_duration(value),
            format_duration(lo),
            format_duration(hi)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError, SaslMechanism};

    const KAFKA: &str = "[[uplink]]\nname = \"c\"\nkind = \"kafka\"\nbrokers = [\"k:9092\"]\n";

    fn problems(text: &str) -> Vec<String> {
        match Config::from_toml_str(text) {
            Ok(_) => panic!("config should be invalid:\n{text}"),
            Err(ConfigError::Invalid { problems }) => problems.iter().map(|p| p.to_string()).collect(),
            Err(other) => panic!("expected a validation error, got: {other}"),
        }
    }

    #[test]
    fn kafka_options_parse_with_defaults() {
        let cfg = Config::from_toml_str(KAFKA).expect("valid");
        let u = &cfg.uplinks[0];
        assert_eq!((u.replication_factor, u.create_topics, &u.tls, &u.sasl), (1, true, &None, &None));
        let text = format!(
            "{KAFKA}replication_factor = 3\ncreate_topics = false\ntls = {{}}\n\
             sasl = {{ mechanism = \"scram-sha-256\", username = \"u\", password = \"secret\" }}\n"
        );
        let cfg = Config::from_toml_str(&text).expect("valid");
        let u = &cfg.uplinks[0];
        assert_eq!((u.replication_factor, u.create_topics), (3, false));
        let tls = u.tls.as_ref().expect("tls");
        assert_eq!(tls.ca_file(), std::path::Path::new(crate::UplinkTls::SYSTEM_CA_BUNDLE));
        let sasl = u.sasl.as_ref().expect("sasl");
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha256);
        assert!(!format!("{sasl:?}").contains("secret"), "Debug shows the password");
    }

    #[test]
    fn kafka_option_problems_name_the_field() {
        assert_eq!(
            problems(&format!("{KAFKA}replication_factor = 0\n")),
            ["uplink[\"c\"].replication_factor: 0 is out of range 1..=32"]
        );
        assert_eq!(
            problems(&format!("{KAFKA}tls = {{ cert = \"c.pem\" }}\n")),
            ["uplink[\"c\"].tls.key: is missing: tls.cert needs the PEM file of its private key (or remove cert)"]
        );
        assert_eq!(
            problems(&format!(
                "{KAFKA}sasl = {{ mechanism = \"plain\", username = \"\", password = \"p\" }}\n"
            )),
            ["uplink[\"c\"].sasl.username: is empty; give the SASL user name"]
        );
        let mqtt = KAFKA.replace("kafka", "mqtt") + "tls = { ca = \"\" }\n";
        assert_eq!(problems(&mqtt), ["uplink[\"c\"].tls.ca: is empty; give the path of a PEM file"]);
        let mqtt = KAFKA.replace("kafka", "mqtt")
            + "sasl = { mechanism = \"plain\", username = \"u\", password = \"p\" }\n";
        assert_eq!(
            problems(&mqtt),
            ["uplink[\"c\"].sasl: applies to kafka uplinks only, and this one is mqtt; remove sasl"]
        );
    }

    #[test]
    fn http_uplink_tls_needs_https_urls() {
        let http = "[[uplink]]\nname = \"c\"\nkind = \"http\"\nbrokers = [\"https://a/x\", \"http://b/x\"]\n";
        // https:// without a tls table trusts the system bundle.
        Config::from_toml_str(http).expect("valid");
        assert_eq!(
            problems(&format!("{http}tls = {{}}\n")),
            ["uplink[\"c\"].brokers[1]: \"http://b/x\" is not an https:// URL, but tls is set; use https:// or remove tls"]
        );
    }

    #[test]
    fn listener_limits_and_tls_are_checked() {
        let text = "[http]\nheader_timeout = \"0\"\nmax_connections = 0\n[http.tls]\ncert = \"\"\nkey = \"k.pem\"\n\
                    [mqtt.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"\"\nhandshake_timeout = \"2h\"\n";
        assert_eq!(
            problems(text),
            [
                "http.header_timeout: 0s is out of range 1ms..=1h",
                "http.max_connections: 0 is out of range 1..=100000",
                "mqtt.tls.client_ca: is empty; give the path of a PEM file",
                "mqtt.tls.handshake_timeout: 2h is out of range 1ms..=1h",
                "http.tls.cert: is empty; give the path of a PEM file",
            ]
        );
        let cfg = Config::from_toml_str("[mqtt.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").expect("valid");
        assert_eq!(cfg.mqtt.tls, Some(crate::ListenerTls::new("c.pem", "k.pem")));
        assert_eq!(cfg.mqtt.tls.map(|t| t.handshake_timeout), Some(std::time::Duration::from_secs(10)));
    }

    #[test]
    fn kafka_section_is_checked() {
        // Off by default; an empty section is valid.
        let cfg = Config::from_toml_str("[kafka]\n").expect("valid");
        assert_eq!(cfg.kafka.listen, None);
        Config::from_toml_str("[kafka]\nlisten = \"127.0.0.1:0\"\nadvertised = \"edge-1:9092\"\n")
            .expect("valid");
        let text = "[http]\nlisten = \"0.0.0.0:8080\"\n[kafka]\nlisten = \"127.0.0.1:8080\"\n\
                    advertised = \"kafka://edge:9092\"\nmax_request = \"10B\"\nmax_connections = 0\n";
        assert_eq!(
            problems(text),
            [
                "kafka.max_request: 10B is too small; the minimum is 1KiB",
                "kafka.max_connections: 0 is out of range 1..=100000",
                "kafka.advertised: must be host:port without a scheme, e.g. \"central-1:9092\"",
                "kafka.listen: 127.0.0.1:8080 is also http.listen; give the Kafka listener its own port",
            ]
        );
        assert_eq!(
            problems("[kafka]\nadvertised = \"edge:0\"\n"),
            [
                "kafka.advertised: port \"0\" is not a number in 1..=65535",
                "kafka.advertised: is set but kafka.listen is not; set kafka.listen to turn the Kafka listener on",
            ]
        );
        assert!(Config::from_toml_str("[kafka]\nlisten = \"nohost\"\n").is_err());
        assert!(Config::from_toml_str("[kafka]\nport = 9092\n").is_err());
    }
}
