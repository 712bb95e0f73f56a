//! JSON shapes of records on the HTTP API, in and out.
//!
//! In: `{"key": "dev-1" | null, "key_b64": "...", "value": <any JSON>,
//! "value_b64": "<base64>", "headers": {"name": "value"}}`; exactly one of
//! `value` / `value_b64`. Headers with a repeated name or a binary value go
//! in `header_list` instead of `headers`: `[{"name": "h", "value": "a"},
//! {"name": "h", "value_b64": "AAE="}]`, kept in that order. A JSON `value` is stored as its JSON text, and
//! refused when nested deeper than [`MAX_JSON_DEPTH`] (consumers' JSON
//! parsers have limits of their own: serde_json's default is 128). A raw
//! `application/octet-stream` body is one record ([`raw_record`]).
//!
//! Out: the same fields plus `offset`, `timestamp` (ms since the epoch) and,
//! for group fetches, `topic` and `partition`. Stored bytes that are valid
//! JSON come back as `value`, others as `value_b64`; keys that are not UTF-8
//! come back as `key_b64`. `headers` is always there (the last value of
//! each name, as UTF-8 with replacement characters); when a record has a
//! repeated header name or a value that is not UTF-8, `header_list` also
//! holds every header, in order, exactly.
//!
//! Every record that was stored can be served: stored values are never
//! parsed into a tree (`serde_json::Value` has a recursion limit, and one
//! record past it used to fail every fetch reaching it). A value is checked
//! as JSON without recursion and embedded as its own text
//! ([`RawValue`]), whatever its depth and whichever path stored it (HTTP,
//! MQTT, raw bodies). The reply encoders ([`fetch_reply`],
//! [`group_fetch_reply`], [`record_json`]) are the ones the handlers use.

use super::error::ApiError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sluice_store::record::{MAX_HEADERS, MAX_HEADER_NAME_LEN};
use sluice_store::{Record, StoredRecord};
use std::collections::BTreeMap;

/// Deepest nesting of arrays and objects accepted in a JSON `value` at
/// produce (the top-level array or object counts as 1).
pub const MAX_JSON_DEPTH: usize = 128;

/// Body of `POST /v1/topics/{topic}/records`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProduceBody {
    /// The records, answered in this order.
    pub records: Vec<InRecord>,
}

/// One record as sent by a producer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InRecord {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_b64: Option<String>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    value_b64: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    header_list: Option<Vec<InHeader>>,
}

/// One entry of `header_list`: a name and exactly one of `value` (text)
/// and `value_b64`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InHeader {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_b64: Option<String>,
}

/// `"value": null` is a present JSON null, not a missing value.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses a JSON body, naming the path of the first bad field.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON body at {path}: {inner}"))
        }
    })
}

/// Parses a produce body into records stamped with `timestamp_ms`.
pub fn parse_produce(body: &[u8], timestamp_ms: i64) -> Result<Vec<Record>, ApiError> {
    let parsed: ProduceBody = parse_json(body)?;
    if parsed.records.is_empty() {
        return Err(ApiError::bad_request("records: must contain at least one record"));
    }
    parsed.records.into_iter().enumerate().map(|(i, r)| r.into_record(i, timestamp_ms)).collect()
}

