//! The per-CPU block (DragonFly `struct globaldata`) and the machine that
//! ties the CPUs together.
//!
//! DragonFly: `struct globaldata`, `mycpu`, `gd_reqflags`, `gd_ipimask`,
//! `gd_npoll`, `gd_tdrunq`, `gd_idlethread`.

use core::cell::{Cell, UnsafeCell};
use core::fmt;
use core::ptr;

use crossbeam_utils::CachePadded;

use crate::arch::Arch;
use crate::cpumask::AtomicCpuMask;
pub use crate::cpumask::CpuMask;
use crate::ipiq::IpiRing;
use crate::runq::RunQueue;
use crate::sleep::SleepQueues;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering, OwnerCounter};
use crate::thread::{tdf, Priority, Thread};

/// Most CPUs one machine may have (the width of [`CpuMask`]), DragonFly's
/// default `MAXCPU`. Machines of any size up to it pay the same: a mask
/// test reads one cache line either way.
pub const MAX_CPUS: usize = 256;

/// A CPU number, `0..ncpus`.
///
/// ```
/// let c = lwkt_core::CpuId::new(3);
/// assert_eq!(c.get(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpuId(u32);

impl CpuId {
    /// CPU `n`. Whether it exists is checked where it is used.
    pub const fn new(n: u32) -> CpuId {
        CpuId(n)
    }
    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }
    /// The number as an index.
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for CpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu{}", self.0)
    }
}

/// Per-CPU counters, written only by their CPU (plain stores), readable by
/// anyone at any time.
#[derive(Debug, Default)]
pub struct CpuStats {
    pub(crate) switches: OwnerCounter,
    pub(crate) ipis_sent: OwnerCounter,
    pub(crate) ipis_received: OwnerCounter,
    pub(crate) kicks_sent: OwnerCounter,
    pub(crate) kicks_avoided: OwnerCounter,
    pub(crate) kicks_answered: OwnerCounter,
    pub(crate) ring_full_waits: OwnerCounter,
    pub(crate) threads_created: OwnerCounter,
    pub(crate) threads_exited: OwnerCounter,
    pub(crate) interrupts: OwnerCounter,
    pub(crate) stray_interrupts: OwnerCounter,
    pub(crate) preemptions: OwnerCounter,
    pub(crate) slices: OwnerCounter,
}

/// One CPU's state at a moment: [`Cpu::snapshot`]. Its `Display` is one
/// line, for a hang report.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// The CPU.
    pub cpu: CpuId,
    /// The running thread's name (the idle loop's is `idle`).
    pub thread: &'static str,
    /// The running thread's critical-section count.
    pub critcount: u32,
    /// Threads on the run queue, the running one included when runnable.
    pub runnable: usize,
    /// Deferred work for the next `crit_exit` (`gd_reqflags`).
    pub reqflags: u32,
    /// The kick interlock (`gd_npoll`): 0 clear, 1 kicked, 2 watching.
    pub npoll: u32,
    /// Sources marked as having queued IPIs (`gd_ipimask`).
    pub ipimask: CpuMask,
    /// Sources whose ring into this CPU holds entries.
    pub ring_backlog: CpuMask,
    /// Whether this CPU watches its rings.
    pub watching: bool,
    /// Depth of interrupt or IPI processing.
    pub intr_nesting: u32,
    /// Its counters.
    pub stats: CpuStatsSnapshot,
}

impl core::fmt::Display for CpuSnapshot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "cpu {}: thread '{}' crit {} runnable {} reqflags {:#x} npoll {} ipimask {:#x} \
             rings {:#x} watching {} nesting {} | switches {} ipis sent {} run {} kicks {} answered {}",
            self.cpu.get(),
            self.thread,
            self.critcount,
            self.runnable,
            self.reqflags,
            self.npoll,
            self.ipimask,
            self.ring_backlog,
            self.watching,
            self.intr_nesting,
            self.stats.switches,
            self.stats.ipis_sent,
            self.stats.ipis_received,
            self.stats.kicks_sent,
            self.stats.kicks_answered,
        )
    }
}

