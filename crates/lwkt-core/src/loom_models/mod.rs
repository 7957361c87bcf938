//! Loom models that run lwkt-core's scheduler-side protocols on a real
//! two-CPU [`MachineState`] (run with `RUSTFLAGS="--cfg loom"`).
//!
//! Each loom thread plays one CPU: it runs the crate's own code (sleep
//! queues, `MyCpu::wakeup`, `ipiq::send`, the doorbell, the rings,
//! `Cpu::ipi_interrupt`, `cpusync`) on that CPU's block, through the
//! `sync` shim's loom atomics. The backend is [`LoomArch`]: a kick sets a
//! word of the target's block, which the target's model takes as its
//! interrupt ([`TwoCpus::interrupt`]), through either interrupt entry
//! ([`Entry`]); nothing switches stacks, so a thread "switching away" is
//! modelled by making the CPU's idle thread current. Every model runs once
//! per entry ([`model`]).

mod callout;
mod cpusync;
mod intr;
mod sleep;
mod timer;

use core::ptr::{self, NonNull};
use std::boxed::Box;
use std::sync::Arc;

use crate::arch::{Arch, Context, EntryFn, Stack};
use crate::cpu::{Cpu, CpuId, MachineState};
use crate::crit;
use crate::crit::crit_exit_td;
use crate::ipiq::IpiRing;
use crate::sync::Ordering;
use crate::thread::{Priority, Thread};

/// The backend word a kick sets (the model's interrupt line).
const KICK: usize = 0;

/// The models' backend: kicks are flags, waits yield to loom.
struct LoomArch;

// SAFETY: `current_cpu` answers `None` (the models never ask); no context is
// ever created or switched (those methods panic); `kick` only stores a word
// of a live CPU block.
unsafe impl Arch for LoomArch {
    fn current_cpu(&self) -> Option<NonNull<Cpu>> {
        None
    }
    unsafe fn init_context(&self, _: &Context, _: Stack, _: EntryFn, _: usize) {
        unreachable!("lwkt loom model: no thread is started")
    }
    unsafe fn switch(&self, _: &Context, _: &Context) {
        unreachable!("lwkt loom model: nothing switches stacks")
    }
    fn alloc_stack(&self, _: usize) -> Option<Stack> {
        None
    }
    unsafe fn free_stack(&self, _: Stack) {}
    unsafe fn kick(&self, target: &Cpu) {
        // SAFETY: this is the machine's backend, and the word is its own.
        unsafe { target.set_arch_word(KICK, 1) };
    }
    unsafe fn idle_wait(&self, _: &Cpu) {
        unreachable!("lwkt loom model: no idle loop runs")
    }
    fn cycles(&self) -> u64 {
        0
    }
    fn pause(&self, _: u32) {
        loom::thread::yield_now();
    }
    fn clock(&self) -> Option<u64> {
        Some(NOW.load(Ordering::Acquire))
    }
}

loom::lazy_static! {
    /// The models' clock (nanoseconds), advanced by the model that plays
    /// the timer hardware.
    pub(super) static ref NOW: crate::sync::AtomicU64 = crate::sync::AtomicU64::new(0);
}

static LOOM_ARCH: LoomArch = LoomArch;

/// How a CPU takes its interrupt.
#[derive(Debug, Clone, Copy)]
pub(super) enum Entry {
    /// `Cpu::ipi_interrupt`: every queued message runs (bare metal).
    Direct,
    /// `Cpu::ipi_interrupt_async_safe`, then the interrupted thread's next
    /// final `crit_exit`, which runs what the entry left (the hosted
    /// backend's signal handler: a user's or `cpusync`'s function waits).
    AsyncSafe,
}

/// Run `f` as a loom model once per interrupt entry.
pub(super) fn model(f: impl Fn(Entry) + Sync + Send + 'static) {
    let f = Arc::new(f);
    for entry in [Entry::Direct, Entry::AsyncSafe] {
        let f = f.clone();
        loom::model(move || f(entry));
    }
}

/// A bound two-CPU machine with one ordinary thread per CPU, current and
/// queued, in no critical section.
pub(super) struct TwoCpus {
    entry: Entry,
    // Field order is drop order: the machine, then what it points into.
    _machine: Box<MachineState>,
    threads: Box<[Box<Thread>]>,
    cpus: Box<[Cpu]>,
    _rings: Box<[IpiRing]>,
}

