//! Callouts: run a function on a CPU once a time has passed, or every
//! period. DragonFly: `kern_timeout.c` (`callout_init`, `callout_reset`,
//! `callout_reset_bycpu`, `callout_stop`, `callout_stop_async`,
//! `callout_cancel`, `callout_drain`, `callout_pending`, `callout_active`)
//! and, for the periodic form, `kern_systimer.c`'s
//! `systimer_init_periodic`.
//!
//! A [`Callout`] lives in the caller's memory (a `static`, or pinned on a
//! thread's stack with [`core::pin::pin!`]); lwkt-core allocates nothing.
//! It is armed on one CPU at a time, its *home*, whose timing wheel links
//! it; it fires there, from the CPU's timer run (`timer::run`, from
//! `splz`), in a critical section, as an IPI function runs.
//!
//! # Who touches what
//!
//! - The **state word** (`Raw::state`, atomic) says where the callout is
//!   armed: 0 when idle, else its machine's id, its home CPU and the
//!   `PENDING` (in the home's wheel) and `RUNNING` (callback in progress)
//!   bits. Only the home CPU writes a non-zero state over a non-zero one,
//!   in its critical section; any CPU may *claim* an idle callout for
//!   itself with a compare-exchange from 0, in its own critical section,
//!   and links it at once. So there is never a callout with a home that is
//!   not in the home's wheel or running there: no state "on its way".
//! - Everything else (the wheel link, the period) belongs to the home and
//!   is touched only there. A change of home is ordered by the state word:
//!   the old home stores 0 (Release) after its last access, the new one
//!   claims it (Acquire).
//! - An operation from another CPU is an IPI message to the home, carrying
//!   a descriptor on the caller's stack; the caller waits for the answer,
//!   running its own IPIs meanwhile (as `cpusync` does), so no message
//!   naming the callout outlives the call. The home may answer "it moved
//!   to CPU n" (the caller asks there), "its callback runs: try later"
//!   (`Busy`), or "it runs" (`Running`, for a synchronous stop).
//! - The callback runs only at the home, which cannot change while it runs
//!   (a move to another CPU waits for its end), so it never runs twice at
//!   once; the function (`F`) is touched by nobody else.
//!
//! # When the memory goes
//!
//! `Drop` stops the callout synchronously (waiting for a callback running
//! on another CPU), so a wheel never points at freed memory: `Pin`'s drop
//! guarantee covers a pinned local, and a `static` is never freed. When a
//! machine ends, every CPU empties its wheel as it leaves its idle loop
//! (`timer::retire`): its callouts become idle, so they may be armed on
//! another machine, or dropped anywhere, afterwards.

use core::cell::Cell;
use core::fmt;
use core::marker::{PhantomData, PhantomPinned};
use core::pin::Pin;
use core::time::Duration;

use crate::arch::Arch;
use crate::cpu::{Cpu, CpuId};
use crate::crit;
use crate::ipiq::{self, IpiError, IpiMsg};
use crate::mycpu::MyCpu;
use crate::sync::{AtomicBool, AtomicWord, Life, Ordering, UnsafeCell};
use crate::timer::{self, Fire, Header};
use crate::wheel::Entry;

/// A state word's value: the target's widest native atomic word
/// (`sync::Word`): 64 bits where it has 64-bit atomics, else 32. The state
/// word is read and written from IPI callbacks and the timer run, so it is
/// never a lock-based emulation of a wider atomic; on a 32-bit word the
/// machine id has 21 bits (`arm` refuses a larger one).
pub(crate) type State = crate::sync::Word;

/// State bits: the home CPU's number plus one (0: idle).
const HOME: State = 0x1ff;
/// In the home's wheel, not yet fired.
const PENDING: State = 1 << 9;
/// The callback runs at the home.
const RUNNING: State = 1 << 10;
/// The machine's id sits above the bits.
const MACHINE_SHIFT: u32 = 11;
/// Machine ids below this fit a state word.
const MACHINE_LIMIT: u64 = 1 << (State::BITS - MACHINE_SHIFT);
const _: () = assert!(
    (crate::MAX_CPUS as State) < HOME && HOME < PENDING,
    "a callout's state word must hold every CPU number plus one"
);

/// The part of a callout that does not depend on its function. `#[repr(C)]`
/// with the timer header first: the wheel's pointer is a pointer to the
/// whole [`Callout`].
#[repr(C)]
struct Raw {
    head: Header,
    /// 0, or `machine << MACHINE_SHIFT | RUNNING? | PENDING? | home + 1`.
    state: AtomicWord,
    /// DragonFly's `CALLOUT_ACTIVE`: set by a reset, cleared by a stop or
    /// `deactivate`; kept when the callout fires.
    active: AtomicBool,
    /// The period of a periodic callout, 0 for a one-shot (home only).
    period: Cell<u64>,
    /// The backend of the machine that last claimed the callout, for
    /// `Drop` to find the CPU it runs on. Written by a claim, which happens
    /// inside an operation, which borrows the callout: so never while
    /// `Drop` runs, and ordered before it (the operation's end).
    arch: Cell<Option<&'static dyn Arch>>,
}

/// What an operation asks of the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Arm on `target`, due `at`; `period` 0 is a one-shot.
    Reset {
        target: CpuId,
        at: When,
        period: u64,
    },
    /// Unlink if pending.
    Stop,
    /// Unlink if pending, and say whether the callback runs.
    StopSync,
}

/// When a reset's run is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// This many nanoseconds after the home applies the reset.
    After(u64),
    /// At this time of the machine's clock.
    At(u64),
}

impl When {
    /// The deadline on `gd`'s clock, or `None` if the backend has none;
    /// `seen`: the machine is known to have one (no check then).
    #[inline(always)]
    fn deadline(self, gd: &Cpu, seen: bool) -> Option<u64> {
        match self {
            When::After(d) => gd.machine().arch.clock().map(|now| now.saturating_add(d)),
            When::At(t) => (seen || gd.machine().has_clock()).then_some(t),
        }
    }

    /// The deadline of an arm applied on `gd` by the general path
    /// ([`apply`]), which also turns `gd`'s fast paths on
    /// (`Cpu::callout_pending`) once the machine is seen to have a clock.
    fn general_deadline(self, gd: &Cpu) -> Option<u64> {
        let deadline = self.deadline(gd, false)?;
        gd.callout_pending
            .set(pending_word(gd.machine_id.get(), gd.id()));
        Some(deadline)
    }
}

