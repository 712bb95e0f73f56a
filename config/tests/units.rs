//! Human sizes and durations: documented forms, and property round-trips of
//! format then parse. Also: no input makes the loader panic.

use std::str::FromStr;
use std::time::Duration;

use proptest::prelude::*;
use sluice_config::{format_duration, parse_duration, parse_size, ByteSize, Config};

#[test]
fn sizes_as_documented() {
    for (text, bytes) in [
        ("8MiB", 8 << 20),
        ("2GiB", 2 << 30),
        ("100MB", 100_000_000),
        ("512KiB", 512 << 10),
        ("1000", 1000),
        ("10 kB", 10_000),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
        assert_eq!(ByteSize::from_str(text), Ok(ByteSize(bytes)), "{text}");
    }
    assert_eq!(ByteSize::mib(8).to_string(), "8MiB");
    assert_eq!(ByteSize(8 << 20).as_u64(), 8 << 20);
}

#[test]
fn durations_as_documented() {
    for (text, d) in [
        ("2ms", Duration::from_millis(2)),
        ("50ms", Duration::from_millis(50)),
        ("1h", Duration::from_secs(3600)),
        ("7d", Duration::from_secs(604_800)),
        ("1.5s", Duration::from_millis(1500)),
        ("100us", Duration::from_micros(100)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
    ] {
        assert_eq!(parse_duration(text), Ok(d), "{text}");
    }
    assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
}

#[test]
fn sizes_in_toml_as_integer_or_string() {
    let cfg = Config::from_toml_str("[store]\nmax_bytes = 2147483648\ncache_capacity = \"8 mib\"\n")
        .expect("valid");
    assert_eq!(cfg.store.max_bytes, ByteSize::gib(2));
    assert_eq!(cfg.store.cache_capacity, ByteSize::mib(8));
}

#[test]
fn durations_in_toml_need_a_unit_except_zero() {
    let cfg = Config::from_toml_str("[store]\nsync_window = 0\n").expect("zero is unit-free");
    assert_eq!(cfg.store.sync_window, Duration::ZERO);
    assert!(Config::from_toml_str("[store]\nsync_window = 2\n").is_err());
    assert!(Config::from_toml_str("[store]\nsync_window = 2.5\n").is_err());
}

const SIZE_UNITS: [(&str, u64); 12] = [
    ("", 1),
    ("B", 1),
    ("kB", 1000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("kib", 1 << 10),
    ("gb", 1_000_000_000),
];

const DURATION_UNITS: [(&str, u64); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("min", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

fn any_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        // Small values with every kind of sub-second part.
        (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        // Whole milliseconds, as configs usually have.
        (0u64..10_000_000_000).prop_map(Duration::from_millis),
        // Anything.
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

proptest! {
    #[test]
    fn size_format_then_parse_is_identity(n in any::<u64>()) {
        let text = ByteSize(n).to_string();
        prop_assert_eq!(parse_size(&text), Ok(n), "{}", text);
    }

    #[test]
    fn size_with_unit_parses_to_product(n in 0u64..1_000_000, unit in 0..SIZE_UNITS.len(), space in any::<bool>()) {
        let (name, mult) = SIZE_UNITS[unit];
        let text = format!("{n}{}{name}", if space && !name.is_empty() { " " } else { "" });
        prop_assert_eq!(parse_size(&text), Ok(n * mult));
    }

    #[test]
    fn duration_format_then_parse_is_identity(d in any_duration()) {
        let text = format_duration(d);
        prop_assert_eq!(parse_duration(&text), Ok(d), "{}", text);
    }

    #[test]
    fn duration_with_unit_parses_to_product(n in 0u64..100_000, unit in 0..DURATION_UNITS.len()) {
        let (name, nanos) = DURATION_UNITS[unit];
        let want = Duration::from_nanos(n * nanos);
        prop_assert_eq!(parse_duration(&format!("{n}{name}")), Ok(want));
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,24}") {
        let _ = parse_size(&s);
        let _ = parse_duration(&s);
    }

    #[test]
    fn loader_never_panics_on_arbitrary_text(s in "[\\[\\]a-z_=\"' \n.{},#0-9]{0,200}") {
        let _ = Config::from_toml_str(&s);
    }

    /// Every prefix of the full example either loads or fails with a
    /// message, exercising error positions all over the file.
    #[test]
    fn loader_never_panics_on_truncated_example(cut in 0usize..8000) {
        let text = include_str!("../examples/sluice.toml");
        let mut end = cut.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if let Err(e) = Config::from_toml_str(&text[..end]) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
