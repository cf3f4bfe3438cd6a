//! Prometheus metrics at `http://<[metrics] listen>/metrics`, read from the
//! same counters as `sensor status` at each scrape:
//!
//! ```text
//! sensor_events_total{kind}              events emitted
//! sensor_kernel_lost_total{kind}         events the kernel could not hand over
//! sensor_runs_active                     agent runs in progress
//! sensor_reader_holds_total              times the reader paused for an output or the store behind
//! sensor_output_sent_total{output}       written or acknowledged by the receiver
//! sensor_output_failed_total{output}     refused by the receiver for good
//! sensor_output_dropped_total{output}    lost: queue full, write failed, spool full
//! sensor_output_spooled{output}          waiting in the spool (events)
//! sensor_output_spool_bytes{output}      waiting in the spool (bytes)
//! sensor_output_up{output}               1 when the last delivery worked
//! sensor_store_written_total, sensor_store_dropped_total
//! sensor_launches_refused_total          launches refused (bounds, bad values, full map)
//! sensor_connections_refused_total       control connections closed at once
//! sensor_denials_total{outcome}          denials reported, each once: `blocked`, or `audit` (would have been)
//! sensor_denials_suppressed_total        denial records held back (per-run rate limit)
//! sensor_runs_degraded_total             runs that lost records or had denials held back
//! sensor_panics_total                    handling panics caught (bugs)
//! sensor_tamper_total                    integrity check findings (sensor.tamper events)
//! sensor_foreign_bpf_calls_total         bpf(2) calls by other processes that can change a map
//! sensor_ready                           1 when attached and not blind (`sensor status` exits 0)
//! sensor_blind                           1 while the canary finds the sensor blind (sensor.blind)
//! sensor_canary_rounds_total{result}     canary rounds: `ok` (both records came), `failed`
//! sensor_file_tamper_total               changes to the sensor's files reported (file watch)
//! sensor_file_tamper_suppressed_total    of those, counted, not reported one by one (rate limit)
//! sensor_file_watch_lost_total           file watch losses: kernel queue overflows + reports dropped
//! sensor_file_watch_up                   1 while the file watch runs
//! sensor_detections_total{rule,level}    detection events (a Sigma rule matched)
//! sensor_detect_evaluated_total          events the detection thread matched against the rules
//! sensor_detect_dropped_total{what}      `batches` not evaluated (its queue full), `matches` lost
//!                                        (the pipeline's queue full), `panics` (batches, caught)
//! sensor_build_info{version,git}         1; the version and the commit built from
//! sensor_policies_version                version of the policy set (one more at each reload)
//! sensor_policy_mode{policy,mode}        1 per policy in force, its mode `audit` or `enforce`
//! sensor_policy_version{policy}          the policy set version each policy was loaded in
//! sensor_policy_runs_active{policy}      active runs bound to each policy
//! sensor_agent_matchers                  `[[agent]]` matchers in force
//! sensor_reloads_total{result}           reloads: `ok` (applied), `refused` (all stayed as they were)
//! sensor_pinned{what}                    `maps` pinned in the pin dir, program `links` pinned
//! ```

use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::status::DaemonState;

/// The listening socket, bound at start so a bad address fails start-up.
pub struct MetricsServer {
    server: tiny_http::Server,
    addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics: cannot listen on {addr}: {message}")]
pub struct MetricsError {
    addr: SocketAddr,
    message: String,
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let server = tiny_http::Server::http(addr).map_err(|e| MetricsError {
            addr,
            message: e.to_string(),
        })?;
        Ok(Self { server, addr })
    }

    /// Answers scrapes on a thread of its own until the process ends.
    /// With `tokens`, it also serves the run tokens' public keys
    /// (`/.well-known/jwks.json`) and the OpenID discovery document
    /// (`/.well-known/openid-configuration`).
    pub fn serve(
        self,
        state: Arc<DaemonState>,
        tokens: Option<Arc<crate::tokens::Published>>,
    ) -> std::io::Result<()> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StateCollector(state)));
        tracing::info!(addr = %self.addr, "serving Prometheus metrics at /metrics");
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in self.server.incoming_requests() {
                    let path = request.url().split('?').next().unwrap_or_default();
                    let document = match (path, &tokens) {
                        ("/.well-known/jwks.json", Some(t)) => Some(t.jwks()),
                        ("/.well-known/openid-configuration", Some(t)) => Some(t.discovery()),
                        _ => None,
                    };
                    if let Some(body) = document {
                        let response = tiny_http::Response::from_string(body.as_ref());
                        let response = match tiny_http::Header::from_bytes(
                            &b"Content-Type"[..],
                            &b"application/json"[..],
                        ) {
                            Ok(h) => response.with_header(h),
                            Err(()) => response,
                        };
                        let _ = request.respond(response);
                        continue;
                    }
                    let response = if path == "/metrics" {
                        let mut body = String::new();
                        match prometheus_client::encoding::text::encode(&mut body, &registry) {
                            Ok(()) => {
                                let response = tiny_http::Response::from_string(body);
                                match tiny_http::Header::from_bytes(
                                    &b"Content-Type"[..],
                                    &b"application/openmetrics-text; version=1.0.0; charset=utf-8"
                                        [..],
                                ) {
                                    Ok(h) => response.with_header(h),
                                    Err(()) => response,
                                }
                            }
                            Err(_) => tiny_http::Response::from_string("encoding failed")
                                .with_status_code(500),
                        }
                    } else {
                        tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                    };
                    let _ = request.respond(response);
                }
            })?;
        Ok(())
    }
}

