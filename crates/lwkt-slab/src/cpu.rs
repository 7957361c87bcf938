//! What the slab needs from the kernel: the current CPU, inside a critical
//! section, and which machine that CPU belongs to. A small trait, so a
//! kernel with its own scheduler can use the slab too.
//!
//! A CPU index means something only within one set of CPUs: two hosted
//! lwkt machines in one process both have a CPU 0, and so do two
//! [`ThreadSlots`](crate::ThreadSlots). Everything here that keeps per-CPU
//! state ([`Slab`](crate::Slab), [`ObjCache`](crate::objcache::ObjCache))
//! is bound to the [`Domain`] of the first context that uses it and
//! refuses every other with a panic, so two "CPU 0"s never share one
//! CPU's state.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::num::NonZeroU64;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use lwkt_core::{Cur, MyCpu, ThreadHandle};

/// The current CPU, held for the duration of a closure, and the set of
/// CPUs its index is one of.
///
/// DragonFly: `mycpu` inside `crit_enter()` ... `crit_exit()`.
///
/// ```
/// use lwkt_slab::{CpuContext, Domain, DomainId, HostedPages, Slab};
/// use std::sync::Mutex;
///
/// /// One CPU behind a lock: any thread may be it, one at a time.
/// struct Locked { lock: Mutex<()>, id: DomainId }
/// // SAFETY: index 0 is used only under `lock`, and `id` is this
/// // context's own: no other context reports its domain.
/// unsafe impl CpuContext for Locked {
///     fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
///         let _g = self.lock.lock().unwrap();
///         f(0)
///     }
///     fn domain(&self) -> Domain<'_> {
///         self.id.domain()
///     }
/// }
///
/// let cx = Locked { lock: Mutex::new(()), id: DomainId::new() };
/// let slab = Slab::new(HostedPages::new(1 << 20), 1);
/// assert!(slab.check(&cx).is_ok());
/// ```
///
/// # Safety
/// `with_cpu` runs `f` with the index of the CPU it runs on, and for the
/// whole call no other call of `with_cpu` on a context with the same
/// [`domain`](CpuContext::domain) runs `f` with that index (at least none
/// that uses the same slab or object cache): no other thread
/// runs on that CPU, and an interrupt that could use the slab is deferred
/// until `f` returns (a critical section), or the implementation
/// otherwise excludes other users of the index (a lock). `domain` returns
/// the same domain on every call, built from [`Domain::of_machine`] with a
/// CPU of the machine the index belongs to (and only when the index is a
/// CPU of that machine run inside its critical section), or from a
/// [`DomainId`] that only contexts keeping this contract together report.
pub unsafe trait CpuContext {
    /// Run `f(cpu)` in a critical section on the current CPU.
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R;

    /// The set of CPUs the index belongs to (for lwkt-core's contexts, the
    /// machine).
    fn domain(&self) -> Domain<'_>;
}

// SAFETY: `MyCpu::crit` is a critical section on the CPU `MyCpu` names, and
// a `MyCpu` exists only in code running on that CPU; LWKT threads are not
// preempted by other threads, and IPIs are deferred inside it. The domain
// is the CPU's machine.
unsafe impl CpuContext for MyCpu<'_> {
    #[inline(always)]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let cpu = self.id().index();
        self.crit(|| f(cpu))
    }

    #[inline(always)]
    fn domain(&self) -> Domain<'_> {
        Domain::of_machine(*self)
    }
}

// SAFETY: as for `MyCpu` (a thread's current CPU, in its critical section;
// a thread does not change CPU inside one, nor machine ever).
unsafe impl CpuContext for Cur {
    #[inline(always)]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _crit = self.crit();
        f(self.cpu_id().index())
    }

    #[inline(always)]
    fn domain(&self) -> Domain<'_> {
        Domain(Kind::Machine {
            my: self.my_cpu(),
            cur: Some(self),
        })
    }
}

/// Which set of CPUs a [`CpuContext`]'s indices name: an lwkt machine, or
/// a [`DomainId`] (a [`ThreadSlots`](crate::ThreadSlots), a kernel's own
/// context).
///
/// ```
/// use lwkt_slab::{CpuContext, DomainId};
/// static ID: DomainId = DomainId::new();
/// let _d = ID.domain();
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let _m = cur.domain(); // the machine `cur` runs on
/// });
/// ```
#[derive(Clone, Copy)]
pub struct Domain<'a>(Kind<'a>);

#[derive(Clone, Copy)]
enum Kind<'a> {
    Id(NonZeroU64),
    // lwkt-core has no public machine id yet: a machine is recognised
    // through a handle of one of its threads (`ThreadHandle::is_of_machine`).
    Machine { my: MyCpu<'a>, cur: Option<&'a Cur> },
}

impl<'a> Domain<'a> {
    /// The machine `my` is a CPU of.
    pub fn of_machine(my: MyCpu<'a>) -> Domain<'a> {
        Domain(Kind::Machine { my, cur: None })
    }
}

impl core::fmt::Debug for Domain<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            Kind::Id(id) => f.debug_tuple("Domain").field(&id).finish(),
            Kind::Machine { my, .. } => f.debug_tuple("Domain").field(&my).finish(),
        }
    }
}

