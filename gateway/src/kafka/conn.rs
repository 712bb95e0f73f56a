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
//!
//! With `kafka.sasl`, the connection starts unauthenticated: ApiVersions,
//! SaslHandshake and SaslAuthenticate (or, after a version 0 handshake,
//! bare tokens) are served, anything else closes it, as Kafka does. A
//! failed authentication is answered SASL_AUTHENTICATION_FAILED with the
//! reason, then the connection is closed. Each request of an
//! authenticated connection is checked against its user's topics as they
//! are now (a reload applies at once; a removed user's connection closes).
//!
//! Timeouts: no request for `kafka.idle_timeout`, with no answer owed,
//! closes the connection;
//! a client that takes no response bytes for `kafka.write_timeout` (it
//! sends and never reads) is closed and its `max_connections` slot freed.

use super::auth::Access;
use super::sasl::{Exchange, Step};
use super::versions::{self, Reply};
use super::{Broker, KafkaStats};
use crate::listener::Admitted;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use kafka_protocol::ResponseError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
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
    #[error(
        "{0:?} before SASL authentication (only ApiVersions, SaslHandshake, SaslAuthenticate may come first)"
    )]
    Unauthenticated(ApiKey),
    #[error("SASL: {0}")]
    Sasl(String),
    #[error("SASL authentication failed: {0}")]
    AuthFailed(String),
    #[error("no request for kafka.idle_timeout ({0:?})")]
    Idle(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Serves one connection until the client closes it, bad input, a
/// timeout, or shutdown.
pub(super) async fn serve<S>(broker: Arc<Broker>, stream: S, peer: SocketAddr, _admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    // Answers read but not yet written (the idle timer waits for them).
    let owed = Arc::new(AtomicUsize::new(0));
    let mut writer = tokio::spawn(write_loop(wr, rx, peer, broker.write_timeout, owed.clone()));
    let mut shutdown = broker.shared.shutdown.clone();
    let mut session = Session::new(&broker);
    let stats = &broker.stats;
    let result = tokio::select! {
        r = read_loop(&broker, rd, &tx, &mut session, &owed) => r,
        end = &mut writer => {
            // The writer gave up (write timeout or a broken socket): the
            // read half goes with this future, the slot with `_admitted`.
            writer_ended(&broker, peer, end.ok());
            return;
        }
        _ = shutdown.wait_for(|s| *s) => Ok(()),
    };
    if let Err(e) = result {
        match &e {
            Closed::Oversized(..) => KafkaStats::count(&stats.oversized),
            Closed::Malformed(_) | Closed::Sasl(_) => KafkaStats::count(&stats.malformed),
            Closed::Unsupported { .. } => KafkaStats::count(&stats.unsupported),
            Closed::Unauthenticated(_) => KafkaStats::count(&stats.unauthenticated),
            Closed::AuthFailed(_) => KafkaStats::count(&stats.sasl_failed),
            Closed::Idle(_) => KafkaStats::count(&stats.idle_closed),
            Closed::Io(_) => {}
        }
        match e {
            Closed::Io(e) => tracing::debug!(%peer, error = %e, "Kafka connection failed"),
            e @ Closed::Idle(_) => tracing::debug!(%peer, error = %e, "closing Kafka connection"),
            e => tracing::warn!(%peer, user = session.user(), error = %e, "closing Kafka connection"),
        }
    }
    // Answers to requests already read are still sent, within the write
    // timeout.
    drop(tx);
    match tokio::time::timeout(broker.write_timeout, &mut writer).await {
        Ok(end) => writer_ended(&broker, peer, end.ok()),
        Err(_) => {
            writer.abort();
            writer_ended(&broker, peer, Some(WriteEnd::TimedOut));
        }
    }
}

/// Counts and logs a writer that gave up on a client that does not read
/// (which may also have ended the reader: its answers had nowhere to go).
fn writer_ended(broker: &Broker, peer: SocketAddr, end: Option<WriteEnd>) {
    if matches!(end, Some(WriteEnd::TimedOut)) {
        KafkaStats::count(&broker.stats.write_timeouts);
        tracing::warn!(
            %peer,
            timeout = ?broker.write_timeout,
            "Kafka client does not read its responses: closing the connection (kafka.write_timeout)"
        );
    }
}

/// Where the connection stands with SASL.
enum Session {
    /// No SASL on this listener: everything is allowed.
    Open(Arc<Access>),
    /// SASL required, no handshake yet.
    Start,
    /// After SaslHandshake; `raw`: version 0, the tokens come without
    /// Kafka framing.
    Handshaken { exchange: Exchange, raw: bool },
    /// Authenticated as this user (looked up again for every request, so
    /// a reload's topics apply at once).
    Authenticated(Arc<str>),
}

impl Session {
    fn new(broker: &Broker) -> Session {
        if broker.accounts.is_some() {
            Session::Start
        } else {
            Session::Open(Access::all())
        }
    }

    fn user(&self) -> Option<&str> {
        match self {
            Session::Authenticated(u) => Some(u),
            _ => None,
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    broker: &Arc<Broker>,
    rd: R,
    tx: &mpsc::Sender<Reply>,
    session: &mut Session,
    owed: &AtomicUsize,
) -> Result<(), Closed> {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let idle = broker.idle_timeout;
    loop {
        // Idle: nothing to read and no answer owed (a long-polling fetch
        // keeps its connection). `fill_buf` loses nothing when timed out.
        loop {
            match tokio::time::timeout(idle, rd.fill_buf()).await {
                Ok(Ok([])) => return Ok(()),
                Ok(Ok(_)) => break,
                Ok(Err(e)) => return Err(e.into()),
                Err(_) if owed.load(Ordering::Relaxed) > 0 => continue,
                Err(_) => return Err(Closed::Idle(idle)),
            }
        }
        let len = match tokio::time::timeout(idle, rd.read_i32()).await {
            Err(_) => return Err(Closed::Idle(idle)),
            Ok(Ok(len)) => len,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e.into()),
        };
        let raw = matches!(session, Session::Handshaken { raw: true, .. });
        let shortest = if raw { 0 } else { 8 };
        if len < shortest || len as usize > broker.max_request {
            return Err(if len < 0 || len as usize > broker.max_request {
                Closed::Oversized(i64::from(len), broker.max_request)
            } else {
                Closed::Malformed(format!("frame of {len} bytes is shorter than a request header"))
            });
        }
        let mut buf = BytesMut::zeroed(len as usize);
        match tokio::time::timeout(idle, rd.read_exact(&mut buf)).await {
            Err(_) => return Err(Closed::Idle(idle)),
            Ok(r) => r?,
        };
        let (reply, close) = if raw {
            raw_token(broker, session, &buf).await?
        } else {
            request(broker, session, buf.freeze()).await?
        };
        KafkaStats::count(&broker.stats.requests);
        owed.fetch_add(1, Ordering::Relaxed);
        if tx.send(reply).await.is_err() {
            return Ok(());
        }
        if let Some(e) = close {
            return Err(e);
        }
    }
}

/// A request's answer, and why to close the connection once it is sent.
type Answer = (Reply, Option<Closed>);

/// Decodes one request frame and starts its handler.
async fn request(broker: &Arc<Broker>, session: &mut Session, mut frame: Bytes) -> Result<Answer, Closed> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let unsupported = Closed::Unsupported { key: raw_key, version };
    let key = ApiKey::try_from(raw_key).map_err(|_| Closed::Unsupported { key: raw_key, version })?;
    let sasl = broker.accounts.is_some();
    let Some((lo, hi)) = versions::range(key, sasl) else { return Err(unsupported) };
    if key == ApiKey::ApiVersions && version > hi {
        // KIP-511: answer with what this broker serves, in version 0.
        KafkaStats::count(&broker.stats.unsupported);
        let reply = versions::api_versions_too_new(correlation_id, sasl)
            .map_err(|e| Closed::Malformed(e.to_string()))?;
        return Ok((Box::pin(async move { Ok(Some(reply)) }), None));
    }
    if version < lo || version > hi {
        return Err(unsupported);
    }
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| Closed::Malformed(format!("{key:?} v{version} header: {e}")))?;
    let access = match (&*session, key) {
        (_, ApiKey::ApiVersions) => Access::all(),
        (Session::Open(access), _) => access.clone(),
        (Session::Authenticated(user), _) if !is_sasl(key) => {
            let accounts = broker.accounts.as_ref().expect("SASL sessions only with accounts");
            match accounts.get(user) {
                Some(account) => account.access.clone(),
                None => {
                    return Err(Closed::Sasl(format!("user {user:?} was removed by a configuration reload")))
                }
            }
        }
        (Session::Authenticated(_), _) => {
            return Err(Closed::Sasl(format!(
                "{key:?} after authentication: re-authentication is not supported"
            )))
        }
        (_, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate) => {
            let answer = sasl_request(broker, session, &header, key, &mut frame)
                .await
                .map_err(|e| Closed::Malformed(format!("{key:?} v{version}: {e:#}")))?;
            return Ok(answer);
        }
        (_, key) => return Err(Closed::Unauthenticated(key)),
    };
    let reply = versions::dispatch(broker, &header, key, &mut frame, access)
        .await
        .map_err(|e| Closed::Malformed(format!("{key:?} v{version}: {e:#}")))?;
    if frame.has_remaining() {
        tracing::debug!(api = ?key, version, left = frame.remaining(), "request body had trailing bytes");
    }
    Ok((reply, None))
}

