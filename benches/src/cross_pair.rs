//! The cross-CPU `domsg` round trip, the cache-line ping-pong (its floor)
//! and a bare mailbox round trip (the floor of any message protocol),
//! measured between the same two lwkt threads, on CPU 0 and CPU 1 of one
//! 2-vCPU hosted machine, in alternating batches.
//!
//! The mailbox is what a message round trip cannot do without, and nothing
//! more: CPU 0 stores which letter it sends into a mailbox word, CPU 1
//! sees it, reads and updates the letter (its own cache line, as a
//! message is), and marks it answered; CPU 0 sees that. Three line
//! transfers in a row where the ping-pong has two. No queue, no
//! scheduler, no wake-up: a `domsg` can approach it, not beat it.
//!
//! Where the host puts the guest's two vCPU threads (same core, SMT
//! siblings, another core complex) sets the cost of a line transfer, and it
//! changes between processes and over time (docs/benchmark-notes.md,
//! sessions 8 and 15). Two separate measurements can see two placements;
//! a pair of batches taken back to back sees one. The `msg_cross_cpu`
//! criterion group and `examples/cross_ratio.rs` both measure through
//! [`cross_cpu_batches`].

use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use lwkt_core::{CpuId, Cur};
use lwkt_msg::{Incoming, Msg, Port};

/// The ping-pong's line: CPU 0 writes odd values, CPU 1 the next even one.
/// One machine at a time uses it (each [`cross_cpu_batches`] call runs the
/// ping-pong only from its own main thread and server).
static LINE: CachePadded<AtomicU64> = CachePadded::new(AtomicU64::new(0));

/// A request body with this bit set asks the server for that many
/// ping-pong rounds (after its reply); any other is a plain request, whose
/// body the server increments.
const PING_PONG: u64 = 1 << 63;

/// A request body with this bit set asks the server for that many mailbox
/// rounds (after its reply).
const MAILBOX: u64 = 1 << 62;

/// The mailbox word: 0 when empty, else 1 + the index of the letter sent.
static BOX: CachePadded<AtomicU64> = CachePadded::new(AtomicU64::new(0));

/// A letter: its body and whether it is answered, on its own line (as a
/// `Msg` is).
#[repr(align(64))]
struct Letter {
    body: AtomicU64,
    answered: AtomicU64,
}

/// Two letters, used in turn (so each send names a different one, as
/// successive messages may be).
static LETTERS: [Letter; 2] = [const {
    Letter {
        body: AtomicU64::new(0),
        answered: AtomicU64::new(1),
    }
}; 2];

/// `rounds` mailbox round trips from CPU 0.
fn mail(rounds: u64) {
    for i in 0..rounds {
        let k = (i % 2) as usize;
        let l = &LETTERS[k];
        l.answered.store(0, Ordering::Relaxed);
        BOX.store(k as u64 + 1, Ordering::Release);
        while l.answered.load(Ordering::Acquire) == 0 {
            std::hint::spin_loop();
        }
    }
}

