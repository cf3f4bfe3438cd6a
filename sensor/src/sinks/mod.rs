//! Outputs. Each output has its own bounded queue and its own writer thread,
//! so a slow or broken output never stalls the kernel reader or the others:
//! when its queue is full the lines are dropped and counted, and the counts
//! reach `sensor status` and `sensor.lost` events.

mod file;
mod spec;
pub mod transport;

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
};

pub use self::spec::{Format, OutputSpec, SpecError};

/// Batches of JSON lines waiting per output.
const QUEUE_BATCHES: usize = 4096;

/// A batch of complete JSON lines, shared by every output.
#[derive(Debug, Clone)]
pub struct Batch {
    pub bytes: Arc<Vec<u8>>,
    pub lines: u64,
}

/// Counters of one output.
#[derive(Debug, Default)]
pub struct OutputStats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub write_errors: AtomicU64,
}

/// Why an output could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("output {spec}: cannot open {path}")]
    Open {
        spec: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("output {spec}: cannot start its writer thread")]
    Thread {
        spec: String,
        #[source]
        source: std::io::Error,
    },
}

struct Output {
    spec: String,
    tx: SyncSender<Batch>,
    stats: Arc<OutputStats>,
    thread: JoinHandle<()>,
}

/// All outputs; [`Outputs::send`] fans a batch out to each.
pub struct Outputs {
    outputs: Vec<Output>,
}

/// Read-only view of an output's counters, for status.
#[derive(Debug, Clone)]
pub struct OutputHandle {
    pub spec: String,
    pub stats: Arc<OutputStats>,
}

impl Outputs {
    /// Opens every output (files are opened now, so a bad path fails start-up).
    pub fn open(specs: &[OutputSpec]) -> Result<Self, SinkError> {
        let mut outputs = Vec::with_capacity(specs.len());
        for spec in specs {
            let writer: Box<dyn Write + Send> = match spec {
                OutputSpec::Stdout { .. } => Box::new(std::io::stdout()),
                OutputSpec::File { path, .. } => {
                    Box::new(file::open(path).map_err(|source| SinkError::Open {
                        spec: spec.to_string(),
                        path: path.clone(),
                        source,
                    })?)
                }
            };
            let (tx, rx) = sync_channel(QUEUE_BATCHES);
            let stats = Arc::new(OutputStats::default());
            let thread_stats = Arc::clone(&stats);
            let name = spec.to_string();
            let thread = std::thread::Builder::new()
                .name(format!("output {name}"))
                .spawn(move || write_loop(&name, writer, &rx, &thread_stats))
                .map_err(|source| SinkError::Thread {
                    spec: spec.to_string(),
                    source,
                })?;
            outputs.push(Output {
                spec: spec.to_string(),
                tx,
                stats,
                thread,
            });
        }
        Ok(Self { outputs })
    }

    /// Counters of each output.
    #[must_use]
    pub fn handles(&self) -> Vec<OutputHandle> {
        self.outputs
            .iter()
            .map(|o| OutputHandle {
                spec: o.spec.clone(),
                stats: Arc::clone(&o.stats),
            })
            .collect()
    }

    /// Queues a batch on every output; an output whose queue is full drops it (counted).
    pub fn send(&self, batch: &Batch) {
        for o in &self.outputs {
            match o.tx.try_send(batch.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                    o.stats.dropped.fetch_add(b.lines, Ordering::Relaxed);
                }
            }
        }
    }

    /// Closes the queues and waits until every output wrote what it had.
    pub fn close(self) {
        for o in self.outputs {
            drop(o.tx);
            if o.thread.join().is_err() {
                tracing::error!(output = %o.spec, "output thread panicked");
            }
        }
    }
}

fn write_loop(
    name: &str,
    writer: Box<dyn Write + Send>,
    rx: &Receiver<Batch>,
    stats: &OutputStats,
) {
    let mut w = std::io::BufWriter::with_capacity(1 << 16, writer);
    let mut failing = false;
    loop {
        // Block for the next batch; flush whenever the queue runs dry.
        let batch = match rx.try_recv() {
            Ok(b) => b,
            Err(_) => {
                if w.flush().is_err() {
                    stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                match rx.recv() {
                    Ok(b) => b,
                    Err(_) => break,
                }
            }
        };
        match w.write_all(&batch.bytes) {
            Ok(()) => {
                stats.written.fetch_add(batch.lines, Ordering::Relaxed);
                failing = false;
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                stats.dropped.fetch_add(batch.lines, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_output_writes_every_line_and_close_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let outputs = Outputs::open(&[OutputSpec::File {
            path: path.clone(),
            format: Format::Json,
        }])
        .unwrap();
        let handles = outputs.handles();
        for i in 0..100 {
            outputs.send(&Batch {
                bytes: Arc::new(format!("{{\"n\":{i}}}\n").into_bytes()),
                lines: 1,
            });
        }
        outputs.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100);
        assert_eq!(handles[0].stats.written.load(Ordering::Relaxed), 100);
        assert_eq!(handles[0].stats.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn unwritable_file_is_an_error_naming_it() {
        let err = Outputs::open(&[OutputSpec::File {
            path: "/nonexistent-dir/x.jsonl".into(),
            format: Format::Json,
        }])
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("/nonexistent-dir/x.jsonl"),
            "{err}"
        );
    }
}
