//! Syntax rules for the strings in a configuration: topic and service
//! names, MQTT topic filters, route keys, broker addresses and the
//! `remote_topic` template. Each check returns a message that says what is
//! wrong without repeating the input; callers put the field and value
//! in front.

use std::fmt;

/// Longest topic name Kafka accepts, and so the longest sluice accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// Checks a topic name by Kafka's rule: 1..=249 characters of
/// `[A-Za-z0-9._-]`, and not `.` or `..`. Service, uplink and node names
/// follow the same rule. The message names the offending character and its
/// position (counted from 1), or the length.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty; use 1 to 249 characters of A-Z a-z 0-9 . _ -".to_owned());
    }
    if let Some((i, c)) =
        name.chars().enumerate().find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("contains {c:?} at character {}; only A-Z a-z 0-9 . _ - are allowed", i + 1));
    }
    // Only ASCII is left, so the byte length is the character count.
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!("is {} characters long; at most {MAX_TOPIC_NAME_LEN} are allowed", name.len()));
    }
    if name == "." || name == ".." {
        return Err("cannot be \".\" or \"..\"".to_owned());
    }
    Ok(())
}

/// Checks MQTT topic filter syntax: not empty, at most 65535 bytes, no NUL;
/// `#` only as the whole last level, `+` only as a whole level.
pub fn check_mqtt_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("is empty; write a topic filter such as \"plant/+/alarm\"".to_owned());
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err(format!("is {} bytes long; MQTT allows 65535", filter.len()));
    }
    if filter.contains('\0') {
        return Err("contains a NUL character, which MQTT forbids".to_owned());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let n = i + 1;
        if level.contains('#') && (*level != "#" || n != levels.len()) {
            return Err(format!("has '#' in level {n} ({level:?}); '#' may only be the whole last level"));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("has '+' in level {n} ({level:?}); '+' must be a whole level"));
        }
    }
    Ok(())
}