/// A copy of one CPU's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStatsSnapshot {
    /// Thread switches (`lwkt_switch` that changed threads).
    pub switches: u64,
    /// IPI messages this CPU queued to other CPUs.
    pub ipis_sent: u64,
    /// IPI messages this CPU ran for others.
    pub ipis_received: u64,
    /// Hardware IPIs (kicks) this CPU sent.
    pub kicks_sent: u64,
    /// Messages that needed no kick because the target was already kicked
    /// or polling: the batching DragonFly counts as `ipiq_avoided`.
    pub kicks_avoided: u64,
    /// Kicks this CPU answered: times it began to drain its rings with a
    /// kick outstanding (a backend that delivers kicks lazily checks that
    /// its targets keep answering).
    pub kicks_answered: u64,
    /// Times a sender found a ring full and drained its own rings meanwhile
    /// (`ipiq_fifofull`).
    pub ring_full_waits: u64,
    /// Threads created with this CPU as their home.
    pub threads_created: u64,
    /// Threads that exited on this CPU.
    pub threads_exited: u64,
    /// Device interrupts delivered to an interrupt thread.
    pub interrupts: u64,
    /// Device interrupts raised on a line without an interrupt thread
    /// (DragonFly: "stray interrupt").
    pub stray_interrupts: u64,
    /// Times an interrupt thread preempted the running thread
    /// (`lwkt_preempt` that switched).
    pub preemptions: u64,
    /// Round-robin switches made because a thread used up its quantum
    /// ([`TIME_SLICE`](crate::TIME_SLICE)) while a peer waited
    /// (`lwkt_schedulerclock`).
    pub slices: u64,
    /// Threads living on this CPU now.
    pub threads_live: u64,
}

/// Shared state of one machine: its CPUs, the N×N IPI rings, the backend.
///
/// A backend builds one with [`MachineState::new`], then runs
/// [`Cpu::idle_loop`] on each CPU. lwkt-core keeps raw pointers into it, so
/// it must stay where it is, alive, until every CPU has left its idle loop.
pub struct MachineState {
    pub(crate) arch: &'static dyn Arch,
    pub(crate) cpus: *const Cpu,
    pub(crate) ncpus: usize,
    pub(crate) rings: *const IpiRing,
    pub(crate) id: u64,
    /// Whether the backend's clock ([`Arch::clock`]) has returned a time:
    /// once it has, it always does (a clock, once set up, stays), so
    /// `has_clock` reads it only until then. Cached because a deadline
    /// given rather than measured (`Callout::reset_at`) should cost no
    /// clock read; not computed at creation, since a backend may set its
    /// clock up after the machine exists (x86-64: `time::calibrate`).
    clock_seen: AtomicBool,
    /// Which CPUs may have sleepers in each sleep-hash slot
    /// (DragonFly `slpque_cpumasks[]`).
    pub(crate) sleep_masks: [AtomicCpuMask; crate::sleep::SLEEP_HASH],
}

// SAFETY: the raw pointers refer to the CPU blocks and rings, which are
// themselves `Sync`; the machine only hands out shared references to them.
unsafe impl Sync for MachineState {}
// SAFETY: as above.
unsafe impl Send for MachineState {}

impl fmt::Debug for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineState")
            .field("ncpus", &self.ncpus)
            .finish_non_exhaustive()
    }
}

static MACHINE_IDS: AtomicUsizeStatic = AtomicUsizeStatic::new(1);
/// The id counter: the target's widest native atomic (see
/// `sync::AtomicWord`; it is `core`'s even under loom, as the counter is
/// global to the process).
#[cfg(target_has_atomic = "64")]
type IdWord = core::sync::atomic::AtomicU64;
#[cfg(not(target_has_atomic = "64"))]
type IdWord = core::sync::atomic::AtomicU32;
/// The width of [`IdWord`] in bits.
const ID_BITS: u32 = (core::mem::size_of::<IdWord>() * 8) as u32;
struct AtomicUsizeStatic(IdWord);
impl AtomicUsizeStatic {
    const fn new(v: u32) -> Self {
        Self(IdWord::new(v as _))
    }
}

/// A machine id: 1, 2, ... and always below 2^62 (2^30 on a target
/// without 64-bit atomics; a panic rather than a reuse), so users may pack
/// it with a tag bit or two ([`MyCpu::machine_id`]).
///
/// [`MyCpu::machine_id`]: crate::MyCpu::machine_id
fn next_machine_id() -> u64 {
    let id = MACHINE_IDS.0.fetch_add(1, Ordering::Relaxed);
    #[allow(clippy::useless_conversion)] // u64 -> u64 with 64-bit atomics
    let id = u64::from(id);
    assert!(id < 1 << (ID_BITS - 2), "lwkt: machine ids exhausted");
    id
}

