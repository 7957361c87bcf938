//! Timed sleeps on the hosted backend: `sleep_for`, `sleep_timeout`,
//! `sleep_until_timeout`, their races with wake-ups, many timers on
//! several vCPUs, and a panic inside a timed wait.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lwkt_core::{CpuId, TimedOut, WaitQueue};

fn machine(n: usize) -> lwkt_arch_hosted::Machine {
    lwkt_arch_hosted::Machine::new(n).expect("machine")
}

#[test]
fn sleep_for_sleeps_at_least_its_duration() {
    machine(1).run(|cur| {
        for ms in [0u64, 1, 2, 5, 10] {
            let d = Duration::from_millis(ms);
            let t = Instant::now();
            cur.sleep_for(d);
            let took = t.elapsed();
            assert!(took >= d, "slept {took:?} for {d:?}");
            // Generous: a loaded host may be late, never this late.
            assert!(
                took < d + Duration::from_secs(2),
                "slept {took:?} for {d:?}"
            );
        }
    });
}

#[test]
fn other_threads_run_while_one_sleeps() {
    machine(1).run(|cur| {
        let ticks = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let (t2, d2) = (ticks.clone(), done.clone());
        let spinner = cur
            .spawn_on(CpuId::new(0), move |me| {
                while !d2.load(Ordering::Acquire) {
                    t2.fetch_add(1, Ordering::Relaxed);
                    me.yield_now();
                }
            })
            .unwrap();
        // The only other thread of this CPU yields but never sleeps: the
        // timer still ends the sleep (it runs at the spinner's switches).
        cur.sleep_for(Duration::from_millis(5));
        assert!(ticks.load(Ordering::Relaxed) > 0);
        done.store(true, Ordering::Release);
        cur.join(&spinner);
    });
}

#[test]
fn sleep_timeout_times_out_or_is_woken() {
    machine(2).run(|cur| {
        let chan = 0x5000;
        assert_eq!(
            cur.sleep_timeout(chan, Duration::from_millis(1)),
            Err(TimedOut)
        );
        let woken = cur
            .spawn_on(CpuId::new(1), move |me| {
                assert_eq!(me.sleep_timeout(chan, Duration::from_secs(600)), Ok(()));
            })
            .unwrap();
        // Wake it from the other CPU until it has left its sleep.
        let h = woken.clone();
        while !h.has_exited() {
            cur.my_cpu().wakeup(chan);
            cur.sleep_for(Duration::from_micros(100));
        }
        cur.join(&woken);
    });
}

#[test]
fn cond_decides_when_the_time_is_up() {
    machine(1).run(|cur| {
        let flag = AtomicBool::new(true);
        let chan = &flag as *const AtomicBool as usize;
        // Already true: no sleep at all, even with a zero timeout.
        assert_eq!(
            cur.sleep_until_timeout(chan, Duration::ZERO, || flag.load(Ordering::Acquire)),
            Ok(())
        );
        flag.store(false, Ordering::Release);
        assert_eq!(
            cur.sleep_until_timeout(chan, Duration::ZERO, || flag.load(Ordering::Acquire)),
            Err(TimedOut)
        );
    });
}

/// A wake-up and a timeout at (about) the same instant, many times, from
/// another CPU: every sleep ends exactly once, with one of the two
/// outcomes, and the condition decides when it holds.
#[test]
fn wakeup_racing_the_timeout_has_one_outcome() {
    machine(2).run(|cur| {
        const ROUNDS: u64 = 300;
        let gen = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(AtomicU64::new(0));
        let (g2, e2) = (gen.clone(), ended.clone());
        let chan = Arc::as_ptr(&gen) as usize;
        let sleeper = cur
            .spawn_on(CpuId::new(1), move |me| {
                let mut outcomes = [0u64; 2];
                for round in 1..=ROUNDS {
                    let r = me.sleep_until_timeout(chan, Duration::from_micros(200), || {
                        g2.load(Ordering::Acquire) >= round
                    });
                    match r {
                        Ok(()) => {
                            assert!(g2.load(Ordering::Acquire) >= round);
                            outcomes[0] += 1;
                        }
                        Err(TimedOut) => outcomes[1] += 1,
                    }
                    e2.store(round, Ordering::Release);
                }
                assert_eq!(outcomes[0] + outcomes[1], ROUNDS);
            })
            .unwrap();
        for round in 1..=ROUNDS {
            // Aim the wake-up near the sleeper's deadline.
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(150 + round % 100) {
                cur.yield_now();
            }
            gen.store(round, Ordering::Release);
            cur.my_cpu().wakeup(chan);
            while ended.load(Ordering::Acquire) < round {
                cur.yield_now();
            }
        }
        cur.join(&sleeper);
        assert_eq!(ended.load(Ordering::Acquire), ROUNDS);
    });
}

