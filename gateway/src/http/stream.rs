//! `GET /v1/groups/{group}/stream?topics=a,b[&max_unacked=N]`: push
//! delivery of a consumer group's records in priority order, as Server-Sent
//! Events ([`super::stream_sse`]) or over a WebSocket ([`super::stream_ws`])
//! on the same path. Both are fed by one [`GroupStream`].
//!
//! A stream starts at the group's committed positions and keeps a cursor
//! per partition in memory, so it does not resend within one connection.
//! Durable progress is only the client's commit (`POST .../commit`, or an
//! ack over the WebSocket): a new connection resumes from the committed
//! positions and delivers again what was sent but not committed. At most
//! `max_unacked` records are outstanding (sent, not yet committed past);
//! then the stream waits for commits, so a consumer that never commits
//! holds the server to a bounded window instead of an unbounded backlog.

use super::auth::Access;
use super::groups::{check_group, lookup_topics};
use super::{query_params, stream_sse, stream_ws, uint_param, ApiError, QueryMap};
use crate::delivery::{group_fetch_from, GroupRecord, Positions, Rounds, TopicPartition};
use crate::state::Shared;
use crate::topics::Topic;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use sluice_store::{Offset, PartitionId, StoreError};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tokio::sync::watch;

/// Outstanding records per stream when `max_unacked` is not given.
const DEFAULT_MAX_UNACKED: u64 = 1000;
/// Largest `max_unacked` accepted.
const MAX_UNACKED: u64 = 10_000;
/// Records taken from the scheduler per pass (bounds memory per stream).
const BATCH: usize = 100;

/// The handler: checks everything before upgrading or streaming, so bad
/// input gets a JSON error with a fitting status.
pub(super) async fn stream(
    State(shared): State<Shared>,
    Extension(access): Extension<Access>,
    Path(group): Path<String>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    check_group(&group)?;
    let params = query_params(query, &["topics", "max_unacked"])?;
    let names: Vec<String> = params
        .get("topics")
        .map(|list| list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let topics = lookup_topics(&shared, &access, &names)?;
    let max_unacked = uint_param(&params, "max_unacked", DEFAULT_MAX_UNACKED, MAX_UNACKED)?;
    if max_unacked == 0 {
        return Err(ApiError::bad_request(format!("max_unacked: 0 is outside 1..={MAX_UNACKED}")));
    }
    let stream = GroupStream::open(shared, access, group, topics, max_unacked as usize)?;
    match upgrade {
        Ok(ws) => Ok(stream_ws::respond(ws, stream)),
        Err(rejection) if asks_for_websocket(&headers) => Err(ApiError::new(
            rejection.status(),
            format!("WebSocket upgrade refused: {}", rejection.body_text()),
        )),
        Err(_) => Ok(stream_sse::respond(stream)),
    }
}

/// True when the request tries a WebSocket upgrade (even a broken one).
fn asks_for_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("websocket"))
}

