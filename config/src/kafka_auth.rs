//! Who may use the Kafka listener: `kafka.sasl` (the SASL mechanisms
//! offered) and `[[kafka.users]]` (credentials and the topics each user may
//! produce to and consume from), and their validation.
//!
//! A user's PLAIN password is checked against `password_hash` (argon2id,
//! as for MQTT users) or, without one, against its SCRAM credentials. SCRAM
//! credentials are stored the way Kafka stores them (salt, iterations,
//! StoredKey, ServerKey; never the password), in PostgreSQL's text form:
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64,
//! as printed by `sluice scram-credential`.

use std::collections::HashMap;

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{entry_labels, FieldError};
use crate::security::check_password_hash;
use crate::Config;

/// The SASL mechanisms sluice serves, as Kafka spells them.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Fewest SCRAM iterations accepted (RFC 7677 asks for at least 4096).
pub const MIN_SCRAM_ITERATIONS: u32 = 4096;

/// `[[kafka.users]]`: a Kafka client identity (SASL).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaUser {
    /// Required. The SASL user name (non-empty; unique).
    pub name: String,
    /// For PLAIN: a PHC argon2id string as printed by `sluice
    /// hash-password`. Without it PLAIN checks the password against the
    /// SCRAM credentials.
    #[serde(default)]
    pub password_hash: String,
    /// A file holding `password_hash` instead (see [`crate::secrets`]).
    #[serde(default)]
    pub password_hash_file: Option<std::path::PathBuf>,
    /// SCRAM-SHA-256 credentials, as printed by `sluice scram-credential
    /// --mechanism SCRAM-SHA-256`.
    #[serde(default)]
    pub scram_sha_256: String,
    /// A file holding `scram_sha_256` instead.
    #[serde(default)]
    pub scram_sha_256_file: Option<std::path::PathBuf>,
    /// SCRAM-SHA-512 credentials, as printed by `sluice scram-credential
    /// --mechanism SCRAM-SHA-512`.
    #[serde(default)]
    pub scram_sha_512: String,
    /// A file holding `scram_sha_512` instead.
    #[serde(default)]
    pub scram_sha_512_file: Option<std::path::PathBuf>,
    /// Topics this user may produce to: names, `prefix*` patterns, or
    /// `"*"` (default, every topic); `[]` makes a consume-only user.
    #[serde(default = "every_topic")]
    pub produce: Vec<String>,
    /// Topics this user may fetch from, list offsets of and commit group
    /// offsets for (same patterns). Default `["*"]`.
    #[serde(default = "every_topic")]
    pub consume: Vec<String>,
}

impl std::fmt::Debug for KafkaUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaUser")
            .field("name", &self.name)
            .field("password_hash_file", &self.password_hash_file)
            .field("scram_sha_256_file", &self.scram_sha_256_file)
            .field("scram_sha_512_file", &self.scram_sha_512_file)
            .field("produce", &self.produce)
            .field("consume", &self.consume)
            .finish()
    }
}

fn every_topic() -> Vec<String> {
    vec!["*".to_owned()]
}

/// A SCRAM hash function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512.
    Sha512,
}

impl ScramHash {
    /// The SASL mechanism name, e.g. `SCRAM-SHA-256`.
    pub const fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Bytes of the hash (and of StoredKey and ServerKey).
    pub const fn output_len(self) -> usize {
        match self {
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        }
    }

    fn field(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "scram_sha_256",
            ScramHash::Sha512 => "scram_sha_512",
        }
    }
}

/// Salted SCRAM credentials of one user for one hash function.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// Which hash.
    pub hash: ScramHash,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// The salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .finish()
    }
}

impl std::fmt::Display for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        write!(
            f,
            "{}${}:{}${}:{}",
            self.hash.mechanism(),
            self.iterations,
            b64(&self.salt),
            b64(&self.stored_key),
            b64(&self.server_key)
        )
    }
}

impl ScramCredential {
    /// Parses `SCRAM-SHA-xxx$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// for `hash`.
    pub fn parse(hash: ScramHash, text: &str) -> Result<ScramCredential, String> {
        let how = format!("make one with `sluice scram-credential --mechanism {}`", hash.mechanism());
        let shape =
            || format!("is not {}$<iterations>:<salt>$<StoredKey>:<ServerKey>; {how}", hash.mechanism());
        let mut parts = text.split('$');
        let (Some(mech), Some(salted), Some(keys), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(shape());
        };
        if mech != hash.mechanism() {
            return Err(format!("starts with {mech:?}, not {:?}; {how}", hash.mechanism()));
        }
        let ((Some(iterations), Some(salt)), (Some(stored), Some(server))) = (split2(salted), split2(keys))
        else {
            return Err(shape());
        };
        let iterations: u32 =
            iterations.parse().map_err(|_| format!("iterations {iterations:?} is not a number"))?;
        if iterations < MIN_SCRAM_ITERATIONS {
            return Err(format!("has {iterations} iterations; use at least {MIN_SCRAM_ITERATIONS}"));
        }
        let b64 = |what: &str, s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("{what} is not base64 ({e})"))
        };
        let salt = b64("the salt", salt)?;
        if salt.is_empty() {
            return Err(format!("has an empty salt; {how}"));
        }
        let (stored_key, server_key) = (b64("StoredKey", stored)?, b64("ServerKey", server)?);
        if stored_key.len() != hash.output_len() || server_key.len() != hash.output_len() {
            return Err(format!(
                "StoredKey and ServerKey must be {} bytes each for {}",
                hash.output_len(),
                hash.mechanism()
            ));
        }
        Ok(ScramCredential { hash, iterations, salt, stored_key, server_key })
    }
}

