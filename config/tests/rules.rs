//! `[[rule]]`: defaults and the structural checks (the expressions are
//! compiled, and their errors reported, by the gateway).

use sluice_config::{Config, OnError, WindowKind};
use std::time::Duration;

fn problems(toml: &str) -> Vec<String> {
    match Config::from_toml_str(toml) {
        Ok(_) => Vec::new(),
        Err(e) => e.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_rule_with_its_defaults() {
    let cfg = Config::from_toml_str(
        "[[rule]]\nname = \"r\"\ninputs = [\"a\"]\noutput = \"b\"\n[rule.window]\nsize = \"1m\"\naggregates = { n = \"count()\" }\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let r = &cfg.rules[0];
    assert_eq!((r.max_keys, r.batch, r.on_error), (10_000, 10_000, OnError::Skip));
    let w = r.window.as_ref().expect("window");
    assert_eq!(
        (w.kind, w.size, w.lateness, w.hop, w.idle_timeout),
        (WindowKind::Tumbling, Some(Duration::from_secs(60)), Duration::ZERO, None, None)
    );
}

#[test]
fn structural_problems_name_the_rule_and_field() {
    let got = problems(
        r#"
[store]
auto_create_topics = false
[[topic]]
name = "a"
[[topic]]
name = "b"
[[rule]]
name = "r"
inputs = []
output = "a"
routes = [{ when = "true", topic = "nowhere" }]
side_topic = "a"
max_keys = 0
deadband = { value = "value.t", absolute = -1 }
[[rule]]
name = "r"
inputs = ["a"]
output = "a"
[rule.window]
kind = "hopping"
size = "1m"
hop = "7s"
aggregates = {}
[[rule]]
name = "c"
inputs = ["a"]
output = "b"
window = { kind = "count", size = "1m", aggregates = { n = "count()" } }
[[rule]]
name = "t"
inputs = ["a"]
output = "b"
window = { count = 5, aggregates = { n = "count()" } }
"#,
    );
    let want = [
        "rule[1].name: \"r\" is defined twice (also rule[0])",
        "rule[0].inputs: is empty",
        "rule[0].routes[0].topic: topic \"nowhere\" is not defined and store.auto_create_topics is false",
        "rule[0].side_topic: is set but nothing goes there",
        "rule[0].max_keys: 0 is out of range",
        "rule[0].deadband.absolute: must be a finite number >= 0",
        "rule[1].output: \"a\" is also an input of the rule",
        "rule[1].window.hop: 7s must be more than 0, at most size and divide size (1m)",
        "rule[1].window.aggregates: is empty",
        "rule[\"c\"].window.size: a count window closes after `count` records; remove size",
        "rule[\"c\"].window.count: is missing: a count window needs count",
        "rule[\"t\"].window.size: is missing: a tumbling window needs size",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.contains(w)), "{w:?} not in {got:#?}");
    }
}

#[test]
fn unknown_rule_fields_are_refused_with_their_path() {
    let err = Config::from_toml_str(
        "[[rule]]\nname = \"r\"\ninputs = [\"a\"]\noutput = \"b\"\nfliter = \"true\"\n",
    )
    .expect_err("typo");
    let msg = err.to_string();
    assert!(msg.contains("unknown field `fliter`"), "{msg}");
    assert!(msg.contains("line 5"), "{msg}");
}
