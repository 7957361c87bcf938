//! The workers' progress counters and the watchdog that fails a soak whose
//! worker stops moving (a lost message or a lost wakeup shows up as a hang,
//! never as a count).

use std::fmt::{self, Display};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Soak;

/// End the soak: a message naming what broke, exit status 1.
pub(crate) fn fail(msg: impl Display) -> ! {
    eprintln!("lwkt-soak: FAIL: {msg}");
    std::process::exit(1)
}

/// One long-running thread of the soak.
#[derive(Debug)]
pub(crate) struct Worker {
    name: String,
    /// Unique and nonzero: the token workers write it into the accounts.
    id: u64,
    progress: AtomicU64,
    done: AtomicBool,
    /// Waits for others' work (a server): no progress of its own is
    /// expected, so the watchdog does not judge it.
    passive: bool,
}

impl Worker {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// One more unit of work done.
    pub(crate) fn tick(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn done(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Every worker of the soak.
#[derive(Debug, Default)]
pub(crate) struct Workers {
    list: Mutex<Vec<Arc<Worker>>>,
    finished: AtomicBool,
}

impl Workers {
    /// Register a worker.
    pub(crate) fn add(&self, name: String, passive: bool) -> Arc<Worker> {
        let mut l = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let w = Arc::new(Worker {
            name,
            id: l.len() as u64 + 1,
            progress: AtomicU64::new(0),
            done: AtomicBool::new(false),
            passive,
        });
        l.push(w.clone());
        w
    }

    /// The machine has shut down: the watchdog stops.
    pub(crate) fn finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<Arc<Worker>> {
        self.list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Listing<'a>(&'a [Arc<Worker>]);

impl Display for Listing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for w in self.0 {
            writeln!(
                f,
                "  {:<28} progress {:>10}{}",
                w.name,
                w.progress.load(Ordering::Relaxed),
                if w.done.load(Ordering::Relaxed) {
                    ", done"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// Start the watchdog (a host thread): a worker that is not done and makes
/// no progress for `stall`, or a run longer than `limit`, fails the soak
/// with every worker's progress.
pub(crate) fn start(soak: Arc<Soak>, stall: Duration, limit: Duration) {
    let begin = Instant::now();
    std::thread::Builder::new()
        .name("soak-watchdog".into())
        .spawn(move || {
            let mut last: Vec<(u64, Instant)> = Vec::new();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if soak.workers.finished.load(Ordering::Relaxed) {
                    return;
                }
                let ws = soak.workers.snapshot();
                let now = Instant::now();
                last.resize(ws.len(), (0, now));
                let mut stalled = Vec::new();
                for (w, (seen, at)) in ws.iter().zip(last.iter_mut()) {
                    let p = w.progress.load(Ordering::Relaxed);
                    if p != *seen {
                        *seen = p;
                        *at = now;
                    } else if !w.passive
                        && !w.done.load(Ordering::Relaxed)
                        && now - *at >= stall
                    {
                        stalled.push(w.name.clone());
                    }
                }
                if !stalled.is_empty() {
                    fail(format_args!(
                        "no progress for {} s in {} (a lost message or a lost wakeup?); workers:\n{}",
                        stall.as_secs(),
                        stalled.join(", "),
                        Listing(&ws)
                    ));
                }
                if now - begin > limit {
                    fail(format_args!(
                        "the soak did not finish within {} s; workers:\n{}",
                        limit.as_secs(),
                        Listing(&ws)
                    ));
                }
            }
        })
        .unwrap_or_else(|e| fail(format_args!("cannot start the watchdog: {e}")));
}
