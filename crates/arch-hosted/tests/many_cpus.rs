//! A machine of `MAX_CPUS` (256) vCPUs on whatever the host has (issue 19):
//! IPIs from every CPU to every other, a `cpusync` over all of them, and a
//! token taken from every CPU, with every count checked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lwkt_arch_hosted::Machine;
use lwkt_core::token::{Token, TokenCell};
use lwkt_core::{CpuId, CpuMask, Cur, MyCpu, ThreadHandle, MAX_CPUS};

const N: usize = MAX_CPUS;

/// `hits[to * N + from]`: IPIs from `from` run on `to`.
static HITS: [AtomicU64; N * N] = [const { AtomicU64::new(0) }; N * N];
static SYNCS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static TOK: Token = Token::new("many_cpus");
static COUNT: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);

fn hit(my: MyCpu<'_>, from: usize, _: usize) {
    HITS[my.id().index() * N + from].fetch_add(1, Ordering::Relaxed);
}

fn on_every_cpu(cur: &mut Cur, f: impl Fn(&mut Cur, usize) + Send + Sync + 'static) {
    let f = Arc::new(f);
    let ts: Vec<ThreadHandle> = (0..N)
        .map(|c| {
            let f = f.clone();
            cur.spawn_on(CpuId::new(c as u32), move |me| f(me, c))
                .expect("spawn")
        })
        .collect();
    for t in &ts {
        cur.join(t);
    }
}

#[test]
fn ipis_cpusync_and_a_token_on_256_cpus() {
    let (count, report) = Machine::new(N)
        .expect("a machine of MAX_CPUS vCPUs")
        .run_with_report(|cur| {
            assert_eq!(cur.my_cpu().ncpus(), N);
            // 1. Every CPU sends one IPI to every other CPU.
            on_every_cpu(cur, |me, c| {
                for t in (0..N).filter(|&t| t != c) {
                    me.my_cpu()
                        .send_ipi(CpuId::new(t as u32), hit, c, 0)
                        .expect("send_ipi");
                }
            });
            // Each ran on its target by the time the senders are joined?
            // Not necessarily: wait for the targets to drain.
            let want = (N * (N - 1)) as u64;
            loop {
                let got: u64 = HITS.iter().map(|h| h.load(Ordering::Relaxed)).sum();
                assert!(got <= want, "{got} IPIs ran, {want} were sent");
                if got == want {
                    break;
                }
                cur.yield_now();
            }
            for to in 0..N {
                for from in 0..N {
                    let h = HITS[to * N + from].load(Ordering::Relaxed);
                    assert_eq!(
                        h,
                        u64::from(to != from),
                        "IPIs from cpu {from} run on cpu {to}"
                    );
                }
            }
            // 2. cpusync over all CPUs, from CPU 0 and from the last one.
            for c in [0, N - 1] {
                let t = cur
                    .spawn_on(CpuId::new(c as u32), |me| {
                        me.cpusync(CpuMask::all(N), &|my| {
                            SYNCS[my.id().index()].fetch_add(1, Ordering::Relaxed);
                        });
                    })
                    .expect("spawn");
                cur.join(&t);
            }
            for (c, s) in SYNCS.iter().enumerate() {
                assert_eq!(s.load(Ordering::Relaxed), 2, "cpusync runs on cpu {c}");
            }
            // 3. One token taken from every CPU, a few times each, with a
            //    yield between holds so that the holders interleave. (A
            //    yield inside a hold would let others in: an LWKT token
            //    serializes only while its holder runs.)
            on_every_cpu(cur, |me, _| {
                for _ in 0..4 {
                    me.with_token(&TOK, |me, held| {
                        let v = *COUNT.get(held, me);
                        for _ in 0..64 {
                            std::hint::spin_loop(); // widen the window
                        }
                        *COUNT.get_mut(held, me) = v + 1;
                    });
                    me.yield_now();
                }
            });
            cur.with_token(&TOK, |me, held| *COUNT.get(held, me))
        });
    assert_eq!(
        count,
        4 * N as u64,
        "token increments (one lost under the token?)"
    );
    assert_eq!(report.cpus.len(), N);
}
