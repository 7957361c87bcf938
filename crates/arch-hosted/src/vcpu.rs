//! Virtual CPUs: OS threads that each run one lwkt CPU's idle loop, and the
//! [`Arch`] implementation that ties them to lwkt-core.
//!
//! Interrupts: a kick to a running vCPU posts a check
//! ([`Cpu::post_ipi_check`]) that LWKT code answers at its next
//! critical-section exit or switch, usually within a microsecond, and the
//! sender goes on. The machine's watchdog thread signals (SIGUSR1, as
//! DragonFly's vkernel does for every IPI) a vCPU that leaves a posted
//! check unanswered for a whole window; the handler is the IPI interrupt
//! entry ([`Cpu::ipi_interrupt`]) and honours the critical-section count
//! exactly like the real vector, so a thread that busy-waits outside a
//! critical section still sees IPIs. The watchdog also signals a vCPU that
//! watches its rings (lwkt-core's watch, during which senders do not kick)
//! but leaves entries in them unrun for a whole scan period. A parked vCPU
//! (a futex wait after its idle loop's watch) is woken with an unpark.
//!
//! Timers: each vCPU has a kernel timer (a POSIX timer that signals the
//! vCPU thread itself, with the same signal) armed at its one-shot
//! deadline; the handler posts the timer interrupt and ends a park. The
//! idle watch adapts its length to how often it paid (`adapt_poll`).

use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use lwkt_core::{Arch, Context, Cpu, EntryFn, Stack};

/// Signal that carries kicks (DragonFly's vkernel uses the same one).
pub const IPI_SIGNAL: libc::c_int = libc::SIGUSR1;

thread_local! {
    static CURRENT: Cell<*const Cpu> = const { Cell::new(ptr::null()) };
}

/// The CPU block of the calling OS thread, if it is a virtual CPU.
pub(crate) fn current_cpu_block() -> Option<&'static Cpu> {
    let p = CURRENT.with(Cell::get);
    // SAFETY: set only while the vCPU runs its idle loop, during which the
    // machine (and so the CPU block) is alive; cleared before it goes away.
    // The 'static is a white lie confined to this crate's callers, which use
    // it only within that window.
    unsafe { p.as_ref() }
}

/// Name the vCPU the calling host thread runs now (null: none, e.g. a
/// multiplexed host thread's scheduler, or a switch between its vCPUs).
pub(crate) fn set_current(cpu: *const Cpu) {
    CURRENT.with(|c| c.set(cpu));
}

/// Per-vCPU backend state, pointed to by the CPU block's arch word 0.
pub(crate) struct Vcpu {
    pub(crate) pthread: AtomicUsize,
    pub(crate) thread: std::sync::OnceLock<std::thread::Thread>,
    /// What the vCPU is doing, for `kick`: `RUNNING` (including lwkt-core's
    /// idle watch of the rings, during which senders do not kick) or
    /// `PARKED` (in or about to enter `park()`).
    pub(crate) sleeping: AtomicU32,
    pub(crate) signals_sent: AtomicUsize,
    pub(crate) unparks_sent: AtomicUsize,
    /// Kicks this vCPU posted to running targets for their next
    /// critical-section exit (the watchdog signals a target that does not
    /// look).
    pub(crate) soft_kicks: AtomicUsize,
    /// Cycle count of the oldest posted kick the watchdog has not yet seen
    /// answered (0: none).
    pub(crate) posted_at: AtomicU64,
    /// The vCPU's one-shot timer: its deadline on [`clock_ns`], or
    /// `u64::MAX` when none is set (`Arch::set_timer`). The watchdog thread
    /// delivers it.
    pub(crate) timer: AtomicU64,
    /// The watchdog thread of the vCPU's machine, to wake when the timer is
    /// set earlier (only for a vCPU without a kernel timer).
    pub(crate) watchdog: std::sync::OnceLock<std::thread::Thread>,
    /// The vCPU's own kernel timer (a POSIX timer on `CLOCK_MONOTONIC`
    /// that signals the vCPU thread itself, `SIGEV_THREAD_ID`), or
    /// `NO_KTIMER` when it could not be created (the watchdog then
    /// delivers the deadline). Created and deleted by the vCPU thread
    /// (`run_vcpu`); armed by `set_timer`, which runs on it.
    pub(crate) ktimer: AtomicU64,
    /// Deadlines the kernel timer's signal delivered.
    pub(crate) timer_signals: AtomicUsize,
    /// Signals being sent to `pthread` right now (`signal`): the vCPU
    /// thread waits for none before it exits (`retire_pthread`).
    pub(crate) signalling: AtomicUsize,
    /// How long the idle loop watches the rings before it parks, in
    /// cycles (`idle_poll_cycles`), adapted after each park
    /// (`adapt_poll`). Only the vCPU itself uses it.
    pub(crate) poll: AtomicU64,
    /// The `mux::Group` of the host thread that runs this vCPU with others
    /// (0: it has a host thread of its own), and its index there. Set
    /// before the machine starts.
    pub(crate) group: AtomicUsize,
    pub(crate) slot: AtomicUsize,
    /// Times the watchdog saw this vCPU kept from running for
    /// `STARVE_AFTER` while it had work and a sibling on its host thread
    /// ran without letting it (the starvation rule of M:N).
    pub(crate) starved: AtomicUsize,
}

/// `Vcpu::ktimer` when the vCPU has no kernel timer.
const NO_KTIMER: u64 = u64::MAX;

