//! Hashing of pinned (`sha256`) exec rule files, off the event thread.
//!
//! A pinned file is hashed again when its stamp (identity and change time)
//! moves. Whoever can write the path decides how long that takes, so the
//! refresh on the event path never reads a file: it asks this thread and
//! takes the answer on a later refresh. Until then the kernel keeps the old
//! rule, whose identity and change time no longer match the changed file
//! (see `ExecRule::ctime_sec`): the changed file is denied meanwhile, never
//! allowed unchecked.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Condvar, Mutex, OnceLock},
};

use super::resolve::{self, Hashed, ResolveError, Stamp};

/// A request or its answer, by path and pinned sum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    path: PathBuf,
    sha256: String,
}

#[derive(Debug)]
enum Job {
    /// Waiting for the thread; the stamp it was asked for.
    Pending(Option<Stamp>),
    /// The answer for the file as it was stamped then.
    Done(Option<Stamp>, Result<Hashed, ResolveError>),
}

struct Hasher {
    jobs: Mutex<HashMap<Key, Job>>,
    wake: Condvar,
}

fn hasher() -> &'static Hasher {
    static HASHER: OnceLock<Hasher> = OnceLock::new();
    HASHER.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("sensor-hash".into())
            .spawn(run);
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the file hashing thread; pinned files are not re-hashed");
        }
        Hasher {
            jobs: Mutex::new(HashMap::new()),
            wake: Condvar::new(),
        }
    })
}

fn run() {
    let h = hasher();
    loop {
        let next = {
            let Ok(mut jobs) = h.jobs.lock() else { return };
            loop {
                let pending = jobs.iter().find_map(|(k, j)| match j {
                    Job::Pending(stamp) => Some((k.clone(), *stamp)),
                    Job::Done(..) => None,
                });
                if let Some(p) = pending {
                    break p;
                }
                jobs = match h.wake.wait(jobs) {
                    Ok(j) => j,
                    Err(_) => return,
                };
            }
        };
        let (key, stamp) = next;
        let result = resolve::resolve_pinned(&key.path.to_string_lossy(), &key.sha256);
        if let Ok(mut jobs) = h.jobs.lock() {
            jobs.insert(key, Job::Done(stamp, result));
        }
    }
}

/// The answer for `path` pinned to `sha256` as stamped `stamp`, once the
/// thread has it; asks for it (and returns `None`) otherwise.
pub fn hashed(
    path: &str,
    sha256: &str,
    stamp: Option<Stamp>,
) -> Option<Result<Hashed, ResolveError>> {
    let h = hasher();
    let key = Key {
        path: PathBuf::from(path),
        sha256: sha256.to_owned(),
    };
    let Ok(mut jobs) = h.jobs.lock() else {
        return None;
    };
    match jobs.get(&key) {
        Some(Job::Done(s, _)) if *s == stamp => match jobs.remove(&key) {
            Some(Job::Done(_, result)) => Some(result),
            _ => None,
        },
        Some(Job::Pending(s)) if *s == stamp => None,
        _ => {
            jobs.insert(key, Job::Pending(stamp));
            h.wake.notify_one();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn answers_come_from_the_thread() {
        let (sum, _) = resolve::sha256_file(std::path::Path::new("/usr/bin/true")).unwrap();
        let stamp = Stamp::of(std::path::Path::new("/usr/bin/true"));
        let deadline = Instant::now() + Duration::from_secs(10);
        let answer = loop {
            if let Some(a) = hashed("/usr/bin/true", &sum, stamp) {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "no answer from the hashing thread"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(answer.is_ok(), "{answer:?}");
    }
}
