//! The HTTP sink: POSTs each batch as gzip-compressed JSON lines and counts
//! it delivered on a 2xx answer.
//!
//! Wire format, one request per batch:
//!
//! ```text
//! POST <path of the URL>
//! Content-Type: application/x-ndjson
//! Content-Encoding: gzip
//! X-Sluice-Node: <node id>
//!
//! {"topic":"edge.pi-01.alarms","key":"dev-1","value":{"t":21.5},"headers":{"sluice.node":"pi-01",...},"timestamp":1700000000000,"partition":0,"offset":41}
//! {"topic":"edge.pi-01.alarms","key":null,"value_b64":"AAEC/w==","headers":{...},"timestamp":1700000000001,"partition":0,"offset":42}
//! ```
//!
//! One JSON object per record, in offset order, each on its own line:
//! `topic` is the remote topic; `key` is the key as text, or null (no key,
//! or a key that is not UTF-8, which then comes as `key_b64`); a value whose
//! bytes are valid JSON comes as `value` (embedded as is, except that line
//! breaks between JSON tokens become spaces so the line stays one line),
//! other bytes as `value_b64` (standard base64), the same rule as sluice's
//! HTTP API; `headers` maps names to values (lossy UTF-8; with repeated
//! names the last wins) and includes the provenance headers `sluice.node`,
//! `sluice.service`, `sluice.topic`, `sluice.partition` and `sluice.offset`;
//! `timestamp` is milliseconds since the epoch; `partition` and `offset` are
//! the local ones.
//!
//! Any 2xx answer acknowledges the whole batch. Other statuses, connection
//! errors and timeouts fail it (the worker retries it whole, so the central
//! side may see a batch twice and de-duplicates by the provenance headers).
//!
//! Connection: one keep-alive HTTP/1.1 connection (hyper) to the first URL
//! of `brokers`, the next ones tried in turn when connecting fails. A
//! request that fails on a reused connection (the server closed it while
//! idle) is sent once more on a fresh one. `https://` URLs connect over
//! TLS (rustls with ring): the server's certificate must be signed by a CA
//! of the uplink's `tls.ca` (default, also without a `tls` table, the
//! system bundle) and name the URL's host; `tls.cert` and `tls.key` are
//! presented to servers that ask for a client certificate.

use crate::sink::{Batch, OutRecord, Sink, SinkError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use flate2::write::GzEncoder;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde_json::value::RawValue;
use sluice_config::UplinkConfig;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// Bytes of an error answer's body quoted in the error.
const BODY_QUOTE: usize = 256;

/// Timeouts of an [`HttpSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkOptions {
    /// Longest wait for the TCP connection and HTTP handshake. Default 10s.
    pub connect_timeout: Duration,
    /// Longest wait from sending a request to the end of the answer.
    /// Default 20s.
    pub response_timeout: Duration,
}

impl Default for HttpSinkOptions {
    fn default() -> HttpSinkOptions {
        HttpSinkOptions {
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(20),
        }
    }
}

/// POSTs batches to a central HTTP endpoint (see the module docs for the
/// wire format).
#[derive(Debug)]
pub struct HttpSink {
    inner: tokio::sync::Mutex<Inner>,
}

/// The sink's state; one send holds it at a time.
#[derive(Debug)]
struct Inner {
    endpoints: Vec<Endpoint>,
    /// Index into `endpoints` tried first.
    preferred: usize,
    node: HeaderValue,
    options: HttpSinkOptions,
    /// TLS for the `https://` endpoints.
    tls: Option<Arc<rustls::ClientConfig>>,
    conn: Option<Conn>,
}

/// A parsed `http://` or `https://` URL.
#[derive(Debug, Clone)]
struct Endpoint {
    url: String,
    /// The name the server's certificate must carry; `Some` for https.
    tls_name: Option<ServerName<'static>>,
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header.
    host: HeaderValue,
    /// Path and query.
    path: String,
}