/// One push stream of a group: its cursor, its window of records sent but
/// not committed, and what wakes it. Transport-independent.
#[derive(Debug)]
pub(super) struct GroupStream {
    shared: Shared,
    /// What the stream's token may do (WebSocket acks commit with it).
    access: Access,
    group: String,
    topics: Vec<Arc<Topic>>,
    positions: Positions,
    rounds: Rounds,
    /// Offsets sent and not yet committed past, ascending per partition.
    unacked: HashMap<TopicPartition, VecDeque<Offset>>,
    unacked_len: usize,
    max_unacked: usize,
    appended: watch::Receiver<u64>,
    commits: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl GroupStream {
    /// A stream from the group's committed positions.
    fn open(
        shared: Shared,
        access: Access,
        group: String,
        topics: Vec<Arc<Topic>>,
        max_unacked: usize,
    ) -> Result<GroupStream, StoreError> {
        let positions = Positions::committed(&shared, &group, &topics)?;
        Ok(GroupStream {
            appended: shared.topics.subscribe_any(),
            commits: shared.subscribe_commits(),
            shutdown: shared.shutdown.clone(),
            shared,
            access,
            group,
            topics,
            positions,
            rounds: Rounds::default(),
            unacked: HashMap::new(),
            unacked_len: 0,
            max_unacked,
        })
    }

    /// The shared gateway state.
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The consumer group.
    pub(super) fn group(&self) -> &str {
        &self.group
    }

    /// What the stream's token may do.
    pub(super) fn access(&self) -> &Access {
        &self.access
    }

    /// A receiver that turns true when the gateway shuts down.
    pub(super) fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    /// The next records to send, in priority order, waiting until there
    /// are some and the window allows; `None` when the gateway shuts down.
    /// Cancel-safe: it only awaits before reading, so dropping it loses
    /// nothing.
    pub(super) async fn next_batch(&mut self) -> Option<Result<Vec<GroupRecord>, StoreError>> {
        loop {
            // Mark what is seen before reading, so a change made during the
            // read wakes the wait below.
            self.appended.borrow_and_update();
            self.commits.borrow_and_update();
            if self.window() == 0 {
                if let Err(e) = self.sync_commits() {
                    return Some(Err(e));
                }
            }
            let room = self.window().min(BATCH);
            if room > 0 {
                match group_fetch_from(
                    &self.shared,
                    &self.topics,
                    &mut self.positions,
                    &mut self.rounds,
                    room,
                ) {
                    Ok(batch) if batch.is_empty() => {}
                    Ok(batch) => {
                        for r in &batch {
                            self.sent(r);
                        }
                        return Some(Ok(batch));
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            let open = self.window() > 0;
            tokio::select! {
                _ = self.shutdown.wait_for(|s| *s) => return None,
                r = self.appended.changed(), if open => r.ok()?,
                r = self.commits.changed(), if !open => r.ok()?,
            }
        }
    }

    /// How many more records may be sent before the consumer commits.
    fn window(&self) -> usize {
        self.max_unacked.saturating_sub(self.unacked_len)
    }

    fn sent(&mut self, r: &GroupRecord) {
        let key = TopicPartition { topic: r.topic.name.clone(), partition: r.partition };
        self.unacked.entry(key).or_default().push_back(r.record.offset);
        self.unacked_len += 1;
    }

    /// The consumer committed `next` (the next offset to read) for a
    /// partition: records before it are no longer outstanding, and the
    /// cursor skips ahead if the commit is past it.
    pub(super) fn committed(&mut self, topic: &str, partition: PartitionId, next: Offset) {
        let topic: Arc<str> = Arc::from(topic);
        if let Some(sent) = self.unacked.get_mut(&TopicPartition { topic: topic.clone(), partition }) {
            while sent.front().is_some_and(|&o| o < next) {
                sent.pop_front();
                self.unacked_len -= 1;
            }
        }
        if self.topics.iter().any(|t| t.name == topic) {
            self.positions.advance(&topic, partition, next);
        }
    }

    /// Takes in the group's committed offsets of the partitions with
    /// outstanding records (the client may commit by `POST .../commit`).
    pub(super) fn sync_commits(&mut self) -> Result<(), StoreError> {
        let outstanding: Vec<TopicPartition> =
            self.unacked.iter().filter(|(_, sent)| !sent.is_empty()).map(|(k, _)| k.clone()).collect();
        for key in outstanding {
            if let Some(next) = self.shared.store.committed(&self.group, &key.topic, key.partition)? {
                self.committed(&key.topic, key.partition, next);
            }
        }
        Ok(())
    }
}

/// A record as JSON text, with its topic and partition.
pub(super) fn record_json(r: &GroupRecord) -> Result<String, serde_json::Error> {
    super::codec::record_json(&r.topic.name, r.partition.0, &r.record)
}
