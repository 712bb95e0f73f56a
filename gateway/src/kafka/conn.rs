//! One Kafka connection: a reader that takes frames in order (each at most
//! `kafka.max_request` bytes) and starts their handlers, and a writer that
//! sends the answers in request order, as Kafka requires. At most
//! [`MAX_IN_FLIGHT`] requests wait for their answers; past that the reader
//! stops reading, so a client that sends and never reads holds a bounded
//! amount of memory.
//!
//! Bad input (a frame too large, a body that does not decode, an API or
//! version sluice does not serve) is counted, logged once, and closes this
//! connection only.

use super::versions::{self, Reply};
use super::{Broker, KafkaStats};
use crate::listener::Admitted;
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::Decodable;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::mpsc;

/// Requests read but not yet answered, per connection.
const MAX_IN_FLIGHT: usize = 16;

/// Why a connection is closed by sluice.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("request frame of {0} bytes is larger than kafka.max_request ({1} bytes)")]
    Oversized(i64, usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("API key {key} version {version} is not served (see ApiVersions)")]
    Unsupported { key: i16, version: i16 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves one connection until the client closes it, bad input, or
/// shutdown.
pub(super) async fn serve<S>(broker: Arc<Broker>, stream: S, peer: SocketAddr, _admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_loop(wr, rx, peer));
    let mut shutdown = broker.shared.shutdown.clone();
    let result = tokio::select! {
        r = read_loop(&broker, rd, &tx) => r,
        _ = shutdown.wait_for(|s| *s) => Ok(()),
    };
    if let Err(e) = result {
        let stats = &broker.stats;
        match &e {
            Closed::Oversized(..) => KafkaStats::count(&stats.oversized),
            Closed::Malformed(_) => KafkaStats::count(&stats.malformed),
            Closed::Unsupported { .. } => KafkaStats::count(&stats.unsupported),
            Closed::Io(_) => {}
        }
        match e {
            Closed::Io(e) => tracing::debug!(%peer, error = %e, "Kafka connection failed"),
            e => tracing::warn!(%peer, error = %e, "closing Kafka connection"),
        }
    }
    // Answers to requests already read are still sent.
    drop(tx);
    let _ = writer.await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    broker: &Arc<Broker>,
    rd: R,
    tx: &mpsc::Sender<Reply>,
) -> Result<(), Closed> {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let len = match rd.read_i32().await {
            Ok(len) => len,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if len < 8 || len as usize > broker.max_request {
            return Err(if len < 0 || len as usize > broker.max_request {
                Closed::Oversized(i64::from(len), broker.max_request)
            } else {
                Closed::Malformed(format!("frame of {len} bytes is shorter than a request header"))
            });
        }
        let mut buf = BytesMut::zeroed(len as usize);
        rd.read_exact(&mut buf).await?;
        let reply = request(broker, buf.freeze()).await?;
        KafkaStats::count(&broker.stats.requests);
        if tx.send(reply).await.is_err() {
            return Ok(());
        }
    }
}

/// Decodes one request frame and starts its handler.
async fn request(broker: &Arc<Broker>, mut frame: Bytes) -> Result<Reply, Closed> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let unsupported = Closed::Unsupported { key: raw_key, version };
    let key = ApiKey::try_from(raw_key).map_err(|_| Closed::Unsupported { key: raw_key, version })?;
    let Some((lo, hi)) = versions::range(key) else { return Err(unsupported) };
    if key == ApiKey::ApiVersions && version > hi {
        // KIP-511: answer with what this broker serves, in version 0.
        KafkaStats::count(&broker.stats.unsupported);
        let reply =
            versions::api_versions_too_new(correlation_id).map_err(|e| Closed::Malformed(e.to_string()))?;
        return Ok(Box::pin(async move { Ok(Some(reply)) }));
    }
    if version < lo || version > hi {
        return Err(unsupported);
    }
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| Closed::Malformed(format!("{key:?} v{version} header: {e}")))?;
    let reply = versions::dispatch(broker, &header, key, &mut frame)
        .await
        .map_err(|e| Closed::Malformed(format!("{key:?} v{version}: {e:#}")))?;
    if frame.has_remaining() {
        tracing::debug!(api = ?key, version, left = frame.remaining(), "request body had trailing bytes");
    }
    Ok(reply)
}

async fn write_loop<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::Receiver<Reply>, peer: SocketAddr) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(reply) = rx.recv().await {
        match reply.await {
            Ok(Some(bytes)) => {
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot answer a Kafka request; closing the connection");
                return;
            }
        }
        // Flush once nothing else is ready, so pipelined answers share a write.
        if rx.is_empty() && wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
}