impl InRecord {
    fn into_record(self, i: usize, timestamp_ms: i64) -> Result<Record, ApiError> {
        let key =
            match (self.key, self.key_b64) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::bad_request(format!(
                        "records[{i}]: give either key or key_b64, not both"
                    )))
                }
                (Some(k), None) => Some(k.into_bytes()),
                (None, Some(b)) => Some(B64.decode(b.as_bytes()).map_err(|e| {
                    ApiError::bad_request(format!("records[{i}].key_b64: invalid base64: {e}"))
                })?),
                (None, None) => None,
            };
        let value = match (self.value, self.value_b64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(format!(
                    "records[{i}]: give either value or value_b64, not both"
                )))
            }
            (Some(raw), None) => {
                if deeper_than(raw.get().as_bytes(), MAX_JSON_DEPTH) {
                    return Err(ApiError::bad_request(format!(
                        "records[{i}].value: JSON nested deeper than {MAX_JSON_DEPTH} levels of arrays and \
                         objects (the limit); send deeper values as value_b64"
                    )));
                }
                raw.get().as_bytes().to_vec()
            }
            (None, Some(b)) => B64
                .decode(b.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("records[{i}].value_b64: invalid base64: {e}")))?,
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "records[{i}]: missing value (give value or value_b64)"
                )))
            }
        };
        let (field, headers): (&str, Vec<(String, Vec<u8>)>) = match self.header_list {
            Some(_) if !self.headers.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "records[{i}]: give headers or header_list, not both"
                )))
            }
            Some(list) => ("header_list", in_header_list(list, i)?),
            None => ("headers", self.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()),
        };
        if headers.len() > MAX_HEADERS {
            return Err(ApiError::bad_request(format!(
                "records[{i}].{field}: {} headers, at most {MAX_HEADERS} per record",
                headers.len()
            )));
        }
        if let Some((name, _)) = headers.iter().find(|(n, _)| n.len() > MAX_HEADER_NAME_LEN) {
            return Err(ApiError::bad_request(format!(
                "records[{i}].{field}: a name of {} bytes is longer than {MAX_HEADER_NAME_LEN} bytes",
                name.len()
            )));
        }
        Ok(Record { key, value, headers, timestamp_ms })
    }
}

fn in_header_list(list: Vec<InHeader>, i: usize) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    list.into_iter()
        .enumerate()
        .map(|(j, h)| {
            let value = match (h.value, h.value_b64) {
                (Some(v), None) => v.into_bytes(),
                (None, Some(b)) => B64.decode(b.as_bytes()).map_err(|e| {
                    ApiError::bad_request(format!(
                        "records[{i}].header_list[{j}].value_b64: invalid base64: {e}"
                    ))
                })?,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "records[{i}].header_list[{j}]: give exactly one of value and value_b64"
                    )))
                }
            };
            Ok((h.name, value))
        })
        .collect()
}

/// One header of `header_list` in a reply.
#[derive(Debug, Serialize)]
pub struct OutHeader<'a> {
    /// The header name.
    pub name: &'a str,
    /// The value, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a str>,
    /// The value otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
}

/// Every header, exactly, when the `headers` object cannot say it: a
/// name repeated or a value that is not UTF-8.
fn out_header_list(headers: &[(String, Vec<u8>)]) -> Option<Vec<OutHeader<'_>>> {
    let binary = headers.iter().any(|(_, v)| std::str::from_utf8(v).is_err());
    let mut names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    let repeated = names.windows(2).any(|w| w[0] == w[1]);
    (binary || repeated).then(|| {
        headers
            .iter()
            .map(|(name, v)| match std::str::from_utf8(v) {
                Ok(text) => OutHeader { name, value: Some(text), value_b64: None },
                Err(_) => OutHeader { name, value: None, value_b64: Some(B64.encode(v)) },
            })
            .collect()
    })
}

/// The record of a raw `application/octet-stream` produce body: the body is
/// the value, `key` comes from `?key=`.
pub fn raw_record(key: Option<&str>, body: &[u8], timestamp_ms: i64) -> Record {
    Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: body.to_vec(),
        headers: Vec::new(),
        timestamp_ms,
    }
}

/// The bytes of JSON `text`, each with whether it is structural (outside
/// strings; the quotes of a string are not). A scan, not a parse: constant
/// stack on any input, right for valid JSON.
pub fn json_bytes(text: &[u8]) -> impl Iterator<Item = (u8, bool)> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    text.iter().map(move |&b| {
        let structural = !in_string && b != b'"';
        match b {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            _ => {}
        }
        (b, structural)
    })
}

