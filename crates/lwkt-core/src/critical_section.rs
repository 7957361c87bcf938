//! A [`critical-section`](https://docs.rs/critical-section/1) 1.x
//! implementation on top of lwkt (cargo feature `critical-section`, off by
//! default), so that embedded crates written against that crate
//! (`heapless`, `portable-atomic`'s fallback, `critical_section::Mutex`)
//! work inside an lwkt kernel.
//!
//! It keeps the crate's contract on a multi-core machine: one
//! `critical_section::with` runs at a time on the whole machine, not only
//! on the local CPU, and `with` nests. DragonFly has no such global lock; the
//! closest analogue is a spin lock, which implies a critical section
//! (`spin_lock()` does `crit_enter()`):
//!
//! - **On an lwkt CPU** (code of a thread, or an IPI function),
//!   [`acquire`](::critical_section::acquire) enters the running thread's
//!   critical section and then takes one process-wide spin lock. The
//!   critical section keeps this CPU's IPI functions, which could ask for
//!   the lock, from running on top of the holder: they wait for its
//!   `crit_exit`, as every interrupt does. While it waits for the lock the
//!   CPU leaves its critical section between attempts (when it was the
//!   outermost), so IPIs to a spinning CPU still run and a holder that
//!   sends one (even to a full ring) is not held up.
//! - **Outside any lwkt CPU** (a plain OS thread of the hosted backend, a
//!   kernel's boot code before the machine starts, a CPU whose thread has
//!   not started) it only takes the spin lock.
//! - **Nesting**: the lock records its owner (the running lwkt thread, or
//!   the id the kernel's `outside_id` function gives the context outside
//!   lwkt); an acquire by the owner takes nothing, and the restore state
//!   (`restore-state-usize`) tells the matching release whether its acquire
//!   took the lock and entered a thread's critical section.
//!
//! Enabling the feature is what defines the implementation
//! (`critical_section::set_impl!` is in this module): the crate allows one
//! implementation per program, so enable the feature in a kernel (or a
//! test binary), never in a library, and do not combine it with another
//! implementation (`critical-section/std`, a HAL's). A kernel then calls
//! [`install`] once, before anything uses `critical_section`, to say which
//! backend finds the current CPU (lwkt-core has no global backend) and how
//! to tell contexts outside lwkt apart.
//!
//! # Rules for the closure
//!
//! A `critical_section::with` closure holds every other CPU that asks for
//! the lock, each spinning with its IPIs deferred while it tries, so it
//! must be short and **must not wait for another CPU or block**: no
//! `cpusync`, no `sleep`, `join`, `yield_now`, `domsg`, token wait or
//! anything else that switches threads. Blocking with the lock held leaves
//! the next thread of the same CPU that asks for it spinning on a lock
//! whose holder cannot run; that case is caught (a panic naming the rule)
//! rather than left to hang.
//!
//! # Example
//!
//! ```
//! use core::cell::Cell;
//! use critical_section::Mutex;
//! use lwkt_core::CpuId;
//!
//! static COUNT: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));
//!
//! // The thread's own id outside lwkt: a thread-local's address.
//! fn os_thread_id() -> usize {
//!     std::thread_local!(static ID: u8 = const { 0 });
//!     ID.with(|id| id as *const u8 as usize)
//! }
//! // SAFETY: every machine of this program uses `HOSTED`; a live OS
//! // thread's thread-local has an address no other live thread has, and
//! // user-space addresses are below `usize::MAX / 2`.
//! unsafe { lwkt_core::critical_section::install(&lwkt_arch_hosted::HOSTED, os_thread_id) };
//!
//! lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
//!     let bump = || critical_section::with(|cs| {
//!         let c = COUNT.borrow(cs);
//!         c.set(c.get() + 1);
//!     });
//!     let t = cur.spawn_on(CpuId::new(1), move |_| for _ in 0..1000 { bump() }).unwrap();
//!     for _ in 0..1000 { bump() }
//!     cur.join(&t);
//! });
//! // Outside the machine too (only the spin lock).
//! critical_section::with(|cs| assert_eq!(COUNT.borrow(cs).get(), 2000));
//! ```

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, Ordering};

use crate::cpu::Cpu;
use crate::crit::crit_exit_td;
use crate::thread::Thread;
use crate::{crit, Arch};

/// What [`install`] recorded.
#[derive(Clone, Copy)]
struct Registration {
    arch: &'static dyn Arch,
    outside_id: fn() -> usize,
}

/// A write-once cell for the registration (no_std: no `OnceLock`).
struct Slot {
    /// `EMPTY`, `WRITING` (one `install` fills `reg`) or `READY`.
    state: AtomicU8,
    reg: UnsafeCell<MaybeUninit<Registration>>,
}

