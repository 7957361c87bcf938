//! Scheduler behaviour on the hosted backend: placement, priorities,
//! round-robin, migration, blocking, wake-ups under races.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lwkt_arch_hosted::{current_vcpu, Machine};
use lwkt_core::{CpuId, CpuMask, Cur, Priority, WaitQueue};

fn cpu(n: u32) -> CpuId {
    CpuId::new(n)
}

/// The OS thread under an LWKT thread must be its CPU's vCPU, every time.
fn assert_home(me: &Cur) {
    assert_eq!(
        current_vcpu(),
        Some(me.cpu_id()),
        "thread '{}' ran on a foreign CPU",
        me.name()
    );
}

#[test]
fn same_cpu_and_cross_cpu_scheduling() {
    let report = Machine::new(4).unwrap().run_with_report(|cur| {
        let ran = Arc::new(AtomicU32::new(0));
        let mut hs = Vec::new();
        for c in 0..4 {
            for _ in 0..3 {
                let ran = ran.clone();
                hs.push(
                    cur.spawn_on(cpu(c), move |me| {
                        assert_eq!(me.cpu_id(), cpu(c));
                        assert_home(me);
                        for _ in 0..10 {
                            me.yield_now();
                            assert_home(me);
                        }
                        ran.fetch_add(1, Ordering::SeqCst);
                    })
                    .unwrap(),
                );
            }
        }
        for h in &hs {
            cur.join(h);
            assert!(h.has_exited());
        }
        ran.load(Ordering::SeqCst)
    });
    assert_eq!(report.0, 12);
    assert_eq!(report.1.leaked_threads, 0);
    for (i, c) in report.1.cpus.iter().enumerate() {
        assert!(
            c.threads_created >= 3,
            "cpu{i} created {}",
            c.threads_created
        );
        assert_eq!(c.threads_live, 0);
    }
    // Threads on CPUs 1..3 were created from CPU 0: by IPI message.
    assert!(report.1.cpus[0].ipis_sent >= 9);
}

