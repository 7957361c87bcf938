//! DragonFly BSD's Light Weight Kernel Threads for any kernel.
//!
//! `lwkt-core` is the generic half of the LWKT model: a per-CPU scheduler
//! with fixed priorities, threads that never leave their CPU unless they ask
//! to, critical sections that cost a counter, and IPI message queues (one
//! lock-free ring per pair of CPUs) through which CPUs ask each other to do
//! things instead of sharing locked data. The platform half is the [`Arch`]
//! trait; `lwkt-arch-hosted` implements it in user space and
//! `lwkt-arch-x86_64` on bare metal.
//!
//! # The model in one example
//!
//! ```
//! use lwkt_core::{CpuId, CpuMask};
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! let (r, report) = lwkt_arch_hosted::Machine::new(2).unwrap().run_with_report(|cur| {
//!     // A thread on CPU 1; it never runs anywhere else.
//!     let t = cur.spawn_on(CpuId::new(1), |me| assert_eq!(me.cpu_id(), CpuId::new(1))).unwrap();
//!     cur.join(&t);
//!
//!     // Run a function on every CPU, in interrupt context, and wait for all.
//!     let hits = AtomicU32::new(0);
//!     cur.cpusync(CpuMask::all(2), &|_| { hits.fetch_add(1, Ordering::Relaxed); });
//!     hits.load(Ordering::Relaxed)
//! });
//! assert_eq!(r, 2);
//! assert!(report.leaked_threads == 0);
//! ```
//!
//! # Rules the types keep
//!
//! - Thread bodies receive `&mut` [`Cur`]. Blocking calls take `&mut Cur`;
//!   borrows taken from `&Cur` ([`MyCpu`], [`CritGuard`]) therefore cannot
//!   live across a blocking point.
//! - A thread exits by returning from its closure; there is no `exit() -> !`,
//!   because abandoning live stack frames would break `Pin`'s drop guarantee
//!   for anything pinned on the thread's stack.
//! - IPI functions ([`IpiFn`]) get a [`MyCpu`] for the CPU they run on and
//!   must not block (they run in interrupt context).
//!
//! # Which handle do I hold, and why
//!
//! | you hold | it proves | you get it | it does | DragonFly |
//! |---|---|---|---|---|
//! | `&mut` [`Cur`] | this code runs as this thread, on its CPU, and may block | a thread body's argument | everything that may block or switch: `yield_now`, `sleep`, `join`, `migrate`, `cpusync`, `with_token`; lwkt-msg's `domsg`, `waitport` | `curthread` |
//! | `&`[`Cur`] | the same, while nothing blocks | a borrow of the above | looking and starting: `my_cpu`, `crit`, `spawn_on`, `handle`, `cpu_id` | |
//! | [`MyCpu`] | this code runs on this CPU and **will not block**: a thread, or an IPI function (interrupt context) | `cur.my_cpu()`, an IPI function's argument | what never blocks, so works from interrupt context too: `schedule`, `wakeup`, `send_ipi`, `crit`; lwkt-msg's `sendmsg`, `reply` | `mycpu` (`globaldata_t`) |
//! | [`ThreadHandle`] | a counted reference to a thread, from anywhere | `spawn_on`, `cur.handle()` | `schedule`, `join`, `wake`, `has_exited` | a `thread_t` held with `lwkt_hold()` |
//! | [`Cpu`] | nothing by itself: the per-CPU block | a backend: `MachineState::cpu`, `Arch::current_cpu` | backend entry points: `idle_loop`, `ipi_interrupt` (`unsafe`) | `struct globaldata` |
//! | [`MachineState`] | the CPU blocks and IPI rings of one machine, wired | a backend builds it (`unsafe`) | `bind`, `cpu` | |
//! | `lwkt_arch_hosted::Machine` | a user-space machine to run | `Machine::new(n)` | `run(\|cur\| ...)` boots it, runs your main thread on CPU 0, stops | |
//!
//! The rule behind the split: **blocking takes `&mut Cur`**. A thread that
//! blocks lets other threads of its CPU run, may be migrated, and has its
//! tokens released until it runs again, so nothing borrowed from `&Cur` (a
//! [`MyCpu`], a [`CritGuard`], data behind a token) may survive it; taking
//! `&mut Cur` makes the borrow checker prove that none does. **What never
//! blocks takes [`MyCpu`]**, because it must also work where there is no
//! thread to block: in an IPI function, which gets only a `MyCpu`. So a
//! reply (`reply` takes `MyCpu`) can be sent from an IPI function, and a
//! `domsg` (which waits) cannot. [`Cpu`] is for backends only: everything
//! it offers a user is on `MyCpu`, checked to be this CPU.
//!
//! A machine has two names on purpose: `lwkt_arch_hosted::Machine` (and a
//! kernel's own boot code) is the machine you *run*; [`MachineState`] is
//! the wiring a backend builds for it (CPU blocks and rings at fixed
//! addresses), which a user of a backend never touches (`Machine::run`
//! builds one inside).
//!
//! ```
//! use core::sync::atomic::{AtomicBool, Ordering};
//! use lwkt_core::{CpuId, MyCpu};
//! static DONE: AtomicBool = AtomicBool::new(false);
//! fn ipi(my: MyCpu<'_>, chan: usize, _: usize) {
//!     DONE.store(true, Ordering::Release);
//!     my.wakeup(chan); // interrupt context: a MyCpu, nothing that blocks
//! }
//! lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
//!     let me = cur.handle(); // a ThreadHandle: usable from anywhere
//!     let t = cur
//!         .spawn_on(CpuId::new(1), move |other| {
//!             let my = other.my_cpu(); // &Cur -> MyCpu
//!             my.send_ipi(me.cpu(), ipi, 0x1234, 0).unwrap();
//!         })
//!         .unwrap();
//!     cur.sleep_until(0x1234, || DONE.load(Ordering::Acquire)); // &mut Cur: blocks
//!     cur.join(&t);
//! });
//! ```
//!
//! # Panics in callbacks
//!
//! Code a thread runs may unwind through lwkt (token closures release their
//! token on the way out); a panic in interrupt context (an IPI or `cpusync`
//! function) or out of a thread body aborts. [`abort_on_unwind`] has the
//! whole policy.
//!
//! # Targets without 64-bit atomics
//!
//! The crate builds for any target with native word-sized atomics
//! (`riscv32imac-unknown-none-elf` and `thumbv7em-none-eabihf` are built in
//! CI beside the 64-bit ones). It never uses an atomic wider than the
//! target's native word, and no lock-based emulation of one
//! (`portable-atomic`'s fallback): those atomics are touched from
//! interrupt and IPI context, where a handler that finds the lock held by
//! the code it interrupted would spin forever. Where
//! `target_has_atomic = "64"` the code is what it always was; elsewhere the
//! IPI rings use wrapping `u32` indices ([`ipiq::Ring`]'s `u32` form, with
//! its correctness argument in the module notes), the interrupt-pending
//! set two 32-bit words, and the callout state word, wait-queue
//! generation, machine ids and per-CPU statistics a 32-bit word (limits:
//! 2^21 machines per boot for callouts, statistics wrapping at 2^32). The
//! porting guide's section "32-bit targets and targets without 64-bit
//! atomics" lists every atomic and its reason.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

mod arch;
pub mod attach;
mod callout;
mod cpu;
mod cpumask;
mod cpusync;
mod crit;
#[cfg(feature = "critical-section")]
pub mod critical_section;
mod cur;
mod handoff;
mod idle;
mod interrupt;
pub mod intr;
pub mod ipiq;
mod migrate;
mod mycpu;
mod running;
mod runq;
mod schedule;
mod serializer;
mod sleep;
mod slice;
mod spawn;
mod splz;
mod stack_pool;
mod switch;
mod sync;
mod thread;
mod timer;
mod unwind;
mod waitq;
mod wake;
mod watch;
mod wheel;

#[cfg(all(test, loom))]
mod loom_models;

/// Serializing tokens (the `lwkt-token` crate), integrated with this scheduler.
pub use lwkt_token as token;

pub use arch::{Arch, Context, EntryFn, Stack};
pub use attach::CpuLink;
pub use callout::{Callout, Fired};
pub use cpu::{
    Cpu, CpuId, CpuMask, CpuSnapshot, CpuStats, CpuStatsSnapshot, MachineState, MAX_CPUS,
};
pub use crit::CritGuard;
pub use cur::Cur;
pub use intr::{FastHandler, IntrError, MAX_IRQS};
pub use ipiq::{IpiError, IpiFn, IpiMsg, IpiRing};
pub use mycpu::MyCpu;
pub use serializer::Serializer;
pub use slice::TIME_SLICE;
pub use spawn::{Builder, DEFAULT_STACK, MIN_STACK};
pub use stack_pool::{IrqMask, StackPool};
pub use thread::{ParkToken, Priority, SpawnError, ThreadHandle};
pub use timer::TimedOut;
pub use unwind::abort_on_unwind;
pub use waitq::WaitQueue;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
