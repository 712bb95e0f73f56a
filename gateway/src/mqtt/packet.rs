//! Just enough MQTT (3.1, 3.1.1 and 5) for sluice's connection front
//! ([`super::front`]): framing, the fields of CONNECT and PUBLISH that
//! sluice acts on, and the acknowledgements it sends itself.
//!
//! Every other packet passes through as the bytes it came in, so nothing
//! here re-encodes what the broker parses anyway. Pure functions over
//! bytes, no I/O.
//!
//! Framing (MQTT 3.1.1 section 2.2, MQTT 5 section 2.1): one byte of type
//! and flags, then the remaining length as a variable byte integer of at
//! most 4 bytes (7 bits each, least significant group first, high bit set
//! on every byte but the last), then that many bytes.

use bytes::{Buf, Bytes, BytesMut};

/// Packet types sluice looks at (the high nibble of the first byte).
pub(crate) mod kind {
    pub(crate) const CONNECT: u8 = 1;
    pub(crate) const CONNACK: u8 = 2;
    pub(crate) const PUBLISH: u8 = 3;
    pub(crate) const PUBACK: u8 = 4;
    pub(crate) const PUBREC: u8 = 5;
    pub(crate) const PUBREL: u8 = 6;
    pub(crate) const PUBCOMP: u8 = 7;
    pub(crate) const SUBSCRIBE: u8 = 8;
    pub(crate) const SUBACK: u8 = 9;
    pub(crate) const UNSUBSCRIBE: u8 = 10;
    pub(crate) const UNSUBACK: u8 = 11;
    pub(crate) const PINGREQ: u8 = 12;
    pub(crate) const PINGRESP: u8 = 13;
    pub(crate) const DISCONNECT: u8 = 14;
}

/// Why bytes from a client are not MQTT sluice can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PacketError {
    /// The remaining length exceeds the limit (`mqtt.max_payload` plus
    /// headers) or MQTT's own 4-byte limit.
    #[error("packet of {len} bytes is over the limit of {max} bytes (mqtt.max_payload)")]
    TooLarge { len: usize, max: usize },
    /// A length or field runs past the end of the packet, or a field is
    /// malformed.
    #[error("malformed {what}")]
    Malformed { what: &'static str },
}

fn malformed(what: &'static str) -> PacketError {
    PacketError::Malformed { what }
}

/// Takes the next whole packet off the front of `buf`, or `None` when it
/// has not fully arrived yet. `max` bounds the remaining length.
pub(crate) fn next_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, PacketError> {
    let mut len = 0usize;
    let mut at = 1;
    loop {
        let Some(&b) = buf.get(at) else { return Ok(None) };
        len |= usize::from(b & 0x7F) << (7 * (at - 1));
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        if at > 4 {
            return Err(malformed("remaining length"));
        }
    }
    if len > max {
        return Err(PacketError::TooLarge { len, max });
    }
    if buf.len() < at + len {
        buf.reserve(at + len - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(at + len).freeze()))
}

/// The packet type of a frame.
pub(crate) fn kind_of(frame: &[u8]) -> u8 {
    frame.first().map_or(0, |b| b >> 4)
}

/// Offset of the variable header (after the fixed header).
fn body_start(frame: &[u8]) -> usize {
    1 + frame[1..].iter().take(4).position(|b| b & 0x80 == 0).map_or(4, |p| p + 1)
}

/// A cursor over a packet's fields.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PacketError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(malformed(self.what))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PacketError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, PacketError> {
        Ok(self.take(2)?.get_u16())
    }

    /// A two-byte length followed by that many bytes (strings and binary
    /// data).
    fn prefixed(&mut self) -> Result<&'a [u8], PacketError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    fn varint(&mut self) -> Result<usize, PacketError> {
        let mut v = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            v |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed(self.what))
    }

    /// Skips an MQTT 5 property block.
    fn skip_properties(&mut self) -> Result<(), PacketError> {
        let n = self.varint()?;
        self.take(n).map(|_| ())
    }
}

/// A will message, from the CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Will {
    pub(crate) topic: Bytes,
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    /// Offset in the CONNECT frame just after the will payload.
    pub(crate) end: usize,
}

/// What sluice needs of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    /// Protocol level: 3 (MQTT 3.1), 4 (3.1.1) or 5.
    pub(crate) level: u8,
    /// Keep-alive in seconds (0: none).
    pub(crate) keep_alive: u16,
    /// Offset of the keep-alive field in the frame.
    pub(crate) keep_alive_at: usize,
    pub(crate) client_id: String,
    pub(crate) username: Option<String>,
    pub(crate) will: Option<Will>,
    /// Whether the session outlives the connection: 3.1.1 clean session
    /// 0, or an MQTT 5 session expiry interval above 0.
    pub(crate) persistent: bool,
    /// MQTT 5 session expiry interval in seconds, when given.
    pub(crate) session_expiry: Option<u32>,
    /// The clean session (MQTT 5: clean start) flag: a stored session is
    /// discarded.
    pub(crate) clean: bool,
    /// MQTT 5 receive maximum: most unacknowledged QoS 1/2 publishes the
    /// client accepts (65535 when not given, and for 3.1.1).
    pub(crate) receive_max: u16,
}