/// Whether the MQTT topic name `topic` matches the (valid) filter `filter`.
/// As the MQTT spec says, wildcards in the first level do not match topics
/// starting with `$`.
pub fn mqtt_filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match (f, topic_levels.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether some topic matches both MQTT filters `a` and `b` (`$share/`
/// prefixes already taken off).
pub fn mqtt_filters_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('/'), b.split('/'));
    loop {
        match (a.next(), b.next()) {
            // `x/#` also matches `x`.
            (Some("#"), _) | (_, Some("#")) | (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) if x == "+" || y == "+" || x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod covers_tests {
    use super::{mqtt_filter_covers as covers, mqtt_filter_matches, mqtt_filters_overlap};

    #[test]
    fn filters_overlap_when_one_topic_matches_both() {
        for (a, b, want) in [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/#", "a", true),
            ("a", "a/#", true),
            ("#", "x/y/z", true),
            ("+/b", "a/+", true),
            ("a/b", "a/c", false),
            ("a", "a/b", false),
            ("a/+", "a", false),
            ("+/+", "a/b/c", false),
            ("a/+/c", "a/#", true),
        ] {
            assert_eq!(mqtt_filters_overlap(a, b), want, "{a} and {b}");
            assert_eq!(mqtt_filters_overlap(b, a), want, "{b} and {a}");
        }
    }

    #[test]
    fn a_subscription_is_covered_only_if_all_it_matches_is_allowed() {
        for (allowed, filter, want) in [
            ("#", "a/b", true),
            ("#", "#", true),
            ("#", "$SYS/x", false),
            ("a/#", "a", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a/#", true),
            ("a/#", "#", false),
            ("a/#", "b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/+", "a/b/c", false),
            ("a/+", "a", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("+/b", "x/b", true),
            ("+/b", "$x/b", false),
            ("$SYS/#", "$SYS/broker", true),
        ] {
            assert_eq!(covers(allowed, filter), want, "{allowed} covers {filter}");
        }
    }

    #[test]
    fn covering_agrees_with_matching_on_topics() {
        // A covered literal filter is exactly a matched topic.
        for allowed in ["#", "a/#", "a/+", "+/b", "a/b", "+"] {
            for topic in ["a", "a/b", "a/b/c", "x/b", "b"] {
                assert_eq!(
                    covers(allowed, topic),
                    mqtt_filter_matches(allowed, topic),
                    "{allowed} / {topic}"
                );
            }
        }
    }
}

/// Whether every topic the subscription `filter` can match is also matched
/// by `allowed` (both valid filters): a subscription is granted only
/// within a user's subscribe filters, wildcards included.
pub fn mqtt_filter_covers(allowed: &str, filter: &str) -> bool {
    // Wildcards at the first level do not match `$` topics.
    if filter.starts_with('$') && allowed.starts_with(['+', '#']) {
        return false;
    }
    let mut granted = allowed.split('/');
    for f in filter.split('/') {
        match (granted.next(), f) {
            (Some("#"), _) => return true,
            (None, _) | (Some(_), "#") => return false,
            (Some("+"), _) => {}
            (Some(g), f) if g == f => {}
            _ => return false,
        }
    }
    // "a/#" also matches "a" itself.
    matches!(granted.next(), None | Some("#")) && granted.next().is_none()
}

/// Where a route takes the record key from, parsed from `route.key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// `"level:N"`: the N-th level of the MQTT topic, counted from 1, so
    /// `level:2` of `plant/dev-7/alarm` is `dev-7`.
    Level(usize),
    /// `"json:/a/b"`: the value at this RFC 6901 pointer in a JSON payload
    /// (the pointer text, as `serde_json::Value::pointer` takes it).
    JsonPointer(String),
}

impl RouteKey {
    /// Parses `"level:N"` (N >= 1) or `"json:/pointer"`.
    pub fn parse(spec: &str) -> Result<RouteKey, String> {
        if let Some(n) = spec.strip_prefix("level:") {
            return match n.parse::<usize>() {
                Ok(0) => Err("levels are counted from 1; \"level:0\" does not exist".to_owned()),
                Ok(n) => Ok(RouteKey::Level(n)),
                Err(_) => Err(format!("{n:?} is not a level number; write e.g. \"level:2\"")),
            };
        }
        if let Some(pointer) = spec.strip_prefix("json:") {
            check_json_pointer(pointer)?;
            return Ok(RouteKey::JsonPointer(pointer.to_owned()));
        }
        Err("must be \"level:N\" (MQTT topic level, from 1) or \"json:/pointer\"".to_owned())
    }

    /// For [`RouteKey::Level`], the level of an MQTT topic name, if the
    /// topic has that many levels.
    pub fn topic_level<'t>(&self, topic: &'t str) -> Option<&'t str> {
        match self {
            RouteKey::Level(n) => topic.split('/').nth(n.checked_sub(1)?),
            RouteKey::JsonPointer(_) => None,
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteKey::Level(n) => write!(f, "level:{n}"),
            RouteKey::JsonPointer(p) => write!(f, "json:{p}"),
        }
    }
}

fn check_json_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.starts_with('/') {
        return Err(format!("JSON pointer {pointer:?} must start with '/', e.g. \"json:/device/id\""));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "JSON pointer {pointer:?}: '~' must be followed by 0 or 1 (\"~0\" is '~', \"~1\" is '/')"
            ));
        }
    }
    Ok(())
}

/// Checks a `host:port` broker address (IPv6 hosts in brackets).
pub(crate) fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.contains("://") {
        return Err("must be host:port without a scheme, e.g. \"central-1:9092\"".to_owned());
    }
    if addr.contains(',') || addr.chars().any(char::is_whitespace) {
        return Err("holds several addresses or spaces; write one host:port per list entry".to_owned());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err("has no port; write host:port, e.g. \"central-1:9092\"".to_owned());
    };
    if host.is_empty() {
        return Err("has no host; write host:port, e.g. \"central-1:9092\"".to_owned());
    }
    let bracketed_ipv6 = host.starts_with('[') && host.ends_with(']');
    let host_name = host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !bracketed_ipv6 && !host_name {
        return Err(format!(
            "host {host:?} is not a host name or IP address (IPv6 goes in brackets: \"[::1]:9092\")"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("port {port:?} is not a number in 1..=65535")),
    }
}

/// Checks an `http://` or `https://` URL with a host.
pub(crate) fn check_http_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "must be an http:// or https:// URL".to_owned())?;
    if rest.chars().any(char::is_whitespace) {
        return Err("contains whitespace".to_owned());
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".to_owned());
    }
    Ok(())
}

/// The placeholders a `remote_topic` template may use.
pub(crate) const PLACEHOLDERS: [&str; 3] = ["node", "topic", "service"];

