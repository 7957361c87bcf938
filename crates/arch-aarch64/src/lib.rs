//! A bare-metal backend of lwkt for aarch64 at EL1 (`aarch64-unknown-none`):
//! `A64Arch` implements lwkt-core's `Arch` with
//!
//! - per-CPU blocks through `TPIDR_EL1` (`percpu`);
//! - IPIs as GICv3 SGIs sent with `ICC_SGI1R_EL1`, and the distributor
//!   and redistributor set-up they need (`gic`);
//! - the EL1 exception vector table and its IRQ entry, which dispatches
//!   to lwkt's IPI, timer and device entries (`vectors`);
//! - time (`time`): the virtual counter `CNTVCT_EL0` as the clock and
//!   each CPU's EL1 virtual timer (PPI 27) as its one-shot timer;
//! - the context switch (AAPCS64's callee-saved registers, d8–d15, FPCR
//!   and DAIF: the IRQ mask is per thread, so the IRQ entry may preempt
//!   the interrupted thread, `Arch::preempts_in_interrupt`), `wfi`
//!   idling, and PSCI `CPU_ON`/`SYSTEM_OFF` (`psci`).
//!
//! What comes from crates: system-register access and barriers from
//! `aarch64-cpu`, the SMCCC/PSCI calls from `smccc`. What is ours and why:
//! see the README (the GICv3 driver, the vector table, the switch).
//!
//! On any other target (including aarch64 Linux, where EL1 registers
//! fault) the crate is empty but for [`enc`], the pure encodings, which
//! are unit-tested on the host.
//!
//! The boot code (entry, MMU, secondary CPUs' entry) is a kernel's own;
//! `kernels/qemu-test-aarch64` is a complete example, run by
//! `cargo xtask qemu --arch aarch64`.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod enc;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod arch;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod gic;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod percpu;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod psci;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod regs;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod switch;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod time;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod vectors;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use arch::{without_irqs, A64Arch, A64Irqs, StackPool};