/// What the CPU asked answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Done; for a stop, whether it unlinked a pending run.
    Done(bool),
    /// The callout's home (or the reset's target) is that CPU: ask there.
    Forward(CpuId),
    /// Its callback runs: a move to another CPU must wait for its end.
    Busy,
    /// Its callback runs (a synchronous stop waits for it); whether a
    /// pending run was unlinked.
    Running(bool),
    /// Armed on a CPU of another machine (its id).
    OtherMachine(u64),
    /// The backend has no clock.
    NoClock,
}

/// A function run on a CPU once a time has passed (or every period):
/// DragonFly's `struct callout` (`callout_init`), with the function and
/// its argument in one closure.
///
/// The callout lives in the caller's memory: pin it
/// ([`core::pin::pin!`] on a thread's stack, [`Pin::static_ref`] for a
/// `static`) and arm it with [`reset`](Callout::reset) (this CPU) or
/// [`reset_bycpu`](Callout::reset_bycpu). It fires on the CPU it was armed
/// on, once the time has passed (never before; as late as that CPU's next
/// timer run after it, about a microsecond of wheel tick plus however long
/// the CPU stays in a critical section), and never runs twice at once.
///
/// **The callback runs in interrupt context**, from the CPU's timer run
/// inside a critical section, like an IPI function: it gets a [`Fired`]
/// (the CPU as [`MyCpu`], and the callout itself to re-arm or stop) and
/// must not block. DragonFly runs callouts in a per-CPU softclock *thread*
/// (`softclock_handler`), where a callback may take a lockmgr lock or a
/// token and block. Here, there is nothing to block: a callback that needs
/// to wait should wake a thread ([`MyCpu::wakeup`], a message) and let it
/// do the work. This keeps a callout as cheap as a timed wake-up (no
/// thread switch per callout) and lets it run from an idle CPU at once;
/// a softclock thread per CPU can be built on top (a thread sleeping on a
/// channel that callbacks wake).
///
/// A panic in the callback aborts (the panic policy of
/// [`abort_on_unwind`](crate::abort_on_unwind)).
///
/// `Drop` stops the callout and waits for a callback running on another
/// CPU ([`stop_sync`](Callout::stop_sync)), so dropping an armed callout
/// is fine, on a CPU of its machine. Dropped anywhere else while armed on
/// a machine that still runs (a boxed callout sent out of its machine), it
/// aborts the process: its CPU's wheel still points at it, and nothing
/// outside that machine can reach the wheel.
///
/// ```
/// use core::pin::pin;
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use lwkt_core::Callout;
///
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let hits = AtomicU32::new(0);
///     let c = pin!(Callout::new(|_fired| {
///         hits.fetch_add(1, Ordering::Relaxed);
///     }));
///     c.as_ref().reset(cur.my_cpu(), Duration::from_micros(200));
///     assert!(c.pending());
///     while hits.load(Ordering::Relaxed) == 0 {
///         cur.yield_now();
///     }
///     assert!(!c.pending());
/// });
/// ```
#[repr(C)]
pub struct Callout<F> {
    /// First (`#[repr(C)]`): the wheel's pointer is to the whole callout.
    raw: Raw,
    /// Touched only by the callback's run at the home (never two at once).
    func: UnsafeCell<F>,
    /// The wheel links it: it must not move once armed.
    _pinned: PhantomPinned,
}

// SAFETY: the function moves with the callout and runs on the CPUs it is
// armed on, hence `F: Send`. The wheel link and the period are touched only
// by the home CPU (or before anyone can see the callout), the rest is
// atomic; `arch` is written only by claims, inside operations that borrow
// the callout, so not while it moves (it is pinned then anyway).
unsafe impl<F: Send> Send for Callout<F> {}
// SAFETY: shared by reference between CPUs: `func` is used only by the
// callback's run at the home, which never overlaps another (the home does
// not change while it runs), and runs on one CPU after another are
// ordered by the state word (the old home's Release store of 0, the new
// home's Acquire claim); everything else as for `Send`.
unsafe impl<F: Send> Sync for Callout<F> {}

impl<F> fmt::Debug for Callout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Callout")
            .field("cpu", &self.cpu())
            .field("pending", &self.pending())
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

/// What a callout's callback gets: the CPU it runs on, and its callout, to
/// re-arm or stop from inside the callback (a callout on a thread's stack
/// cannot name itself in its own closure). DragonFly passes the callout's
/// `arg` only; a callback re-arms with `callout_reset` on the callout it
/// knows.
///
/// ```
/// use core::pin::pin;
/// use core::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use lwkt_core::Callout;
///
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let n = AtomicU32::new(0);
///     // Three runs, 100 µs apart: periodic by hand.
///     let c = pin!(Callout::new(|fired| {
///         if n.fetch_add(1, Ordering::Relaxed) < 2 {
///             fired.reset(Duration::from_micros(100));
///         }
///         assert_eq!(fired.my().id(), lwkt_core::CpuId::new(0));
///     }));
///     c.as_ref().reset(cur.my_cpu(), Duration::ZERO);
///     while n.load(Ordering::Relaxed) < 3 {
///         cur.yield_now();
///     }
///     assert!(!c.pending());
/// });
/// ```
#[derive(Clone, Copy)]
pub struct Fired<'a> {
    my: MyCpu<'a>,
    h: *const Header,
    /// The deadline this run was due at.
    due: u64,
    _callout: PhantomData<&'a Raw>,
}

impl fmt::Debug for Fired<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fired").field("cpu", &self.my.id()).finish()
    }
}

