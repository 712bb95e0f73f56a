//! The parts of RecordBatch v2 sluice reads and writes itself, because the
//! codec keeps a record's headers in a map (a repeated name would keep only
//! its last value):
//!
//! - [`record_headers`]: every header of every record of an uncompressed
//!   (or already decompressed) records section, in order.
//! - [`encode`]: stored records as one uncompressed batch, headers as
//!   stored.
//!
//! Layout (Kafka's "Record Batch" format, all integers big-endian; varints
//! are zigzag LEB128):
//!
//! ```text
//! batch:  baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 |
//!         magic i8 = 2 | crc u32 (CRC-32C of what follows) |
//!         attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 |
//!         maxTimestamp i64 | producerId i64 | producerEpoch i16 |
//!         baseSequence i32 | recordCount i32 | records
//! record: length varint | attributes i8 | timestampDelta varlong |
//!         offsetDelta varint | keyLength varint | key | valueLength varint |
//!         value | headerCount varint | headers
//! header: keyLength varint | key | valueLength varint | value
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use sluice_store::StoredRecord;

/// Headers of one record: (name, value; a null value as empty bytes).
pub(super) type Headers = Vec<(String, Vec<u8>)>;

/// Bytes before the records of a batch.
const HEADER_LEN: usize = 61;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> anyhow::Result<i64> {
        let mut n: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&b, rest) =
                self.0.split_first().ok_or_else(|| anyhow::anyhow!("record ends inside a varint"))?;
            self.0 = rest;
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((n >> 1) as i64) ^ -((n & 1) as i64));
            }
        }
        anyhow::bail!("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize, what: &str) -> anyhow::Result<&'a [u8]> {
        anyhow::ensure!(self.0.len() >= n, "record ends inside its {what}");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A length-prefixed field; `None` for length -1 (null).
    fn bytes(&mut self, what: &str) -> anyhow::Result<Option<&'a [u8]>> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => anyhow::bail!("{what} has a negative length {n}"),
            n => self.take(usize::try_from(n)?, what).map(Some),
        }
    }
}

/// The headers of the `count` records of a records section.
pub(super) fn record_headers(records: &[u8], count: usize) -> anyhow::Result<Vec<Headers>> {
    let mut r = Reader(records);
    let mut out = Vec::with_capacity(count.min(records.len()));
    for _ in 0..count {
        let len = usize::try_from(r.varint()?)?;
        let mut rec = Reader(r.take(len, "body")?);
        rec.take(1, "attributes")?;
        rec.varint()?; // timestamp delta
        rec.varint()?; // offset delta
        rec.bytes("key")?;
        rec.bytes("value")?;
        let n = rec.varint()?;
        anyhow::ensure!(n >= 0, "negative header count {n}");
        let mut headers = Vec::new();
        for _ in 0..n {
            let name = rec.bytes("header name")?.unwrap_or_default();
            let name = std::str::from_utf8(name).map_err(|_| anyhow::anyhow!("header name is not UTF-8"))?;
            let value = rec.bytes("header value")?.unwrap_or_default();
            headers.push((name.to_owned(), value.to_vec()));
        }
        out.push(headers);
    }
    Ok(out)
}

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        buf.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
}

fn put_bytes(buf: &mut BytesMut, b: Option<&[u8]>) {
    match b {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

/// Stored records (consecutive offsets of one partition) as one
/// uncompressed batch, flagged CreateTime, no producer.
pub(super) fn encode(records: &[StoredRecord]) -> anyhow::Result<Bytes> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(Bytes::new()) };
    let base_offset = i64::try_from(first.offset.0)?;
    let base_ts = records.iter().map(|r| r.record.timestamp_ms).min().unwrap_or(0);
    let max_ts = records.iter().map(|r| r.record.timestamp_ms).max().unwrap_or(0);
    let mut body = BytesMut::new();
    let mut rec = BytesMut::new();
    for r in records {
        rec.clear();
        rec.put_i8(0);
        put_varint(&mut rec, r.record.timestamp_ms - base_ts);
        put_varint(&mut rec, i64::try_from(r.offset.0)? - base_offset);
        put_bytes(&mut rec, r.record.key.as_deref());
        put_bytes(&mut rec, Some(&r.record.value));
        put_varint(&mut rec, r.record.headers.len() as i64);
        for (name, value) in &r.record.headers {
            put_bytes(&mut rec, Some(name.as_bytes()));
            put_bytes(&mut rec, Some(value));
        }
        put_varint(&mut body, rec.len() as i64);
        body.put_slice(&rec);
    }
    let mut crc_part = BytesMut::with_capacity(HEADER_LEN - 21 + body.len());
    crc_part.put_i16(0); // attributes: no compression, CreateTime
    crc_part.put_i32(i32::try_from(last.offset.0 - first.offset.0)?);
    crc_part.put_i64(base_ts);
    crc_part.put_i64(max_ts);
    crc_part.put_i64(-1); // producer id
    crc_part.put_i16(-1); // producer epoch
    crc_part.put_i32(-1); // base sequence
    crc_part.put_i32(i32::try_from(records.len())?);
    crc_part.put_slice(&body);
    let mut out = BytesMut::with_capacity(21 + crc_part.len());
    out.put_i64(base_offset);
    out.put_i32(i32::try_from(4 + 1 + 4 + crc_part.len())?);
    out.put_i32(-1); // partition leader epoch
    out.put_i8(2);
    out.put_u32(crc32c::crc32c(&crc_part));
    out.put_slice(&crc_part);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;
    use sluice_store::{Offset, Record};

    #[test]
    fn repeated_headers_survive_and_the_codec_reads_the_batch() {
        let rec = |o: u64, headers: Headers| StoredRecord {
            offset: Offset(o),
            record: Record {
                key: Some(b"k".to_vec()),
                value: b"v".to_vec(),
                headers,
                timestamp_ms: 1000 + o as i64,
            },
        };
        let h = |n: &str, v: &[u8]| (n.to_owned(), v.to_vec());
        let stored = [
            rec(7, vec![h("h", b"1"), h("h", b"2"), h("g", &[0, 255])]),
            rec(8, vec![]),
            rec(9, vec![h("a", b"")]),
        ];
        let bytes = encode(&stored).expect("encodes");
        // The codec accepts it (CRC, lengths) and sees the same records.
        let sets = RecordBatchDecoder::decode_all(&mut bytes.clone()).expect("valid batch");
        let recs = &sets[0].records;
        assert_eq!(
            recs.iter().map(|r| (r.offset, r.timestamp)).collect::<Vec<_>>(),
            [(7, 1007), (8, 1008), (9, 1009)]
        );
        assert_eq!(recs[0].headers.len(), 2, "the codec's map keeps one h");
        // sluice's own reader keeps them all.
        let all = record_headers(&bytes[HEADER_LEN..], 3).expect("parses");
        assert_eq!(all[0], stored[0].record.headers);
        assert_eq!(all[1], Vec::new());
        assert_eq!(all[2], stored[2].record.headers);
        assert!(record_headers(&bytes[HEADER_LEN..bytes.len() - 1], 3).is_err(), "truncated");
    }

    #[test]
    fn varints_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, 300, -300, i64::from(i32::MAX), i64::MIN, i64::MAX] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(Reader(&buf).varint().expect("reads"), v);
        }
    }
}
