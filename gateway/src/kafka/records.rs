//! RecordBatch (magic 2) <-> sluice records. Produced batches are decoded
//! (any codec the client used) into sluice records; fetched records are
//! encoded as one uncompressed batch per partition starting at the offset
//! asked for, so a fetch never starts in the middle of a batch.
//!
//! A record keeps its key, value and headers (a null header value is
//! stored as empty bytes). Its timestamp is the one sluice gave it when it
//! accepted it (Kafka's LogAppendTime), which TTLs and the uplink use.
//! The codec keeps headers in a map: a header name repeated within one
//! produced record keeps only its last value.

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KRecord, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};
use sluice_store::{Record, StoredRecord};

/// What a produced batch held.
#[derive(Debug)]
pub(super) struct Produced {
    pub(super) records: Vec<Record>,
    /// Idempotent producers: (producer id, epoch, first sequence).
    pub(super) producer: Option<(i64, i16, i32)>,
}

/// Decodes every batch of one partition's produce data.
pub(super) fn decode_produced(mut data: Bytes, now_ms: i64) -> anyhow::Result<Produced> {
    let sets = RecordBatchDecoder::decode_all(&mut data)?;
    let mut records = Vec::new();
    let mut producer = None;
    for set in sets {
        if set.version < 2 {
            anyhow::bail!(
                "message format v{} is not served; use RecordBatch v2 (Kafka 0.11+ clients)",
                set.version
            );
        }
        for r in set.records {
            if r.control || r.transactional {
                anyhow::bail!("transactional and control records are not served");
            }
            if producer.is_none() && r.producer_id >= 0 {
                producer = Some((r.producer_id, r.producer_epoch, r.sequence));
            }
            records.push(Record {
                key: r.key.map(|k| k.to_vec()),
                value: r.value.map(|v| v.to_vec()).unwrap_or_default(),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.map(|v| v.to_vec()).unwrap_or_default()))
                    .collect(),
                timestamp_ms: now_ms,
            });
        }
    }
    Ok(Produced { records, producer })
}

/// Encodes stored records (consecutive in one partition) as one batch.
pub(super) fn encode_fetched(records: &[StoredRecord]) -> anyhow::Result<Bytes> {
    if records.is_empty() {
        return Ok(Bytes::new());
    }
    let krecords: Vec<KRecord> = records
        .iter()
        .map(|r| {
            let mut headers = IndexMap::new();
            for (k, v) in &r.record.headers {
                headers.insert(StrBytes::from_string(k.clone()), Some(Bytes::copy_from_slice(v)));
            }
            KRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::LogAppend,
                offset: r.offset.0 as i64,
                sequence: -1,
                timestamp: r.record.timestamp_ms,
                key: r.record.key.as_deref().map(Bytes::copy_from_slice),
                value: Some(Bytes::copy_from_slice(&r.record.value)),
                headers,
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &krecords,
        &RecordEncodeOptions { version: 2, compression: Compression::None },
    )?;
    Ok(buf.freeze())
}