impl<'a> Fired<'a> {
    /// The CPU the callback runs on (interrupt context: nothing that
    /// blocks). DragonFly: `mycpu` in the callback.
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicBool, Ordering};
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let chan = 0x5000;
    ///     let done = AtomicBool::new(false);
    ///     let c = pin!(lwkt_core::Callout::new(|fired| {
    ///         done.store(true, Ordering::Release);
    ///         fired.my().wakeup(chan); // hand the work to a thread
    ///     }));
    ///     c.as_ref().reset(cur.my_cpu(), Duration::from_micros(50));
    ///     cur.sleep_until(chan, || done.load(Ordering::Acquire));
    /// });
    /// ```
    pub fn my(&self) -> MyCpu<'a> {
        self.my
    }

    /// Arm the callout again, on this CPU, `d` from now (replacing a
    /// period, if it had one): DragonFly's `callout_reset` from inside the
    /// callback.
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let n = AtomicU32::new(0);
    ///     let c = pin!(lwkt_core::Callout::new(|fired| {
    ///         if n.fetch_add(1, Ordering::Relaxed) == 0 {
    ///             fired.reset(Duration::from_secs(3600)); // once more, much later
    ///         }
    ///     }));
    ///     c.as_ref().reset(cur.my_cpu(), Duration::ZERO);
    ///     while n.load(Ordering::Relaxed) == 0 {
    ///         cur.yield_now();
    ///     }
    ///     assert!(c.pending());
    ///     assert!(c.as_ref().stop(cur.my_cpu()));
    /// });
    /// ```
    pub fn reset(&self, d: Duration) {
        self.rearm(When::After(nanos(d)));
    }

    /// Arm the running callout again on this CPU, as a one-shot.
    fn rearm(&self, at: When) {
        let op = Op::Reset {
            target: self.my.id(),
            at,
            period: 0,
        };
        // SAFETY: on the home CPU (the callback runs there), inside the
        // timer run's critical section; `h` is the running callout's
        // header, alive while its callback runs.
        let out = unsafe { apply(self.my.cpu(), self.h, op) };
        debug_assert_eq!(out, Outcome::Done(false));
    }

    /// The time this run was due (nanoseconds of the machine's clock,
    /// [`MyCpu::clock`]): the deadline it was armed for, not when it ran.
    /// A callback that re-arms itself from it does not drift
    /// (`fired.reset_at(fired.due() + period)`). DragonFly: the `c_time`
    /// of a `struct callout` (in ticks).
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicU64, Ordering};
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let (due, ran) = (AtomicU64::new(0), AtomicU64::new(0));
    ///     let c = pin!(lwkt_core::Callout::new(|f| {
    ///         due.store(f.due(), Ordering::Relaxed);
    ///         ran.store(f.my().clock().unwrap(), Ordering::Release);
    ///     }));
    ///     let at = cur.my_cpu().clock().unwrap() + 100_000;
    ///     c.as_ref().reset_at(cur.my_cpu(), at);
    ///     while ran.load(Ordering::Acquire) == 0 {
    ///         cur.yield_now();
    ///     }
    ///     assert_eq!(due.load(Ordering::Relaxed), at);
    ///     assert!(ran.load(Ordering::Relaxed) >= at);
    /// });
    /// ```
    pub fn due(&self) -> u64 {
        self.due
    }

    /// Arm the callout again, on this CPU, for time `t` of the machine's
    /// clock (replacing a period, if it had one): [`reset`](Fired::reset)
    /// with a deadline, as [`Callout::reset_at`]. With [`due`](Fired::due),
    /// a periodic callout by hand that does not drift.
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicU32, Ordering};
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let n = AtomicU32::new(0);
    ///     let c = pin!(lwkt_core::Callout::new(|f| {
    ///         if n.fetch_add(1, Ordering::Relaxed) < 4 {
    ///             f.reset_at(f.due() + 50_000); // every 50 µs, no drift
    ///         }
    ///     }));
    ///     c.as_ref().reset(cur.my_cpu(), core::time::Duration::ZERO);
    ///     while n.load(Ordering::Relaxed) < 5 {
    ///         cur.yield_now();
    ///     }
    ///     assert!(!c.pending());
    /// });
    /// ```
    pub fn reset_at(&self, t: u64) {
        self.rearm(When::At(t));
    }

    /// Stop the callout from inside its callback: unlink a pending run (a
    /// periodic callout's next one, or one its callback armed); returns
    /// whether there was one. DragonFly: `callout_stop` from the callback.
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let n = AtomicU32::new(0);
    ///     let c = pin!(lwkt_core::Callout::new(|fired| {
    ///         if n.fetch_add(1, Ordering::Relaxed) == 1 {
    ///             assert!(fired.stop()); // the next period was pending
    ///         }
    ///     }));
    ///     c.as_ref().reset_periodic(cur.my_cpu(), Duration::from_micros(100));
    ///     while n.load(Ordering::Relaxed) < 2 {
    ///         cur.yield_now();
    ///     }
    ///     assert!(!c.pending());
    /// });
    /// ```
    pub fn stop(&self) -> bool {
        // SAFETY: as in `reset`.
        match unsafe { apply(self.my.cpu(), self.h, Op::Stop) } {
            Outcome::Done(r) => r,
            o => unreachable!("lwkt: callout stop from its callback answered {o:?}"),
        }
    }
}

/// A callout that runs `f`, not armed: the body of `Callout::new`, which
/// is `const` except in the loom build (loom's atomics are not).
macro_rules! new_callout {
    ($f:expr) => {
        Callout {
            raw: Raw {
                head: Header::new(fire::<F>),
                state: AtomicWord::new(0),
                active: AtomicBool::new(false),
                period: Cell::new(0),
                arch: Cell::new(None),
            },
            func: UnsafeCell::new($f),
            _pinned: PhantomPinned,
        }
    };
}

