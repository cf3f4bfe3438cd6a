//! The scheduling class of the daemon's worker threads.
//!
//! The threads that take the pipeline's batches (each output's writer,
//! spooler and sender, the store writer, the detection thread) run as
//! `SCHED_BATCH`: the same weight (nice value) as today, so their share of
//! the CPU under contention is unchanged, and a busy (or hostile) workload
//! cannot starve them any more than before; but a batch thread that wakes
//! does not preempt the task running on that CPU (the kernel's wake-up
//! preemption skips non-`SCHED_NORMAL` tasks): it runs when that task
//! sleeps, or at the next scheduler tick. The workload the sensor watches is
//! then interrupted by the kernel reader's drains only, not by every hand-off
//! of a batch behind it. Their work has no latency target tighter than a
//! tick: the file output's lines trail the reader's drain by one hand-off,
//! the store commits every 100 ms.
//!
//! Not a lower priority (a higher nice value, `SCHED_IDLE`): a busy agent
//! would then starve the outputs and the store, their queues would fill,
//! and the reader would hold back until the ring overflowed. Not a higher one
//! either: the reader keeps `SCHED_NORMAL` (it wakes on its drain timer and
//! must keep up with the ring).

/// Puts the calling thread in `SCHED_BATCH` (its nice value kept). A
/// failure is logged and the thread stays as it was, which is always safe.
pub fn batch_worker(thread: &str) {
    let param = nix::libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call, and SCHED_BATCH takes priority 0.
    let rc = unsafe { nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &raw const param) };
    if rc != 0 {
        tracing::warn!(
            thread,
            error = %std::io::Error::last_os_error(),
            "cannot put the thread in SCHED_BATCH; it keeps the normal class"
        );
    }
}

/// The calling thread's scheduling policy (`SCHED_*`), for tests.
#[must_use]
pub fn current_policy() -> i32 {
    // SAFETY: pid 0 is the calling thread; no memory is passed.
    unsafe { nix::libc::sched_getscheduler(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_thread_runs_as_batch_with_its_nice_value() {
        let (policy, nice_before, nice_after) = std::thread::spawn(|| {
            // SAFETY: getpriority reads the calling thread's (who 0) nice value.
            let nice = || unsafe { nix::libc::getpriority(nix::libc::PRIO_PROCESS, 0) };
            let nice_before = nice();
            batch_worker("test");
            (current_policy(), nice_before, nice())
        })
        .join()
        .unwrap();
        assert_eq!(policy, nix::libc::SCHED_BATCH);
        assert_eq!(nice_before, nice_after, "the weight stays");
        // The spawning thread is left as it was.
        assert_eq!(current_policy(), nix::libc::SCHED_OTHER);
    }
}
