//! Interrupt latency: how soon the thread that serves an interrupt runs,
//! on lwkt's hosted backend and on the host's own primitives, measured
//! the same way (shared by the demo and `cargo bench --bench time`).
//!
//! - lwkt: a thread of vCPU 0 raises a device interrupt on vCPU 1
//!   ([`MyCpu::raise_interrupt`](lwkt_core::MyCpu::raise_interrupt)),
//!   where a kernel-style thread is busy (it loops on `yield_now`, which
//!   with nothing else on its CPU returns at once; on an M:N machine that
//!   lets a vCPU sharing its host thread run); the line's interrupt thread
//!   preempts it and counts the interrupt.
//! - host: a thread signals (`pthread_kill`) a busy thread, whose signal
//!   handler wakes a parked OS thread through its futex
//!   (`Thread::unpark`), which counts the interrupt.
//!
//! Each sample is one round trip: raise, then wait until the count moves,
//! so it includes one cache-line transfer back to the raiser. The lwkt
//! raiser spins through lwkt (`yield_now`); the host's yields its core (`sched_yield`), since the
//! host design needs a third thread: spinning, the woken thread waits for
//! the host scheduler to preempt a spinner, milliseconds on a 2-core
//! machine (measured: 8 ms median).

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use lwkt_core::{CpuId, Cur, Priority};

/// The device line the lwkt measurement uses.
const IRQ: usize = 1;

/// `n` interrupt round trips from the calling thread's CPU to the next
/// CPU of its machine, where a thread is busy (on a 1-CPU machine, to the
/// caller's own CPU: the caller is the thread interrupted).
pub fn lwkt_interrupt(cur: &mut Cur, n: usize) -> Vec<Duration> {
    let ncpus = cur.my_cpu().ncpus();
    let target = CpuId::new(((cur.cpu_id().index() + 1) % ncpus) as u32);
    {
        {
            let seen = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let ready = Arc::new(AtomicBool::new(false));
            let (s, st, r) = (seen.clone(), stop.clone(), ready.clone());
            let ith = cur
                .builder()
                .cpu(target)
                .priority(Priority::INT_MED)
                .name("ithread")
                .spawn(move |me| {
                    me.register_interrupt(IRQ).expect("line 1 is free");
                    r.store(true, Ordering::Release);
                    while !st.load(Ordering::Acquire) {
                        let k = me.wait_interrupt(IRQ);
                        s.fetch_add(u64::from(k), Ordering::Release);
                    }
                })
                .expect("spawn");
            // On a 1-CPU machine the raiser is the thread interrupted.
            let busy = (target != cur.cpu_id()).then(|| {
                let st = stop.clone();
                cur.builder()
                    .cpu(target)
                    .name("busy")
                    .spawn(move |me| {
                        // Busy, but through lwkt (each yield is a critical
                        // section, and with nothing else here it returns at
                        // once): on an M:N machine whose host thread it
                        // shares with the raiser, that lets the raiser run.
                        while !st.load(Ordering::Relaxed) {
                            me.yield_now();
                        }
                    })
                    .expect("spawn")
            });
            while !ready.load(Ordering::Acquire) {
                cur.yield_now();
            }
            let mut out = Vec::with_capacity(n);
            for i in 1..=n as u64 {
                let t = Instant::now();
                cur.my_cpu().raise_interrupt(target, IRQ).expect("raise");
                // Wait through lwkt, for the same reason.
                while seen.load(Ordering::Acquire) < i {
                    cur.yield_now();
                }
                out.push(t.elapsed());
            }
            stop.store(true, Ordering::Release);
            cur.my_cpu().raise_interrupt(target, IRQ).expect("raise");
            cur.join(&ith);
            if let Some(b) = busy {
                cur.join(&b);
            }
            out
        }
    }
}

/// The parked thread the host measurement's signal handler wakes.
static WAKEE: AtomicPtr<Thread> = AtomicPtr::new(std::ptr::null_mut());
/// Set by the handler, taken by the wakee.
static RAISED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    RAISED.store(true, Ordering::Release);
    let w = WAKEE.load(Ordering::Acquire);
    if !w.is_null() {
        // SAFETY: `WAKEE` points to a `Thread` leaked by `signal_futex`
        // (never freed). `unpark` is an atomic swap and a futex wake: no
        // lock, no allocation, safe in a signal handler.
        unsafe { (*w).unpark() };
    }
}

/// `n` round trips of a signal whose handler wakes a parked OS thread.
/// Runs on OS threads of its own (the caller's affinity is left alone).
pub fn signal_futex(n: usize) -> Vec<Duration> {
    std::thread::spawn(move || signal_futex_here(n))
        .join()
        .expect("the signal measurement panicked")
}

fn signal_futex_here(n: usize) -> Vec<Duration> {
    const SIG: libc::c_int = libc::SIGUSR2;
    // SAFETY: installs a plain handler with a zeroed (valid) sigaction;
    // the handler only touches atomics and `Thread::unpark`.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(libc::sigaction(SIG, &sa, std::ptr::null_mut()), 0);
    }
    let seen = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, st) = (seen.clone(), stop.clone());
    // The raiser and the woken thread share a core, which the raiser
    // yields while it waits; the busy thread has the other.
    crate::affinity::pin(0);
    let wakee = std::thread::spawn(move || {
        crate::affinity::pin(0);
        while !st.load(Ordering::Acquire) {
            if RAISED.swap(false, Ordering::AcqRel) {
                s.fetch_add(1, Ordering::Release);
            } else {
                std::thread::park();
            }
        }
    });
    // Leaked: the handler may still read it after this call returns.
    WAKEE.store(
        Box::into_raw(Box::new(wakee.thread().clone())),
        Ordering::Release,
    );
    let st = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let busy = std::thread::spawn(move || {
        crate::affinity::pin(1 % crate::affinity::cores());
        // SAFETY: pthread_self has no preconditions.
        tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
        while !st.load(Ordering::Relaxed) {
            std::hint::black_box(0u64);
        }
    });
    let busy_pt = rx.recv().unwrap() as libc::pthread_t;
    let mut out = Vec::with_capacity(n);
    for i in 1..=n as u64 {
        let t = Instant::now();
        // SAFETY: `busy_pt` is a live thread of this process (joined
        // below, after the last signal).
        unsafe { libc::pthread_kill(busy_pt, SIG) };
        while seen.load(Ordering::Acquire) < i {
            // Three threads on (here) two cores: give the woken thread
            // this core rather than make it wait for the host's
            // scheduler to preempt a spinner (milliseconds).
            std::thread::yield_now();
        }
        out.push(t.elapsed());
    }
    stop.store(true, Ordering::Release);
    wakee.thread().unpark();
    wakee.join().unwrap();
    busy.join().unwrap();
    out
}

/// The median and the 99th percentile of `v`.
pub fn quantiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 99 / 100).min(v.len() - 1)])
}