impl<F: FnMut(Fired<'_>) + Send> Callout<F> {
    /// A callout that runs `f`, not armed. DragonFly: `callout_init` (the
    /// function given here instead of to each `callout_reset`). `const`, so
    /// a callout can be a `static`.
    ///
    /// ```
    /// use core::pin::Pin;
    /// use std::time::Duration;
    /// use lwkt_core::{Callout, Fired};
    ///
    /// fn tick(fired: Fired<'_>) {
    ///     fired.reset(Duration::from_millis(10)); // every 10 ms, by hand
    /// }
    /// static TICK: Callout<fn(Fired<'_>)> = Callout::new(tick);
    ///
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let c = Pin::static_ref(&TICK);
    ///     c.reset(cur.my_cpu(), Duration::from_millis(10));
    ///     assert!(c.stop(cur.my_cpu()));
    /// });
    /// ```
    #[cfg(not(loom))]
    pub const fn new(f: F) -> Callout<F> {
        new_callout!(f)
    }

    /// A callout that runs `f` (the loom build: loom's atomics are not
    /// `const`).
    #[cfg(loom)]
    pub fn new(f: F) -> Callout<F> {
        new_callout!(f)
    }

    /// Arm the callout on this CPU to run `d` from now, replacing a pending
    /// run (wherever it was armed: it moves here) and a period. A zero `d`
    /// runs it at this CPU's next timer run, never inside this call; a huge
    /// one never runs it. DragonFly: `callout_reset` (a `Duration` instead
    /// of ticks).
    ///
    /// O(1) and lock-free here; a callout armed on another CPU is first
    /// taken off that CPU's wheel by an IPI message, answered before this
    /// returns. If its callback is running there, this waits for it to end
    /// (a callback cannot be moved to another CPU mid-run).
    ///
    /// # Panics
    /// If the callout is armed on a CPU of another machine; if the backend
    /// has no clock ([`Arch::clock`]). A callback cannot move its own
    /// callout to another CPU while it runs (that panics, in interrupt
    /// context: an abort); from inside it, use [`Fired::reset`].
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|_| unreachable!()));
    ///     c.as_ref().reset(cur.my_cpu(), Duration::from_secs(3600));
    ///     c.as_ref().reset(cur.my_cpu(), Duration::from_secs(7200)); // replaces
    ///     assert!(c.as_ref().stop(cur.my_cpu()));
    /// });
    /// ```
    #[inline]
    pub fn reset(self: Pin<&Self>, my: MyCpu<'_>, d: Duration) {
        self.reset_when(my, When::After(nanos(d)));
    }

    /// Arm the callout on this CPU to run at time `at` of the machine's
    /// clock (nanoseconds, the time base of [`MyCpu::clock`]), as
    /// [`reset`](Callout::reset) does `d` from now. A time already past
    /// runs it at this CPU's next timer run. This form reads no clock: a
    /// caller that re-arms a timeout often (a retransmit timer pushed back
    /// on every packet) reads the clock once and derives each deadline from
    /// it, as a `tokio::time::Sleep` is reset to an `Instant`. DragonFly:
    /// `callout_reset` with a tick count computed from a saved `ticks`.
    ///
    /// # Panics
    /// As [`reset`](Callout::reset).
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicBool, Ordering};
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let ran = AtomicBool::new(false);
    ///     let c = pin!(lwkt_core::Callout::new(|_| ran.store(true, Ordering::Release)));
    ///     let start = cur.my_cpu().clock().unwrap();
    ///     c.as_ref().reset_at(cur.my_cpu(), start + 3_600_000_000_000); // an hour on
    ///     c.as_ref().reset_at(cur.my_cpu(), start + 200_000); // replaced: 200 µs on
    ///     while !ran.load(Ordering::Acquire) {
    ///         cur.yield_now();
    ///     }
    ///     assert!(cur.my_cpu().clock().unwrap() >= start + 200_000); // never early
    /// });
    /// ```
    #[inline]
    pub fn reset_at(self: Pin<&Self>, my: MyCpu<'_>, at: u64) {
        self.reset_when(my, When::At(at));
    }

    /// [`reset`](Callout::reset) and [`reset_at`](Callout::reset_at): the
    /// fast path here when the callout is idle, or pending on this CPU with
    /// no callback running; else the general one. The fast path is off
    /// until this CPU's general path has armed a callout once and so seen
    /// the machine's clock (`Cpu::callout_pending`, `When::general_deadline`).
    #[inline(always)]
    fn reset_when(self: Pin<&Self>, my: MyCpu<'_>, at: When) {
        let gd = my.cpu();
        let raw = &self.raw;
        let armed = pending_here(gd);
        if armed != NO_HOME {
            let td = gd.cur();
            // SAFETY: not inside a leaf section (they run none of the
            // caller's code, and this path none of them). Left with
            // `crit_exit_entered` (which reads the thread again).
            unsafe { crit::enter_leaf(&td.critcount) };
            let s = raw.state.load(Ordering::Acquire);
            let deadline = if s == 0 || s == armed {
                at.deadline(gd, true)
            } else {
                None
            };
            if let Some(deadline) = deadline {
                let ours = if s == 0 {
                    let claimed = raw
                        .state
                        .compare_exchange(0, armed, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok();
                    if claimed {
                        // Ours now, as in `apply`'s claim (the fast paths
                        // are on, so `gd` is bound: `arch` is the
                        // machine's).
                        raw.arch.set(Some(gd.arch.get()));
                    }
                    claimed
                } else {
                    // SAFETY: on its home in a critical section; pending,
                    // so linked in this wheel (as in `stop`).
                    unsafe { gd.timers.unlink(self.header().cast()) };
                    true
                };
                if ours {
                    raw.active.store(true, Ordering::Relaxed);
                    raw.period.set(0);
                    // SAFETY: on the callout's home in a critical section
                    // (ours, or just claimed); pinned and unlinked before
                    // it is dropped or its machine ends, as in `apply`;
                    // unlinked (idle, or just unlinked).
                    unsafe { timer::insert_unlinked(gd, self.header().cast(), deadline) };
                    crit::crit_exit_entered(gd);
                    return;
                }
            }
            crit::crit_exit_entered(gd);
        }
        self.arm(my, my.id(), at, 0);
    }

    /// Arm the callout on CPU `cpu` (of this machine) to run `d` from now,
    /// as [`reset`](Callout::reset) does on this one. DragonFly:
    /// `callout_reset_bycpu`.
    ///
    /// # Errors
    /// [`IpiError::NoSuchCpu`] if the machine has no CPU `cpu` (the
    /// callout is left as it was).
    ///
    /// # Panics
    /// As [`reset`](Callout::reset); also when called from the callout's
    /// own callback for another CPU (a callback cannot move its callout
    /// mid-run).
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use lwkt_core::{CpuId, IpiError};
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let on = AtomicU32::new(u32::MAX);
    ///     let c = pin!(lwkt_core::Callout::new(|f| on.store(f.my().id().get(), Ordering::Release)));
    ///     c.as_ref().reset_bycpu(cur.my_cpu(), CpuId::new(1), Duration::from_millis(50)).unwrap();
    ///     assert_eq!(c.cpu(), Some(CpuId::new(1))); // armed there
    ///     while on.load(Ordering::Acquire) == u32::MAX {
    ///         cur.yield_now();
    ///     }
    ///     assert_eq!(on.load(Ordering::Acquire), 1);
    ///     let err = c.as_ref().reset_bycpu(cur.my_cpu(), CpuId::new(7), Duration::ZERO);
    ///     assert!(matches!(err, Err(IpiError::NoSuchCpu { .. })));
    /// });
    /// ```
    pub fn reset_bycpu(
        self: Pin<&Self>,
        my: MyCpu<'_>,
        cpu: CpuId,
        d: Duration,
    ) -> Result<(), IpiError> {
        check_cpu(my, cpu)?;
        self.arm(my, cpu, When::After(nanos(d)), 0);
        Ok(())
    }

    /// Arm the callout on this CPU to run every `period`, the first time
    /// `period` from now. Each run is due a whole period after the last
    /// one's deadline, not after the run itself, so the callout does not
    /// drift; periods its CPU missed entirely (it ran late by more than a
    /// period) are skipped, not run in a burst. The next run is armed
    /// before the callback is called, so the callback sees it
    /// [`pending`](Callout::pending) and may [stop](Fired::stop) it.
    /// DragonFly: `systimer_init_periodic` (a period instead of a
    /// frequency), on a callout.
    ///
    /// # Panics
    /// If `period` is zero; as [`reset`](Callout::reset).
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let n = AtomicU32::new(0);
    ///     let c = pin!(lwkt_core::Callout::new(|_| { n.fetch_add(1, Ordering::Relaxed); }));
    ///     c.as_ref().reset_periodic(cur.my_cpu(), Duration::from_micros(100));
    ///     while n.load(Ordering::Relaxed) < 5 {
    ///         cur.yield_now();
    ///     }
    ///     assert!(c.as_ref().stop_sync(cur.my_cpu()));
    /// });
    /// ```
    pub fn reset_periodic(self: Pin<&Self>, my: MyCpu<'_>, period: Duration) {
        let p = nonzero_period(period);
        self.arm(my, my.id(), When::After(p), p);
    }

    /// [`reset_periodic`](Callout::reset_periodic) on CPU `cpu`. DragonFly:
    /// `systimer_init_periodic` on another CPU's systimer queue.
    ///
    /// # Errors
    /// [`IpiError::NoSuchCpu`] if the machine has no CPU `cpu`.
    ///
    /// # Panics
    /// As [`reset_periodic`](Callout::reset_periodic).
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// use lwkt_core::CpuId;
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|f| assert_eq!(f.my().id(), CpuId::new(1))));
    ///     c.as_ref()
    ///         .reset_periodic_bycpu(cur.my_cpu(), CpuId::new(1), Duration::from_millis(1))
    ///         .unwrap();
    ///     cur.sleep_for(Duration::from_millis(3));
    ///     c.as_ref().stop_sync(cur.my_cpu());
    /// });
    /// ```
    pub fn reset_periodic_bycpu(
        self: Pin<&Self>,
        my: MyCpu<'_>,
        cpu: CpuId,
        period: Duration,
    ) -> Result<(), IpiError> {
        check_cpu(my, cpu)?;
        let p = nonzero_period(period);
        self.arm(my, cpu, When::After(p), p);
        Ok(())
    }

    #[inline(always)]
    fn arm(self: Pin<&Self>, my: MyCpu<'_>, target: CpuId, at: When, period: u64) {
        let mid = my.machine_id();
        assert!(
            mid < MACHINE_LIMIT,
            "lwkt: machine id {mid} too large for a callout's state word"
        );
        self.raw.active.store(true, Ordering::Relaxed);
        request(my, self.header(), Op::Reset { target, at, period });
    }
}

