//! Outputs: where events leave the sensor.
//!
//! The pipeline hands each batch of typed events ([`EventBatch`], shared
//! by every output and the store, with its JSON lines made once by the
//! first that needs them) to every output's
//! bounded queue and goes on; nothing an output does can stall the kernel
//! reader or the other outputs. Each output filters the events
//! ([`filter`]) and encodes them in its [`format`] (JSON lines through
//! serde, OCSF mapped from the typed event) on its own thread.
//!
//! - stdout and `file:` outputs have a writer thread: filter, encode, write
//!   (a file rotates by size). A full queue drops the batch, counted.
//! - Network outputs (syslog, HTTP, NATS) have two threads. The spooler
//!   filters and encodes each event and appends it to the output's on-disk
//!   [`spool`]; the sender reads the spool in order and delivers through the
//!   output's [`transport`], moving the spool's cursor only past what the
//!   receiver acknowledged, and retries with backoff (exponential, with
//!   jitter) while it cannot. So a dead receiver costs disk, not events,
//!   until the spool is full (then the oldest are dropped, counted), and
//!   what is spooled outlives the daemon.
//!
//! # One concurrency model: threads and bounded queues
//!
//! Every output runs on plain OS threads with blocking I/O, fed by a bounded
//! `std::sync::mpsc` queue that the pipeline only ever `try_send`s to. Not
//! tokio tasks on the daemon's runtime: that runtime is current-thread and
//! drives the kernel reader, and a slow encoder (OCSF), a blocking file or
//! spool write (`fsync`), a TLS handshake or an HTTP request (ureq is
//! blocking) would stall it; and not a shared output runtime either: the
//! spool, the files and three of the four transports are blocking by
//! nature, so each would need `spawn_blocking` anyway. A thread per output
//! (two for a network one) isolates outputs from each other and from the
//! reader by construction, and the kernel schedules them on both cores.
//!
//! The one async library, `async-nats`, stays inside its transport:
//! [`transport::nats::Nats`] owns a current-thread runtime that only its
//! sender thread enters (`block_on` within the blocking
//! [`transport::Transport::send`]), and drops it with a broken connection
//! so the client's tasks end with it. Seen from here it is a blocking
//! transport like the others.
//!
//! Counts reach `sensor status`, the metrics and `sensor.lost` events.

pub mod backlog;
mod batch;
pub mod filter;
pub mod format;
mod spec;
pub mod spool;
pub mod transport;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc::{Receiver, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use backon::BackoffBuilder as _;

pub use self::backlog::{Backlog, Pressure, Wait};
pub use self::batch::{EventBatch, JsonLines, Recycler};
pub use self::spec::{
    Format, HttpShape, OutputSpec, SpecError, Target, check_unique_names, parse_size,
};
use self::{
    filter::Filter,
    spool::Spool,
    transport::{Transport, http, nats, syslog, tls},
};

/// Batches waiting per output.
const QUEUE_BATCHES: usize = 4096;
/// How long a stopping daemon keeps delivering what its spools hold; the
/// rest waits in the spool for the next start.
const STOP_DELIVERY: Duration = Duration::from_secs(5);
/// Retry delays of a failing network output ([`retry_delays`]): doubled from
/// the first to the last, with jitter. The last bounds how long a receiver
/// that is back waits for us.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The state of an output's delivery, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Delivering (or nothing to deliver).
    Ok = 0,
    /// The last attempt failed; retrying with backoff.
    Retrying = 1,
}

/// Counters of one output.
#[derive(Debug, Default)]
pub struct OutputStats {
    /// Events written (stdout, file) or acknowledged by the receiver.
    pub sent: AtomicU64,
    /// Events lost: queue full, write failed, spool full.
    pub dropped: AtomicU64,
    /// Events the receiver refused for good (e.g. HTTP 400).
    pub failed: AtomicU64,
    /// Failed writes or delivery attempts.
    pub write_errors: AtomicU64,
    health: AtomicU8,
    last_error: Mutex<Option<String>>,
    /// Unix ms of the last successful delivery (0: none yet).
    pub last_ok_ms: AtomicU64,
}

impl OutputStats {
    #[must_use]
    pub fn health(&self) -> Health {
        if self.health.load(Ordering::Relaxed) == Health::Retrying as u8 {
            Health::Retrying
        } else {
            Health::Ok
        }
    }

