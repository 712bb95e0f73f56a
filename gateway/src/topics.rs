//! Topic resolution at run time: which service owns a topic, how many
//! partitions it has, where a record goes, and who to wake when it grows.

use crate::services::Services;
use sluice_config::Config;
use sluice_store::{partition_for_key, PartitionId, Retention, Store, StoreError, TopicSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// One topic at run time.
#[derive(Debug)]
pub struct Topic {
    /// Topic name.
    pub name: Arc<str>,
    /// Owning service's name (resolved through [`Services::resolve`]).
    pub service: String,
    /// Partition count.
    pub partitions: u32,
    round_robin: AtomicU32,
    appended: watch::Sender<u64>,
    any_appended: Arc<watch::Sender<u64>>,
}

impl Topic {
    /// The partition for a record: by key hash, or round-robin without key.
    pub fn partition_for(&self, key: Option<&[u8]>) -> PartitionId {
        match key {
            Some(k) => PartitionId(partition_for_key(k, self.partitions)),
            None => PartitionId(self.round_robin.fetch_add(1, Ordering::Relaxed) % self.partitions.max(1)),
        }
    }

    /// Wakes long-polls waiting on this topic.
    pub fn notify_appended(&self) {
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        self.any_appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever the topic grows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }
}

/// Why a topic could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// Invalid name.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Unknown topic while auto-creation is off.
    #[error("topic {0:?} does not exist and store.auto_create_topics is false")]
    Unknown(String),
    /// Unknown topic when reading.
    #[error("topic {0:?} does not exist")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// All topics; created from configuration at start, or on first use.
#[derive(Debug)]
pub struct Topics {
    map: RwLock<HashMap<String, Arc<Topic>>>,
    any_appended: Arc<watch::Sender<u64>>,
    auto_create: bool,
    default_partitions: u32,
}

impl Topics {
    /// Creates the configured topics in the store and loads the others it
    /// already holds.
    pub fn open(config: &Config, store: &Store, services: &Services) -> Result<Topics, StoreError> {
        let topics = Topics {
            map: RwLock::new(HashMap::new()),
            any_appended: Arc::new(watch::channel(0).0),
            auto_create: config.store.auto_create_topics,
            default_partitions: config.store.default_partitions.max(1),
        };
        for t in &config.topics {
            let spec = TopicSpec {
                name: t.name.clone(),
                partitions: t.partitions,
                service: t.service.clone(),
                retention: Retention {
                    max_age: t.retention.max_age,
                    max_bytes: t.retention.max_bytes.map(|b| b.as_u64()),
                },
            };
            store.ensure_topic(&spec)?;
        }
        for info in store.topics() {
            let service = services.resolve(&info.spec.service).name.clone();
            topics.insert(&info.spec.name, service, info.spec.partitions);
        }
        Ok(topics)
    }

    fn insert(&self, name: &str, service: String, partitions: u32) -> Arc<Topic> {
        let (tx, _) = watch::channel(0);
        let t = Arc::new(Topic {
            name: Arc::from(name),
            service,
            partitions,
            round_robin: AtomicU32::new(0),
            appended: tx,
            any_appended: self.any_appended.clone(),
        });
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned(), t.clone());
        t
    }

    /// A topic that must exist.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(name).cloned()
    }

    /// A topic for producing: validated, created on first use when allowed.
    pub fn get_or_create(
        &self,
        name: &str,
        store: &Store,
        services: &Services,
    ) -> Result<Arc<Topic>, TopicError> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        self.create_new(name, self.default_partitions, store, services)
    }

    /// Creates a topic with `partitions` under the default service, as a
    /// first use would (Kafka's CreateTopics); `Ok(None)` when it exists.
    pub fn create(
        &self,
        name: &str,
        partitions: u32,
        store: &Store,
        services: &Services,
    ) -> Result<Option<Arc<Topic>>, TopicError> {
        if self.get(name).is_some() {
            return Ok(None);
        }
        self.create_new(name, partitions, store, services).map(Some)
    }

    fn create_new(
        &self,
        name: &str,
        partitions: u32,
        store: &Store,
        services: &Services,
    ) -> Result<Arc<Topic>, TopicError> {
        sluice_config::check_topic_name(name)
            .map_err(|reason| TopicError::InvalidName { name: name.to_owned(), reason })?;
        if !self.auto_create {
            return Err(TopicError::Unknown(name.to_owned()));
        }
        let service = services.default_service().name.clone();
        let spec = TopicSpec {
            name: name.to_owned(),
            partitions,
            service: service.clone(),
            retention: Retention::default(),
        };
        // Two requests may race to create the same topic: the store
        // serializes ensure_topic, the second call finds the topic and
        // changes nothing, and the second insert here replaces an
        // identical entry.
        let info = store.ensure_topic(&spec)?;
        tracing::info!(topic = name, partitions = info.spec.partitions, service = %service, "created topic on first use");
        Ok(self.get(name).unwrap_or_else(|| self.insert(name, service, info.spec.partitions)))
    }

    /// A topic for reading: validated name, must exist.
    pub fn lookup(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        if let Some(t) = self.get(name) {
            return Ok(t);
        }
        sluice_config::check_topic_name(name)
            .map_err(|reason| TopicError::InvalidName { name: name.to_owned(), reason })?;
        Err(TopicError::NotFound(name.to_owned()))
    }

    /// A receiver that changes whenever any topic grows.
    pub fn subscribe_any(&self) -> watch::Receiver<u64> {
        self.any_appended.subscribe()
    }

    /// How many topics there are.
    pub fn count(&self) -> usize {
        self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// All topics, sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> =
            self.map.read().unwrap_or_else(std::sync::PoisonError::into_inner).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}