impl<F> Callout<F> {
    /// The pointer the wheel holds: to the whole callout (the header is its
    /// first field), so `fire` may reach the function through it.
    fn header(&self) -> *const Header {
        (self as *const Callout<F>).cast::<Header>()
    }

    /// Stop the callout: if a run is pending, unlink it; returns whether
    /// this call prevented a run (DragonFly semantics). It does not wait
    /// for a callback that is already running on another CPU: that one
    /// ends on its own, and if it re-arms its callout after this call, the
    /// callout is armed again. A callout never armed, already fired or
    /// running without a pending run returns `false` at once, without
    /// asking its CPU. DragonFly: `callout_stop_async` (also the 4.4BSD
    /// and FreeBSD `callout_stop`, which do not wait); [`stop_sync`] is
    /// DragonFly's waiting `callout_stop`.
    ///
    /// From another CPU while a run is pending, the callout's CPU is asked
    /// by IPI message and the answer awaited (this CPU runs its own IPIs
    /// meanwhile); that CPU answers at its next critical-section exit, so
    /// a callback there that waits for this call without leaving its
    /// critical section would deadlock.
    ///
    /// From its own callback this stops a pending re-arm (see
    /// [`Fired::stop`]).
    ///
    /// # Panics
    /// If the callout is armed on a CPU of another machine.
    ///
    /// [`stop_sync`]: Callout::stop_sync
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|_| unreachable!()));
    ///     assert!(!c.as_ref().stop(cur.my_cpu())); // never armed
    ///     c.as_ref().reset(cur.my_cpu(), Duration::from_secs(1));
    ///     assert!(c.as_ref().stop(cur.my_cpu())); // prevented the run
    ///     assert!(!c.as_ref().stop(cur.my_cpu()));
    /// });
    /// ```
    #[inline]
    pub fn stop(self: Pin<&Self>, my: MyCpu<'_>) -> bool {
        let raw = &self.raw;
        raw.active.store(false, Ordering::Relaxed);
        // Fast path: pending here, no callback running.
        let gd = my.cpu();
        let td = gd.cur();
        // SAFETY: as in `reset_when`.
        unsafe { crit::enter_leaf(&td.critcount) };
        let s = raw.state.load(Ordering::Acquire);
        let here = s == pending_here(gd);
        if here {
            // SAFETY: on the callout's home in a critical section; pending
            // there, so linked in this CPU's wheel (a pending callout is
            // linked in its home's wheel: `apply`, `fire`).
            unsafe { gd.timers.unlink(self.header().cast()) };
            // Idle: the home's last access to the callout was the remove.
            raw.state.store(0, Ordering::Release);
        }
        crit::crit_exit_entered(gd);
        if here {
            true
        } else if s & PENDING == 0 {
            // Nothing pending at this moment: nothing to prevent.
            false
        } else {
            request(my, self.header(), Op::Stop)
        }
    }

    /// Stop the callout and wait until its callback is not running
    /// anywhere: when this returns, the callout is neither pending nor
    /// running (until someone arms it again). Returns whether it prevented
    /// a pending run. DragonFly: `callout_stop` (the waiting one of
    /// DragonFly 5), `callout_cancel`, `callout_drain`. `Drop` does this.
    ///
    /// A callback running on another CPU is waited for with this CPU
    /// running its own IPIs, so a callback there that asks something of
    /// this CPU is answered. Two callbacks that `stop_sync` each other's
    /// callouts at once deadlock, each waiting for the other's end (as in
    /// DragonFly); with [`stop`](Callout::stop) they do not.
    ///
    /// # Panics
    /// From the callout's own callback (or anything it runs, such as an IPI
    /// function it lets in): it would wait for itself. Callbacks run in
    /// interrupt context, so that panic aborts the process, naming this
    /// rule. Also if the callout is armed on a CPU of another machine.
    ///
    /// ```
    /// use core::pin::pin;
    /// use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use lwkt_core::CpuId;
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let (started, done) = (AtomicBool::new(false), AtomicU32::new(0));
    ///     let c = pin!(lwkt_core::Callout::new(|_| {
    ///         started.store(true, Ordering::Release);
    ///         std::thread::sleep(Duration::from_millis(2)); // a slow callback
    ///         done.store(1, Ordering::Release);
    ///     }));
    ///     c.as_ref().reset_bycpu(cur.my_cpu(), CpuId::new(1), Duration::ZERO).unwrap();
    ///     while !started.load(Ordering::Acquire) {
    ///         cur.yield_now();
    ///     }
    ///     assert!(!c.as_ref().stop_sync(cur.my_cpu())); // it ran: nothing prevented
    ///     assert_eq!(done.load(Ordering::Acquire), 1); // and it has finished
    /// });
    /// ```
    pub fn stop_sync(self: Pin<&Self>, my: MyCpu<'_>) -> bool {
        self.raw.active.store(false, Ordering::Relaxed);
        if self.raw.state.load(Ordering::Acquire) == 0 {
            return false;
        }
        request(my, self.header(), Op::StopSync)
    }

    /// Whether a run is armed and has not begun: DragonFly's
    /// `callout_pending`. A periodic callout's next run counts (it is armed
    /// before the callback runs). A snapshot: another CPU may change it
    /// at once.
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|_| {}));
    ///     assert!(!c.pending());
    ///     c.as_ref().reset(cur.my_cpu(), Duration::from_secs(1));
    ///     assert!(c.pending());
    ///     c.as_ref().stop(cur.my_cpu());
    ///     assert!(!c.pending());
    /// });
    /// ```
    pub fn pending(&self) -> bool {
        self.raw.state.load(Ordering::Acquire) & PENDING != 0
    }

    /// Whether the callout was armed and not stopped or deactivated since:
    /// DragonFly's `callout_active` (the `CALLOUT_ACTIVE` flag; it stays
    /// set when the callout fires, so a callback can tell whether it was
    /// stopped after it was queued: by then it was not active).
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|_| {}));
    ///     c.as_ref().reset(cur.my_cpu(), Duration::ZERO);
    ///     cur.sleep_for(Duration::from_micros(100));
    ///     assert!(!c.pending() && c.active()); // fired, still active
    ///     c.deactivate();
    ///     assert!(!c.active());
    /// });
    /// ```
    pub fn active(&self) -> bool {
        self.raw.active.load(Ordering::Relaxed)
    }

    /// Clear the active flag without stopping anything: DragonFly's
    /// `callout_deactivate` (which also stops; use
    /// [`stop`](Callout::stop) for that).
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|_| {}));
    ///     c.as_ref().reset(cur.my_cpu(), Duration::from_secs(60));
    ///     c.deactivate();
    ///     assert!(!c.active() && c.pending()); // still armed
    ///     assert!(c.as_ref().stop(cur.my_cpu()));
    /// });
    /// ```
    pub fn deactivate(&self) {
        self.raw.active.store(false, Ordering::Relaxed);
    }

    /// The CPU the callout is armed (or running) on, or `None` when it is
    /// idle. A snapshot. DragonFly: `callout_cpuid` (`c->qsc`'s CPU).
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// use lwkt_core::CpuId;
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let c = pin!(lwkt_core::Callout::new(|_| {}));
    ///     assert_eq!(c.cpu(), None);
    ///     c.as_ref().reset_bycpu(cur.my_cpu(), CpuId::new(1), Duration::from_secs(9)).unwrap();
    ///     assert_eq!(c.cpu(), Some(CpuId::new(1)));
    /// });
    /// ```
    pub fn cpu(&self) -> Option<CpuId> {
        home_of(self.raw.state.load(Ordering::Acquire))
    }
}

