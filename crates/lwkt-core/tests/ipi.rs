//! IPI queues on the hosted backend: critical-section deferral, delivery to
//! a thread that spins, ordering, and a many-million-message stress run.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, IpiMsg, MyCpu};

fn cpu(n: u32) -> CpuId {
    CpuId::new(n)
}

/// An IPI that arrives inside a critical section runs exactly once, at the
/// final `crit_exit`, not before (also with nesting).
#[test]
fn ipi_inside_a_critical_section_runs_once_at_the_final_exit() {
    static RAN: AtomicUsize = AtomicUsize::new(0);
    fn bump(_: MyCpu<'_>, _: usize, _: usize) {
        RAN.fetch_add(1, Ordering::SeqCst);
    }
    Machine::new(2).unwrap().run(|cur| {
        for round in 0..20usize {
            RAN.store(0, Ordering::SeqCst);
            let ready = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicBool::new(false));
            let (r2, s2) = (ready.clone(), sent.clone());
            let sender = cur
                .spawn_on(cpu(1), move |me| {
                    while !r2.load(Ordering::SeqCst) {
                        me.yield_now();
                    }
                    me.my_cpu().send_ipi(cpu(0), bump, 0, 0).unwrap();
                    s2.store(true, Ordering::SeqCst);
                })
                .unwrap();
            cur.crit_enter();
            if round % 2 == 1 {
                cur.crit_enter(); // nested
            }
            ready.store(true, Ordering::SeqCst);
            // Wait until the interrupt has arrived and been deferred (the
            // CPU's time-slice timer may be deferred too: wait for the
            // send, whose kick of a running CPU records the IPI at once).
            while !sent.load(Ordering::SeqCst) || !cur.my_cpu().has_deferred() {
                std::hint::spin_loop();
            }
            assert_eq!(
                RAN.load(Ordering::SeqCst),
                0,
                "IPI ran inside a critical section"
            );
            if round % 2 == 1 {
                cur.crit_exit();
                assert_eq!(
                    RAN.load(Ordering::SeqCst),
                    0,
                    "IPI ran before the outermost crit_exit"
                );
            }
            cur.crit_exit();
            assert_eq!(
                RAN.load(Ordering::SeqCst),
                1,
                "deferred IPI did not run at crit_exit"
            );
            cur.join(&sender);
            for _ in 0..100 {
                cur.yield_now();
            }
            assert_eq!(RAN.load(Ordering::SeqCst), 1, "deferred IPI ran twice");
        }
    });
}

/// A thread that busy-waits outside any critical section, never yielding,
/// still receives lwkt's own IPIs (here: making another thread of its CPU
/// runnable): the hosted backend interrupts it (SIGUSR1), as hardware
/// would: its kick watchdog signals a target that leaves a posted kick
/// unanswered (or the kick signals at once when vCPUs outnumber cores), or
/// the vCPU's timer signal comes first.
#[test]
fn a_spinning_thread_is_interrupted_by_an_ipi() {
    static SPINNING: AtomicBool = AtomicBool::new(false);
    let (_, report) = Machine::new(2).unwrap().run_with_report(|cur| {
        let sleeper = cur
            .spawn_on(cpu(1), |me| {
                me.deschedule_self();
                me.switch();
            })
            .unwrap();
        let spinner = cur
            .spawn_on(cpu(1), |me| {
                let before = me.my_cpu().stats().ipis_received;
                SPINNING.store(true, Ordering::SeqCst);
                while me.my_cpu().stats().ipis_received == before {
                    std::hint::spin_loop();
                }
            })
            .unwrap();
        // Send once the spinner spins (so only an interrupt can reach it).
        while !SPINNING.load(Ordering::SeqCst) {
            cur.yield_now();
        }
        cur.my_cpu().schedule(&sleeper);
        cur.join(&spinner);
        cur.join(&sleeper);
    });
    // The watchdog's signal, or the vCPU's own timer signal (its time
    // slice's timer, 10 ms on, when the watchdog is slow to run on a
    // loaded host): either runs the IPI in the signal handler.
    assert!(
        report.signals[1] + report.timer_signals[1] >= 1,
        "no signal reached the spinner: {report}"
    );
}

/// Hole 10 of the audit: IPI functions ran inside the SIGUSR1 handler, so
/// one that allocates, landing while the interrupted thread was inside
/// `malloc`, deadlocked on the C library's lock. Now the handler runs only
/// lwkt's own IPI functions; a user's runs at the thread's next
/// critical-section exit, where allocating is fine.
#[test]
fn ipi_functions_may_allocate_while_the_target_allocates() {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    fn alloc(_: MyCpu<'_>, n: usize, _: usize) {
        let v = std::hint::black_box(vec![1u8; n]);
        RUNS.fetch_add(v.len() / n, Ordering::Relaxed);
    }
    const SENDS: usize = 50_000;
    common::within_seconds(
        120,
        "ipi_functions_may_allocate_while_the_target_allocates",
        || {
            Machine::new(2).unwrap().run(|cur| {
                static STOP: AtomicBool = AtomicBool::new(false);
                let allocator = cur
                    .spawn_on(cpu(1), |me| {
                        let mut keep = Vec::new();
                        let mut last = std::time::Instant::now();
                        while !STOP.load(Ordering::Relaxed) {
                            // Allocation outside any critical section, beyond
                            // the per-thread cache's sizes (so under the
                            // allocator's lock): where a signal lands inside
                            // malloc.
                            keep.push(vec![0u8; 2048 + keep.len() * 61 % 30_000]);
                            if keep.len() > 64 {
                                keep.clear();
                            }
                            // Now and then a call into lwkt, as real thread
                            // code makes: the IPIs that wait run here. Rarely
                            // enough that the watchdog signals in between.
                            if last.elapsed() > std::time::Duration::from_millis(1) {
                                me.yield_now();
                                last = std::time::Instant::now();
                            }
                        }
                    })
                    .unwrap();
                for i in 0..SENDS {
                    cur.my_cpu()
                        .send_ipi(cpu(1), alloc, 2048 + i * 97 % 30_000, 0)
                        .unwrap();
                    if i % 64 == 0 {
                        cur.yield_now();
                    }
                }
                while RUNS.load(Ordering::Relaxed) < SENDS {
                    cur.yield_now();
                }
                STOP.store(true, Ordering::Relaxed);
                cur.join(&allocator);
            });
            assert_eq!(RUNS.load(Ordering::Relaxed), SENDS);
        },
    );
}