impl HttpSink {
    /// A sink for `config` (its `brokers` are `http://` URLs) with default
    /// timeouts. Does not connect yet; the first `send` does.
    pub fn new(config: &UplinkConfig, node: &str) -> Result<HttpSink, SinkError> {
        HttpSink::with_options(config, node, HttpSinkOptions::default())
    }

    /// A sink with explicit timeouts.
    pub fn with_options(
        config: &UplinkConfig,
        node: &str,
        options: HttpSinkOptions,
    ) -> Result<HttpSink, SinkError> {
        if config.brokers.is_empty() {
            return Err(SinkError(format!(
                "uplink {}: brokers is empty; give the http:// URL to POST to",
                config.name
            )));
        }
        let endpoints = config
            .brokers
            .iter()
            .map(|u| {
                parse_url(u).map_err(|e| SinkError(format!("uplink {}: broker {u:?}: {e}", config.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let node = HeaderValue::from_str(node)
            .map_err(|_| SinkError(format!("node id {node:?} cannot be sent as an HTTP header")))?;
        let tls = if endpoints.iter().any(|e| e.tls_name.is_some()) {
            let field = format!("uplink[{:?}].tls", config.name);
            let tls = config.tls.clone().unwrap_or_default();
            let mut client = sluice_config::tls::client_config(&tls, &field).map_err(|e| SinkError(e.0))?;
            client.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(client))
        } else {
            None
        };
        let inner = Inner { endpoints, preferred: 0, node, options, tls, conn: None };
        Ok(HttpSink { inner: tokio::sync::Mutex::new(inner) })
    }
}

impl Sink for HttpSink {
    async fn send(&self, batch: &Batch) -> Result<(), SinkError> {
        self.inner.lock().await.send(batch).await
    }

    fn reset(&self) {
        // The worker resets only between sends.
        if let Ok(mut inner) = self.inner.try_lock() {
            inner.conn = None;
        }
    }
}

impl Inner {
    /// Opens a connection to the preferred endpoint, then to the others.
    async fn connect(&mut self) -> Result<Conn, SinkError> {
        let mut failures = Vec::new();
        for i in 0..self.endpoints.len() {
            let idx = (self.preferred + i) % self.endpoints.len();
            match Conn::open(&self.endpoints[idx], idx, self.tls.as_ref(), self.options.connect_timeout).await
            {
                Ok(conn) => {
                    self.preferred = idx;
                    return Ok(conn);
                }
                Err(e) => failures.push(e),
            }
        }
        Err(SinkError(failures.join("; ")))
    }

    /// POSTs `body` on `conn`.
    async fn post(&self, conn: &mut Conn, body: Bytes) -> Result<(), PostError> {
        let ep = &self.endpoints[conn.endpoint];
        let req = Request::post(ep.path.as_str())
            .header(HOST, ep.host.clone())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .header(CONTENT_ENCODING, "gzip")
            .header("x-sluice-node", self.node.clone())
            .header(USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| PostError::Other(format!("cannot build the request: {e}")))?;
        let exchange = async {
            conn.sender.ready().await.map_err(PostError::Transport)?;
            let resp = conn.sender.send_request(req).await.map_err(PostError::Transport)?;
            let status = resp.status();
            let quote = read_body(resp.into_body(), if status.is_success() { 0 } else { BODY_QUOTE }).await;
            if status.is_success() {
                // A 2xx is the acknowledgement even if its body broke off.
                Ok(())
            } else {
                Err(PostError::Status(status, quote.unwrap_or_else(|e| format!("(body unreadable: {e})"))))
            }
        };
        match tokio::time::timeout(self.options.response_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(PostError::Other(format!("no answer within {:?}", self.options.response_timeout))),
        }
    }

    async fn send(&mut self, batch: &Batch) -> Result<(), SinkError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let body = encode_batch(batch)?;
        // Taken out for the duration of the send: if this future is dropped
        // half-way, the connection (with a request in flight) goes too.
        let (mut conn, reused) = match self.conn.take() {
            Some(c) if !c.sender.is_closed() => (c, true),
            _ => (self.connect().await?, false),
        };
        let mut result = self.post(&mut conn, body.clone()).await;
        if reused && matches!(result, Err(PostError::Transport(_))) {
            // The server may have closed the idle keep-alive connection just
            // as the request went out: once more on a fresh connection.
            drop(conn);
            conn = self.connect().await?;
            result = self.post(&mut conn, body).await;
        }
        match result {
            Ok(()) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => Err(e.into_sink_error(&self.endpoints[conn.endpoint].url)),
        }
    }
}

#[derive(Debug)]
enum PostError {
    Transport(hyper::Error),
    Status(StatusCode, String),
    Other(String),
}

impl PostError {
    fn into_sink_error(self, url: &str) -> SinkError {
        match self {
            PostError::Transport(e) => SinkError(format!("POST {url}: {}", chain(&e))),
            PostError::Status(status, body) if body.is_empty() => {
                SinkError(format!("POST {url} answered {status}"))
            }
            PostError::Status(status, body) => SinkError(format!("POST {url} answered {status}: {body}")),
            PostError::Other(e) => SinkError(format!("POST {url}: {e}")),
        }
    }
}

/// One keep-alive HTTP/1.1 connection and the task driving it.
#[derive(Debug)]
struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    endpoint: usize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    async fn open(
        ep: &Endpoint,
        endpoint: usize,
        tls: Option<&Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Conn, String> {
        let open = async {
            let stream = tokio::net::TcpStream::connect(&ep.addr)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", ep.url))?;
            stream.set_nodelay(true).map_err(|e| format!("cannot set TCP_NODELAY for {}: {e}", ep.url))?;
            match (&ep.tls_name, tls) {
                (Some(name), Some(tls)) => {
                    let stream = TlsConnector::from(tls.clone())
                        .connect(name.clone(), stream)
                        .await
                        .map_err(|e| format!("TLS handshake with {} failed: {}", ep.url, chain(&e)))?;
                    Conn::handshake(ep, endpoint, stream).await
                }
                _ => Conn::handshake(ep, endpoint, stream).await,
            }
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(r) => r,
            Err(_) => Err(format!("cannot connect to {}: no connection within {timeout:?}", ep.url)),
        }
    }

    /// The HTTP/1.1 handshake on a connected (plain or TLS) stream.
    async fn handshake<S>(ep: &Endpoint, endpoint: usize, stream: S) -> Result<Conn, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {} failed: {}", ep.url, chain(&e)))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "uplink HTTP connection ended");
            }
        });
        Ok(Conn { sender, task, endpoint })
    }
}

