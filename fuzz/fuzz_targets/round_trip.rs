//! Produce -> store -> every consumer encoder: a record must come out as it
//! went in.
//!
//! The first input byte picks how the rest goes in, through the functions
//! the produce handler calls:
//! - even: a JSON produce body (`parse_produce`): JSON values, `value_b64`,
//!   keys, `key_b64`, headers;
//! - odd: a raw `application/octet-stream` body (`raw_record`): the next
//!   byte is the length of the `?key=` text (0: no key), then the key
//!   (lossy UTF-8, as a query string gives it), then the value bytes.
//!
//! Each accepted record goes through the store's record codec (as the log
//! stores it), then through the three reply encoders the read paths use:
//! the partition fetch reply (`fetch_reply`), the group fetch reply
//! (`group_fetch_reply`) and a stream event (`record_json`, SSE and
//! WebSocket). Every reply must be valid JSON, and each record in it must
//! give back the same key bytes, headers and value: `value_b64` decodes to
//! the stored bytes, which must not be JSON; `value` is the stored bytes
//! without the whitespace around them (a JSON `value` is stored without
//! any, so it comes back exactly; raw bytes that happen to be JSON lose
//! only that). Nothing may panic, however deep the JSON.
#![no_main]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_gateway::http::codec::{fetch_reply, group_fetch_reply, parse_produce, raw_record, record_json};
use sluice_store::{Offset, Record, StoredRecord};
use std::collections::BTreeMap;

const NOW_MS: i64 = 1_700_000_000_000;

#[derive(Deserialize)]
struct Reply {
    records: Vec<Out>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Out {
    topic: Option<String>,
    partition: Option<u32>,
    offset: u64,
    key: Option<String>,
    key_b64: Option<String>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
    value_b64: Option<String>,
    headers: BTreeMap<String, String>,
    timestamp: i64,
}

/// `"value": null` is a present JSON null, not a missing value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    let records = if kind % 2 == 0 {
        match parse_produce(rest, NOW_MS) {
            Ok(records) => records,
            Err(_) => return,
        }
    } else {
        let Some((&len, rest)) = rest.split_first() else { return };
        let (key, value) = rest.split_at(usize::from(len).saturating_sub(1).min(rest.len()));
        let key = (len > 0).then(|| String::from_utf8_lossy(key));
        vec![raw_record(key.as_deref(), value, NOW_MS)]
    };
    let stored: Vec<StoredRecord> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let record = Record::decode(&r.encode()).expect("a produced record decodes");
            assert_eq!(&record, r, "the store's codec changed a record");
            StoredRecord { offset: Offset(i as u64), record }
        })
        .collect();

    let fetch = fetch_reply(&stored, stored.len() as u64, 0).expect("fetch reply");
    let fetch: Reply = serde_json::from_slice(&fetch).expect("the fetch reply is JSON");
    check_all(&fetch.records, &stored, None);
    let group = group_fetch_reply(stored.iter().map(|r| ("t", 3, r))).expect("group fetch reply");
    let group: Reply = serde_json::from_slice(&group).expect("the group fetch reply is JSON");
    check_all(&group.records, &stored, Some(("t", 3)));
    for r in &stored {
        let event = record_json("t", 3, r).expect("stream event");
        let out: Out = serde_json::from_str(&event).expect("a stream event is JSON");
        check(&out, r, Some(("t", 3)));
    }
});

fn check_all(out: &[Out], stored: &[StoredRecord], place: Option<(&str, u32)>) {
    assert_eq!(out.len(), stored.len(), "records lost or added");
    for (o, r) in out.iter().zip(stored) {
        check(o, r, place);
    }
}

fn check(out: &Out, stored: &StoredRecord, place: Option<(&str, u32)>) {
    let r = &stored.record;
    assert_eq!(
        (out.topic.as_deref(), out.partition),
        place.map_or((None, None), |(t, p)| (Some(t), Some(p)))
    );
    assert_eq!((out.offset, out.timestamp), (stored.offset.0, r.timestamp_ms));
    let key = match (&out.key, &out.key_b64) {
        (Some(k), None) => Some(k.as_bytes().to_vec()),
        (None, Some(b)) => Some(B64.decode(b).expect("key_b64 is base64")),
        (None, None) => None,
        _ => panic!("both key and key_b64"),
    };
    assert_eq!(key, r.key, "key changed");
    let headers: BTreeMap<String, String> =
        r.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect();
    assert_eq!(out.headers, headers, "headers changed");
    let is_json = serde_json::from_slice::<&RawValue>(&r.value).is_ok();
    match (&out.value, &out.value_b64) {
        (Some(v), None) => {
            assert!(is_json, "bytes that are not JSON came out as value");
            assert_eq!(v.get().as_bytes(), r.value.trim_ascii(), "value changed");
        }
        (None, Some(b)) => {
            assert!(!is_json, "a JSON value came out as value_b64");
            assert_eq!(B64.decode(b).expect("value_b64 is base64"), r.value, "value changed");
        }
        _ => panic!("neither or both of value and value_b64"),
    }
}
