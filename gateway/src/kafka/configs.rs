//! DescribeConfigs: sluice's real settings under Kafka's names, read-only
//! (sluice's configuration file is where they change).
//!
//! - A topic: `retention.ms` and `retention.bytes` from its `[[topic]]`
//!   retention (Kafka's `retention.bytes` is per partition, sluice's
//!   `max_bytes` per topic: the share of one partition is reported; -1 for
//!   none), `segment.bytes` and `segment.ms` from `[store]`,
//!   `max.message.bytes` from `kafka.max_request`, `cleanup.policy=delete`,
//!   and `sluice.*` entries for its service (priority, durability, ttl).
//! - The broker (`"0"`, or `""` for the defaults): the matching broker
//!   settings (`log.segment.bytes`, `message.max.bytes`,
//!   `auto.create.topics.enable`, `connections.max.idle.ms`, ...).
//!
//! An unknown topic is UNKNOWN_TOPIC_OR_PARTITION; one the SASL user may
//! not see is TOPIC_AUTHORIZATION_FAILED.

use super::auth::Access;
use super::{Broker, KafkaStats, NODE_ID};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

/// Kafka's resource types.
const TOPIC: i8 = 2;
const BROKER: i8 = 4;

/// Where a value comes from (Kafka's ConfigSource).
#[derive(Clone, Copy)]
enum Source {
    /// Set for this topic (`[[topic]]`).
    Topic = 1,
    /// Set in the configuration file for the whole node.
    Static = 4,
    /// sluice's built-in default.
    Default = 5,
}

/// Kafka's ConfigType (v3+).
#[derive(Clone, Copy)]
enum Type {
    Boolean = 1,
    Str = 2,
    Int = 3,
    Long = 5,
    List = 7,
}

struct Entry {
    name: &'static str,
    value: String,
    source: Source,
    kind: Type,
}