impl Vcpu {
    pub(crate) fn new() -> Vcpu {
        Vcpu {
            pthread: AtomicUsize::new(0),
            thread: std::sync::OnceLock::new(),
            sleeping: AtomicU32::new(0),
            signals_sent: AtomicUsize::new(0),
            unparks_sent: AtomicUsize::new(0),
            soft_kicks: AtomicUsize::new(0),
            posted_at: AtomicU64::new(0),
            timer: AtomicU64::new(u64::MAX),
            watchdog: std::sync::OnceLock::new(),
            ktimer: AtomicU64::new(NO_KTIMER),
            timer_signals: AtomicUsize::new(0),
            poll: AtomicU64::new(IDLE_POLL_CYCLES),
            signalling: AtomicUsize::new(0),
            group: AtomicUsize::new(0),
            slot: AtomicUsize::new(0),
            starved: AtomicUsize::new(0),
        }
    }

    /// The group this vCPU shares a host thread with, if any.
    pub(crate) fn group(&self) -> Option<&crate::mux::Group> {
        // SAFETY: set by `Machine` to a group that outlives the machine's
        // run (dropped after every vCPU and the watchdog are joined).
        unsafe { (self.group.load(Ordering::Relaxed) as *const crate::mux::Group).as_ref() }
    }

    /// Whether this vCPU is on its host thread now (always, without M:N):
    /// only then may a signal to that thread act for it.
    pub(crate) fn on_host_thread(&self) -> bool {
        self.group()
            .is_none_or(|g| g.current.load(Ordering::SeqCst) == self.slot.load(Ordering::Relaxed))
    }

    /// The vCPU's kernel timer, if it has one.
    fn ktimer(&self) -> Option<libc::timer_t> {
        match self.ktimer.load(Ordering::Relaxed) {
            NO_KTIMER => None,
            id => Some(id as usize as libc::timer_t),
        }
    }
}

/// Create the calling vCPU thread's kernel timer: `CLOCK_MONOTONIC` (the
/// clock of `clock_ns`), signalling `IPI_SIGNAL` to this very thread.
/// Failure (a process out of timers) leaves the vCPU to the watchdog.
fn create_ktimer(v: &Vcpu) {
    // SAFETY: a zeroed sigevent is valid; we fill in the fields the kernel
    // reads for SIGEV_THREAD_ID (the notification, the signal, the thread
    // id of the caller, which is alive: it is us). `id` is written by the
    // call on success.
    unsafe {
        let mut sev: libc::sigevent = core::mem::zeroed();
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = IPI_SIGNAL;
        sev.sigev_notify_thread_id = libc::gettid();
        let mut id: libc::timer_t = ptr::null_mut();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) == 0 {
            v.ktimer.store(id as usize as u64, Ordering::Relaxed);
        }
    }
}

/// Delete the calling vCPU thread's kernel timer (its idle loop is over).
fn delete_ktimer(v: &Vcpu) {
    if let Some(id) = v.ktimer() {
        v.ktimer.store(NO_KTIMER, Ordering::Relaxed);
        // SAFETY: `id` is this vCPU's timer, created by `create_ktimer`
        // and deleted only here, once.
        unsafe { libc::timer_delete(id) };
    }
}

/// Arm the kernel timer `id` for the absolute deadline `d` on
/// `CLOCK_MONOTONIC`, or disarm it (`u64::MAX`). A deadline already past
/// fires at once.
fn arm_ktimer(id: libc::timer_t, d: u64) {
    let at = if d == u64::MAX {
        libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }
    } else {
        // Never all 0, which would disarm it (a deadline of 0 is past).
        let d = d.max(1);
        libc::timespec {
            tv_sec: (d / 1_000_000_000) as libc::time_t,
            tv_nsec: (d % 1_000_000_000) as libc::c_long,
        }
    };
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: at,
    };
    // SAFETY: `id` is the calling vCPU's live timer; `spec` is a valid
    // itimerspec read by the call; no old value is asked for.
    unsafe { libc::timer_settime(id, libc::TIMER_ABSTIME, &spec, ptr::null_mut()) };
}

/// The timer half of the signal handler: the kernel timer's signal (or any
/// signal after the deadline) posts the vCPU's timer interrupt, once, and
/// ends the vCPU's park if it is parked.
fn timer_interrupt(cpu: &Cpu, v: &Vcpu) {
    let d = v.timer.load(Ordering::Acquire);
    if d == u64::MAX || v.ktimer.load(Ordering::Relaxed) == NO_KTIMER || clock_ns() < d {
        return;
    }
    if v.timer
        .compare_exchange(d, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        cpu.post_timer();
        v.timer_signals.fetch_add(1, Ordering::Relaxed);
        // We interrupted this thread: if it parks (or is about to), leave
        // it the token that ends the park.
        if v.sleeping.load(Ordering::SeqCst) == PARKED {
            if let Some(t) = v.thread.get() {
                t.unpark();
            }
        }
    }
}

/// The backend record of `cpu`.
///
/// # Safety
/// `cpu` belongs to a running machine built by this backend (which stored
/// the record in word 0 and keeps it alive while the machine runs).
pub(crate) unsafe fn vcpu_of(cpu: &Cpu) -> &Vcpu {
    let p = cpu.arch_word(0) as *const Vcpu;
    assert!(
        !p.is_null(),
        "lwkt-arch-hosted: CPU block not set up by this backend"
    );
    // SAFETY: word 0 is set by `Machine` to its `Vcpu`, alive while the
    // machine runs (caller); nothing else may store there (`set_arch_word`
    // is unsafe and reserved to the backend).
    unsafe { &*p }
}