impl Connect {
    /// Whether the connection speaks MQTT 5.
    pub(crate) fn v5(&self) -> bool {
        self.level == 5
    }
}

/// Parses a CONNECT frame.
pub(crate) fn connect(frame: &Bytes) -> Result<Connect, PacketError> {
    let mut r = Reader { bytes: frame, at: body_start(frame), what: "CONNECT" };
    let name = r.prefixed()?;
    if name != b"MQTT" && name != b"MQIsdp" {
        return Err(malformed("CONNECT protocol name"));
    }
    let level = r.u8()?;
    let flags = r.u8()?;
    let keep_alive_at = r.at;
    let keep_alive = r.u16()?;
    let mut persistent = level != 5 && flags & 0x02 == 0;
    let mut session_expiry = None;
    let mut receive_max = u16::MAX;
    if level == 5 {
        let n = r.varint()?;
        let end = r.at.checked_add(n).filter(|&e| e <= frame.len()).ok_or(malformed("CONNECT properties"))?;
        while r.at < end {
            match r.u8()? {
                0x11 => {
                    let expiry = r.take(4)?.get_u32();
                    session_expiry = Some(expiry);
                    persistent = expiry > 0;
                }
                0x21 => receive_max = r.u16()?.max(1),
                0x27 => r.take(4).map(|_| ())?,
                0x22 => r.take(2).map(|_| ())?,
                0x17 | 0x19 => r.take(1).map(|_| ())?,
                0x15 | 0x16 => r.prefixed().map(|_| ())?,
                0x26 => {
                    r.prefixed()?;
                    r.prefixed()?;
                }
                _ => return Err(malformed("CONNECT property")),
            }
        }
        if r.at != end {
            return Err(malformed("CONNECT properties"));
        }
    }
    let client_id = String::from_utf8_lossy(r.prefixed()?).into_owned();
    let will = if flags & 0x04 != 0 {
        if level == 5 {
            r.skip_properties()?;
        }
        // Copies: slices would keep the first read buffer alive for the
        // whole connection.
        let topic = Bytes::copy_from_slice(r.prefixed()?);
        let payload = Bytes::copy_from_slice(r.prefixed()?);
        Some(Will { topic, payload, qos: (flags >> 3) & 0x03, end: r.at })
    } else {
        None
    };
    let username = (flags & 0x80 != 0)
        .then(|| r.prefixed().map(|u| String::from_utf8_lossy(u).into_owned()))
        .transpose()?;
    Ok(Connect {
        level,
        keep_alive,
        keep_alive_at,
        client_id,
        username,
        will,
        persistent,
        session_expiry,
        clean: flags & 0x02 != 0,
        receive_max,
    })
}

/// A CONNECT frame (parsed as `connect`) with the clean session (MQTT 5:
/// clean start) flag set: sluice keeps persistent sessions itself, the
/// broker gets clean ones (rumqttd reads only this flag, not the MQTT 5
/// session expiry).
pub(crate) fn connect_clean(frame: &mut [u8], connect: &Connect) {
    // The connect flags are the byte before the keep-alive.
    frame[connect.keep_alive_at - 1] |= 0x02;
}

/// A CONNACK frame with the session present flag set.
pub(crate) fn connack_session_present(frame: &[u8]) -> Bytes {
    let mut out = BytesMut::from(frame);
    let at = body_start(frame);
    if let Some(flags) = out.get_mut(at) {
        *flags |= 0x01;
    }
    out.freeze()
}

/// A PUBLISH to a client at protocol `level`, packet id 0 (the outbox sets
/// it), no properties, RETAIN 0.
pub(crate) fn publish_frame(topic: &[u8], payload: &[u8], qos: u8, dup: bool, level: u8) -> Bytes {
    let pkid = if qos > 0 { 2 } else { 0 };
    let props = usize::from(level == 5);
    let len = 2 + topic.len() + pkid + props + payload.len();
    let mut out = BytesMut::with_capacity(len + 5);
    out.extend_from_slice(&[(kind::PUBLISH << 4) | (qos << 1) | if dup && qos > 0 { 0x08 } else { 0 }]);
    put_remaining_length(&mut out, len);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(&[0; 2][..pkid]);
    out.extend_from_slice(&[0; 1][..props]);
    out.extend_from_slice(payload);
    out.freeze()
}

/// The reason code of an MQTT 5 DISCONNECT (0 when it has none).
pub(crate) fn disconnect_reason(frame: &[u8]) -> u8 {
    frame.get(body_start(frame)).copied().unwrap_or(0)
}

