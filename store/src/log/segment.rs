//! The segment file format: a partition's records live in append-only
//! files named by the offset of their first record,
//! `segments/<topic>-<partition>/<base offset, 20 digits>.log`, each a
//! sequence of batches. Integers are big-endian.
//!
//! ```text
//! offset size  field
//!      0    4  magic "SLB3"
//!      4    1  format version (1)
//!      5    1  flags: bit 0 = written by an atomic commit (see below)
//!      6    2  reserved (0)
//!      8    8  base offset: offset of the batch's first record
//!     16    4  record count (>= 1)
//!     20    4  payload length in bytes
//!     24    8  first timestamp (ms since the epoch, of the first record)
//!     32    8  max timestamp
//!     40    8  producer id (-1: none; the Kafka listener's idempotent
//!              produce, or the id of an atomic commit)
//!     48    4  base sequence (-1: none)
//!     52    4  CRC32C of bytes 0..52 and of the payload
//!     56       payload: per record a u32 length, then the encoded record
//!              (see crate::record)
//! ```
//!
//! A batch is written whole by one `pwrite`; a crash can leave a torn
//! batch only at the end of the active segment, where recovery finds the
//! first batch whose header or CRC does not check out and cuts the file
//! there. Record `i` of a batch has offset `base + i`; batches of a
//! segment have strictly increasing, contiguous offsets.
//!
//! A batch with the atomic flag belongs to [`super::Store::commit_atomic`]:
//! it counts only once the metadata names its commit id as done (recovery
//! cuts it otherwise; it is always the tail of its partition until then).

use crate::error::CorruptRecord;
use crate::record::{Offset, Record};

/// Bytes of a batch header.
pub const HEADER_LEN: usize = 56;
const MAGIC: &[u8; 4] = b"SLB3";
const VERSION: u8 = 1;
/// Flag: the batch is part of an atomic commit.
pub const FLAG_ATOMIC: u8 = 1;
/// Largest payload a batch may declare (a damaged length is not believed).
pub const MAX_PAYLOAD: u32 = 64 << 20;

/// A decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Flags (see [`FLAG_ATOMIC`]).
    pub flags: u8,
    /// Offset of the first record.
    pub base: Offset,
    /// Records in the batch.
    pub count: u32,
    /// Payload bytes after the header.
    pub payload_len: u32,
    /// Timestamp of the first record.
    pub first_ts: i64,
    /// Largest record timestamp.
    pub max_ts: i64,
    /// Producer (or atomic commit) id, -1 for none.
    pub producer_id: i64,
    /// First sequence number, -1 for none.
    pub base_sequence: i32,
}

impl Header {
    /// One past the last offset of the batch.
    pub fn end(&self) -> Offset {
        Offset(self.base.0 + u64::from(self.count))
    }

    /// Header and payload bytes.
    pub fn total_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
    }
}

/// A batch being built in memory: records are framed as they come, the
/// header is written when the batch is sealed.
#[derive(Debug, Default)]
pub struct Builder {
    buf: Vec<u8>,
    count: u32,
    first_ts: i64,
    max_ts: i64,
}

impl Builder {
    /// Records in the batch so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// True when no record was pushed since the last seal.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the batch once sealed.
    pub fn len(&self) -> usize {
        if self.count == 0 {
            0
        } else {
            self.buf.len()
        }
    }

