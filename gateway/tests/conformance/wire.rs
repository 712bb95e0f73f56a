//! A deliberately small MQTT 3.1.1 / 5 client over a raw TCP socket, written
//! from the specifications for the conformance suite: it sends exactly the
//! bytes a case asks for (keep-alive 0, empty client ids, protocol
//! violations) and hands back every packet as decoded, so a case can check
//! flags, packet ids and reason codes that a client library would hide.

use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// MQTT 3.1.1 (protocol level 4) or MQTT 5 (level 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    V311,
    V5,
}

impl Version {
    pub(crate) fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
    fn v5(self) -> bool {
        self == Version::V5
    }
}

/// A will message for [`Connect`].
#[derive(Clone, Debug)]
pub(crate) struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) qos: u8,
    pub(crate) retain: bool,
}

/// The fields of a CONNECT packet.
#[derive(Clone, Debug)]
pub(crate) struct Connect {
    pub(crate) id: String,
    pub(crate) clean: bool,
    pub(crate) keep_alive: u16,
    pub(crate) will: Option<Will>,
    pub(crate) user: Option<(String, String)>,
    /// MQTT 5 Session Expiry Interval (3.1.2.11.2); `None` leaves it out (0).
    pub(crate) session_expiry: Option<u32>,
    /// The protocol level byte, when a case sends a wrong one on purpose.
    pub(crate) level: Option<u8>,
}

impl Connect {
    pub(crate) fn new(id: &str) -> Connect {
        Connect {
            id: id.into(),
            clean: true,
            keep_alive: 60,
            will: None,
            user: None,
            session_expiry: None,
            level: None,
        }
    }
}

/// A decoded control packet, as far as the cases look into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Packet {
    ConnAck { session_present: bool, code: u8, assigned_id: Option<String> },
    Publish { topic: String, payload: Vec<u8>, qos: u8, retain: bool, dup: bool, pkid: u16 },
    PubAck { pkid: u16, reason: u8 },
    PubRec { pkid: u16, reason: u8 },
    PubRel { pkid: u16 },
    PubComp { pkid: u16 },
    SubAck { pkid: u16, codes: Vec<u8> },
    UnsubAck { pkid: u16 },
    PingResp,
    Disconnect { reason: u8 },
    Other { header: u8 },
}

/// What [`Conn::recv`] saw instead of a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Gone {
    /// Nothing arrived in time; the connection is still open.
    Timeout,
    /// The broker closed the connection.
    Closed,
}

pub(crate) fn encode_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    encode_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// MQTT 5 properties: their length, then the encoded properties.
fn put_props(out: &mut Vec<u8>, v: Version, props: &[u8]) {
    if v.v5() {
        encode_len(out, props.len());
        out.extend_from_slice(props);
    }
}

pub(crate) fn connect(v: Version, c: &Connect) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(c.level.unwrap_or(v.level()));
    let mut flags = 0u8;
    if c.clean {
        flags |= 0x02;
    }
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
    }
    if c.user.is_some() {
        flags |= 0xC0;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    let mut props = Vec::new();
    if let Some(e) = c.session_expiry {
        props.push(0x11);
        props.extend_from_slice(&e.to_be_bytes());
    }
    put_props(&mut body, v, &props);
    put_str(&mut body, c.id.as_bytes());
    if let Some(w) = &c.will {
        put_props(&mut body, v, &[]);
        put_str(&mut body, w.topic.as_bytes());
        put_str(&mut body, &w.payload);
    }
    if let Some((user, password)) = &c.user {
        put_str(&mut body, user.as_bytes());
        put_str(&mut body, password.as_bytes());
    }
    frame(0x10, &body)
}

pub(crate) fn publish(v: Version, topic: &str, payload: &[u8], qos: u8, retain: bool, pkid: u16) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    put_props(&mut body, v, &[]);
    body.extend_from_slice(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70): packet id
/// only (reason 0 is implied in MQTT 5).
pub(crate) fn ack(first: u8, pkid: u16) -> Vec<u8> {
    frame(first, &pkid.to_be_bytes())
}

/// SUBSCRIBE of `(filter, options)` pairs; options are the requested QoS
/// (3.1.1) or the MQTT 5 subscription options byte.
pub(crate) fn subscribe(v: Version, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    put_props(&mut body, v, &[]);
    for (f, opts) in filters {
        put_str(&mut body, f.as_bytes());
        body.push(*opts);
    }
    frame(0x82, &body)
}

pub(crate) fn unsubscribe(v: Version, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    put_props(&mut body, v, &[]);
    for f in filters {
        put_str(&mut body, f.as_bytes());
    }
    frame(0xA2, &body)
}

pub(crate) const PINGREQ: [u8; 2] = [0xC0, 0];
pub(crate) const DISCONNECT: [u8; 2] = [0xE0, 0];

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Reads a variable byte integer at `at`; returns (value, bytes used).
fn len_at(b: &[u8], at: usize) -> (usize, usize) {
    let (mut n, mut mult, mut i) = (0usize, 1usize, at);
    loop {
        let byte = b[i];
        n += usize::from(byte & 0x7F) * mult;
        mult *= 128;
        i += 1;
        if byte & 0x80 == 0 {
            return (n, i - at);
        }
    }
}