    #[must_use]
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    fn set_error(&self, message: &str) {
        self.health.store(Health::Retrying as u8, Ordering::Relaxed);
        self.write_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(message.to_owned());
        }
    }

    fn set_ok(&self, delivered: u64) {
        self.sent.fetch_add(delivered, Ordering::Relaxed);
        self.health.store(Health::Ok as u8, Ordering::Relaxed);
        self.last_ok_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why an output could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("output {spec}: cannot open {path}")]
    Open {
        spec: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("output {spec}: cannot start its threads")]
    Thread {
        spec: String,
        #[source]
        source: std::io::Error,
    },
    #[error("output {spec}")]
    Spool {
        spec: String,
        #[source]
        source: spool::SpoolError,
    },
    #[error("output {spec}")]
    Setup {
        spec: String,
        #[source]
        source: SetupError,
    },
}

/// Why a network output's transport cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Token(#[from] spec::TokenError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Nats(#[from] nats::NatsSetupError),
    #[error("not a network output")]
    NotNetwork,
}

/// What outputs need to know about the daemon.
#[derive(Debug, Clone)]
pub struct OutputContext {
    /// Spools live under `<state_dir>/spool/<output name>`.
    pub state_dir: PathBuf,
    /// Host name for syslog's HOSTNAME and HEC's host.
    pub hostname: String,
    /// Unique to this host and state dir: prefixes message ids (NATS dedup).
    pub instance_id: String,
}

struct Output {
    tx: backlog::Sender<EventBatch>,
    /// Events in `tx` not yet taken by the output's thread.
    backlog: Arc<Backlog>,
    handle: OutputHandle,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

/// All outputs; [`Outputs::send`] fans a batch out to each.
pub struct Outputs {
    outputs: Vec<Output>,
}

/// Read-only view of an output, for status and metrics.
#[derive(Clone)]
pub struct OutputHandle {
    pub name: String,
    pub spec: String,
    pub format: Format,
    pub stats: Arc<OutputStats>,
    pub spool: Option<Arc<Spool>>,
}

impl OutputHandle {
    /// Events waiting in the spool (0 for outputs without one).
    #[must_use]
    pub fn spooled(&self) -> (u64, u64) {
        self.spool.as_ref().map_or((0, 0), |s| s.pending())
    }

    /// Events dropped, the spool's included.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.stats.dropped.load(Ordering::Relaxed) + self.spool.as_ref().map_or(0, |s| s.dropped())
    }
}

impl Outputs {
    /// Opens every output: files and spools now, so a bad path fails start-up;
    /// network connections lazily, so a receiver that is down does not.
    pub fn open(specs: &[OutputSpec], ctx: &OutputContext) -> Result<Self, SinkError> {
        let mut outputs = Vec::with_capacity(specs.len());
        for spec in specs {
            outputs.push(open_one(spec, ctx)?);
        }
        Ok(Self { outputs })
    }

    /// Views of every output.
    #[must_use]
    pub fn handles(&self) -> Vec<OutputHandle> {
        self.outputs.iter().map(|o| o.handle.clone()).collect()
    }

    /// The highest seq any spool ever held (0: none): a restarted daemon
    /// numbers on from there, so receivers see no seq twice for two events.
    #[must_use]
    pub fn last_spooled_seq(&self) -> u64 {
        self.outputs
            .iter()
            .filter_map(|o| o.handle.spool.as_ref())
            .map(|s| s.last_seq())
            .max()
            .unwrap_or(0)
    }

    /// Every output's backlog, for the pipeline's [`Pressure`].
    #[must_use]
    pub fn backlogs(&self) -> Vec<Arc<Backlog>> {
        self.outputs
            .iter()
            .map(|o| Arc::clone(&o.backlog))
            .collect()
    }

    /// Queues a batch on every output and wakes the output threads that
    /// wait for one; an output whose queue is full (in batches, or in
    /// events: [`backlog::QUEUE_EVENTS`]) drops it (counted).
    pub fn send(&self, batch: &EventBatch) {
        self.send_held(batch);
        self.ring();
    }