fn entry(name: &'static str, value: impl ToString, source: Source, kind: Type) -> Entry {
    Entry { name, value: value.to_string(), source, kind }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The settings of topic `name`, or the error code.
fn topic_entries(broker: &Broker, name: &str) -> Result<Vec<Entry>, ResponseError> {
    let shared = &broker.shared;
    let topic = shared.topics.get(name).ok_or(ResponseError::UnknownTopicOrPartition)?;
    let cfg = &shared.config;
    let retention = cfg.topics.iter().find(|t| t.name == name).map(|t| &t.retention);
    let service = shared.services.resolve(&topic.service);
    let class = service.class();
    let durability = match service.durability {
        sluice_config::Durability::Sync => "sync",
        sluice_config::Durability::Buffered => "buffered",
    };
    let (age, age_src) = match retention.and_then(|r| r.max_age) {
        Some(d) => (ms(d), Source::Topic),
        None => (-1, Source::Default),
    };
    let (bytes, bytes_src) = match retention.and_then(|r| r.max_bytes) {
        Some(b) => (
            i64::try_from(b.as_u64() / u64::from(topic.partitions.max(1))).unwrap_or(i64::MAX),
            Source::Topic,
        ),
        None => (-1, Source::Default),
    };
    Ok(vec![
        entry("cleanup.policy", "delete", Source::Default, Type::List),
        entry("compression.type", "producer", Source::Default, Type::Str),
        entry("max.message.bytes", cfg.kafka.max_request.as_u64(), Source::Static, Type::Int),
        entry("message.timestamp.type", "CreateTime", Source::Default, Type::Str),
        entry("min.insync.replicas", 1, Source::Default, Type::Int),
        entry("retention.bytes", bytes, bytes_src, Type::Long),
        entry("retention.ms", age, age_src, Type::Long),
        entry("segment.bytes", cfg.store.segment_bytes.as_u64(), Source::Static, Type::Int),
        entry("segment.ms", ms(cfg.store.segment_age), Source::Static, Type::Long),
        entry("sluice.durability", durability, Source::Static, Type::Str),
        entry("sluice.express", class.express, Source::Static, Type::Boolean),
        entry("sluice.service", &service.name, Source::Static, Type::Str),
        entry("sluice.ttl.ms", service.ttl.map_or(-1, ms), Source::Static, Type::Long),
        entry("sluice.weight", class.weight, Source::Static, Type::Int),
    ])
}

fn broker_entries(broker: &Broker) -> Vec<Entry> {
    let cfg = &broker.shared.config;
    let sasl = if cfg.kafka.sasl.is_empty() { String::new() } else { cfg.kafka.sasl.join(",") };
    vec![
        entry("auto.create.topics.enable", cfg.store.auto_create_topics, Source::Static, Type::Boolean),
        entry("broker.id", NODE_ID, Source::Default, Type::Int),
        entry("connections.max.idle.ms", ms(cfg.kafka.idle_timeout), Source::Static, Type::Long),
        entry("default.replication.factor", 1, Source::Default, Type::Int),
        entry("log.cleanup.policy", "delete", Source::Default, Type::List),
        entry("log.retention.bytes", -1, Source::Default, Type::Long),
        entry("log.retention.ms", -1, Source::Default, Type::Long),
        entry("log.roll.ms", ms(cfg.store.segment_age), Source::Static, Type::Long),
        entry("log.segment.bytes", cfg.store.segment_bytes.as_u64(), Source::Static, Type::Int),
        entry("max.connections", cfg.kafka.max_connections, Source::Static, Type::Int),
        entry("message.max.bytes", cfg.kafka.max_request.as_u64(), Source::Static, Type::Int),
        entry("num.partitions", cfg.store.default_partitions, Source::Static, Type::Int),
        entry("offsets.topic.replication.factor", 1, Source::Default, Type::Int),
        entry("sasl.enabled.mechanisms", sasl, Source::Static, Type::List),
        entry("socket.request.max.bytes", cfg.kafka.max_request.as_u64(), Source::Static, Type::Int),
    ]
}

pub(super) fn describe_configs(
    broker: &Broker,
    req: DescribeConfigsRequest,
    version: i16,
    access: &Access,
) -> DescribeConfigsResponse {
    let results =
        req.resources
            .into_iter()
            .map(|r| {
                let name = r.resource_name.to_string();
                let found = match r.resource_type {
                    TOPIC if !access.may_describe(&name) => {
                        KafkaStats::count(&broker.stats.not_authorized);
                        Err((
                            ResponseError::TopicAuthorizationFailed,
                            format!("not allowed to see topic {name:?}"),
                        ))
                    }
                    TOPIC => topic_entries(broker, &name)
                        .map_err(|e| (e, format!("topic {name:?} does not exist"))),
                    BROKER if name.is_empty() || name == NODE_ID.to_string() => Ok(broker_entries(broker)),
                    BROKER => Err((
                        ResponseError::InvalidRequest,
                        format!("broker {name:?} is not this broker ({NODE_ID}): sluice is a single broker"),
                    )),
                    other => Err((
                        ResponseError::InvalidRequest,
                        format!("resource type {other} is not served: only topics (2) and the broker (4)"),
                    )),
                };
                let mut result = DescribeConfigsResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name);
                match found {
                    Ok(entries) => {
                        let wanted =
                            r.configuration_keys.map(|k| k.iter().map(|s| s.to_string()).collect::<Vec<_>>());
                        result.error_message = None;
                        result.configs = entries
                            .into_iter()
                            .filter(|e| wanted.as_ref().is_none_or(|w| w.iter().any(|n| n == e.name)))
                            .map(|e| encode(e, version))
                            .collect();
                    }
                    Err((code, message)) => {
                        result.error_code = code.code();
                        result.error_message = Some(StrBytes::from_string(message));
                    }
                }
                result
            })
            .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn encode(e: Entry, version: i16) -> DescribeConfigsResourceResult {
    let mut out = DescribeConfigsResourceResult::default()
        .with_name(StrBytes::from_static_str(e.name))
        .with_value(Some(StrBytes::from_string(e.value)))
        .with_read_only(true)
        .with_config_source(e.source as i8);
    if version >= 3 {
        out.config_type = e.kind as i8;
        out.documentation = None;
    }
    out
}
