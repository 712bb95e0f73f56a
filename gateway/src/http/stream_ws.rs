//! The WebSocket transport of the group stream. Server to client: one text
//! message per record (the record as JSON with topic and partition), and
//! `{"committed": n}` or `{"error": "..."}` answering each client message.
//! Client to server: acks `{"ack": [{"topic": "a", "partition": 0,
//! "offset": 42}]}` (offset = the next to read, as in a commit), committed
//! through the same path as `POST .../commit`; or `{"processed": [...]}`
//! (same entries), which only frees the stream's window, without a durable
//! commit, answered `{"processed": n}`. A bad ack gets an error
//! message and the socket stays open. At shutdown the server sends a close
//! frame (1001); a store failure sends an error, then closes with 1011.

use super::groups::{commit_offsets, CommitEntry};
use super::stream::{record_json, GroupStream};
use crate::delivery::GroupRecord;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use sluice_store::{Offset, PartitionId};
use std::time::Duration;

/// How long the closing messages may take to send.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// A client message: positions to commit, or positions processed (flow
/// control only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckMessage {
    ack: Option<Vec<CommitEntry>>,
    processed: Option<Vec<CommitEntry>>,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The client closed or went away.
    Client,
    /// The gateway is shutting down.
    Shutdown,
    /// Reading the log failed.
    Failed(String),
}

/// Upgrades the connection and serves the stream on it, as one task that
/// ends with the connection. Client messages are limited to `http.max_body`.
pub(super) fn respond(ws: WebSocketUpgrade, stream: GroupStream) -> Response {
    let limit = usize::try_from(stream.shared().config.http.max_body.as_u64()).unwrap_or(usize::MAX);
    ws.max_message_size(limit).on_upgrade(move |socket| serve(socket, stream))
}

async fn serve(mut socket: WebSocket, mut stream: GroupStream) {
    tracing::debug!(group = stream.group(), "WebSocket group stream opened");
    let end = run(&mut socket, &mut stream).await;
    let farewell = async {
        let close = match &end {
            End::Client => return,
            End::Shutdown => (close_code::AWAY, "sluice is shutting down"),
            End::Failed(message) => {
                tracing::warn!(group = stream.group(), error = %message, "group stream failed");
                let _ = socket.send(Message::Text(error_json(message).into())).await;
                (close_code::ERROR, "reading the log failed")
            }
        };
        let (code, reason) = close;
        let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
    };
    // A client that stopped reading cannot hold the task: the last words
    // get a bounded time.
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await;
    tracing::debug!(group = stream.group(), end = ?end, "WebSocket group stream closed");
}

async fn run(socket: &mut WebSocket, stream: &mut GroupStream) -> End {
    let mut shutdown = stream.shutdown();
    loop {
        tokio::select! {
            // Acks first: they are what opens the window.
            biased;
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let reply = on_ack(stream, &text).await;
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        return End::Client;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = error_json("send acks as JSON text messages");
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        return End::Client;
                    }
                }
                // The WebSocket layer answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return End::Client,
            },
            batch = stream.next_batch() => {
                let batch = match batch {
                    None => return End::Shutdown,
                    Some(Err(e)) => return End::Failed(e.to_string()),
                    Some(Ok(batch)) => batch,
                };
                // A client that does not read must not hold up shutdown.
                tokio::select! {
                    sent = send_records(socket, &batch) => if let Err(end) = sent { return end },
                    _ = shutdown.wait_for(|s| *s) => return End::Shutdown,
                }
            }
        }
    }
}

async fn send_records(socket: &mut WebSocket, batch: &[GroupRecord]) -> Result<(), End> {
    for r in batch {
        let text = record_json(r).map_err(|e| End::Failed(format!("cannot encode a record: {e}")))?;
        socket.send(Message::Text(text.into())).await.map_err(|_| End::Client)?;
        crate::histograms::delivered(&r.topic.service, "websocket", [r.record.record.timestamp_ms]);
    }
    Ok(())
}

/// Commits an ack message; the reply is `{"committed": n}` or an error.
async fn on_ack(stream: &mut GroupStream, text: &str) -> String {
    let expected = "expected {\"ack\": [{\"topic\", \"partition\", \"offset\"}]} or {\"processed\": [...]}";
    let (ack, processed) = match serde_json::from_str::<AckMessage>(text) {
        Ok(AckMessage { ack: None, processed: None }) => {
            return error_json(&format!("invalid message (no ack); {expected}"))
        }
        Ok(m) => (m.ack.unwrap_or_default(), m.processed.unwrap_or_default()),
        Err(e) => return error_json(&format!("invalid message ({e}); {expected}")),
    };
    if ack.is_empty() && !processed.is_empty() {
        for e in &processed {
            stream.committed(&e.topic, PartitionId(e.partition), Offset(e.offset));
        }
        return serde_json::json!({ "processed": processed.len() }).to_string();
    }
    for e in &processed {
        stream.committed(&e.topic, PartitionId(e.partition), Offset(e.offset));
    }
    let shared = stream.shared().clone();
    match commit_offsets(&shared, stream.access(), stream.group(), &ack, "ack").await {
        Ok(()) => {
            for e in &ack {
                stream.committed(&e.topic, PartitionId(e.partition), Offset(e.offset));
            }
            serde_json::json!({ "committed": ack.len() }).to_string()
        }
        Err(err) => {
            // Entries before the bad one were committed: take them in.
            if let Err(e) = stream.sync_commits() {
                tracing::warn!(group = stream.group(), error = %e, "cannot re-read committed offsets");
            }
            error_json(err.message())
        }
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}
