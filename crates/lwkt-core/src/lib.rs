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
//! # Panics in callbacks
//!
//! Code a thread runs may unwind through lwkt (token closures release their
//! token on the way out); a panic in interrupt context (an IPI or `cpusync`
//! function) or out of a thread body aborts. [`abort_on_unwind`] has the
//! whole policy.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

mod arch;
mod cpu;
mod cpusync;
mod crit;
#[cfg(feature = "critical-section")]
pub mod critical_section;
pub mod ipiq;
mod runq;
mod sched;
mod serializer;
mod sleep;
mod sync;
mod thread;
mod unwind;
mod waitq;
mod wake;

#[cfg(all(test, loom))]
mod loom_models;

/// Serializing tokens (the `lwkt-token` crate), integrated with this scheduler.
pub use lwkt_token as token;

pub use arch::{Arch, Context, EntryFn, Stack};
pub use cpu::{Cpu, CpuId, CpuMask, CpuSnapshot, CpuStats, CpuStatsSnapshot, Machine, MAX_CPUS};
pub use ipiq::{IpiError, IpiFn, IpiMsg, IpiRing};
pub use sched::{Builder, CritGuard, Cur, MyCpu, DEFAULT_STACK, MIN_STACK};
pub use serializer::Serializer;
pub use thread::{Priority, SpawnError, ThreadHandle};
pub use unwind::abort_on_unwind;
pub use waitq::WaitQueue;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