/// Reads a body to its end and returns its first `keep` bytes as text.
async fn read_body(mut body: Incoming, keep: usize) -> Result<String, hyper::Error> {
    let mut quote = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = keep.saturating_sub(quote.len());
            quote.extend_from_slice(&data[..room.min(data.len())]);
        }
    }
    Ok(String::from_utf8_lossy(&quote).trim().to_owned())
}

/// An error and its causes, `outer: inner: ...`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// One line of the body.
#[derive(Serialize)]
struct Line<'a> {
    topic: &'a str,
    key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_b64: Option<String>,
    headers: BTreeMap<&'a str, Cow<'a, str>>,
    timestamp: i64,
    partition: u32,
    offset: u64,
}

impl<'a> Line<'a> {
    fn new(batch: &'a Batch, r: &'a OutRecord) -> Line<'a> {
        let (key, key_b64) = r.key.as_deref().map_or((None, None), utf8_or_b64);
        let value = json_value(&r.value);
        let value_b64 = value.is_none().then(|| B64.encode(&r.value));
        Line {
            topic: &batch.remote_topic,
            key,
            key_b64,
            value,
            value_b64,
            headers: r.headers.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v))).collect(),
            timestamp: r.timestamp_ms,
            partition: batch.partition,
            offset: r.offset,
        }
    }
}

