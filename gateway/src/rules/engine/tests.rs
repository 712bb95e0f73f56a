#![allow(clippy::unwrap_used)]

use super::*;
use crate::rules::program::compile_all;
use serde_json::json;

fn engine(rule: &str) -> Engine {
    let cfg = sluice_config::Config::from_toml_str(rule).unwrap();
    let prog = compile_all(&cfg).unwrap().remove(0);
    Engine::new(prog, RuleState::default())
}

fn rec(key: &str, v: Value, t: i64) -> Record {
    Record { key: Some(key.into()), value: serde_json::to_vec(&v).unwrap(), headers: vec![], timestamp_ms: t }
}

fn run(e: &mut Engine, recs: &[Record]) -> (Vec<(usize, Option<String>, Value)>, Counts) {
    let (mut out, mut counts) = (Vec::new(), Counts::default());
    for r in recs {
        e.process(r, "t/0", 0, &mut out, &mut counts);
        e.advance(&[], &mut out, &mut counts);
    }
    let out = out
        .into_iter()
        .map(|(t, r)| {
            let key = r.key.map(|k| String::from_utf8(k).unwrap());
            (t, key, serde_json::from_slice(&r.value).unwrap_or(Value::Null))
        })
        .collect();
    (out, counts)
}

#[test]
fn filter_project_rekey_and_route() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "hot"
        inputs = ["t"]
        output = "hot"
        filter = "value.temp > 30"
        key = "value.site"
        project = { device = "key", c = "value.temp", f = "value.temp * 9 / 5 + 32" }
        routes = [{ when = "value.c >= 50", topic = "fire" }]
        "#,
    );
    let (out, counts) = run(
        &mut e,
        &[
            rec("d1", json!({"temp": 20, "site": "a"}), 1),
            rec("d2", json!({"temp": 35, "site": "b"}), 2),
            rec("d3", json!({"temp": 50, "site": "c"}), 3),
        ],
    );
    assert_eq!(
        out,
        vec![
            (0, Some("b".into()), json!({"device": "d2", "c": 35, "f": 95})),
            (1, Some("c".into()), json!({"device": "d3", "c": 50, "f": 122})),
        ]
    );
    assert_eq!((counts.records_in, counts.records_out, counts.filtered), (3, 2, 1));
    assert_eq!(e.program().topics, ["hot", "fire"]);
}

#[test]
fn deadband_absolute_relative_and_heartbeat() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "db"
        inputs = ["t"]
        output = "out"
        [rule.deadband]
        value = "value.t"
        absolute = 0.5
        heartbeat = "10s"
        "#,
    );
    let readings =
        [(20.0, 0), (20.2, 1000), (20.4, 2000), (20.6, 3000), (20.7, 4000), (20.8, 13_000), (20.0, 14_000)];
    let recs: Vec<Record> = readings.iter().map(|(v, t)| rec("k", json!({"t": v}), *t)).collect();
    let (out, counts) = run(&mut e, &recs);
    let emitted: Vec<Value> = out.into_iter().map(|(_, _, v)| v["t"].clone()).collect();
    // 20.6 moved 0.6 from 20.0; 20.8 is a heartbeat (10 s after 20.6);
    // 20.0 moved 0.8 from 20.8.
    assert_eq!(emitted, [json!(20.0), json!(20.6), json!(20.8), json!(20.0)]);
    assert_eq!(counts.suppressed, 3);
    assert!(counts.bytes_saved > 0);
    // Keys are independent.
    let (out, _) = run(&mut e, &[rec("other", json!({"t": 20.0}), 15_000)]);
    assert_eq!(out.len(), 1);
}

#[test]
fn tumbling_window_survives_a_restart_of_its_state() {
    let rule = r#"
        [[rule]]
        name = "avg"
        inputs = ["t"]
        output = "out"
        time = "value.ts"
        [rule.window]
        size = "1m"
        lateness = "5s"
        aggregates = { n = "count()", avg = "avg(value.t)", hi = "max(value.t)", last = "last(value.t)" }
        "#;
    let mut e = engine(rule);
    let (out, _) =
        run(&mut e, &[rec("a", json!({"t": 1, "ts": 1000}), 0), rec("b", json!({"t": 5, "ts": 2000}), 0)]);
    assert!(out.is_empty());
    // The state goes through a commit and comes back.
    let state: RuleState = serde_json::from_slice(&serde_json::to_vec(&e.state).unwrap()).unwrap();
    let mut e2 = engine(rule);
    e2.state = state;
    let recs = [
        rec("a", json!({"t": 3, "ts": 50_000}), 0),
        rec("a", json!({"t": 9, "ts": 64_000}), 0), // closes nothing yet (lateness)
        rec("a", json!({"t": 2, "ts": 59_000}), 0), // within lateness: counted
        rec("b", json!({"t": 7, "ts": 66_000}), 0), // closes [0, 60s)
        rec("b", json!({"t": 1, "ts": 10_000}), 0), // late
    ];
    let (out, counts) = run(&mut e2, &recs);
    assert_eq!(counts.late, 1);
    let got: Vec<Value> = out.into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(
        got,
        [
            json!({"key": "a", "start": 0, "end": 60_000, "n": 3, "avg": 2, "hi": 3, "last": 2}),
            json!({"key": "b", "start": 0, "end": 60_000, "n": 1, "avg": 5, "hi": 5, "last": 5}),
        ]
    );
    // Idle inputs: the wall clock closes the rest.
    let (mut out, mut counts) = (Vec::new(), Counts::default());
    e2.tick(1_000_000, &mut out, &mut counts);
    e2.tick(1_000_000 + 60_000, &mut out, &mut counts);
    assert_eq!(out.len(), 2);
}

