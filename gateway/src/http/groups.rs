//! Consumer groups: `POST /v1/groups/{group}/fetch` (priority order across
//! topics, from committed positions), `POST .../commit`, `GET .../offsets`,
//! and the commit path and checks shared with the push stream.

use super::auth::Access;
use super::codec::{group_fetch_reply, parse_json};
use super::read::MAX_RECORDS;
use super::{json_reply, query_params, read_body, ApiError, QueryMap};
use crate::delivery::fetch_group;
use crate::state::Shared;
use crate::topics::Topic;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use sluice_store::{Offset, PartitionId};
use std::sync::Arc;
use std::time::Duration;

/// Body of `POST /v1/groups/{group}/fetch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchBody {
    /// Topics to read (existence is checked against the running gateway).
    pub topics: Vec<String>,
    /// Most records to return, 1..=10000 (the fetch limit).
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    /// Long-poll time, at most `http.max_wait`.
    #[serde(default)]
    pub wait_ms: u64,
}

fn default_max_records() -> u64 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitBody {
    offsets: Vec<CommitEntry>,
}

/// One position to commit: the next offset to read, as in Kafka.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitEntry {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The next offset to read.
    pub offset: u64,
}

/// Parses and checks a group fetch body; `max_wait_ms` is `http.max_wait`.
pub fn parse_fetch(body: &[u8], max_wait_ms: u64) -> Result<FetchBody, ApiError> {
    let req: FetchBody = parse_json(body)?;
    if req.max_records == 0 || req.max_records > MAX_RECORDS {
        return Err(ApiError::bad_request(format!(
            "max_records: {} is outside 1..={MAX_RECORDS}",
            req.max_records
        )));
    }
    if req.wait_ms > max_wait_ms {
        return Err(ApiError::bad_request(format!(
            "wait_ms: {} is larger than http.max_wait ({max_wait_ms} ms)",
            req.wait_ms
        )));
    }
    Ok(req)
}

/// Parses a commit body into its entries (`offsets`, at least one).
pub fn parse_commit(body: &[u8]) -> Result<Vec<CommitEntry>, ApiError> {
    let req: CommitBody = parse_json(body)?;
    check_entries(&req.offsets, "offsets")?;
    Ok(req.offsets)
}

fn check_entries(entries: &[CommitEntry], field: &str) -> Result<(), ApiError> {
    if entries.is_empty() {
        return Err(ApiError::bad_request(format!("{field}: give at least one offset")));
    }
    Ok(())
}

/// Checks a group name (same rules as topic names).
pub(super) fn check_group(group: &str) -> Result<(), ApiError> {
    sluice_config::check_topic_name(group)
        .map_err(|reason| ApiError::bad_request(format!("invalid group name {group:?}: {reason}")))
}

/// Resolves the topics of a group read; at least one, all existing, all
/// readable with the request's token.
pub(super) fn lookup_topics(
    shared: &Shared,
    access: &Access,
    names: &[String],
) -> Result<Vec<Arc<Topic>>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::bad_request("topics: give at least one topic"));
    }
    let mut topics: Vec<Arc<Topic>> = Vec::with_capacity(names.len());
    for n in names {
        let t = shared.topics.lookup(n)?;
        access.check_consume(&t)?;
        // A topic listed twice is read once.
        if !topics.iter().any(|have| have.name == t.name) {
            topics.push(t);
        }
    }
    Ok(topics)
}

pub(super) async fn fetch(
    State(shared): State<Shared>,
    Extension(access): Extension<Access>,
    Path(group): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    check_group(&group)?;
    let max_wait = shared.config.http.max_wait.as_millis() as u64;
    let req = parse_fetch(&read_body(&shared, body).await?, max_wait)?;
    let topics = lookup_topics(&shared, &access, &req.topics)?;
    let records =
        fetch_group(&shared, &group, &topics, req.max_records as usize, Duration::from_millis(req.wait_ms))
            .await?;
    for r in &records {
        crate::histograms::delivered(&r.topic.service, "group", [r.record.record.timestamp_ms]);
    }
    json_reply(group_fetch_reply(records.iter().map(|r| (&*r.topic.name, r.partition.0, &r.record))))
}

