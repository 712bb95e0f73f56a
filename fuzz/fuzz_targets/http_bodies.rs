//! The JSON request bodies of the HTTP API, through the same functions the
//! handlers call: produce (`parse_produce`), group fetch (`parse_fetch`),
//! group commit (`parse_commit`) and service update
//! (`parse_service_update`). The first input byte picks the body.
//!
//! Properties: nothing panics; a rejected body is a 400 whose message
//! starts with the field it is about (or says the JSON is invalid, with the
//! path of the bad field when there is one); an accepted body respects the
//! documented limits, and every produced record survives the store's
//! encode -> decode unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_gateway::http::codec::parse_produce;
use sluice_gateway::http::{parse_commit, parse_fetch, parse_service_update, ApiError};
use sluice_store::Record;

/// `http.max_wait` as the default configuration has it (30 s).
const MAX_WAIT_MS: u64 = 30_000;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else { return };
    match kind % 4 {
        0 => match parse_produce(body, 1_700_000_000_000) {
            Ok(records) => {
                assert!(!records.is_empty(), "an empty produce body was accepted");
                for r in &records {
                    assert_eq!(Record::decode(&r.encode()).as_ref(), Ok(r), "a produced record changed");
                }
            }
            Err(e) => check_error(&e, &["records"]),
        },
        1 => match parse_fetch(body, MAX_WAIT_MS) {
            Ok(req) => {
                assert!((1..=10_000).contains(&req.max_records), "max_records {}", req.max_records);
                assert!(req.wait_ms <= MAX_WAIT_MS, "wait_ms {}", req.wait_ms);
            }
            Err(e) => check_error(&e, &["max_records: ", "wait_ms: "]),
        },
        2 => match parse_commit(body) {
            Ok(entries) => assert!(!entries.is_empty(), "an empty commit was accepted"),
            Err(e) => check_error(&e, &["offsets: "]),
        },
        _ => match parse_service_update(body) {
            Ok(update) => {
                if let Some(w) = update.weight {
                    assert!((1..=1000).contains(&w), "weight {w} was accepted");
                }
            }
            Err(e) => check_error(&e, &["weight: "]),
        },
    }
});

/// A body error is a 400 that names its field: one of `fields`, or the
/// JSON error (which carries the path of the bad field when inside one).
fn check_error(e: &ApiError, fields: &[&str]) {
    assert_eq!(e.status().as_u16(), 400, "{e}");
    let m = e.message();
    assert!(
        m.starts_with("invalid JSON body") || fields.iter().any(|f| m.starts_with(f)),
        "error does not name its field: {m}"
    );
}