const EMPTY: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

// SAFETY: `reg` is written once, by the `install` that moved `state` from
// `EMPTY` to `WRITING`, and read only after `state` is `READY` (stored with
// Release after the write, loaded with Acquire before the read); a
// `Registration` is a shared reference to a `Sync` backend and a function
// pointer, both fine to use from any thread.
unsafe impl Sync for Slot {}

static SLOT: Slot = Slot {
    state: AtomicU8::new(EMPTY),
    reg: UnsafeCell::new(MaybeUninit::uninit()),
};

/// The lock word: 0 when free, else the owner: a running lwkt thread's
/// block address (even: `Thread` is aligned to more than 2), or
/// `outside_id() << 1 | 1` for a context outside lwkt.
static OWNER: AtomicUsize = AtomicUsize::new(0);

/// The CPU of an lwkt owner (null for an owner outside lwkt). Written only
/// by the owner; read by a contender to see that the owner is a thread of
/// its own CPU, which can only be one that blocked with the lock held.
static OWNER_CPU: AtomicPtr<Cpu> = AtomicPtr::new(ptr::null_mut());

/// Restore state of an acquire that took nothing (nested in its owner's).
const NESTED: usize = 0;
/// Restore state of an acquire outside lwkt that took the lock. (One that
/// took it on an lwkt CPU returns its thread's block address, even.)
const OUTSIDE: usize = 1;

/// Say which backend finds the current CPU, and how to tell apart the
/// contexts that run outside any lwkt CPU, for the `critical-section`
/// implementation. Call it once, before anything uses `critical_section`;
/// a second call with the same arguments does nothing.
///
/// `outside_id` is called by code that runs where `arch.current_cpu()` is
/// `None`, or names a CPU that runs no thread yet: the boot CPU before the
/// machine starts, a plain OS thread of the hosted backend. It gives
/// nesting a way to recognise the owner there (a CPU number from the local
/// APIC in a kernel; a thread-local's address on the hosted backend).
///
/// # Panics
/// If it was called before with another backend or function; and
/// `critical_section::acquire` panics if `install` was never called.
///
/// # Safety
/// - Every lwkt CPU that runs code using `critical_section` belongs to a
///   machine whose backend is `arch` (a CPU of another backend would be
///   taken for "outside", where its threads share one id).
/// - `outside_id` returns, in each context outside lwkt, a value no other
///   such context running at the same time gets, at most `usize::MAX / 2`
///   (a shared value lets two contexts into the critical section at once,
///   each thinking it nests in its own); it does not use
///   `critical_section` itself.
///
/// ```
/// fn os_thread_id() -> usize {
///     std::thread_local!(static ID: u8 = const { 0 });
///     ID.with(|id| id as *const u8 as usize)
/// }
/// // SAFETY: every machine of this program uses `HOSTED`; thread-local
/// // addresses differ between live threads and lie below `usize::MAX / 2`.
/// unsafe { lwkt_core::critical_section::install(&lwkt_arch_hosted::HOSTED, os_thread_id) };
/// assert_eq!(critical_section::with(|_| 7), 7);
/// ```
pub unsafe fn install(arch: &'static dyn Arch, outside_id: fn() -> usize) {
    let reg = Registration { arch, outside_id };
    match SLOT
        .state
        .compare_exchange(EMPTY, WRITING, Ordering::Acquire, Ordering::Acquire)
    {
        Ok(_) => {
            // SAFETY: the exchange made us the only writer, and nobody
            // reads before `READY` (see `Slot`).
            unsafe { (*SLOT.reg.get()).write(reg) };
            SLOT.state.store(READY, Ordering::Release);
        }
        Err(_) => {
            // Another install runs or ran: wait for it, then compare.
            let old = loop {
                if let Some(r) = registration() {
                    break r;
                }
                core::hint::spin_loop();
            };
            assert!(
                ptr::addr_eq(old.arch, arch) && old.outside_id as usize == outside_id as usize,
                "lwkt: critical_section::install called again with another backend or outside_id"
            );
        }
    }
}

#[inline]
fn registration() -> Option<Registration> {
    if SLOT.state.load(Ordering::Acquire) == READY {
        // SAFETY: `READY` is stored (Release) after the one write; our
        // Acquire load saw it (see `Slot`).
        Some(unsafe { (*SLOT.reg.get()).assume_init() })
    } else {
        None
    }
}