/// Many sleepers on 4 vCPUs with random deadlines: every one wakes, none
/// before its time.
#[test]
fn many_timers_on_four_cpus() {
    machine(4).run(|cur| {
        let woke = Arc::new(AtomicUsize::new(0));
        let mut hs = Vec::new();
        let mut seed = 0x9E37_79B9u64;
        for i in 0..64u32 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let d = Duration::from_micros(seed % 5_000);
            let woke = woke.clone();
            hs.push(
                cur.spawn_on(CpuId::new(i % 4), move |me| {
                    let t = Instant::now();
                    me.sleep_for(d);
                    assert!(t.elapsed() >= d);
                    woke.fetch_add(1, Ordering::Relaxed);
                })
                .unwrap(),
            );
        }
        for h in &hs {
            cur.join(h);
        }
        assert_eq!(woke.load(Ordering::Relaxed), 64);
    });
}

/// A panic in the condition unwinds out of the timed wait; the timer goes
/// with it (its deadline passing later touches nothing: AddressSanitizer
/// would see a use of the dead stack frame otherwise).
#[test]
fn a_panicking_condition_leaves_no_timer_behind() {
    machine(1).run(|cur| {
        // The condition's first look comes after the timer is armed.
        let r = catch_unwind(AssertUnwindSafe(|| {
            cur.sleep_until_timeout(0x7000, Duration::from_millis(2), || -> bool {
                panic!("the condition panics")
            })
        }));
        assert!(r.is_err());
        cur.sleep_for(Duration::from_millis(5));
        cur.sleep_for(Duration::from_millis(1));
    });
}

/// The wait queue's timed block: a signal from another CPU ends it with
/// `Ok`; without one it times out.
#[test]
fn wait_queue_block_with_a_timeout() {
    static Q: WaitQueue = WaitQueue::new();
    machine(2).run(|cur| {
        let gen = Q.generation();
        assert_eq!(
            Q.block_since_timeout(cur, gen, Duration::from_millis(1)),
            Err(TimedOut)
        );
        let signaller = cur
            .spawn_on(CpuId::new(1), |me| {
                me.sleep_for(Duration::from_millis(1));
                Q.signal(me.my_cpu());
            })
            .unwrap();
        assert_eq!(
            Q.block_since_timeout(cur, gen, Duration::from_secs(600)),
            Ok(())
        );
        cur.join(&signaller);
    });
}

/// `block_timeout`: a timeout when nobody schedules the thread, `Ok` when
/// someone does first; a zero timeout still times out (never inline).
#[test]
fn block_timeout_wakes_or_times_out() {
    use std::time::{Duration, Instant};
    lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
        let t0 = Instant::now();
        assert_eq!(
            cur.block_timeout(Duration::from_millis(2)),
            Err(lwkt_core::TimedOut)
        );
        assert!(t0.elapsed() >= Duration::from_millis(2), "never early");
        assert_eq!(cur.block_timeout(Duration::ZERO), Err(lwkt_core::TimedOut));
        // A waker of this CPU runs only once we have blocked.
        let me = cur.handle();
        let waker = cur
            .spawn_on(cur.cpu_id(), move |w| w.my_cpu().schedule(&me))
            .unwrap();
        assert_eq!(cur.block_timeout(Duration::from_secs(600)), Ok(()));
        cur.join(&waker);
    });
}