fn split2(s: &str) -> (Option<&str>, Option<&str>) {
    match s.split_once(':') {
        Some((a, b)) => (Some(a), Some(b)),
        None => (None, None),
    }
}

/// Whether `pattern` (a topic name, `prefix*`, or `*`) matches `topic`.
pub fn topic_pattern_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => pattern == topic,
    }
}

fn check_topic_pattern(pattern: &str) -> Result<(), String> {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    if name.is_empty() {
        return if pattern.is_empty() {
            Err("is empty; give a topic name, prefix* or \"*\"".into())
        } else {
            Ok(())
        };
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!(
            "has {c:?}: give a topic name (A-Z a-z 0-9 . _ -), a prefix ending in * (\"plant.*\"), or \"*\""
        ));
    }
    Ok(())
}

/// Secrets of `[[kafka.users]]` for [`crate::secrets`]: (field, value,
/// file) per secret.
pub(crate) fn secrets(users: &mut [KafkaUser]) -> Vec<(String, &mut String, Option<&std::path::Path>)> {
    let labels = entry_labels("kafka.users", users.iter().map(|u| Some(u.name.as_str())));
    let mut out = Vec::new();
    for (u, label) in users.iter_mut().zip(labels) {
        out.push((format!("{label}.password_hash"), &mut u.password_hash, u.password_hash_file.as_deref()));
        out.push((format!("{label}.scram_sha_256"), &mut u.scram_sha_256, u.scram_sha_256_file.as_deref()));
        out.push((format!("{label}.scram_sha_512"), &mut u.scram_sha_512, u.scram_sha_512_file.as_deref()));
    }
    out
}

