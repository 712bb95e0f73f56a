//! A TCP proxy on 127.0.0.1 between sluice and its Kafka broker that
//! degrades the link on demand: added delay per chunk, every open
//! connection cut mid-stream, or a black hole (connections stay open, no
//! byte gets through). There is no netem here without network namespaces,
//! and sluice must run in the test's namespace, so the faults are made in
//! user space.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Faults {
    target: AtomicU16,
    delay_ms: AtomicU64,
    black_hole: AtomicBool,
    cuts: watch::Sender<u64>,
    connections: AtomicU64,
}

/// The proxy; stops accepting when dropped.
pub(crate) struct Proxy {
    port: u16,
    faults: Arc<Faults>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port; forwards to `set_target` once set.
    pub(crate) async fn start() -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Faults {
            target: AtomicU16::new(0),
            delay_ms: AtomicU64::new(0),
            black_hole: AtomicBool::new(false),
            cuts: watch::channel(0).0,
            connections: AtomicU64::new(0),
        });
        let f = faults.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                f.connections.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, f.clone()));
            }
        });
        Proxy { port, faults, accept }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn set_target(&self, port: u16) {
        self.faults.target.store(port, Ordering::Relaxed);
    }

    /// Delay added before each forwarded chunk, both ways.
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.faults.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// While on, nothing is forwarded (bytes are held, connections stay).
    pub(crate) fn set_black_hole(&self, on: bool) {
        self.faults.black_hole.store(on, Ordering::Relaxed);
    }

    /// Closes every open connection now, mid-stream.
    pub(crate) fn cut(&self) {
        self.faults.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> u64 {
        self.faults.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn serve(client: TcpStream, faults: Arc<Faults>) {
    let target = faults.target.load(Ordering::Relaxed);
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else { return };
    let mut cuts = faults.cuts.subscribe();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        _ = pump(cr, sw, &faults) => {}
        _ = pump(sr, cw, &faults) => {}
        _ = cuts.changed() => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: &Faults,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while faults.black_hole.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = faults.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
