//! Kernel ring buffer records, as the pipeline reads them: each record is
//! decoded (`record::decode`), and a record that decodes is built into
//! events (`Engine::build_into`: attribution, agent matchers, policy
//! verdicts, run starts and ends) and written as JSON lines.
//!
//! One input is several records (`len: u16 LE | record`, see
//! `sensor_fuzz::frames`) fed to one builder, so a spawn, an exec that starts
//! an agent run, its connects and its exits can follow one another.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sensor::{
    attribution::Matchers,
    record::{decode, encode},
    policy::Policies,
};
use sensor_fuzz::{attribution, builder, check_json_line, frames, raw_config};

fn config() -> &'static (Matchers, Policies) {
    static CONFIG: OnceLock<(Matchers, Policies)> = OnceLock::new();
    CONFIG.get_or_init(raw_config)
}

fuzz_target!(|data: &[u8]| {
    let (matchers, policies) = config();
    let mut b = builder(attribution(matchers.clone()), policies.clone());
    let mut out = Vec::new();
    for record in frames(data) {
        let Ok(raw) = decode(record) else {
            continue;
        };
        // Replay tools encode records the way the kernel does: what decodes
        // encodes to a record that decodes the same.
        assert_eq!(
            decode(&encode(&raw)).as_ref(),
            Ok(&raw),
            "encode(decode(x)) decodes differently"
        );
        out.clear();
        b.build_into(raw, &mut out);
        for event in &out {
            check_json_line(event);
        }
    }
});
