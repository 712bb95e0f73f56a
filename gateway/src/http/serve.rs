//! Serving the API on a listener: plain HTTP/1.1 or HTTPS, with the
//! limits of `[http]` (axum::serve has neither TLS nor timeouts).
//!
//! Per connection:
//! - admitted through a [`Gate`] of `http.max_connections` (over it, the
//!   connection is closed at once and counted); the slot is held for the
//!   connection's whole life, WebSocket streams included;
//! - with `[http.tls]`, the TLS handshake under `http.tls.handshake_timeout`;
//! - `http.idle_timeout`: hyper's header read timer, which runs from accept
//!   and from the end of each response until the next request's headers are
//!   complete, so a connection that sends nothing, or sits idle between
//!   keep-alive requests, is closed;
//! - `http.header_timeout`: from the first byte of a request to the end of
//!   its headers (`HeaderDeadline`), so headers dribbled byte by byte are
//!   cut off early. Neither timer runs while a request is being handled
//!   (long-polls, SSE streams) or after a WebSocket upgrade.
//!
//! On shutdown the listener closes, idle connections close at once and
//! busy ones after their current response.

use crate::listener::{Admitted, Gate, ListenerStats, TlsListener};
use axum::body::Body;
use axum::Router;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The limits a connection is served with.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `http.header_timeout`.
    pub header_timeout: Duration,
    /// `http.idle_timeout`.
    pub idle_timeout: Duration,
    /// TLS (`[http.tls]`), if configured.
    pub tls: Option<TlsListener>,
}

/// Serves `app` on `listener` until `shutdown` turns true, then waits for
/// the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            (tcp, peer, admitted) = gate.accept(&listener, "http.max_connections") => {
                let stats = gate.stats().clone();
                connections.spawn(connection(tcp, peer, app.clone(), limits.clone(), admitted, stats, shutdown.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Arc<Limits>,
    admitted: Admitted,
    stats: Arc<ListenerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    match &limits.tls {
        None => serve_connection(tcp, peer, app, &limits, admitted, stats, shutdown).await,
        Some(tls) => {
            let stream = tokio::select! {
                stream = tls.accept(tcp, peer, &stats) => stream,
                // A handshake in progress does not hold up the drain.
                () = stopped(&mut shutdown) => None,
            };
            if let Some(stream) = stream {
                serve_connection(stream, peer, app, &limits, admitted, stats, shutdown).await;
            }
        }
    }
}

/// Where a connection stands, shared by its I/O and its requests.
#[derive(Debug, Default)]
struct ConnState {
    /// Headers of a request are complete and its response is not finished.
    in_request: AtomicBool,
    /// Upgraded to a WebSocket: no HTTP timers any more.
    upgraded: AtomicBool,
    /// Requests whose headers were complete so far.
    requests: AtomicU64,
}

async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    admitted: Admitted,
    stats: Arc<ListenerStats>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let io = HeaderDeadline::new(stream, limits.header_timeout, state.clone(), admitted);
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        state.in_request.store(true, Ordering::Release);
        state.requests.fetch_add(1, Ordering::AcqRel);
        let response = hyper::service::Service::call(&app, req);
        let state = state.clone();
        async move {
            let response = response.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                state.upgraded.store(true, Ordering::Release);
            }
            Ok::<_, Infallible>(response.map(|body| Tracked { inner: body, state }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        let header_timeout = std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut);
        if header_timeout {
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
        } else if e.is_timeout() {
            stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, error = %e, "HTTP connection closed");
    }
}

/// Resolves once shutdown has started.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A response body that marks the request finished when hyper drops it
/// (after writing its end, or when the connection goes away).
struct Tracked {
    inner: Body,
    state: Arc<ConnState>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.in_request.store(false, Ordering::Release);
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O: fails reads with `TimedOut` once a request's
/// headers have taken longer than `timeout` since its first byte. Holds the
/// connection's slot, so an upgraded connection keeps it too.
struct HeaderDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Started at the first byte of a request: (requests seen before it,
    /// the timer).
    deadline: Option<(u64, Pin<Box<tokio::time::Sleep>>)>,
    state: Arc<ConnState>,
    _admitted: Admitted,
}

impl<S> HeaderDeadline<S> {
    fn new(inner: S, timeout: Duration, state: Arc<ConnState>, admitted: Admitted) -> Self {
        HeaderDeadline { inner, timeout, deadline: None, state, _admitted: admitted }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        // A deadline started before the latest request's headers completed
        // belongs to that request: it is over.
        let requests = this.state.requests.load(Ordering::Acquire);
        if this.deadline.as_ref().is_some_and(|(n, _)| *n != requests) {
            this.deadline = None;
        }
        if this.state.in_request.load(Ordering::Acquire) || this.state.upgraded.load(Ordering::Acquire) {
            return result;
        }
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before && this.deadline.is_none() {
            this.deadline = Some((requests, Box::pin(tokio::time::sleep(this.timeout))));
        }
        if let Some((_, deadline)) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("request headers not complete within http.header_timeout ({:?})", this.timeout),
                )));
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