/// The Session Expiry Interval of an MQTT 5 DISCONNECT, if it has one.
pub(crate) fn disconnect_session_expiry(frame: &[u8]) -> Result<Option<u32>, PacketError> {
    let start = body_start(frame);
    // Reason code, then properties; both may be left out (3.14.2.1).
    if frame.len() < start + 2 {
        return Ok(None);
    }
    let mut r = Reader { bytes: frame, at: start + 1, what: "DISCONNECT properties" };
    let n = r.varint()?;
    let end = r.at.checked_add(n).filter(|&e| e <= frame.len()).ok_or(malformed("DISCONNECT properties"))?;
    let mut expiry = None;
    while r.at < end {
        match r.u8()? {
            0x11 if expiry.is_none() => expiry = Some(r.take(4)?.get_u32()),
            0x1F | 0x1C => r.prefixed().map(|_| ())?,
            0x26 => {
                r.prefixed()?;
                r.prefixed()?;
            }
            _ => return Err(malformed("DISCONNECT property")),
        }
    }
    if r.at != end {
        return Err(malformed("DISCONNECT properties"));
    }
    Ok(expiry)
}

/// The reason (MQTT 5) or return (3.1.1) code of a CONNACK; 0 is success.
pub(crate) fn connack_code(frame: &[u8]) -> Option<u8> {
    frame.get(body_start(frame) + 1).copied()
}

/// What sluice needs of a PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub(crate) qos: u8,
    /// The topic; empty when an MQTT 5 topic alias stands for it.
    pub(crate) topic: Bytes,
    /// Packet identifier (0 for QoS 0).
    pub(crate) pkid: u16,
    /// MQTT 5 topic alias, if the publish carries one.
    pub(crate) alias: Option<u16>,
    pub(crate) payload: Bytes,
}

/// Parses a PUBLISH frame of a connection at protocol `level`.
pub(crate) fn publish(frame: &Bytes, level: u8) -> Result<Publish, PacketError> {
    let qos = (frame[0] >> 1) & 0x03;
    if qos == 3 {
        return Err(malformed("PUBLISH QoS"));
    }
    let mut r = Reader { bytes: frame, at: body_start(frame), what: "PUBLISH" };
    let topic = frame.slice_ref(r.prefixed()?);
    let pkid = if qos > 0 { r.u16()? } else { 0 };
    let mut alias = None;
    if level == 5 {
        let n = r.varint()?;
        let end = r.at.checked_add(n).filter(|&e| e <= frame.len()).ok_or(malformed("PUBLISH properties"))?;
        while r.at < end {
            match r.u8()? {
                0x01 => r.take(1).map(|_| ())?,
                0x02 => r.take(4).map(|_| ())?,
                0x03 | 0x08 | 0x09 => r.prefixed().map(|_| ())?,
                0x0B => r.varint().map(|_| ())?,
                0x23 => alias = Some(r.u16()?),
                0x26 => {
                    r.prefixed()?;
                    r.prefixed()?;
                }
                _ => return Err(malformed("PUBLISH property")),
            }
        }
        if r.at != end {
            return Err(malformed("PUBLISH properties"));
        }
    }
    let payload = frame.slice(r.at..);
    Ok(Publish { qos, topic, pkid, alias, payload })
}

/// Offset of the packet identifier of a QoS 1/2 PUBLISH frame (after the
/// topic), or `None` for QoS 0 or a frame too short to hold one.
pub(crate) fn publish_pkid_at(frame: &[u8]) -> Option<usize> {
    if (frame.first()? >> 1) & 0x03 == 0 {
        return None;
    }
    let at = body_start(frame);
    let topic_len = usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    let pkid_at = at + 2 + topic_len;
    (pkid_at + 2 <= frame.len()).then_some(pkid_at)
}

/// Length of the trailer the front appends to every payload it passes to
/// the embedded broker: the publish's QoS, then the publishing
/// connection's number (u64, big-endian). The broker delivers the payload
/// as it got it, so the front, which delivers every publish to its
/// client, learns what rumqttd forgets: the QoS the message was published
/// at (delivery is at the lower of it and the subscription's,
/// MQTT-3.8.4-6) and who published it (MQTT 5 No Local).
pub(crate) const TRAILER: usize = 9;

/// The trailer for a publish at `qos` by connection `origin`.
pub(crate) fn trailer(qos: u8, origin: u64) -> [u8; TRAILER] {
    let mut t = [0u8; TRAILER];
    t[0] = qos;
    t[1..].copy_from_slice(&origin.to_be_bytes());
    t
}

