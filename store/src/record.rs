//! The one record type that crosses crate boundaries, its identifiers, and
//! its on-disk encoding.
//!
//! Encoded record (the value stored under an offset key), all integers
//! big-endian:
//!
//! ```text
//! u8   format version (1)
//! i64  timestamp, ms since the Unix epoch
//! u32  key length + 1 (0 = no key), then the key bytes
//! u16  header count, then per header: u16 name length, name (UTF-8),
//!      u32 value length, value bytes
//! ...  the value: every remaining byte
//! ```

use crate::error::CorruptRecord;

/// Milliseconds since the Unix epoch: the unit of [`Record::timestamp_ms`].
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The timestamp before which a record is older than `age` at `now_ms`
/// (retention by age, TTL at delivery and forwarding).
pub fn older_than_cutoff(now_ms: i64, age: std::time::Duration) -> i64 {
    now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Position of a record inside one partition. Starts at 0, strictly
/// increases, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl std::fmt::Display for Offset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Index of a partition inside a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PartitionId(pub u32);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One event: optional key, value bytes, headers and a timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Picks the partition (stable hash); `None` spreads round-robin.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub value: Vec<u8>,
    /// Application headers, in order; names need not be unique.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the Unix epoch when sluice accepted the record.
    pub timestamp_ms: i64,
}

/// A record together with the offset it was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Where the record sits in its partition.
    pub offset: Offset,
    /// The record itself.
    pub record: Record,
}

const FORMAT_V1: u8 = 1;

/// Most headers a record can carry (the count is a u16 on disk).
pub const MAX_HEADERS: usize = u16::MAX as usize;

/// Longest header name in bytes (its length is a u16 on disk).
pub const MAX_HEADER_NAME_LEN: usize = u16::MAX as usize;

/// Longest key in bytes (its length + 1 is a u32 on disk).
pub const MAX_KEY_LEN: usize = u32::MAX as usize - 1;

/// The parts of a record that fit the format's length fields: callers
/// check the limits above, so cutting is a last resort that keeps the
/// encoded record decodable (names are cut at a character boundary).
fn fitted_key(key: &[u8]) -> &[u8] {
    &key[..key.len().min(MAX_KEY_LEN)]
}

fn fitted_headers(headers: &[(String, Vec<u8>)]) -> &[(String, Vec<u8>)] {
    &headers[..headers.len().min(MAX_HEADERS)]
}

fn fitted_name(name: &str) -> &str {
    let mut end = name.len().min(MAX_HEADER_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

fn fitted_value(value: &[u8]) -> &[u8] {
    &value[..value.len().min(u32::MAX as usize)]
}

impl Record {
    /// Bytes this record occupies once encoded (what budgets count).
    pub fn encoded_len(&self) -> usize {
        1 + 8
            + 4
            + self.key.as_deref().map_or(0, |k| fitted_key(k).len())
            + 2
            + fitted_headers(&self.headers)
                .iter()
                .map(|(n, v)| 2 + fitted_name(n).len() + 4 + fitted_value(v).len())
                .sum::<usize>()
            + self.value.len()
    }

    /// Appends the encoded form to `out`.
    ///
    /// More than [`MAX_HEADERS`] headers, header names longer than
    /// [`MAX_HEADER_NAME_LEN`] bytes, keys longer than [`MAX_KEY_LEN`] and
    /// header values over 4 GiB cannot be encoded: the HTTP API refuses
    /// them and the payload limits keep MQTT inputs far below, and such a
    /// record is cut (at a character boundary for names) rather than
    /// written undecodable or corrupting its neighbours.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        match &self.key {
            None => out.extend_from_slice(&0u32.to_be_bytes()),
            Some(k) => {
                let k = fitted_key(k);
                out.extend_from_slice(&(k.len() as u32 + 1).to_be_bytes());
                out.extend_from_slice(k);
            }
        }
        let headers = fitted_headers(&self.headers);
        out.extend_from_slice(&(headers.len() as u16).to_be_bytes());
        for (name, value) in headers {
            let name = fitted_name(name);
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            let value = fitted_value(value);
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.value);
    }

    /// The encoded form as a new buffer.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Parses an encoded record.
    pub fn decode(bytes: &[u8]) -> Result<Record, CorruptRecord> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.take(1, "version")?[0];
        if version != FORMAT_V1 {
            return Err(CorruptRecord(format!("unknown record format version {version}")));
        }
        let timestamp_ms = i64::from_be_bytes(r.array("timestamp")?);
        let key_len = u32::from_be_bytes(r.array("key length")?);
        let key = match key_len {
            0 => None,
            n => Some(r.take(n as usize - 1, "key")?.to_vec()),
        };
        let count = u16::from_be_bytes(r.array("header count")?);
        let mut headers = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let n = u16::from_be_bytes(r.array("header name length")?) as usize;
            let name = std::str::from_utf8(r.take(n, "header name")?)
                .map_err(|_| CorruptRecord("header name is not UTF-8".into()))?
                .to_owned();
            let n = u32::from_be_bytes(r.array("header value length")?) as usize;
            headers.push((name, r.take(n, "header value")?.to_vec()));
        }
        let value = bytes[r.pos..].to_vec();
        Ok(Record { key, value, headers, timestamp_ms })
    }

    /// Reads only the timestamp of an encoded record (retention scans).
    pub fn decode_timestamp(bytes: &[u8]) -> Result<i64, CorruptRecord> {
        let mut r = Reader { bytes, pos: 1 };
        Ok(i64::from_be_bytes(r.array("timestamp")?))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CorruptRecord> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            CorruptRecord(format!(
                "{what} needs {n} bytes at position {} but the record has {}",
                self.pos,
                self.bytes.len()
            ))
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CorruptRecord> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            value in proptest::collection::vec(any::<u8>(), 0..256),
            headers in proptest::collection::vec(("[a-z]{0,8}", proptest::collection::vec(any::<u8>(), 0..16)), 0..4),
            timestamp_ms in any::<i64>(),
        ) {
            let rec = Record { key, value, headers, timestamp_ms };
            let bytes = rec.encode();
            prop_assert_eq!(bytes.len(), rec.encoded_len());
            prop_assert_eq!(Record::decode(&bytes).expect("decodes"), rec.clone());
            prop_assert_eq!(Record::decode_timestamp(&bytes).expect("ts"), timestamp_ms);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Record::decode(&bytes);
        }
    }

    /// Regression: a header name over the u16 length field was cut inside
    /// a multi-byte character, and the stored record could not be decoded
    /// again (every read of its partition failed).
    #[test]
    fn over_long_header_name_stays_decodable() {
        let name = format!("{}é", "a".repeat(MAX_HEADER_NAME_LEN - 1));
        let rec = Record { headers: vec![(name, b"v".to_vec())], ..Record::default() };
        let bytes = rec.encode();
        assert_eq!(bytes.len(), rec.encoded_len());
        let back = Record::decode(&bytes).expect("decodes");
        assert_eq!(back.headers[0].0, "a".repeat(MAX_HEADER_NAME_LEN - 1));
        assert_eq!(back.headers[0].1, b"v");
    }

    #[test]
    fn truncated_record_names_the_field() {
        let rec = Record { key: Some(b"k".to_vec()), value: b"v".to_vec(), ..Record::default() };
        let bytes = rec.encode();
        let err = Record::decode(&bytes[..10]).expect_err("truncated");
        assert!(err.0.contains("key length"), "{err}");
    }
}
