//! The Server-Sent Events transport of the group stream: one event per
//! record (`id: topic/partition/offset`, `data:` the record as JSON), and a
//! `: keep-alive` comment when nothing was sent for a while, so proxies and
//! clients see a live connection. The body is pulled by the connection, so
//! a slow reader is held back by TCP and at most one batch is in memory.

use super::stream::{record_json, GroupStream};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

/// Interval of keep-alive comments on an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The streaming response. It ends at shutdown, on a store error (after an
/// `error` event), or when the client goes away (the body is dropped).
pub(super) fn respond(stream: GroupStream) -> Response {
    tracing::debug!(group = stream.group(), "SSE group stream opened");
    let events = futures_util::stream::unfold(Some(Pending { stream, events: VecDeque::new() }), next_event);
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text(" keep-alive")).into_response()
}

/// A stream and the events of its current batch not yet sent.
struct Pending {
    stream: GroupStream,
    events: VecDeque<Event>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        tracing::debug!(group = self.stream.group(), "SSE group stream closed");
    }
}

/// One step of the event stream; `None` state means it has ended.
async fn next_event(state: Option<Pending>) -> Option<(Result<Event, Infallible>, Option<Pending>)> {
    let mut p = state?;
    loop {
        if let Some(event) = p.events.pop_front() {
            return Some((Ok(event), Some(p)));
        }
        match p.stream.next_batch().await? {
            Ok(batch) => {
                for r in &batch {
                    let id = format!("{}/{}/{}", r.topic.name, r.partition, r.record.offset);
                    let event = match record_json(r) {
                        Ok(json) => {
                            crate::histograms::delivered(
                                &r.topic.service,
                                "sse",
                                [r.record.record.timestamp_ms],
                            );
                            Event::default().id(id).data(json)
                        }
                        Err(e) => return Some((Ok(error_event(&format!("cannot encode {id}: {e}"))), None)),
                    };
                    p.events.push_back(event);
                }
            }
            Err(e) => {
                tracing::warn!(group = p.stream.group(), error = %e, "group stream failed");
                return Some((Ok(error_event(&e.to_string())), None));
            }
        }
    }
}

/// The last event of a failed stream: `event: error`, `data: {"error": ...}`.
fn error_event(message: &str) -> Event {
    Event::default().event("error").data(serde_json::json!({ "error": message }).to_string())
}
