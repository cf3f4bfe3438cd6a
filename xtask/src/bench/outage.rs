//! What the kernel keeps while no daemon reads (issue 17).
//!
//! The daemon (default ring) is SIGKILLed; an exec storm runs until the
//! ring must overflow; the daemon starts again on the same state and pin
//! dirs. The exec events it recovers are what the ring held; at the
//! storm's rate, that is how long an outage on an exec-storming host the
//! ring absorbs without loss. The drain rate is the records recovered per
//! second of the recovery (the daemon's own `recovery_ms`).

use std::{thread, time::Duration};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{
    Env,
    daemon::{Daemon, event_count},
    storm,
};

/// Execs the storm runs while the daemon is down: enough to overflow the
/// default ring (about 20,000 fit).
const OUTAGE_EXECS: usize = 40_000;
const QUICK_OUTAGE_EXECS: usize = 30_000;

/// The figures.
pub struct Outage {
    /// Execs the storm ran, and how long it took.
    pub execs: usize,
    pub storm_secs: f64,
    /// `process.exec` events recovered, and the records lost.
    pub recovered_execs: u64,
    pub lost_execs: u64,
    /// Records recovered in all, and how long reading them took.
    pub recovered_records: u64,
    pub recovery_ms: u64,
    /// The ring's size, KiB.
    pub ring_kib: u64,
}

impl Outage {
    /// Execs per second the storm ran at.
    pub fn rate(&self) -> f64 {
        self.execs as f64 / self.storm_secs.max(1e-9)
    }

    /// Seconds of this storm the ring absorbs without loss.
    pub fn absorbed_secs(&self) -> f64 {
        self.recovered_execs as f64 / self.rate().max(1e-9)
    }

    /// Records read per second at the restart.
    pub fn drain_rate(&self) -> f64 {
        self.recovered_records as f64 / (self.recovery_ms.max(1) as f64 / 1000.0)
    }

    pub fn json(&self) -> Value {
        json!({
            "ring_kib": self.ring_kib,
            "storm_execs": self.execs,
            "storm_execs_per_sec": self.rate(),
            "recovered_execs": self.recovered_execs,
            "lost_execs": self.lost_execs,
            "absorbed_secs": self.absorbed_secs(),
            "recovered_records": self.recovered_records,
            "recovery_ms": self.recovery_ms,
            "drain_records_per_sec": self.drain_rate(),
        })
    }

    pub fn markdown(&self) -> String {
        format!(
            "\n## outage: what the ring keeps while no daemon reads\n\n\
             | ring | storm | execs recovered | execs lost | outage absorbed | drain at restart |\n\
             |---:|---:|---:|---:|---:|---:|\n\
             | {} KiB | {} execs at {:.0}/s | {} | {} | {:.1} s | {:.0} records/s ({} in {} ms) |\n",
            self.ring_kib,
            self.execs,
            self.rate(),
            self.recovered_execs,
            self.lost_execs,
            self.absorbed_secs(),
            self.drain_rate(),
            self.recovered_records,
            self.recovery_ms,
        )
    }
}

pub fn measure(env: &Env, quick: bool) -> Result<Outage> {
    let execs = if quick {
        QUICK_OUTAGE_EXECS
    } else {
        OUTAGE_EXECS
    };
    let args = ["--output", "file:/dev/null", "--no-store"];
    let daemon = Daemon::start(env, 1002, &args)?;
    let (state_dir, pin_dir) = daemon.kill9();
    eprintln!("xtask bench: outage: daemon SIGKILLed, {execs} execs while it is down");
    let storm = storm::exec_storm(execs)?;
    let daemon = Daemon::start_on(env, 1002, &args, state_dir, pin_dir)?;
    let mut status = daemon.status_json()?;
    for _ in 0..600 {
        if status["recovered"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
        status = daemon.status_json()?;
    }
    // The loss report comes with the first events after the restart.
    thread::sleep(Duration::from_millis(1500));
    status = daemon.status_json()?;
    let outage = Outage {
        execs,
        storm_secs: storm.as_secs_f64(),
        recovered_execs: event_count(&status, "process.exec"),
        lost_execs: status["lost"]["by_kind"]["process.exec"]
            .as_u64()
            .unwrap_or(0),
        recovered_records: status["recovered"].as_u64().unwrap_or(0),
        recovery_ms: status["recovery_ms"].as_u64().unwrap_or(0),
        ring_kib: status["event_ring_kib"].as_u64().unwrap_or(0),
    };
    daemon.stop()?;
    if outage.recovered_records == 0 {
        bail!("the restarted daemon recovered nothing of the outage");
    }
    Ok(outage)
}