/// Where a broker PUBLISH's body, topic end and the rest (properties and
/// payload) start, when its payload can hold a trailer.
fn trailer_offsets(frame: &[u8]) -> Option<(usize, usize, usize)> {
    let at = body_start(frame);
    let old_qos = (frame.first()? >> 1) & 0x03;
    let topic_end = at + 2 + usize::from(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    let rest_at = if old_qos > 0 { topic_end + 2 } else { topic_end };
    (frame.len() >= rest_at + TRAILER).then_some((at, topic_end, rest_at))
}

/// The trailer of a broker PUBLISH: (QoS, origin); `None` when its
/// payload is too short to carry one (a retained message cleared with a
/// zero-byte publish goes without).
pub(crate) fn trailer_of(frame: &[u8]) -> Option<(u8, u64)> {
    trailer_offsets(frame)?;
    read_trailer(&frame[frame.len() - TRAILER..])
}

/// Reads a trailer: (QoS, origin).
pub(crate) fn read_trailer(t: &[u8]) -> Option<(u8, u64)> {
    let t: &[u8; TRAILER] = t.try_into().ok()?;
    let mut origin = [0u8; 8];
    origin.copy_from_slice(&t[1..]);
    Some((t[0], u64::from_be_bytes(origin)))
}

/// A PUBLISH frame at `qos` with `trailer` appended to its payload (which
/// ends the frame); a QoS 2 publish goes on at QoS 1.
pub(crate) fn publish_with_trailer(frame: &[u8], qos: u8, trailer: &[u8]) -> Bytes {
    let at = body_start(frame);
    let mut out = BytesMut::with_capacity(frame.len() + trailer.len() + 2);
    out.extend_from_slice(&[(frame[0] & !0x06) | (qos.min(1) << 1)]);
    put_remaining_length(&mut out, frame.len() - at + trailer.len());
    out.extend_from_slice(&frame[at..]);
    out.extend_from_slice(trailer);
    out.freeze()
}

/// A CONNECT frame whose will payload (its last `payload.len()` bytes end
/// at `will_end`) gets `trailer` appended, so that the broker publishes
/// the will with it.
pub(crate) fn connect_with_will_trailer(
    frame: &[u8],
    will_end: usize,
    payload_len: usize,
    trailer: &[u8],
) -> Bytes {
    let at = body_start(frame);
    let len_at = will_end - payload_len - 2;
    let mut out = BytesMut::with_capacity(frame.len() + trailer.len() + 2);
    out.extend_from_slice(&frame[..1]);
    put_remaining_length(&mut out, frame.len() - at + trailer.len());
    out.extend_from_slice(&frame[at..len_at]);
    out.extend_from_slice(&((payload_len + trailer.len()) as u16).to_be_bytes());
    out.extend_from_slice(&frame[len_at + 2..will_end]);
    out.extend_from_slice(trailer);
    out.extend_from_slice(&frame[will_end..]);
    out.freeze()
}

/// A PUBLISH from the broker without the trailer of its payload, re-framed
/// at `qos` (a packet id is kept when there was one, 0 when one is added,
/// dropped at QoS 0 with the DUP flag). `None` when the payload is
/// shorter than a trailer ([`trailer_of`] reads the trailer).
pub(crate) fn strip_trailer(frame: &[u8], qos: u8) -> Option<BytesMut> {
    let (at, topic_end, rest_at) = trailer_offsets(frame)?;
    let old_qos = (frame[0] >> 1) & 0x03;
    let rest = &frame[rest_at..frame.len() - TRAILER];
    let pkid: &[u8] = match (qos, old_qos) {
        (0, _) => &[],
        (_, 0) => &[0, 0],
        _ => &frame[topic_end..topic_end + 2],
    };
    let len = topic_end - at + pkid.len() + rest.len();
    let mut out = BytesMut::with_capacity(len + 5);
    let dup = if qos == 0 { 0 } else { frame[0] & 0x08 };
    out.extend_from_slice(&[(frame[0] & 0xF1) | dup | (qos << 1)]);
    put_remaining_length(&mut out, len);
    out.extend_from_slice(&frame[at..topic_end]);
    out.extend_from_slice(pkid);
    out.extend_from_slice(rest);
    Some(out)
}

/// Packet identifier of a PUBACK, PUBREC, PUBREL or PUBCOMP.
pub(crate) fn pkid_of(frame: &[u8]) -> Option<u16> {
    let at = body_start(frame);
    frame.get(at..at + 2).map(|mut b| b.get_u16())
}

/// The MQTT 5 reason codes sluice puts in its acknowledgements.
pub(crate) mod reason {
    /// Success, but nobody takes it (no route to the log).
    pub(crate) const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// Unspecified error (storage failed, shutting down).
    pub(crate) const UNSPECIFIED: u8 = 0x80;
    /// The publish is outside the user's publish filters.
    pub(crate) const NOT_AUTHORIZED: u8 = 0x87;
    /// Shutting down.
    pub(crate) const SERVER_BUSY: u8 = 0x89;
    /// The topic does not map to a log topic.
    pub(crate) const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Dropped by the service's limits.
    pub(crate) const QUOTA_EXCEEDED: u8 = 0x97;
    /// Unknown packet identifier (a PUBREL for nothing).
    pub(crate) const PKID_NOT_FOUND: u8 = 0x92;
}

/// Appends a PUBACK, PUBREC or PUBCOMP (`kind`) for `pkid`. A non-zero
/// `reason` is written only for MQTT 5 (3.1.1 has no reason codes).
pub(crate) fn ack(out: &mut BytesMut, kind: u8, pkid: u16, v5: bool, reason: u8) {
    let [hi, lo] = pkid.to_be_bytes();
    if v5 && reason != 0 {
        out.extend_from_slice(&[kind << 4, 3, hi, lo, reason]);
    } else {
        out.extend_from_slice(&[kind << 4, 2, hi, lo]);
    }
}

/// Appends a remaining length as a variable byte integer.
fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut b = (len & 0x7F) as u8;
        len >>= 7;
        if len > 0 {
            b |= 0x80;
        }
        out.extend_from_slice(&[b]);
        if len == 0 {
            return;
        }
    }
}

