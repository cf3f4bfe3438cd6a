//! The systemd notification protocol (`sd_notify`), through the `sd-notify`
//! crate: `READY=1` once the daemon is attached and ready, `WATCHDOG=1` from
//! the event loop while it makes progress, `STATUS=` lines, `STOPPING=1`.
//!
//! Under `Type=notify` with `WatchdogSec=` (dist/sensor.service) systemd sets
//! `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. The watchdog applies
//! only when `WATCHDOG_PID` is unset or names this process (the crate's
//! `watchdog_enabled`, as `sd_watchdog_enabled(3)`). Pings go out from the
//! pipeline's loop, the one that reads the ring buffer and runs the 1 s
//! tick ([`crate::pipeline::run`]), never from a thread of their own: a
//! stopped or hung loop stops them, and systemd restarts the daemon.
//! Without `NOTIFY_SOCKET` every call does nothing.

use std::{sync::atomic::AtomicBool, time::Duration};

use sd_notify::NotifyState;

/// The daemon's side of the protocol.
#[derive(Debug, Default)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    /// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`).
    watchdog: Option<Duration>,
    /// A failed send was logged (once is enough).
    warned: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    #[must_use]
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        if let Some(usec) = watchdog {
            tracing::info!(
                watchdog_ms = u64::try_from(usec.as_millis()).unwrap_or(u64::MAX),
                "systemd watchdog: pinging from the event loop every {:?}",
                ping_interval(usec)
            );
        }
        Self {
            enabled,
            watchdog: watchdog.filter(|_| enabled),
            warned: AtomicBool::new(false),
        }
    }

    /// How often the event loop pings, when the watchdog is on: half the
    /// watchdog interval, as `sd_watchdog_enabled(3)` recommends.
    #[must_use]
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(ping_interval)
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    /// `WATCHDOG=1` (only when the watchdog is on).
    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// A `STATUS=` line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(&one_line(status))]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(&one_line(status)),
        ]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states)
            && !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET); later failures are not logged");
        }
    }
}

/// Half the watchdog interval, at least 1 ms.
fn ping_interval(usec: Duration) -> Duration {
    (usec / 2).max(Duration::from_millis(1))
}

/// A `STATUS=` value is one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_at_half_the_interval_and_status_is_one_line() {
        assert_eq!(
            ping_interval(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_interval(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
        assert_eq!(one_line("a\nb\rc"), "a b c");
        // Without NOTIFY_SOCKET nothing is sent and nothing fails.
        let n = Notifier::default();
        n.ready("x");
        n.watchdog();
        n.stopping("y");
        assert_eq!(n.watchdog_interval(), None);
    }
}
