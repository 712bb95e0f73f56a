//! Metadata and FindCoordinator: a cluster of one broker (sluice), leader
//! of every partition and coordinator of every group.

use super::{Broker, NODE_ID};
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
) -> anyhow::Result<MetadataResponse> {
    let shared = &broker.shared;
    // v0: an empty list means every topic; v1+: a null list does.
    let wanted: Option<Vec<String>> = match req.topics {
        None => None,
        Some(list) if list.is_empty() && version == 0 => None,
        Some(list) => Some(list.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect()),
    };
    let topics = match wanted {
        None => shared.topics.all().iter().map(|t| topic_entry(Ok(t.clone()), &t.name, version)).collect(),
        Some(names) => names
            .iter()
            .map(|name| {
                let found = if req.allow_auto_topic_creation {
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