pub(super) async fn commit(
    State(shared): State<Shared>,
    Extension(access): Extension<Access>,
    Path(group): Path<String>,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_group(&group)?;
    let offsets = parse_commit(&read_body(&shared, body).await?)?;
    commit_offsets(&shared, &access, &group, &offsets, "offsets").await?;
    Ok(Json(serde_json::json!({ "committed": offsets.len() })))
}

/// Commits `entries` for `group` and waits until they are on disk: the one
/// commit path of the API (`POST .../commit` and WebSocket acks). `field`
/// names the list in error messages. Entries before a bad one stay
/// committed, as each entry is checked when it is written.
pub(super) async fn commit_offsets(
    shared: &Shared,
    access: &Access,
    group: &str,
    entries: &[CommitEntry],
    field: &str,
) -> Result<(), ApiError> {
    check_entries(entries, field)?;
    let written = commit_each(shared, access, group, entries, field);
    // Wake push streams waiting for their consumer to commit, also after a
    // partial failure: the entries before it were written.
    shared.notify_committed();
    // A commit past an express service's records is on that service's
    // critical path (the consumer's next fetch waits for it), so it skips
    // the group-commit window like the express service's sync writes.
    let express = written?;
    shared
        .ingest
        .flush_soon(express)
        .await
        .map_err(|_| ApiError::unavailable("sluice is shutting down"))??;
    Ok(())
}

/// Writes each entry; true when one of them is a topic of an express
/// service.
fn commit_each(
    shared: &Shared,
    access: &Access,
    group: &str,
    entries: &[CommitEntry],
    field: &str,
) -> Result<bool, ApiError> {
    let mut express = false;
    for (i, e) in entries.iter().enumerate() {
        let topic = shared
            .topics
            .lookup(&e.topic)
            .map_err(|err| ApiError::from(err).with_prefix(&format!("{field}[{i}]")))?;
        access.check_consume(&topic).map_err(|err| err.with_prefix(&format!("{field}[{i}]")))?;
        if e.partition >= topic.partitions {
            return Err(ApiError::not_found(format!(
                "{field}[{i}].partition: topic {:?} has {} partition(s); partition {} does not exist",
                topic.name, topic.partitions, e.partition
            )));
        }
        shared
            .store
            .commit(group, &topic.name, PartitionId(e.partition), Offset(e.offset))
            .map_err(|err| ApiError::from(&err).with_prefix(&format!("{field}[{i}]")))?;
        express |= shared.services.resolve(&topic.service).class().express;
    }
    Ok(express)
}

pub(super) async fn offsets(
    State(shared): State<Shared>,
    Extension(access): Extension<Access>,
    Path(group): Path<String>,
    query: QueryMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    check_group(&group)?;
    let params = query_params(query, &["topics"])?;
    let names: Vec<String> = match params.get("topics") {
        Some(list) => list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
        None => {
            shared.topics.all().iter().filter(|t| access.may_consume(t)).map(|t| t.name.to_string()).collect()
        }
    };
    let topics = lookup_topics(&shared, &access, &names)?;
    let mut out = Vec::new();
    for t in &topics {
        for p in 0..t.partitions {
            let partition = PartitionId(p);
            let committed = shared.store.committed(&group, &t.name, partition)?;
            let (start, hw) = shared.store.watermarks(&t.name, partition)?;
            let pos = committed.unwrap_or(start).max(start);
            out.push(serde_json::json!({
                "topic": &*t.name,
                "partition": p,
                "committed": committed.map(|o| o.0),
                "high_watermark": hw.0,
                "lag": hw.0.saturating_sub(pos.0),
            }));
        }
    }
    Ok(Json(serde_json::json!({ "group": group, "offsets": out })))
}
