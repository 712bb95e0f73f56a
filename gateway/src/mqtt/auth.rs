//! MQTT authentication: users with argon2id password hashes, checked
//! without stalling the broker.
//!
//! rumqttd calls its external auth hook as an async function on the
//! listener's thread, which is a single-threaded runtime serving every
//! connection of that listener; an argon2 verification (tens of ms, on
//! purpose) run there would stall all of them. So:
//!
//! - Cheap decisions are taken when the CONNECT is parsed
//!   ([`Guard::on_connect`], called by [`super::guarded`]): no credentials,
//!   unknown user, or a (user, SHA-256 of password) pair whose verdict is
//!   cached. Refusals here get a proper CONNACK code.
//! - Everything else is handed through a ticket to the hook, which queues
//!   the verification on one dedicated thread and awaits the answer. At
//!   most [`QUEUE`] verifications wait; beyond that CONNECTs are refused at
//!   once, so a flood of bad CONNECTs costs at most one core and a bounded
//!   queue. Queued jobs for an already-cached pair cost nothing.
//! - Verdicts are cached by (user, SHA-256 of password): successes (up to
//!   [`CACHE`] pairs) and failures (separately, so failures cannot push
//!   successes out). Plain passwords are never kept.
//!
//! A refusal decided by the hook closes the connection without a CONNACK:
//! rumqttd's hook can only say yes or no, and "no" drops the socket. The
//! same password tried again is answered from the cache, with CONNACK
//! "bad user name or password".

use super::MqttStats;
use argon2::{Argon2, PasswordHash, PasswordVerifier as _};
use sha2::{Digest as _, Sha256};
use sluice_config::MqttConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Verifications that may wait for the verifier thread.
pub const QUEUE: usize = 256;
/// Cached successful (user, password digest) pairs; and as many failures.
pub const CACHE: usize = 4096;
/// Prefix of the stand-in password the hook receives.
const TICKET: &str = "\u{0}sluice-ticket:";

/// Publish permission: MQTT filters a client may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    filters: Vec<String>,
}

impl Acl {
    /// From validated filters; `None` when they allow everything (`#`).
    pub fn restricting(filters: &[String]) -> Option<Arc<Acl>> {
        (!filters.iter().any(|f| f == "#")).then(|| Arc::new(Acl { filters: filters.to_vec() }))
    }

    /// Whether a publish to `topic` is allowed.
    pub fn allows(&self, topic: &str) -> bool {
        self.filters.iter().any(|f| sluice_config::mqtt_filter_matches(f, topic))
    }

    /// Whether a subscription to `filter` is allowed: everything it can
    /// match lies within the filters.
    pub fn covers(&self, filter: &str) -> bool {
        self.filters.iter().any(|f| sluice_config::mqtt_filter_covers(f, filter))
    }
}

/// Why a CONNECT is refused (the CONNACK code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credentials and anonymous access is off: "not authorized".
    NoCredentials,
    /// Unknown user or wrong password: "bad user name or password".
    BadCredentials,
}

/// What to do with a CONNECT, decided while parsing it.
#[derive(Debug)]
pub enum Admission {
    /// Let it in; the hook (if installed) gets `ticket` as the password.
    Accept { ticket: Option<String>, user: Option<Arc<str>>, acl: Option<Arc<Acl>> },
    /// Refuse with a CONNACK code; the hook gets `ticket` (it says yes, so
    /// that rumqttd reaches the point where it answers with a CONNACK).
    Refuse { ticket: Option<String>, why: Refusal },
    /// Let the hook verify; `acl` applies if it says yes.
    Verify { ticket: String, user: Arc<str>, acl: Option<Arc<Acl>> },
}

struct User {
    hash: String,
    acl: Option<Arc<Acl>>,
    subscribe: Option<Arc<Acl>>,
    name: Arc<str>,
}

enum Ticket {
    Pass,
    Verify { user: Arc<str>, password: String },
}

struct Job {
    user: Arc<str>,
    password: String,
    reply: oneshot::Sender<bool>,
}

type Key = (Arc<str>, [u8; 32]);

#[derive(Default)]
struct Verdicts {
    good: HashMap<Key, ()>,
    bad: HashMap<Key, ()>,
}

impl Verdicts {
    fn get(&self, key: &Key) -> Option<bool> {
        if self.good.contains_key(key) {
            Some(true)
        } else if self.bad.contains_key(key) {
            Some(false)
        } else {
            None
        }
    }

