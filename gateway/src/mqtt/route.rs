//! MQTT topic -> log topic and record key, from `[[route]]` rules (first
//! match wins) or the `mqtt.unrouted` policy.

use sluice_config::{mqtt_filter_matches, Config, RouteKey, Unrouted};

/// One compiled `[[route]]`.
#[derive(Debug, Clone)]
struct Route {
    filter: String,
    topic: String,
    key: Option<RouteKey>,
}

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Log topic.
    pub topic: String,
    /// Record key, if the rule yields one.
    pub key: Option<Vec<u8>>,
    /// The rule asked for a key that the publish does not have (a missing
    /// topic level or JSON field); the record is stored without key.
    pub key_missing: bool,
}

/// Why a publish is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// No route matched and `mqtt.unrouted = "drop"`.
    Unrouted,
    /// The topic (or its first level) is not a valid log topic name.
    InvalidTopic,
}

impl Drop {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Drop::Unrouted => "unrouted",
            Drop::InvalidTopic => "invalid_topic",
        }
    }
}

/// The routing table.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<Route>,
    unrouted: Unrouted,
}

impl Router {
    /// Compiles the routes of a validated configuration.
    pub fn new(config: &Config) -> Router {
        let routes = config
            .routes
            .iter()
            .map(|r| Route {
                filter: r.mqtt.clone(),
                topic: r.topic.clone(),
                // Validation already refused bad specs.
                key: r.key.as_deref().and_then(|k| RouteKey::parse(k).ok()),
            })
            .collect();
        Router { routes, unrouted: config.mqtt.unrouted }
    }

    /// The log topic a publish to `mqtt_topic` goes to, without its key;
    /// `None` when it is not stored.
    pub fn log_topic<'a>(&'a self, mqtt_topic: &'a str) -> Option<&'a str> {
        if let Some(r) = self.routes.iter().find(|r| mqtt_filter_matches(&r.filter, mqtt_topic)) {
            return Some(&r.topic);
        }
        match self.unrouted {
            Unrouted::Drop => None,
            Unrouted::FirstLevel => Some(mqtt_topic.split_once('/').map_or(mqtt_topic, |(f, _)| f)),
        }
    }

    /// Which log topics publishes matching `filter` can be stored in:
    /// `None` stands for any topic (a first level wildcard while unrouted
    /// publishes go to their first level).
    pub fn log_topics_for<'a>(&'a self, filter: &'a str) -> Option<Vec<&'a str>> {
        let mut names: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| sluice_config::mqtt_filters_overlap(&r.filter, filter))
            .map(|r| r.topic.as_str())
            .collect();
        if self.unrouted == Unrouted::FirstLevel {
            match filter.split('/').next() {
                Some("+" | "#") | None => return None,
                Some(first) => names.push(first),
            }
        }
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    /// Routes one publish.
    pub fn route(&self, mqtt_topic: &str, payload: &[u8]) -> Result<Destination, Drop> {
        if let Some(r) = self.routes.iter().find(|r| mqtt_filter_matches(&r.filter, mqtt_topic)) {
            let (key, key_missing) = match &r.key {
                None => (None, false),
                Some(spec) => match extract_key(spec, mqtt_topic, payload) {
                    Some(k) => (Some(k), false),
                    None => (None, true),
                },
            };
            return Ok(Destination { topic: r.topic.clone(), key, key_missing });
        }
        match self.unrouted {
            Unrouted::Drop => Err(Drop::Unrouted),
            Unrouted::FirstLevel => {
                let (first, rest) = match mqtt_topic.split_once('/') {
                    Some((f, r)) => (f, Some(r)),
                    None => (mqtt_topic, None),
                };
                if sluice_config::check_topic_name(first).is_err() {
                    return Err(Drop::InvalidTopic);
                }
                let key = rest.filter(|r| !r.is_empty()).map(|r| r.as_bytes().to_vec());
                Ok(Destination { topic: first.to_owned(), key, key_missing: false })
            }
        }
    }
}

fn extract_key(spec: &RouteKey, topic: &str, payload: &[u8]) -> Option<Vec<u8>> {
    match spec {
        RouteKey::Level(_) => {
            spec.topic_level(topic).filter(|l| !l.is_empty()).map(|l| l.as_bytes().to_vec())
        }
        RouteKey::JsonPointer(pointer) => {
            let doc: serde_json::Value = serde_json::from_slice(payload).ok()?;
            match doc.pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.as_bytes().to_vec()),
                serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => None,
                other => Some(other.to_string().into_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(toml: &str) -> Router {
        Router::new(&Config::from_toml_str(toml).expect("valid config"))
    }

    #[test]
    fn first_match_wins_and_keys_come_from_levels_or_json() {
        let r = router(
            r#"
[[route]]
mqtt = "plant/+/alarm"
topic = "alarms"
key = "level:2"
[[route]]
mqtt = "plant/#"
topic = "telemetry"
key = "json:/device/id"
"#,
        );
        let d = r.route("plant/dev-7/alarm", b"{}").expect("routed");
        assert_eq!((d.topic.as_str(), d.key.as_deref()), ("alarms", Some(&b"dev-7"[..])));
        let d = r.route("plant/dev-7/temp", br#"{"device":{"id":"abc"}}"#).expect("routed");
        assert_eq!(
            (d.topic.as_str(), d.key.as_deref(), d.key_missing),
            ("telemetry", Some(&b"abc"[..]), false)
        );
        let d = r.route("plant/x", br#"{"device":{"id":42}}"#).expect("routed");
        assert_eq!(d.key.as_deref(), Some(&b"42"[..]));
        let d = r.route("plant/x", b"not json").expect("routed");
        assert!(d.key_missing && d.key.is_none());
    }

    #[test]
    fn unrouted_policy() {
        let r = router("");
        let d = r.route("plant/dev-7/temp", b"1").expect("first level");
        assert_eq!((d.topic.as_str(), d.key.as_deref()), ("plant", Some(&b"dev-7/temp"[..])));
        let d = r.route("solo", b"1").expect("first level");
        assert_eq!((d.topic.as_str(), d.key), ("solo", None));
        assert_eq!(r.route("bad level/x", b"1"), Err(Drop::InvalidTopic));
        assert_eq!(r.route("/leading", b"1"), Err(Drop::InvalidTopic));
        let r = router("[mqtt]\nunrouted = \"drop\"\n");
        assert_eq!(r.route("plant/x", b"1"), Err(Drop::Unrouted));
    }
}
