//! Who may use the Kafka listener (`kafka.sasl`, `[[kafka.users]]`): the
//! users in force (replaced by a reload), their credentials, and the
//! topics each may produce to and consume from.
//!
//! PLAIN passwords are checked off the reactor (argon2id costs tens of ms
//! on purpose; a PBKDF2 over SCRAM credentials a few), at most
//! [`CHECKS`] at a time; successes are cached by (user, SHA-256 of the
//! password) until the next reload, so reconnecting clients cost nothing.
//! SCRAM needs no slow work on the server.

use super::sasl;
use crate::mqtt::auth::UsersReloaded;
use sha2::{Digest as _, Sha256};
use sluice_config::{topic_pattern_matches, KafkaConfig, ScramCredential, ScramHash};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// Password checks (PLAIN) running at once; more wait.
pub(super) const CHECKS: usize = 2;
/// Cached successful PLAIN (user, password digest) pairs.
const CACHE: usize = 4096;

/// A SASL mechanism sluice serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mechanism {
    /// PLAIN.
    Plain,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    Scram(ScramHash),
}

impl Mechanism {
    fn parse(name: &str) -> Option<Mechanism> {
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "SCRAM-SHA-256" => Some(Mechanism::Scram(ScramHash::Sha256)),
            "SCRAM-SHA-512" => Some(Mechanism::Scram(ScramHash::Sha512)),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(h) => h.mechanism(),
        }
    }
}

/// The topics a connection may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Access {
    produce: Vec<String>,
    consume: Vec<String>,
}

impl Access {
    /// Everything (no SASL).
    pub(super) fn all() -> Arc<Access> {
        Arc::new(Access { produce: vec!["*".into()], consume: vec!["*".into()] })
    }

    /// May produce to `topic` (and create it).
    pub(super) fn may_produce(&self, topic: &str) -> bool {
        self.produce.iter().any(|p| topic_pattern_matches(p, topic))
    }

    /// May fetch, list offsets, commit and fetch group offsets of `topic`.
    pub(super) fn may_consume(&self, topic: &str) -> bool {
        self.consume.iter().any(|p| topic_pattern_matches(p, topic))
    }

    /// May see `topic` in Metadata and DescribeConfigs.
    pub(super) fn may_describe(&self, topic: &str) -> bool {
        self.may_produce(topic) || self.may_consume(topic)
    }
}

/// One configured user.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Account {
    pub(super) name: Arc<str>,
    password_hash: Option<String>,
    scram: Vec<ScramCredential>,
    pub(super) access: Arc<Access>,
}

impl Account {
    #[cfg(test)]
    pub(super) fn for_tests(name: &str) -> Account {
        Account { name: Arc::from(name), password_hash: None, scram: Vec::new(), access: Access::all() }
    }
}

type Users = HashMap<String, Arc<Account>>;

fn users_of(cfg: &KafkaConfig) -> Users {
    cfg.users
        .iter()
        .map(|u| {
            let scram = [(ScramHash::Sha256, &u.scram_sha_256), (ScramHash::Sha512, &u.scram_sha_512)]
                .into_iter()
                .filter(|(_, t)| !t.is_empty())
                // Validated by the configuration; one that does not parse is left out.
                .filter_map(|(h, t)| ScramCredential::parse(h, t).ok())
                .collect();
            let account = Account {
                name: Arc::from(u.name.as_str()),
                password_hash: Some(u.password_hash.clone()).filter(|h| !h.is_empty()),
                scram,
                access: Arc::new(Access { produce: u.produce.clone(), consume: u.consume.clone() }),
            };
            (u.name.clone(), Arc::new(account))
        })
        .collect()
}

/// The SASL mechanisms and users of the listener.
#[derive(Debug)]
pub struct Accounts {
    mechanisms: Vec<Mechanism>,
    users: RwLock<Arc<Users>>,
    verified: Mutex<HashSet<(Arc<str>, [u8; 32])>>,
    checks: tokio::sync::Semaphore,
}

impl Accounts {
    /// From `[kafka]`; `None` when no SASL is offered.
    pub fn new(cfg: &KafkaConfig) -> Option<Arc<Accounts>> {
        if cfg.sasl.is_empty() {
            return None;
        }
        Some(Arc::new(Accounts {
            mechanisms: cfg.sasl.iter().filter_map(|m| Mechanism::parse(m)).collect(),
            users: RwLock::new(Arc::new(users_of(cfg))),
            verified: Mutex::new(HashSet::new()),
            checks: tokio::sync::Semaphore::new(CHECKS),
        }))
    }

    /// The mechanisms offered, in the configured order.
    pub(super) fn mechanisms(&self) -> &[Mechanism] {
        &self.mechanisms
    }

    /// The mechanism called `name`, if offered.
    pub(super) fn offered(&self, name: &str) -> Option<Mechanism> {
        Mechanism::parse(name).filter(|m| self.mechanisms.contains(m))
    }

