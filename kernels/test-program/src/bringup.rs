//! The architecture-neutral steps both test kernels take to bring their
//! CPUs up: the lwkt machine built and bound, the thread stacks' region
//! taken from the heap, and how long the boot CPU waits for the others.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lwkt_core::{Arch, Cpu, CpuId, IpiRing, MachineState};

/// A thread stack's slot in the stack pool: a 64 KiB stack plus the
/// pool's canary room, page-rounded.
pub const STACK_SLOT: usize = (64 + 4) << 10;

/// The stack pool's region for `ncpus` CPUs: 8 MiB, and 1 MiB (15
/// stacks) per CPU for its idle thread and the test threads placed on it.
pub const fn stack_region_len(ncpus: usize) -> usize {
    (8 + ncpus) << 20
}

/// How long the boot CPU waits for the other CPUs to come online (and to
/// leave their idle loops), in ns: 5 s per 16 CPUs (single-threaded TCG
/// starts 256 vCPUs one after another; multi-threaded TCG starts 255
/// threads on a 2-core host).
pub const fn online_timeout_ns(ncpus: usize) -> u64 {
    let shares = ncpus.div_ceil(16);
    5_000_000_000 * if shares == 0 { 1 } else { shares as u64 }
}

/// The lwkt machine of `ncpus` CPUs on `arch`: its CPU blocks and its
/// ncpus² IPI rings, leaked (alive and in place for ever), and bound.
///
/// # Safety
/// No CPU runs lwkt yet; `arch` is the backend every CPU of the machine
/// will attach to ([`MachineState::new`]'s contract).
pub unsafe fn build_machine(
    arch: &'static dyn Arch,
    ncpus: usize,
) -> (&'static MachineState, &'static [Cpu]) {
    let cpus: &'static [Cpu] = Box::leak(
        (0..ncpus)
            .map(|i| Cpu::new(CpuId::new(i as u32)))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let rings: &'static [IpiRing] = Box::leak(
        (0..MachineState::rings_needed(ncpus))
            .map(|_| IpiRing::new())
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    // SAFETY: `cpus` and `rings` are leaked: alive and in place for ever;
    // the backend is the caller's.
    let machine: &'static MachineState =
        Box::leak(Box::new(unsafe { MachineState::new(arch, cpus, rings) }));
    // SAFETY: the machine, CPU blocks and rings are leaked ('static); no
    // CPU runs lwkt yet (caller).
    unsafe { machine.bind() };
    (machine, cpus)
}

/// The stack pool's region for `ncpus` CPUs ([`stack_region_len`]),
/// page-aligned, from the heap (never freed): its start and length, or
/// why there is none.
pub fn stack_region(
    ncpus: usize,
    heap_used: impl Fn() -> usize,
) -> Result<(*mut u8, usize), String> {
    let len = stack_region_len(ncpus);
    let layout = core::alloc::Layout::from_size_align(len, 4096)
        .map_err(|_| alloc::format!("a {len}-byte stack region"))?;
    // SAFETY: a non-zero size.
    let p = unsafe { alloc::alloc::alloc(layout) };
    if p.is_null() {
        return Err(alloc::format!(
            "no memory for {} MiB of thread stacks (heap used {} KiB): give the guest more (-m)",
            len >> 20,
            heap_used() / 1024
        ));
    }
    Ok((p, len))
}

/// Where the boot CPU and the others meet during bring-up and shutdown:
/// the others count themselves online, wait for the boot CPU's go, and
/// count themselves out of their idle loops; the boot CPU waits for each
/// count, for a bounded time. Every wait spins with the kernel's relax
/// hint, which must let QEMU's single-threaded TCG run the other vCPUs
/// (x86-64's `pause`; aarch64's `yield`: with `isb`, each spinning vCPU
/// held the TCG thread for its whole slice, and 32 CPUs took 50 s to come
/// online).
#[derive(Debug)]
pub struct Bringup {
    online: AtomicUsize,
    go: AtomicBool,
    done: AtomicUsize,
    dumped: AtomicUsize,
}

impl Bringup {
    /// Nobody online, no go, nobody done.
    pub const fn new() -> Bringup {
        Bringup {
            online: AtomicUsize::new(0),
            go: AtomicBool::new(false),
            done: AtomicUsize::new(0),
            dumped: AtomicUsize::new(0),
        }
    }

    /// A secondary CPU attached and is online.
    pub fn online(&self) {
        self.online.fetch_add(1, Ordering::Release);
    }

