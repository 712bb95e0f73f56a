//! sluice's configuration: one TOML file, typed, with defaults for every
//! field and validation that names the exact field that is wrong.
//!
//! ```
//! let cfg = sluice_config::Config::from_toml_str(r#"
//!     [store]
//!     max_bytes = "2GiB"
//!
//!     [[service]]
//!     name = "alarms"
//!     express = true
//!     durability = "sync"
//! "#)?;
//! assert_eq!(cfg.store.max_bytes.to_string(), "2GiB");
//! // The default service is always there, appended when not configured.
//! assert!(cfg.service(sluice_config::DEFAULT_SERVICE).is_some());
//! # Ok::<(), sluice_config::ConfigError>(())
//! ```
//!
//! Loading is three steps: parse (serde + `toml`, unknown fields refused),
//! [normalize](Config::normalize) (add the implicit `default` service), and
//! [validate](Config::validate) (ranges, names, references between
//! sections). [`Config::from_toml_str`] and [`Config::load`] do all three;
//! `Config::default()` is the result for an empty file.
//!
//! # Modules
//!
//! - `model`: `[node]`, `[mqtt]`, `[http]`, `[store]`, `[scheduler]` and
//!   [`Config`] itself.
//! - `items`: `[[service]]`, `[[topic]]`, `[[route]]`, `[[uplink]]`.
//! - `rules`: `[[rule]]` (structure; the gateway compiles the expressions).
//! - `size`, `duration`: human sizes (`"8MiB"`) and durations (`"50ms"`).
//! - `security`: `[[mqtt.users]]` and `[[http.tokens]]`.
//! - [`secrets`]: the `*_file` fields that keep secrets out of the file
//!   (systemd credentials), and warnings about secrets others may read.
//! - `names`: syntax of topic names, MQTT filters, route keys, brokers.
//! - `validate`: cross-field rules; `error` and `locate`: messages.
//! - [`tls`]: the certificate and key files named by the configuration,
//!   loaded into rustls configurations (the one place that reads them).
//!
//! # Units
//!
//! Sizes are strings such as `"256KiB"`, `"100MB"`, `"10 kB"` or plain
//! integers of bytes; see [`parse_size`]. Durations are strings with a unit,
//! such as `"2ms"`, `"1.5s"`, `"1h30m"`, `"7d"`; a bare number (`30` or
//! `"30"`) is refused because its unit would be a guess, except `0`; see
//! [`parse_duration`].
//!
//! # Error messages
//!
//! Field paths look like `store.max_bytes`, `service["alarms"].weight` or
//! `route[0].mqtt`: a `[[table]]` entry is named by its `name` when that is
//! valid and unique, else by its 0-based position in the file.

mod duration;
mod error;
mod items;
mod kafka_auth;
mod locate;
mod model;
mod names;
mod number;
mod rules;
pub mod secrets;
mod security;
mod size;
pub mod tls;
mod validate;

use std::path::{Path, PathBuf};

pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, FieldError};
pub use items::{
    Compression, Durability, ListenerTls, OnFull, RetentionConfig, RouteConfig, SaslMechanism, ServiceConfig,
    TopicConfig, UplinkBudget, UplinkConfig, UplinkKind, UplinkSasl, UplinkTls,
};
pub use kafka_auth::{
    topic_pattern_matches, KafkaUser, ScramCredential, ScramHash, MIN_SCRAM_ITERATIONS, SASL_MECHANISMS,
};
pub use model::{
    Config, HttpConfig, KafkaConfig, MqttConfig, NodeConfig, SchedulerConfig, SchedulerMode, StoreConfig,
    Unrouted,
};
pub use names::{
    check_mqtt_filter, check_topic_name, mqtt_filter_covers, mqtt_filter_matches, mqtt_filters_overlap,
    RouteKey, MAX_TOPIC_NAME_LEN,
};
pub use rules::{DeadbandConfig, OnError, OnLate, RuleConfig, RuleRoute, WindowConfig, WindowKind};
pub use security::{check_password_hash, parse_sha256, HttpToken, MqttUser, ALL_SERVICES, MIN_TOKEN_LEN};
pub use size::{parse_size, ByteSize};

/// Name of the service that always exists: topics without a `service`, and
/// auto-created topics, belong to it.
pub const DEFAULT_SERVICE: &str = "default";

impl Config {
    /// Parses, normalizes and validates a configuration from TOML text.
    /// Secrets given by `*_file` fields are not read (see [`secrets`]).
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, None)
    }

    /// Reads the file at `path` and loads it as [`Config::from_toml_str`]
    /// does, then reads the secrets named by `*_file` fields, relative names
    /// in `$CREDENTIALS_DIRECTORY` when it is set. A read error names the
    /// path (of the file, or the `*_file` field).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let credentials = std::env::var_os(secrets::CREDENTIALS_DIRECTORY).map(PathBuf::from);
        Config::load_with_credentials(path, credentials.as_deref())
    }

    /// [`Config::load`] with relative `*_file` names looked up in
    /// `credentials` (`None`: the current directory).
    pub fn load_with_credentials(path: &Path, credentials: Option<&Path>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Config::parse(&text, Some(credentials))
    }

    /// Parse, normalize, check where secrets come from, read the `*_file`
    /// ones when `read_secrets` is given (with the credentials directory),
    /// and validate; every problem is reported at once.
    fn parse(s: &str, read_secrets: Option<Option<&Path>>) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(s).map_err(|e| ConfigError::from_toml(&e, s))?;
        cfg.normalize();
        let mut problems = secrets::source_problems(&cfg);
        if let (true, Some(credentials)) = (problems.is_empty(), read_secrets) {
            problems = secrets::resolve(&mut cfg, credentials);
        }
        if let Err(ConfigError::Invalid { problems: more }) = cfg.validate() {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Adds the implicit [`DEFAULT_SERVICE`] (weight 1, buffered, other
    /// fields at their defaults) at the end of `services` unless a service
    /// of that name is configured. Idempotent.
    pub fn normalize(&mut self) {
        if self.service(DEFAULT_SERVICE).is_none() {
            self.services.push(ServiceConfig::new(DEFAULT_SERVICE));
        }
    }

    /// Checks every rule and reports all problems found, each naming its
    /// field; see [`ConfigError::Invalid`]. Call after changing a loaded
    /// configuration (e.g. command-line overrides).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The configured topic named `name` (auto-created topics are not
    /// listed here).
    pub fn topic(&self, name: &str) -> Option<&TopicConfig> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Field labels of the `[[rule]]` entries, in order (`rule["hot"]`, or
    /// `rule[2]` when the name is not valid and unique), for messages about
    /// their expressions.
    pub fn rule_labels(&self) -> Vec<String> {
        rules::labels(self)
    }

    /// The service a topic belongs to: its configured `service`, or
    /// [`DEFAULT_SERVICE`] for topics that are not configured.
    pub fn service_of_topic(&self, topic: &str) -> &str {
        self.topic(topic).map_or(DEFAULT_SERVICE, |t| &t.service)
    }
}

impl Default for Config {
    /// The embedded defaults: what an empty file gives. One service,
    /// `default`; no topics, routes or uplinks.
    fn default() -> Config {
        let mut cfg = Config {
            node: NodeConfig::default(),
            mqtt: MqttConfig::default(),
            http: HttpConfig::default(),
            kafka: KafkaConfig::default(),
            store: StoreConfig::default(),
            scheduler: SchedulerConfig::default(),
            services: Vec::new(),
            topics: Vec::new(),
            routes: Vec::new(),
            uplinks: Vec::new(),
            rules: Vec::new(),
        };
        cfg.normalize();
        cfg
    }
}