impl<F> Drop for Callout<F> {
    fn drop(&mut self) {
        let s = self.raw.state.load(Ordering::Acquire);
        if s == 0 {
            // Idle: in no wheel, not running, and no message names it (an
            // operation borrows the callout until its answer came).
            return;
        }
        // SAFETY: see `Raw::arch`: written by the claim that made `s`,
        // which happened before this drop (no operation is in progress).
        let arch = self.raw.arch.get();
        let here = arch
            .and_then(|a| a.current_cpu())
            // SAFETY: `current_cpu` names the block of the CPU this code
            // runs on, alive while it runs.
            .map(|p| unsafe { &*p.as_ptr() })
            .filter(|gd| gd.machine_id.get() == machine_of(s));
        match here {
            Some(gd) => {
                request(MyCpu::new(gd), self.header(), Op::StopSync);
            }
            None => dropped_outside_its_machine(),
        }
    }
}

#[cold]
fn dropped_outside_its_machine() -> ! {
    // A panic under `abort_on_unwind` aborts: unwinding would free the
    // callout under its CPU's wheel.
    crate::abort_on_unwind("a callout's drop", || {
        panic!(
            "lwkt: a callout armed on a CPU of a running machine was dropped outside that \
             machine; its wheel still points at it (stop it first, on a CPU of its machine)"
        )
    })
}

/// The state word of a callout pending on CPU `cpu` of machine `mid`, its
/// callback not running. For a machine id too large for the word (never
/// claimed: `arm` refuses it), [`NO_HOME`]. Each CPU keeps its own
/// (`Cpu::callout_pending`), for its fast paths.
const fn pending_word(mid: u64, cpu: CpuId) -> State {
    if mid >= MACHINE_LIMIT {
        return NO_HOME;
    }
    (mid as State) << MACHINE_SHIFT | PENDING | (cpu.get() as State + 1)
}