/// How long a running target may leave a posted kick unanswered before the
/// watchdog signals it: about 40 µs at 2.6 GHz. LWKT code answers at its
/// next critical-section exit, usually within a microsecond; only a thread
/// spinning outside critical sections needs the signal.
const ESCALATE_CYCLES: u64 = 100_000;

/// The watchdog's scan period after it had to signal a vCPU (or saw a
/// stall it will decide about at the next scan), and the longest it
/// sleeps: it doubles per scan that signals nobody, so a machine whose
/// threads answer their kicks wakes it 500 times a second, and a thread
/// spinning outside critical sections waits at most about two periods of
/// `WATCH_MAX` for its first signal.
const WATCH_MIN: Duration = Duration::from_micros(100);
const WATCH_MAX: Duration = Duration::from_millis(2);

/// Interrupt a running vCPU: its signal handler is the IPI entry. Safe
/// against the vCPU thread's exit: its `pthread_t` is dead once the thread
/// has finished (vCPU threads are detached), so the thread first retires
/// it (`retire_pthread`) and waits for the signals already on their way.
fn signal(v: &Vcpu) {
    // A vCPU that shares its host thread and is not on it now: the handler
    // would act for a sibling. It answers when its host thread switches to
    // it.
    if !v.on_host_thread() {
        return;
    }
    // Announce, then look: SeqCst on both sides (here and in
    // `retire_pthread`) means either the exiting thread sees us and waits,
    // or we see its `pthread` cleared.
    v.signalling.fetch_add(1, Ordering::SeqCst);
    let pt = v.pthread.load(Ordering::SeqCst);
    if pt != 0 {
        v.signals_sent.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `pt` is the pthread of a vCPU thread that has not yet
        // passed `retire_pthread` (it is not 0), and that thread waits there
        // until we are done (`signalling`), so it has not finished: a valid
        // target. The signal's handler ignores a thread that has left its
        // idle loop.
        unsafe { libc::pthread_kill(pt as libc::pthread_t, IPI_SIGNAL) };
    }
    v.signalling.fetch_sub(1, Ordering::Release);
}