/// Checks that every `{...}` in a template is a known placeholder and
/// braces are balanced.
pub(crate) fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("has a '}' without a matching '{'".to_owned());
        }
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| "has a '{' without a matching '}'".to_owned())?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "has unknown placeholder {{{name}}}; use {{node}}, {{topic}} or {{service}}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Replaces `{node}`, `{topic}` and `{service}` in a template.
pub(crate) fn render_template(template: &str, node: &str, topic: &str, service: &str) -> String {
    template.replace("{node}", node).replace("{topic}", topic).replace("{service}", service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka() {
        assert!(check_topic_name("telemetry.v2_raw-1").is_ok());
        assert!(check_topic_name(&"a".repeat(249)).is_ok());
        let long = check_topic_name(&"a".repeat(250)).expect_err("too long");
        assert!(long.contains("250 characters"), "{long}");
        let bad = check_topic_name("a/b").expect_err("slash");
        assert!(bad.contains("'/' at character 2"), "{bad}");
        assert!(check_topic_name("").expect_err("empty").contains("empty"));
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name("é").expect_err("unicode").contains("'é'"));
    }

    #[test]
    fn mqtt_filters() {
        for ok in ["a", "#", "+", "a/+/b", "a/#", "+/+", "/a", "a//b", "$SYS/#"] {
            assert!(check_mqtt_filter(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a/#/b", "'#' in level 2"),
            ("a#", "'#' in level 1"),
            ("a/b+", "'+' in level 2 (\"b+\"); '+' must be a whole level"),
            ("a\0", "NUL"),
        ] {
            let err = check_mqtt_filter(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn filter_matching() {
        assert!(mqtt_filter_matches("plant/+/alarm", "plant/dev-1/alarm"));
        assert!(!mqtt_filter_matches("plant/+/alarm", "plant/dev-1/alarm/x"));
        assert!(!mqtt_filter_matches("plant/+/alarm", "plant/alarm"));
        assert!(mqtt_filter_matches("plant/#", "plant"));
        assert!(mqtt_filter_matches("plant/#", "plant/a/b"));
        assert!(mqtt_filter_matches("#", "a/b"));
        assert!(!mqtt_filter_matches("#", "$SYS/uptime"));
        assert!(mqtt_filter_matches("$SYS/#", "$SYS/uptime"));
        assert!(mqtt_filter_matches("a//b", "a//b"));
        assert!(!mqtt_filter_matches("a/b", "a/c"));
    }

    #[test]
    fn route_keys() {
        assert_eq!(RouteKey::parse("level:2"), Ok(RouteKey::Level(2)));
        assert_eq!(RouteKey::parse("json:/dev/id"), Ok(RouteKey::JsonPointer("/dev/id".to_owned())));
        assert!(RouteKey::parse("level:0").is_err());
        assert!(RouteKey::parse("level:x").is_err());
        assert!(RouteKey::parse("json:dev").is_err());
        assert!(RouteKey::parse("json:/a~2").is_err());
        assert!(RouteKey::parse("json:/a~1b~0").is_ok());
        assert!(RouteKey::parse("header:x").is_err());
        let key = RouteKey::Level(2);
        assert_eq!(key.topic_level("plant/dev-7/alarm"), Some("dev-7"));
        assert_eq!(key.topic_level("plant"), None);
        assert_eq!(key.to_string(), "level:2");
    }

    #[test]
    fn brokers_and_templates() {
        assert!(check_host_port("kafka-1:9092").is_ok());
        assert!(check_host_port("[::1]:9092").is_ok());
        assert!(check_host_port("kafka-1").is_err());
        assert!(check_host_port("kafka-1:0").is_err());
        assert!(check_host_port("tcp://kafka-1:9092").is_err());
        assert!(check_host_port("a:1, b:2").is_err());
        assert!(check_host_port("a:1,b:2").is_err());
        assert!(check_host_port("::1:9092").is_err());
        assert!(check_http_url("https://central.example/ingest").is_ok());
        assert!(check_http_url("ftp://x").is_err());
        assert!(check_http_url("http://").is_err());
        assert!(check_template("edge.{node}.{topic}").is_ok());
        assert!(check_template("edge.{nodes}").is_err());
        assert!(check_template("edge.{node").is_err());
        assert!(check_template("edge.node}").is_err());
        assert_eq!(render_template("edge.{node}.{service}.{topic}", "pi", "t", "s"), "edge.pi.s.t");
    }
}
