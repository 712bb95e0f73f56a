//! MQTT clients (rumqttc) against the gateway, and reading what they
//! published back over HTTP.

use super::Gateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A connected client whose event loop runs in the background; returns
/// once the CONNACK arrived.
pub async fn client(gw: &Gateway, id: &str) -> Client {
    try_client(gw, id, |_| {}).await.unwrap_or_else(|e| panic!("MQTT connect of {id} failed: {e}"))
}

/// A client, its event loop task and the packets it receives.
pub type Client = (AsyncClient, tokio::task::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<Packet>);

/// Connects with options changed by `configure` (credentials, will);
/// `Err` describes why the broker refused or closed the connection before
/// its CONNACK.
pub async fn try_client(
    gw: &Gateway,
    id: &str,
    configure: impl FnOnce(&mut MqttOptions),
) -> Result<Client, String> {
    let addr: std::net::SocketAddr = gw.mqtt.as_ref().expect("mqtt listener").parse().unwrap();
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    configure(&mut opts);
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (conn_tx, conn_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let mut conn_tx = Some(conn_tx);
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(t) = conn_tx.take() {
                        let _ = t.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(p)) => {
                    let _ = tx.send(p);
                }
                Ok(_) => {}
                Err(e) => {
                    match conn_tx.take() {
                        Some(t) => drop(t.send(Err(format!("{e:?}")))),
                        None => eprintln!("mqtt client error: {e:?}"),
                    }
                    return;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), conn_rx).await.expect("CONNACK in time").unwrap()?;
    Ok((client, task, rx))
}

/// Reads a partition until `n` records are there (persisting is
/// asynchronous to the PUBACK).
pub async fn read_n(gw: &Gateway, topic: &str, partition: u32, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = gw
            .get_json(&format!(
                "/v1/topics/{topic}/partitions/{partition}/records?max_records=10000&wait_ms=200"
            ))
            .await;
        if s == 200 {
            let recs = body["records"].as_array().unwrap().clone();
            if recs.len() >= n {
                return recs;
            }
        }
        assert!(Instant::now() < deadline, "{topic}/{partition} never reached {n} records");
    }
}