    fn put(&mut self, key: Key, ok: bool) {
        let map = if ok { &mut self.good } else { &mut self.bad };
        if map.len() >= CACHE {
            map.clear();
        }
        map.insert(key, ());
    }
}

/// The users and anonymous rules in force (replaced by a reload).
struct Users {
    users: HashMap<String, User>,
    anonymous: bool,
    anonymous_acl: Option<Arc<Acl>>,
    anonymous_subscribe: Option<Arc<Acl>>,
}

impl Users {
    fn new(mqtt: &MqttConfig) -> Users {
        let users = mqtt
            .users
            .iter()
            .map(|u| {
                let user = User {
                    hash: u.password_hash.clone(),
                    acl: Acl::restricting(&u.publish),
                    subscribe: Acl::restricting(&u.subscribe),
                    name: Arc::from(u.name.as_str()),
                };
                (u.name.clone(), user)
            })
            .collect();
        Users {
            users,
            anonymous: mqtt.anonymous_allowed(),
            anonymous_acl: Acl::restricting(&mqtt.anonymous_publish),
            anonymous_subscribe: Acl::restricting(&mqtt.anonymous_subscribe),
        }
    }
}

/// What a reload of the MQTT users changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsersReloaded {
    /// Users that are new.
    pub added: usize,
    /// Users that are gone (their connections are closed).
    pub removed: usize,
    /// Users whose password or filters changed (their open connections
    /// keep the filters they connected with; new ones get the new ones).
    pub changed: usize,
}

/// Users, publish permissions and the verifier; shared by every listener.
pub struct Guard {
    current: std::sync::RwLock<Users>,
    /// Bumped by every reload of the users (connections of a removed user
    /// watch it and close).
    generation: tokio::sync::watch::Sender<u64>,
    verdicts: Mutex<Verdicts>,
    tickets: Mutex<HashMap<u64, Ticket>>,
    next_ticket: AtomicU64,
    jobs: Option<SyncSender<Job>>,
    /// Counters (refusals, not-allowed publishes).
    pub stats: Arc<MqttStats>,
    /// Rate limit of the "publish not allowed" warning.
    pub warn_limit: crate::metrics::LogLimit,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let u = self.users();
        f.debug_struct("Guard").field("users", &u.users.len()).field("anonymous", &u.anonymous).finish()
    }
}

impl Guard {
    /// From the `[mqtt]` section; starts the verifier thread when users are
    /// configured.
    pub fn new(mqtt: &MqttConfig, stats: Arc<MqttStats>) -> std::io::Result<Arc<Guard>> {
        let users = Users::new(mqtt);
        let (jobs, rx) = if users.users.is_empty() {
            (None, None)
        } else {
            let (tx, rx) = sync_channel::<Job>(QUEUE);
            (Some(tx), Some(rx))
        };
        let guard = Arc::new(Guard {
            current: std::sync::RwLock::new(users),
            generation: tokio::sync::watch::channel(0).0,
            verdicts: Mutex::new(Verdicts::default()),
            tickets: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(0),
            jobs,
            stats,
            warn_limit: crate::metrics::LogLimit::new(std::time::Duration::from_secs(1)),
        });
        if let Some(rx) = rx {
            // The thread holds only a weak reference, so it ends with the
            // last listener's guard (the channel closes).
            let weak = Arc::downgrade(&guard);
            std::thread::Builder::new().name("sluice-mqtt-auth".into()).spawn(move || {
                for job in rx {
                    let Some(guard) = weak.upgrade() else { break };
                    let ok = guard.verify_now(&job.user, &job.password);
                    let _ = job.reply.send(ok);
                }
            })?;
        }
        Ok(guard)
    }

    /// Whether CONNECTs need credentials checked (users are configured).
    pub fn authenticates(&self) -> bool {
        self.jobs.is_some()
    }

    fn users(&self) -> std::sync::RwLockReadGuard<'_, Users> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the users and the anonymous rules with those of `mqtt`
    /// (a reload): new CONNECTs are checked against them at once, cached
    /// password verdicts are dropped, and connections of removed users are
    /// closed (see [`Guard::watch_users`]). Refused, keeping the users in
    /// force, when it would switch authentication on or off (the first
    /// user added, the last removed): that needs a restart.
    pub fn reload(&self, mqtt: &MqttConfig) -> Result<UsersReloaded, String> {
        let new = Users::new(mqtt);
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if new.users.is_empty() != current.users.is_empty() {
            return Err(format!(
                "mqtt.users: switching MQTT authentication {} needs a restart (the users in force stay)",
                if new.users.is_empty() { "off (no user left)" } else { "on (the first user)" }
            ));
        }
        let mut r = UsersReloaded::default();
        for (name, u) in &new.users {
            match current.users.get(name) {
                None => r.added += 1,
                Some(old) if old.hash != u.hash || old.acl != u.acl || old.subscribe != u.subscribe => {
                    r.changed += 1
                }
                Some(_) => {}
            }
        }
        r.removed = current.users.keys().filter(|n| !new.users.contains_key(*n)).count();
        *current = new;
        drop(current);
        *self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Verdicts::default();
        self.generation.send_modify(|g| *g += 1);
        Ok(r)
    }

