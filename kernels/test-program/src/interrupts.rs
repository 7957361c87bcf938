//! Time and interrupts on every CPU (issue 18): callouts armed on each CPU
//! and stopped from the next one, a CPU-bound thread preempted by
//! interrupt threads (one line raised through lwkt, one through its
//! device vector), and `domsg_timeout` against a server that does not
//! reply in time. Each part counts per CPU what came out right; the
//! report compares the counts with what they must be and prints what was
//! wrong as it is found.

use alloc::boxed::Box;
use core::pin::{pin, Pin};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use core::time::Duration;

use lwkt_core::{Callout, Cpu, CpuId, Cur, Fired, Priority, ThreadHandle, TimedOut};
use lwkt_msg::{Incoming, Msg, MsgError, Port};

use crate::tests::{join_all, spawn_at as spawn};
use crate::MAX_CPUS;

type Counts = [AtomicU64; MAX_CPUS];

/// The backend's clock.
fn now() -> u64 {
    crate::kernel().now_ns()
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// Poll `cond` every `step` with timed sleeps (so the thread waits on its
/// CPU's timer, not by spinning), failing the run after `limit`.
fn wait_for(me: &mut Cur, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = now();
    while !cond() {
        if now() - t0 > ns(limit) {
            crate::fail!(
                "cpu {}: {what}: not after {limit:?}",
                me.my_cpu().id().index()
            );
        }
        me.sleep_for(Duration::from_micros(100));
    }
}

// ---------------------------------------------------------------------------
// Callouts.

/// Each CPU's callouts, by delay; the last is never reached (an hour),
/// so its stop must always succeed. The others fall before, around and
/// after [`STOP_AFTER`], so both outcomes of a stop occur.
const CALLOUT_DELAYS_US: [u64; 7] = [0, 500, 1_000, 1_500, 2_000, 3_000, 3_600_000_000];
const CALLOUTS: usize = CALLOUT_DELAYS_US.len();
/// How long after the arming the next CPU stops them.
const STOP_AFTER: Duration = Duration::from_micros(1_200);
/// How late a callout may run (a correctness bound, generous for TCG and
/// nested KVM on a loaded host, where 60 ms were seen).
const CALLOUT_LATE_BOUND: Duration = Duration::from_millis(250);
/// How long past a stopped callout's deadline the stopper watches that
/// it does not run.
const STOPPED_WATCH: Duration = Duration::from_millis(5);

type Co = Callout<Box<dyn FnMut(Fired<'_>) + Send>>;

/// Per callout (`cpu * CALLOUTS + k`): its runs, the CPU of its last
/// run, when it was armed and when it ran (clock ns), and the stop's
/// answer (0 not stopped yet, 1 prevented a run, 2 did not).
static CO_RUNS: [AtomicU64; MAX_CPUS * CALLOUTS] =
    [const { AtomicU64::new(0) }; MAX_CPUS * CALLOUTS];
static CO_RAN_ON: [AtomicU64; MAX_CPUS * CALLOUTS] =
    [const { AtomicU64::new(u64::MAX) }; MAX_CPUS * CALLOUTS];
static CO_ARMED_AT: [AtomicU64; MAX_CPUS * CALLOUTS] =
    [const { AtomicU64::new(0) }; MAX_CPUS * CALLOUTS];
static CO_RAN_AT: [AtomicU64; MAX_CPUS * CALLOUTS] =
    [const { AtomicU64::new(0) }; MAX_CPUS * CALLOUTS];
static CO_STOP: [AtomicU64; MAX_CPUS * CALLOUTS] =
    [const { AtomicU64::new(0) }; MAX_CPUS * CALLOUTS];
/// Per CPU: its callouts are armed.
static CO_ARMED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: callouts accounted for exactly once (ran once and not
/// stopped, or stopped and never ran), on their CPU, not early, not too
/// late; and how many of them ran and how many were stopped.
static CO_OK: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static CO_FIRED: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static CO_STOPPED: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];

// `c` names the CPU in every closure below, not just an index.
#[allow(clippy::needless_range_loop)]
fn callouts(cur: &mut Cur, n: usize) {
    let mut hs = alloc::vec::Vec::new();
    for c in 0..n {
        let cos: [Pin<&'static Co>; CALLOUTS] = core::array::from_fn(|k| {
            let i = c * CALLOUTS + k;
            let f: Box<dyn FnMut(Fired<'_>) + Send> = Box::new(move |fired: Fired<'_>| {
                CO_RAN_AT[i].store(now(), Ordering::Relaxed);
                CO_RAN_ON[i].store(fired.my().id().index() as u64, Ordering::Relaxed);
                CO_RUNS[i].fetch_add(1, Ordering::Release);
            });
            Pin::static_ref(Box::leak(Box::new(Callout::new(f))))
        });
        hs.push(spawn(
            cur,
            c,
            "callout-armer",
            Priority::default(),
            move |me| {
                for (k, co) in cos.iter().enumerate() {
                    let i = c * CALLOUTS + k;
                    CO_ARMED_AT[i].store(now(), Ordering::Relaxed);
                    co.reset(me.my_cpu(), Duration::from_micros(CALLOUT_DELAYS_US[k]));
                }
                CO_ARMED[c].store(true, Ordering::Release);
            },
        ));
        hs.push(spawn(
            cur,
            (c + 1) % n,
            "callout-stopper",
            Priority::default(),
            move |me| {
                wait_for(me, "callouts armed", Duration::from_secs(5), || {
                    CO_ARMED[c].load(Ordering::Acquire)
                });
                me.sleep_for(STOP_AFTER);
                // Stop them from this CPU: `stop` (which does not wait for a
                // running callback) for even ones, `stop_sync` for odd.
                for (k, co) in cos.iter().enumerate() {
                    let i = c * CALLOUTS + k;
                    let prevented = if k % 2 == 0 {
                        co.stop(me.my_cpu())
                    } else {
                        let p = co.stop_sync(me.my_cpu());
                        // `stop_sync` returns once the callback is not
                        // running: if it did not prevent the run, the run
                        // is over.
                        if !p && CO_RUNS[i].load(Ordering::Acquire) != 1 {
                            crate::kprintln!(
                                "cpu {c}: callout {k}: stop_sync prevented nothing, yet it ran {} times",
                                CO_RUNS[i].load(Ordering::Relaxed)
                            );
                        }
                        p
                    };
                    CO_STOP[i].store(if prevented { 1 } else { 2 }, Ordering::Release);
                }
                // Wait until every callout not stopped has run, then past
                // every stopped one's deadline (the hour-long one aside),
                // and check each.
                for (k, d) in CALLOUT_DELAYS_US.iter().enumerate() {
                    let i = c * CALLOUTS + k;
                    let due = CO_ARMED_AT[i].load(Ordering::Relaxed) + d * 1_000;
                    if CO_STOP[i].load(Ordering::Relaxed) == 2 {
                        wait_for(me, "a callout not stopped runs", Duration::from_secs(5), || {
                            CO_RUNS[i].load(Ordering::Acquire) != 0
                        });
                    } else if *d < 1_000_000 {
                        while now() < due + ns(STOPPED_WATCH) {
                            me.sleep_for(Duration::from_micros(200));
                        }
                    }
                }
                for k in 0..CALLOUTS {
                    check_callout(c, k);
                }
            },
        ));
    }
    join_all(cur, hs);
}

fn check_callout(c: usize, k: usize) {
    let i = c * CALLOUTS + k;
    let runs = CO_RUNS[i].load(Ordering::Acquire);
    let stop = CO_STOP[i].load(Ordering::Relaxed);
    let d = CALLOUT_DELAYS_US[k] * 1_000;
    match (stop, runs) {
        (1, 0) => {
            CO_STOPPED[c].fetch_add(1, Ordering::Relaxed);
            CO_OK[c].fetch_add(1, Ordering::Relaxed);
        }
        (2, 1) => {
            let on = CO_RAN_ON[i].load(Ordering::Relaxed);
            let late = (CO_RAN_AT[i].load(Ordering::Relaxed))
                .checked_sub(CO_ARMED_AT[i].load(Ordering::Relaxed) + d);
            if on != c as u64 {
                crate::kprintln!("cpu {c}: callout {k} ran on cpu {on}");
            } else if late.is_none() {
                crate::kprintln!("cpu {c}: callout {k} ({d} ns) ran early");
            } else if late > Some(ns(CALLOUT_LATE_BOUND)) {
                crate::kprintln!("cpu {c}: callout {k} ran {late:?} ns late");
            } else {
                CO_FIRED[c].fetch_add(1, Ordering::Relaxed);
                CO_OK[c].fetch_add(1, Ordering::Relaxed);
            }
        }
        (1, r) => crate::kprintln!("cpu {c}: callout {k}: stopped, yet it ran {r} times"),
        (_, r) => crate::kprintln!("cpu {c}: callout {k}: not stopped, ran {r} times (want 1)"),
    }
}

// ---------------------------------------------------------------------------
// Preemption of a CPU-bound thread by interrupt threads.

/// The line raised with `MyCpu::raise_interrupt` (lwkt posts it, the
/// backend's `Arch::interrupt` sends the IPI vector).
const IRQ_RAISED: usize = 5;
/// The line raised by sending its device vector to the CPU as a fixed IPI
/// (the backend's device entry posts it), as an MSI would.
const IRQ_VECTOR: usize = crate::DEVICE_LINE;
const LINES: [usize; 2] = [IRQ_RAISED, IRQ_VECTOR];
/// Collections each interrupt thread must make while the spinner spins.
const PREEMPTIONS_WANTED: u64 = 3;

/// Per CPU: the spinner's progress, its state (0 not started, 1 spinning,
/// 2 done), and the flag only that CPU's interrupt threads set.
static SPIN: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static SPIN_STATE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static SPIN_STOP: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: bit k set once line `LINES[k]`'s thread registered, and
/// once it exited.
static ITH_READY: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static ITH_DONE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per line and CPU: interrupts collected while the spinner was spinning
/// and had made progress since the last one (so it ran in between).
static PREEMPTS: [Counts; 2] = [const { [const { AtomicU64::new(0) }; MAX_CPUS] }; 2];
/// Per CPU: preemptions lwkt counted during the test.
static PREEMPT_STATS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];

