//! systemd integration: the notify protocol against a real notify socket,
//! and the unit file checked by `systemd-analyze verify`.
#![allow(clippy::unwrap_used)]

mod common;

use common::Gateway;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn recv_until(sock: &UnixDatagram, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == needle);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {needle} from sluice; got {seen:?}");
}

#[tokio::test]
async fn notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut gw = Gateway::start_env(
        &dir.path().join("d"),
        None,
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap()), ("WATCHDOG_USEC", "200000")],
    )
    .await;
    let msgs = recv_until(&sock, "READY=1");
    assert!(msgs.concat().contains("STATUS=HTTP on 127.0.0.1:"), "{msgs:?}");
    recv_until(&sock, "WATCHDOG=1");
    gw.signal("TERM");
    recv_until(&sock, "STOPPING=1");
    gw.terminate_wait();
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/sluice.service"))
            .unwrap();
    for needle in [
        "Type=notify",
        "WatchdogSec=",
        "ExecStartPre=/usr/bin/sluice check-config",
        "DynamicUser=yes",
        "StateDirectory=sluice",
        "ConfigurationDirectory=sluice",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    // verify needs the binary to exist: point the unit at the one under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.service");
    std::fs::write(&path, unit.replace("/usr/bin/sluice", env!("CARGO_BIN_EXE_sluice"))).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze from Debian's systemd package (deploy/install-test-peers.sh)");
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines about the build machine's own units are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("sluice.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {err}");
}

/// `systemd-analyze security` on the unit: the exposure score stays at the
/// README's figure (1.2 with systemd 252). What is left is the network the
/// service exists for (AF_INET/AF_INET6, no PrivateNetwork, no IP allow
/// list), AF_UNIX for sd_notify, ProtectClock's read access to the RTC,
/// the host's root directory and PrivateUsers (see README, "Running under
/// systemd").
#[test]
fn unit_security_exposure_stays_low() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/sluice.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=12", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze from Debian's systemd package (deploy/install-test-peers.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 1.2:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Overall exposure level for sluice.service"), "{text}");
}