    fn snapshot(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The user `name` as now configured (`None` once a reload removed it).
    pub(super) fn get(&self, name: &str) -> Option<Arc<Account>> {
        self.snapshot().get(name).cloned()
    }

    /// The account and its SCRAM credentials of `hash`.
    pub(super) fn scram(&self, name: &str, hash: ScramHash) -> Option<(Arc<Account>, ScramCredential)> {
        let account = self.get(name)?;
        let cred = account.scram.iter().find(|c| c.hash == hash)?.clone();
        Some((account, cred))
    }

    /// Checks a PLAIN password: the account when it matches.
    pub(super) async fn check_plain(&self, name: &str, password: &str) -> Option<Arc<Account>> {
        let account = self.get(name)?;
        let key = (account.name.clone(), <[u8; 32]>::from(Sha256::digest(password.as_bytes())));
        if self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&key) {
            return Some(account);
        }
        let _permit = self.checks.acquire().await.ok()?;
        let (acc, pw) = (account.clone(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || match &acc.password_hash {
            Some(hash) => crate::mqtt::auth::verify_password(hash, &pw),
            None => acc.scram.first().is_some_and(|c| sasl::scram_matches(c, &pw)),
        })
        .await
        .unwrap_or(false);
        if !ok {
            return None;
        }
        let mut verified = self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if verified.len() >= CACHE {
            verified.clear();
        }
        verified.insert(key);
        Some(account)
    }

    /// Replaces the users with those of `cfg` (a reload). Connections of
    /// removed users are closed at their next request; the others keep
    /// their session and see changed topics at once. Refused, keeping the
    /// users in force, when the mechanisms change: that needs a restart.
    pub fn reload(&self, cfg: &KafkaConfig) -> Result<UsersReloaded, String> {
        let mechanisms: Vec<Mechanism> = cfg.sasl.iter().filter_map(|m| Mechanism::parse(m)).collect();
        if mechanisms != self.mechanisms {
            return Err(
                "kafka.sasl: changing the SASL mechanisms needs a restart (the Kafka users in force stay)"
                    .to_owned(),
            );
        }
        let new = users_of(cfg);
        let mut current = self.users.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut r = UsersReloaded::default();
        for (name, u) in &new {
            match current.get(name) {
                None => r.added += 1,
                Some(old) if **old != **u => r.changed += 1,
                Some(_) => {}
            }
        }
        r.removed = current.keys().filter(|n| !new.contains_key(*n)).count();
        *current = Arc::new(new);
        drop(current);
        self.verified.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(users: &str) -> KafkaConfig {
        let hash = crate::mqtt::auth::hash_password("pw").expect("hash");
        let cred = sasl::derive_credential(ScramHash::Sha256, "pw", b"salty".to_vec(), 4096);
        let text = format!(
            "[kafka]\nlisten = \"127.0.0.1:0\"\nsasl = [\"PLAIN\", \"SCRAM-SHA-256\"]\n\
             [[kafka.users]]\nname = \"a\"\npassword_hash = \"{hash}\"\nscram_sha_256 = \"{cred}\"\n{users}"
        );
        sluice_config::Config::from_toml_str(&text).expect("config").kafka
    }

    #[tokio::test]
    async fn plain_checks_argon2_or_scram_and_reload_replaces_users() {
        let scram_only = sasl::derive_credential(ScramHash::Sha256, "pw-b", b"salt-b".to_vec(), 4096);
        let cfg = kafka(&format!(
            "[[kafka.users]]\nname = \"b\"\nscram_sha_256 = \"{scram_only}\"\nproduce = []\n"
        ));
        let accounts = Accounts::new(&cfg).expect("SASL on");
        assert!(accounts.offered("SCRAM-SHA-256").is_some() && accounts.offered("SCRAM-SHA-512").is_none());
        assert!(accounts.check_plain("a", "pw").await.is_some(), "argon2id");
        assert!(accounts.check_plain("a", "pw").await.is_some(), "cached");
        assert!(accounts.check_plain("a", "bad").await.is_none());
        let b = accounts.check_plain("b", "pw-b").await.expect("PLAIN against SCRAM credentials");
        assert!(!b.access.may_produce("x") && b.access.may_consume("x"));
        assert!(accounts.check_plain("nobody", "pw").await.is_none());
        // b removed, c added, a unchanged.
        let r = accounts
            .reload(&kafka("[[kafka.users]]\nname = \"c\"\npassword_hash_file = \"x\"\n"))
            .expect("reloads");
        assert_eq!((r.added, r.removed, r.changed), (1, 1, 1), "a's hash is new (fresh salt)");
        assert!(accounts.get("b").is_none() && accounts.get("c").is_some());
        let mut other = cfg.clone();
        other.sasl = vec!["PLAIN".into()];
        assert!(accounts.reload(&other).expect_err("mechanisms changed").contains("needs a restart"));
        assert!(accounts.get("c").is_some(), "the users in force stay");
    }
}
