//! The chunk: the value stored under one key of a partition tree, holding
//! the records of one append. Integers big-endian:
//!
//! ```text
//! u8  chunk format (2)
//! u32 record count
//! per record: u32 length, then the encoded record (see crate::record)
//! ```
//!
//! The key is the offset of the chunk's first record; record `i` of the
//! chunk sits at that offset + `i`. Public so the fuzz targets (`fuzz/`) can
//! drive the same code the log reads with.

use crate::error::CorruptRecord;
use crate::record::{Offset, Record};

const CHUNK_V2: u8 = 2;

/// Sizes are counted as encoded record bytes plus 8 bytes of overhead per
/// record (the key of the record-per-key layout; kept so budgets mean the
/// same as before chunks).
pub(crate) const KEY_LEN: u64 = 8;

/// Splits a chunk whose first record is at `first` into (offset, encoded
/// record) pairs, without decoding the records. Anything but exactly the
/// bytes [`encode`] writes is an error naming what is wrong.
pub fn decode(first: Offset, v: &[u8]) -> Result<Vec<(Offset, &[u8])>, CorruptRecord> {
    let Some((&CHUNK_V2, rest)) = v.split_first() else {
        return Err(CorruptRecord(format!("unknown chunk format {:?}", v.first())));
    };
    let Some((count, mut rest)) = rest.split_first_chunk::<4>() else {
        return Err(CorruptRecord(format!("chunk of {} bytes has no record count", v.len())));
    };
    let count = u32::from_be_bytes(*count);
    if first.0.checked_add(u64::from(count)).is_none() {
        return Err(CorruptRecord(format!(
            "chunk at offset {first} holds {count} records, past the last offset"
        )));
    }
    // Every record takes at least its 4-byte length: a damaged count cannot
    // make this allocate more than the chunk's own size.
    let mut out = Vec::with_capacity((count as usize).min(rest.len() / 4));
    for i in 0..count {
        let rec = rest.split_first_chunk::<4>().and_then(|(len, after)| {
            let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
            (len <= after.len()).then(|| after.split_at(len))
        });
        let Some((rec, after)) = rec else {
            return Err(CorruptRecord(format!("chunk truncated at record {i} of {count}")));
        };
        out.push((Offset(first.0 + u64::from(i)), rec));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(CorruptRecord(format!("chunk has {} bytes after its {count} records", rest.len())));
    }
    Ok(out)
}

/// Writes `records` as one chunk into `out` (cleared first); returns the
/// bytes the budgets count for them.
pub fn encode(records: &[Record], out: &mut Vec<u8>) -> u64 {
    out.clear();
    out.push(CHUNK_V2);
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    let mut logical = 0u64;
    for r in records {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        r.encode_into(out);
        let len = out.len() - at - 4;
        out[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        logical += KEY_LEN + len as u64;
    }
    logical
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_records() -> Vec<u8> {
        let a = Record { key: Some(b"k".to_vec()), value: b"v".to_vec(), ..Record::default() };
        let mut out = Vec::new();
        encode(&[a.clone(), a], &mut out);
        out
    }

    #[test]
    fn decode_reads_what_encode_writes() {
        let bytes = two_records();
        let recs = decode(Offset(41), &bytes).expect("decodes");
        assert_eq!(recs.iter().map(|(o, _)| o.0).collect::<Vec<_>>(), [41, 42]);
    }

    /// Regression (found by fuzz/record_codec): a damaged record count made
    /// decoding reserve room for billions of entries and abort the process
    /// on the failed allocation, whatever the chunk's size.
    #[test]
    fn huge_record_count_is_an_error_not_an_abort() {
        let crash: &[u8] = b"\x02\xa2\x16\xde\x58\x00\x00\x00\x00\x06dev-1\x00\x01\x00\x0amqtt.topic";
        let err = decode(Offset(41), crash).expect_err("truncated");
        assert_eq!(err.0, "chunk truncated at record 1 of 2719407704");
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = two_records();
        bytes.push(0);
        let err = decode(Offset(0), &bytes).expect_err("trailing byte");
        assert_eq!(err.0, "chunk has 1 bytes after its 2 records");
    }

    #[test]
    fn offsets_past_the_last_are_an_error() {
        let err = decode(Offset(u64::MAX - 1), &two_records()).expect_err("overflow");
        assert!(err.0.contains("past the last offset"), "{err}");
        assert!(decode(Offset(u64::MAX - 2), &two_records()).is_ok());
    }
}