/// True when JSON `text` nests arrays and objects deeper than `limit`
/// (brackets inside strings do not count).
pub fn deeper_than(text: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    for (b, structural) in json_bytes(text) {
        match b {
            b'[' | b'{' if structural => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' if structural => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// One record as returned to consumers.
#[derive(Debug, Serialize)]
pub struct OutRecord<'a> {
    /// Topic (group fetches only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    /// Partition (group fetches only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Offset in the partition.
    pub offset: u64,
    /// Key as text, or null.
    pub key: Option<&'a str>,
    /// Key bytes that are not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// Value bytes that are valid JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a RawValue>,
    /// Other value bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    /// Headers (the last value of each name, as lossy UTF-8).
    pub headers: BTreeMap<&'a str, std::borrow::Cow<'a, str>>,
    /// Every header in order, exactly, when a name repeats or a value is
    /// not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header_list: Option<Vec<OutHeader<'a>>>,
    /// Milliseconds since the epoch when sluice accepted it.
    pub timestamp: i64,
}

impl<'a> OutRecord<'a> {
    /// Shapes a stored record for the API.
    pub fn new(rec: &'a StoredRecord, topic: Option<&'a str>, partition: Option<u32>) -> OutRecord<'a> {
        let r = &rec.record;
        let (key, key_b64) = match r.key.as_deref() {
            None => (None, None),
            Some(k) => match std::str::from_utf8(k) {
                Ok(s) => (Some(s), None),
                Err(_) => (None, Some(B64.encode(k))),
            },
        };
        let (value, value_b64) = match serde_json::from_slice::<&RawValue>(&r.value) {
            Ok(raw) => (Some(raw), None),
            Err(_) => (None, Some(B64.encode(&r.value))),
        };
        OutRecord {
            topic,
            partition,
            offset: rec.offset.0,
            key,
            key_b64,
            value,
            value_b64,
            headers: r.headers.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v))).collect(),
            header_list: out_header_list(&r.headers),
            timestamp: r.timestamp_ms,
        }
    }
}

/// Body of `GET /v1/topics/{topic}/partitions/{p}/records`.
#[derive(Debug, Serialize)]
struct FetchReply<'a> {
    records: Vec<OutRecord<'a>>,
    high_watermark: u64,
    log_start: u64,
}

/// The JSON reply of a partition fetch.
pub fn fetch_reply(
    records: &[StoredRecord],
    high_watermark: u64,
    log_start: u64,
) -> Result<Vec<u8>, serde_json::Error> {
    let records = records.iter().map(|r| OutRecord::new(r, None, None)).collect();
    serde_json::to_vec(&FetchReply { records, high_watermark, log_start })
}

/// The JSON reply of a group fetch: (topic, partition, record) in delivery
/// order.
pub fn group_fetch_reply<'a>(
    records: impl Iterator<Item = (&'a str, u32, &'a StoredRecord)>,
) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct GroupFetchReply<'a> {
        records: Vec<OutRecord<'a>>,
    }
    let records = records.map(|(t, p, r)| OutRecord::new(r, Some(t), Some(p))).collect();
    serde_json::to_vec(&GroupFetchReply { records })
}

