//! Per-service runtime state: class (weight, express) that can change at run
//! time, limits, and the counters behind `/metrics` and `/v1/services`.

use sluice_config::{Config, Durability, OnFull};
use sluice_store::scheduler::{ServiceClass, ServiceId};
use sluice_store::EvictionPolicy;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

/// Monotonic counters of one service.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records persisted.
    pub records_in: AtomicU64,
    /// Encoded bytes persisted.
    pub bytes_in: AtomicU64,
    /// Requests refused with 429 because the pending queue was full.
    pub rejected_full: AtomicU64,
    /// Records refused for other reasons (storage errors).
    pub rejected_error: AtomicU64,
    /// Records skipped at delivery because they were older than the TTL.
    pub ttl_expired: AtomicU64,
    /// Records deleted by retention.
    pub retention_deleted: AtomicU64,
    /// Records evicted to keep the disk budget.
    pub evicted: AtomicU64,
    /// MQTT publishes routed to the service (QoS 0, 1 and 2, will
    /// messages). Conservation: `mqtt_in` = `mqtt_stored` +
    /// `mqtt_dropped_full` + `mqtt_dropped_rate` + `mqtt_failed` + what is
    /// still queued.
    pub mqtt_in: AtomicU64,
    /// MQTT publishes appended to the log (and durable, for `sync`).
    pub mqtt_stored: AtomicU64,
    /// QoS 1/2 publishes acknowledged (PUBACK / PUBREC sent after storing).
    pub mqtt_acked: AtomicU64,
    /// MQTT publishes queued but not stored (storage error, shutdown); the
    /// QoS 1/2 ones among them were not acknowledged.
    pub mqtt_failed: AtomicU64,
    /// MQTT publishes dropped by the `on_full` policy (newest or oldest).
    pub mqtt_dropped_full: AtomicU64,
    /// MQTT publishes dropped by the service's rate limit.
    pub mqtt_dropped_rate: AtomicU64,
    /// Publishes to live MQTT subscribers dropped from a slow subscriber's
    /// full delivery queue (`mqtt.delivery_queue`), lowest priority first.
    pub mqtt_delivery_dropped: AtomicU64,
    /// HTTP produce requests refused with 429 by the rate limit.
    pub rejected_rate: AtomicU64,
}

/// One service at run time.
#[derive(Debug)]
pub struct Service {
    /// Name from the configuration.
    pub name: String,
    /// Its index in every scheduler.
    pub id: ServiceId,
    class: RwLock<ServiceClass>,
    /// Durability of its HTTP ingest.
    pub durability: Durability,
    /// Records older than this are skipped at delivery.
    pub ttl: Option<Duration>,
    /// Pending-bytes limit of its ingest queue.
    pub max_pending: u64,
    /// What MQTT ingest does when the queue is full.
    pub on_full: OnFull,
    /// Bytes eviction never takes from it.
    pub reserved_bytes: u64,
    /// Ingest rate limit (HTTP and MQTT); `None`: unlimited.
    pub rate: Option<crate::rate::RateLimit>,
    /// Bytes accepted but not yet persisted.
    pub pending_bytes: AtomicU64,
    /// Counters.
    pub counters: Counters,
}

impl Service {
    /// Current weight and express flag.
    pub fn class(&self) -> ServiceClass {
        *self.class.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the weight at run time.
    pub fn set_class(&self, class: ServiceClass) {
        *self.class.write().unwrap_or_else(std::sync::PoisonError::into_inner) = class;
    }

    /// How eviction treats this service now.
    pub fn eviction_policy(&self) -> EvictionPolicy {
        let c = self.class();
        EvictionPolicy { weight: c.weight, express: c.express, reserved_bytes: self.reserved_bytes }
    }

    /// Tries to reserve `cost` pending bytes; false when over the limit. An
    /// empty queue admits one request of any size up to the limit.
    pub fn try_reserve(&self, cost: u64) -> bool {
        let mut cur = self.pending_bytes.load(Ordering::Relaxed);
        loop {
            if cur > 0 && cur + cost > self.max_pending {
                return false;
            }
            match self.pending_bytes.compare_exchange_weak(
                cur,
                cur + cost,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Releases pending bytes once persisted (or failed).
    pub fn release(&self, cost: u64) {
        self.pending_bytes.fetch_sub(cost, Ordering::AcqRel);
    }
}

/// All services, indexed by name and by [`ServiceId`].
#[derive(Debug)]
pub struct Services {
    list: Vec<Service>,
    by_name: HashMap<String, usize>,
    default: usize,
}

impl Services {
    /// Builds the registry from a validated configuration; ids follow the
    /// order of `[[service]]` entries.
    pub fn from_config(config: &Config) -> Services {
        let mut list = Vec::with_capacity(config.services.len());
        let mut by_name = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            by_name.insert(s.name.clone(), i);
            list.push(Service {
                name: s.name.clone(),
                id: ServiceId(i as u16),
                class: RwLock::new(ServiceClass { weight: s.weight, express: s.express }),
                durability: s.durability,
                ttl: s.ttl,
                max_pending: s.max_pending.as_u64(),
                on_full: s.on_full,
                reserved_bytes: s.reserved_bytes.as_u64(),
                rate: crate::rate::RateLimit::new(
                    s.max_records_per_sec,
                    s.max_bytes_per_sec.map(|b| b.as_u64()),
                    s.rate_burst,
                ),
                pending_bytes: AtomicU64::new(0),
                counters: Counters::default(),
            });
        }
        let default = by_name.get(sluice_config::DEFAULT_SERVICE).copied().unwrap_or(0);
        Services { list, by_name, default }
    }

    /// A service by name.
    pub fn get(&self, name: &str) -> Option<&Service> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    /// A service by name, or the default service for names no longer
    /// configured (topics on disk from an older configuration).
    pub fn resolve(&self, name: &str) -> &Service {
        self.get(name).unwrap_or(&self.list[self.default])
    }

    /// The service that owns auto-created topics.
    pub fn default_service(&self) -> &Service {
        &self.list[self.default]
    }

    /// A service by id.
    pub fn by_id(&self, id: ServiceId) -> &Service {
        &self.list[usize::from(id.0)]
    }

    /// All services in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Service> {
        self.list.iter()
    }

    /// Eviction policies by service name.
    pub fn eviction_policies(&self) -> HashMap<String, EvictionPolicy> {
        self.list.iter().map(|s| (s.name.clone(), s.eviction_policy())).collect()
    }
}