/// Problems of `kafka.sasl` and `[[kafka.users]]`.
pub(crate) fn problems(cfg: &Config) -> Vec<FieldError> {
    let mut out = Vec::new();
    let mut add = |field: String, message: String| out.push(FieldError { field, message });
    let kafka = &cfg.kafka;
    let mut offered: HashMap<&str, usize> = HashMap::new();
    for (i, m) in kafka.sasl.iter().enumerate() {
        if !SASL_MECHANISMS.contains(&m.as_str()) {
            add(
                format!("kafka.sasl[{i}]"),
                format!("{m:?} is not a mechanism sluice serves; use {}", SASL_MECHANISMS.join(", ")),
            );
        } else if let Some(first) = offered.insert(m, i) {
            add(format!("kafka.sasl[{i}]"), format!("{m:?} is listed twice (also kafka.sasl[{first}])"));
        }
    }
    if !kafka.sasl.is_empty() && kafka.users.is_empty() {
        add(
            "kafka.users".into(),
            "is empty but kafka.sasl is set, so every client would be refused; add [[kafka.users]]".into(),
        );
    }
    if kafka.sasl.is_empty() && !kafka.users.is_empty() {
        add(
            "kafka.sasl".into(),
            "is empty but [[kafka.users]] are configured; list the mechanisms to offer, e.g. [\"SCRAM-SHA-256\"]".into(),
        );
    }
    if !kafka.sasl.is_empty() && kafka.listen.is_none() {
        add(
            "kafka.sasl".into(),
            "is set but kafka.listen is not; set kafka.listen to turn the Kafka listener on".into(),
        );
    }
    let labels = entry_labels("kafka.users", kafka.users.iter().map(|u| Some(u.name.as_str())));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut has = HashMap::from([("SCRAM-SHA-256", false), ("SCRAM-SHA-512", false)]);
    for (i, (u, label)) in kafka.users.iter().zip(&labels).enumerate() {
        if u.name.is_empty() {
            add(format!("{label}.name"), "is empty; give the SASL user name".into());
        } else if let Some(first) = seen.insert(&u.name, i) {
            add(
                format!("{label}.name"),
                format!("{:?} is defined twice (also kafka.users[{first}])", u.name),
            );
        }
        let mut any = false;
        // A secret given by file is read by Config::load and checked once it is.
        if !u.password_hash.is_empty() {
            any = true;
            if let Err(e) = check_password_hash(&u.password_hash) {
                add(format!("{label}.password_hash"), e);
            }
        }
        any |= u.password_hash_file.is_some();
        for (hash, text, file) in [
            (ScramHash::Sha256, &u.scram_sha_256, &u.scram_sha_256_file),
            (ScramHash::Sha512, &u.scram_sha_512, &u.scram_sha_512_file),
        ] {
            if !text.is_empty() || file.is_some() {
                any = true;
                if let Some(h) = has.get_mut(hash.mechanism()) {
                    *h = true;
                }
            }
            if !text.is_empty() {
                if let Err(e) = ScramCredential::parse(hash, text) {
                    add(format!("{label}.{}", hash.field()), e);
                }
            }
        }
        if !any {
            add(
                label.clone(),
                "has no credentials; give password_hash (PLAIN), scram_sha_256 or scram_sha_512".into(),
            );
        }
        for (field, patterns) in [("produce", &u.produce), ("consume", &u.consume)] {
            for (j, p) in patterns.iter().enumerate() {
                if let Err(e) = check_topic_pattern(p) {
                    add(format!("{label}.{field}[{j}]"), format!("{p:?} {e}"));
                }
            }
        }
    }
    for (i, m) in kafka.sasl.iter().enumerate() {
        if has.get(m.as_str()) == Some(&false) && !kafka.users.is_empty() {
            let field = if m == "SCRAM-SHA-256" { "scram_sha_256" } else { "scram_sha_512" };
            add(
                format!("kafka.sasl[{i}]"),
                format!("{m} is offered but no [[kafka.users]] has {field}; add it or remove {m}"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<String> {
        match Config::from_toml_str(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(|p| format!("{}: {}", p.field, p.message)).collect(),
        }
    }

    const SALT: &str = "c2FsdHNhbHQ=";
    fn scram(hash: ScramHash, iterations: u32) -> String {
        let key = base64::engine::general_purpose::STANDARD.encode(vec![7u8; hash.output_len()]);
        format!("{}${iterations}:{SALT}${key}:{key}", hash.mechanism())
    }

    #[test]
    fn scram_credentials_round_trip_and_bad_ones_say_why() {
        let text = scram(ScramHash::Sha512, 4096);
        let c = ScramCredential::parse(ScramHash::Sha512, &text).expect("parses");
        assert_eq!((c.iterations, c.salt.as_slice(), c.stored_key.len()), (4096, &b"saltsalt"[..], 64));
        assert_eq!(c.to_string(), text);
        let err = |h, t: &str| ScramCredential::parse(h, t).expect_err(t);
        assert!(err(ScramHash::Sha256, &text).contains("not \"SCRAM-SHA-256\""));
        assert!(err(ScramHash::Sha256, &scram(ScramHash::Sha256, 100)).contains("at least 4096"));
        assert!(err(ScramHash::Sha256, "SCRAM-SHA-256$4096").contains("<iterations>:<salt>"));
        assert!(err(ScramHash::Sha256, &format!("SCRAM-SHA-256$4096:{SALT}$AAAA:AAAA")).contains("32 bytes"));
    }

    #[test]
    fn topic_patterns() {
        assert!(topic_pattern_matches("*", "a"));
        assert!(topic_pattern_matches("plant.*", "plant.temp"));
        assert!(!topic_pattern_matches("plant.*", "plan"));
        assert!(topic_pattern_matches("alarms", "alarms"));
        assert!(!topic_pattern_matches("alarms", "alarms2"));
        assert!(check_topic_pattern("a/b").is_err());
        assert!(check_topic_pattern("").is_err());
        assert!(check_topic_pattern("x*").is_ok());
    }

    #[test]
    fn sasl_problems_name_the_field() {
        let base = "[kafka]\nlisten = \"127.0.0.1:0\"\n";
        assert_eq!(
            problems_of(&format!("{base}sasl = [\"PLAIN\", \"GSSAPI\", \"PLAIN\"]\n")),
            [
                "kafka.sasl[1]: \"GSSAPI\" is not a mechanism sluice serves; use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
                "kafka.sasl[2]: \"PLAIN\" is listed twice (also kafka.sasl[0])",
                "kafka.users: is empty but kafka.sasl is set, so every client would be refused; add [[kafka.users]]",
            ]
        );
        let user = format!(
            "{base}sasl = [\"SCRAM-SHA-512\"]\n[[kafka.users]]\nname = \"a\"\nscram_sha_256 = \"{}\"\nproduce = [\"a/b\"]\n\
             [[kafka.users]]\nname = \"b\"\n",
            scram(ScramHash::Sha256, 1)
        );
        assert_eq!(
            problems_of(&user),
            [
                "kafka.users[\"a\"].scram_sha_256: has 1 iterations; use at least 4096",
                "kafka.users[\"a\"].produce[0]: \"a/b\" has '/': give a topic name (A-Z a-z 0-9 . _ -), a prefix ending in * (\"plant.*\"), or \"*\"",
                "kafka.users[\"b\"]: has no credentials; give password_hash (PLAIN), scram_sha_256 or scram_sha_512",
                "kafka.sasl[0]: SCRAM-SHA-512 is offered but no [[kafka.users]] has scram_sha_512; add it or remove SCRAM-SHA-512",
            ]
        );
        let ok = format!(
            "{base}sasl = [\"SCRAM-SHA-256\", \"PLAIN\"]\n[[kafka.users]]\nname = \"a\"\nscram_sha_256 = \"{}\"\n",
            scram(ScramHash::Sha256, 4096)
        );
        assert_eq!(problems_of(&ok), Vec::<String>::new());
    }
}