    /// Changes with every reload of the users.
    pub fn watch_users(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether `name` is a configured user.
    pub fn has_user(&self, name: &str) -> bool {
        self.users().users.contains_key(name)
    }

    /// The publish and subscribe filters of a client the broker accepted
    /// with `username`; `None` allows everything.
    pub fn acls_for(&self, username: Option<&str>) -> (Option<Arc<Acl>>, Option<Arc<Acl>>) {
        match username.filter(|u| !u.is_empty()) {
            // Accepted, so the user exists; if not, nothing is allowed.
            Some(name) if self.authenticates() => match self.users().users.get(name) {
                Some(user) => (user.acl.clone(), user.subscribe.clone()),
                None => {
                    let nothing = Some(Arc::new(Acl { filters: Vec::new() }));
                    (nothing.clone(), nothing)
                }
            },
            _ => {
                let u = self.users();
                (u.anonymous_acl.clone(), u.anonymous_subscribe.clone())
            }
        }
    }

    /// Counts (and logs, rate-limited) a publish or will message outside
    /// the publish filters of `user`.
    pub fn not_allowed(&self, user: Option<&str>, what: &str, topic: &[u8]) {
        self.stats.dropped_not_allowed.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.warn_limit.allow() {
            tracing::warn!(
                user = user.unwrap_or("<anonymous>"),
                topic = %String::from_utf8_lossy(topic),
                suppressed,
                "MQTT {what} outside the user's publish filters: not stored"
            );
        }
    }

    /// Decides what to do with a CONNECT carrying `login` (user, password).
    pub fn on_connect(&self, login: Option<(&str, &str)>) -> Admission {
        let users = self.users();
        let anonymous = || Admission::Accept { ticket: None, user: None, acl: users.anonymous_acl.clone() };
        if !self.authenticates() {
            return anonymous();
        }
        let pass = || Some(self.ticket(Ticket::Pass));
        let (name, password) = match login {
            Some((name, password)) if !name.is_empty() => (name, password),
            _ if users.anonymous => {
                return Admission::Accept { ticket: pass(), user: None, acl: users.anonymous_acl.clone() }
            }
            _ => return Admission::Refuse { ticket: pass(), why: Refusal::NoCredentials },
        };
        let Some(user) = users.users.get(name) else {
            return Admission::Refuse { ticket: pass(), why: Refusal::BadCredentials };
        };
        match self.cached(&user.name, password) {
            Some(true) => {
                Admission::Accept { ticket: pass(), user: Some(user.name.clone()), acl: user.acl.clone() }
            }
            Some(false) => Admission::Refuse { ticket: pass(), why: Refusal::BadCredentials },
            None => Admission::Verify {
                ticket: self
                    .ticket(Ticket::Verify { user: user.name.clone(), password: password.to_owned() }),
                user: user.name.clone(),
                acl: user.acl.clone(),
            },
        }
    }

    /// The external auth hook: redeems the ticket [`Guard::on_connect`]
    /// put in place of the password.
    pub async fn hook(self: Arc<Self>, client_id: String, password: String) -> bool {
        let Some(ticket) = password.strip_prefix(TICKET).and_then(|n| n.parse::<u64>().ok()) else {
            return false;
        };
        let ticket = self.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&ticket);
        let (user, password) = match ticket {
            None => return false,
            Some(Ticket::Pass) => return true,
            Some(Ticket::Verify { user, password }) => (user, password),
        };
        let Some(jobs) = &self.jobs else { return false };
        let (reply, answer) = oneshot::channel();
        match jobs.try_send(Job { user: user.clone(), password, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(user = %user, client_id, "MQTT CONNECT refused: too many password checks waiting");
                return false;
            }
        }
        let ok = answer.await.unwrap_or(false);
        if !ok {
            self.stats.refused_bad_credentials.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(user = %user, client_id, "MQTT CONNECT refused: wrong password");
        }
        ok
    }