impl MachineState {
    /// The number of IPI rings a machine of `ncpus` CPUs needs (`ncpus²`).
    pub const fn rings_needed(ncpus: usize) -> usize {
        ncpus * ncpus
    }

    /// Describe a machine. Nothing runs until the backend wires it with
    /// [`bind`](MachineState::bind) and enters each CPU's idle loop.
    ///
    /// # Panics
    /// If `cpus` is empty or longer than [`MAX_CPUS`], if CPU `i` does not
    /// have id `i`, or if `rings` does not hold [`rings_needed`] rings.
    ///
    /// # Safety
    /// The machine keeps raw pointers to `cpus` and `rings` (so that a
    /// kernel can place them in static or per-CPU memory without a
    /// lifetime on every handle): both stay at their addresses and alive for
    /// as long as the returned `MachineState` is used (every method of it reads
    /// them), and for [`bind`](MachineState::bind)'s contract after that.
    ///
    /// ```
    /// use lwkt_core::{Cpu, CpuId, IpiRing, MachineState};
    /// let cpus: Vec<Cpu> = (0..2).map(|i| Cpu::new(CpuId::new(i))).collect();
    /// let rings: Vec<IpiRing> = (0..MachineState::rings_needed(2)).map(|_| IpiRing::new()).collect();
    /// // SAFETY: `cpus` and `rings` outlive `m` and do not move.
    /// let m = unsafe { MachineState::new(&lwkt_arch_hosted::HOSTED, &cpus, &rings) };
    /// assert_eq!(m.ncpus(), 2);
    /// ```
    ///
    /// Without `unsafe` it does not compile (issue 15, hole 3: a safe `new`
    /// over blocks dropped right after read freed memory):
    ///
    /// ```compile_fail,E0133
    /// use lwkt_core::{Cpu, CpuId, IpiRing, MachineState};
    /// let cpus = vec![Cpu::new(CpuId::new(0))];
    /// let rings = vec![IpiRing::new()];
    /// let m = MachineState::new(&lwkt_arch_hosted::HOSTED, &cpus, &rings);
    /// ```
    ///
    /// [`rings_needed`]: MachineState::rings_needed
    pub unsafe fn new(arch: &'static dyn Arch, cpus: &[Cpu], rings: &[IpiRing]) -> MachineState {
        assert!(!cpus.is_empty(), "lwkt: a machine needs at least one CPU");
        assert!(
            cpus.len() <= MAX_CPUS,
            "lwkt: at most {MAX_CPUS} CPUs per machine"
        );
        assert_eq!(
            rings.len(),
            Self::rings_needed(cpus.len()),
            "lwkt: a machine needs ncpus^2 IPI rings"
        );
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(
                c.id.index(),
                i,
                "lwkt: CPU blocks must be numbered 0..n in order"
            );
        }
        MachineState {
            arch,
            cpus: cpus.as_ptr(),
            ncpus: cpus.len(),
            rings: rings.as_ptr(),
            id: next_machine_id(),
            clock_seen: AtomicBool::new(false),
            sleep_masks: core::array::from_fn(|_| AtomicCpuMask::new()),
        }
    }

    /// Whether the backend has a clock now (see `clock_seen`).
    #[inline]
    pub(crate) fn has_clock(&self) -> bool {
        if self.clock_seen.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.arch.clock().is_some();
        if now {
            self.clock_seen.store(true, Ordering::Relaxed);
        }
        now
    }

    /// Point every CPU at this machine.
    ///
    /// # Safety
    /// `self`, the CPU blocks and the rings given to [`new`](MachineState::new)
    /// stay at their addresses and alive until every CPU has returned from
    /// [`Cpu::idle_loop`] and no thread of this machine runs, and the CPU
    /// blocks are not used after the machine is gone (a bound block points
    /// at it); `bind` is called once, before any CPU starts.
    pub unsafe fn bind(&self) {
        for c in self.cpu_slice() {
            c.machine.set(self);
            c.machine_id.set(self.id);
            // Fast paths off until this machine's clock is seen (a block
            // bound before may hold another machine's word).
            c.callout_pending.set(crate::callout::NO_HOME);
            c.arch.set(self.arch);
            c.idle
                .gd
                .store(c as *const Cpu as *mut Cpu, Ordering::Relaxed);
        }
    }

    /// Number of CPUs.
    pub fn ncpus(&self) -> usize {
        self.ncpus
    }

    pub(crate) fn cpu_slice(&self) -> &[Cpu] {
        // SAFETY: `cpus..cpus+ncpus` are live CPU blocks (`bind` contract).
        unsafe { core::slice::from_raw_parts(self.cpus, self.ncpus) }
    }

    /// CPU `c`, if it exists.
    pub fn cpu(&self, c: CpuId) -> Option<&Cpu> {
        self.cpu_slice().get(c.index())
    }

    /// Every CPU of the machine but `cpu`, as a mask: the sources of `cpu`'s
    /// rings.
    pub(crate) fn sources_of(&self, cpu: CpuId) -> CpuMask {
        CpuMask::all(self.ncpus).without(cpu)
    }

    /// The ring carrying messages from `src` to `dst`.
    #[inline(always)]
    pub(crate) fn ring(&self, src: CpuId, dst: CpuId) -> &IpiRing {
        debug_assert!(src.index() < self.ncpus && dst.index() < self.ncpus);
        // SAFETY: `rings` holds ncpus² live rings; the index is in range.
        unsafe { &*self.rings.add(dst.index() * self.ncpus + src.index()) }
    }
}

