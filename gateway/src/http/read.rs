//! `GET /v1/topics` and `GET /v1/topics/{topic}/partitions/{p}/records`.

use super::codec::fetch_reply;
use super::{json_reply, partition_param, query_params, uint_param, ApiError, QueryMap};
use crate::delivery::fetch_partition;
use crate::state::Shared;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use sluice_store::Offset;
use std::time::Duration;

/// Largest `max_records` accepted.
pub(super) const MAX_RECORDS: u64 = 10_000;

pub(super) async fn list_topics(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(topics_json(&shared))
}

/// The body of `GET /v1/topics` (also part of the status feed).
pub(super) fn topics_json(shared: &Shared) -> serde_json::Value {
    let topics: Vec<_> = shared
        .store
        .topics()
        .into_iter()
        .map(|t| {
            let service = shared.services.resolve(&t.spec.service).name.clone();
            let partitions: Vec<_> = t
                .partitions
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "partition": p.partition.0,
                        "log_start": p.log_start.0,
                        "high_watermark": p.high_watermark.0,
                        "durable": p.flushed.0,
                        "records": p.records,
                        "bytes": p.bytes,
                    })
                })
                .collect();
            serde_json::json!({ "name": t.spec.name, "service": service, "partitions": partitions })
        })
        .collect();
    serde_json::json!({ "topics": topics })
}

pub(super) async fn fetch(
    State(shared): State<Shared>,
    Path((topic, partition)): Path<(String, String)>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    let params = query_params(query, &["offset", "max_records", "wait_ms"])?;
    let topic = shared.topics.lookup(&topic)?;
    let partition = partition_param(&partition)?;
    if partition.0 >= topic.partitions {
        return Err(ApiError::not_found(format!(
            "topic {:?} has {} partition(s); partition {} does not exist",
            topic.name, topic.partitions, partition.0
        )));
    }
    let offset = uint_param(&params, "offset", 0, u64::MAX)?;
    let max_records = uint_param(&params, "max_records", 100, MAX_RECORDS)?.max(1);
    let max_wait = shared.config.http.max_wait.as_millis() as u64;
    let wait_ms = uint_param(&params, "wait_ms", 0, max_wait)?;
    let res = fetch_partition(
        &shared,
        &topic,
        partition,
        Offset(offset),
        max_records as usize,
        Duration::from_millis(wait_ms),
    )
    .await?;
    crate::histograms::delivered(&topic.service, "fetch", res.records.iter().map(|r| r.record.timestamp_ms));
    json_reply(fetch_reply(&res.records, res.high_watermark.0, res.log_start.0))
}