/// A process-unique domain for contexts that are not an lwkt machine's
/// CPUs. Its number is drawn on first use, so it can be built in a
/// `static`; moving it keeps the number.
///
/// ```
/// use lwkt_slab::DomainId;
/// let (a, b) = (DomainId::new(), DomainId::new());
/// assert_ne!(format!("{:?}", a.domain()), format!("{:?}", b.domain()));
/// ```
#[derive(Debug)]
pub struct DomainId(AtomicU64);

static NEXT_DOMAIN: AtomicU64 = AtomicU64::new(1);

impl DomainId {
    /// A domain of its own.
    pub const fn new() -> DomainId {
        DomainId(AtomicU64::new(0))
    }

    /// The domain.
    #[inline]
    pub fn domain(&self) -> Domain<'static> {
        let v = self.0.load(Ordering::Relaxed);
        let v = if v != 0 { v } else { self.draw() };
        // SAFETY: `draw` never returns 0, and only it stores here.
        Domain(Kind::Id(unsafe { NonZeroU64::new_unchecked(v) }))
    }

    #[cold]
    fn draw(&self) -> u64 {
        let fresh = NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed);
        assert!(fresh != 0, "lwkt-slab: domain numbers exhausted");
        match self
            .0
            .compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => fresh,
            Err(won) => won,
        }
    }
}

impl Default for DomainId {
    fn default() -> Self {
        DomainId::new()
    }
}

const UNBOUND: u8 = 0;
const BINDING: u8 = 1;
const BOUND_ID: u8 = 2;
const BOUND_MACHINE: u8 = 3;

/// The domain a structure with per-CPU state is bound to: set by the first
/// context that uses it, checked on every use after.
pub(crate) struct Binding {
    state: AtomicU8,
    id: AtomicU64,
    /// A thread of the bound machine (`BOUND_MACHINE`); written once while
    /// `BINDING`, read only after `state` says `BOUND_MACHINE`.
    handle: UnsafeCell<MaybeUninit<ThreadHandle>>,
}

// SAFETY: `handle` is written only by the one caller that moved `state`
// from `UNBOUND` to `BINDING`, before it publishes `BOUND_MACHINE` with
// Release; readers read it after an Acquire load sees `BOUND_MACHINE`, and
// `ThreadHandle` is `Sync`. `unbind` (unsafe) and drop have no readers.
unsafe impl Sync for Binding {}
// SAFETY: `ThreadHandle` is `Send`.
unsafe impl Send for Binding {}

impl Binding {
    pub(crate) const fn new() -> Binding {
        Binding {
            state: AtomicU8::new(UNBOUND),
            id: AtomicU64::new(0),
            handle: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Panic unless `d` is the bound domain; bind to it if none is.
    #[inline]
    #[track_caller]
    pub(crate) fn check(&self, d: Domain<'_>, what: &'static str) {
        let ok = match (self.state.load(Ordering::Acquire), d.0) {
            (BOUND_ID, Kind::Id(id)) => self.id.load(Ordering::Relaxed) == id.get(),
            (BOUND_MACHINE, Kind::Machine { my, .. }) => {
                // SAFETY: `BOUND_MACHINE` was published after the handle
                // was written, and it is not changed while bound.
                unsafe { (*self.handle.get()).assume_init_ref() }.is_of_machine(my)
            }
            (BOUND_ID | BOUND_MACHINE, _) => false,
            _ => return self.bind(d, what),
        };
        if !ok {
            refuse(what);
        }
    }

    #[cold]
    #[track_caller]
    fn bind(&self, d: Domain<'_>, what: &'static str) {
        loop {
            match self.state.compare_exchange(
                UNBOUND,
                BINDING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(BINDING) => core::hint::spin_loop(),
                // Someone else bound it first: check against theirs.
                Err(_) => return self.check(d, what),
            }
        }
        match d.0 {
            Kind::Id(id) => {
                self.id.store(id.get(), Ordering::Relaxed);
                self.state.store(BOUND_ID, Ordering::Release);
            }
            Kind::Machine { cur: Some(cur), .. } => {
                // SAFETY: `BINDING` is ours: nobody reads the handle.
                unsafe { (*self.handle.get()).write(cur.handle()) };
                self.state.store(BOUND_MACHINE, Ordering::Release);
            }
            Kind::Machine { cur: None, .. } => {
                self.state.store(UNBOUND, Ordering::Release);
                panic!(
                    "lwkt-slab: this {what} is not bound to a machine yet, and a bare \
                     MyCpu cannot bind it (lwkt-core has no public machine id): use it \
                     from a thread's `Cur` first"
                );
            }
        }
    }

    /// Forget the bound domain.
    ///
    /// # Safety
    /// No context of the bound domain uses the structure any more, and
    /// nothing else does during the call (every earlier use happens before
    /// it, e.g. the bound machine has stopped and been joined).
    pub(crate) unsafe fn unbind(&self) {
        if self.state.load(Ordering::Acquire) == BOUND_MACHINE {
            // SAFETY: bound, so written; nobody else uses it (caller).
            unsafe { (*self.handle.get()).assume_init_drop() };
        }
        self.state.store(UNBOUND, Ordering::Release);
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no other use.
        unsafe { self.unbind() };
    }
}

#[cold]
#[track_caller]
fn refuse(what: &'static str) -> ! {
    panic!(
        "lwkt-slab: this {what} is bound to another machine or CPU context: a CPU index \
         names a CPU only within one machine (or one ThreadSlots), so one {what} serves \
         one of them"
    )
}