/// One CPU's block: its run queue, idle thread, request flags, IPI
/// interlocks and counters.
///
/// Fields are touched by their CPU inside a critical section, except the
/// atomics, which other CPUs use to signal it.
pub struct Cpu {
    id: CpuId,
    pub(crate) machine: Cell<*const MachineState>,
    /// The machine's id, copied at `bind` (0 before): one load for the
    /// checks that compare machines.
    pub(crate) machine_id: Cell<u64>,
    /// The state word of a callout pending on this CPU, its callback not
    /// running (`callout::pending_word`), set by the callouts' general
    /// path once it has seen the machine's clock; until then
    /// `callout::NO_HOME`, which no state word is: the fast paths stay off.
    pub(crate) callout_pending: Cell<crate::callout::State>,
    /// The machine's backend, copied at `bind` (a backend that runs
    /// nothing before): what a callout claimed here records, one load
    /// without the look at whether the block is bound.
    pub(crate) arch: Cell<&'static dyn Arch>,
    /// The running thread (`gd_curthread`); read by the interrupt path.
    pub(crate) curthread: AtomicPtr<Thread>,
    /// An exiting or migrating thread that just switched away, for
    /// `finish_switch` to complete (null after an ordinary switch).
    pub(crate) prev: Cell<*mut Thread>,
    pub(crate) runq: UnsafeCell<RunQueue>,
    pub(crate) sleepq: UnsafeCell<SleepQueues>,
    /// Armed timers (`gd_systimerq`), owner-only.
    pub(crate) timers: crate::wheel::Wheel,
    /// The deadline given to the backend's one-shot timer last
    /// (`u64::MAX`: none), owner-only: `timer::insert` programs it again
    /// only for an earlier one.
    pub(crate) timer_programmed: Cell<u64>,
    /// The time-slice timer (`lwkt_schedulerclock`), in `timers` while
    /// the CPU is busy.
    pub(crate) slice: crate::slice::SliceTimer,
    /// Device interrupt lines and their threads.
    pub(crate) intr: crate::intr::IntrTable,
    pub(crate) idle: Thread,
    /// Deferred work for the next `crit_exit` (`gd_reqflags`).
    pub(crate) reqflags: AtomicU32,
    /// Depth of interrupt/IPI processing (`gd_intr_nesting_level`).
    pub(crate) intr_nesting: Cell<u32>,
    /// Sources with queued entries for this CPU (`gd_ipimask`).
    pub(crate) ipimask: CachePadded<AtomicCpuMask>,
    /// Whether senders must kick (`gd_npoll`): `ipiq::npoll::CLEAR`,
    /// `KICKED` (a kick is on its way) or `WATCHING` (this CPU reads the
    /// rings itself).
    pub(crate) npoll: CachePadded<AtomicU32>,
    pub(crate) processing_ipiq: Cell<u32>,
    /// Inside [`Cpu::ipi_interrupt_async_safe`]: whatever drains the rings
    /// meanwhile (a send waiting on a full ring) runs only lwkt's own
    /// IPI functions.
    pub(crate) async_entry: Cell<bool>,
    /// This CPU watches its rings (`npoll` is `WATCHING`), so senders
    /// neither mark nor kick and draining must not clear it; its idle loop,
    /// `Cur::watch_until` and every final `crit_exit` look at every ring
    /// (owner only).
    pub(crate) watching: Cell<bool>,
    /// While watching: when a look last found work, or the watch began (in
    /// `Arch::cycles`); the watch ends after `idle_poll_cycles` without.
    pub(crate) watch_seen: Cell<u64>,
    /// While watching: a look found work since `watch_seen` was last set
    /// (the next look that finds none sets it, rather than read the clock
    /// on the way to the work: `splz_watched`).
    pub(crate) watch_found: Cell<bool>,
    /// While watching: final `crit_exit`s so far (threads look at the
    /// rings at one in `WATCH_LOOK_EVERY`).
    pub(crate) watch_exits: Cell<u32>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) live_threads: AtomicUsize,
    pub(crate) stats: CpuStats,
    /// Words for the backend's own per-CPU state. Pointers, so that a
    /// word that holds one keeps its provenance (`attach`'s block:
    /// `set_arch_word_ptr`); a number is stored without one.
    arch_words: [AtomicPtr<()>; 4],
}

