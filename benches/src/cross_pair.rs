//! The cross-CPU `domsg` round trip and the cache-line ping-pong (its
//! floor), measured between the same two lwkt threads, on CPU 0 and CPU 1 of
//! one 2-vCPU hosted machine, in alternating batches.
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

/// The time of `rounds` ping-pong rounds with the server.
fn ping_pong(
    cur: &mut Cur,
    port: &'static Port<u64>,
    mut m: Pin<&mut Msg<u64>>,
    rounds: u64,
) -> Duration {
    *m.as_mut().body_mut() = PING_PONG | rounds;
    // The server reads the line, replies, then answers `rounds` pings.
    port.domsg(cur, m.as_mut()).unwrap();
    let base = LINE.load(Ordering::Acquire);
    let t = Instant::now();
    ping(base, rounds);
    t.elapsed()
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

/// Boot a 2-vCPU machine with a server thread on CPU 1; from the main
/// thread on CPU 0 run `iters` `domsg` round trips to the server's thread
/// port and `iters` ping-pong rounds with the same server, in batches of at
/// most `batch` of each, one batch of each kind after the other (which
/// kind goes first alternates). Returns, per pair of batches, (rounds,
/// `domsg` time, ping-pong time).
///
/// ```no_run
/// let pairs = lwkt_benches::cross_pair::cross_cpu_batches(10_000, 1_000);
/// let domsg: std::time::Duration = pairs.iter().map(|p| p.1).sum();
/// let ping_pong: std::time::Duration = pairs.iter().map(|p| p.2).sum();
/// println!("domsg / ping-pong: {:.2}", domsg.as_secs_f64() / ping_pong.as_secs_f64());
/// ```
pub fn cross_cpu_batches(iters: u64, batch: u64) -> Vec<(u64, Duration, Duration)> {
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
                    if k & PING_PONG == 0 {
                        *m += 1;
                        m.reply(me.my_cpu(), Ok(()));
                    } else {
                        // Nobody writes the line until we have replied.
                        let base = LINE.load(Ordering::Acquire);
                        m.reply(me.my_cpu(), Ok(()));
                        pong(base, k & !PING_PONG);
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
            let (d, p) = if out.len() % 2 == 0 {
                let p = ping_pong(cur, port, m.as_mut(), n);
                (domsgs(cur, port, m.as_mut(), n), p)
            } else {
                let d = domsgs(cur, port, m.as_mut(), n);
                (d, ping_pong(cur, port, m.as_mut(), n))
            };
            out.push((n, d, p));
        }
        port.close_from(cur.my_cpu());
        cur.join(&h);
        out
    })
}
