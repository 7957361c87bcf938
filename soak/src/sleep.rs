//! Sleep/wakeup pairs: a ping thread on vCPU c and a pong thread on vCPU
//! c+1 take turns on a counter, each sleeping (`sleep_until`) until it is
//! its turn and waking the other (`wakeup`). A lost wakeup stops a pair
//! (the watchdog names it); a turn taken twice or skipped is seen in the
//! counter.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lwkt_core::{Cur, ThreadHandle};

use crate::{fail, spawn, Inject, Soak};

/// One pair's shared state.
#[derive(Debug, Default)]
struct Pair {
    /// Even: ping's turn; odd: pong's.
    turn: AtomicU64,
    /// Set by ping, on its turn, when the soak is over.
    stop: AtomicBool,
    pings: AtomicU64,
    pongs: AtomicU64,
}

impl Pair {
    /// The sleep channel: the counter's address.
    fn chan(&self) -> usize {
        &self.turn as *const AtomicU64 as usize
    }
}

/// A started pair.
pub(crate) struct Started {
    pair: Arc<Pair>,
    pub(crate) handles: Vec<ThreadHandle>,
}

/// The totals, checked.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) pairs: usize,
    pub(crate) rounds: u64,
}

fn ping(me: &mut Cur, s: &Soak, pair: usize, p: &Pair, who: &str, tick: &dyn Fn()) {
    let mut i = 0u64;
    loop {
        me.sleep_until(p.chan(), || p.turn.load(Ordering::Acquire) % 2 == 0);
        let k = p.turn.load(Ordering::Acquire);
        if k != 2 * i {
            fail(format_args!(
                "{who}: turn {k} when {} was due (a turn taken twice or skipped)",
                2 * i
            ));
        }
        if s.over() {
            p.stop.store(true, Ordering::Release);
            me.my_cpu().wakeup(p.chan());
            break;
        }
        p.turn.store(2 * i + 1, Ordering::Release);
        if !(pair == 0 && s.inject(Inject::LostWakeup, i)) {
            me.my_cpu().wakeup(p.chan());
        }
        i += 1;
        p.pings.store(i, Ordering::Relaxed);
        tick();
    }
}

fn pong(me: &mut Cur, p: &Pair, who: &str, tick: &dyn Fn()) {
    let mut j = 0u64;
    loop {
        me.sleep_until(p.chan(), || {
            p.turn.load(Ordering::Acquire) % 2 == 1 || p.stop.load(Ordering::Acquire)
        });
        let k = p.turn.load(Ordering::Acquire);
        if k % 2 == 0 {
            if p.stop.load(Ordering::Acquire) {
                break;
            }
            fail(format_args!(
                "{who}: woken on ping's turn {k} with its condition false"
            ));
        }
        if k != 2 * j + 1 {
            fail(format_args!(
                "{who}: turn {k} when {} was due (a turn taken twice or skipped)",
                2 * j + 1
            ));
        }
        p.turn.store(k + 1, Ordering::Release);
        me.my_cpu().wakeup(p.chan());
        j += 1;
        p.pongs.store(j, Ordering::Relaxed);
        tick();
    }
}

/// A pair per vCPU: ping on c, pong on c+1.
pub(crate) fn start(cur: &mut Cur, s: &Arc<Soak>) -> Vec<Started> {
    (0..s.n)
        .map(|c| {
            let pair = Arc::new(Pair::default());
            let d = (c + 1) % s.n;
            let wp = s
                .workers
                .add(format!("sleep ping cpu {c} (pair {c})"), false);
            let wq = s
                .workers
                .add(format!("sleep pong cpu {d} (pair {c})"), false);
            let (s1, p1) = (s.clone(), pair.clone());
            let h1 = spawn(cur, c, wp.name().to_owned(), move |me| {
                ping(me, &s1, c, &p1, wp.name(), &|| wp.tick());
                wp.done();
            });
            let p2 = pair.clone();
            let h2 = spawn(cur, d, wq.name().to_owned(), move |me| {
                pong(me, &p2, wq.name(), &|| wq.tick());
                wq.done();
            });
            Started {
                pair,
                handles: vec![h1, h2],
            }
        })
        .collect()
}

/// Every pair ended with as many pongs as pings.
pub(crate) fn check(pairs: &[Started]) -> Totals {
    let mut rounds = 0;
    for (c, st) in pairs.iter().enumerate() {
        let (i, j) = (
            st.pair.pings.load(Ordering::Relaxed),
            st.pair.pongs.load(Ordering::Relaxed),
        );
        if i != j || i == 0 {
            fail(format_args!("sleep pair {c}: {i} pings, {j} pongs"));
        }
        rounds += i;
    }
    Totals {
        pairs: pairs.len(),
        rounds,
    }
}
