//! Byte sizes written as humans write them: `"8MiB"`, `"100MB"`, `"10 kB"`,
//! `"1.5GiB"`, `"1000"` (bytes) or a TOML integer (bytes).
//!
//! Units are matched case-insensitively. Binary units (`KiB`, `MiB`, `GiB`,
//! `TiB`, `PiB`) are powers of 1024; decimal units (`kB`, `MB`, `GB`, `TB`,
//! `PB`) are powers of 1000; `B` (or no unit) is bytes. Single letters such
//! as `"8M"` are refused because they are ambiguous between the two. A
//! fraction is allowed when the result is a whole number of bytes
//! (`"1.5KiB"` = 1536, `"0.5B"` is an error).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::number::Decimal;

/// A number of bytes, parsed from and printed as a human size.
///
/// [`Display`](fmt::Display) prints the shortest exact form: the largest
/// binary unit that divides the value (`"8MiB"`), else the largest decimal
/// unit (`"100MB"`), else bytes (`"1001B"`). Printing then parsing gives the
/// same value back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Units from largest to smallest; `Display` picks the first exact one.
const BINARY_UNITS: [(&str, u64); 5] =
    [("PiB", 1 << 50), ("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
const DECIMAL_UNITS: [(&str, u64); 5] = [
    ("PB", 1_000_000_000_000_000),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("kB", 1_000),
];

impl ByteSize {
    /// `n` bytes.
    pub const fn b(n: u64) -> ByteSize {
        ByteSize(n)
    }
    /// `n` KiB (1024 bytes each).
    pub const fn kib(n: u64) -> ByteSize {
        ByteSize(n << 10)
    }
    /// `n` MiB.
    pub const fn mib(n: u64) -> ByteSize {
        ByteSize(n << 20)
    }
    /// `n` GiB.
    pub const fn gib(n: u64) -> ByteSize {
        ByteSize(n << 30)
    }
    /// The number of bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl From<u64> for ByteSize {
    fn from(n: u64) -> ByteSize {
        ByteSize(n)
    }
}

impl From<ByteSize> for u64 {
    fn from(s: ByteSize) -> u64 {
        s.0
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 {
            for (name, mult) in BINARY_UNITS.iter().chain(DECIMAL_UNITS.iter()) {
                if n % mult == 0 {
                    return write!(f, "{}{}", n / mult, name);
                }
            }
        }
        write!(f, "{n}B")
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        parse_size(s).map(ByteSize)
    }
}

/// Parses a human size such as `"8MiB"`, `"100MB"`, `"10 kB"` or `"1000"`
/// into a number of bytes. The error names the input and what is wrong.
pub fn parse_size(input: &str) -> Result<u64, String> {
    let fail = |why: &str| format!("invalid size {input:?}: {why}");
    let s = input.trim();
    if s.is_empty() {
        return Err(fail("empty; write e.g. \"8MiB\", \"100MB\" or \"4096\""));
    }
    if s.starts_with('-') {
        return Err(fail("a size cannot be negative"));
    }
    let (number, rest) = Decimal::split(s).map_err(|e| fail(&e))?;
    let unit = rest.trim_start();
    let mult = unit_multiplier(unit).ok_or_else(|| {
        fail(&format!("unknown unit {unit:?} (use B, kB, MB, GB, TB, PB, KiB, MiB, GiB, TiB or PiB)"))
    })?;
    let bytes = number.times(u128::from(mult)).ok_or_else(|| fail("not a whole number of bytes"))?;
    u64::try_from(bytes).map_err(|_| fail("too large (the maximum is 16EiB - 1)"))
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    if unit.is_empty() || unit.eq_ignore_ascii_case("b") {
        return Some(1);
    }
    BINARY_UNITS
        .iter()
        .chain(DECIMAL_UNITS.iter())
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, mult)| mult)
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size such as \"8MiB\", \"100MB\" or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom(format!("invalid size {v}: a size cannot be negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let cases = [
            ("8MiB", 8 << 20),
            ("2GiB", 2 << 30),
            ("100MB", 100_000_000),
            ("512KiB", 512 << 10),
            ("1000", 1000),
            ("10 kB", 10_000),
            ("10KB", 10_000),
            ("1kib", 1024),
            ("0", 0),
            ("7B", 7),
            (" 1.5KiB ", 1536),
            ("0.5MB", 500_000),
            ("16383PiB", 16383 << 50),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("-1MiB", "negative"),
            ("8M", "unknown unit \"M\""),
            ("8 parsecs", "unknown unit"),
            ("MiB", "expected a number"),
            ("0.5B", "whole number"),
            ("1.KiB", "digit after"),
            ("16384PiB", "too large"),
            ("99999999999999999999999999999999999999999", "too large"),
        ] {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(ByteSize::mib(8).to_string(), "8MiB");
        assert_eq!(ByteSize(100_000_000).to_string(), "100MB");
        assert_eq!(ByteSize(1000).to_string(), "1kB");
        assert_eq!(ByteSize(1001).to_string(), "1001B");
        assert_eq!(ByteSize(0).to_string(), "0B");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(u64::MAX).to_string(), format!("{}B", u64::MAX));
    }
}
