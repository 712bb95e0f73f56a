//! Who may use sluice's own listeners: MQTT users (`[[mqtt.users]]`, with
//! argon2id password hashes and allowed publish filters) and HTTP bearer
//! tokens (`[[http.tokens]]`, scoped to services), and their validation.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{entry_labels, FieldError};
use crate::names::check_mqtt_filter;
use crate::Config;

/// The `*` entry of a token's `services`: every service.
pub const ALL_SERVICES: &str = "*";

/// Shortest accepted plain `token`.
pub const MIN_TOKEN_LEN: usize = 16;

/// `[[mqtt.users]]`: an MQTT client identity.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUser {
    /// Required. The MQTT user name (non-empty; unique).
    pub name: String,
    /// A PHC argon2id string, `$argon2id$v=19$m=...`, as printed by
    /// `sluice hash-password`. Required unless `password_hash_file` is
    /// given, from which [`Config::load`] fills it.
    #[serde(default)]
    pub password_hash: String,
    /// A file holding `password_hash` instead (see [`crate::secrets`]).
    #[serde(default)]
    pub password_hash_file: Option<std::path::PathBuf>,
    /// MQTT filters this user may publish to. Default `["#"]` (anything);
    /// `[]` makes a subscribe-only user.
    #[serde(default = "everything")]
    pub publish: Vec<String>,
    /// MQTT filters this user may subscribe to. Default `["#"]` (anything
    /// but `$` topics); a subscription is granted only if everything it can
    /// match lies within these; `[]` makes a publish-only user.
    #[serde(default = "everything")]
    pub subscribe: Vec<String>,
}

impl std::fmt::Debug for MqttUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttUser")
            .field("name", &self.name)
            .field("password_hash_file", &self.password_hash_file)
            .field("publish", &self.publish)
            .field("subscribe", &self.subscribe)
            .finish()
    }
}

pub(crate) fn everything() -> Vec<String> {
    vec!["#".to_owned()]
}

/// `[[http.tokens]]`: a bearer token of the HTTP API and what it may do.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpToken {
    /// The secret itself (at least [`MIN_TOKEN_LEN`] characters). Exactly
    /// one of `token`, `token_file` and `token_hash`.
    pub token: Option<String>,
    /// A file holding the token instead (see [`crate::secrets`]);
    /// [`Config::load`] fills `token` from it.
    pub token_file: Option<std::path::PathBuf>,
    /// `"sha256:<64 hex digits>"`: the SHA-256 of the token, so the file
    /// need not hold the secret.
    pub token_hash: Option<String>,
    /// Services whose topics `produce` and `consume` apply to; `"*"` for
    /// every service.
    pub services: Vec<String>,
    /// May produce to topics of `services`.
    pub produce: bool,
    /// May read partitions and use consumer groups on topics of `services`.
    pub consume: bool,
    /// May use the admin endpoints (`/v1/services`, `/v1/uplinks`,
    /// `/v1/topics`) and `/metrics`.
    pub admin: bool,
    /// May scrape `/metrics` (implied by `admin`).
    pub metrics: bool,
}

impl std::fmt::Debug for HttpToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpToken")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("token_hash", &self.token_hash)
            .field("services", &self.services)
            .field("produce", &self.produce)
            .field("consume", &self.consume)
            .field("admin", &self.admin)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl HttpToken {
    /// The SHA-256 digest the token is checked against: `token_hash`
    /// decoded, or `None` for a plain `token` (hash it yourself).
    pub fn hash_digest(&self) -> Option<[u8; 32]> {
        self.token_hash.as_deref().and_then(|h| parse_sha256(h).ok())
    }
}

/// Parses `"sha256:<64 hex digits>"`.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let hex = text.strip_prefix("sha256:").ok_or_else(|| {
        "must start with \"sha256:\" (e.g. sha256:$(printf %s TOKEN | sha256sum))".to_owned()
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("needs 64 hex digits after \"sha256:\", got {} characters", hex.len()));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Checks that `hash` is a PHC argon2id string.
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    let parsed = password_hash::PasswordHash::new(hash)
        .map_err(|e| format!("is not a PHC password hash ({e}); make one with `sluice hash-password`"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "uses {:?}; sluice accepts argon2id only (`sluice hash-password` makes one)",
            parsed.algorithm.as_str()
        ));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("has no salt or no hash part; make one with `sluice hash-password`".to_owned());
    }
    Ok(())
}