    /// [`Outputs::send`] without waking the output threads (unless
    /// [`backlog::WAKE_EVENTS`] wait): the pipeline queues a drain's
    /// batches, then wakes each output once with [`Outputs::ring`].
    pub fn send_held(&self, batch: &EventBatch) {
        for o in &self.outputs {
            if !o.backlog.has_room(batch.len()) {
                o.handle
                    .stats
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                continue;
            }
            match o.tx.try_send(batch.clone(), batch.len()) {
                Ok(()) => {}
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                    o.handle
                        .stats
                        .dropped
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Wakes the output threads that wait for a batch queued.
    pub fn ring(&self) {
        for o in &self.outputs {
            o.backlog.ring();
        }
    }

    /// Closes the queues; waits until local outputs wrote everything and
    /// network outputs spooled everything and delivered what they could
    /// within a few seconds (the rest stays spooled for the next start).
    pub fn close(self) {
        for o in &self.outputs {
            o.stopping.store(true, Ordering::Relaxed);
        }
        for o in self.outputs {
            drop(o.tx);
            for t in o.threads {
                if t.join().is_err() {
                    tracing::error!(output = %o.handle.name, "output thread panicked");
                }
            }
        }
    }
}

fn open_one(spec: &OutputSpec, ctx: &OutputContext) -> Result<Output, SinkError> {
    let (tx, rx) = sync_channel::<EventBatch>(QUEUE_BATCHES);
    let backlog = Arc::new(Backlog::default());
    let tx = backlog::Sender::new(tx, Arc::clone(&backlog));
    let stats = Arc::new(OutputStats::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let filter = Filter::new(spec);
    let thread_err = |source| SinkError::Thread {
        spec: spec.to_string(),
        source,
    };
    let mut handle = OutputHandle {
        name: spec.name.clone(),
        spec: spec.to_string(),
        format: spec.format,
        stats: Arc::clone(&stats),
        spool: None,
    };
    let mut threads = Vec::new();
    match &spec.target {
        Target::Stdout | Target::File { .. } => {
            let writer = match &spec.target {
                Target::File { path } => {
                    transport::file::LineWriter::file(path, spec.max_size, spec.keep).map_err(
                        |source| SinkError::Open {
                            spec: spec.to_string(),
                            path: path.clone(),
                            source,
                        },
                    )?
                }
                _ => transport::file::LineWriter::stdout(),
            };
            let name = spec.name.clone();
            let stats = Arc::clone(&stats);
            let backlog = Arc::clone(&backlog);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("output {name}"))
                    .spawn(move || {
                        crate::sched::batch_worker("output");
                        local_loop(&name, writer, &filter, (&rx, &backlog), &stats);
                    })
                    .map_err(thread_err)?,
            );
        }
        Target::Syslog { .. } | Target::Http { .. } | Target::Nats { .. } => {
            let transport = transport_for(spec, ctx)?;
            let dir = spool_dir(&ctx.state_dir, &spec.name);
            let spool =
                Arc::new(
                    Spool::open(&dir, spec.spool_max).map_err(|source| SinkError::Spool {
                        spec: spec.to_string(),
                        source,
                    })?,
                );
            handle.spool = Some(Arc::clone(&spool));
            let name = spec.name.clone();
            let (spooler_stats, spooler_spool) = (Arc::clone(&stats), Arc::clone(&spool));
            let backlog = Arc::clone(&backlog);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("spool {name}"))
                    .spawn(move || {
                        crate::sched::batch_worker("spool");
                        spool_loop(
                            &name,
                            &filter,
                            (&rx, &backlog),
                            &spooler_spool,
                            &spooler_stats,
                        );
                    })
                    .map_err(thread_err)?,
            );
            let name = spec.name.clone();
            let sender_stopping = Arc::clone(&stopping);
            let sender_stats = Arc::clone(&stats);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("send {name}"))
                    .spawn(move || {
                        crate::sched::batch_worker("send");
                        send_loop(&name, transport, &spool, &sender_stats, &sender_stopping);
                    })
                    .map_err(thread_err)?,
            );
        }
    }
    Ok(Output {
        tx,
        backlog,
        handle,
        threads,
        stopping,
    })
}