/// The vCPU thread, before it finishes: no signal may target it from now
/// on. Clears its `pthread` and waits for the signals being sent (a few
/// instructions each: the watchdog's and `interrupt`'s `pthread_kill`).
pub(crate) fn retire_pthread(v: &Vcpu) {
    v.pthread.store(0, Ordering::SeqCst);
    while v.signalling.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

/// The host's monotonic clock in nanoseconds (`Arch::clock`): `CLOCK_MONOTONIC`
/// (what `Instant` reads), read directly, without `Instant`'s epoch
/// arithmetic: a callout's `reset` reads it every time.
#[inline]
pub(crate) fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Deliver the one-shot timers of `vcpus` that are due at `now`: record
/// the timer interrupt on the CPU and kick it (an idle vCPU is unparked,
/// a running one looks at its next critical-section exit). Returns the
/// earliest deadline still set.
fn fire_timers(cpus: &[Cpu], vcpus: &[Vcpu], now: u64, posted: &mut [u64]) -> u64 {
    let mut next = u64::MAX;
    for ((c, v), posted) in cpus.iter().zip(vcpus).zip(posted) {
        if v.ktimer.load(Ordering::Relaxed) != NO_KTIMER {
            // Delivered by the vCPU's own kernel timer.
            continue;
        }
        let d = v.timer.load(Ordering::Acquire);
        if d > now {
            next = next.min(d);
        } else if v
            .timer
            .compare_exchange(d, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            c.post_timer();
            // SAFETY: a CPU of this watchdog's machine, which runs while
            // the watchdog does.
            unsafe { HOSTED.kick(c) };
            // A running vCPU runs its timers at its next critical-section
            // exit; one that does not reach any (a thread that never calls
            // lwkt: time slicing needs it) is signalled by the scan.
            *posted = HOSTED.cycles().max(1);
        }
    }
    next
}

/// The kick watchdog of one machine: while any vCPU runs, signal the
/// targets of posted kicks left unanswered for `ESCALATE_CYCLES`, and the
/// CPUs that watch their rings (so senders do not kick them) but left
/// entries in them unrun from one scan to the next. DragonFly has no such
/// thing: a hardware IPI always interrupts. Here a posted check, or a
/// watch, is the cheap interrupt, and this thread guarantees that it is one.
///
/// It is also the vCPUs' timer hardware: it sleeps until the earliest
/// one-shot deadline (or its next scan) and delivers the due timers
/// (`fire_timers`). A vCPU that sets an earlier deadline unparks it.
pub(crate) fn watchdog(cpus: &[Cpu], vcpus: &[Vcpu], running: &AtomicUsize) {
    for v in vcpus {
        let _ = v.watchdog.set(std::thread::current());
    }
    let mut next_scan = std::time::Instant::now();
    let mut period = WATCH_MIN;
    // Per CPU at the previous scan: kicks answered, IPIs run, and whether
    // its watch had a backlog.
    let mut answered: Vec<u64> = cpus.iter().map(|c| c.stats().kicks_answered).collect();
    let mut received: Vec<u64> = cpus.iter().map(|c| c.stats().ipis_received).collect();
    let mut backlog: Vec<bool> = vec![false; cpus.len()];
    // Per CPU: when a timer was posted to it and not yet run (0: none).
    let mut timer_posted: Vec<u64> = vec![0; cpus.len()];
    // Per CPU of a shared host thread: since when it waits with work while
    // a sibling runs, the host thread's switch count then, and whether that
    // wait was counted as starvation.
    let mut waiting: Vec<Option<(std::time::Instant, u64, bool)>> = vec![None; cpus.len()];
    while running.load(Ordering::Acquire) != 0 {
        next_scan += period;
        loop {
            let next_timer = fire_timers(cpus, vcpus, clock_ns(), &mut timer_posted);
            let now = std::time::Instant::now();
            if now >= next_scan || running.load(Ordering::Acquire) == 0 {
                break;
            }
            let to_timer = Duration::from_nanos(next_timer.saturating_sub(clock_ns()));
            std::thread::park_timeout((next_scan - now).min(to_timer));
        }
        next_scan = next_scan.max(std::time::Instant::now());
        let now = HOSTED.cycles();
        let mut signalled = false;
        let mut suspect = false;
        for (i, (c, v)) in cpus.iter().zip(vcpus).enumerate() {
            if let Some(g) = v.group() {
                if !v.on_host_thread() {
                    // Not on its host thread: a signal would reach a
                    // sibling. It answers its kicks and timers when the host
                    // thread switches to it; give it a fresh window then.
                    watch_starvation(i, v, g, &mut waiting[i]);
                    let t = v.posted_at.load(Ordering::Relaxed);
                    if t != 0 {
                        let _ = v.posted_at.compare_exchange(
                            t,
                            now,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    if timer_posted[i] != 0 {
                        timer_posted[i] = now;
                    }
                    backlog[i] = false;
                    continue;
                }
                waiting[i] = None;
            }
            let stats = c.stats();
            let ran = stats.ipis_received != received[i];
            received[i] = stats.ipis_received;
            let was = core::mem::replace(&mut backlog[i], c.watch_backlog());
            // A backlog on a CPU that ran IPIs since the last scan is the
            // stream it is draining (an entry in flight), not a stall: it
            // neither signals nor shortens the period. Shortening it there
            // kept a busy message stream's watchdog at 100 µs: some 4,000
            // wake-ups a second on a 2-core host, each taking a core from
            // a vCPU for microseconds, and a cross-CPU `domsg` whose
            // replier it preempted outlasted its 2 µs reply watch about
            // once per wake-up (docs/benchmark-notes.md, session 16).
            if backlog[i] && !ran {
                if was {
                    // Entries waited a whole period and none ran: a thread
                    // spins outside critical sections. Interrupt it.
                    signal(v);
                    #[cfg(feature = "log")]
                    log::debug!(
                        "lwkt-arch-hosted: cpu {i}: IPIs waited a whole watchdog period; signalling it"
                    );
                    signalled = true;
                } else {
                    suspect = true;
                }
            }
            if timer_posted[i] != 0 {
                if !c.timer_pending() {
                    timer_posted[i] = 0;
                } else if now.wrapping_sub(timer_posted[i]) >= ESCALATE_CYCLES {
                    // Its timer waited a whole window: the running thread
                    // reaches no critical-section exit. Interrupt it (its
                    // time slice may end in the handler).
                    timer_posted[i] = 0;
                    signal(v);
                    signalled = true;
                } else {
                    suspect = true;
                }
            }
            let moved = stats.kicks_answered != answered[i];
            answered[i] = stats.kicks_answered;
            let t = v.posted_at.load(Ordering::Relaxed);
            if t == 0 {
                continue;
            }
            // Clear or restart the record by exchange: a kick posted
            // meanwhile is then still recorded.
            let update = |to: u64| {
                v.posted_at
                    .compare_exchange(t, to, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            };
            if !c.kick_outstanding() {
                // Answered, and no kick is outstanding now.
                update(0);
            } else if moved {
                // It keeps answering kicks; the outstanding one is newer
                // than the record: give it a whole window.
                update(now);
            } else if now.wrapping_sub(t) >= ESCALATE_CYCLES && update(0) {
                // Not a single kick answered for a whole window: it runs
                // outside critical sections. Interrupt it.
                signal(v);
                #[cfg(feature = "log")]
                log::debug!(
                    "lwkt-arch-hosted: cpu {i}: kick unanswered for a whole window; signalling it"
                );
                signalled = true;
            }
        }
        // After a signal, or on a backlog that the next scan decides about,
        // look again soon.
        period = if signalled || suspect {
            WATCH_MIN
        } else {
            (period * 2).min(WATCH_MAX)
        };
    }
}

/// How long a vCPU may wait with work on its host thread, while a sibling
/// runs without ever giving the thread back, before the watchdog counts it
/// as starved (`Report::starved`, and a `log` warning).
pub(crate) const STARVE_AFTER: Duration = Duration::from_secs(1);

/// The starvation rule of M:N, watched: vCPU `i` (of group `g`, not on its
/// host thread now) waits with work while the host thread keeps running
/// the same sibling (its switch count does not move) for `STARVE_AFTER`:
/// a thread there spins without calling lwkt. Counted once per wait.
fn watch_starvation(
    i: usize,
    v: &Vcpu,
    g: &crate::mux::Group,
    w: &mut Option<(std::time::Instant, u64, bool)>,
) {
    let slot = v.slot.load(Ordering::Relaxed);
    if !g.runnable(slot) {
        *w = None;
        return;
    }
    let sw = g.switches.load(Ordering::Relaxed);
    match w {
        Some((since, seen, counted)) if *seen == sw => {
            if !*counted && since.elapsed() >= STARVE_AFTER {
                *counted = true;
                v.starved.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "log")]
                log::warn!(
                    "lwkt-arch-hosted: cpu {i} has waited {:?} for its host thread, which a thread of a sibling vCPU keeps without calling lwkt (M:N starvation rule)",
                    since.elapsed()
                );
                #[cfg(not(feature = "log"))]
                let _ = i;
            }
        }
        _ => *w = Some((std::time::Instant::now(), sw, false)),
    }
}

/// Whether vCPU threads (of every machine of the process) outnumber the
/// online host cores.
pub(crate) fn oversubscribed() -> bool {
    LIVE_VCPUS.load(Ordering::Relaxed) > online_cores()
}

/// Host threads running vCPUs now, over every machine of the process (a
/// host thread that runs several counts once).
pub(crate) static LIVE_VCPUS: AtomicUsize = AtomicUsize::new(0);

/// Host cores online (read once).
fn online_cores() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| crate::allowed_cores().len().max(1))
}

