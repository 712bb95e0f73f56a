//! JSON shapes of records on the HTTP API, in and out.
//!
//! In: `{"key": "dev-1" | null, "key_b64": "...", "value": <any JSON>,
//! "value_b64": "<base64>", "headers": {"name": "value"}}`; exactly one of
//! `value` / `value_b64`. A JSON `value` is stored as its JSON text.
//!
//! Out: the same fields plus `offset`, `timestamp` (ms since the epoch) and,
//! for group fetches, `topic` and `partition`. Stored bytes that are valid
//! JSON come back as `value`, others as `value_b64`; keys that are not UTF-8
//! come back as `key_b64`.

use super::error::ApiError;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use sluice_store::record::{MAX_HEADERS, MAX_HEADER_NAME_LEN};
use sluice_store::{Record, StoredRecord};
use std::collections::BTreeMap;

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
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(b)) => B64
                .decode(b.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("records[{i}].value_b64: invalid base64: {e}")))?,
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "records[{i}]: missing value (give value or value_b64)"
                )))
            }
        };
        if self.headers.len() > MAX_HEADERS {
            return Err(ApiError::bad_request(format!(
                "records[{i}].headers: {} headers, at most {MAX_HEADERS} per record",
                self.headers.len()
            )));
        }
        if let Some(name) = self.headers.keys().find(|n| n.len() > MAX_HEADER_NAME_LEN) {
            return Err(ApiError::bad_request(format!(
                "records[{i}].headers: a name of {} bytes is longer than {MAX_HEADER_NAME_LEN} bytes",
                name.len()
            )));
        }
        let headers = self.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        Ok(Record { key, value, headers, timestamp_ms })
    }
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
    /// Headers (values as lossy UTF-8).
    pub headers: BTreeMap<&'a str, std::borrow::Cow<'a, str>>,
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
            timestamp: r.timestamp_ms,
        }
    }
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
    fn too_many_headers_are_refused() {
        let headers: Vec<String> = (0..=MAX_HEADERS).map(|n| format!(r#""h{n}":"""#)).collect();
        let body =
            format!(r#"{{"records":[{{"value":1}},{{"value":2,"headers":{{{}}}}}]}}"#, headers.join(","));
        let err = parse_produce(body.as_bytes(), 0).expect_err("refused");
        assert_eq!(err.message(), "records[1].headers: 65536 headers, at most 65535 per record");
    }
}