/// The machine id in state `s`.
#[inline(always)]
#[allow(clippy::useless_conversion)] // u64 -> u64 where `State` is u64
fn machine_of(s: State) -> u64 {
    u64::from(s >> MACHINE_SHIFT)
}

/// A value no state word has (its home bits are 0): [`pending_word`] of a
/// machine whose id does not fit the word, and a CPU's
/// (`Cpu::callout_pending`) until its fast paths are on.
pub(crate) const NO_HOME: State = 1 << (State::BITS - 1);

/// `gd`'s [`pending_word`], or [`NO_HOME`] while its fast paths are off.
#[inline(always)]
fn pending_here(gd: &Cpu) -> State {
    gd.callout_pending.get()
}

/// `d` in nanoseconds, saturating (a huge `d` never comes).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[track_caller]
fn nonzero_period(period: Duration) -> u64 {
    let p = nanos(period);
    assert!(p != 0, "lwkt: a periodic callout needs a period above zero");
    p
}

fn check_cpu(my: MyCpu<'_>, cpu: CpuId) -> Result<(), IpiError> {
    let ncpus = my.ncpus();
    if cpu.index() >= ncpus {
        return Err(IpiError::NoSuchCpu { cpu, ncpus });
    }
    Ok(())
}

/// The home CPU of state `s`.
#[allow(clippy::unnecessary_cast)] // `State` is u32 without 64-bit atomics
fn home_of(s: State) -> Option<CpuId> {
    ((s & HOME) as u32).checked_sub(1).map(CpuId::new)
}

/// Run `op` on the callout `h` from `my`'s CPU: here, or by IPI message at
/// the CPU that owns it, following it until one answers for good.
#[inline(never)]
fn request(my: MyCpu<'_>, h: *const Header, op: Op) -> bool {
    my.crit(|| {
        let gd = my.cpu();
        let me = gd.id();
        let mut at = me;
        let mut prevented = false;
        let mut spins = 0u32;
        loop {
            let out = if at == me {
                // SAFETY: on `gd` in a critical section; `h` is a callout
                // borrowed by our caller.
                unsafe { apply(gd, h, op) }
            } else {
                // SAFETY: as above; `at` is a CPU of this machine (a home
                // read from the state word, or a checked target).
                unsafe { ask(gd, at, h, op) }
            };
            match out {
                Outcome::Done(r) => return prevented | r,
                Outcome::Forward(c) => at = c,
                Outcome::Busy | Outcome::Running(_) => {
                    if let Outcome::Running(r) = out {
                        prevented |= r;
                    }
                    if at == me {
                        in_own_callback(op);
                    }
                    // Its callback runs at `at`: wait for its end (running
                    // our own IPIs; the callback may be waiting for us),
                    // then ask again.
                    // SAFETY: `h` is borrowed by our caller.
                    let raw = unsafe { &*(h as *const Raw) };
                    loop {
                        let s = raw.state.load(Ordering::Acquire);
                        if s & RUNNING == 0 || home_of(s) != Some(at) {
                            break;
                        }
                        // SAFETY: on `gd` in a critical section.
                        unsafe { ipiq::process(gd) };
                        gd.machine().arch.pause(spins);
                        spins = spins.wrapping_add(1);
                    }
                    at = me;
                }
                Outcome::OtherMachine(m) => panic!(
                    "lwkt: callout armed on a CPU of another machine ({m}) used on machine {}",
                    gd.machine_id.get()
                ),
                Outcome::NoClock => panic!(
                    "lwkt: a callout needs a clock, and this backend has none \
                     (its Arch::clock() returns None)"
                ),
            }
        }
    })
}

#[cold]
#[inline(never)]
fn in_own_callback(op: Op) -> ! {
    match op {
        Op::StopSync => panic!(
            "lwkt: Callout::stop_sync (or drop) of a callout from inside its own callback: it \
             would wait for itself to finish (use stop, or Fired::stop)"
        ),
        _ => panic!(
            "lwkt: a callout's callback cannot move it to another CPU while it runs \
             (re-arm it on its own CPU with Fired::reset)"
        ),
    }
}

/// The descriptor of an operation asked of another CPU, on the asker's
/// stack; alive until the asker sees `done` (the answerer's last use).
struct Req {
    h: *const Header,
    op: Op,
    out: UnsafeCell<Outcome>,
    done: AtomicBool,
    life: Life,
}

/// Ask CPU `at` to apply `op` and wait for its answer, running our own
/// IPIs meanwhile (`at` may be waiting for us).
///
/// # Safety
/// On `gd`, in a critical section; `h` is a live callout that stays so for
/// the call; `at` is another CPU of `gd`'s machine.
#[inline(never)]
unsafe fn ask(gd: &Cpu, at: CpuId, h: *const Header, op: Op) -> Outcome {
    let req = Req {
        h,
        op,
        out: UnsafeCell::new(Outcome::Done(false)),
        done: AtomicBool::new(false),
        life: Life::new(),
    };
    let msg = IpiMsg {
        func: answer,
        arg1: &req as *const Req as usize,
        arg2: 0,
    };
    // SAFETY: on `gd` in a critical section (contract).
    let r = unsafe { ipiq::send(gd, at, &[msg]) };
    debug_assert!(r.is_ok());
    let mut spins = 0u32;
    while !req.done.load(Ordering::Acquire) {
        // SAFETY: as above.
        unsafe { ipiq::process(gd) };
        gd.machine().arch.pause(spins);
        spins = spins.wrapping_add(1);
    }
    // Nobody uses the descriptor any more.
    req.life.end();
    // SAFETY: written by the answer before its Release store of `done`,
    // which our Acquire load saw.
    req.out.with(|p| unsafe { *p })
}

/// The IPI function of [`ask`]: apply the operation here and answer.
fn answer(my: MyCpu<'_>, req: usize, _: usize) {
    // SAFETY: the asker's descriptor, alive until it sees `done`, which we
    // store last.
    let req = unsafe { &*(req as *const Req) };
    req.life.touch();
    // SAFETY: IPI functions run on their CPU in a critical section; the
    // asker keeps the callout borrowed until it has our answer.
    let out = unsafe { apply(my.cpu(), req.h, req.op) };
    req.life.touch();
    // SAFETY: only we write it, and the asker reads it only after `done`.
    req.out.with_mut(|p| unsafe { *p = out });
    req.done.store(true, Ordering::Release);
}

