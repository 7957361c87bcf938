//! The reference bare-metal backend of lwkt for x86-64 (ring 0,
//! `x86_64-unknown-none`): [`X86Arch`] implements lwkt-core's `Arch` with
//!
//! - per-CPU blocks through `IA32_GS_BASE`/`IA32_KERNEL_GS_BASE` and
//!   `swapgs` ([`percpu`], with the NMI window documented there);
//! - the local APIC in xAPIC or x2APIC mode, detected at run time
//!   ([`apic`]): fixed-vector IPIs, INIT/SIPI, EOI, spurious vector;
//! - an IDT of assembly stubs calling `extern "C"` handlers ([`idt`]);
//! - time ([`time`]): the TSC as the clock, its frequency from CPUID
//!   leaves 0x15/0x16 or calibrated against the PIT, and each CPU's
//!   one-shot timer from its local APIC (TSC-deadline or one-shot mode);
//! - the context switch (callee-saved registers and RFLAGS: the interrupt
//!   flag is per thread, so every interrupt entry may preempt the
//!   interrupted thread, `Arch::preempts_in_interrupt`), `sti; hlt`
//!   idling and the TSC;
//! - user mode ([`usermode`]): per-CPU GDT and TSS, `syscall`/`sysret`,
//!   ring-3 threads that are lwkt threads, `swapgs` on entries from ring 3
//!   (by the GS base MSR for NMIs), the `doreti` check on the way out, and
//!   copy-in/copy-out that turn a bad user address into an error.
//!
//! What comes from crates: MSR access, `lidt`, `hlt` and the interrupt
//! flag from [`x86_64`]; CPUID's leaves from [`raw_cpuid`] (the TSC and
//! frequency leaves, TSC-deadline, invariant TSC). What is ours and why: the APIC driver (see
//! [`apic`]: 150 lines, exactly the operations lwkt needs, with the xAPIC
//! ICR race closed), the IDT gate encoding and stubs (the `x86_64` crate's
//! table wants the unstable `x86-interrupt` ABI).
//!
//! **Soundness.** Every function that reads or writes GS, an MSR, the
//! local APIC or the IDT, or trusts GS to point at a [`percpu::PerCpu`],
//! is `unsafe` with a written contract; so is [`X86Arch::new`], whose
//! contract (every CPU calling in has installed its block) lets the safe
//! `Arch::current_cpu` read GS. [`X86Arch::attach`] checks that one `Cpu`
//! has one CPU driving it.
//!
//! The boot code (PVH entry, long mode, AP start-up) is a kernel's own;
//! `kernels/qemu-test` is a complete example, run by `cargo xtask qemu`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// On any other architecture the crate is empty, so that a workspace build
// for another host (the hosted backend's aarch64 Linux) compiles it.

#[cfg(test)]
extern crate std;

#[cfg(target_arch = "x86_64")]
pub mod apic;
#[cfg(target_arch = "x86_64")]
mod arch;
#[cfg(target_arch = "x86_64")]
pub mod idt;
#[cfg(target_arch = "x86_64")]
pub mod percpu;
#[cfg(target_arch = "x86_64")]
mod switch;
#[cfg(target_arch = "x86_64")]
pub mod time;
#[cfg(target_arch = "x86_64")]
pub mod usermode;

#[cfg(target_arch = "x86_64")]
pub use arch::{StackPool, X86Arch, X86Irqs};

/// The README's example, compiled as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
