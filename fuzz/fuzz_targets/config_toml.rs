//! Configuration loading: `Config::from_toml_str` (TOML parsing,
//! normalization, validation) and the human sizes and durations it reads.
//!
//! Properties: nothing panics; a configuration that loads validates again
//! unchanged, normalizing it again changes nothing, and it always has the
//! `default` service; an error says something. Sizes and durations that
//! parse print back (`Display`, `format_duration`) to text that parses to the
//! same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_config::{format_duration, parse_duration, parse_size, ByteSize, Config, DEFAULT_SERVICE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_toml_str(text) {
        Ok(cfg) => {
            if let Err(e) = cfg.validate() {
                panic!("a loaded configuration fails to validate again: {e}");
            }
            let mut again = cfg.clone();
            again.normalize();
            assert_eq!(again, cfg, "normalize is not idempotent");
            assert!(cfg.service(DEFAULT_SERVICE).is_some(), "the default service is missing");
            for topic in &cfg.topics {
                assert!(cfg.service(&topic.service).is_some(), "topic {:?} has no service", topic.name);
            }
        }
        Err(e) => assert!(!e.to_string().trim().is_empty(), "an empty error message"),
    }
    // Short inputs are also tried as a size and as a duration on their own.
    if text.len() <= 64 {
        if let Ok(n) = parse_size(text) {
            let printed = ByteSize(n).to_string();
            assert_eq!(parse_size(&printed), Ok(n), "size {text:?} prints as {printed:?}");
        }
        if let Ok(d) = parse_duration(text) {
            let printed = format_duration(d);
            assert_eq!(parse_duration(&printed), Ok(d), "duration {text:?} prints as {printed:?}");
        }
    }
});
