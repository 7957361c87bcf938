//! The direct hand-off, `Cur::block_for`, on the hosted backend: the thread
//! handed to runs in the blocking thread's turn, never ahead of a higher
//! priority; tokens are released and taken again across it; interrupts and
//! IPIs arriving meanwhile are all served.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lwkt_arch_hosted::Machine;
use lwkt_core::token::Token;
use lwkt_core::{CpuId, Cur, MyCpu, Priority, ThreadHandle};

/// A thread of `cur`'s CPU at `pri` that blocks at once, then (once
/// scheduled) logs `name` and wakes `waker_of`.
fn blocked_helper(
    cur: &mut Cur,
    pri: Priority,
    name: &'static str,
    log: &Arc<Mutex<Vec<&'static str>>>,
    wake: ThreadHandle,
) -> ThreadHandle {
    let log = log.clone();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let h = cur
        .builder()
        .cpu(cur.cpu_id())
        .priority(pri)
        .name(name)
        .spawn(move |me| {
            s.store(true, Ordering::Release);
            me.block();
            log.lock().unwrap().push(name);
            me.my_cpu().schedule(&wake);
        })
        .unwrap();
    // Let it run (below us, only once we are at its priority) and block.
    let mine = cur.priority();
    if pri < mine {
        cur.set_priority(pri);
    }
    while !started.load(Ordering::Acquire) {
        cur.yield_now();
    }
    cur.set_priority(mine);
    // It ran and blocked: it is off the run queue.
    h
}

/// A runnable thread of `cur`'s CPU at `pri` that logs `name` when it runs.
fn runnable_logger(
    cur: &mut Cur,
    pri: Priority,
    name: &'static str,
    log: &Arc<Mutex<Vec<&'static str>>>,
) -> ThreadHandle {
    let log = log.clone();
    cur.builder()
        .cpu(cur.cpu_id())
        .priority(pri)
        .name(name)
        .spawn(move |_| log.lock().unwrap().push(name))
        .unwrap()
}

/// The thread handed to runs in the blocking thread's turn: ahead of a
/// peer of the same priority that was already runnable (a plain
/// `schedule` + `block` runs the peer first).
#[test]
fn block_for_runs_the_thread_in_our_turn() {
    Machine::new(1).unwrap().run(|cur| {
        let pri = cur.priority();
        let log = Arc::new(Mutex::new(Vec::new()));
        let me = cur.handle();
        let h = blocked_helper(cur, pri, "handed", &log, me.clone());
        let p = runnable_logger(cur, pri, "peer", &log);
        let switches = cur.my_cpu().stats().switches;
        cur.block_for(&h);
        cur.join(&h);
        cur.join(&p);
        assert_eq!(*log.lock().unwrap(), ["handed", "peer"]);
        assert!(cur.my_cpu().stats().switches > switches);

        // The same with schedule + block: the peer, queued first, runs first.
        log.lock().unwrap().clear();
        let h = blocked_helper(cur, pri, "handed", &log, me);
        let p = runnable_logger(cur, pri, "peer", &log);
        cur.my_cpu().schedule(&h);
        cur.block();
        cur.join(&h);
        cur.join(&p);
        assert_eq!(*log.lock().unwrap(), ["peer", "handed"]);
    });
}

/// A thread of higher priority made runnable (inside our critical
/// section, so it has not run yet) runs before the thread handed to; so
/// does a runnable peer when the thread handed to has a lower priority.
#[test]
fn block_for_never_passes_a_higher_priority() {
    Machine::new(1).unwrap().run(|cur| {
        let pri = cur.priority();
        let high = Priority::new(pri.get() + 1).unwrap();
        let low = Priority::new(pri.get() - 1).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let me = cur.handle();
        // A blocked high-priority thread, scheduled in our section.
        let x = blocked_helper(cur, high, "high", &log, me.clone());
        let h = blocked_helper(cur, pri, "handed", &log, me.clone());
        cur.crit_enter();
        cur.my_cpu().schedule(&x);
        cur.block_for(&h);
        cur.crit_exit();
        // `high` woke us before `handed` ran: wait for it too.
        while !h.has_exited() {
            cur.yield_now();
        }
        cur.join(&x);
        cur.join(&h);
        assert_eq!(*log.lock().unwrap(), ["high", "handed"]);

        // The thread handed to is below a runnable peer: the peer first.
        log.lock().unwrap().clear();
        let h = blocked_helper(cur, low, "low", &log, me.clone());
        let p = runnable_logger(cur, pri, "peer", &log);
        cur.block_for(&h);
        cur.join(&h);
        cur.join(&p);
        assert_eq!(*log.lock().unwrap(), ["peer", "low"]);

        // Above us: it runs first, as a plain schedule would make it.
        log.lock().unwrap().clear();
        let h = blocked_helper(cur, high, "high", &log, me.clone());
        let p = runnable_logger(cur, pri, "peer", &log);
        cur.block_for(&h);
        cur.join(&h);
        cur.join(&p);
        assert_eq!(*log.lock().unwrap(), ["high", "peer"]);
    });
}

