//! The payload of every MQTT bench publish: JSON
//! `{"sent_us":…,"svc":…,"seq":…,"pad":"xx…"}` padded to the payload size,
//! so a consumer can tell the service and the end-to-end latency of each
//! message, and sluice stores it as a JSON value.

use serde::Deserialize;

/// What a consumer reads back from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    /// Wall clock at publish, microseconds since the Unix epoch.
    pub sent_us: u64,
    /// Index of the publishing service.
    pub svc: u32,
    /// Sequence number within the publisher.
    pub seq: u64,
}

/// A payload of `size` bytes (or the stamp alone, if larger).
pub fn encode(svc: u32, seq: u64, size: usize) -> Vec<u8> {
    let head = format!(r#"{{"sent_us":{},"svc":{svc},"seq":{seq},"pad":""#, super::stats::wall_us());
    let mut out = Vec::with_capacity(size.max(head.len() + 2));
    out.extend_from_slice(head.as_bytes());
    out.resize(size.saturating_sub(2).max(head.len()), b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// The stamp of a raw payload (MQTT consumers).
pub fn decode(bytes: &[u8]) -> Option<Stamp> {
    serde_json::from_slice(bytes).ok()
}

/// The stamp of a record value sluice returned as JSON (HTTP consumers).
pub fn from_value(value: &serde_json::Value) -> Option<Stamp> {
    Stamp::deserialize(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_to_size_and_read_back() {
        let p = encode(3, 42, 100);
        assert_eq!(p.len(), 100);
        let s = decode(&p).expect("valid stamp");
        assert_eq!((s.svc, s.seq), (3, 42));
        let v: serde_json::Value = serde_json::from_slice(&p).expect("JSON");
        assert_eq!(from_value(&v), Some(s));
        // Too small a size: the stamp alone, still valid.
        assert!(decode(&encode(0, 0, 10)).is_some());
    }
}