/// The transport of a network output.
fn transport_for(spec: &OutputSpec, ctx: &OutputContext) -> Result<Box<dyn Transport>, SinkError> {
    let setup = |source: SetupError| SinkError::Setup {
        spec: spec.to_string(),
        source,
    };
    let tls = tls::TlsOptions {
        ca: spec.ca.clone(),
    };
    Ok(match &spec.target {
        Target::Syslog {
            host,
            port,
            tls: on,
        } => Box::new(
            syslog::Syslog::new(syslog::SyslogConfig {
                host: host.clone(),
                port: *port,
                tls: on.then_some(tls),
                hostname: ctx.hostname.clone(),
                app_name: "sensor".to_owned(),
            })
            .map_err(|e| setup(e.into()))?,
        ),
        Target::Http { url, .. } => Box::new(
            http::Http::new(http::HttpConfig {
                url: url.clone(),
                shape: spec.shape.unwrap_or(HttpShape::Hec),
                token: spec.resolve_token().map_err(|e| setup(e.into()))?,
                gzip: spec.gzip,
                index: spec.index.clone(),
                tls,
                hostname: ctx.hostname.clone(),
                batch_bytes: 1 << 20,
            })
            .map_err(|e| setup(e.into()))?,
        ),
        Target::Nats {
            host,
            port,
            subject,
        } => Box::new(
            nats::Nats::new(nats::NatsConfig {
                host: host.clone(),
                port: *port,
                subject: subject.clone(),
                msg_id_prefix: ctx.instance_id.clone(),
                tls_ca: spec.ca.clone(),
            })
            .map_err(|e| setup(e.into()))?,
        ),
        Target::Stdout | Target::File { .. } => {
            return Err(setup(SetupError::NotNetwork));
        }
    })
}

/// `e` and its causes, joined by `: ` (for status and logs).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn local_loop(
    name: &str,
    mut w: transport::file::LineWriter,
    filter: &Filter,
    (rx, backlog): (&Receiver<EventBatch>, &Backlog),
    stats: &OutputStats,
) {
    let mut failing = false;
    let mut encoded = Vec::new();
    loop {
        // Wait for the next batch; flush whenever the queue runs dry.
        let batch = match rx.try_recv() {
            Ok(b) => b,
            Err(_) => {
                if w.flush().is_err() {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                match backlog.recv(rx, Wait::Any, None) {
                    Ok(b) => b,
                    Err(_) => break,
                }
            }
        };
        backlog.took(batch.len());
        encoded.clear();
        let mut shared = None;
        let n = filter.encode_lines(&batch, &mut encoded, &mut shared);
        match w.write_lines(shared.unwrap_or(&encoded), n) {
            Ok(()) => {
                stats.sent.fetch_add(n, Ordering::Relaxed);
                failing = false;
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                if !failing {
                    tracing::error!(output = name, error = %e, "write failed; dropping lines until it recovers");
                    failing = true;
                }
            }
        }
    }
    if let Err(e) = w.flush() {
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(output = name, error = %e, "final flush failed");
    }
}

/// Filters and encodes each batch into the spool; commits when the queue
/// runs dry, so the sender sees events within a batch's time.
fn spool_loop(
    name: &str,
    filter: &Filter,
    (rx, backlog): (&Receiver<EventBatch>, &Backlog),
    spool: &Spool,
    stats: &OutputStats,
) {
    let mut encoded = filter::Encoded::default();
    let mut failing = false;
    loop {
        let batch = match rx.try_recv() {
            Ok(b) => b,
            Err(_) => {
                if let Err(e) = spool.commit() {
                    tracing::error!(output = name, error = %e, "spool write failed");
                }
                match backlog.recv(rx, Wait::Any, None) {
                    Ok(b) => b,
                    Err(_) => break,
                }
            }
        };
        backlog.took(batch.len());
        filter.encode_records(&batch, &mut encoded);
        match spool.append(&encoded.records()) {
            Ok(()) => failing = false,
            Err(e) => {
                stats
                    .dropped
                    .fetch_add(encoded.len() as u64, Ordering::Relaxed);
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                if !failing {
                    tracing::error!(output = name, error = %e, "cannot spool events; dropping them until it recovers");
                    failing = true;
                }
            }
        }
    }
    spool.close();
}

/// Delivers the spool through the transport, in order, with backoff.
fn send_loop(
    name: &str,
    mut transport: Box<dyn Transport>,
    spool: &Spool,
    stats: &OutputStats,
    stopping: &AtomicBool,
) {
    let mut backoff = retry_delays();
    let mut stop_deadline: Option<Instant> = None;
    loop {
        if stopping.load(Ordering::Relaxed) {
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + STOP_DELIVERY);
            if Instant::now() >= deadline {
                let (left, _) = spool.pending();
                if left > 0 {
                    tracing::warn!(
                        output = name,
                        events = left,
                        "stopping with events spooled; the next start delivers them"
                    );
                }
                return;
            }
        }
        // Asked each time: HTTP lowers it after a 413.
        let batch = match spool.read(transport.batch_bytes(), Duration::from_millis(200)) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => {
                stats.set_error(&format!("reading the spool: {e}"));
                tracing::error!(output = name, error = %e, "cannot read the spool");
                sleep_unless_stopping(next_delay(&mut backoff), stopping);
                continue;
            }
        };
        if batch.is_empty() {
            continue;
        }
        let records = batch.records();
        let result = transport.send(&records);
        let (delivered, error) = match result {
            Ok(()) => (records.len(), None),
            Err(e) => (e.delivered.min(records.len()), Some(e)),
        };
        // The receiver holds the first `delivered`; a record it refused for
        // good is passed over too (counted as failed), or it would block the
        // output forever.
        let refused = error.as_ref().is_some_and(|e| !e.retry) && delivered < records.len();
        let passed = delivered + usize::from(refused);
        if let Some(pos) = batch.position_after(passed) {
            spool.ack(pos, passed as u64);
        }
        match error {
            None => {
                stats.set_ok(delivered as u64);
                backoff = retry_delays();
            }
            Some(e) => {
                if delivered > 0 {
                    // Progress: the receiver is there; try the rest soon.
                    stats.set_ok(delivered as u64);
                    backoff = retry_delays();
                }
                if refused {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(output = name, seq = records[delivered].seq, error = %e, "the receiver refused an event for good; skipping it");
                    if let Ok(mut last) = stats.last_error.lock() {
                        *last = Some(e.message.clone());
                    }
                    continue;
                }
                let first_failure = stats.health() == Health::Ok;
                stats.set_error(&e.message);
                if first_failure {
                    tracing::warn!(output = name, error = %e, "delivery failed; spooling and retrying with backoff");
                }
                if stopping.load(Ordering::Relaxed) {
                    // No point waiting out a backoff: the spool keeps them.
                    let (left, _) = spool.pending();
                    tracing::warn!(
                        output = name,
                        events = left,
                        "stopping while the receiver fails; the next start delivers the spooled events"
                    );
                    return;
                }
                sleep_unless_stopping(next_delay(&mut backoff), stopping);
            }
        }
    }
}