/// A thread that blocks holding a token releases it meanwhile (the thread
/// handed to takes it) and holds it again when it runs; the thread handed
/// to gets its own token back before it runs, and is skipped while another
/// CPU holds that token.
#[test]
fn block_for_releases_and_retakes_tokens() {
    Machine::new(2).unwrap().run(|cur| {
        let mine = Arc::new(Token::new("mine"));
        let theirs = Arc::new(Token::new("theirs"));
        let me = cur.handle();
        let (m2, t2) = (mine.clone(), theirs.clone());
        let started = Arc::new(AtomicBool::new(false));
        let s2 = started.clone();
        let taken_elsewhere = Arc::new(AtomicBool::new(false));
        let released = Arc::new(AtomicBool::new(false));
        let (te, rel) = (taken_elsewhere.clone(), released.clone());
        // Blocks holding `theirs`.
        let h = cur
            .spawn_on(cur.cpu_id(), move |h| {
                h.with_token(&t2, |h, _| {
                    s2.store(true, Ordering::Release);
                    h.block();
                    // Runs only once CPU 1 gave `theirs` up.
                    assert!(rel.load(Ordering::Acquire));
                    assert_eq!(t2.exclusive_owner(), h.token_stack_id());
                    // Our sender released `mine` while it waits.
                    assert!(h.try_with_token(&m2, |_, _| ()).is_some());
                    h.my_cpu().schedule(&me);
                });
            })
            .unwrap();
        while !started.load(Ordering::Acquire) {
            cur.yield_now();
        }
        // CPU 1 takes `theirs` (free while `h` is blocked) and keeps it a
        // while after we have handed the CPU to `h`.
        let t3 = theirs.clone();
        let handing = Arc::new(AtomicBool::new(false));
        let hd = handing.clone();
        let holder = cur
            .spawn_on(CpuId::new(1), move |z| {
                z.with_token(&t3, |_, _| {
                    te.store(true, Ordering::Release);
                    // Spin without calling lwkt: a switch or yield here
                    // would release the token meanwhile.
                    while !hd.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                    for _ in 0..100_000 {
                        std::hint::spin_loop();
                    }
                    released.store(true, Ordering::Release);
                });
            })
            .unwrap();
        while !taken_elsewhere.load(Ordering::Acquire) {
            cur.yield_now();
        }
        let id = cur.token_stack_id();
        let m3 = mine.clone();
        cur.with_token(&m3, |cur, _| {
            handing.store(true, Ordering::Release);
            cur.block_for(&h);
            assert_eq!(mine.exclusive_owner(), id);
            assert_eq!(cur.tokens_held(), 1);
        });
        cur.join(&h);
        cur.join(&holder);
    });
}

static IPIS: AtomicU64 = AtomicU64::new(0);

fn count_ipi(_: MyCpu<'_>, _: usize, _: usize) {
    IPIS.fetch_add(1, Ordering::Relaxed);
}

/// Hand-offs back and forth on CPU 0 while CPU 1 sends it a stream of IPIs
/// and device interrupts (signals on the hosted backend, which may land
/// at any instruction outside a critical section, and preempt through
/// the interrupt thread): every hand-off completes, every IPI runs once,
/// every interrupt reaches its thread.
#[test]
fn block_for_under_interrupts_and_ipis() {
    const ROUNDS: u32 = 20_000;
    const RAISES: u32 = 2_000;
    const IRQ: usize = 5;
    Machine::new(2).unwrap().run(|cur| {
        let seen = Arc::new(AtomicU32::new(0));
        let s = seen.clone();
        let ith = common::spawn_ithread(cur, 0, IRQ, move |me| {
            while s.load(Ordering::Relaxed) < RAISES {
                let n = me.wait_interrupt(IRQ);
                s.fetch_add(n, Ordering::Release);
            }
        });
        // The partner blocks, then is handed the CPU and hands it back
        // until told to stop.
        let me = cur.handle();
        let done = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(AtomicBool::new(false));
        let (r, d) = (ready.clone(), done.clone());
        let partner = cur
            .spawn_on(CpuId::new(0), move |p| {
                r.store(true, Ordering::Release);
                p.block();
                while !d.load(Ordering::Acquire) {
                    p.block_for(&me);
                }
            })
            .unwrap();
        while !ready.load(Ordering::Acquire) {
            cur.yield_now();
        }
        let sent = Arc::new(AtomicU64::new(0));
        let sender_done = Arc::new(AtomicBool::new(false));
        let (sn, sd) = (sent.clone(), sender_done.clone());
        let sw = seen.clone();
        let sender = cur
            .spawn_on(CpuId::new(1), move |z| {
                for i in 0..RAISES {
                    if z.my_cpu().send_ipi(CpuId::new(0), count_ipi, 0, 0).is_ok() {
                        sn.fetch_add(1, Ordering::Relaxed);
                    }
                    z.my_cpu().raise_interrupt(CpuId::new(0), IRQ).unwrap();
                    // A line's interrupts pending together are collected
                    // together: wait for this one before the next.
                    while sw.load(Ordering::Acquire) < i + 1 {
                        z.yield_now();
                    }
                }
                sd.store(true, Ordering::Release);
            })
            .unwrap();
        let mut rounds = 0;
        while rounds < ROUNDS || !sender_done.load(Ordering::Acquire) {
            // The partner is blocked (it handed the CPU back); the
            // interrupt thread may want to run first.
            while cur.others_runnable() {
                cur.yield_now();
            }
            cur.block_for(&partner);
            rounds += 1;
        }
        done.store(true, Ordering::Release);
        cur.my_cpu().schedule(&partner);
        cur.join(&partner);
        cur.join(&sender);
        cur.join(&ith);
        assert_eq!(seen.load(Ordering::Acquire), RAISES);
        // Every IPI sent has run once the rings are drained.
        cur.my_cpu().process_ipis();
        assert_eq!(IPIS.load(Ordering::Relaxed), sent.load(Ordering::Relaxed));
    });
}