#[test]
fn higher_priority_runs_first_and_equal_priorities_round_robin() {
    let log = Machine::new(1).unwrap().run(|cur| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut hs = Vec::new();
        // Three equal-priority threads that yield three times each, and one
        // higher-priority thread, all created before any of them runs.
        for name in ["a", "b", "c"] {
            let log = log.clone();
            hs.push(
                cur.builder()
                    .name(name)
                    .priority(Priority::KERN_DAEMON)
                    .spawn(move |me| {
                        for i in 0..3 {
                            log.lock().unwrap().push(format!("{}{}", me.name(), i));
                            me.yield_now();
                        }
                    })
                    .unwrap(),
            );
        }
        let l2 = log.clone();
        hs.push(
            cur.builder()
                .name("hi")
                .priority(Priority::SOFT_NORM)
                .spawn(move |_| l2.lock().unwrap().push("hi".into()))
                .unwrap(),
        );
        // Main is KERN_DAEMON too and queued before them; lower ourselves so
        // the order below is exactly theirs.
        cur.set_priority(Priority::IDLE_WORK);
        cur.yield_now();
        for h in &hs {
            cur.join(h);
        }
        let v = log.lock().unwrap().clone();
        v
    });
    assert_eq!(
        log,
        ["hi", "a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    );
}

#[test]
fn lower_priority_waits_while_higher_is_runnable() {
    Machine::new(1).unwrap().run(|cur| {
        let hi_done = Arc::new(AtomicBool::new(false));
        let h2 = hi_done.clone();
        let lo = cur
            .builder()
            .priority(Priority::USER_NORM)
            .spawn(move |_| {
                assert!(
                    h2.load(Ordering::SeqCst),
                    "low priority ran before high finished"
                )
            })
            .unwrap();
        let h3 = hi_done.clone();
        let hi = cur
            .builder()
            .priority(Priority::SOFT_NORM)
            .spawn(move |me| {
                for _ in 0..5 {
                    me.yield_now(); // stays: nothing of equal or higher priority
                }
                h3.store(true, Ordering::SeqCst);
            })
            .unwrap();
        cur.join(&hi);
        cur.join(&lo);
    });
}

#[test]
fn migration_moves_a_thread_and_it_stays_there() {
    Machine::new(3).unwrap().run(|cur| {
        let h = cur
            .spawn_on(cpu(0), |me| {
                for target in [1, 2, 0, 2] {
                    me.migrate(cpu(target)).unwrap();
                    assert_eq!(me.cpu_id(), cpu(target));
                    assert_home(me);
                    for _ in 0..5 {
                        me.yield_now();
                        assert_home(me);
                    }
                }
                assert!(me.migrate(cpu(7)).is_err());
            })
            .unwrap();
        cur.join(&h);
        assert_eq!(h.cpu(), cpu(2));
    });
}

#[test]
fn deschedule_and_schedule_across_cpus() {
    Machine::new(2).unwrap().run(|cur| {
        let step = Arc::new(AtomicU32::new(0));
        let s2 = step.clone();
        let parked = cur
            .spawn_on(cpu(1), move |me| {
                s2.store(1, Ordering::SeqCst);
                me.deschedule_self();
                me.switch(); // sleeps until scheduled from CPU 0
                assert_eq!(s2.load(Ordering::SeqCst), 2);
                s2.store(3, Ordering::SeqCst);
            })
            .unwrap();
        while step.load(Ordering::SeqCst) != 1 {
            cur.yield_now();
        }
        // Give it a chance to run wrongly if it were still queued.
        for _ in 0..100 {
            cur.yield_now();
        }
        step.store(2, Ordering::SeqCst);
        cur.my_cpu().schedule(&parked);
        cur.join(&parked);
        assert_eq!(step.load(Ordering::SeqCst), 3);
    });
}

/// Two threads on different CPUs hand a token back and forth through two
/// wait queues many times; a lost wake-up would hang the test.
#[test]
fn wait_queue_ping_pong_loses_no_wakeup() {
    static PING: WaitQueue = WaitQueue::new();
    static PONG: WaitQueue = WaitQueue::new();
    const ROUNDS: u64 = 20_000;
    let turn = Arc::new(AtomicU64::new(0));
    Machine::new(2).unwrap().run(move |cur| {
        let t2 = turn.clone();
        let other = cur
            .spawn_on(cpu(1), move |me| {
                for i in 0..ROUNDS {
                    // wait for our turn (odd values)
                    let g = PING.generation();
                    while t2.load(Ordering::SeqCst) != 2 * i + 1 {
                        PING.block_since(me, g);
                    }
                    t2.store(2 * i + 2, Ordering::SeqCst);
                    PONG.signal(me.my_cpu());
                }
            })
            .unwrap();
        for i in 0..ROUNDS {
            turn.store(2 * i + 1, Ordering::SeqCst);
            PING.signal(cur.my_cpu());
            let g = PONG.generation();
            while turn.load(Ordering::SeqCst) != 2 * i + 2 {
                PONG.block_since(cur, g);
            }
        }
        cur.join(&other);
    });
}

/// sleep_until/wakeup between CPUs with racing wakers: each of 6 threads on 3
/// CPUs waits for its counter, and wakers on other CPUs bump and wake.
#[test]
fn sleep_wakeup_under_races() {
    const N: usize = 6;
    const ROUNDS: u64 = 2_000;
    Machine::new(3).unwrap().run(|cur| {
        let counters: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| AtomicU64::new(0)).collect());
        let mut hs = Vec::new();
        for i in 0..N {
            let cs = counters.clone();
            hs.push(
                cur.spawn_on(cpu((i % 3) as u32), move |me| {
                    let chan = &cs[i] as *const AtomicU64 as usize;
                    for r in 1..=ROUNDS {
                        me.sleep_until(chan, || cs[i].load(Ordering::SeqCst) >= r);
                    }
                })
                .unwrap(),
            );
        }
        let mut wakers = Vec::new();
        for w in 0..3u32 {
            let cs = counters.clone();
            wakers.push(
                cur.spawn_on(cpu(w), move |me| {
                    for r in 0..ROUNDS {
                        for i in (0..N).filter(|i| i % 3 == (w as usize + 1) % 3) {
                            let _ = r;
                            cs[i].fetch_add(1, Ordering::SeqCst);
                            me.my_cpu().wakeup(&cs[i] as *const AtomicU64 as usize);
                        }
                        if r % 16 == 0 {
                            me.yield_now();
                        }
                    }
                })
                .unwrap(),
            );
        }
        for h in wakers.iter().chain(hs.iter()) {
            cur.join(h);
        }
    });
}

