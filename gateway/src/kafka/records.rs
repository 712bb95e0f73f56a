//! RecordBatch (magic 2) <-> sluice records. Produced batches are decoded
//! (any codec the client used) into sluice records; fetched records are
//! encoded as one uncompressed batch per partition starting at the offset
//! asked for, so a fetch never starts in the middle of a batch.
//!
//! A record keeps its key, value and headers (a null header value is
//! stored as empty bytes). Its timestamp is the one sluice gave it when it
//! accepted it (LogAppendTime semantics, which TTLs and the uplink rely
//! on), sent to consumers with the CreateTime flag, the only one the
//! codec writes.
//! The codec keeps headers in a map, so the headers of produced records
//! are read again by [`super::batch`] (every value of a repeated name, in
//! order), and fetched batches are written by it.

use super::batch;
use bytes::{Buf, Bytes};
use kafka_protocol::compression::{self as cmpr, Decompressor};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use sluice_store::{Record, StoredRecord};
use std::cell::RefCell;

/// What a produced batch held.
#[derive(Debug)]
pub(super) struct Produced {
    pub(super) records: Vec<Record>,
    /// Idempotent producers: (producer id, epoch, first sequence).
    pub(super) producer: Option<(i64, i16, i32)>,
}

/// Decodes every batch of one partition's produce data.
pub(super) fn decode_produced(mut data: Bytes, now_ms: i64) -> anyhow::Result<Produced> {
    let mut records = Vec::new();
    let mut producer = None;
    // The records section of the batch being decoded, after decompression,
    // for batch::record_headers.
    let section: RefCell<Bytes> = RefCell::new(Bytes::new());
    let decompress = |buf: &mut Bytes, c: Compression| -> anyhow::Result<Bytes> {
        let out = match c {
            Compression::None => buf.split_to(buf.len()),
            Compression::Gzip => cmpr::Gzip::decompress(buf, |b| Ok(b.copy_to_bytes(b.remaining())))?,
            Compression::Snappy => cmpr::Snappy::decompress(buf, |b| Ok(b.copy_to_bytes(b.remaining())))?,
            Compression::Lz4 => cmpr::Lz4::decompress(buf, |b| Ok(b.copy_to_bytes(b.remaining())))?,
            Compression::Zstd => cmpr::Zstd::decompress(buf, |b| Ok(b.copy_to_bytes(b.remaining())))?,
        };
        *section.borrow_mut() = out.clone();
        Ok(out)
    };
    while data.has_remaining() {
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut data, Some(&decompress))?;
        if set.version < 2 {
            anyhow::bail!(
                "message format v{} is not served; use RecordBatch v2 (Kafka 0.11+ clients)",
                set.version
            );
        }
        let all_headers = match batch::record_headers(&section.borrow(), set.records.len()) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::debug!(error = %e, "cannot re-read produced headers; keeping the codec's");
                None
            }
        };
        let mut all_headers = all_headers.map(Vec::into_iter);
        for r in set.records {
            if r.control || r.transactional {
                anyhow::bail!("transactional and control records are not served");
            }
            if producer.is_none() && r.producer_id >= 0 {
                producer = Some((r.producer_id, r.producer_epoch, r.sequence));
            }
            let headers = match all_headers.as_mut().and_then(Iterator::next) {
                Some(h) => h,
                None => r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.map(|v| v.to_vec()).unwrap_or_default()))
                    .collect(),
            };
            records.push(Record {
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()).unwrap_or_default(),
                headers,
                timestamp_ms: now_ms,
            });
        }
    }
    Ok(Produced { records, producer })
}

/// Encodes stored records (consecutive in one partition) as one batch,
/// every header as stored.
pub(super) fn encode_fetched(records: &[StoredRecord]) -> anyhow::Result<Bytes> {
    batch::encode(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Record as KRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use sluice_store::Offset;

    fn stored(offset: u64, key: Option<&str>, value: &str, headers: &[(&str, &[u8])]) -> StoredRecord {
        StoredRecord {
            offset: Offset(offset),
            record: Record {
                key: key.map(|k| k.as_bytes().to_vec()),
                value: value.as_bytes().to_vec(),
                headers: headers.iter().map(|(k, v)| ((*k).to_owned(), v.to_vec())).collect(),
                timestamp_ms: 1_700_000_000_000 + offset as i64,
            },
        }
    }

    #[test]
    fn fetched_records_round_trip_through_the_codec_from_any_offset() {
        let records = vec![
            stored(41, Some("k"), "a", &[("h", b"\x00\xff")]),
            stored(42, None, "", &[]),
            stored(43, None, "c", &[]),
        ];
        let mut batch = encode_fetched(&records).expect("encodes");
        let sets = RecordBatchDecoder::decode_all(&mut batch).expect("decodes");
        let back: Vec<_> = sets.iter().flat_map(|s| s.records.iter()).collect();
        assert_eq!(back.len(), 3);
        assert_eq!(
            back.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [41, 42, 43],
            "starts at the offset asked"
        );
        assert_eq!(back[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(
            back[0].headers.get(&StrBytes::from_static_str("h")).cloned().flatten().as_deref(),
            Some(&b"\x00\xff"[..])
        );
        assert_eq!(back[2].timestamp, 1_700_000_000_043);
        assert!(encode_fetched(&[]).expect("empty").is_empty());
    }

    #[test]
    fn produced_batches_decode_with_any_codec() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let krecords: Vec<KRecord> = (0..3)
                .map(|i| KRecord {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: 7,
                    producer_epoch: 0,
                    timestamp_type: TimestampType::Creation,
                    offset: i,
                    sequence: 10 + i as i32,
                    timestamp: 5,
                    key: None,
                    value: Some(Bytes::from(format!("v{i}"))),
                    headers: IndexMap::from([
                        (StrBytes::from_static_str("h"), Some(Bytes::from(format!("x{i}")))),
                        (StrBytes::from_static_str("n"), None),
                    ]),
                })
                .collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(&mut buf, &krecords, &RecordEncodeOptions { version: 2, compression })
                .expect("encodes");
            let produced = decode_produced(buf.freeze(), 99).expect("decodes");
            let values: Vec<_> = produced.records.iter().map(|r| r.value.clone()).collect();
            assert_eq!(values, [b"v0".to_vec(), b"v1".to_vec(), b"v2".to_vec()], "{compression:?}");
            assert!(produced.records.iter().all(|r| r.timestamp_ms == 99), "sluice's accept time");
            assert_eq!(produced.producer, Some((7, 0, 10)));
            // Headers come through sluice's own reader of the (decompressed) records.
            let h: Vec<_> = produced.records[2].headers.clone();
            assert_eq!(
                h,
                [("h".to_owned(), b"x2".to_vec()), ("n".to_owned(), Vec::new())],
                "{compression:?}"
            );
        }
        assert!(decode_produced(Bytes::from_static(b"\x00\x01garbage"), 0).is_err());
    }
}