/// A SUBSCRIBE: packet id, the MQTT 5 property block as it came (length
/// included; empty for 3.1.1), and each filter with its options byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribe {
    pub(crate) pkid: u16,
    props: Bytes,
    pub(crate) filters: Vec<(Bytes, u8)>,
}

/// Parses a SUBSCRIBE frame of a connection at protocol `level`.
pub(crate) fn subscribe(frame: &Bytes, level: u8) -> Result<Subscribe, PacketError> {
    let mut r = Reader { bytes: frame, at: body_start(frame), what: "SUBSCRIBE" };
    let pkid = r.u16()?;
    let props_at = r.at;
    if level == 5 {
        r.skip_properties()?;
    }
    let props = frame.slice(props_at..r.at);
    let mut filters = Vec::new();
    while r.at < frame.len() {
        let filter = frame.slice_ref(r.prefixed()?);
        filters.push((filter, r.u8()?));
    }
    if filters.is_empty() {
        return Err(malformed("SUBSCRIBE without filters"));
    }
    Ok(Subscribe { pkid, props, filters })
}

impl Subscribe {
    /// The SUBSCRIBE again with only the filters whose `keep` is true,
    /// each asking for QoS 1 at most (sluice grants live subscribers QoS 1
    /// at most: it completes QoS 2 itself and passes publishes on at QoS 1).
    pub(crate) fn encode_kept(&self, keep: &[bool], out: &mut BytesMut) {
        let kept = || self.filters.iter().zip(keep).filter(|(_, k)| **k).map(|(f, _)| f);
        let len = 2 + self.props.len() + kept().map(|(f, _)| 3 + f.len()).sum::<usize>();
        out.extend_from_slice(&[0x82]);
        put_remaining_length(out, len);
        out.extend_from_slice(&self.pkid.to_be_bytes());
        out.extend_from_slice(&self.props);
        for (filter, options) in kept() {
            out.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            out.extend_from_slice(filter);
            out.extend_from_slice(&[(options & !0x03) | (options & 0x03).min(1)]);
        }
    }
}

/// An UNSUBSCRIBE: its packet id and topic filters.
#[derive(Debug)]
pub(crate) struct Unsubscribe {
    pub(crate) pkid: u16,
    pub(crate) filters: Vec<Bytes>,
}

/// Parses an UNSUBSCRIBE frame of a connection at protocol `level`.
pub(crate) fn unsubscribe(frame: &Bytes, level: u8) -> Result<Unsubscribe, PacketError> {
    let mut r = Reader { bytes: frame, at: body_start(frame), what: "UNSUBSCRIBE" };
    let pkid = r.u16()?;
    if level == 5 {
        r.skip_properties()?;
    }
    let mut filters = Vec::new();
    while r.at < frame.len() {
        filters.push(frame.slice_ref(r.prefixed()?));
    }
    if filters.is_empty() {
        // MQTT-3.10.3-2: at least one topic filter.
        return Err(malformed("UNSUBSCRIBE without filters"));
    }
    Ok(Unsubscribe { pkid, filters })
}

impl Unsubscribe {
    /// The UNSUBACK answering it: its packet id, and (MQTT 5) reason 0x00
    /// for each topic filter.
    pub(crate) fn unsuback(&self, level: u8) -> Bytes {
        let mut out = BytesMut::new();
        out.extend_from_slice(&[kind::UNSUBACK << 4]);
        if level == 5 {
            put_remaining_length(&mut out, 3 + self.filters.len());
            out.extend_from_slice(&self.pkid.to_be_bytes());
            out.extend_from_slice(&[0]);
            out.resize(out.len() + self.filters.len(), 0);
        } else {
            put_remaining_length(&mut out, 2);
            out.extend_from_slice(&self.pkid.to_be_bytes());
        }
        out.freeze()
    }
}