pub(crate) const RUNNING: u32 = 0;
pub(crate) const PARKED: u32 = 1;

/// How long an idle vCPU watches its rings before it parks (about 75 µs at
/// 2.6 GHz): a futex wake-up costs both sides microseconds, and a message
/// often follows soon.
const IDLE_POLL_CYCLES: u64 = 200_000;

/// The watch a vCPU starts from after an idle period that ended in a kick
/// soon after it parked, when it had stopped watching (about 20 µs), and
/// the shortest it keeps (below it the watch stops).
const POLL_GROW_START: u64 = 50_000;
const POLL_MIN: u64 = 10_000;

/// Adapt a vCPU's idle watch after a park of `slept` cycles, as Linux's
/// guest halt-polling does (`cpuidle-haltpoll`): a park ended soon (within
/// `IDLE_POLL_CYCLES`) by something else than the vCPU's own timer would
/// have been caught by a longer watch, which then doubles; a longer park,
/// or one its timer ended (the kernel timer wakes it as fast as a watch
/// would see the deadline), shows the watch burnt its cycles for nothing,
/// and it halves, to none. A watch costs the host scheduler's favour: a
/// vCPU that burnt 75 µs before each 1 ms sleep woke behind a busy host
/// thread for whole ticks (docs/benchmark-notes.md, session 11).
fn adapt_poll(v: &Vcpu, slept: u64, by_timer: bool) {
    let p = v.poll.load(Ordering::Relaxed);
    let next = if !by_timer && slept <= IDLE_POLL_CYCLES {
        if p == 0 {
            POLL_GROW_START
        } else {
            (p * 2).min(IDLE_POLL_CYCLES)
        }
    } else if p / 2 < POLL_MIN {
        0
    } else {
        p / 2
    };
    if next != p {
        v.poll.store(next, Ordering::Relaxed);
    }
}

/// An idle vCPU's wait while vCPUs outnumber host cores, before it parks:
/// yield the core to the host's other runnable threads (vCPUs with work,
/// most likely) and look again each time it comes back, for up to its idle
/// watch (`Vcpu::poll`, adapted after each park as without
/// oversubscription); true if work arrived. A vCPU that stays awake this
/// way costs its senders no futex wake-up (a kick to a running vCPU is a
/// posted flag), and a `sched_yield` switch costs less than a park and its
/// wake-up: the mesh at 3 and 16 vCPUs on 2 cores moved about 3x the
/// messages of an at-once park. Spinning first, even 0.5 µs, lost
/// (docs/benchmark-notes.md, session 12).
fn yield_until_pending(cpu: &Cpu, v: &Vcpu) -> bool {
    let window = v.poll.load(Ordering::Relaxed);
    let t0 = HOSTED.cycles();
    loop {
        if cpu.has_pending() {
            return true;
        }
        if HOSTED.cycles().wrapping_sub(t0) >= window {
            return false;
        }
        std::thread::yield_now();
    }
}

/// The cycle counter behind [`Arch::cycles`]: the TSC on x86-64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn cycles() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The rate [`Arch::cycles`] counts at on AArch64: the x86-64 TSC rate the
/// backend's and lwkt-msg's cycle budgets were written for (the idle
/// watch's `IDLE_POLL_CYCLES`, `ESCALATE_CYCLES`, lwkt-msg's
/// `DOMSG_POLL_CYCLES`: "about 75 µs at 2.6 GHz").
#[cfg(target_arch = "aarch64")]
const NOMINAL_HZ: u64 = 2_600_000_000;

/// The cycle counter behind [`Arch::cycles`] on AArch64: the generic
/// timer's virtual count (`CNTVCT_EL0`, readable at EL0 on Linux), scaled
/// from its rate (`CNTFRQ_EL0`, often 24 to 62.5 MHz, 1 GHz from Armv8.6)
/// to [`NOMINAL_HZ`] "cycles", so that every budget in cycles means the
/// same time as on a 2.6 GHz x86-64 host, only in coarser steps (one tick
/// of a 24 MHz counter is 108 nominal cycles). The scale is a 32.32
/// fixed-point factor computed once; the product wraps after 2^64 nominal
/// cycles (225 years). No `isb` before the read: like `rdtsc` here, the
/// count only bounds spins, and a read a few instructions early is harmless.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn cycles() -> u64 {
    use core::sync::atomic::AtomicU64;
    static SCALE: AtomicU64 = AtomicU64::new(0);
    let mut scale = SCALE.load(Ordering::Relaxed);
    if scale == 0 {
        scale = counter_scale();
        SCALE.store(scale, Ordering::Relaxed);
    }
    let count: u64;
    // SAFETY: reads the virtual count, which Linux lets EL0 read
    // (CNTKCTL_EL1.EL0VCTEN); no memory, stack or flags are touched.
    unsafe {
        core::arch::asm!("mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack, preserves_flags))
    };
    ((u128::from(count) * u128::from(scale)) >> 32) as u64
}

