//! Metadata and FindCoordinator: a cluster of one broker (sluice), leader
//! of every partition and coordinator of every group.

use super::auth::Access;
use super::{Broker, KafkaStats, NODE_ID};
use crate::topics::{Topic, TopicError};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use std::sync::Arc;

pub(super) fn metadata(
    broker: &Broker,
    req: MetadataRequest,
    version: i16,
    access: &Access,
) -> anyhow::Result<MetadataResponse> {
    let shared = &broker.shared;
    // v0: an empty list means every topic; v1+: a null list does.
    let wanted: Option<Vec<String>> = match req.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
    };
    let topics = match wanted {
        // Every topic: those the user may see.
        None => shared
            .topics
            .all()
            .iter()
            .filter(|t| access.may_describe(&t.name))
            .map(|t| topic_entry(Ok(t.clone()), &t.name, version))
            .collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                if !access.may_describe(name) {
                    KafkaStats::count(&broker.stats.not_authorized);
                    return MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                }
                // Only a user who may produce to it creates it.
                let found = if req.allow_auto_topic_creation && access.may_produce(name) {
                    shared.topics.get_or_create(name, &shared.store, &shared.services)
                } else {
                    shared.topics.lookup(name)
                };
                if let Err(e) = &found {
                    tracing::debug!(topic = %name, error = %e, "Kafka metadata for an unknown topic");
                }
                topic_entry(found, name, version)
            })
            .collect(),
    };
    let me = MetadataResponseBroker::default()
        .with_node_id(BrokerId(NODE_ID))
        .with_host(StrBytes::from_string(broker.host.clone()))
        .with_port(broker.port);
    let mut resp = MetadataResponse::default().with_brokers(vec![me]).with_topics(topics);
    if version >= 1 {
        resp.controller_id = BrokerId(NODE_ID);
    }
    if version >= 2 {
        resp.cluster_id = Some(StrBytes::from_string(format!("sluice-{}", shared.config.node.id)));
    }
    Ok(resp)
}

fn topic_entry(found: Result<Arc<Topic>, TopicError>, name: &str, version: i16) -> MetadataResponseTopic {
    let entry =
        MetadataResponseTopic::default().with_name(Some(TopicName(StrBytes::from_string(name.to_owned()))));
    let topic = match found {
        Ok(t) => t,
        Err(TopicError::InvalidName { .. }) => {
            return entry.with_error_code(ResponseError::InvalidTopicException.code())
        }
        Err(_) => return entry.with_error_code(ResponseError::UnknownTopicOrPartition.code()),
    };
    let partitions = (0..topic.partitions)
        .map(|p| {
            let mut part = MetadataResponsePartition::default()
                .with_partition_index(p as i32)
                .with_leader_id(BrokerId(NODE_ID))
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)]);
            if version >= 7 {
                // No leader epochs: clients then skip OffsetForLeaderEpoch.
                part.leader_epoch = -1;
            }
            part
        })
        .collect();
    entry.with_partitions(partitions)
}

pub(super) fn find_coordinator(
    broker: &Broker,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let host = StrBytes::from_string(broker.host.clone());
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(host.clone())
                    .with_port(broker.port)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default().with_node_id(BrokerId(NODE_ID)).with_host(host).with_port(broker.port)
}

/// Most partitions a topic may have (as `[[topic]] partitions`).
const MAX_PARTITIONS: i32 = 256;

/// CreateTopics: topics of the default service, by sluice's rules
/// (`store.auto_create_topics`); replication factor -1 or 1; topic configs
/// are not applied (retention comes from sluice's configuration).
pub(super) fn create_topics(
    broker: &Broker,
    req: CreateTopicsRequest,
    version: i16,
    access: &Access,
) -> CreateTopicsResponse {
    use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
    let shared = &broker.shared;
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let partitions = if t.num_partitions == -1 {
                i32::try_from(shared.config.store.default_partitions).unwrap_or(1)
            } else {
                t.num_partitions
            };
            let fail = |error: ResponseError, message: String| (error.code(), Some(message));
            let (error, message) = if !access.may_produce(&t.name.0) {
                KafkaStats::count(&broker.stats.not_authorized);
                fail(
                    ResponseError::TopicAuthorizationFailed,
                    format!("this user may not produce to {:?} (kafka.users produce)", &*t.name.0),
                )
            } else if !(1..=MAX_PARTITIONS).contains(&partitions) {
                fail(
                    ResponseError::InvalidPartitions,
                    format!("num_partitions {partitions} is outside 1..={MAX_PARTITIONS}"),
                )
            } else if !matches!(t.replication_factor, -1 | 1) {
                fail(
                    ResponseError::InvalidReplicationFactor,
                    format!("replication_factor {}: sluice is a single broker; use 1", t.replication_factor),
                )
            } else if !t.assignments.is_empty() {
                fail(ResponseError::InvalidRequest, "manual replica assignments are not supported".to_owned())
            } else if req.validate_only {
                match (sluice_config::check_topic_name(&t.name.0), shared.topics.get(&t.name.0)) {
                    (Err(reason), _) => fail(ResponseError::InvalidTopicException, reason),
                    (Ok(()), Some(_)) => fail(ResponseError::TopicAlreadyExists, "topic exists".to_owned()),
                    (Ok(()), None) => (0, None),
                }
            } else {
                match shared.topics.create(&t.name.0, partitions as u32, &shared.store, &shared.services) {
                    Ok(Some(_)) => (0, None),
                    Ok(None) => {
                        fail(ResponseError::TopicAlreadyExists, format!("topic {:?} exists", &*t.name.0))
                    }
                    Err(e @ TopicError::InvalidName { .. }) => {
                        fail(ResponseError::InvalidTopicException, e.to_string())
                    }
                    Err(e @ TopicError::Unknown(_)) => fail(ResponseError::PolicyViolation, e.to_string()),
                    Err(e) => fail(ResponseError::KafkaStorageError, e.to_string()),
                }
            };
            let mut r = CreatableTopicResult::default().with_name(t.name).with_error_code(error);
            if version >= 1 {
                r.error_message = message.map(StrBytes::from_string);
            }
            if version >= 5 {
                r.num_partitions = if error == 0 { partitions } else { -1 };
                r.replication_factor = if error == 0 { 1 } else { -1 };
            }
            r
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}
