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

use core::num::NonZeroU64;
use core::sync::atomic::Ordering;

/// A domain number as stored: the target's widest native atomic word (64
/// bits where it has 64-bit atomics, else 32: numbers then stay below 2^31,
/// machine ids below 2^30 by lwkt-core's rule). Never a lock-based wider
/// atomic: a binding is checked on every allocation, from any context.
#[cfg(target_has_atomic = "64")]
type Num = u64;
#[cfg(target_has_atomic = "64")]
type AtomicNum = core::sync::atomic::AtomicU64;
#[cfg(not(target_has_atomic = "64"))]
type Num = u32;
#[cfg(not(target_has_atomic = "64"))]
type AtomicNum = core::sync::atomic::AtomicU32;

/// `n`, widened (a no-op with 64-bit atomics).
#[inline(always)]
#[allow(clippy::useless_conversion)] // u64 -> u64 where `Num` is u64
fn wide(n: Num) -> u64 {
    u64::from(n)
}

use lwkt_core::{Cur, MyCpu};

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
///     fn domain(&self) -> Domain {
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
    fn domain(&self) -> Domain;
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
    fn domain(&self) -> Domain {
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
    fn domain(&self) -> Domain {
        Domain::of_machine(self.my_cpu())
    }
}

/// Which set of CPUs a [`CpuContext`]'s indices name: an lwkt machine
/// (by its process-unique [`MyCpu::machine_id`]), or a [`DomainId`] (a
/// [`ThreadSlots`](crate::ThreadSlots), a kernel's own context). Two
/// domains are equal only if they are the same machine or the same
/// `DomainId`; a machine is never equal to a `DomainId`.
///
/// ```
/// use lwkt_slab::{CpuContext, Domain, DomainId};
/// static ID: DomainId = DomainId::new();
/// let (a, b) = lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     // A thread and a bare `MyCpu` (as an IPI function has) of one
///     // machine are one domain.
///     assert_eq!(cur.domain(), Domain::of_machine(cur.my_cpu()));
///     assert_ne!(cur.domain(), ID.domain());
///     (cur.domain(), cur.my_cpu().domain())
/// });
/// assert_eq!(a, b);
/// let c = lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| cur.domain());
/// assert_ne!(a, c); // another machine
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Domain(NonZeroU64);

// A domain's number: a `DomainId`'s number `n` is `2n`, machine `m` is
// `2m + 1`, so the two kinds never collide and 0 means "unbound" in a
// `Binding`.
const MACHINE_BIT: u64 = 1;

impl Domain {
    /// The machine `my` is a CPU of (its [`MyCpu::machine_id`]).
    ///
    /// ```
    /// use lwkt_slab::Domain;
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let _d = Domain::of_machine(cur.my_cpu());
    /// });
    /// ```
    #[inline(always)]
    pub fn of_machine(my: MyCpu<'_>) -> Domain {
        let m = my.machine_id();
        // lwkt-core: machine ids are never 0 and stay below 2^62 (2^30
        // without 64-bit atomics, where `Num` is 32 bits), so `2m+1`
        // neither wraps nor meets a `DomainId`'s `2n`.
        debug_assert!(m != 0 && m < 1 << (Num::BITS - 2));
        // SAFETY: `| MACHINE_BIT` (1) makes it non-zero.
        Domain(unsafe { NonZeroU64::new_unchecked(m << 1 | MACHINE_BIT) })
    }

    /// The domain numbered `2n + kind`; `n` is 1.. for a `DomainId`.
    #[inline(always)]
    fn numbered(n: u64, kind: u64) -> Domain {
        match NonZeroU64::new(n << 1 | kind) {
            Some(v) if n < 1 << (Num::BITS - 1) => Domain(v),
            _ => exhausted(),
        }
    }
}

impl core::fmt::Debug for Domain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let (kind, n) = (self.0.get() & MACHINE_BIT, self.0.get() >> 1);
        let kind = if kind != 0 { "Machine" } else { "Id" };
        f.debug_tuple("Domain")
            .field(&format_args!("{kind}({n})"))
            .finish()
    }
}

#[cold]
#[inline(never)]
fn exhausted() -> ! {
    panic!("lwkt-slab: domain numbers exhausted")
}

/// A process-unique domain for contexts that are not an lwkt machine's
/// CPUs. Its number is drawn on first use, so it can be built in a
/// `static`; moving it keeps the number.
///
/// ```
/// use lwkt_slab::DomainId;
/// let (a, b) = (DomainId::new(), DomainId::new());
/// assert_ne!(a.domain(), b.domain());
/// assert_eq!(a.domain(), a.domain());
/// ```
#[derive(Debug)]
pub struct DomainId(AtomicNum);

static NEXT_DOMAIN: AtomicNum = AtomicNum::new(1);

impl DomainId {
    /// A domain of its own.
    pub const fn new() -> DomainId {
        DomainId(AtomicNum::new(0))
    }

    /// The domain.
    #[inline]
    pub fn domain(&self) -> Domain {
        let v = self.0.load(Ordering::Relaxed);
        let v = if v != 0 { v } else { self.draw() };
        Domain::numbered(wide(v), 0)
    }

    #[cold]
    fn draw(&self) -> Num {
        let fresh = NEXT_DOMAIN.fetch_add(1, Ordering::Relaxed);
        if fresh == 0 {
            exhausted();
        }
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

/// The domain a structure with per-CPU state is bound to: set by the first
/// context that uses it, checked on every use after. Holds the domain's
/// number, 0 while unbound.
pub(crate) struct Binding(AtomicNum);

impl Binding {
    pub(crate) const fn new() -> Binding {
        Binding(AtomicNum::new(0))
    }

    /// Panic unless `d` is the bound domain; bind to it if none is.
    #[inline(always)]
    pub(crate) fn check(&self, d: Domain, what: &'static str) {
        // Acquire (and Release in `unbind`): the uses by a domain that
        // was unbound happen before those of the one that binds next.
        let bound = self.0.load(Ordering::Acquire);
        if wide(bound) != d.0.get() {
            self.bind(d, bound, what);
        }
    }

    #[cold]
    #[track_caller]
    fn bind(&self, d: Domain, bound: Num, what: &'static str) {
        // Every domain's number fits a `Num` (`numbered`, `of_machine`).
        let mine = d.0.get() as Num;
        if bound == 0 {
            match self
                .0
                .compare_exchange(0, mine, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return,
                // Someone else bound it first: to our domain, or refused.
                Err(won) if won == mine => return,
                Err(_) => {}
            }
        }
        refuse(what)
    }

    /// Forget the bound domain.
    ///
    /// # Safety
    /// No context of the bound domain uses the structure any more, and
    /// nothing else does during the call (every earlier use happens before
    /// it, e.g. the bound machine has stopped and been joined).
    pub(crate) unsafe fn unbind(&self) {
        self.0.store(0, Ordering::Release);
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
