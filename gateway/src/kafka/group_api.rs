//! The group requests over [`super::group::Coordinator`], the timer that
//! expires sessions, and OffsetCommit/OffsetFetch over the store's group
//! offsets (the ones `POST /v1/groups/{group}/commit` writes, so a group
//! can move between HTTP and Kafka clients).

use super::auth::Access;
use super::group::JoinRequest;
use super::{Broker, KafkaStats, REAP_EVERY};
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use sluice_store::{Offset, PartitionId, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Session timeouts accepted (Kafka's broker defaults).
const SESSION_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));

fn s(text: String) -> StrBytes {
    StrBytes::from_string(text)
}

fn millis(ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

pub(super) async fn join(
    broker: &Arc<Broker>,
    req: JoinGroupRequest,
    client_id: String,
    version: i16,
) -> JoinGroupResponse {
    let session = millis(req.session_timeout_ms);
    let mut resp = JoinGroupResponse::default().with_member_id(req.member_id.clone());
    if version >= 7 {
        resp.protocol_name = None;
    }
    if session < SESSION_TIMEOUT.0 || session > SESSION_TIMEOUT.1 {
        return resp.with_error_code(ResponseError::InvalidSessionTimeout.code());
    }
    if sluice_config::check_topic_name(&req.group_id.0).is_err() {
        return resp.with_error_code(ResponseError::InvalidGroupId.code());
    }
    // v0 has no rebalance timeout: it is the session timeout.
    let rebalance = if version >= 1 { millis(req.rebalance_timeout_ms) } else { session };
    let rx = broker.groups().join(
        JoinRequest {
            group: req.group_id.0.to_string(),
            member_id: req.member_id.to_string(),
            client_id,
            protocol_type: req.protocol_type.to_string(),
            protocols: req.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
            session_timeout: session,
            rebalance_timeout: rebalance.max(session),
        },
        Instant::now(),
    );
    let Ok(out) = rx.await else {
        return resp.with_error_code(ResponseError::CoordinatorNotAvailable.code());
    };
    let members = out
        .members
        .into_iter()
        .map(|(id, metadata)| {
            JoinGroupResponseMember::default().with_member_id(s(id)).with_metadata(metadata)
        })
        .collect();
    resp.error_code = out.error;
    resp.generation_id = if out.error == 0 { out.generation } else { -1 };
    resp.member_id = s(out.member_id);
    resp.leader = s(out.leader);
    resp.members = members;
    if version >= 7 {
        resp.protocol_type = (out.error == 0).then(|| s(out.protocol_type));
        resp.protocol_name = (out.error == 0).then(|| s(out.protocol));
    } else {
        resp.protocol_name = Some(s(out.protocol));
    }
    resp
}

pub(super) async fn sync(broker: &Arc<Broker>, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let assignments = req.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let rx =
        broker.groups().sync(&req.group_id.0, &req.member_id, req.generation_id, assignments, Instant::now());
    let (error, assignment) =
        rx.await.unwrap_or((ResponseError::CoordinatorNotAvailable.code(), bytes::Bytes::new()));
    let mut resp = SyncGroupResponse::default().with_error_code(error).with_assignment(assignment);
    if version >= 5 {
        resp.protocol_type = req.protocol_type;
        resp.protocol_name = req.protocol_name;
    }
    resp
}

pub(super) fn heartbeat(broker: &Broker, req: HeartbeatRequest) -> HeartbeatResponse {
    let error = broker.groups().heartbeat(&req.group_id.0, &req.member_id, req.generation_id, Instant::now());
    HeartbeatResponse::default().with_error_code(error)
}

pub(super) fn leave(broker: &Broker, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let now = Instant::now();
    if version < 3 {
        let error = broker.groups().leave(&req.group_id.0, &[req.member_id.to_string()], now)[0];
        return LeaveGroupResponse::default().with_error_code(error);
    }
    let ids: Vec<String> = req.members.iter().map(|m| m.member_id.to_string()).collect();
    let errors = broker.groups().leave(&req.group_id.0, &ids, now);
    let members = req
        .members
        .into_iter()
        .zip(errors)
        .map(|(m, error)| {
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(error)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

pub(super) fn describe_groups(broker: &Broker, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let coordinator = broker.groups();
    let groups = req
        .groups
        .into_iter()
        .map(|id| {
            let Some(view) = coordinator.view(&id.0) else {
                return DescribedGroup::default()
                    .with_group_id(id)
                    .with_group_state(StrBytes::from_static_str("Dead"));
            };
            let members = view
                .members
                .into_iter()
                .map(|m| {
                    DescribedGroupMember::default()
                        .with_member_id(s(m.member_id))
                        .with_client_id(s(m.client_id))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment)
                })
                .collect();
            DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(StrBytes::from_static_str(view.state))
                .with_protocol_type(s(view.protocol_type))
                .with_protocol_data(s(view.protocol))
                .with_members(members)
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(super) fn list_groups(broker: &Broker, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let groups = broker
        .groups()
        .list()
        .into_iter()
        .filter(|(_, _, state)| {
            req.states_filter.is_empty() || req.states_filter.iter().any(|f| &**f == *state)
        })
        .map(|(name, protocol_type, state)| {
            let mut g =
                ListedGroup::default().with_group_id(GroupId(s(name))).with_protocol_type(s(protocol_type));
            if version >= 4 {
                g.group_state = StrBytes::from_static_str(state);
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// Expires silent members until shutdown.
pub(super) async fn reaper(broker: Arc<Broker>) {
    let mut shutdown = broker.shared.shutdown.clone();
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        for (group, member) in broker.groups().expire(Instant::now()) {
            tracing::info!(%group, %member, "Kafka group member's session expired; rebalancing");
        }
    }
}

pub(super) async fn offset_commit(
    broker: &Arc<Broker>,
    req: OffsetCommitRequest,
    access: &Access,
) -> OffsetCommitResponse {
    let shared = &broker.shared;
    let group = req.group_id.0.to_string();
    let mut check = broker.groups().check_commit(&group, &req.member_id, req.generation_id_or_member_epoch);
    if check == 0 && sluice_config::check_topic_name(&group).is_err() {
        check = ResponseError::InvalidGroupId.code();
    }
    let mut express = false;
    let mut wrote = false;
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let allowed = access.may_consume(&t.name.0);
        if !allowed {
            KafkaStats::count(&broker.stats.not_authorized);
        }
        let topic = shared.topics.get(&t.name.0);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let error = if check != 0 {
                check
            } else if !allowed {
                ResponseError::TopicAuthorizationFailed.code()
            } else {
                match &topic {
                    Some(topic)
                        if p.partition_index >= 0 && (p.partition_index as u32) < topic.partitions =>
                    {
                        let offset = Offset(u64::try_from(p.committed_offset).unwrap_or(0));
                        match shared.store.commit(
                            &group,
                            &topic.name,
                            PartitionId(p.partition_index as u32),
                            offset,
                        ) {
                            Ok(()) => {
                                wrote = true;
                                express |= shared.services.resolve(&topic.service).class().express;
                                0
                            }
                            Err(e) => commit_error(&group, &topic.name, &e),
                        }
                    }
                    _ => ResponseError::UnknownTopicOrPartition.code(),
                }
            };
            partitions.push(
                OffsetCommitResponsePartition::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(error),
            );
        }
        topics.push(OffsetCommitResponseTopic::default().with_name(t.name).with_partitions(partitions));
    }
    if wrote {
        shared.notify_committed();
        // Durable before the answer, as an HTTP commit.
        let durable = shared.ingest.flush_soon(express).await;
        if !matches!(durable, Ok(Ok(()))) {
            for t in &mut topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = ResponseError::KafkaStorageError.code();
                    }
                }
            }
        }
    }
    OffsetCommitResponse::default().with_topics(topics)
}

fn commit_error(group: &str, topic: &str, e: &StoreError) -> i16 {
    tracing::debug!(group, topic, error = %e, "Kafka offset commit refused");
    // The store refuses positions past the durable end.
    ResponseError::OffsetOutOfRange.code()
}

pub(super) fn offset_fetch(broker: &Broker, req: OffsetFetchRequest, access: &Access) -> OffsetFetchResponse {
    let shared = &broker.shared;
    let group = req.group_id.0.to_string();
    // A null list (v2+) asks for every partition the group committed.
    let wanted: Vec<(TopicName, Vec<i32>)> = match req.topics {
        Some(list) => list.into_iter().map(|t| (t.name, t.partition_indexes)).collect(),
        None => {
            let mut all = committed_partitions(broker, &group);
            all.retain(|(name, _)| access.may_consume(&name.0));
            all
        }
    };
    let mut topics = Vec::with_capacity(wanted.len());
    for (name, parts) in wanted {
        let allowed = access.may_consume(&name.0);
        if !allowed {
            KafkaStats::count(&broker.stats.not_authorized);
        }
        let partitions = parts
            .into_iter()
            .map(|p| {
                let mut out = OffsetFetchResponsePartition::default()
                    .with_partition_index(p)
                    .with_committed_offset(-1)
                    .with_metadata(Some(StrBytes::default()));
                if !allowed {
                    out.error_code = ResponseError::TopicAuthorizationFailed.code();
                } else if p >= 0 {
                    match shared.store.committed(&group, &name.0, PartitionId(p as u32)) {
                        Ok(Some(o)) => out.committed_offset = o.0 as i64,
                        Ok(None) => {}
                        Err(StoreError::UnknownTopic(_)) | Err(StoreError::UnknownPartition { .. }) => {}
                        Err(e) => {
                            tracing::warn!(group = %group, error = %e, "cannot read committed offsets");
                            out.error_code = ResponseError::KafkaStorageError.code();
                        }
                    }
                }
                out
            })
            .collect();
        topics.push(OffsetFetchResponseTopic::default().with_name(name).with_partitions(partitions));
    }
    OffsetFetchResponse::default().with_topics(topics)
}

fn committed_partitions(broker: &Broker, group: &str) -> Vec<(TopicName, Vec<i32>)> {
    let mut out: Vec<(TopicName, Vec<i32>)> = Vec::new();
    let positions = broker.shared.store.group_positions().unwrap_or_default();
    for (g, topic, partition, _) in positions {
        if g != group {
            continue;
        }
        match out.iter_mut().find(|(t, _)| *t.0 == *topic) {
            Some((_, parts)) => parts.push(partition.0 as i32),
            None => out.push((TopicName(s(topic)), vec![partition.0 as i32])),
        }
    }
    out
}