/// CPU 1's side of `mail`: take the letter, add one to its body, answer.
fn answer(rounds: u64) {
    for _ in 0..rounds {
        let k = loop {
            let k = BOX.load(Ordering::Acquire);
            if k != 0 {
                break k;
            }
            std::hint::spin_loop();
        };
        BOX.store(0, Ordering::Relaxed);
        let l = &LETTERS[k as usize - 1];
        l.body
            .store(l.body.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        l.answered.store(1, Ordering::Release);
    }
}

/// Wait for `LINE` to read `v`.
fn wait_for(v: u64) {
    while LINE.load(Ordering::Acquire) != v {
        std::hint::spin_loop();
    }
}

/// `rounds` ping-pong rounds from CPU 0, from `base` (even, CPU 1 waiting).
fn ping(base: u64, rounds: u64) {
    for i in 0..rounds {
        LINE.store(base + 2 * i + 1, Ordering::Release);
        wait_for(base + 2 * i + 2);
    }
}

/// CPU 1's side of `ping`.
fn pong(base: u64, rounds: u64) {
    for i in 0..rounds {
        wait_for(base + 2 * i + 1);
        LINE.store(base + 2 * i + 2, Ordering::Release);
    }
}

/// Ask the server, by a `domsg` with `body`, to play the other side of a
/// floor; once it has replied, run `prepare` (untimed), then time `run`
/// with what `prepare` gave.
fn floor<S>(
    cur: &mut Cur,
    port: &'static Port<u64>,
    mut m: Pin<&mut Msg<u64>>,
    body: u64,
    prepare: impl FnOnce() -> S,
    run: impl FnOnce(S),
) -> Duration {
    *m.as_mut().body_mut() = body;
    port.domsg(cur, m.as_mut()).unwrap();
    let s = prepare();
    let t = Instant::now();
    run(s);
    t.elapsed()
}

/// The time of `rounds` ping-pong rounds with the server (which reads the
/// line, replies, then answers `rounds` pings).
fn ping_pong(
    cur: &mut Cur,
    port: &'static Port<u64>,
    m: Pin<&mut Msg<u64>>,
    rounds: u64,
) -> Duration {
    floor(
        cur,
        port,
        m,
        PING_PONG | rounds,
        || LINE.load(Ordering::Acquire),
        |base| ping(base, rounds),
    )
}

/// The time of `rounds` mailbox round trips with the server (which
/// replies, then answers `rounds` letters).
fn mailbox(
    cur: &mut Cur,
    port: &'static Port<u64>,
    m: Pin<&mut Msg<u64>>,
    rounds: u64,
) -> Duration {
    floor(cur, port, m, MAILBOX | rounds, || (), |()| mail(rounds))
}

/// The time of `rounds` `domsg` round trips to the server.
fn domsgs(
    cur: &mut Cur,
    port: &'static Port<u64>,
    mut m: Pin<&mut Msg<u64>>,
    rounds: u64,
) -> Duration {
    *m.as_mut().body_mut() = 0;
    let t = Instant::now();
    for _ in 0..rounds {
        port.domsg(cur, m.as_mut()).unwrap();
    }
    let d = t.elapsed();
    assert_eq!(*m.body(), rounds, "every request answered once");
    d
}

/// One pair of batches' worth of [`cross_cpu_batches`]: `rounds` round
/// trips of each kind, and the time each kind took.
#[derive(Debug, Clone, Copy)]
pub struct CrossBatch {
    /// Round trips of each kind.
    pub rounds: u64,
    /// `domsg` to the server's thread port.
    pub domsg: Duration,
    /// The cache-line ping-pong with the server.
    pub ping_pong: Duration,
    /// The bare mailbox round trip with the server.
    pub mailbox: Duration,
}

/// Boot a 2-vCPU machine with a server thread on CPU 1; from the main
/// thread on CPU 0 run `iters` `domsg` round trips to the server's thread
/// port, `iters` ping-pong rounds and `iters` mailbox round trips with the
/// same server, in batches of at most `batch` of each, one batch of each
/// kind after the other (which kind goes first rotates). Returns one
/// [`CrossBatch`] per set of batches.
///
/// ```no_run
/// let sets = lwkt_benches::cross_pair::cross_cpu_batches(10_000, 1_000);
/// let domsg: std::time::Duration = sets.iter().map(|s| s.domsg).sum();
/// let ping_pong: std::time::Duration = sets.iter().map(|s| s.ping_pong).sum();
/// println!("domsg / ping-pong: {:.2}", domsg.as_secs_f64() / ping_pong.as_secs_f64());
/// ```
pub fn cross_cpu_batches(iters: u64, batch: u64) -> Vec<CrossBatch> {
    assert!(batch > 0);
    crate::on_lwkt(2, move |cur| {
        // A `'static` thread port, as the other msg benches use: a
        // counted one (`PortRef`) adds a count taken and given up per put.
        let slot: Arc<OnceLock<&'static Port<u64>>> = Arc::new(OnceLock::new());
        let s2 = slot.clone();
        let h = cur
            .spawn_on(CpuId::new(1), move |me| {
                let port = Port::thread(me).leak();
                s2.set(port).ok().unwrap();
                while let Incoming::Request(mut m) = port.waitport(me) {
                    let k = *m;
                    if k & PING_PONG != 0 {
                        // Nobody writes the line until we have replied.
                        let base = LINE.load(Ordering::Acquire);
                        m.reply(me.my_cpu(), Ok(()));
                        pong(base, k & !PING_PONG);
                    } else if k & MAILBOX != 0 {
                        m.reply(me.my_cpu(), Ok(()));
                        answer(k & !MAILBOX);
                    } else {
                        *m += 1;
                        m.reply(me.my_cpu(), Ok(()));
                    }
                }
            })
            .expect("server");
        let port = loop {
            if let Some(p) = slot.get() {
                break *p;
            }
            cur.yield_now();
        };
        let mut m = pin!(Msg::new(0u64));
        port.domsg(cur, m.as_mut()).unwrap(); // warm: the server waits
        let mut out = Vec::new();
        let mut left = iters;
        while left > 0 {
            let n = left.min(batch);
            left -= n;
            let (mut d, mut p, mut x) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
            for kind in 0..3 {
                match (kind + out.len()) % 3 {
                    0 => d = domsgs(cur, port, m.as_mut(), n),
                    1 => p = ping_pong(cur, port, m.as_mut(), n),
                    _ => x = mailbox(cur, port, m.as_mut(), n),
                }
            }
            out.push(CrossBatch {
                rounds: n,
                domsg: d,
                ping_pong: p,
                mailbox: x,
            });
        }
        port.close_from(cur.my_cpu());
        cur.join(&h);
        out
    })
}