#[test]
fn failing_expressions_are_counted_and_go_to_the_side_topic() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "x"
        inputs = ["t"]
        output = "out"
        filter = "value.temp > 30"
        on_error = "side_topic"
        side_topic = "bad"
        "#,
    );
    let (mut out, mut counts) = (Vec::new(), Counts::default());
    for r in [rec("k", json!({"hum": 1}), 0), rec("k", json!("text"), 0), rec("k", json!({"temp": 31}), 0)] {
        e.process(&r, "t/0", 0, &mut out, &mut counts);
    }
    assert_eq!((counts.errors, counts.records_out), (2, 1));
    assert_eq!(out.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 1, 0]);
    let header = &out[0].1.headers[0];
    assert_eq!(header.0, ERROR_HEADER);
    let msg = String::from_utf8(header.1.clone()).unwrap();
    assert!(msg.contains("rule \"x\" filter: column 1: value.temp is missing"), "{msg}");
}

#[test]
fn max_keys_bounds_window_state() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "w"
        inputs = ["t"]
        output = "out"
        max_keys = 2
        [rule.window]
        size = "1m"
        aggregates = { n = "count()" }
        "#,
    );
    let recs: Vec<Record> = ["a", "b", "c", "a"].iter().map(|k| rec(k, json!({}), 1000)).collect();
    let (_, counts) = run(&mut e, &recs);
    assert_eq!(counts.state_full, 1);
    assert_eq!(e.state_keys(), 2);
}

#[test]
fn relative_deadband_and_hopping_windows() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "rel"
        inputs = ["t"]
        output = "out"
        deadband = { value = "value.p", relative = 0.1 }
        "#,
    );
    let recs: Vec<Record> =
        [100.0, 109.0, 111.0, 121.0, 123.0, 0.0].iter().map(|p| rec("k", json!({"p": p}), 0)).collect();
    let (out, _) = run(&mut e, &recs);
    let got: Vec<Value> = out.into_iter().map(|(_, _, v)| v["p"].clone()).collect();
    // 111 moved 11% from 100; 123 moved 10.8% from 111; 0 moved 100%.
    assert_eq!(got, [json!(100.0), json!(111.0), json!(123.0), json!(0.0)]);

    let mut e = engine(
        r#"
        [[rule]]
        name = "hop"
        inputs = ["t"]
        output = "out"
        time = "value.ts"
        [rule.window]
        kind = "hopping"
        size = "1m"
        hop = "30s"
        aggregates = { n = "count()" }
        "#,
    );
    let recs: Vec<Record> =
        [10_000, 40_000, 70_000, 200_000].iter().map(|ts| rec("k", json!({"ts": ts}), 0)).collect();
    let (out, _) = run(&mut e, &recs);
    let got: Vec<(i64, i64)> =
        out.iter().map(|(_, _, v)| (v["start"].as_i64().unwrap(), v["n"].as_i64().unwrap())).collect();
    // Windows [-30 s, 30 s), [0, 60 s), [30 s, 90 s), [60 s, 120 s).
    assert_eq!(got, [(-30_000, 1), (0, 2), (30_000, 2), (60_000, 1)]);
}

#[test]
fn session_windows_through_the_engine() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "s"
        inputs = ["t"]
        output = "out"
        time = "value.ts"
        [rule.window]
        kind = "session"
        gap = "30s"
        aggregates = { n = "count()", hi = "max(value.v)" }
        "#,
    );
    let recs: Vec<Record> = [(0, 1), (20_000, 5), (45_000, 2), (200_000, 9), (10_000, 7)]
        .iter()
        .map(|(ts, v)| rec("k", json!({"ts": ts, "v": v}), 0))
        .collect();
    let (out, counts) = run(&mut e, &recs);
    let got: Vec<Value> = out.into_iter().map(|(_, _, v)| v).collect();
    // 200 s starts a new session and ends the first; 10 s is then late.
    assert_eq!(got, [json!({"key": "k", "start": 0, "end": 75_000, "n": 3, "hi": 5})]);
    assert_eq!(counts.late, 1);
    assert_eq!(e.open_windows(), 1);
}

#[test]
fn windows_open_when_input_was_lost_say_they_are_incomplete() {
    let mut e = engine(
        r#"
        [[rule]]
        name = "w"
        inputs = ["t"]
        output = "out"
        time = "value.ts"
        [rule.window]
        size = "1m"
        aggregates = { n = "count()" }
        "#,
    );
    run(&mut e, &[rec("a", json!({"ts": 1000}), 0)]);
    e.input_lost();
    let (out, _) = run(&mut e, &[rec("a", json!({"ts": 61_000}), 0), rec("a", json!({"ts": 130_000}), 0)]);
    let got: Vec<Value> = out.into_iter().map(|(_, _, v)| v).collect();
    assert_eq!(
        got,
        [
            json!({"key": "a", "start": 0, "end": 60_000, "n": 1, "incomplete": true}),
            json!({"key": "a", "start": 60_000, "end": 120_000, "n": 1}),
        ]
    );
    assert!(e.state.incomplete.is_empty());
}