/// Problems of `[mqtt]` authentication and `[[http.tokens]]`.
pub(crate) fn problems(cfg: &Config) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut add = |field: String, message: String| out.push(FieldError { field, message });
    let mqtt = &cfg.mqtt;
    if mqtt.allow_anonymous == Some(false) && mqtt.users.is_empty() {
        add(
            "mqtt.allow_anonymous".into(),
            "is false but no [[mqtt.users]] are configured, so every MQTT client would be refused; \
             add users or remove allow_anonymous"
                .into(),
        );
    }
    for (field, filters) in
        [("anonymous_publish", &mqtt.anonymous_publish), ("anonymous_subscribe", &mqtt.anonymous_subscribe)]
    {
        for (i, f) in filters.iter().enumerate() {
            if let Err(e) = check_mqtt_filter(f) {
                add(format!("mqtt.{field}[{i}]"), format!("{f:?} {e}"));
            }
        }
    }
    let labels = entry_labels("mqtt.users", mqtt.users.iter().map(|u| Some(u.name.as_str())));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, (u, label)) in mqtt.users.iter().zip(&labels).enumerate() {
        if u.name.is_empty() {
            add(format!("{label}.name"), "is empty; give the MQTT user name".into());
        } else if let Some(first) = seen.insert(&u.name, i) {
            add(format!("{label}.name"), format!("{:?} is defined twice (also mqtt.users[{first}])", u.name));
        }
        match (u.password_hash.is_empty(), &u.password_hash_file) {
            // Read by Config::load; checked once it is.
            (true, Some(_)) => {}
            (true, None) => add(
                format!("{label}.password_hash"),
                "is missing: give password_hash or password_hash_file".into(),
            ),
            (false, _) => {
                if let Err(e) = check_password_hash(&u.password_hash) {
                    add(format!("{label}.password_hash"), e);
                }
            }
        }
        for (field, filters) in [("publish", &u.publish), ("subscribe", &u.subscribe)] {
            for (j, f) in filters.iter().enumerate() {
                if let Err(e) = check_mqtt_filter(f) {
                    add(format!("{label}.{field}[{j}]"), format!("{f:?} {e}"));
                }
            }
        }
    }
    let mut secrets: HashMap<String, usize> = HashMap::new();
    for (i, t) in cfg.http.tokens.iter().enumerate() {
        let label = format!("http.tokens[{i}]");
        let secret = match (&t.token, &t.token_hash) {
            (Some(_), Some(_)) => {
                add(
                    format!("{label}.token_hash"),
                    "give token (or token_file) or token_hash, not both".into(),
                );
                None
            }
            // Read by Config::load; checked once it is.
            (None, None) if t.token_file.is_some() => None,
            (None, None) => {
                add(format!("{label}.token"), "is missing: give token, token_file or token_hash".into());
                None
            }
            (Some(tok), None) if tok.chars().count() < MIN_TOKEN_LEN => {
                let what = if tok.is_empty() { "is empty".to_owned() } else { "is too short".to_owned() };
                add(
                    format!("{label}.token"),
                    format!("{what}; use at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)"),
                );
                None
            }
            (Some(tok), None) => Some(format!("token:{tok}")),
            (None, Some(hash)) => match parse_sha256(hash) {
                Ok(_) => Some(hash.to_ascii_lowercase()),
                Err(e) => {
                    add(format!("{label}.token_hash"), format!("{hash:?} {e}"));
                    None
                }
            },
        };
        if let Some(secret) = secret {
            if let Some(first) = secrets.insert(secret, i) {
                add(label.clone(), format!("is the same token as http.tokens[{first}]"));
            }
        }
        if !(t.produce || t.consume || t.admin || t.metrics) {
            add(label.clone(), "grants nothing; set produce, consume, admin or metrics to true".into());
        }
        if (t.produce || t.consume) && t.services.is_empty() {
            add(
                format!("{label}.services"),
                "is empty; list the services produce/consume apply to, or \"*\" for all".into(),
            );
        }
        for (j, s) in t.services.iter().enumerate() {
            if s != ALL_SERVICES && cfg.service(s).is_none() {
                let defined: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
                add(
                    format!("{label}.services[{j}]"),
                    format!("service {s:?} is not defined (defined: {}; or \"*\")", defined.join(", ")),
                );
            }
        }
    }
    out
}