// SAFETY: the `Cell`/`UnsafeCell` fields are touched only by code running on
// this CPU inside a critical section (the scheduler's invariant, kept by the
// `Cur`/`MyCpu` API, which can only be had on this CPU); everything other CPUs
// touch is atomic.
unsafe impl Sync for Cpu {}
// SAFETY: as above; a backend moves CPU blocks only before they start.
unsafe impl Send for Cpu {}

impl fmt::Debug for Cpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cpu")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The backend that made `Cpu::new`'s idle thread; replaced at `bind`.
pub(crate) struct NoArch;
// SAFETY: never used to run anything: `Cpu::new` needs an `Arch` for its idle
// block, and every use goes through the machine's real backend after `bind`.
unsafe impl Arch for NoArch {
    fn current_cpu(&self) -> Option<core::ptr::NonNull<Cpu>> {
        None
    }
    unsafe fn init_context(
        &self,
        _: &crate::Context,
        _: crate::Stack,
        _: crate::EntryFn,
        _: usize,
    ) {
    }
    unsafe fn switch(&self, _: &crate::Context, _: &crate::Context) {
        unreachable!("lwkt: switch before MachineState::bind")
    }
    fn alloc_stack(&self, _: usize) -> Option<crate::Stack> {
        None
    }
    unsafe fn free_stack(&self, _: crate::Stack) {}
    unsafe fn kick(&self, _: &Cpu) {}
    unsafe fn idle_wait(&self, _: &Cpu) {}
    fn cycles(&self) -> u64 {
        0
    }
}
pub(crate) static NO_ARCH: NoArch = NoArch;