/// Decodes one whole packet (`first` byte, `body` after the length).
pub(crate) fn decode(v: Version, first: u8, body: &[u8]) -> Packet {
    // The reason code of an MQTT 5 acknowledgement: absent means success.
    let reason_at = |at: usize| body.get(at).copied().unwrap_or(0);
    match first >> 4 {
        2 => {
            let mut assigned_id = None;
            if v.v5() && body.len() > 2 {
                let (plen, used) = len_at(body, 2);
                let props = &body[2 + used..2 + used + plen];
                let mut i = 0;
                while i < props.len() {
                    let id = props[i];
                    i += 1;
                    match id {
                        0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                            // UTF-8 strings (assigned id, auth method,
                            // response info, server reference, reason string).
                            let n = usize::from(u16_at(props, i));
                            if id == 0x12 {
                                assigned_id = Some(String::from_utf8_lossy(&props[i + 2..i + 2 + n]).into());
                            }
                            i += 2 + n;
                        }
                        0x16 => i += 2 + usize::from(u16_at(props, i)),
                        0x11 | 0x27 => i += 4,
                        0x13 | 0x21 | 0x22 => i += 2,
                        0x24 | 0x25 | 0x28 | 0x29 | 0x2A => i += 1,
                        0x26 => {
                            let k = usize::from(u16_at(props, i));
                            let vlen = usize::from(u16_at(props, i + 2 + k));
                            i += 4 + k + vlen;
                        }
                        _ => break,
                    }
                }
            }
            Packet::ConnAck { session_present: body[0] & 1 == 1, code: body[1], assigned_id }
        }
        3 => {
            let qos = (first >> 1) & 3;
            let tlen = usize::from(u16_at(body, 0));
            let topic = String::from_utf8_lossy(&body[2..2 + tlen]).into_owned();
            let mut at = 2 + tlen;
            let mut pkid = 0;
            if qos > 0 {
                pkid = u16_at(body, at);
                at += 2;
            }
            if v.v5() {
                let (plen, used) = len_at(body, at);
                at += used + plen;
            }
            Packet::Publish {
                topic,
                payload: body[at..].to_vec(),
                qos,
                retain: first & 1 == 1,
                dup: first & 8 == 8,
                pkid,
            }
        }
        4 => Packet::PubAck { pkid: u16_at(body, 0), reason: reason_at(2) },
        5 => Packet::PubRec { pkid: u16_at(body, 0), reason: reason_at(2) },
        6 => Packet::PubRel { pkid: u16_at(body, 0) },
        7 => Packet::PubComp { pkid: u16_at(body, 0) },
        9 => {
            let mut at = 2;
            if v.v5() {
                let (plen, used) = len_at(body, at);
                at += used + plen;
            }
            Packet::SubAck { pkid: u16_at(body, 0), codes: body[at..].to_vec() }
        }
        11 => Packet::UnsubAck { pkid: u16_at(body, 0) },
        13 => Packet::PingResp,
        14 => Packet::Disconnect { reason: reason_at(0) },
        _ => Packet::Other { header: first },
    }
}

/// One raw MQTT connection.
pub(crate) struct Conn {
    pub(crate) v: Version,
    s: TcpStream,
    buf: Vec<u8>,
    /// Packets [`Conn::expect`] passed over, handed out first.
    held: std::collections::VecDeque<Packet>,
}

impl Conn {
    pub(crate) async fn open(addr: &str, v: Version) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        Conn { v, s, buf: Vec::new(), held: Default::default() }
    }

    /// Opens a connection, sends `c` and returns it with the broker's answer
    /// to the CONNECT.
    pub(crate) async fn connect(addr: &str, v: Version, c: &Connect) -> (Conn, Result<Packet, Gone>) {
        let mut conn = Conn::open(addr, v).await;
        conn.send(&connect(v, c)).await;
        let answer = conn.recv(Duration::from_secs(10)).await;
        (conn, answer)
    }

    /// A connection the broker accepted (CONNACK 0), or a panic naming why not.
    pub(crate) async fn accepted(addr: &str, v: Version, c: &Connect) -> Conn {
        match Conn::connect(addr, v, c).await {
            (conn, Ok(Packet::ConnAck { code: 0, .. })) => conn,
            (_, other) => panic!("CONNECT of {:?} not accepted: {other:?}", c.id),
        }
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) {
        // A broker that already closed the socket shows in the next recv.
        let _ = self.s.write_all(bytes).await;
    }

    /// The next packet within `wait`.
    pub(crate) async fn recv(&mut self, wait: Duration) -> Result<Packet, Gone> {
        if let Some(p) = self.held.pop_front() {
            return Ok(p);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(p) = self.parse() {
                return Ok(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Err(_) => return Err(Gone::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Gone::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse(&mut self) -> Option<Packet> {
        if self.buf.len() < 2 {
            return None;
        }
        let mut n = 0usize;
        let mut mult = 1usize;
        let mut i = 1;
        loop {
            let byte = *self.buf.get(i)?;
            n += usize::from(byte & 0x7F) * mult;
            mult *= 128;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if self.buf.len() < i + n {
            return None;
        }
        let p = decode(self.v, self.buf[0], &self.buf[i..i + n]);
        self.buf.drain(..i + n);
        Some(p)
    }

    /// Waits for the first packet `want` accepts; the packets before it are
    /// held for the next [`Conn::recv`]. `Err` if none came within `wait`.
    pub(crate) async fn expect(
        &mut self,
        wait: Duration,
        mut want: impl FnMut(&Packet) -> bool,
    ) -> Result<Packet, String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(p) if want(&p) => break Ok(p),
                Ok(p) => seen.push(p),
                Err(gone) => break Err(format!("{gone:?} after {seen:?}")),
            }
        };
        // `recv` takes held packets first: put the passed-over ones back
        // in front of those not yet looked at.
        for p in seen.into_iter().rev() {
            self.held.push_front(p);
        }
        result
    }

    /// Whether the broker closes this connection within `wait` (packets it
    /// sends first, such as a DISCONNECT, are skipped).
    pub(crate) async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(_) => {}
                Err(Gone::Closed) => return true,
                Err(Gone::Timeout) => return false,
            }
        }
    }
}