/// `NOMINAL_HZ / CNTFRQ_EL0` in 32.32 fixed point (never 0); a counter
/// that reports no rate is taken as running at `NOMINAL_HZ`.
#[cfg(target_arch = "aarch64")]
#[cold]
fn counter_scale() -> u64 {
    let freq: u64;
    // SAFETY: reads the counter's rate, readable at EL0 like the count.
    unsafe {
        core::arch::asm!("mrs {}, cntfrq_el0", out(reg) freq, options(nomem, nostack, preserves_flags))
    };
    let freq = (freq & 0xffff_ffff).max(1);
    (((u128::from(NOMINAL_HZ) << 32) / u128::from(freq)) as u64).max(1)
}

/// The hosted backend. Stateless: per-CPU state lives in the CPU blocks.
#[derive(Debug)]
pub struct HostedArch;

/// The one instance every hosted machine uses.
pub static HOSTED: HostedArch = HostedArch;

// SAFETY: `switch`/`init_context` preserve every callee-saved register of
// the SysV ABI plus MXCSR and the x87 control word (see `switch.rs`);
// `current_cpu` is the vCPU thread-local, set for the idle loop's whole run;
// stacks are private mappings; `kick` makes the target run `ipi_interrupt`
// (signal) or leave `idle_wait` (unpark), and `idle_wait` re-checks
// `has_pending` after publishing that it sleeps; `clock` is
// `CLOCK_MONOTONIC` (monotonic); a timer set by `set_timer` is delivered by the vCPU's
// kernel timer (its signal handler posts it, `timer_interrupt`; the idle park
// also ends at the deadline and posts it), or, where the host refused a
// kernel timer, by the watchdog thread (`post_timer`, then a kick).
unsafe impl Arch for HostedArch {
    fn current_cpu(&self) -> Option<NonNull<Cpu>> {
        NonNull::new(CURRENT.with(Cell::get) as *mut Cpu)
    }

    unsafe fn init_context(&self, ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
        // SAFETY: forwarded contract.
        unsafe { crate::switch::init(ctx, stack, entry, arg) }
    }

    #[inline(always)]
    unsafe fn switch(&self, from: &Context, to: &Context) {
        // SAFETY: forwarded contract.
        unsafe { crate::switch::switch(self as *const HostedArch as *const (), from, to) }
    }

    fn alloc_stack(&self, size: usize) -> Option<Stack> {
        crate::stack::alloc(size)
    }

    unsafe fn free_stack(&self, stack: Stack) {
        // SAFETY: forwarded contract.
        unsafe { crate::stack::free(stack) }
    }

