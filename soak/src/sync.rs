//! cpusync masters, one per vCPU, all at once: each call's function must run
//! exactly once on every CPU of its mask and nowhere else, and the call
//! returns only when all have run.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use lwkt_core::{CpuId, CpuMask, Cur, ThreadHandle, MAX_CPUS};

use crate::{fail, spawn, Soak};

/// What one master did.
#[derive(Debug, Default)]
pub(crate) struct Count {
    calls: AtomicU64,
    functions: AtomicU64,
}

/// The totals.
#[derive(Debug)]
pub(crate) struct Totals {
    pub(crate) masters: usize,
    pub(crate) calls: u64,
    pub(crate) functions: u64,
}

/// The mask of call `k` by the master on `cpu`: all CPUs, all but this
/// one, or this one and one other.
fn mask(n: usize, cpu: usize, k: u64) -> CpuMask {
    let me = CpuId::new(cpu as u32);
    match k % 3 {
        0 => CpuMask::all(n),
        1 => CpuMask::all(n).without(me),
        _ => {
            let other = (cpu + 1 + (k / 3) as usize % n.max(2).saturating_sub(1)) % n;
            CpuMask::single(me).with(CpuId::new(other as u32))
        }
    }
}

fn master(me: &mut Cur, s: &Soak, cpu: usize, who: &str, count: &Count, tick: &dyn Fn()) {
    let mut k = 0u64;
    while !s.over() {
        let m = mask(s.n, cpu, k);
        let hits: Vec<AtomicU32> = (0..MAX_CPUS).map(|_| AtomicU32::new(0)).collect();
        me.cpusync(m, &|my| {
            hits[my.id().index()].fetch_add(1, Ordering::Relaxed);
        });
        let mut ran = 0;
        for (c, h) in hits.iter().enumerate() {
            let h = h.load(Ordering::Relaxed);
            let want = u32::from(c < s.n && m.contains(CpuId::new(c as u32)));
            if h != want {
                fail(format_args!(
                    "{who}: call {k} with mask {m:#x} ran {h} times on cpu {c} (expected {want})"
                ));
            }
            ran += u64::from(h);
        }
        k += 1;
        count.calls.store(k, Ordering::Relaxed);
        count.functions.fetch_add(ran, Ordering::Relaxed);
        tick();
        // cpusync spins, it does not block: let this CPU's other threads run.
        me.yield_now();
    }
}

/// One master per vCPU.
pub(crate) fn start(cur: &mut Cur, s: &Arc<Soak>) -> Vec<(ThreadHandle, Arc<Count>)> {
    (0..s.n)
        .map(|c| {
            let w = s.workers.add(format!("cpusync master cpu {c}"), false);
            let count = Arc::new(Count::default());
            let (s, c2) = (s.clone(), count.clone());
            let h = spawn(cur, c, w.name().to_owned(), move |me| {
                master(me, &s, c, w.name(), &c2, &|| w.tick());
                w.done();
            });
            (h, count)
        })
        .collect()
}

/// Every master made calls.
pub(crate) fn check(masters: &[(ThreadHandle, Arc<Count>)]) -> Totals {
    let mut t = Totals {
        masters: masters.len(),
        calls: 0,
        functions: 0,
    };
    for (c, (_, m)) in masters.iter().enumerate() {
        let calls = m.calls.load(Ordering::Relaxed);
        if calls == 0 {
            fail(format_args!("cpusync master cpu {c} made no call"));
        }
        t.calls += calls;
        t.functions += m.functions.load(Ordering::Relaxed);
    }
    t
}
