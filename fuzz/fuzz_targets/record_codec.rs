//! The store's on-disk codecs: one encoded record (`sluice_store::record`),
//! one chunk of records of the format-2 store (`sluice_store::log::chunk`,
//! read when a format-2 directory is migrated) and one segment batch
//! (`sluice_store::log::segment`).
//!
//! The first input byte picks what the rest is:
//! - `0`: an encoded record. Decoding never panics; a record that decodes
//!   re-encodes to exactly the same bytes (the format is canonical).
//! - `1`: 8 bytes of chunk key (the first offset, big-endian), then a chunk
//!   value. A chunk that decodes, and whose records all decode, re-encodes
//!   to the same bytes; anything else is an error, never a panic.
//! - `2`: a segment batch. Decoding never panics; a batch that decodes
//!   and whose records all decode re-encodes to the same bytes when it has
//!   no producer fields (flags 0, producer id and sequence -1).
//! - otherwise: the bytes drive `arbitrary` to build a record, which must
//!   survive encode -> decode unchanged, with `encoded_len` exact.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sluice_store::log::{chunk, segment};
use sluice_store::{Offset, Record};

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((0, bytes)) => record_bytes(bytes),
        Some((1, bytes)) => chunk_bytes(bytes),
        Some((2, bytes)) => batch_bytes(bytes),
        Some((_, bytes)) => {
            if let Ok(record) = arbitrary_record(&mut Unstructured::new(bytes)) {
                round_trip(&record);
            }
        }
        None => {}
    }
});

fn record_bytes(bytes: &[u8]) {
    let Ok(record) = Record::decode(bytes) else { return };
    assert_eq!(record.encode(), bytes, "a decoded record re-encodes to other bytes");
    assert_eq!(record.encoded_len(), bytes.len());
    assert_eq!(Record::decode_timestamp(bytes), Ok(record.timestamp_ms));
}

fn chunk_bytes(bytes: &[u8]) {
    let Some((key, value)) = bytes.split_first_chunk::<8>() else { return };
    let first = Offset(u64::from_be_bytes(*key));
    let Ok(entries) = chunk::decode(first, value) else { return };
    let mut records = Vec::with_capacity(entries.len());
    for (i, (offset, raw)) in entries.iter().enumerate() {
        assert_eq!(offset.0, first.0 + i as u64, "record {i} of the chunk is at the wrong offset");
        match Record::decode(raw) {
            Ok(r) => records.push(r),
            Err(_) => return,
        }
    }
    let mut again = Vec::new();
    let counted = chunk::encode(&records, &mut again);
    assert_eq!(again, value, "a decoded chunk re-encodes to other bytes");
    let raw_bytes: u64 = entries.iter().map(|(_, raw)| 8 + raw.len() as u64).sum();
    assert_eq!(counted, raw_bytes, "chunk::encode counts other bytes than it wrote");
}

fn batch_bytes(bytes: &[u8]) {
    let Ok((header, entries)) = segment::decode(bytes) else { return };
    assert_eq!(entries.len() as u64, u64::from(header.count));
    let mut records = Vec::with_capacity(entries.len());
    for (i, (offset, raw)) in entries.iter().enumerate() {
        assert_eq!(offset.0, header.base.0 + i as u64, "record {i} of the batch is at the wrong offset");
        match Record::decode(raw) {
            Ok(r) => records.push(r),
            Err(_) => return,
        }
    }
    let plain = header.flags == 0 && header.producer_id == -1 && header.base_sequence == -1;
    let first_ts = records.first().map_or(0, |r| r.timestamp_ms);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    if plain && header.first_ts == first_ts && header.max_ts == max_ts {
        let again = segment::encode(header.base, &records);
        assert_eq!(again, &bytes[..again.len()], "a decoded batch re-encodes to other bytes");
    }
}

fn arbitrary_record(u: &mut Unstructured<'_>) -> Result<Record> {
    Ok(Record {
        key: u.arbitrary()?,
        headers: u.arbitrary()?,
        timestamp_ms: u.arbitrary()?,
        value: u.arbitrary()?,
    })
}

fn round_trip(record: &Record) {
    let bytes = record.encode();
    assert_eq!(bytes.len(), record.encoded_len(), "encoded_len is not the encoded length");
    assert_eq!(Record::decode(&bytes).as_ref(), Ok(record), "encode -> decode changed the record");
    let mut chunk_value = Vec::new();
    chunk::encode(std::slice::from_ref(record), &mut chunk_value);
    let entries = chunk::decode(Offset(7), &chunk_value).expect("a written chunk decodes");
    assert_eq!(entries, vec![(Offset(7), bytes.as_slice())]);
    let batch = segment::encode(Offset(9), std::slice::from_ref(record));
    let (header, entries) = segment::decode(&batch).expect("a written batch decodes");
    assert_eq!((header.base, header.count, header.max_ts), (Offset(9), 1, record.timestamp_ms));
    assert_eq!(entries, vec![(Offset(9), bytes.as_slice())]);
}