fn is_sasl(key: ApiKey) -> bool {
    matches!(key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
}

/// SaslHandshake and SaslAuthenticate, before authentication.
async fn sasl_request(
    broker: &Arc<Broker>,
    session: &mut Session,
    header: &RequestHeader,
    key: ApiKey,
    body: &mut Bytes,
) -> anyhow::Result<Answer> {
    let accounts = broker.accounts.clone().expect("SASL requests are served only with accounts");
    let (corr, v) = (header.correlation_id, header.request_api_version);
    let ready = |bytes: BytesMut| -> Reply { Box::pin(async move { Ok(Some(bytes)) }) };
    if key == ApiKey::SaslHandshake {
        let req = SaslHandshakeRequest::decode(body, v)?;
        let names = accounts.mechanisms().iter().map(|m| StrBytes::from_static_str(m.name())).collect();
        let mut resp = SaslHandshakeResponse::default().with_mechanisms(names);
        if !matches!(session, Session::Start) {
            resp.error_code = ResponseError::IllegalSaslState.code();
            let why = Closed::Sasl("a second SaslHandshake".into());
            return Ok((ready(versions::frame(corr, v, &resp)?), Some(why)));
        }
        let Some(mechanism) = accounts.offered(&req.mechanism) else {
            resp.error_code = ResponseError::UnsupportedSaslMechanism.code();
            let why = Closed::AuthFailed(format!(
                "mechanism {:?} is not offered (kafka.sasl)",
                req.mechanism.as_str()
            ));
            return Ok((ready(versions::frame(corr, v, &resp)?), Some(why)));
        };
        *session = Session::Handshaken { exchange: Exchange::new(mechanism), raw: v == 0 };
        return Ok((ready(versions::frame(corr, v, &resp)?), None));
    }
    let req = SaslAuthenticateRequest::decode(body, v)?;
    let Session::Handshaken { exchange, raw: false } = session else {
        let resp = SaslAuthenticateResponse::default()
            .with_error_code(ResponseError::IllegalSaslState.code())
            .with_error_message(Some(StrBytes::from_static_str("SaslAuthenticate before SaslHandshake")));
        let why = Closed::Sasl("SaslAuthenticate before SaslHandshake v1".into());
        return Ok((ready(versions::frame(corr, v, &resp)?), Some(why)));
    };
    // (null on success, as Kafka answers.)
    let mut resp = SaslAuthenticateResponse::default().with_error_message(None);
    let close = match exchange.step(&accounts, &req.auth_bytes).await {
        Step::Challenge(bytes) => {
            resp.auth_bytes = bytes.into();
            None
        }
        Step::Done(account, bytes) => {
            resp.auth_bytes = bytes.into();
            authenticated(broker, session, &account.name);
            None
        }
        Step::Failed(message) => {
            resp.error_code = ResponseError::SaslAuthenticationFailed.code();
            resp.error_message = Some(StrBytes::from_string(message.clone()));
            Some(Closed::AuthFailed(message))
        }
    };
    Ok((ready(versions::frame(corr, v, &resp)?), close))
}

fn authenticated(broker: &Broker, session: &mut Session, user: &Arc<str>) {
    KafkaStats::count(&broker.stats.sasl_authenticated);
    tracing::debug!(user = %user, "Kafka client authenticated");
    *session = Session::Authenticated(user.clone());
}

/// A SASL token after a version 0 SaslHandshake: answered with a bare
/// length-prefixed token; a failure just closes the connection (the
/// protocol has no way to say why).
async fn raw_token(broker: &Arc<Broker>, session: &mut Session, token: &[u8]) -> Result<Answer, Closed> {
    let accounts = broker.accounts.clone().expect("SASL sessions only with accounts");
    let Session::Handshaken { exchange, .. } = session else {
        unreachable!("raw tokens only after a v0 handshake")
    };
    let bytes = match exchange.step(&accounts, token).await {
        Step::Challenge(bytes) => bytes,
        Step::Done(account, bytes) => {
            authenticated(broker, session, &account.name);
            bytes
        }
        Step::Failed(message) => return Err(Closed::AuthFailed(message)),
    };
    let mut out = BytesMut::with_capacity(4 + bytes.len());
    out.put_i32(i32::try_from(bytes.len()).unwrap_or(i32::MAX));
    out.put_slice(&bytes);
    Ok((Box::pin(async move { Ok(Some(out)) }), None))
}

/// How the writer ended.
#[derive(Debug)]
enum WriteEnd {
    /// Every answer sent (the reader is done).
    Done,
    /// The socket failed or a handler could not answer.
    Failed,
    /// The client took no bytes for `kafka.write_timeout`.
    TimedOut,
}

async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Reply>,
    peer: SocketAddr,
    timeout: Duration,
    owed: Arc<AtomicUsize>,
) -> WriteEnd {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    let timed = |r: Result<std::io::Result<()>, tokio::time::error::Elapsed>| match r {
        Ok(Ok(())) => None,
        Ok(Err(_)) => Some(WriteEnd::Failed),
        Err(_) => Some(WriteEnd::TimedOut),
    };
    while let Some(reply) = rx.recv().await {
        match reply.await {
            Ok(Some(bytes)) => {
                if let Some(end) = timed(tokio::time::timeout(timeout, wr.write_all(&bytes)).await) {
                    return end;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(%peer, error = %e, "cannot answer a Kafka request; closing the connection");
                return WriteEnd::Failed;
            }
        }
        owed.fetch_sub(1, Ordering::Relaxed);
        // Flush once nothing else is ready, so pipelined answers share a write.
        if rx.is_empty() {
            if let Some(end) = timed(tokio::time::timeout(timeout, wr.flush()).await) {
                return end;
            }
        }
    }
    timed(tokio::time::timeout(timeout, wr.flush()).await).unwrap_or(WriteEnd::Done)
}
