//! Unknown fields and schema errors: refused with the field name, its path
//! and the line.

use sluice_config::{Config, ConfigError};

/// The Toml error of `text`: (message, field path, line).
fn toml_error(text: &str) -> (String, Option<String>, Option<usize>, String) {
    match Config::from_toml_str(text) {
        Err(err @ ConfigError::Toml { .. }) => {
            let display = err.to_string();
            let ConfigError::Toml { message, field, line, .. } = err else { unreachable!("matched above") };
            (message, field, line, display)
        }
        Err(other) => panic!("expected a TOML error, got: {other}"),
        Ok(_) => panic!("config should be refused:\n{text}"),
    }
}

#[test]
fn unknown_field_in_a_service_names_field_path_and_line() {
    let text = "[[service]]\nname = \"alarms\"\n\n[[service]]\nname = \"logs\"\nwieght = 3\n";
    let (message, field, line, display) = toml_error(text);
    assert!(message.starts_with("unknown field `wieght`, expected one of `name`, `weight`"), "{message}");
    assert_eq!(field.as_deref(), Some("service[\"logs\"].wieght"));
    assert_eq!(line, Some(6));
    assert!(
        display.starts_with("invalid TOML: service[\"logs\"].wieght: unknown field `wieght`"),
        "{display}"
    );
    assert!(display.ends_with(" at line 6 column 1"), "{display}");
}

#[test]
fn unknown_fields_in_every_section() {
    for (text, path, name) in [
        ("colour = 1\n", "colour", "colour"),
        ("[nod]\nid = \"x\"\n", "nod", "nod"),
        ("[node]\nname = \"x\"\n", "node.name", "name"),
        ("[mqtt]\nport = 1883\n", "mqtt.port", "port"),
        ("[http]\nport = 8080\n", "http.port", "port"),
        ("[store]\nmax_size = 1\n", "store.max_size", "max_size"),
        ("[scheduler]\nquantum = 1\n", "scheduler.quantum", "quantum"),
        (
            "[[topic]]\nname = \"t\"\nretention = { max_ages = \"1d\" }\n",
            "topic[\"t\"].retention.max_ages",
            "max_ages",
        ),
        ("[[topic]]\nname = \"t\"\nreplicas = 3\n", "topic[\"t\"].replicas", "replicas"),
        ("[[route]]\nmqtt = \"a\"\ntopic = \"t\"\nqos = 1\n", "route[0].qos", "qos"),
        (
            "[[uplink]]\nname = \"u\"\nkind = \"kafka\"\nbrokers = [\"k:1\"]\nacks = \"all\"\n",
            "uplink[\"u\"].acks",
            "acks",
        ),
    ] {
        let (message, field, line, _) = toml_error(text);
        assert!(message.contains(&format!("unknown field `{name}`")), "{text}: {message}");
        assert_eq!(field.as_deref(), Some(path), "{text}");
        assert!(line.is_some(), "{text}");
    }
}

#[test]
fn missing_required_fields() {
    let (message, field, line, _) = toml_error("[[service]]\nname = \"a\"\n[[service]]\nweight = 2\n");
    assert_eq!(message, "missing field `name`");
    assert_eq!(field.as_deref(), Some("service[1]"));
    assert_eq!(line, Some(3));
    let (message, _, _, _) = toml_error("[[uplink]]\nname = \"u\"\nbrokers = [\"k:1\"]\n");
    assert_eq!(message, "missing field `kind`");
    let (message, _, _, _) = toml_error("[[route]]\nmqtt = \"a/b\"\n");
    assert_eq!(message, "missing field `topic`");
}

#[test]
fn wrong_types_and_bad_units_name_the_field() {
    for (text, path, part) in [
        (
            "[[service]]\nname = \"a\"\nweight = \"heavy\"\n",
            "service[\"a\"].weight",
            "invalid type: string \"heavy\"",
        ),
        (
            "[store]\nmax_bytes = \"2 gigs\"\n",
            "store.max_bytes",
            "invalid size \"2 gigs\": unknown unit \"gigs\"",
        ),
        ("[store]\nmax_bytes = -1\n", "store.max_bytes", "cannot be negative"),
        (
            "[store]\nflush_interval = 50\n",
            "store.flush_interval",
            "invalid duration 50: a number needs a unit",
        ),
        ("[store]\nflush_interval = \"50\"\n", "store.flush_interval", "missing unit"),
        ("[[service]]\nname = \"a\"\nttl = \"1 hour\"\n", "service[\"a\"].ttl", "unknown unit \"hour\""),
        (
            "[[service]]\nname = \"a\"\ndurability = \"fast\"\n",
            "service[\"a\"].durability",
            "unknown variant `fast`, expected `sync` or `buffered`",
        ),
        (
            "[[service]]\nname = \"a\"\non_full = \"block\"\n",
            "service[\"a\"].on_full",
            "expected `drop_newest` or `drop_oldest`",
        ),
        ("[scheduler]\nmode = \"wfq\"\n", "scheduler.mode", "unknown variant `wfq`"),
        ("[[uplink]]\nname = \"u\"\nkind = \"amqp\"\n", "uplink[\"u\"].kind", "unknown variant `amqp`"),
        (
            "[[uplink]]\nname = \"u\"\nkind = \"kafka\"\ncompression = \"brotli\"\n",
            "uplink[\"u\"].compression",
            "unknown variant `brotli`",
        ),
        ("[mqtt]\nlisten = \"localhost:1883\"\n", "mqtt.listen", "invalid socket address"),
        (
            "[[uplink]]\nname = \"u\"\nkind = \"kafka\"\nbrokers = \"k:1,k:2\"\n",
            "uplink[\"u\"].brokers",
            "expected a sequence",
        ),
    ] {
        let (message, field, line, display) = toml_error(text);
        assert!(message.contains(part), "{text}: {message}");
        assert_eq!(field.as_deref(), Some(path), "{text}: {display}");
        assert!(line.is_some(), "{text}");
    }
}

#[test]
fn syntax_errors_keep_the_position() {
    let (message, field, line, display) = toml_error("[store]\nmax_bytes = \"1GiB\n");
    assert!(!message.is_empty());
    assert_eq!(line, Some(2), "{display}");
    // A one-line message, even when the parser's spans several lines.
    assert!(!display.contains('\n'), "{display}");
    let _ = field;
}