// SAFETY: each CPU's owner-only state (its cells, its thread) is used only
// by the loom thread that plays that CPU, or by the model's main thread
// after joining it; what CPUs share is atomic.
unsafe impl Send for TwoCpus {}
// SAFETY: as above.
unsafe impl Sync for TwoCpus {}

impl TwoCpus {
    pub(super) fn new(entry: Entry) -> Arc<TwoCpus> {
        let cpus: Box<[Cpu]> = (0..2).map(|i| Cpu::new(CpuId::new(i))).collect();
        let rings: Box<[IpiRing]> = (0..MachineState::rings_needed(2))
            .map(|_| IpiRing::new())
            .collect();
        // SAFETY: `cpus` and `rings` are boxed (they do not move) and are
        // dropped after the machine (field order).
        let machine = Box::new(unsafe { MachineState::new(&LOOM_ARCH, &cpus, &rings) });
        // SAFETY: the machine is boxed and outlives every use of the CPUs
        // (they are dropped together, after every model thread joined).
        unsafe { machine.bind() };
        let threads: Box<[Box<Thread>]> = cpus
            .iter()
            .map(|gd| {
                gd.idle.critcount.store(0, Ordering::Relaxed);
                let td = Box::new(Thread::new(
                    &LOOM_ARCH,
                    machine.id,
                    gd,
                    gd.id(),
                    Priority::KERN_DAEMON,
                    None,
                    "model",
                ));
                td.critcount.store(0, Ordering::Relaxed);
                let p = &*td as *const Thread as *mut Thread;
                gd.curthread.store(p, Ordering::Relaxed);
                // SAFETY: set-up, before any model thread runs; `td` is a
                // live thread of `gd`, not queued.
                unsafe { gd.runq().push_back(p) };
                td
            })
            .collect();
        Arc::new(TwoCpus {
            entry,
            _machine: machine,
            threads,
            cpus,
            _rings: rings,
        })
    }

    pub(super) fn cpu(&self, i: usize) -> &Cpu {
        &self.cpus[i]
    }

    /// CPU `i`'s ordinary thread.
    pub(super) fn thread(&self, i: usize) -> &Thread {
        &self.threads[i]
    }

    /// CPU `i` switched away from its thread and runs its idle thread, as
    /// `switch_from` does when nothing else is runnable (the run-queue and
    /// critical-section state of the thread are left as they are).
    pub(super) fn switch_to_idle(&self, i: usize) {
        let gd = self.cpu(i);
        gd.curthread
            .store(&gd.idle as *const Thread as *mut Thread, Ordering::Relaxed);
    }

    /// CPU `i` switches back to its ordinary thread (which the run queue
    /// holds again).
    pub(super) fn switch_to_thread(&self, i: usize) {
        let p = self.thread(i) as *const Thread as *mut Thread;
        self.cpu(i).curthread.store(p, Ordering::Relaxed);
    }

    /// CPU `i` takes a pending kick: its interrupt entry runs ([`Entry`]).
    /// Returns whether there was one.
    pub(super) fn interrupt(&self, i: usize) -> bool {
        let gd = self.cpu(i);
        if gd.arch_word(KICK) == 0 {
            return false;
        }
        // SAFETY: the backend's own word.
        unsafe { gd.set_arch_word(KICK, 0) };
        match self.entry {
            // SAFETY: played by CPU `i`'s loom thread; the machine runs.
            Entry::Direct => unsafe { gd.ipi_interrupt() },
            Entry::AsyncSafe => {
                // SAFETY: as above.
                unsafe { gd.ipi_interrupt_async_safe() };
                // The interrupted thread's next final `crit_exit`.
                let td = gd.cur();
                crit::enter(&td.critcount);
                if ptr::eq(td, &gd.idle) {
                    // The idle thread never leaves its critical section:
                    // its loop runs `splz` there and switches to what
                    // became runnable itself (the model's caller plays that
                    // switch), so it is never preempted.
                    // SAFETY: CPU `i`, in a critical section.
                    unsafe { crate::splz::splz(gd) };
                    crit::exit_entered_for(&td.critcount, &gd.reqflags, 0);
                } else {
                    crit_exit_td(td);
                }
            }
        }
        true
    }
}
