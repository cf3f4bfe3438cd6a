//! The config file (TOML): `[daemon]`, `[store]`, `[[agent]]` matchers,
//! `[policy.NAME]` allow-lists and `[[output]]` tables, as `sensor daemon`,
//! `sensor policy check` and a policy reload read it
//! (`Config::parse_with_policies`); errors are rendered as the CLI prints them.
//!
//! Loading a policy resolves its exec rules against the file system and its
//! host names with the system resolver. The target first moves itself into a
//! network namespace of its own (as root), so host names fail at once
//! instead of querying the host's DNS server for every name the fuzzer makes
//! up (`localhost` still resolves, from /etc/hosts).

#![no_main]

use std::{error::Error as _, path::Path};

use libfuzzer_sys::fuzz_target;
use sensor::config::Config;

fuzz_target!(
    init: {
        // SAFETY: unshare has no memory preconditions; called before this
        // process starts threads of its own (the resolver thread inherits it).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "config fuzz target: cannot unshare the network namespace ({}); \
                 host names in connect.allow go to the system resolver",
                std::io::Error::last_os_error()
            );
        }
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        match Config::parse_with_policies(text, Path::new("/etc/sensor/sensor.toml")) {
            Ok((config, policies)) => {
                let specs = config.output_specs().expect("a parsed config has valid outputs");
                for spec in &specs {
                    let _ = spec.to_string();
                }
                for policy in policies.iter() {
                    for index in 0..u32::try_from(policy.rule_count()).unwrap_or(u32::MAX) {
                        let _ = policy.rule_text(index);
                    }
                    // What a sub-run's `launch --policy` is checked with.
                    for parent in policies.iter().take(8) {
                        let _ = policy.within(parent);
                    }
                }
            }
            Err(e) => {
                // As the CLI prints it: the error and its causes.
                let mut message = e.to_string();
                let mut source = e.source();
                while let Some(cause) = source {
                    message.push_str(": ");
                    message.push_str(&cause.to_string());
                    source = cause.source();
                }
                assert!(!message.is_empty());
            }
        }
    }
);