#[test]
fn ipi_to_self_runs_at_once_and_to_a_missing_cpu_is_an_error() {
    static N: AtomicUsize = AtomicUsize::new(0);
    fn f(my: MyCpu<'_>, a: usize, b: usize) {
        assert_eq!(my.id(), CpuId::new(0));
        N.fetch_add(a + b, Ordering::SeqCst);
    }
    Machine::new(2).unwrap().run(|cur| {
        cur.my_cpu().send_ipi(cpu(0), f, 2, 3).unwrap();
        assert_eq!(N.load(Ordering::SeqCst), 5);
        let e = cur.my_cpu().send_ipi(cpu(5), f, 0, 0).unwrap_err();
        assert_eq!(e.to_string(), "lwkt: no CPU 5 on this machine (CPUs 0..2)");
    });
}

const STRESS_CPUS: usize = 8;
const PER_PAIR: u64 = 1_000_000;
const BATCH: usize = 32;

/// `SEEN[dst][src]`: the next sequence number `dst` expects from `src`.
/// Written only by `dst` (in its IPI function), so plain load+store suffice.
static SEEN: [[AtomicU64; STRESS_CPUS]; STRESS_CPUS] =
    [const { [const { AtomicU64::new(0) }; STRESS_CPUS] }; STRESS_CPUS];

fn check_seq(my: MyCpu<'_>, src: usize, seq: usize) {
    let slot = &SEEN[my.id().index()][src];
    let want = slot.load(Ordering::Relaxed);
    assert_eq!(
        seq as u64,
        want,
        "cpu{} got message {seq} from cpu{src}, expected {want}",
        my.id().get()
    );
    slot.store(want + 1, Ordering::Relaxed);
}

/// Eight virtual CPUs on this 2-core host; every CPU sends 1,000,000 IPI
/// messages to every other (56 million in all); every message runs exactly
/// once, in order per sender; the run ends on its own.
#[test]
fn stress_eight_cpus_million_messages_to_every_other() {
    let (_, report) = Machine::new(STRESS_CPUS).unwrap().run_with_report(|cur| {
        let senders: Vec<_> = (0..STRESS_CPUS as u32)
            .map(|c| {
                cur.spawn_on(cpu(c), move |me| {
                    let src = me.cpu_id().index();
                    let mut batch = Vec::with_capacity(BATCH);
                    let mut seq = 0u64;
                    while seq < PER_PAIR {
                        let n = BATCH.min((PER_PAIR - seq) as usize);
                        for dst in (0..STRESS_CPUS).filter(|&d| d != src) {
                            batch.clear();
                            batch.extend((0..n).map(|i| IpiMsg {
                                func: check_seq,
                                arg1: src,
                                arg2: (seq + i as u64) as usize,
                            }));
                            me.my_cpu().send_ipi_batch(cpu(dst as u32), &batch).unwrap();
                        }
                        seq += n as u64;
                        if seq % 4096 == 0 {
                            me.yield_now();
                        }
                    }
                })
                .unwrap()
            })
            .collect();
        for s in &senders {
            cur.join(s);
        }
        // Every message has been queued; wait until every one has run.
        let done = |s: &[[AtomicU64; STRESS_CPUS]; STRESS_CPUS]| {
            (0..STRESS_CPUS).all(|d| {
                (0..STRESS_CPUS).all(|s2| s2 == d || s[d][s2].load(Ordering::Relaxed) == PER_PAIR)
            })
        };
        while !done(&SEEN) {
            cur.yield_now();
        }
    });
    for (d, row) in SEEN.iter().enumerate() {
        for (s, seen) in row.iter().enumerate() {
            let want = if s == d { 0 } else { PER_PAIR };
            assert_eq!(seen.load(Ordering::Relaxed), want, "cpu{d} from cpu{s}");
        }
    }
    let sent = report.total(|c| c.ipis_sent);
    let ran = report.total(|c| c.ipis_received);
    // The stress messages plus the few the runtime itself used (thread
    // creation, joins); each one sent was run exactly once.
    assert_eq!(sent, ran);
    assert!(sent >= (STRESS_CPUS * (STRESS_CPUS - 1)) as u64 * PER_PAIR);
    println!("{report}");
}