impl Cpu {
    /// A fresh CPU block for CPU `id`.
    pub fn new(id: CpuId) -> Cpu {
        assert!(
            id.index() < MAX_CPUS,
            "lwkt: CPU {} is beyond MAX_CPUS ({MAX_CPUS})",
            id.get()
        );
        let idle = Thread::new(&NO_ARCH, 0, ptr::null(), id, Priority(0), None, "idle");
        idle.flags.set(tdf::IDLE);
        Cpu {
            id,
            machine: Cell::new(ptr::null()),
            machine_id: Cell::new(0),
            callout_pending: Cell::new(crate::callout::NO_HOME),
            arch: Cell::new(&NO_ARCH),
            curthread: AtomicPtr::new(ptr::null_mut()),
            prev: Cell::new(ptr::null_mut()),
            runq: UnsafeCell::new(RunQueue::new()),
            sleepq: UnsafeCell::new(SleepQueues::new()),
            timers: crate::wheel::Wheel::new(),
            timer_programmed: Cell::new(u64::MAX),
            slice: crate::slice::SliceTimer::new(),
            intr: crate::intr::IntrTable::new(),
            idle,
            reqflags: AtomicU32::new(0),
            intr_nesting: Cell::new(0),
            ipimask: CachePadded::new(AtomicCpuMask::new()),
            npoll: CachePadded::new(AtomicU32::new(0)),
            processing_ipiq: Cell::new(0),
            async_entry: Cell::new(false),
            watching: Cell::new(false),
            watch_seen: Cell::new(0),
            watch_found: Cell::new(false),
            watch_exits: Cell::new(0),
            shutdown: AtomicBool::new(false),
            live_threads: AtomicUsize::new(0),
            stats: CpuStats::default(),
            arch_words: core::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }

    /// This CPU's number (below [`MAX_CPUS`], which the compiler is told,
    /// so per-CPU arrays indexed by it need no bounds check).
    #[inline]
    pub fn id(&self) -> CpuId {
        // SAFETY: `Cpu::new` refused ids at or above `MAX_CPUS`, and `id` is
        // never written after.
        unsafe { core::hint::assert_unchecked(self.id.index() < MAX_CPUS) };
        self.id
    }

    /// The machine this CPU belongs to.
    #[inline(always)]
    pub(crate) fn machine(&self) -> &MachineState {
        let m = self.machine.get();
        assert!(!m.is_null(), "lwkt: CPU used before MachineState::bind");
        // SAFETY: set by `bind`, whose contract keeps the machine alive.
        unsafe { &*m }
    }

    /// Backend word `i` (0..4): per-CPU state the backend keeps here
    /// (the hosted backend: its vCPU record; x86-64: the APIC id).
    ///
    /// # Panics
    /// If `i` is 4 or more.
    pub fn arch_word(&self, i: usize) -> usize {
        self.arch_word_ptr(i).addr()
    }

    /// Backend word `i` as the pointer it was stored as (with its
    /// provenance, if [`set_arch_word_ptr`](Cpu::set_arch_word_ptr)
    /// stored it).
    pub(crate) fn arch_word_ptr(&self, i: usize) -> *mut () {
        self.arch_words[i].load(Ordering::Acquire)
    }

    /// Store backend word `i` (0..4).
    ///
    /// # Safety
    /// Only the backend that builds this CPU's machine stores here, before
    /// the machine starts: [`Arch::kick`] and [`Arch::idle_wait`] trust
    /// these words (a pointer, an APIC id) without checking them.
    ///
    /// Safe code can neither store a word nor kick through one (issue 15,
    /// hole 4: a stored `0x4141_4141_4140` sent the hosted kick through a
    /// wild pointer):
    ///
    /// ```compile_fail,E0133
    /// use lwkt_core::{Arch, Cpu, CpuId};
    /// let cpu = Cpu::new(CpuId::new(0));
    /// cpu.set_arch_word(0, 0x4141_4141_4140);
    /// ```
    ///
    /// ```compile_fail,E0133
    /// use lwkt_core::{Arch, Cpu, CpuId};
    /// let cpu = Cpu::new(CpuId::new(0));
    /// lwkt_arch_hosted::HOSTED.kick(&cpu);
    /// ```
    ///
    /// # Panics
    /// If `i` is 4 or more.
    pub unsafe fn set_arch_word(&self, i: usize, v: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.set_arch_word_ptr(i, ptr::without_provenance_mut(v)) }
    }

    /// Store backend word `i` as a pointer, keeping its provenance (read
    /// back with [`arch_word_ptr`](Cpu::arch_word_ptr)).
    ///
    /// # Safety
    /// As for [`set_arch_word`](Cpu::set_arch_word).
    pub(crate) unsafe fn set_arch_word_ptr(&self, i: usize, p: *mut ()) {
        self.arch_words[i].store(p, Ordering::Release);
    }

    /// A copy of this CPU's counters (safe to read from anywhere).
    pub fn stats(&self) -> CpuStatsSnapshot {
        let s = &self.stats;
        CpuStatsSnapshot {
            switches: s.switches.get(),
            ipis_sent: s.ipis_sent.get(),
            ipis_received: s.ipis_received.get(),
            kicks_sent: s.kicks_sent.get(),
            kicks_avoided: s.kicks_avoided.get(),
            kicks_answered: s.kicks_answered.get(),
            ring_full_waits: s.ring_full_waits.get(),
            threads_created: s.threads_created.get(),
            threads_exited: s.threads_exited.get(),
            interrupts: s.interrupts.get(),
            stray_interrupts: s.stray_interrupts.get(),
            preemptions: s.preemptions.get(),
            slices: s.slices.get(),
            threads_live: self.live_threads.load(Ordering::Relaxed) as u64,
        }
    }