struct StateCollector(Arc<DaemonState>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value_label, v) in values {
        let labels = [(label, value_label.as_str())];
        ConstCounter::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: &[(String, i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value_label, v) in values {
        let labels = [(label, value_label.as_str())];
        ConstGauge::new(*v).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl StateCollector {
    /// What is enforcing: the build, the policies with their modes,
    /// versions and runs, the matchers, the reloads, the pins.
    fn encode_enforcing(
        &self,
        report: &crate::status::StatusReport,
        encoder: &mut DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "sensor_build_info",
                "1; the sensor's version and the commit it was built from",
                None,
                MetricType::Gauge,
            )?;
            let labels = [
                ("version", report.version.as_str()),
                ("git", report.git.as_str()),
            ];
            ConstGauge::new(1_i64).encode(family.encode_family(&labels)?)?;
        }
        let policies = &report.policies;
        let version = ConstGauge::new(gauge(policies.version));
        version.encode(encoder.encode_descriptor(
            "sensor_policies_version",
            "Version of the policy set in force (1 at start, one more at each reload)",
            None,
            MetricType::Gauge,
        )?)?;
        {
            let mut family = encoder.encode_descriptor(
                "sensor_policy_mode",
                "1 for each policy in force, with its mode (audit or enforce)",
                None,
                MetricType::Gauge,
            )?;
            for p in &policies.policies {
                let labels = [("policy", p.name.as_str()), ("mode", p.mode.as_str())];
                ConstGauge::new(1_i64).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge_family(
            encoder,
            "sensor_policy_version",
            "The policy set version each policy in force was loaded in",
            "policy",
            &policies
                .policies
                .iter()
                .map(|p| (p.name.clone(), gauge(p.version)))
                .collect::<Vec<_>>(),
        )?;
        gauge_family(
            encoder,
            "sensor_policy_runs_active",
            "Active agent runs bound to each policy",
            "policy",
            &policies
                .policies
                .iter()
                .map(|p| (p.name.clone(), gauge(p.runs_active)))
                .collect::<Vec<_>>(),
        )?;
        let agents = ConstGauge::new(gauge(report.agents.len() as u64));
        agents.encode(encoder.encode_descriptor(
            "sensor_agent_matchers",
            "[[agent]] matchers in force (their execs start runs)",
            None,
            MetricType::Gauge,
        )?)?;
        counter_family(
            encoder,
            "sensor_reloads",
            "Reloads of the policies and agent matchers (sensor policy reload, SIGHUP): ok, or \
             refused (the running ones stayed)",
            "result",
            &[
                ("ok".to_owned(), report.reloads.ok),
                ("refused".to_owned(), report.reloads.refused),
            ],
        )?;
        if let Some(paths) = &report.paths {
            gauge_family(
                encoder,
                "sensor_pinned",
                "Maps pinned in the pin dir, and program links pinned: they stay, and enforce, \
                 while the daemon is down",
                "what",
                &[
                    ("maps".to_owned(), gauge(paths.maps_pinned.len() as u64)),
                    (
                        "links".to_owned(),
                        gauge(report.programs.iter().filter(|p| p.pinned).count() as u64),
                    ),
                ],
            )?;
        }
        Ok(())
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let report = self.0.report();
        let events: Vec<(String, u64)> = report
            .events
            .iter()
            .filter(|(k, _)| k.as_str() != "total")
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        counter_family(
            &mut encoder,
            "sensor_events",
            "Events emitted, by kind",
            "kind",
            &events,
        )?;
        let lost: Vec<(String, u64)> = report
            .lost
            .by_kind
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        counter_family(
            &mut encoder,
            "sensor_denials",
            "Denials reported, each once (not their policy.violation twins): blocked, or audit (would have been blocked)",
            "outcome",
            &[
                ("blocked".to_owned(), report.denials_blocked),
                ("audit".to_owned(), report.denials_audit),
            ],
        )?;
        counter_family(
            &mut encoder,
            "sensor_kernel_lost",
            "Events lost in the kernel (ring buffer full), by kind",
            "kind",
            &lost,
        )?;
        let runs = ConstGauge::new(gauge(report.runs_active));
        runs.encode(encoder.encode_descriptor(
            "sensor_runs_active",
            "Agent runs in progress",
            None,
            runs.metric_type(),
        )?)?;
        let holds = ConstCounter::new(report.reader_holds);
        holds.encode(encoder.encode_descriptor(
            "sensor_reader_holds",
            "Times the reader left records in the kernel's ring because an output or the store \
             had more than 2048 events waiting (each a pause until the next drain, 7 ms)",
            None,
            MetricType::Counter,
        )?)?;
        let per_output = |f: &dyn Fn(&crate::status::OutputStatus) -> u64| -> Vec<(String, u64)> {
            report
                .outputs
                .iter()
                .map(|o| (o.name.clone(), f(o)))
                .collect()
        };
        counter_family(
            &mut encoder,
            "sensor_output_sent",
            "Events written or acknowledged by the receiver",
            "output",
            &per_output(&|o| o.sent),
        )?;
        counter_family(
            &mut encoder,
            "sensor_output_failed",
            "Events the receiver refused for good",
            "output",
            &per_output(&|o| o.failed),
        )?;
        counter_family(
            &mut encoder,
            "sensor_output_dropped",
            "Events lost by the output: queue full, write failed, spool full",
            "output",
            &per_output(&|o| o.dropped),
        )?;
        let as_gauges = |v: Vec<(String, u64)>| -> Vec<(String, i64)> {
            v.into_iter().map(|(k, n)| (k, gauge(n))).collect()
        };
        gauge_family(
            &mut encoder,
            "sensor_output_spooled",
            "Events waiting in the output's spool",
            "output",
            &as_gauges(per_output(&|o| o.spooled)),
        )?;
        gauge_family(
            &mut encoder,
            "sensor_output_spool_bytes",
            "Bytes waiting in the output's spool",
            "output",
            &as_gauges(per_output(&|o| o.spool_bytes)),
        )?;
        gauge_family(
            &mut encoder,
            "sensor_output_up",
            "1 when the output's last delivery worked, 0 while it retries",
            "output",
            &as_gauges(per_output(&|o| u64::from(o.state == "ok"))),
        )?;
        for (name, help, value) in [
            (
                "sensor_launches_refused",
                "Launch requests refused (per-user bounds, invalid values, a full kernel map)",
                report.launches_refused,
            ),
            (
                "sensor_connections_refused",
                "Control connections closed at once (too many in all or from one user)",
                report.connections_refused,
            ),
            (
                "sensor_denials_suppressed",
                "Denial records the kernel held back under the per-run rate limit",
                report.denials_suppressed,
            ),
            (
                "sensor_runs_degraded",
                "Agent runs that lost records or had denial records held back",
                report.runs_degraded,
            ),
            (
                "sensor_panics",
                "Requests or kernel records whose handling panicked (caught)",
                report.panics,
            ),
            (
                "sensor_tamper",
                "What the integrity check found changed under the daemon: pins removed, \
                 links detached, policy maps written (sensor.tamper events)",
                report.tamper.total,
            ),
            (
                "sensor_foreign_bpf_calls",
                "bpf(2) calls by other processes that can change a map (each makes the \
                 integrity check compare the policy maps)",
                report.tamper.foreign_bpf_calls,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        for (name, help, value) in [
            (
                "sensor_ready",
                "1 when the daemon is attached and not blind (sensor status exits 0)",
                u64::from(report.ready),
            ),
            (
                "sensor_blind",
                "1 while the canary's exec or connect does not come through the kernel \
                 (sensor.blind)",
                u64::from(report.canary.blind.is_some()),
            ),
        ] {
            let g = ConstGauge::new(gauge(value));
            g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
        }
        counter_family(
            &mut encoder,
            "sensor_canary_rounds",
            "Canary rounds: ok (its exec and connect came through the kernel) or failed",
            "result",
            &[
                ("ok".to_owned(), report.canary.rounds_ok),
                ("failed".to_owned(), report.canary.rounds_failed),
            ],
        )?;
        if let Some(fw) = &report.file_watch {
            for (name, help, value) in [
                (
                    "sensor_file_tamper",
                    "Changes to the sensor's files reported by the file watch (sensor.tamper, method file)",
                    fw.reported,
                ),
                (
                    "sensor_file_tamper_suppressed",
                    "Changes to the sensor's files counted, not reported one by one (rate limit)",
                    fw.suppressed,
                ),
                (
                    "sensor_file_watch_lost",
                    "File watch losses: kernel queue overflows and reports dropped",
                    fw.overflows + fw.dropped,
                ),
            ] {
                let counter = ConstCounter::new(value);
                counter.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    MetricType::Counter,
                )?)?;
            }
            let up = ConstGauge::new(i64::from(fw.watching));
            up.encode(encoder.encode_descriptor(
                "sensor_file_watch_up",
                "1 while the watch of the sensor's files runs",
                None,
                MetricType::Gauge,
            )?)?;
        }
        {
            let mut family = encoder.encode_descriptor(
                "sensor_detections",
                "Detection events (a Sigma rule of [detect] matched an event), by rule id and level",
                None,
                MetricType::Counter,
            )?;
            for ((rule, level), n) in self.0.detections() {
                let labels = [("rule", rule.as_str()), ("level", level)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(d) = self.0.detect() {
            use std::sync::atomic::Ordering::Relaxed;
            let evaluated = ConstCounter::new(d.evaluated.load(Relaxed));
            evaluated.encode(encoder.encode_descriptor(
                "sensor_detect_evaluated",
                "Events the detection thread matched against the rules",
                None,
                MetricType::Counter,
            )?)?;
            counter_family(
                &mut encoder,
                "sensor_detect_dropped",
                "Detection work lost: batches not evaluated (queue full), matches lost \
                 (the pipeline's queue full), batches whose matching panicked (caught)",
                "what",
                &[
                    ("batches".to_owned(), d.batches_dropped.load(Relaxed)),
                    ("matches".to_owned(), d.matches_dropped.load(Relaxed)),
                    ("panics".to_owned(), d.panics.load(Relaxed)),
                ],
            )?;
        }
        self.encode_enforcing(&report, &mut encoder)?;
        if let Some(store) = &report.store {
            let written = ConstCounter::new(store.written);
            written.encode(encoder.encode_descriptor(
                "sensor_store_written",
                "Events written to the local store",
                None,
                MetricType::Counter,
            )?)?;
            let dropped = ConstCounter::new(store.dropped + store.failed);
            dropped.encode(encoder.encode_descriptor(
                "sensor_store_dropped",
                "Events the local store could not keep",
                None,
                MetricType::Counter,
            )?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_are_counted_by_rule_and_level() {
        let state = Arc::new(DaemonState::default());
        state.count_detection("r1", "high");
        state.count_detection("r1", "high");
        state.count_detection("r2", "low");
        state.set_detect(Arc::new(crate::detect::DetectStats::default()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StateCollector(Arc::clone(&state))));
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
        assert!(
            body.contains("sensor_detections_total{rule=\"r1\",level=\"high\"} 2"),
            "{body}"
        );
        assert!(
            body.contains("sensor_detections_total{rule=\"r2\",level=\"low\"} 1"),
            "{body}"
        );
        assert!(
            body.contains("sensor_detect_dropped_total{what=\"batches\"} 0"),
            "{body}"
        );
    }

    #[test]
    fn policies_build_and_reloads_are_exported() {
        let state = Arc::new(DaemonState::default());
        state.set_policies(crate::status::PoliciesStatus {
            version: 3,
            policies: vec![crate::status::PolicyStatus {
                name: "ci".into(),
                mode: "enforce".into(),
                version: 3,
                runs_active: 2,
                slot: Some(0),
                id: Some(7),
            }],
            hidden: false,
        });
        state.set_agents(vec!["bot".into()]);
        state.set_reader_holds(5);
        state.count_reload(None);
        state.count_reload(Some("bad policy"));
        state.count_reload(None);
        let mut registry = Registry::default();
        registry.register_collector(Box::new(StateCollector(Arc::clone(&state))));
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).unwrap();
        for want in [
            format!(
                "sensor_build_info{{version=\"{}\",git=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                crate::status::GIT_COMMIT
            ),
            "sensor_policies_version 3".to_owned(),
            "sensor_policy_mode{policy=\"ci\",mode=\"enforce\"} 1".to_owned(),
            "sensor_policy_version{policy=\"ci\"} 3".to_owned(),
            "sensor_policy_runs_active{policy=\"ci\"} 2".to_owned(),
            "sensor_agent_matchers 1".to_owned(),
            "sensor_reader_holds_total 5".to_owned(),
            "sensor_reloads_total{result=\"ok\"} 2".to_owned(),
            "sensor_reloads_total{result=\"refused\"} 1".to_owned(),
        ] {
            assert!(body.contains(&want), "{want} in:\n{body}");
        }
    }
}