    /// CPUs online so far, the boot CPU included.
    pub fn cpus_online(&self) -> usize {
        self.online.load(Ordering::Acquire) + 1
    }

    /// The boot CPU: wait until all `ncpus` CPUs are online, at most
    /// [`online_timeout_ns`]; `elapsed_ns` measures from the start of
    /// bring-up. On a timeout, the CPUs that came online.
    pub fn wait_online(
        &self,
        ncpus: usize,
        elapsed_ns: impl Fn() -> u64,
        relax: impl Fn(),
    ) -> Result<(), usize> {
        wait(&self.online, ncpus - 1, ncpus, elapsed_ns, relax).map_err(|n| n + 1)
    }

    /// The boot CPU: every CPU is online, the others may enter their idle
    /// loops.
    pub fn go(&self) {
        self.go.store(true, Ordering::Release);
    }

    /// A secondary CPU: wait for the boot CPU's [`go`](Bringup::go).
    pub fn wait_go(&self, relax: impl Fn()) {
        while !self.go.load(Ordering::Acquire) {
            relax();
        }
    }

    /// A secondary CPU left its idle loop (after the machine's shutdown).
    pub fn left_idle_loop(&self) {
        self.done.fetch_add(1, Ordering::Release);
    }

    /// The boot CPU, out of its own idle loop: wait until the other
    /// `ncpus - 1` CPUs left theirs, at most [`online_timeout_ns`]
    /// (`elapsed_ns` measures from now). On a timeout, how many did.
    pub fn wait_done(
        &self,
        ncpus: usize,
        elapsed_ns: impl Fn() -> u64,
        relax: impl Fn(),
    ) -> Result<(), usize> {
        wait(&self.done, ncpus - 1, ncpus, elapsed_ns, relax)
    }
}

impl Bringup {
    /// A CPU printed its line of a hang dump ([`HangLine`]): whether it
    /// was the last of the CPUs online, which then ends the run.
    pub fn dumped(&self) -> bool {
        self.dumped.fetch_add(1, Ordering::AcqRel) + 1 >= self.cpus_online()
    }
}

/// One CPU's line of a hang dump (the xtask asks every CPU for one when a
/// run times out: an NMI on x86-64, an SGI on aarch64): where the CPU was
/// (`HANG rip=0x...` or `HANG pc=0x...`) and its LWKT state.
#[derive(Debug)]
pub struct HangLine {
    /// The name of the interrupted program counter (`rip`, `pc`).
    pub reg: &'static str,
    /// Its value.
    pub pc: u64,
    /// The CPU's index, if its block was found.
    pub cpu: Option<usize>,
    /// Its LWKT state, if it is attached (`Cpu::snapshot` on the CPU).
    pub state: Option<lwkt_core::CpuSnapshot>,
}

impl HangLine {
    /// The line of the CPU this runs on: `cpu` is its index (if its block
    /// was found), `attached` the `Cpu` its block is attached to (if any),
    /// whose state is read here.
    ///
    /// # Safety
    /// As for [`Cpu::snapshot`](lwkt_core::Cpu::snapshot): on the CPU
    /// `attached` runs on (from its own hang interrupt).
    pub unsafe fn here(
        reg: &'static str,
        pc: u64,
        cpu: Option<usize>,
        attached: Option<&Cpu>,
    ) -> HangLine {
        HangLine {
            reg,
            pc,
            cpu,
            // SAFETY: caller: on this `Cpu`'s own CPU.
            state: attached.map(|c| unsafe { c.snapshot() }),
        }
    }
}

impl core::fmt::Display for HangLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "HANG {}={:#x} ", self.reg, self.pc)?;
        match &self.state {
            Some(s) => writeln!(f, "{s}"),
            None => writeln!(f, "cpu {:?}: not attached", self.cpu),
        }
    }
}

impl Default for Bringup {
    fn default() -> Self {
        Bringup::new()
    }
}

/// Wait until `count` reaches `want`, at most [`online_timeout_ns`] of
/// `ncpus`; on a timeout, the count.
fn wait(
    count: &AtomicUsize,
    want: usize,
    ncpus: usize,
    elapsed_ns: impl Fn() -> u64,
    relax: impl Fn(),
) -> Result<(), usize> {
    loop {
        let n = count.load(Ordering::Acquire);
        if n >= want {
            return Ok(());
        }
        if elapsed_ns() > online_timeout_ns(ncpus) {
            return Err(n);
        }
        relax();
    }
}