fn preemption(cur: &mut Cur, n: usize, cpus: &'static [Cpu]) {
    let before: alloc::vec::Vec<u64> = cpus.iter().map(|c| c.stats().preemptions).collect();
    let mut hs = alloc::vec::Vec::new();
    for c in 0..n {
        for (k, &line) in LINES.iter().enumerate() {
            hs.push(spawn(cur, c, "ithread", Priority::INT_MED, move |me| {
                me.register_interrupt(line)
                    .unwrap_or_else(|e| crate::fail!("cpu {c}: register_interrupt({line}): {e:?}"));
                ITH_READY[c].fetch_or(1 << k, Ordering::Release);
                let mut last = None;
                while !SPIN_STOP[c].load(Ordering::Acquire) {
                    me.wait_interrupt(line);
                    if SPIN_STATE[c].load(Ordering::Acquire) == 1 {
                        // We run on the spinner's CPU while it spins: only
                        // preemption can have let us in.
                        let p = SPIN[c].load(Ordering::Relaxed);
                        if last.is_none_or(|l| p > l) {
                            PREEMPTS[k][c].fetch_add(1, Ordering::Relaxed);
                        }
                        last = Some(p);
                    }
                    if PREEMPTS
                        .iter()
                        .all(|p| p[c].load(Ordering::Relaxed) >= PREEMPTIONS_WANTED)
                    {
                        SPIN_STOP[c].store(true, Ordering::Release);
                    }
                }
                ITH_DONE[c].fetch_or(1 << k, Ordering::Release);
            }));
        }
        // The raiser lives on the next CPU, above the spinners' priority:
        // its timed sleeps end by timer interrupt and preempt the spinner
        // there.
        hs.push(spawn(
            cur,
            (c + 1) % n,
            "raiser",
            Priority::SOFT_NORM,
            move |me| {
                wait_for(
                    me,
                    "interrupt threads registered",
                    Duration::from_secs(5),
                    || {
                        ITH_READY[c].load(Ordering::Acquire) == 0b11
                            && SPIN_STATE[c].load(Ordering::Acquire) == 1
                    },
                );
                let t0 = now();
                while ITH_DONE[c].load(Ordering::Acquire) != 0b11 {
                    if now() - t0 > ns(Duration::from_secs(10)) {
                        crate::fail!(
                            "cpu {c}: the spinner was not preempted: {} and {} interrupts \
                             collected while it spun",
                            PREEMPTS[0][c].load(Ordering::Relaxed),
                            PREEMPTS[1][c].load(Ordering::Relaxed)
                        );
                    }
                    me.my_cpu()
                        .raise_interrupt(CpuId::new(c as u32), IRQ_RAISED)
                        .unwrap_or_else(|e| crate::fail!("raise_interrupt: {e:?}"));
                    crate::kernel().send_device_interrupt(c, IRQ_VECTOR);
                    me.sleep_for(Duration::from_micros(300));
                }
            },
        ));
        hs.push(spawn(cur, c, "spinner", Priority::default(), move |_me| {
            // CPU-bound: never yields, never calls lwkt.
            SPIN_STATE[c].store(1, Ordering::Release);
            while !SPIN_STOP[c].load(Ordering::Acquire) {
                SPIN[c].fetch_add(1, Ordering::Relaxed);
                crate::relax();
            }
            SPIN_STATE[c].store(2, Ordering::Release);
        }));
    }
    join_all(cur, hs);
    for (c, cpu) in cpus.iter().enumerate() {
        PREEMPT_STATS[c].store(cpu.stats().preemptions - before[c], Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// Timed message waits.

static TPORTS: [AtomicPtr<Port<u64>>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];
/// Per CPU: the client's plain `domsg_timeout` timed out.
static CLIENT_TIMED_OUT: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU: timed message waits that ended as they must, not early.
static MSG_TIMEOUTS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
const MSG_TIMEOUT: Duration = Duration::from_millis(2);
/// Per CPU: how far its client and its server got (printed if the test
/// does not end: a thread blocked without a timer leaves every CPU idle,
/// and QEMU's NMI dump does not work under KVM).
static CLIENT_STAGE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static SERVER_STAGE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: abortable requests the server saw (the others were aborted
/// at the port, before it took them).
static ABORTS_SEEN: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];

fn msg_timeouts(cur: &mut Cur, n: usize) {
    let mut hs = alloc::vec::Vec::new();
    for c in 0..n {
        // The server of CPU c's client, on the next CPU: it holds a plain
        // request until the client has timed out, and an abortable one
        // until the client aborts it.
        hs.push(spawn(
            cur,
            (c + 1) % n,
            "slow-server",
            Priority::default(),
            move |me| {
                let port: &'static Port<u64> = Port::thread(me).leak();
                TPORTS[c].store(
                    port as *const Port<u64> as *mut Port<u64>,
                    Ordering::Release,
                );
                let m = port
                    .waitport(me)
                    .request()
                    .unwrap_or_else(|| crate::fail!("cpu {c}: slow server: no request"));
                SERVER_STAGE[c].store(2, Ordering::Relaxed);
                wait_for(me, "the client's timeout", Duration::from_secs(5), || {
                    CLIENT_TIMED_OUT[c].load(Ordering::Acquire)
                });
                m.reply(me.my_cpu(), Ok(()));
                SERVER_STAGE[c].store(3, Ordering::Relaxed);
                // The abortable one: the abort may take at the port (the
                // request never reaches us: the port replies it) or here.
                // So wait for it with timeouts until the client has it
                // back.
                loop {
                    match port.waitport_timeout(me, Duration::from_millis(1)) {
                        Ok(Incoming::Request(m)) => {
                            SERVER_STAGE[c].store(4, Ordering::Relaxed);
                            wait_for(me, "the client's abort", Duration::from_secs(5), || {
                                m.abort_requested()
                            });
                            m.reply(me.my_cpu(), Err(MsgError::Aborted));
                            ABORTS_SEEN[c].fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => crate::fail!("cpu {c}: slow server: a reply on its port"),
                        Err(TimedOut) if CLIENT_STAGE[c].load(Ordering::Acquire) >= 6 => break,
                        Err(TimedOut) => {}
                    }
                }
                SERVER_STAGE[c].store(5, Ordering::Relaxed);
                port.close(me);
                SERVER_STAGE[c].store(6, Ordering::Relaxed);
            },
        ));
        hs.push(spawn(
            cur,
            c,
            "timed-client",
            Priority::default(),
            move |me| {
                // A port nobody sends to: `waitport_timeout` times out.
                CLIENT_STAGE[c].store(1, Ordering::Relaxed);
                let own: &'static Port<u64> = Port::thread(me).leak();
                let t0 = now();
                let r = own.waitport_timeout(me, MSG_TIMEOUT);
                let took = now() - t0;
                match r {
                    Err(TimedOut) if took >= ns(MSG_TIMEOUT) => {
                        MSG_TIMEOUTS[c].fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TimedOut) => crate::kprintln!("cpu {c}: waitport_timeout early: {took} ns"),
                    Ok(i) => crate::kprintln!(
                        "cpu {c}: waitport_timeout on an idle port returned {}",
                        if matches!(i, Incoming::Request(_)) {
                            "a request"
                        } else {
                            "a reply"
                        }
                    ),
                }
                own.close(me);
                CLIENT_STAGE[c].store(2, Ordering::Relaxed);
                let port = loop {
                    let p = TPORTS[c].load(Ordering::Acquire);
                    if !p.is_null() {
                        // SAFETY: a leaked, 'static port published by its server.
                        break unsafe { &*p };
                    }
                    me.sleep_for(Duration::from_micros(100));
                };
                // A plain message: `Err(TimedOut)`, still in flight; then the
                // server replies and the wait gets it back.
                let mut m = pin!(Msg::new(7u64));
                let t0 = now();
                CLIENT_STAGE[c].store(3, Ordering::Relaxed);
                let r = port.domsg_timeout(me, m.as_mut(), MSG_TIMEOUT);
                let took = now() - t0;
                let in_flight = !m.is_done();
                CLIENT_TIMED_OUT[c].store(true, Ordering::Release);
                CLIENT_STAGE[c].store(4, Ordering::Relaxed);
                let back = m.as_mut().wait(me);
                CLIENT_STAGE[c].store(5, Ordering::Relaxed);
                match r {
                    Err(TimedOut) if took >= ns(MSG_TIMEOUT) && in_flight && back == Ok(()) => {
                        MSG_TIMEOUTS[c].fetch_add(1, Ordering::Relaxed);
                    }
                    _ => crate::kprintln!(
                        "cpu {c}: domsg_timeout against a silent server: {r:?} after {took} ns \
                     (in flight {in_flight}, then {back:?})"
                    ),
                }
                // An abortable one: aborted at the timeout, back when the
                // server gives up on it.
                let mut m = pin!(Msg::new(8u64).abortable());
                let t0 = now();
                let r = port.domsg_timeout(me, m.as_mut(), MSG_TIMEOUT);
                let took = now() - t0;
                CLIENT_STAGE[c].store(6, Ordering::Release);
                match r {
                    Ok(Err(MsgError::Aborted)) if took >= ns(MSG_TIMEOUT) && m.is_done() => {
                        MSG_TIMEOUTS[c].fetch_add(1, Ordering::Relaxed);
                    }
                    _ => crate::kprintln!(
                        "cpu {c}: abortable domsg_timeout: {r:?} after {took} ns (done {})",
                        m.is_done()
                    ),
                }
            },
        ));
    }
    // A bounded join: a thread blocked for good fails the run with the
    // stages reached, rather than leaving every CPU idle until the
    // runner's timeout.
    let t0 = now();
    while !hs.iter().all(ThreadHandle::has_exited) {
        if now() - t0 > ns(Duration::from_secs(10)) {
            for c in 0..n {
                crate::kprintln!(
                    "cpu {c}: client stage {}, server stage {}",
                    CLIENT_STAGE[c].load(Ordering::Relaxed),
                    SERVER_STAGE[c].load(Ordering::Relaxed)
                );
            }
            crate::fail!("the timed message waits did not end within 10 s");
        }
        cur.sleep_for(Duration::from_millis(1));
    }
    join_all(cur, hs);
}

// ---------------------------------------------------------------------------
// Time slicing.

/// Turns each of a CPU's two CPU-bound threads must see: times it found
/// its peer's counter moved between two of its own iterations (the peer
/// ran in between, on the same CPU: a round-robin switch).
const TURNS_WANTED: u64 = 3;
/// Per CPU and thread: iterations, and turns seen.
static SLICE_ITERS: [Counts; 2] = [const { [const { AtomicU64::new(0) }; MAX_CPUS] }; 2];
static SLICE_TURNS: [Counts; 2] = [const { [const { AtomicU64::new(0) }; MAX_CPUS] }; 2];
/// Per CPU: round-robin switches lwkt counted during the test.
static SLICE_STATS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Two CPU-bound threads of the same priority on every CPU, which never
/// yield and never call lwkt: both progress, taking turns at each
/// [`lwkt_core::TIME_SLICE`] (the slice timer's interrupt round-robins
/// them from its frame). Each spins until both have seen
/// [`TURNS_WANTED`] turns, so neither leaves its peer alone too early.
fn time_slicing(cur: &mut Cur, n: usize, cpus: &'static [Cpu]) {
    let before: alloc::vec::Vec<u64> = cpus.iter().map(|c| c.stats().slices).collect();
    let mut hs = alloc::vec::Vec::new();
    for c in 0..n {
        for me_k in 0..2 {
            hs.push(spawn(
                cur,
                c,
                "cpu-bound",
                Priority::default(),
                move |_me| {
                    let peer = 1 - me_k;
                    let t0 = now();
                    let mut seen = SLICE_ITERS[peer][c].load(Ordering::Relaxed);
                    loop {
                        if SLICE_TURNS[me_k][c].load(Ordering::Relaxed) >= TURNS_WANTED
                            && SLICE_TURNS[peer][c].load(Ordering::Relaxed) >= TURNS_WANTED
                        {
                            break;
                        }
                        SLICE_ITERS[me_k][c].fetch_add(1, Ordering::Relaxed);
                        let p = SLICE_ITERS[peer][c].load(Ordering::Relaxed);
                        if p != seen {
                            // The peer ran since our last iteration: we were
                            // switched away from and back (both live here).
                            seen = p;
                            SLICE_TURNS[me_k][c].fetch_add(1, Ordering::Relaxed);
                        }
                        if now() - t0 > ns(Duration::from_secs(10)) {
                            crate::fail!(
                                "cpu {c}: CPU-bound thread {me_k}: {} turns in 10 s (its peer {})",
                                SLICE_TURNS[me_k][c].load(Ordering::Relaxed),
                                SLICE_TURNS[peer][c].load(Ordering::Relaxed)
                            );
                        }
                        crate::relax();
                    }
                },
            ));
        }
    }
    join_all(cur, hs);
    for (c, cpu) in cpus.iter().enumerate() {
        SLICE_STATS[c].store(cpu.stats().slices - before[c], Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------

/// Run the four parts, all CPUs at once in each.
pub(crate) fn run(cur: &mut Cur, n: usize, cpus: &'static [Cpu]) {
    callouts(cur, n);
    crate::kprintln!("  callouts: done");
    preemption(cur, n, cpus);
    crate::kprintln!("  preemption of a CPU-bound thread: done");
    msg_timeouts(cur, n);
    crate::kprintln!("  domsg_timeout: done");
    time_slicing(cur, n, cpus);
    crate::kprintln!("  time slicing: done");
}

/// Print the per-CPU table of this module's counts; whether all are right.
pub(crate) fn report(n: usize) -> bool {
    let want: [(&str, &Counts, u64); 4] = [
        ("callouts", &CO_OK, CALLOUTS as u64),
        ("preempt-raise", &PREEMPTS[0], PREEMPTIONS_WANTED),
        ("preempt-vector", &PREEMPTS[1], PREEMPTIONS_WANTED),
        ("msg-timeouts", &MSG_TIMEOUTS, 3),
    ];
    let mut ok = true;
    crate::kprintln!(
        "cpu  callouts  fired  stopped  preempt-raise  preempt-vector  preemptions  msg-timeouts  slice-turns  slices"
    );
    for c in 0..n {
        let co = CO_OK[c].load(Ordering::Relaxed);
        crate::kprint!("{c:>3}  {co:>8}",);
        if co != CALLOUTS as u64 {
            ok = false;
            crate::kprint!(" (want {CALLOUTS})");
        }
        crate::kprint!(
            "  {:>5}  {:>7}",
            CO_FIRED[c].load(Ordering::Relaxed),
            CO_STOPPED[c].load(Ordering::Relaxed)
        );
        for (name, counts, expect) in &want[1..3] {
            let got = counts[c].load(Ordering::Relaxed);
            let w = name.len();
            crate::kprint!("  {got:>w$}");
            if got < *expect {
                ok = false;
                crate::kprint!(" (want >= {expect})");
            }
        }
        let p = PREEMPT_STATS[c].load(Ordering::Relaxed);
        crate::kprint!("  {p:>11}");
        if p == 0 {
            ok = false;
            crate::kprint!(" (want > 0)");
        }
        let m = MSG_TIMEOUTS[c].load(Ordering::Relaxed);
        crate::kprint!("  {m:>12}");
        if m != want[3].2 {
            ok = false;
            crate::kprint!(" (want {})", want[3].2);
        }
        let turns = SLICE_TURNS
            .iter()
            .map(|t| t[c].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        crate::kprint!("  {turns:>11}");
        if turns < TURNS_WANTED {
            ok = false;
            crate::kprint!(" (want >= {TURNS_WANTED})");
        }
        let sl = SLICE_STATS[c].load(Ordering::Relaxed);
        crate::kprint!("  {sl:>6}");
        if sl == 0 {
            ok = false;
            crate::kprint!(" (want > 0)");
        }
        crate::kprintln!("");
    }
    // Over the machine both outcomes of a stop happened: the hour-long
    // callouts were all stopped, the zero-delay ones all ran.
    let fired: u64 = CO_FIRED[..n]
        .iter()
        .map(|x| x.load(Ordering::Relaxed))
        .sum();
    let stopped: u64 = CO_STOPPED[..n]
        .iter()
        .map(|x| x.load(Ordering::Relaxed))
        .sum();
    crate::kprintln!("callouts: {fired} ran, {stopped} stopped before they ran");
    let seen: u64 = ABORTS_SEEN[..n]
        .iter()
        .map(|x| x.load(Ordering::Relaxed))
        .sum();
    crate::kprintln!(
        "abortable domsg_timeout: {seen} aborted by the server, {} at the port",
        n as u64 - seen
    );
    ok
}