    /// True when an interrupt-level event waits for this CPU: queued IPI
    /// messages, a deferred request, or shutdown. A backend's
    /// [`Arch::idle_wait`] must not sleep while this holds.
    pub fn has_pending(&self) -> bool {
        !self.ipimask.is_empty(Ordering::SeqCst)
            || self.reqflags.load(Ordering::SeqCst) & crate::crit::rqf::IDLECHECK != 0
            || self.shutdown.load(Ordering::SeqCst)
    }

    /// Ask this CPU to look at its IPI rings at its next critical-section
    /// exit or switch, without interrupting it: for backends whose real
    /// interrupt is expensive (the hosted backend's signal), which may try
    /// this first and interrupt only if [`kick_outstanding`] stays true.
    ///
    /// [`kick_outstanding`]: Cpu::kick_outstanding
    pub fn post_ipi_check(&self) {
        self.reqflags
            .fetch_or(crate::crit::rqf::IPIQ, Ordering::SeqCst);
    }

    /// The timer interrupt: this CPU's one-shot timer (programmed through
    /// [`Arch::set_timer`](crate::Arch::set_timer)) has passed its
    /// deadline. Records it for the CPU, which runs its expired timers at
    /// its next critical-section exit, switch or idle-loop turn; the
    /// backend then [kicks](crate::Arch::kick) the CPU (or calls it from
    /// the CPU's own interrupt handler) so that it looks. Safe from any
    /// context and any thread: it only sets a flag (DragonFly: the
    /// interrupt sets `RQF_TIMER`, `splz` runs `systimer_intr`).
    ///
    /// ```
    /// // A backend's timer interrupt handler, on the CPU whose timer fired.
    /// fn timer_interrupt(cpu: &lwkt_core::Cpu) {
    ///     cpu.post_timer();
    ///     // ... then make the CPU look (an idle one is woken up).
    /// }
    /// ```
    pub fn post_timer(&self) {
        self.reqflags
            .fetch_or(crate::crit::rqf::TIMER, Ordering::SeqCst);
    }

    /// Whether a timer interrupt [posted](Cpu::post_timer) to this CPU has
    /// not run yet: a snapshot, for a backend that makes the CPU look
    /// cheaply first and interrupts it only when it does not (the hosted
    /// backend's watchdog).
    ///
    /// ```
    /// // A backend's periodic scan, some time after it posted a timer.
    /// fn scan(cpu: &lwkt_core::Cpu, interrupt: impl Fn(&lwkt_core::Cpu)) {
    ///     if cpu.timer_pending() {
    ///         interrupt(cpu); // it did not look: interrupt it for real
    ///     }
    /// }
    /// ```
    pub fn timer_pending(&self) -> bool {
        self.reqflags.load(Ordering::SeqCst) & crate::crit::rqf::TIMER != 0
    }

    /// This CPU's scheduling and IPI state, for a hang report: what a
    /// kernel debugger would print for each CPU. Meant for this CPU's NMI
    /// (or other non-maskable) handler, which may have interrupted anything,
    /// including a run-queue update: the snapshot is racy by nature, and
    /// reads the run queue's count without its owner's critical section.
    ///
    /// From a thread, [`MyCpu::snapshot`](crate::MyCpu::snapshot) is the
    /// safe form:
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let s = cur.my_cpu().snapshot();
    ///     assert_eq!(s.thread, cur.name());
    ///     assert_eq!(s.cpu.index(), 0);
    ///     println!("{s}");
    /// });
    /// ```
    ///
    /// # Safety
    /// Call it on this CPU (the owner-only fields it reads may not be
    /// written meanwhile by another one).
    pub unsafe fn snapshot(&self) -> CpuSnapshot {
        let td = self.curthread.load(Ordering::Relaxed);
        // SAFETY: a non-null `curthread` is the live running thread.
        let (thread, critcount) = match unsafe { td.as_ref() } {
            Some(t) => (t.name, t.critcount.load(Ordering::Relaxed)),
            None => ("(none)", 0),
        };
        let ring_backlog = self
            .sources_with_entries()
            .fold(CpuMask::EMPTY, CpuMask::with);
        CpuSnapshot {
            cpu: self.id,
            thread,
            critcount,
            // SAFETY: the block's run queue is live; no reference is made.
            runnable: unsafe { RunQueue::len_racy(self.runq.get()) },
            reqflags: self.reqflags.load(Ordering::SeqCst),
            npoll: self.npoll.load(Ordering::SeqCst),
            ipimask: self.ipimask.load(Ordering::SeqCst),
            ring_backlog,
            watching: self.watching.get(),
            intr_nesting: self.intr_nesting.get(),
            stats: self.stats(),
        }
    }