fn sleep_unless_stopping(d: Duration, stopping: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stopping.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

/// A failing output's retry delays: doubled each time, at most
/// [`BACKOFF_FIRST`] the first time and [`BACKOFF_MAX`] ever, with jitter so
/// many hosts behind one receiver don't retry in step (backon draws each
/// delay from `[d, 2d)`, hence the halves); endless (the spool holds the
/// events).
fn retry_delays() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_FIRST / 2)
        .with_max_delay(BACKOFF_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

fn next_delay(delays: &mut backon::ExponentialBackoff) -> Duration {
    delays.next().unwrap_or(BACKOFF_MAX)
}

/// The spool directory of output `name` under `state_dir`.
#[must_use]
pub fn spool_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(crate::paths::SPOOL_DIR).join(name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        event::{Event, Kind},
        sinks::transport::Record,
    };

    /// An event of `kind` numbered `seq`, in a run or not.
    pub(crate) fn event(seq: u64, kind: Kind, in_run: bool) -> Event {
        use crate::event::{Attributed, RunRef, Timestamp};
        let mut e = Event::new(
            kind,
            seq,
            Timestamp(std::time::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000)),
            Arc::new(crate::identity::Host {
                name: "h".into(),
                boot_id: "b".into(),
            }),
        );
        e.run = in_run.then(|| RunRef {
            id: "r".into(),
            agent: "a".into(),
            principal: "p".into(),
            principal_claimed: None,
            parent_id: None,
            root_id: "r".into(),
            depth: 0,
            attribution: Attributed::Launch,
            tool_call: None,
            details: None,
        });
        e
    }

    pub(crate) fn batch_of(events: &[(u64, Kind, bool)]) -> EventBatch {
        EventBatch::new(
            events
                .iter()
                .map(|&(seq, kind, in_run)| event(seq, kind, in_run))
                .collect(),
        )
    }

    fn ctx(dir: &Path) -> OutputContext {
        OutputContext {
            state_dir: dir.to_owned(),
            hostname: "h".into(),
            instance_id: "i".into(),
        }
    }

    #[test]
    fn file_output_writes_every_line_and_close_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let spec: OutputSpec = format!("file:{}", path.display()).parse().unwrap();
        let outputs = Outputs::open(&[spec], &ctx(dir.path())).unwrap();
        let handles = outputs.handles();
        for i in 0..100 {
            outputs.send(&batch_of(&[(i, Kind::ProcessExec, false)]));
        }
        outputs.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(handles[0].stats.sent.load(Ordering::Relaxed), 100);
        assert_eq!(handles[0].dropped(), 0);
    }

    #[test]
    fn a_queue_over_its_events_bound_drops_the_batch_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let spec: OutputSpec = format!("file:{}", path.display()).parse().unwrap();
        let outputs = Outputs::open(&[spec], &ctx(dir.path())).unwrap();
        let handles = outputs.handles();
        let backlog = outputs.backlogs().remove(0);
        outputs.send(&batch_of(&[(1, Kind::ProcessExec, false)]));
        // A consumer behind: as many events waiting as the bound allows.
        while backlog.waiting() > 0 {
            std::thread::yield_now();
        }
        backlog.queued(backlog::QUEUE_EVENTS as usize);
        outputs.send(&batch_of(&[(2, Kind::ProcessExec, false)]));
        assert_eq!(handles[0].dropped(), 1, "over the bound: dropped, counted");
        backlog.took(backlog::QUEUE_EVENTS as usize);
        outputs.send(&batch_of(&[(3, Kind::ProcessExec, false)]));
        outputs.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, [1, 3]);
        assert_eq!(backlog.waiting(), 0, "every batch taken is counted off");
        assert_eq!(handles[0].stats.sent.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn filters_apply_per_output() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.jsonl");
        let b = dir.path().join("b.jsonl");
        let specs: Vec<OutputSpec> = vec![
            format!("file:{},kinds=process.exec", a.display())
                .parse()
                .unwrap(),
            format!("file:{},runs_only=true", b.display())
                .parse()
                .unwrap(),
        ];
        let outputs = Outputs::open(&specs, &ctx(dir.path())).unwrap();
        outputs.send(&batch_of(&[
            (1, Kind::ProcessExec, false),
            (2, Kind::ProcessExit, true),
            (3, Kind::ProcessExec, true),
        ]));
        outputs.close();
        let seqs = |p: &Path| -> Vec<u64> {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        assert_eq!(seqs(&a), [1, 3]);
        assert_eq!(seqs(&b), [2, 3]);
    }

    #[test]
    fn unwritable_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec: OutputSpec = "file:/nonexistent-dir/x.jsonl".parse().unwrap();
        let err = Outputs::open(&[spec], &ctx(dir.path())).err().unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir/x.jsonl"),
            "{err}"
        );
    }

    /// A transport that fails until told otherwise, and records what it got.
    struct Flaky {
        up: Arc<AtomicBool>,
        got: Arc<Mutex<Vec<u64>>>,
        partial_done: AtomicBool,
    }

    impl Transport for Flaky {
        fn send(&mut self, records: &[Record<'_>]) -> Result<(), transport::SendError> {
            if !self.up.load(Ordering::Relaxed) {
                return Err(transport::SendError::retry(0, "down"));
            }
            // Once, take half and fail: the rest must come again.
            let half = if self.partial_done.swap(true, Ordering::Relaxed) {
                records.len()
            } else {
                records.len().div_ceil(2)
            };
            self.got
                .lock()
                .unwrap()
                .extend(records[..half].iter().map(|r| r.seq));
            if half < records.len() {
                return Err(transport::SendError::retry(half, "partial"));
            }
            Ok(())
        }

        fn batch_bytes(&self) -> usize {
            512
        }
    }

    #[test]
    fn a_failing_receiver_gets_everything_in_order_once_it_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let stats = Arc::new(OutputStats::default());
        let up = Arc::new(AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let sender = {
            let (spool, stats, stopping) = (
                Arc::clone(&spool),
                Arc::clone(&stats),
                Arc::clone(&stopping),
            );
            let t = Flaky {
                up: Arc::clone(&up),
                got: Arc::clone(&got),
                partial_done: AtomicBool::new(false),
            };
            std::thread::spawn(move || send_loop("t", Box::new(t), &spool, &stats, &stopping))
        };
        let payload = vec![b'x'; 40];
        for seq in 1..=300 {
            spool
                .append(&[Record {
                    seq,
                    time_ns: 0,
                    kind: "process.exec",
                    payload: &payload,
                }])
                .unwrap();
        }
        spool.commit().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(stats.health(), Health::Retrying);
        assert!(spool.pending().0 == 300);
        up.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while spool.pending().0 > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        spool.close();
        stopping.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        assert_eq!(*got.lock().unwrap(), (1..=300).collect::<Vec<_>>());
        assert_eq!(stats.sent.load(Ordering::Relaxed), 300);
        assert_eq!(stats.health(), Health::Ok);
    }
}
