//! Output SPECs as `--output SPEC` and `[daemon] outputs` give them
//! (`OutputSpec::from_str`), sizes as `max_size=` and `spool_max=` take them
//! (`parse_size`); a parsed spec is displayed (status, errors) and the
//! displayed form parsed again, as a config written from it would be.

#![no_main]

use std::str::FromStr as _;

use libfuzzer_sys::fuzz_target;
use sensor::sinks::{OutputSpec, check_unique_names, parse_size};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_size(text);
    match OutputSpec::from_str(text) {
        Ok(spec) => {
            let shown = spec.to_string();
            let _ = OutputSpec::from_str(&shown);
            // Two outputs of one name are refused, naming the second.
            let twice = [spec.clone(), spec];
            assert!(check_unique_names(&twice).is_err());
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