    /// Whether this CPU has been kicked and has not yet begun polling its
    /// rings since (DragonFly `gd_npoll`).
    pub fn kick_outstanding(&self) -> bool {
        self.npoll.load(Ordering::SeqCst) == crate::ipiq::npoll::KICKED
    }

    /// Whether this CPU watches its rings (so senders do not kick it) and
    /// one of them holds entries: a snapshot, for backends. A backend whose
    /// [`Arch::idle_poll_cycles`](crate::Arch::idle_poll_cycles) is not 0
    /// must interrupt a CPU that stays so while it runs none of them (a
    /// thread spinning outside critical sections, which is where a watching
    /// CPU looks); the hosted backend's watchdog compares
    /// [`CpuStatsSnapshot::ipis_received`] between two looks.
    pub fn watch_backlog(&self) -> bool {
        self.npoll.load(Ordering::SeqCst) == crate::ipiq::npoll::WATCHING && self.rings_hold_work()
    }

    /// Whether anything waits for this CPU, its rings included: the look
    /// of a watching CPU (senders then mark nothing).
    pub(crate) fn watch_sees_work(&self) -> bool {
        self.has_pending() || self.rings_hold_work()
    }

    /// Whether any ring into this CPU holds entries (a snapshot).
    fn rings_hold_work(&self) -> bool {
        self.sources_with_entries().next().is_some()
    }

    /// The CPUs whose ring into this one holds entries (a snapshot), in
    /// index order.
    fn sources_with_entries(&self) -> impl Iterator<Item = CpuId> + '_ {
        let m = self.machine();
        m.sources_of(self.id)
            .iter()
            .filter(move |&src| !m.ring(src, self.id).is_empty())
    }

    /// Whether messages from CPU `src` wait in this CPU's rings, not yet
    /// taken up by a poll (its bit in `ipimask`, which a poll clears before
    /// draining that ring).
    pub fn ipi_pending_from(&self, src: CpuId) -> bool {
        self.ipimask.contains(src, Ordering::SeqCst)
    }

    /// Ask this CPU's idle loop to return once it has nothing left to run.
    /// Threads still blocked then are reported by the backend as never exited.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        // SAFETY: `machine()` found this block bound, and `bind`'s contract
        // keeps the machine (and the backend's state in this block) alive
        // while any reference to a bound block can be had.
        unsafe { self.machine().arch.kick(self) };
    }

    /// Threads that live on this CPU now (created or migrated here, not exited).
    pub fn live_threads(&self) -> usize {
        self.live_threads.load(Ordering::Relaxed)
    }

    /// The current thread.
    #[inline(always)]
    pub(crate) fn cur(&self) -> &Thread {
        // SAFETY: `curthread` is set before the CPU runs anything and always
        // names a live thread of this CPU (the running one).
        unsafe { &*self.curthread.load(Ordering::Relaxed) }
    }

    /// Owner, in a critical section: the run queue.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn runq(&self) -> &mut RunQueue {
        // SAFETY: the caller runs on this CPU inside a critical section, so no
        // other code (thread or interrupt) touches the queue meanwhile, and it
        // does not hold another reference across a call that could.
        unsafe { &mut *self.runq.get() }
    }

    /// Owner, in a critical section: the sleep queues.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub(crate) unsafe fn sleepq(&self) -> &mut SleepQueues {
        // SAFETY: as for `runq`.
        unsafe { &mut *self.sleepq.get() }
    }
}

impl Cpu {
    /// The running thread's stack and name (for a backend's fault handler:
    /// "which thread overflowed its stack"). `None` for the idle thread.
    ///
    /// # Safety
    /// Call it on this CPU (a fault handler, an NMI handler): from another
    /// CPU, the running thread may exit and its block (which lives on its
    /// stack) be freed while this reads it.
    pub unsafe fn current_stack(&self) -> Option<(crate::Stack, &'static str)> {
        let t = self.curthread.load(Ordering::Relaxed);
        if t.is_null() {
            return None;
        }
        // SAFETY: on this CPU (caller), `curthread` names the running
        // thread, which cannot exit while this code interrupts it; `stack`
        // and `name` never change after creation.
        let t = unsafe { &*t };
        t.stack.map(|s| (s, t.name))
    }
}