    unsafe fn kick(&self, target: &Cpu) {
        // SAFETY: `target` is a running CPU of a hosted machine (contract).
        let v = unsafe { vcpu_of(target) };
        // Always leave an unpark token: a sender may have been delayed
        // between queueing and kicking, and the target may be parking right
        // now; a signal alone does not end a `park()`. An unneeded token
        // costs the target one extra pass of its idle loop.
        if let Some(t) = v.thread.get() {
            t.unpark();
        }
        // Parked (or about to): the unpark above wakes it.
        if v.sleeping.load(Ordering::SeqCst) == PARKED {
            v.unparks_sent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Running: rather than pay for a signal (a system call here and a
        // handler there, microseconds), ask the target to look at its next
        // critical-section exit or switch, which LWKT code reaches often,
        // and go on. The watchdog signals a target that has not looked
        // within `ESCALATE_CYCLES` (a thread spinning outside critical
        // sections). Also when vCPUs outnumber host cores: a target the
        // host has preempted answers when it runs again, which a signal
        // would not hasten, and signals then cost the senders most of
        // their time (docs/benchmark-notes.md, oversubscription).
        target.post_ipi_check();
        // Keep the oldest unanswered post; the watchdog clears it. Look
        // first: in a stream one is usually recorded already, and a
        // failed exchange would still take the line.
        if v.posted_at.load(Ordering::Relaxed) == 0 {
            let now = self.cycles().max(1);
            let _ = v
                .posted_at
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
        // Counted on the sender's own block, off the target's lines.
        if let Some(me) = current_cpu_block() {
            // SAFETY: the calling vCPU's own block, running.
            unsafe { vcpu_of(me) }
                .soft_kicks
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    unsafe fn interrupt(&self, target: &Cpu) {
        // SAFETY: `target` is a running CPU of a hosted machine (contract).
        let v = unsafe { vcpu_of(target) };
        if let Some(t) = v.thread.get() {
            t.unpark();
        }
        // A running vCPU gets the signal at once: a device interrupt is
        // rare, and its thread should preempt even a thread that never
        // reaches a critical-section exit (an `async_preemptible` one).
        if v.sleeping.load(Ordering::SeqCst) != PARKED {
            signal(v);
        }
    }

    unsafe fn idle_wait(&self, cpu: &Cpu) {
        // lwkt-core's idle loop has watched the rings for
        // `idle_poll_cycles` already. Publishing the state before the last
        // check (SeqCst on both sides) means a sender that saw PARKED queued
        // its message before that check, or unparks us. With more vCPUs
        // than cores, yield the core for a while first (still RUNNING:
        // senders post their kicks).
        // A vCPU that shares its host thread gives it to the scheduler,
        // which resumes it once it has work (`mux`).
        if crate::mux::idle_wait(cpu) {
            return;
        }
        // SAFETY: our own running CPU of a hosted machine (contract).
        let v = unsafe { vcpu_of(cpu) };
        if oversubscribed() && yield_until_pending(cpu, v) {
            return;
        }
        v.sleeping.store(PARKED, Ordering::SeqCst);
        if !cpu.has_pending() {
            // An idle vCPU is its own timer: its kernel timer's signal ends
            // the park at the deadline (and posts the interrupt), or, for a
            // vCPU without one, it parks until the deadline and posts the
            // interrupt itself: one wake-up instead of the watchdog's and
            // then ours (which doubled the median lateness of a 1 ms sleep
            // under load). Whoever takes the deadline from `timer` posts
            // it, once. The timed park is also the kernel timer's backstop.
            let d = v.timer.load(Ordering::Acquire);
            let t0 = self.cycles();
            let fired = v.timer_signals.load(Ordering::Relaxed);
            let mut by_timer = false;
            if d == u64::MAX {
                std::thread::park();
            } else {
                let now = clock_ns();
                if d > now {
                    std::thread::park_timeout(Duration::from_nanos(d - now));
                }
                if clock_ns() >= d
                    && v.timer
                        .compare_exchange(d, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                {
                    cpu.post_timer();
                    by_timer = true;
                }
            }
            by_timer |= v.timer_signals.load(Ordering::Relaxed) != fired;
            adapt_poll(v, self.cycles().wrapping_sub(t0), by_timer);
        }
        v.sleeping.store(RUNNING, Ordering::SeqCst);
    }

    fn cycles(&self) -> u64 {
        cycles()
    }

    fn idle_poll_cycles(&self) -> u64 {
        // With more vCPUs than host cores a watching vCPU holds a core that
        // a vCPU with work may be waiting for: it yields its core instead
        // (`idle_wait`), and the host's scheduler runs whoever has work.
        // Otherwise as long as watching paid lately (`adapt_poll`).
        match current_cpu_block() {
            _ if oversubscribed() || crate::mux::shares_host_thread() => 0,
            // SAFETY: the calling vCPU's own block, running (the idle loop
            // asks).
            Some(me) => unsafe { vcpu_of(me) }.poll.load(Ordering::Relaxed),
            None => IDLE_POLL_CYCLES,
        }
    }

    fn spin_wait_pays(&self) -> bool {
        // On a shared host thread the CPU that would answer may be a
        // sibling, which runs only once this one stops spinning.
        !oversubscribed() && !crate::mux::shares_host_thread()
    }

    fn clock(&self) -> Option<u64> {
        Some(clock_ns())
    }

    unsafe fn set_timer(&self, cpu: &Cpu, deadline: Option<u64>) {
        // SAFETY: a running CPU of a hosted machine (contract).
        let v = unsafe { vcpu_of(cpu) };
        let d = deadline.unwrap_or(u64::MAX);
        let old = v.timer.swap(d, Ordering::AcqRel);
        if let Some(id) = v.ktimer() {
            // The kernel signals this vCPU at the deadline. Nothing to do
            // for none after none (a deadline taken by the signal or the
            // idle park has fired already).
            if d != old {
                arm_ktimer(id, d);
            }
            return;
        }
        if d < old {
            // Earlier than before: the watchdog may sleep past it.
            if let Some(w) = v.watchdog.get() {
                w.unpark();
            }
        }
    }

    fn yield_point(&self) {
        // A thread that yields with nothing else to run on its vCPU waits
        // for another CPU (on a shared host thread, maybe a sibling), or
        // its time slice ended: let a sibling that can run have a turn.
        if let Some(me) = current_cpu_block() {
            crate::mux::pause(me);
        }
    }

    fn pause(&self, spins: u32) {
        // On a shared host thread, let a sibling that can run have it: the
        // CPU being waited for may be that sibling.
        if let Some(me) = current_cpu_block() {
            if crate::mux::pause(me) {
                return;
            }
        }
        // Give the core away at once when vCPUs outnumber host cores: the
        // CPU being waited for may be the one the host has set aside.
        if spins > 64 || oversubscribed() {
            std::thread::yield_now();
        } else {
            core::hint::spin_loop();
        }
    }
}

static SIGNAL_INSTALL: Once = Once::new();

extern "C" fn on_ipi_signal(_sig: libc::c_int) {
    // SAFETY: errno is thread-local; save and restore it around our work so
    // the interrupted code sees its own value.
    let errno = unsafe { *libc::__errno_location() };
    // No vCPU switch while lwkt code runs in this handler (`mux::pause`).
    let was = crate::mux::set_in_handler(true);
    let p = CURRENT.with(Cell::get);
    // A host thread that runs several vCPUs: the signal may be any one's
    // kernel timer, so post the due timers of all (atomic flags and an
    // unpark, nothing more); only the one running now is interrupted.
    if let Some(g) = crate::mux::my_group() {
        for m in g.members.iter() {
            // SAFETY: the group's CPUs belong to its running machine.
            let cpu = unsafe { &*m.cpu };
            if !ptr::eq(cpu, p) {
                // SAFETY: as above.
                timer_interrupt(cpu, unsafe { vcpu_of(cpu) });
            }
        }
    }
    if !p.is_null() {
        // SAFETY: the thread-local names this thread's CPU, of a running
        // machine of this backend (set only while its idle loop runs).
        let (cpu, v) = unsafe { (&*p, vcpu_of(&*p)) };
        timer_interrupt(cpu, v);
        // SAFETY: we are the vCPU thread of this CPU (the thread-local says
        // so), in signal context: the interrupt entry's contract. The
        // async-safe entry: the signal may have landed inside the C
        // library's allocator, so only lwkt-core's own IPI functions run
        // here; users' wait for the thread's next critical-section exit.
        unsafe { (*p).ipi_interrupt_async_safe() };
        // An interrupt thread it made runnable preempts here only an
        // `async_preemptible` thread (its promise: not inside the C
        // library now); others at their next final `crit_exit`. So does
        // the round-robin of an expired time slice. The switch leaves this
        // frame on the preempted thread's stack until it resumes and
        // returns.
        // The thread switched to must take signals: unblock ours first (in
        // the critical section the switch is made in, where a signal only
        // records itself), and block it again before returning. A signal
        // landing in between, in the deferred work of the thread's final
        // `crit_exit`, does its interrupt work and leaves any switch to
        // this frame, so frames nest at most one deep. The preempted
        // thread's return from this handler restores its own mask.
        // SAFETY: as above; the kernel saved the interrupted registers
        // (and FPU state) in the signal frame on that stack.
        unsafe { (*p).preempt_from_interrupt_with(unblock_ipi_signal, block_ipi_signal) };
    }
    crate::mux::set_in_handler(was);
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Unblock the IPI signal for the calling OS thread (the kernel blocks it
/// while its handler runs).
fn unblock_ipi_signal() {
    // The thread switched to runs as thread code, not in the handler.
    crate::mux::set_in_handler(false);
    ipi_signal_mask(libc::SIG_UNBLOCK);
}

/// Block it again before the handler returns (the return restores the
/// interrupted code's own mask): from here no second signal can nest in
/// this frame.
fn block_ipi_signal() {
    ipi_signal_mask(libc::SIG_BLOCK);
    crate::mux::set_in_handler(true);
}

fn ipi_signal_mask(how: libc::c_int) {
    // SAFETY: a valid, initialised signal set, passed by pointer to calls
    // that only read or write it; blocking or unblocking one signal of our
    // own, which only this backend's handler uses.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, IPI_SIGNAL);
        libc::pthread_sigmask(how, &set, ptr::null_mut());
    }
}

pub(crate) fn install_signal_handler() {
    SIGNAL_INSTALL.call_once(|| {
        // SAFETY: installs a handler with a zeroed (valid) sigaction.
        unsafe {
            let mut sa: libc::sigaction = core::mem::zeroed();
            sa.sa_sigaction = on_ipi_signal as *const () as usize;
            // Not SA_NODEFER: signals sent faster than the kernel delivers
            // them (a raise loop on another vCPU) would nest without bound.
            // The handler unblocks the signal itself just before it may
            // switch away (`unblock_ipi_signal`).
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            let r = libc::sigaction(IPI_SIGNAL, &sa, ptr::null_mut());
            assert_eq!(
                r, 0,
                "lwkt-arch-hosted: cannot install the IPI signal handler"
            );
        }
    });
    crate::fault::install();
}

/// Run `cpu`'s idle loop on the calling OS thread (which becomes that vCPU).
///
/// # Safety
/// `cpu` belongs to a bound machine that outlives this call; called once per CPU.
pub(crate) unsafe fn run_vcpu(cpu: &Cpu) {
    LIVE_VCPUS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: forwarded.
    unsafe { run_vcpu_here(cpu) };
    LIVE_VCPUS.fetch_sub(1, Ordering::Relaxed);
}

/// `run_vcpu` without counting a host thread: also the body of each vCPU
/// of a multiplexed host thread (`mux`), on the vCPU's own stack.
///
/// # Safety
/// As for [`run_vcpu`].
pub(crate) unsafe fn run_vcpu_here(cpu: &Cpu) {
    // SAFETY: a CPU of a machine of this backend (contract).
    let v = unsafe { vcpu_of(cpu) };
    create_ktimer(v);
    CURRENT.with(|c| c.set(cpu));
    // SAFETY: forwarded; the thread-local now names this CPU.
    unsafe { cpu.idle_loop() };
    CURRENT.with(|c| c.set(ptr::null()));
    delete_ktimer(v);
}

/// Post `cpu`'s timer interrupt if its deadline has passed (once: whoever
/// takes the deadline from `timer` posts it). Called on the vCPU's host
/// thread.
pub(crate) fn take_due_timer(cpu: &Cpu, v: &Vcpu) {
    let d = v.timer.load(Ordering::Acquire);
    if d != u64::MAX
        && clock_ns() >= d
        && v.timer
            .compare_exchange(d, u64::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        cpu.post_timer();
    }
}

/// The CPU number of the calling OS thread if it is a virtual CPU running an
/// lwkt machine (tests use it to check where code really runs).
///
/// ```
/// assert_eq!(lwkt_arch_hosted::current_vcpu(), None);
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|_| {
///     assert_eq!(lwkt_arch_hosted::current_vcpu().map(|c| c.get()), Some(0));
/// });
/// ```
pub fn current_vcpu() -> Option<lwkt_core::CpuId> {
    current_cpu_block().map(Cpu::id)
}
