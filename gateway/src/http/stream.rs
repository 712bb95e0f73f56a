//! `GET /v1/groups/{group}/stream?topics=a,b[&max_unacked=N]`: push
//! delivery of a consumer group's records in priority order, as Server-Sent
//! Events ([`super::stream_sse`]) or over a WebSocket ([`super::stream_ws`])
//! on the same path. Both are fed by one [`GroupStream`].
//!
//! A stream starts at the group's committed positions and keeps a cursor
//! per partition in memory, so it does not resend within one connection.
//! Durable progress is only the client's commit (`POST .../commit`, or an
//! ack over the WebSocket): a new connection resumes from the committed
//! positions and delivers again what was sent but not committed.
//!
//! **The window is sized in time.** Records sent and not yet committed
//! (acked) past sit in front of anything the stream picks later, whatever
//! its priority, so the stream keeps only about what the consumer gets
//! through before its next commit, plus `target_delay_ms` (default 10):
//! the window is the consumer's committed records per second, measured
//! while it had a backlog, times (its interval between commits + the
//! target delay), between [`MIN_WINDOW`] and `max_unacked` (default 1000,
//! the window a stream starts with). When a commit finds that the consumer
//! had gone through everything sent (it waited for the window), the window
//! doubles. So an alarm overtakes a bulk backlog within about one commit
//! interval plus the target delay, and a slow consumer keeps its
//! throughput. A consumer that never commits still holds the server to
//! `max_unacked` records. Over a WebSocket, `{"processed": [...]}`
//! messages move the window without committing (flow control without the
//! durable write), for consumers that commit less often than they want
//! fresh alarms.
//!
//! Records are taken from the scheduler at most [`BATCH`] at a time and
//! never more than the window allows, so the pick is made when there is
//! room to send.

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
/// Smallest window of a stream.
pub(super) const MIN_WINDOW: usize = 8;
/// Default `target_delay_ms`.
const DEFAULT_TARGET_MS: u64 = 10;
/// Largest `target_delay_ms`.
const MAX_TARGET_MS: u64 = 60_000;

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
    let params = query_params(query, &["topics", "max_unacked", "target_delay_ms"])?;
    let names: Vec<String> = params
        .get("topics")
        .map(|list| list.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let topics = lookup_topics(&shared, &access, &names)?;
    let max_unacked = uint_param(&params, "max_unacked", DEFAULT_MAX_UNACKED, MAX_UNACKED)?;
    if max_unacked == 0 {
        return Err(ApiError::bad_request(format!("max_unacked: 0 is outside 1..={MAX_UNACKED}")));
    }
    let target = uint_param(&params, "target_delay_ms", DEFAULT_TARGET_MS, MAX_TARGET_MS)?;
    let window = Window::new(max_unacked as usize, std::time::Duration::from_millis(target));
    let stream = GroupStream::open(shared, access, group, topics, window)?;
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
    /// Records freed by commits since the window last learned.
    freed: usize,
    window: Window,
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
        window: Window,
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
            freed: 0,
            window,
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
            let commits = self.commits.has_changed().unwrap_or(false);
            self.commits.borrow_and_update();
            if commits || self.window() == 0 {
                if let Err(e) = self.sync_commits() {
                    return Some(Err(e));
                }
            }
            if self.freed > 0 {
                // One commit (or ack message) may free records of several
                // partitions: the window learns from all of them at once.
                self.window.committed(
                    std::mem::take(&mut self.freed),
                    self.unacked_len,
                    std::time::Instant::now(),
                );
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
            if !open {
                self.window.full = true;
            }
            tokio::select! {
                _ = self.shutdown.wait_for(|s| *s) => return None,
                r = self.appended.changed(), if open => r.ok()?,
                r = self.commits.changed() => r.ok()?,
            }
        }
    }

    /// How many more records may be sent before the consumer commits.
    fn window(&self) -> usize {
        self.window.size.saturating_sub(self.unacked_len)
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
        let mut done = 0;
        if let Some(sent) = self.unacked.get_mut(&TopicPartition { topic: topic.clone(), partition }) {
            while sent.front().is_some_and(|&o| o < next) {
                sent.pop_front();
                done += 1;
            }
        }
        self.unacked_len -= done;
        self.freed += done;
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

/// The window of a stream: how many records may be outstanding, learned
/// from the consumer's commits (see the module docs).
#[derive(Debug)]
pub(super) struct Window {
    /// Records that may be outstanding now.
    size: usize,
    /// `max_unacked`.
    max: usize,
    target: std::time::Duration,
    /// The window was full (the stream had more to send) since the last
    /// commit.
    full: bool,
    /// The last commit that freed records.
    last: Option<std::time::Instant>,
    /// Smoothed records per second committed while backlogged, and the
    /// smoothed interval between commits (seconds).
    rate: Option<f64>,
    interval: Option<f64>,
}

impl Window {
    pub(super) fn new(max: usize, target: std::time::Duration) -> Window {
        Window { size: max, max, target, full: false, last: None, rate: None, interval: None }
    }

    /// A commit freed `done` records, `left` are still outstanding.
    fn committed(&mut self, done: usize, left: usize, now: std::time::Instant) {
        let smooth = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| o * 0.7 + new * 0.3));
        let Some(last) = self.last.replace(now) else { return };
        let dt = now.saturating_duration_since(last).as_secs_f64().max(1e-4);
        let backlogged = std::mem::take(&mut self.full);
        if !backlogged {
            return;
        }
        self.interval = smooth(self.interval, dt);
        self.rate = smooth(self.rate, done as f64 / dt);
        if left == 0 {
            // The consumer went through everything it had: it waited.
            self.size = (self.size * 2).min(self.max);
            return;
        }
        if let (Some(rate), Some(interval)) = (self.rate, self.interval) {
            let want = rate * (interval + self.target.as_secs_f64());
            self.size = (want.ceil() as usize).clamp(MIN_WINDOW.min(self.max), self.max);
        }
    }
}

/// A record as JSON text, with its topic and partition.
pub(super) fn record_json(r: &GroupRecord) -> Result<String, serde_json::Error> {
    super::codec::record_json(&r.topic.name, r.partition.0, &r.record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_window_follows_the_consumers_commits() {
        let t0 = Instant::now();
        let mut w = Window::new(1000, Duration::from_millis(10));
        assert_eq!(w.size, 1000, "max_unacked to start with");
        w.full = true;
        w.committed(200, 800, t0);
        // A consumer committing 200 records every 100 ms with a backlog.
        for i in 1..=10 {
            w.full = true;
            w.committed(200, 20, t0 + Duration::from_millis(100 * i));
        }
        // 2000/s x (100 ms + 10 ms).
        assert!((215..=225).contains(&w.size), "window {}", w.size);
        // Without a backlog nothing is learned.
        w.committed(5, 0, t0 + Duration::from_millis(1200));
        assert!((215..=225).contains(&w.size), "window {}", w.size);
        // It went through everything it had: the window was too small.
        w.full = true;
        let before = w.size;
        w.committed(before, 0, t0 + Duration::from_millis(1300));
        assert_eq!(w.size, 2 * before);
        // Never past max_unacked, never below the minimum.
        let mut small = Window::new(1000, Duration::from_millis(10));
        for i in 0..20 {
            small.full = true;
            small.committed(1, 1, t0 + Duration::from_secs(i));
        }
        assert_eq!(small.size, MIN_WINDOW);
    }
}