/// One record of a push stream (an SSE event's data, a WebSocket message):
/// the record as JSON with its topic and partition.
pub fn record_json(topic: &str, partition: u32, record: &StoredRecord) -> Result<String, serde_json::Error> {
    serde_json::to_string(&OutRecord::new(record, Some(topic), Some(partition)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: header names past the store's u16 length field were
    /// accepted and then cut when stored (inside a multi-byte character
    /// they made the record unreadable). They are refused, naming the field.
    #[test]
    fn over_long_header_name_is_refused() {
        let name = format!("{}é", "a".repeat(MAX_HEADER_NAME_LEN - 1));
        let body = format!(r#"{{"records":[{{"value":1,"headers":{{"{name}":"v"}}}}]}}"#);
        let err = parse_produce(body.as_bytes(), 0).expect_err("refused");
        assert_eq!(err.status().as_u16(), 400);
        assert!(err.message().starts_with("records[0].headers: a name of 65536 bytes"), "{err}");
        let ok = format!(
            r#"{{"records":[{{"value":1,"headers":{{"{}":"v"}}}}]}}"#,
            "a".repeat(MAX_HEADER_NAME_LEN)
        );
        assert_eq!(
            parse_produce(ok.as_bytes(), 0).expect("accepted")[0].headers[0].0.len(),
            MAX_HEADER_NAME_LEN
        );
    }

    #[test]
    fn values_deeper_than_the_limit_are_refused() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let body = |v: &str| format!(r#"{{"records":[{{"value":1}},{{"value":{v}}}]}}"#);
        assert_eq!(
            parse_produce(body(&nested(MAX_JSON_DEPTH)).as_bytes(), 0).expect("at the limit").len(),
            2
        );
        let err = parse_produce(body(&nested(MAX_JSON_DEPTH + 1)).as_bytes(), 0).expect_err("refused");
        assert_eq!(err.status().as_u16(), 400);
        assert!(err.message().starts_with("records[1].value: JSON nested deeper than 128 levels"), "{err}");
        // Brackets inside strings are not nesting.
        let text = format!(r#"{{"a":"{}\"[","b":[[]]}}"#, "[".repeat(500));
        assert!(!deeper_than(text.as_bytes(), 3));
        assert!(deeper_than(text.as_bytes(), 2));
        assert!(deeper_than(nested(100_000).as_bytes(), MAX_JSON_DEPTH));
    }

    /// Regression: a stored value nested 100,000 arrays deep made the fetch
    /// handlers panic (`serde_json::Value`'s recursion limit). It is served
    /// as its own text, by every reply encoder.
    #[test]
    fn deep_values_are_served_as_they_are() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let rec =
            StoredRecord { offset: sluice_store::Offset(7), record: raw_record(None, deep.as_bytes(), 0) };
        let fetch =
            String::from_utf8(fetch_reply(std::slice::from_ref(&rec), 8, 0).expect("fetch")).expect("utf-8");
        assert!(fetch.starts_with(r#"{"records":[{"offset":7,"key":null,"value":[[[["#), "{}", &fetch[..60]);
        assert!(fetch.contains(&deep));
        let group = group_fetch_reply(std::iter::once(("t", 0, &rec))).expect("group fetch");
        assert!(String::from_utf8(group).expect("utf-8").contains(&deep));
        assert!(record_json("t", 0, &rec).expect("stream").contains(&deep));
    }

    #[test]
    fn repeated_and_binary_headers_round_trip_through_header_list() {
        let body = r#"{"records":[{"value":1,"header_list":[{"name":"h","value":"a"},{"name":"h","value_b64":"AP8="},{"name":"g","value":"x"}]}]}"#;
        let rec = parse_produce(body.as_bytes(), 5).expect("accepted").remove(0);
        let want = [("h", &b"a"[..]), ("h", &[0, 255][..]), ("g", &b"x"[..])];
        let got: Vec<(&str, &[u8])> = rec.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        assert_eq!(got, want);
        let stored = StoredRecord { offset: sluice_store::Offset(0), record: rec };
        let out = serde_json::to_value(OutRecord::new(&stored, None, None)).expect("serializes");
        assert_eq!(out["headers"], serde_json::json!({"g": "x", "h": "\u{0}\u{fffd}"}));
        assert_eq!(
            out["header_list"],
            serde_json::json!([{"name": "h", "value": "a"}, {"name": "h", "value_b64": "AP8="}, {"name": "g", "value": "x"}])
        );
        // The simple case keeps the simple form only.
        let simple =
            parse_produce(br#"{"records":[{"value":1,"headers":{"a":"1"}}]}"#, 5).expect("ok").remove(0);
        let stored = StoredRecord { offset: sluice_store::Offset(1), record: simple };
        let out = serde_json::to_value(OutRecord::new(&stored, None, None)).expect("serializes");
        assert_eq!(out.get("header_list"), None);
        for (body, message) in [
            (
                r#"{"records":[{"value":1,"headers":{"a":"1"},"header_list":[]}]}"#,
                "records[0]: give headers or header_list, not both",
            ),
            (
                r#"{"records":[{"value":1,"header_list":[{"name":"a"}]}]}"#,
                "records[0].header_list[0]: give exactly one of value and value_b64",
            ),
        ] {
            assert_eq!(parse_produce(body.as_bytes(), 0).expect_err(body).message(), message);
        }
    }

    #[test]
    fn too_many_headers_are_refused() {
        let headers: Vec<String> = (0..=MAX_HEADERS).map(|n| format!(r#""h{n}":"""#)).collect();
        let body =
            format!(r#"{{"records":[{{"value":1}},{{"value":2,"headers":{{{}}}}}]}}"#, headers.join(","));
        let err = parse_produce(body.as_bytes(), 0).expect_err("refused");
        assert_eq!(err.message(), "records[1].headers: 65536 headers, at most 65535 per record");
    }
}