    /// Adds one record; returns the bytes it takes in the segment.
    pub fn push(&mut self, r: &Record) -> u64 {
        if self.count == 0 {
            self.buf.clear();
            self.buf.resize(HEADER_LEN, 0);
            self.first_ts = r.timestamp_ms;
            self.max_ts = r.timestamp_ms;
        }
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        r.encode_into(&mut self.buf);
        let len = self.buf.len() - at - 4;
        self.buf[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        self.count += 1;
        self.max_ts = self.max_ts.max(r.timestamp_ms);
        4 + len as u64
    }

    /// Writes the header (with `base`, `flags` and the producer fields) and
    /// returns the finished batch; the builder is empty afterwards.
    pub fn seal(&mut self, base: Offset, flags: u8, producer_id: i64, base_sequence: i32) -> Vec<u8> {
        let header = Header {
            flags,
            base,
            count: self.count,
            payload_len: (self.buf.len() - HEADER_LEN) as u32,
            first_ts: self.first_ts,
            max_ts: self.max_ts,
            producer_id,
            base_sequence,
        };
        write_header(&header, &mut self.buf);
        self.count = 0;
        std::mem::take(&mut self.buf)
    }
}

/// Encodes `records` as one sealed batch (tests, migration, fuzzing).
pub fn encode(base: Offset, records: &[Record]) -> Vec<u8> {
    let mut b = Builder::default();
    for r in records {
        b.push(r);
    }
    b.seal(base, 0, -1, -1)
}

fn write_header(h: &Header, buf: &mut [u8]) {
    buf[0..4].copy_from_slice(MAGIC);
    buf[4] = VERSION;
    buf[5] = h.flags;
    buf[6..8].copy_from_slice(&[0, 0]);
    buf[8..16].copy_from_slice(&h.base.0.to_be_bytes());
    buf[16..20].copy_from_slice(&h.count.to_be_bytes());
    buf[20..24].copy_from_slice(&h.payload_len.to_be_bytes());
    buf[24..32].copy_from_slice(&h.first_ts.to_be_bytes());
    buf[32..40].copy_from_slice(&h.max_ts.to_be_bytes());
    buf[40..48].copy_from_slice(&h.producer_id.to_be_bytes());
    buf[48..52].copy_from_slice(&h.base_sequence.to_be_bytes());
    let mut crc = crc32c::crc32c(&buf[..52]);
    crc = crc32c::crc32c_append(crc, &buf[HEADER_LEN..]);
    buf[52..56].copy_from_slice(&crc.to_be_bytes());
}

fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

/// Parses a header (without checking the CRC, which needs the payload).
pub fn parse_header(b: &[u8]) -> Result<Header, CorruptRecord> {
    if b.len() < HEADER_LEN {
        return Err(CorruptRecord(format!("batch header truncated ({} of {HEADER_LEN} bytes)", b.len())));
    }
    if &b[0..4] != MAGIC {
        return Err(CorruptRecord("no batch magic".into()));
    }
    if b[4] != VERSION {
        return Err(CorruptRecord(format!("unknown batch format version {}", b[4])));
    }
    let h = Header {
        flags: b[5],
        base: Offset(u64::from_be_bytes(be(b, 8))),
        count: u32::from_be_bytes(be(b, 16)),
        payload_len: u32::from_be_bytes(be(b, 20)),
        first_ts: i64::from_be_bytes(be(b, 24)),
        max_ts: i64::from_be_bytes(be(b, 32)),
        producer_id: i64::from_be_bytes(be(b, 40)),
        base_sequence: i32::from_be_bytes(be(b, 48)),
    };
    if h.count == 0 || h.payload_len > MAX_PAYLOAD || h.base.0.checked_add(u64::from(h.count)).is_none() {
        return Err(CorruptRecord(format!(
            "implausible batch header (count {}, payload {} bytes, base {})",
            h.count, h.payload_len, h.base
        )));
    }
    Ok(h)
}

/// Checks the CRC of a whole batch (`b` = header + payload).
pub fn check_crc(b: &[u8]) -> Result<(), CorruptRecord> {
    let stored = u32::from_be_bytes(be(b, 52));
    let mut crc = crc32c::crc32c(&b[..52]);
    crc = crc32c::crc32c_append(crc, &b[HEADER_LEN..]);
    if crc == stored {
        Ok(())
    } else {
        Err(CorruptRecord(format!("batch CRC mismatch (stored {stored:08x}, computed {crc:08x})")))
    }
}

/// The records of a batch: (offset, encoded record).
pub type Entries<'a> = Vec<(Offset, &'a [u8])>;

/// Parses and verifies one whole batch at the start of `b`; returns the
/// header and the (offset, encoded record) pairs.
pub fn decode(b: &[u8]) -> Result<(Header, Entries<'_>), CorruptRecord> {
    let h = parse_header(b)?;
    let total = h.total_len() as usize;
    if b.len() < total {
        return Err(CorruptRecord(format!("batch truncated ({} of {total} bytes)", b.len())));
    }
    let b = &b[..total];
    check_crc(b)?;
    let mut rest = &b[HEADER_LEN..];
    let mut out = Vec::with_capacity((h.count as usize).min(rest.len() / 4));
    for i in 0..h.count {
        let rec = rest.split_first_chunk::<4>().and_then(|(len, after)| {
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            (len <= after.len()).then(|| after.split_at(len))
        });
        let Some((rec, after)) = rec else {
            return Err(CorruptRecord(format!("batch truncated at record {i} of {}", h.count)));
        };
        out.push((Offset(h.base.0 + u64::from(i)), rec));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(CorruptRecord(format!("batch has {} bytes after its {} records", rest.len(), h.count)));
    }
    Ok((h, out))
}

/// File name of the segment starting at `base`.
pub fn file_name(base: Offset) -> String {
    format!("{:020}.log", base.0)
}

/// The base offset of a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Offset))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: &str, ts: i64) -> Record {
        Record { key: Some(b"k".to_vec()), value: v.as_bytes().to_vec(), headers: vec![], timestamp_ms: ts }
    }

    #[test]
    fn decode_reads_what_encode_writes() {
        let b = encode(Offset(41), &[rec("a", 5), rec("bb", 3)]);
        let (h, recs) = decode(&b).expect("decodes");
        assert_eq!((h.base, h.count, h.first_ts, h.max_ts), (Offset(41), 2, 5, 5));
        assert_eq!(recs.iter().map(|(o, _)| o.0).collect::<Vec<_>>(), [41, 42]);
        assert_eq!(Record::decode(recs[1].1).expect("record"), rec("bb", 3));
    }

    #[test]
    fn any_flipped_bit_is_found() {
        let b = encode(Offset(7), &[rec("hello", 1)]);
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                assert!(decode(&d).is_err(), "flip of bit {bit} in byte {i} went unnoticed");
            }
        }
    }

    #[test]
    fn torn_batches_are_errors() {
        let b = encode(Offset(0), &[rec("hello", 1), rec("world", 2)]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_name(Offset(42)), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(Offset(u64::MAX))), Some(Offset(u64::MAX)));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.tmp"), None);
    }
}
