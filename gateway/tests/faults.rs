//! Fault injection through the real `sluice` binary (the README's "Fault
//! tolerance" section lists what each proves and the figures):
//!
//! - `kill`: SIGKILL loop under mixed load (sync HTTP, MQTT QoS 1, a Kafka
//!   uplink to tansu);
//! - `disk`: the data directory on a small tmpfs that fills up, then frees;
//! - `network`: the Kafka broker killed and restarted repeatedly, and a
//!   degraded link (delay, resets, a black hole) through a TCP proxy;
//! - `corrupt`: damaged data files at start.
#![allow(clippy::unwrap_used, dead_code)]

mod common;
#[path = "../../uplink/tests/common/mod.rs"]
mod kafka;

#[path = "faults/corrupt.rs"]
mod corrupt;
#[path = "faults/disk.rs"]
mod disk;
#[path = "faults/kill.rs"]
mod kill;
#[path = "faults/network.rs"]
mod network;
#[path = "faults/proxy.rs"]
mod proxy;
#[path = "faults/uplink.rs"]
mod uplink;