/// The gzip-compressed JSON-lines body of a batch.
fn encode_batch(batch: &Batch) -> Result<Bytes, SinkError> {
    let cap = usize::try_from(batch.bytes() / 4).unwrap_or(0);
    let mut gz = GzEncoder::new(Vec::with_capacity(cap), flate2::Compression::default());
    for r in &batch.records {
        serde_json::to_writer(&mut gz, &Line::new(batch, r))
            .map_err(|e| SinkError::new(&format!("cannot encode the record at offset {}", r.offset), e))?;
        gz.write_all(b"\n").map_err(|e| SinkError::new("cannot compress the batch", e))?;
    }
    let body = gz.finish().map_err(|e| SinkError::new("cannot compress the batch", e))?;
    Ok(Bytes::from(body))
}

/// Bytes as text when they are UTF-8 (first), else as base64 (second).
pub(crate) fn utf8_or_b64(bytes: &[u8]) -> (Option<&str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s), None),
        Err(_) => (None, Some(B64.encode(bytes))),
    }
}

/// Bytes that are one valid JSON value, as raw JSON on one line.
fn json_value(bytes: &[u8]) -> Option<Box<RawValue>> {
    let raw: &RawValue = serde_json::from_slice(bytes).ok()?;
    let text = raw.get();
    if text.contains(['\n', '\r']) {
        // Raw line breaks can only sit between tokens (inside strings they
        // are escaped), so spaces keep the same JSON value.
        RawValue::from_string(text.replace(['\n', '\r'], " ")).ok()
    } else {
        Some(raw.to_owned())
    }
}

/// An `http://` or `https://host[:port]/path` URL.
fn parse_url(s: &str) -> Result<Endpoint, String> {
    let uri: Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err("expected an http:// or https:// URL".to_owned()),
    };
    let authority = uri.authority().ok_or("the URL has no host")?;
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".to_owned());
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| format!("invalid host: {e}"))?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = format!("{}:{port}", authority.host());
    let tls_name = if tls {
        // An IPv6 host comes in brackets; the certificate names the address.
        let name = authority.host().trim_start_matches('[').trim_end_matches(']');
        Some(ServerName::try_from(name.to_owned()).map_err(|e| format!("invalid host for TLS: {e}"))?)
    } else {
        None
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok(Endpoint { url: s.to_owned(), tls_name, addr, host, path })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_parse() {
        let ep = parse_url("http://central:8080/ingest?x=1").unwrap();
        assert_eq!((ep.addr.as_str(), ep.path.as_str()), ("central:8080", "/ingest?x=1"));
        assert_eq!(ep.host, "central:8080");
        let ep = parse_url("http://central").unwrap();
        assert_eq!((ep.addr.as_str(), ep.path.as_str()), ("central:80", "/"));
        let ep = parse_url("http://[::1]:9000/x").unwrap();
        assert_eq!(ep.addr, "[::1]:9000");
        let ep = parse_url("https://central/ingest").unwrap();
        assert_eq!(
            (ep.addr.as_str(), ep.tls_name.map(|n| n.to_str().into_owned())),
            ("central:443", Some("central".into()))
        );
        let ep = parse_url("https://[::1]:8443/x").unwrap();
        assert_eq!(ep.tls_name.map(|n| n.to_str().into_owned()).as_deref(), Some("::1"));
        assert!(parse_url("ftp://central/").is_err());
        assert!(parse_url("central:8080").is_err());
        assert!(parse_url("http://u:p@central/").is_err());
    }

    #[test]
    fn json_values_stay_on_one_line() {
        let v = json_value(b" {\n  \"a\": \"x\\ny\",\r\n  \"b\": [1, 2]\n}\n").map(|v| v.get().to_owned());
        assert_eq!(v.as_deref(), Some(r#"{   "a": "x\ny",    "b": [1, 2] }"#));
        assert_eq!(json_value(b"21.5").map(|v| v.get().to_owned()).as_deref(), Some("21.5"));
        assert!(json_value(b"plain text").is_none());
        assert!(json_value(&[0xff]).is_none());
    }
}