    fn ticket(&self, ticket: Ticket) -> String {
        let n = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let mut tickets = self.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Every ticket is redeemed right after the CONNECT is parsed; this
        // bound only matters if rumqttd ever skipped the hook.
        if tickets.len() >= QUEUE * 16 {
            tickets.clear();
        }
        tickets.insert(n, ticket);
        format!("{TICKET}{n}")
    }

    fn cached(&self, user: &Arc<str>, password: &str) -> Option<bool> {
        let key = (user.clone(), digest(password));
        self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&key)
    }

    /// Verifies on the calling thread (the verifier), through the cache.
    fn verify_now(&self, user: &Arc<str>, password: &str) -> bool {
        if let Some(ok) = self.cached(user, password) {
            return ok;
        }
        let hash = self.users().users.get(&**user).map(|u| u.hash.clone());
        let ok = hash.is_some_and(|h| verify_password(&h, password));
        let key = (user.clone(), digest(password));
        self.verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).put(key, ok);
        ok
    }
}

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

/// Checks `password` against a PHC argon2id string (parameters from the
/// string). A malformed hash verifies nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Hashes a password for the configuration: argon2id with the crate's
/// default cost (19 MiB, 2 passes, 1 lane) and a random salt.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::PasswordHasher as _;
    let salt = password_hash::SaltString::generate(&mut password_hash::rand_core::OsRng);
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_matches_filters_and_hash_means_everything() {
        let acl = Acl::restricting(&["plant/+/temp".to_owned(), "alarms/#".to_owned()]).expect("restricts");
        assert!(acl.allows("plant/dev-1/temp"));
        assert!(acl.allows("alarms"));
        assert!(acl.allows("alarms/a/b"));
        assert!(!acl.allows("plant/dev-1/hum"));
        assert!(!acl.allows("plant/dev-1/temp/x"));
        assert!(!acl.allows("$SYS/x"));
        assert!(Acl::restricting(&["a".to_owned(), "#".to_owned()]).is_none());
        let none = Acl::restricting(&[]).expect("restricts");
        assert!(!none.allows("a"));
    }

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        sluice_config::check_password_hash(&hash).expect("config accepts it");
        assert!(verify_password(&hash, "s3cret"));
        assert!(!verify_password(&hash, "s3cret "));
        assert!(!verify_password("not a hash", "s3cret"));
    }

    fn guard(extra: &str) -> Arc<Guard> {
        let hash = hash_password("pw").expect("hash");
        let text = format!(
            "[mqtt]\n{extra}\n[[mqtt.users]]\nname = \"u\"\npassword_hash = \"{hash}\"\npublish = [\"p/#\"]\n"
        );
        let cfg = sluice_config::Config::from_toml_str(&text).expect("config");
        Guard::new(&cfg.mqtt, Arc::default()).expect("guard")
    }

    #[tokio::test]
    async fn connect_decisions_and_tickets() {
        let g = guard("");
        assert!(matches!(g.on_connect(None), Admission::Refuse { why: Refusal::NoCredentials, .. }));
        assert!(matches!(
            g.on_connect(Some(("x", "pw"))),
            Admission::Refuse { why: Refusal::BadCredentials, .. }
        ));
        let Admission::Verify { ticket, acl, .. } = g.on_connect(Some(("u", "pw"))) else { panic!("verify") };
        assert!(acl.expect("restricted").allows("p/1"));
        // A forged or reused ticket is worth nothing.
        assert!(!g.clone().hook("c".into(), "pw".into()).await);
        assert!(g.clone().hook("c".into(), ticket.clone()).await);
        assert!(!g.clone().hook("c".into(), ticket).await);
        // Now cached, both ways.
        assert!(matches!(g.on_connect(Some(("u", "pw"))), Admission::Accept { .. }));
        let Admission::Verify { ticket, .. } = g.on_connect(Some(("u", "bad"))) else { panic!("verify") };
        assert!(!g.clone().hook("c".into(), ticket).await);
        assert!(matches!(
            g.on_connect(Some(("u", "bad"))),
            Admission::Refuse { why: Refusal::BadCredentials, .. }
        ));
        let open = guard("allow_anonymous = true\nanonymous_publish = []");
        let Admission::Accept { user: None, acl: Some(acl), .. } = open.on_connect(Some(("", ""))) else {
            panic!("anonymous accepted")
        };
        assert!(!acl.allows("p/1"));
    }
}