/// The running lwkt thread and its CPU, or `None` outside any lwkt CPU.
#[inline]
fn current(arch: &'static dyn Arch) -> Option<(&'static Cpu, &'static Thread)> {
    let gd = arch.current_cpu()?;
    // SAFETY: `Arch`'s contract: `current_cpu` names the live block of the
    // CPU this code runs on; it stays alive while code runs on that CPU,
    // which covers this critical section (it ends on the same CPU: the
    // closure must not block, see the module docs).
    let gd: &'static Cpu = unsafe { gd.as_ref() };
    let td = gd.curthread.load(Ordering::Relaxed);
    // SAFETY: a non-null `curthread` is the live thread running on this CPU
    // (or the one an IPI function interrupted), alive until it exits, which
    // it cannot do while this code runs on its behalf.
    unsafe { td.as_ref() }.map(|td| (gd, td))
}

/// The `critical-section` implementation (see the module docs).
struct LwktCriticalSection;

::critical_section::set_impl!(LwktCriticalSection);

// SAFETY: `acquire` returns only once `OWNER` names the caller, taken by a
// compare-exchange with Acquire ordering, or when it already did (a nested
// acquire, whose outer one did the Acquire); the outermost `release` stores
// 0 with Release. So one context at a time is inside, and each sees the
// writes of the previous one. Owner ids are unique among contexts that can
// hold the lock at once: a running lwkt thread's block address (one CPU
// runs one thread; a thread of the same CPU that is not running cannot
// hold it unless it blocked inside, which `acquire` refuses by panicking),
// or the id `install`'s contract makes unique outside lwkt, tagged odd so
// it never equals a block address.
unsafe impl ::critical_section::Impl for LwktCriticalSection {
    unsafe fn acquire() -> ::critical_section::RawRestoreState {
        let Some(reg) = registration() else {
            panic!("lwkt: critical_section used before lwkt_core::critical_section::install")
        };
        match current(reg.arch) {
            Some((gd, td)) => acquire_on_cpu(reg.arch, gd, td),
            None => acquire_outside(reg),
        }
    }

    unsafe fn release(state: ::critical_section::RawRestoreState) {
        match state {
            NESTED => {}
            OUTSIDE => OWNER.store(0, Ordering::Release),
            td => {
                OWNER_CPU.store(ptr::null_mut(), Ordering::Relaxed);
                OWNER.store(0, Ordering::Release);
                // SAFETY: `td` is the block address our matching acquire
                // returned: the thread that runs this release (same
                // context, `critical_section`'s contract), alive.
                crit_exit_td(unsafe { &*(td as *const Thread) });
            }
        }
    }
}

/// Acquire on an lwkt CPU: the thread's critical section, then the lock.
/// Returns `NESTED` or the thread's block address.
fn acquire_on_cpu(arch: &'static dyn Arch, gd: &'static Cpu, td: &'static Thread) -> usize {
    let me = td as *const Thread as usize;
    debug_assert!(me & 1 == 0 && me > OUTSIDE);
    if OWNER.load(Ordering::Relaxed) == me {
        // Only this thread stores `me`, and clears it before it stops
        // holding: we hold it already (our own earlier store).
        return NESTED;
    }
    crit::enter(&td.critcount);
    let mut spins = 0u32;
    while OWNER
        .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        if ptr::eq(OWNER_CPU.load(Ordering::Relaxed), gd) {
            // Set only by a holder of this CPU, which is not running (we
            // are): it blocked inside `with`.
            crit_exit_td(td);
            blocked_holder(gd);
        }
        // Let deferred IPIs run while we wait (if this was the outermost
        // critical section), then wait for a free lock without writing it.
        crit_exit_td(td);
        while OWNER.load(Ordering::Relaxed) != 0 {
            arch.pause(spins);
            spins = spins.saturating_add(1);
        }
        crit::enter(&td.critcount);
    }
    OWNER_CPU.store(ptr::from_ref(gd).cast_mut(), Ordering::Relaxed);
    me
}

/// Acquire outside lwkt: the lock only. Returns `NESTED` or `OUTSIDE`.
fn acquire_outside(reg: Registration) -> usize {
    let id = (reg.outside_id)();
    assert!(
        id <= usize::MAX >> 1,
        "lwkt: critical_section's outside_id returned {id:#x}, above usize::MAX / 2"
    );
    let me = id << 1 | 1;
    if OWNER.load(Ordering::Relaxed) == me {
        // As on a CPU: only this context stores `me` (install's contract).
        return NESTED;
    }
    let mut spins = 0u32;
    while OWNER
        .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        while OWNER.load(Ordering::Relaxed) != 0 {
            reg.arch.pause(spins);
            spins = spins.saturating_add(1);
        }
    }
    OUTSIDE
}

#[cold]
#[inline(never)]
fn blocked_holder(gd: &Cpu) -> ! {
    panic!(
        "lwkt: critical_section::with on CPU {} while another thread of that CPU holds it: \
         a critical_section::with closure blocked or switched threads (it must not)",
        gd.id().get()
    )
}
