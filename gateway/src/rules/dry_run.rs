//! `sluice rule test RULE --input FILE.jsonl`: runs one rule of a
//! configuration over records from a file, without a node, and shows what
//! it emits.

use super::engine::{Counts, Engine, RuleState};
use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;
use sluice_config::Config;
use sluice_store::Record;
use std::collections::BTreeMap;

/// One input line: `{"value": ..., "key": "k", "headers": {...},
/// "timestamp": ms}`; only `value` is required.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    value: Value,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    timestamp: Option<i64>,
}

/// What a dry run produced: one JSON object per output record (`topic`,
/// `key`, `value`, `timestamp`, `headers`), and the counters.
#[derive(Debug)]
pub struct DryRun {
    /// Output records in order.
    pub outputs: Vec<Value>,
    /// Counters over the whole input.
    pub counts: Counts,
}

/// Runs rule `name` of `config` over `input` (JSON lines). Records without
/// a timestamp get the previous one (the first: 0). At the end every open
/// window closes, as when the inputs go idle.
pub fn run(config: &Config, name: &str, input: &str) -> anyhow::Result<DryRun> {
    let programs = super::compile(config)?;
    let Some(prog) = programs.into_iter().find(|p| p.name == name) else {
        let names: Vec<&str> = config.rules.iter().map(|r| r.name.as_str()).collect();
        anyhow::bail!("no rule {name:?} in the configuration (rules: {})", names.join(", "));
    };
    let mut engine = Engine::new(prog.clone(), RuleState::default());
    let (mut out, mut counts) = (Vec::new(), Counts::default());
    let mut last_ts = 0;
    for (i, text) in input.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(text).with_context(|| {
            format!("line {}: not a record like {{\"value\": ..., \"key\": \"k\"}}", i + 1)
        })?;
        last_ts = line.timestamp.unwrap_or(last_ts);
        let rec = Record {
            key: line.key.map(String::into_bytes),
            value: serde_json::to_vec(&line.value)?,
            headers: line.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect(),
            timestamp_ms: last_ts,
        };
        engine.process(&rec, "input/0", 0, &mut out, &mut counts);
        engine.advance(&[], &mut out, &mut counts);
    }
    engine.tick(i64::MAX / 4, &mut out, &mut counts);
    let outputs = out
        .into_iter()
        .map(|(topic, r)| {
            let value = serde_json::from_slice::<Value>(&r.value)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&r.value).into_owned()));
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(String::from_utf8_lossy(v).into_owned())))
                .collect();
            serde_json::json!({
                "topic": prog.topics[topic],
                "key": r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                "value": value,
                "timestamp": r.timestamp_ms,
                "headers": headers,
            })
        })
        .collect();
    Ok(DryRun { outputs, counts })
}
