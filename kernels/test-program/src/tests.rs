//! The work every CPU does, and the report that checks it (issues 8-17).
//!
//! Each kind of work counts, per CPU, what that CPU did; the report
//! compares every count with what it must be, so a lost IPI, a thread run
//! on the wrong CPU or a lost message shows as a wrong number on a named
//! CPU.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use core::time::Duration;

use lwkt_core::token::{Token, TokenCell};
use lwkt_core::{Cpu, CpuId, CpuMask, Cur, MyCpu, Priority, ThreadHandle, TimedOut, WaitQueue};
use lwkt_msg::{Msg, Port};

use crate::MAX_CPUS;

type Counts = [AtomicU64; MAX_CPUS];

static YIELDS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static HANDOFFS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static IPI_ACKS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static SYNCS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static TOKEN_INCS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static MSGS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// `ACK[target * MAX_CPUS + source]`: the last handshake sequence number
/// `target` answered for `source`, written only by the IPI function.
static ACK: [AtomicU64; MAX_CPUS * MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS * MAX_CPUS];
static TURNS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static PORTS: [AtomicPtr<Port<u64>>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

static TOKEN: Token = Token::new("qemu-test");
static TOTAL: TokenCell<'static, u64> = TokenCell::new(&TOKEN, 0);
/// Handshake rounds per (source, target) pair.
const HANDSHAKES: u64 = 20;

/// Timed sleeps that were not early and late by less than [`LATE_BOUND`].
static SLEEPS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Timed waits nobody ended that returned `Err(TimedOut)`, not early.
static TIMEOUTS: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Timed waits ended by another CPU that returned `Ok`, seen at a clock
/// reading no earlier than the waker's before it woke them.
static WOKEN: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The largest lateness of a timed sleep on each CPU, in ns.
static MAX_LATE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Sum of the timed sleeps' lateness on each CPU, in ns.
static SUM_LATE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The cross-CPU wake-ups: the sleeper is about to sleep (1), the first
/// wait ended (2); what the waker's clock read before it woke it.
static WAKE_STATE: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
static WAKE_AT: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// The second cross-CPU wait's condition.
static WAKE_FLAG: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Wait queues nobody signals.
static QUIET: [WaitQueue; MAX_CPUS] = [const { WaitQueue::new() }; MAX_CPUS];

/// Each CPU's sleepers, in the order they are started: the first armed
/// deadline is the latest, so each later one moves the CPU's timer
/// earlier.
const SLEEP_MS: [u64; 4] = [8, 2, 6, 4];
const SLEEPERS: usize = SLEEP_MS.len();
/// How late a timed wait may end (TCG on a loaded 2-core host is slow to
/// deliver the timer interrupt and to switch to the woken thread; nested
/// KVM with 4 vCPUs on 2 busy host cores was seen 60 ms late).
const LATE_BOUND: Duration = Duration::from_millis(250);
/// The timeout of the waits nobody ends.
const QUIET_TIMEOUT: Duration = Duration::from_millis(2);
/// The timeout of the waits another CPU ends: long enough never to pass.
const WOKEN_TIMEOUT: Duration = Duration::from_secs(5);

static ROUNDS: AtomicU64 = AtomicU64::new(0);
/// `TOTAL` as the main thread read it under the token after the test.
static FINAL_TOTAL: AtomicU64 = AtomicU64::new(0);

fn here(cur: &Cur) -> usize {
    cur.my_cpu().id().index()
}

/// The backend's clock (calibrated at boot).
fn now() -> u64 {
    crate::kernel().now_ns()
}

/// A timed wait on a channel, for the table of waits nobody ends.
type TimedWait = fn(&mut Cur, usize) -> Result<(), TimedOut>;

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn spawn(
    cur: &mut Cur,
    cpu: usize,
    name: &'static str,
    f: impl FnOnce(&mut Cur) + Send + 'static,
) -> ThreadHandle {
    spawn_at(cur, cpu, name, Priority::default(), f)
}

/// [`spawn`] at priority `pri`.
pub(crate) fn spawn_at(
    cur: &mut Cur,
    cpu: usize,
    name: &'static str,
    pri: Priority,
    f: impl FnOnce(&mut Cur) + Send + 'static,
) -> ThreadHandle {
    cur.builder()
        .cpu(CpuId::new(cpu as u32))
        .name(name)
        .priority(pri)
        .spawn(f)
        .unwrap_or_else(|e| crate::fail!("spawn {name} on cpu {cpu}: {e}"))
}

/// Join the threads and drop their handles (a handle keeps its thread's
/// stack, which the backend's pool needs back).
pub(crate) fn join_all(cur: &mut Cur, hs: alloc::vec::Vec<ThreadHandle>) {
    for h in &hs {
        cur.join(h);
    }
}

/// Run every test from the main thread on CPU 0.
pub(crate) fn run(cur: &mut Cur, rounds: u64, cpus: &'static [Cpu]) {
    let n = cur.my_cpu().ncpus();
    ROUNDS.store(rounds, Ordering::Relaxed);

    // 1. Switches: two threads per CPU yield to each other.
    let hs: alloc::vec::Vec<_> = (0..2 * n)
        .map(|i| {
            spawn(cur, i % n, "yielder", move |me| {
                for _ in 0..rounds {
                    me.yield_now();
                    YIELDS[here(me)].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    join_all(cur, hs);
    crate::kprintln!("  switches: done");

    // 2. Cross-CPU scheduling: pairs on CPUs (i, i+1) hand a turn back and
    //    forth with sleep/wakeup; every wake-up of the other side is an IPI
    //    message to its CPU.
    let mut hs = alloc::vec::Vec::new();
    for (i, turn) in TURNS.iter().enumerate().take(n) {
        for side in 0..2u64 {
            let cpu = if side == 0 { i } else { (i + 1) % n };
            hs.push(spawn(cur, cpu, "ping-pong", move |me| {
                let chan = turn as *const AtomicU64 as usize;
                for r in 0..rounds {
                    let mine = 2 * r + side;
                    me.sleep_until(chan, || turn.load(Ordering::SeqCst) == mine);
                    turn.store(mine + 1, Ordering::SeqCst);
                    HANDOFFS[here(me)].fetch_add(1, Ordering::Relaxed);
                    me.my_cpu().wakeup(chan);
                }
            }));
        }
    }
    join_all(cur, hs);
    crate::kprintln!("  cross-CPU sleep/wakeup: done");

    // 3. IPI handshakes: every CPU sends to every other CPU a function that
    //    records the sequence number, and waits until it is seen.
    let hs: alloc::vec::Vec<_> = (0..n)
        .map(|c| {
            spawn(cur, c, "handshake", move |me| {
                for seq in 1..=HANDSHAKES {
                    for t in (0..n).filter(|&t| t != c) {
                        me.my_cpu()
                            .send_ipi(CpuId::new(t as u32), ack, c, seq as usize)
                            .unwrap_or_else(|e| crate::fail!("send_ipi {c} -> {t}: {e:?}"));
                        while ACK[t * MAX_CPUS + c].load(Ordering::Acquire) != seq {
                            // The kernel's spin hint (`pause`, `yield`) also lets
                            // single-threaded TCG run the other vCPUs at once.
                            crate::relax();
                            me.yield_now();
                        }
                    }
                }
            })
        })
        .collect();
    join_all(cur, hs);
    crate::kprintln!("  IPI handshakes: done");

    // 4. cpusync over all CPUs.
    for _ in 0..rounds {
        cur.cpusync(CpuMask::all(n), &|my: MyCpu<'_>| {
            SYNCS[my.id().index()].fetch_add(1, Ordering::Relaxed);
        });
    }
    crate::kprintln!("  cpusync: done");

    // 5. One token from every CPU; half the holds yield while holding it
    //    (the token is released while the thread is switched out and taken
    //    again before it runs), and no increment may be lost.
    let hs: alloc::vec::Vec<_> = (0..2 * n)
        .map(|i| {
            spawn(cur, i % n, "token", move |me| {
                for r in 0..rounds {
                    me.with_token(&TOKEN, |me, held| {
                        if r % 2 == 0 {
                            // Others may take the token and change TOTAL
                            // here, so nothing read before this point may
                            // be used after it (a first version kept the
                            // value read before the yield and lost half
                            // the increments, as the token rules say).
                            me.yield_now();
                        }
                        *TOTAL.get_mut(held, me) += 1;
                    });
                    TOKEN_INCS[here(me)].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    join_all(cur, hs);
    cur.with_token(&TOKEN, |me, held| {
        FINAL_TOTAL.store(*TOTAL.get(held, me), Ordering::Relaxed);
    });
    crate::kprintln!("  tokens: done");

    // 6. Messages: a server port per CPU; a client on every CPU calls the
    //    next CPU's server synchronously.
    let mut hs = alloc::vec::Vec::new();
    for c in 0..n {
        hs.push(spawn(cur, c, "msg-server", move |me| {
            let port: &'static Port<u64> = Port::thread(me).leak();
            PORTS[c].store(
                port as *const Port<u64> as *mut Port<u64>,
                Ordering::Release,
            );
            for _ in 0..rounds {
                let mut m = port
                    .waitport(me)
                    .request()
                    .unwrap_or_else(|| crate::fail!("cpu {c}: a reply or close on a server port"));
                *m += 1;
                MSGS[c].fetch_add(1, Ordering::Relaxed);
                m.reply(me.my_cpu(), Ok(()));
            }
            port.close(me);
        }));
    }
    for c in 0..n {
        hs.push(spawn(cur, c, "msg-client", move |me| {
            let next = (c + 1) % n;
            let port = loop {
                let p = PORTS[next].load(Ordering::Acquire);
                if !p.is_null() {
                    // SAFETY: a leaked, 'static port published by its server.
                    break unsafe { &*p };
                }
                crate::relax();
                me.yield_now();
            };
            let mut m = core::pin::pin!(Msg::new(0u64));
            for _ in 0..rounds {
                port.domsg(me, m.as_mut())
                    .unwrap_or_else(|e| crate::fail!("domsg {c} -> {next}: {e:?}"));
            }
            if *m.body() != rounds {
                crate::fail!("cpu {c}: {} of {rounds} round trips came back", m.body());
            }
        }));
    }
    join_all(cur, hs);
    crate::kprintln!("  messages: done");

    timers(cur, n);
    crate::kprintln!("  timers: done");

    crate::interrupts::run(cur, n, cpus);
}

/// 7. Timed waits on every CPU, all at once:
///
/// - sleepers: [`SLEEPERS`] threads per CPU sleep [`SLEEP_MS`] each with
///   `sleep_for`: none wakes early by the clock, none later than
///   [`LATE_BOUND`] (their wake-up order is not checked: the deadline
///   the test could record is not the one `sleep_for` computes, which a
///   vCPU that TCG or the host holds up between the two clock reads
///   moves later; lwkt-core's own wheel tests check the order);
/// - timeouts: `sleep_timeout`, `sleep_until_timeout` and
///   `WaitQueue::block_since_timeout` on what nobody wakes return
///   `Err(TimedOut)`, not early;
/// - wake-ups: `sleep_timeout` and `sleep_until_timeout` ended by a thread
///   on the next CPU return `Ok(())`, and the woken thread's clock reads
///   no earlier than the waker's did before it woke it (one TSC for all
///   CPUs).
fn timers(cur: &mut Cur, n: usize) {
    let mut hs = alloc::vec::Vec::new();
    // CPU 0 last: this thread runs there until it blocks in `join_all`
    // (lwkt does not preempt), so its sleepers start when it stops.
    for c in (1..n).chain(0..1) {
        for &ms in SLEEP_MS.iter() {
            hs.push(spawn(cur, c, "sleeper", move |me| {
                let d = Duration::from_millis(ms);
                let t0 = now();
                me.sleep_for(d);
                let t1 = now();
                check_sleep(c, "sleep_for", t0, t1, d);
            }));
        }
        hs.push(spawn(cur, c, "timeouts", move |me| {
            let quiet = &QUIET[c];
            let chan = quiet as *const WaitQueue as usize + 1;
            let waits: [(&str, TimedWait); 3] = [
                ("sleep_timeout", |me, chan| {
                    me.sleep_timeout(chan, QUIET_TIMEOUT)
                }),
                ("sleep_until_timeout", |me, chan| {
                    me.sleep_until_timeout(chan, QUIET_TIMEOUT, || false)
                }),
                ("block_since_timeout", |me, _| {
                    let q = &QUIET[here(me)];
                    q.block_since_timeout(me, q.generation(), QUIET_TIMEOUT)
                }),
            ];
            for (name, wait) in waits {
                let t0 = now();
                let r = wait(me, chan);
                let t1 = now();
                if r != Err(TimedOut) {
                    crate::kprintln!("cpu {c}: {name} nobody ends returned {r:?}");
                } else if t1 - t0 < ns(QUIET_TIMEOUT) {
                    crate::kprintln!(
                        "cpu {c}: {name} timed out early: after {} ns of {}",
                        t1 - t0,
                        ns(QUIET_TIMEOUT)
                    );
                } else {
                    TIMEOUTS[c].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        hs.push(spawn(cur, c, "woken", move |me| {
            let chan = &WAKE_STATE[c] as *const AtomicU64 as usize;
            // First wait: `sleep_timeout`, which a wake-up sent before we
            // sleep misses; the waker repeats it until we are done.
            WAKE_STATE[c].store(1, Ordering::SeqCst);
            let r = me.sleep_timeout(chan, WOKEN_TIMEOUT);
            check_woken(c, "sleep_timeout", r, now());
            WAKE_STATE[c].store(2, Ordering::SeqCst);
            // Second: `sleep_until_timeout` on a flag, which loses nothing.
            let flag = &WAKE_FLAG[c];
            let r = me.sleep_until_timeout(chan + 1, WOKEN_TIMEOUT, || flag.load(Ordering::SeqCst));
            check_woken(c, "sleep_until_timeout", r, now());
        }));
        hs.push(spawn(cur, (c + 1) % n, "waker", move |me| {
            let chan = &WAKE_STATE[c] as *const AtomicU64 as usize;
            while WAKE_STATE[c].load(Ordering::SeqCst) == 0 {
                me.sleep_for(Duration::from_micros(100));
            }
            WAKE_AT[c].store(now(), Ordering::SeqCst);
            while WAKE_STATE[c].load(Ordering::SeqCst) == 1 {
                me.my_cpu().wakeup(chan);
                me.sleep_for(Duration::from_micros(200));
            }
            me.sleep_for(Duration::from_millis(1));
            WAKE_AT[c].store(now(), Ordering::SeqCst);
            WAKE_FLAG[c].store(true, Ordering::SeqCst);
            me.my_cpu().wakeup(chan + 1);
        }));
    }
    join_all(cur, hs);
}

/// A timed sleep of `d` on `c` ran from `t0` to `t1`: count it if it was
/// neither early nor too late, and keep its lateness.
fn check_sleep(c: usize, what: &str, t0: u64, t1: u64, d: Duration) {
    let slept = t1 - t0;
    if slept < ns(d) {
        crate::kprintln!("cpu {c}: {what}({d:?}) woke early: after {slept} ns");
        return;
    }
    let late = slept - ns(d);
    MAX_LATE[c].fetch_max(late, Ordering::Relaxed);
    SUM_LATE[c].fetch_add(late, Ordering::Relaxed);
    if late >= ns(LATE_BOUND) {
        crate::kprintln!("cpu {c}: {what}({d:?}) woke {late} ns late (bound {LATE_BOUND:?})");
        return;
    }
    SLEEPS[c].fetch_add(1, Ordering::Relaxed);
}

/// A wait on `c` that the next CPU ends returned `r`, and this CPU's clock
/// then read `t`.
fn check_woken(c: usize, what: &str, r: Result<(), TimedOut>, t: u64) {
    let woke_at = WAKE_AT[c].load(Ordering::SeqCst);
    if r.is_err() {
        crate::kprintln!("cpu {c}: {what} woken by another CPU returned {r:?}");
    } else if t < woke_at {
        crate::kprintln!(
            "cpu {c}: {what}: woken at {t} ns by this CPU's clock, before the waker's read              {woke_at} ns (TSCs out of step)"
        );
    } else {
        WOKEN[c].fetch_add(1, Ordering::Relaxed);
    }
}

fn ack(my: MyCpu<'_>, src: usize, seq: usize) {
    let t = my.id().index();
    ACK[t * MAX_CPUS + src].store(seq as u64, Ordering::Release);
    IPI_ACKS[t].fetch_add(1, Ordering::Relaxed);
}

/// Print the per-CPU report and check every count; true if all hold.
pub(crate) fn report(cpus: &[Cpu]) -> bool {
    let k = crate::kernel();
    let n = cpus.len();
    let r = ROUNDS.load(Ordering::Relaxed);
    let want = [
        ("yields", &YIELDS, 2 * r),
        ("handoffs", &HANDOFFS, 2 * r),
        ("ipi-acks", &IPI_ACKS, (n as u64 - 1) * HANDSHAKES),
        ("cpusync", &SYNCS, r),
        ("token", &TOKEN_INCS, 2 * r),
        ("msgs", &MSGS, r),
        ("sleeps", &SLEEPS, SLEEPERS as u64),
        ("timeouts", &TIMEOUTS, 3),
        ("woken", &WOKEN, 2),
    ];
    let mut ok = true;
    crate::kprintln!(
        "cpu  {}  switches  ipis-run  yields  handoffs  ipi-acks  cpusync  token  msgs  sleeps  timeouts  woken  late-max-us  late-mean-us",
        k.cpu_header()
    );
    for (i, c) in cpus.iter().enumerate() {
        let s = c.stats();
        crate::kprint!("{i:>3}  ");
        let gs = k.cpu_columns(i);
        crate::kprint!("  {:>8}  {:>8}", s.switches, s.ipis_received);
        for (name, counts, expect) in &want {
            let got = counts[i].load(Ordering::Relaxed);
            let w = name.len().max(6);
            crate::kprint!("  {got:>w$}");
            if got != *expect {
                ok = false;
                crate::kprint!(" (want {expect})");
            }
        }
        crate::kprintln!(
            "  {:>11}  {:>12}",
            MAX_LATE[i].load(Ordering::Relaxed) / 1_000,
            SUM_LATE[i].load(Ordering::Relaxed) / SLEEPERS as u64 / 1_000
        );
        ok &= gs && s.switches > 0 && (n == 1 || s.ipis_received > 0);
    }
    let (cpu, late) = (0..n)
        .map(|i| (i, MAX_LATE[i].load(Ordering::Relaxed)))
        .max_by_key(|&(_, l)| l)
        .unwrap_or((0, 0));
    crate::kprintln!(
        "timed sleeps: max lateness {} us (cpu {cpu}), bound {} ms",
        late / 1_000,
        LATE_BOUND.as_millis()
    );
    let total = FINAL_TOTAL.load(Ordering::Relaxed);
    let expect = 2 * n as u64 * r;
    crate::kprintln!("token-protected counter: {total} (want {expect})");
    let more = crate::interrupts::report(n);
    ok && total == expect && more
}