/// Apply `op` to the callout `h` on `gd` if `gd` owns it (or claims it, if
/// it is idle and `op` arms it here); else say where to ask.
///
/// # Safety
/// On `gd`, in a critical section; `h` is the header of a live callout
/// that stays so for the call.
unsafe fn apply(gd: &Cpu, h: *const Header, op: Op) -> Outcome {
    // SAFETY: the header is the first field of `Raw` (`#[repr(C)]`).
    let raw = unsafe { &*(h as *const Raw) };
    let e = h.cast::<Entry>();
    let me = gd.id();
    let mid = gd.machine_id.get();
    loop {
        let s = raw.state.load(Ordering::Acquire);
        if s == 0 {
            let Op::Reset { target, at, period } = op else {
                return Outcome::Done(false);
            };
            if target != me {
                return Outcome::Forward(target);
            }
            let Some(deadline) = at.general_deadline(gd) else {
                return Outcome::NoClock;
            };
            let claimed = pending_word(mid, me);
            if raw
                .state
                .compare_exchange(0, claimed, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Claimed by another CPU meanwhile: it is its home now.
                continue;
            }
            // Ours now: the previous home's last accesses happened before
            // its store of 0, which our exchange read.
            raw.arch.set(Some(gd.machine().arch));
            raw.period.set(period);
            // SAFETY: on `gd` in a critical section; the callout is live
            // and pinned, and is unlinked before it is dropped (`Drop`) or
            // its machine ends (`timer::retire`); it is in no other wheel
            // (it was idle).
            unsafe { timer::insert(gd, e, deadline) };
            return Outcome::Done(false);
        }
        if machine_of(s) != mid {
            return Outcome::OtherMachine(machine_of(s));
        }
        let home = home_of(s).unwrap_or(me);
        if home != me {
            return Outcome::Forward(home);
        }
        // Ours: only we change the state now.
        let running = s & RUNNING != 0;
        return match op {
            Op::Stop | Op::StopSync => {
                // SAFETY: on our CPU in a critical section; linked only in
                // our wheel, if at all.
                let removed = unsafe { gd.timers.remove(e) };
                if removed {
                    let next = if running { s & !PENDING } else { 0 };
                    raw.state.store(next, Ordering::Release);
                }
                if running && op == Op::StopSync {
                    Outcome::Running(removed)
                } else {
                    Outcome::Done(removed)
                }
            }
            Op::Reset { target, .. } if target != me => {
                if running {
                    return Outcome::Busy;
                }
                // Let it go, idle, and send the asker to `target`, which
                // claims it.
                // SAFETY: as above.
                unsafe { gd.timers.remove(e) };
                raw.state.store(0, Ordering::Release);
                Outcome::Forward(target)
            }
            Op::Reset { at, period, .. } => {
                let Some(deadline) = at.general_deadline(gd) else {
                    return Outcome::NoClock;
                };
                raw.period.set(period);
                // SAFETY: as in the claim above; re-arms if linked here.
                unsafe { timer::insert(gd, e, deadline) };
                if s & PENDING == 0 {
                    raw.state.store(s | PENDING, Ordering::Release);
                }
                Outcome::Done(false)
            }
        };
    }
}

/// The next deadline of a periodic callout whose last one was `last`:
/// a whole number of periods later, the first after `now`.
fn next_period(last: u64, period: u64, now: u64) -> u64 {
    let next = last.saturating_add(period);
    if next > now {
        return next;
    }
    let k = (now - last) / period + 1;
    last.saturating_add(k.saturating_mul(period))
}

/// A callout's [`timer::FireFn`]: run the callback (after arming the next
/// period), or let the callout go when its CPU retires.
///
/// # Safety
/// As `FireFn`: `h` is the header of a live `Callout<F>` just unlinked
/// from `gd`'s wheel (so `gd` is its home), on `gd`, in a critical section.
unsafe fn fire<F: FnMut(Fired<'_>) + Send>(h: *const Header, gd: &Cpu, why: Fire) {
    // SAFETY: the wheel's pointer is to the whole callout (`header`), whose
    // first field starts with the header (`#[repr(C)]`).
    let c = unsafe { &*(h as *const Callout<F>) };
    let raw = &c.raw;
    let s = raw.state.load(Ordering::Relaxed);
    let now = match why {
        Fire::Retire => {
            // Its CPU stops for good: idle, so nothing refers to the CPU.
            raw.state.store(0, Ordering::Release);
            return;
        }
        Fire::Expired { now } => now,
    };
    let mut next = (s & !PENDING) | RUNNING;
    let due = raw.head.entry.deadline();
    let period = raw.period.get();
    if period != 0 {
        let at = next_period(due, period, now);
        // SAFETY: on the home in a critical section; unlinked (just fired).
        unsafe { timer::insert(gd, h.cast::<Entry>(), at) };
        next |= PENDING;
    }
    raw.state.store(next, Ordering::Release);
    let fired = Fired {
        my: MyCpu::new(gd),
        h,
        due,
        _callout: PhantomData,
    };
    gd.intr_nesting.set(gd.intr_nesting.get() + 1);
    crate::abort_on_unwind("a callout function", || {
        // SAFETY: only the home runs the function, one run at a time
        // (RUNNING keeps the home in place until the end of this run).
        c.func.with_mut(|f| unsafe { (&mut *f)(fired) })
    });
    gd.intr_nesting.set(gd.intr_nesting.get() - 1);
    let s = raw.state.load(Ordering::Relaxed);
    let after = if s & PENDING != 0 { s & !RUNNING } else { 0 };
    // Release: the callback's effects before a `stop_sync` that sees it end,
    // and before the next home's claim.
    raw.state.store(after, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::next_period;

    #[test]
    fn periods_do_not_drift_and_skip_what_was_missed() {
        assert_eq!(next_period(1000, 100, 1000), 1100);
        assert_eq!(next_period(1000, 100, 1050), 1100);
        assert_eq!(next_period(1000, 100, 1100), 1200);
        assert_eq!(next_period(1000, 100, 1399), 1400);
        assert_eq!(next_period(u64::MAX - 5, 100, u64::MAX - 5), u64::MAX);
    }
}