#[test]
fn cpusync_runs_on_every_cpu_in_the_mask_once() {
    Machine::new(8).unwrap().run(|cur| {
        let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..50 {
            cur.cpusync(CpuMask::all(8), &|my| {
                assert_eq!(current_vcpu(), Some(my.id()));
                hits[my.id().index()].fetch_add(1, Ordering::SeqCst);
            });
            for h in &hits {
                assert_eq!(h.load(Ordering::SeqCst), round + 1);
            }
        }
        let some = CpuMask::EMPTY.with(cpu(2)).with(cpu(5));
        cur.cpusync(some, &|my| {
            hits[my.id().index()].fetch_add(100, Ordering::SeqCst);
        });
        let v: Vec<usize> = hits.iter().map(|h| h.load(Ordering::SeqCst)).collect();
        assert_eq!(v, [50, 50, 150, 50, 50, 150, 50, 50]);
    });
}

#[test]
fn concurrent_cpusync_masters_do_not_deadlock() {
    Machine::new(4).unwrap().run(|cur| {
        let total = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..4)
            .map(|c| {
                let total = total.clone();
                cur.spawn_on(cpu(c), move |me| {
                    for _ in 0..200 {
                        me.cpusync(CpuMask::all(4), &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
        assert_eq!(total.load(Ordering::Relaxed), 4 * 200 * 4);
    });
}

#[test]
fn eight_virtual_cpus_on_a_small_host() {
    let (_, rep) = Machine::new(8).unwrap().run_with_report(|cur| {
        let hs: Vec<_> = (0..32)
            .map(|i| {
                cur.spawn_on(cpu(i % 8), |me| {
                    for _ in 0..100 {
                        assert_home(me);
                        me.yield_now();
                    }
                })
                .unwrap()
            })
            .collect();
        for h in &hs {
            cur.join(h);
        }
    });
    assert_eq!(rep.leaked_threads, 0);
    assert!(rep.cpus.iter().all(|c| c.threads_created >= 4));
}

#[test]
fn spawn_errors_name_the_rule() {
    Machine::new(2).unwrap().run(|cur| {
        let e = cur.spawn_on(cpu(2), |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lwkt: cannot create a thread on CPU 2 (this machine has CPUs 0..2)"
        );
        let e = cur.builder().stack_size(1024).spawn(|_| {}).unwrap_err();
        assert!(
            e.to_string().contains("cannot hold the thread block"),
            "{e}"
        );
    });
}

#[test]
fn blocked_threads_are_reported_at_shutdown() {
    let (_, rep) = Machine::new(2).unwrap().run_with_report(|cur| {
        let _never = cur
            .spawn_on(cpu(1), |me| {
                me.deschedule_self();
                me.switch(); // nobody will schedule it again
            })
            .unwrap();
        for _ in 0..1000 {
            cur.yield_now();
        }
    });
    assert_eq!(rep.leaked_threads, 1);
}

#[test]
fn crit_underflow_panics_with_the_rule() {
    if common::is_child() {
        Machine::new(1).unwrap().run(|cur| cur.crit_exit());
        return;
    }
    let (ok, err) = common::run_child("crit_underflow_panics_with_the_rule");
    assert!(!ok);
    assert!(
        err.contains("crit_exit without a matching crit_enter"),
        "stderr: {err}"
    );
}

#[test]
fn stack_overflow_is_reported_by_name() {
    if common::is_child() {
        fn deep(n: u64) -> u64 {
            let buf = std::hint::black_box([n; 64]);
            if n == 0 {
                buf[3]
            } else {
                deep(n - 1).wrapping_add(buf[7])
            }
        }
        Machine::new(1).unwrap().run(|cur| {
            let h = cur
                .builder()
                .name("deep-recursion")
                .stack_size(32 * 1024)
                .spawn(|_| {
                    std::hint::black_box(deep(1_000_000));
                });
            cur.join(&h.unwrap());
        });
        return;
    }
    let (ok, err) = common::run_child("stack_overflow_is_reported_by_name");
    assert!(!ok);
    assert!(
        err.contains("thread 'deep-recursion' on cpu 0 overflowed its stack"),
        "stderr: {err}"
    );
}
