//! Durations written as humans write them: `"2ms"`, `"1.5s"`, `"100us"`,
//! `"5m"`, `"1h30m"`, `"7d"`.
//!
//! Units (case-sensitive): `ns`, `us` (or `µs`/`μs`), `ms`, `s`, `m` or `min`,
//! `h`, `d`. Several parts add up (`"1h 30m"`), a part may have a fraction
//! if the result is a whole number of nanoseconds.
//!
//! A bare number is refused, whether a string (`"30"`) or a TOML integer
//! (`30`): seconds-versus-milliseconds mix-ups are a classic configuration
//! bug, so the unit is always written. The one exception is zero (`0` or
//! `"0"`), which means the same in every unit.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use crate::number::Decimal;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Units for parsing, as (name, nanoseconds).
const UNITS: [(&str, u128); 10] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000), // U+00B5 MICRO SIGN
    ("μs", 1_000), // U+03BC GREEK SMALL LETTER MU
    ("ms", 1_000_000),
    ("s", NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("min", 60 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("d", 86_400 * NANOS_PER_SEC),
];

/// Units for printing, largest first.
const PRINT_UNITS: [(&str, u128); 7] = [
    ("d", 86_400 * NANOS_PER_SEC),
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses a human duration such as `"50ms"`, `"1.5s"` or `"1h30m"`.
/// The error names the input and what is wrong.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let fail = |why: &str| format!("invalid duration {input:?}: {why}");
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(fail("empty; write e.g. \"50ms\", \"30s\" or \"1h\""));
    }
    if rest.starts_with('-') {
        return Err(fail("a duration cannot be negative"));
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (number, after) = Decimal::split(rest).map_err(|e| fail(&e))?;
        let after = after.trim_start();
        let unit_len =
            after.char_indices().find(|&(_, c)| !(c.is_alphabetic())).map_or(after.len(), |(i, _)| i);
        let unit = &after[..unit_len];
        if unit.is_empty() {
            if total == 0 && after.is_empty() && number.times(1) == Some(0) {
                return Ok(Duration::ZERO);
            }
            return Err(fail("missing unit; write e.g. \"30s\" or \"30ms\" (units: ns, us, ms, s, m, h, d)"));
        }
        let nanos_per_unit = UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, n)| n)
            .ok_or_else(|| fail(&format!("unknown unit {unit:?} (use ns, us, ms, s, m, h or d)")))?;
        let nanos = number.times(nanos_per_unit).ok_or_else(|| fail("finer than one nanosecond"))?;
        total = total.saturating_add(nanos);
        rest = after[unit_len..].trim_start();
    }
    duration_from_nanos(total).ok_or_else(|| fail("too large"))
}

fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    // The remainder is below 10^9, so it fits in u32.
    let sub = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, sub))
}

/// Prints a duration in the form [`parse_duration`] reads back exactly:
/// each non-zero part from days down to nanoseconds, e.g. `"1h30m"`,
/// `"2ms"`, `"1s500ms"`; zero prints as `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let mut left = d.as_nanos();
    if left == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, nanos) in PRINT_UNITS {
        let count = left / nanos;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            left %= nanos;
        }
    }
    out
}

/// `deserialize_with` target for `Duration` fields.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

/// `deserialize_with` target for `Option<Duration>` fields (used together
/// with `#[serde(default)]`, so an absent field is `None`).
pub(crate) fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor).map(Some)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, such as \"50ms\", \"30s\" or \"1h\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        if v == 0 {
            return Ok(Duration::ZERO);
        }
        Err(E::custom(format!(
            "invalid duration {v}: a number needs a unit; write e.g. \"{v}s\" or \"{v}ms\""
        )))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        i64::try_from(v)
            .map_err(|_| E::custom(format!("invalid duration {v}: too large")))
            .and_then(|v| self.visit_i64(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("2ms", ms(2)),
            ("50ms", ms(50)),
            ("1h", Duration::from_secs(3600)),
            ("7d", Duration::from_secs(7 * 86_400)),
            ("1.5s", ms(1500)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("5min", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1 s", ms(1000)),
            ("0.1s", ms(100)),
            ("0", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("3ns", Duration::from_nanos(3)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_durations_with_a_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("30", "missing unit"),
            ("1h30", "missing unit"),
            ("-5s", "negative"),
            ("5 sec", "unknown unit \"sec\""),
            ("5S", "unknown unit"),
            ("0.5ns", "finer than one nanosecond"),
            ("ms", "expected a number"),
            ("999999999999999d", "too large"),
        ] {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn formats_in_parts() {
        assert_eq!(format_duration(ms(2)), "2ms");
        assert_eq!(format_duration(ms(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        let max = format_duration(Duration::MAX);
        assert_eq!(parse_duration(&max), Ok(Duration::MAX));
    }
}