/// Appends a SUBACK for `pkid` with one return (3.1.1) or reason (5) code
/// per filter.
pub(crate) fn suback(out: &mut BytesMut, pkid: u16, v5: bool, codes: &[u8]) {
    out.extend_from_slice(&[kind::SUBACK << 4]);
    put_remaining_length(out, 2 + usize::from(v5) + codes.len());
    out.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(codes);
}

/// The broker's SUBACK for the filters that were passed on, with `refused`
/// put in at the places of the filters that were not (`granted[i]` false).
pub(crate) fn merge_suback(
    frame: &Bytes,
    level: u8,
    granted: &[bool],
    refused: u8,
) -> Result<Bytes, PacketError> {
    let mut r = Reader { bytes: frame, at: body_start(frame), what: "SUBACK" };
    let pkid = r.u16()?;
    let props_at = r.at;
    if level == 5 {
        r.skip_properties()?;
    }
    let props = &frame[props_at..r.at];
    let mut theirs = frame[r.at..].iter();
    let mut codes = Vec::with_capacity(granted.len());
    for &g in granted {
        codes.push(if g { *theirs.next().ok_or(malformed("SUBACK codes"))? } else { refused });
    }
    let mut out = BytesMut::with_capacity(frame.len() + granted.len());
    out.extend_from_slice(&[kind::SUBACK << 4]);
    put_remaining_length(&mut out, 2 + props.len() + codes.len());
    out.extend_from_slice(&pkid.to_be_bytes());
    out.extend_from_slice(props);
    out.extend_from_slice(&codes);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let mut len = body.len();
        loop {
            let mut b = (len & 0x7F) as u8;
            len >>= 7;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(body);
        out
    }

    fn prefixed(s: &[u8]) -> Vec<u8> {
        let mut v = (s.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(s);
        v
    }

    fn publish_frame(qos: u8, topic: &[u8], pkid: u16, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
        let mut body = prefixed(topic);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        if let Some(p) = props {
            body.push(p.len() as u8);
            body.extend_from_slice(p);
        }
        body.extend_from_slice(payload);
        frame(0x30 | (qos << 1), &body)
    }

    #[test]
    fn frames_split_across_reads_and_limits() {
        let one = publish_frame(1, b"a/b", 7, None, &[9; 300]);
        let mut buf = BytesMut::new();
        for (i, b) in one.iter().enumerate() {
            assert_eq!(next_frame(&mut buf, 1000).expect("valid"), None, "byte {i}");
            buf.extend_from_slice(&[*b]);
        }
        let got = next_frame(&mut buf, 1000).expect("valid").expect("whole");
        assert_eq!(&got[..], &one[..]);
        assert!(buf.is_empty());
        buf.extend_from_slice(&one);
        assert_eq!(next_frame(&mut buf, 100), Err(PacketError::TooLarge { len: one.len() - 3, max: 100 }));
        let mut bad = BytesMut::from(&[0x30u8, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]);
        assert!(matches!(next_frame(&mut bad, usize::MAX), Err(PacketError::Malformed { .. })));
    }

    #[test]
    fn connect_fields_v4_and_v5() {
        // 3.1.1, keep-alive 0, will QoS 1 on "w/t", user "u".
        let mut body = prefixed(b"MQTT");
        body.extend_from_slice(&[4, 0x80 | 0x40 | 0x08 | 0x04 | 0x02, 0, 0]);
        body.extend(prefixed(b"cid"));
        body.extend(prefixed(b"w/t"));
        body.extend(prefixed(b"gone"));
        body.extend(prefixed(b"u"));
        body.extend(prefixed(b"pw"));
        let f = Bytes::from(frame(0x10, &body));
        let c = connect(&f).expect("valid");
        assert_eq!((c.level, c.keep_alive, c.client_id.as_str()), (4, 0, "cid"));
        assert_eq!(c.username.as_deref(), Some("u"));
        let will = c.will.expect("will");
        assert_eq!((&will.topic[..], &will.payload[..], will.qos), (&b"w/t"[..], &b"gone"[..], 1));
        assert_eq!(&f[c.keep_alive_at..c.keep_alive_at + 2], &[0, 0]);
        // MQTT 5 with connect and will properties, no user.
        let mut body = prefixed(b"MQTT");
        body.extend_from_slice(&[5, 0x04 | 0x02, 0, 30, 3, 0x21, 0, 10]);
        body.extend(prefixed(b"c5"));
        body.extend_from_slice(&[2, 0x01, 1]);
        body.extend(prefixed(b"t"));
        body.extend(prefixed(b"p"));
        let c = connect(&Bytes::from(frame(0x10, &body))).expect("valid");
        assert!(c.v5());
        assert_eq!((c.keep_alive, c.username, c.will.map(|w| w.topic)), (30, None, Some(Bytes::from("t"))));
        assert!(connect(&Bytes::from(frame(0x10, &prefixed(b"HTTP")))).is_err());
    }

    #[test]
    fn publish_fields_and_v5_alias() {
        let f = Bytes::from(publish_frame(1, b"s/1", 513, None, b"hello"));
        let p = publish(&f, 4).expect("valid");
        assert_eq!(
            (p.qos, &p.topic[..], p.pkid, p.alias, &p.payload[..]),
            (1, &b"s/1"[..], 513, None, &b"hello"[..])
        );
        // User property, content type, alias 3.
        let props =
            [&[0x26][..], &prefixed(b"k"), &prefixed(b"v"), &[0x03], &prefixed(b"json"), &[0x23, 0, 3]]
                .concat();
        let f = Bytes::from(publish_frame(2, b"", 9, Some(&props), b"{}"));
        let p = publish(&f, 5).expect("valid");
        assert_eq!((p.qos, p.topic.len(), p.pkid, p.alias, &p.payload[..]), (2, 0, 9, Some(3), &b"{}"[..]));
        let f = Bytes::from(publish_frame(0, b"t", 0, Some(&[0x7F]), b""));
        assert!(publish(&f, 5).is_err());
        assert!(publish(&Bytes::from(frame(0x36, &prefixed(b"t"))), 4).is_err());
    }

    #[test]
    fn trailers_go_on_and_come_off_with_the_qos_changed() {
        let t = trailer(2, 0x0102_0304_0506_0708);
        assert_eq!(read_trailer(&t), Some((2, 0x0102_0304_0506_0708)));
        for (qos, pkid) in [(0u8, 0u16), (1, 7), (2, 9)] {
            let f = publish_frame(qos, b"a/b", pkid, None, b"payload");
            let with = publish_with_trailer(&f, qos, &t);
            let p = publish(&with, 4).expect("valid");
            assert_eq!(p.qos, qos.min(1), "QoS 2 goes on at QoS 1");
            assert_eq!(&p.payload[..], &[&b"payload"[..], &t].concat()[..]);
            for to in [0u8, 1, 2] {
                assert_eq!(trailer_of(&with), read_trailer(&t));
                let back = strip_trailer(&with, to).expect("has a trailer").freeze();
                let p = publish(&back, 4).expect("valid");
                let want_pkid = match (to, qos.min(1)) {
                    (0, _) | (_, 0) => 0,
                    _ => pkid,
                };
                assert_eq!(
                    (p.qos, &p.topic[..], p.pkid, &p.payload[..]),
                    (to, &b"a/b"[..], want_pkid, &b"payload"[..])
                );
            }
        }
        assert!(strip_trailer(&publish_frame(0, b"t", 0, None, b"short"), 0).is_none());
        assert_eq!(
            trailer_of(&publish_frame(1, b"a/long/topic", 3, None, b"")),
            None,
            "no payload, no trailer"
        );
        assert_eq!(
            trailer_of(&publish_with_trailer(&publish_frame(1, b"t", 3, None, b""), 1, &t)),
            Some((2, 0x0102_0304_0506_0708))
        );
        // The will payload of a CONNECT gets the trailer.
        let body = [
            &prefixed(b"MQTT")[..],
            &[4, 0x06, 0, 60],
            &prefixed(b"cid"),
            &prefixed(b"w/t"),
            &prefixed(b"bye"),
        ]
        .concat();
        let f = Bytes::from(frame(0x10, &body));
        let c = connect(&f).expect("valid");
        let will = c.will.expect("a will");
        let with = connect_with_will_trailer(&f, will.end, will.payload.len(), &t);
        let c2 = connect(&with).expect("valid");
        assert_eq!(&c2.will.expect("a will").payload[..], &[&b"bye"[..], &t].concat()[..]);
        assert_eq!(c2.client_id, "cid");
    }

    #[test]
    fn unsuback_answers_every_filter_of_an_unsubscribe() {
        let body = [&[0x12, 0x34][..], &prefixed(b"a/#"), &prefixed(b"b")].concat();
        let v4 = unsubscribe(&Bytes::from(frame(0xA2, &body)), 4).expect("valid");
        assert_eq!(v4.filters, [Bytes::from_static(b"a/#"), Bytes::from_static(b"b")]);
        assert_eq!(&v4.unsuback(4)[..], &[0xB0, 2, 0x12, 0x34]);
        let body5 = [&[0x12, 0x34, 0][..], &prefixed(b"a/#"), &prefixed(b"b")].concat();
        let v5 = unsubscribe(&Bytes::from(frame(0xA2, &body5)), 5).expect("valid");
        assert_eq!(&v5.unsuback(5)[..], &[0xB0, 5, 0x12, 0x34, 0, 0, 0]);
        assert!(unsubscribe(&Bytes::from(frame(0xA2, &[0x12, 0x34])), 4).is_err(), "no filter");
    }

    #[test]
    fn acks_and_codes() {
        let mut out = BytesMut::new();
        ack(&mut out, kind::PUBACK, 0x0102, false, reason::NOT_AUTHORIZED);
        ack(&mut out, kind::PUBREC, 5, true, 0);
        ack(&mut out, kind::PUBACK, 6, true, reason::NOT_AUTHORIZED);
        assert_eq!(&out[..], &[0x40, 2, 1, 2, 0x50, 2, 0, 5, 0x40, 3, 0, 6, 0x87]);
        assert_eq!(pkid_of(&out[..4]), Some(0x0102));
        assert_eq!(connack_code(&[0x20, 2, 0, 5]), Some(5));
        assert_eq!(disconnect_reason(&[0xE0, 0]), 0);
        assert_eq!(disconnect_reason(&[0xE0, 1, 4]), 4);
        let long = frame(0xE0, &[&[0u8][..], &[200, 1], &[0x26; 200]].concat());
        assert_eq!(disconnect_reason(&long), 0, "a two-byte remaining length");
    }

    #[test]
    fn disconnect_session_expiry_is_read_and_bad_properties_refused() {
        assert_eq!(disconnect_session_expiry(&[0xE0, 0]), Ok(None));
        assert_eq!(disconnect_session_expiry(&[0xE0, 1, 0]), Ok(None));
        assert_eq!(disconnect_session_expiry(&[0xE0, 2, 0, 0]), Ok(None));
        assert_eq!(disconnect_session_expiry(&[0xE0, 7, 0, 5, 0x11, 0, 0, 1, 0]), Ok(Some(256)));
        // A reason string next to it.
        let with_reason = [0xE0, 12, 4, 10, 0x1F, 0, 2, b'o', b'k', 0x11, 0, 0, 0, 0];
        assert_eq!(disconnect_session_expiry(&with_reason), Ok(Some(0)));
        assert!(disconnect_session_expiry(&[0xE0, 4, 0, 2, 0x01, 1]).is_err(), "not a DISCONNECT property");
        assert!(disconnect_session_expiry(&[0xE0, 4, 0, 5, 0x11, 0]).is_err(), "cut short");
    }

    #[test]
    fn subscribe_is_filtered_and_suback_merged() {
        for level in [4u8, 5] {
            let mut body = 7u16.to_be_bytes().to_vec();
            if level == 5 {
                body.extend_from_slice(&[2, 0x0B, 5]);
            }
            for f in [&b"a/#"[..], b"b/+", b"c"] {
                body.extend(prefixed(f));
                body.push(1);
            }
            let f = Bytes::from(frame(0x82, &body));
            let sub = subscribe(&f, level).expect("valid");
            assert_eq!(sub.pkid, 7);
            assert_eq!(
                sub.filters.iter().map(|(f, _)| &f[..]).collect::<Vec<_>>(),
                [&b"a/#"[..], b"b/+", b"c"]
            );
            let mut out = BytesMut::new();
            sub.encode_kept(&[true, false, true], &mut out);
            let mut buf = out.clone();
            let again =
                subscribe(&next_frame(&mut buf, 1000).expect("valid").expect("whole"), level).expect("valid");
            assert_eq!(again.filters.iter().map(|(f, _)| &f[..]).collect::<Vec<_>>(), [&b"a/#"[..], b"c"]);
            // The broker grants the two it saw; the refused one goes between.
            let mut theirs = BytesMut::new();
            suback(&mut theirs, 7, level == 5, &[1, 0]);
            let merged = merge_suback(&theirs.freeze(), level, &[true, false, true], 0x80).expect("valid");
            let mut want = BytesMut::new();
            suback(&mut want, 7, level == 5, &[1, 0x80, 0]);
            assert_eq!(merged, want.freeze());
        }
    }

    proptest! {
        /// Any byte soup: framing and field parsing never panic, and a
        /// frame is exactly what its header says.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), level in 3u8..6) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(f)) = next_frame(&mut buf, 1 << 20) {
                let _ = connect(&f);
                if f.len() > 1 && kind_of(&f) == kind::PUBLISH {
                    let _ = publish(&f, level);
                    let _ = trailer_of(&f);
                    let _ = strip_trailer(&f, level % 2);
                }
                let _ = unsubscribe(&f, level);
                let _ = pkid_of(&f);
                let _ = connack_code(&f);
            }
        }

        #[test]
        fn publish_round_trip(qos in 0u8..3, topic in "[a-z/]{0,40}", pkid in 1u16.., payload in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let bytes = publish_frame(qos, topic.as_bytes(), pkid, None, &payload);
            let mut buf = BytesMut::from(&bytes[..]);
            let f = next_frame(&mut buf, 1 << 20).expect("valid").expect("whole");
            let p = publish(&f, 4).expect("valid");
            prop_assert_eq!(&p.topic[..], topic.as_bytes());
            prop_assert_eq!(p.pkid, if qos > 0 { pkid } else { 0 });
            prop_assert_eq!(&p.payload[..], &payload[..]);
        }
    }
}
