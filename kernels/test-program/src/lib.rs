//! The test program of lwkt's bare-metal test kernels, shared by
//! `kernels/qemu-test` (x86-64) and `kernels/qemu-test-aarch64`: both boot
//! every CPU, attach lwkt's CPU blocks and call [`run`] from a thread on
//! CPU 0, then [`report`] once every CPU has left its idle loop.
//!
//! What it runs on every CPU at once: thread switches, cross-CPU
//! sleep/wakeup, IPI handshakes, `cpusync` over all CPUs, one token taken
//! from every CPU, `domsg` between CPUs, timed sleeps and timeouts on
//! each CPU's one-shot timer, callouts armed on each CPU and stopped from
//! the next, a CPU-bound thread preempted by interrupt threads (one line
//! raised through lwkt, one sent as a device interrupt by the kernel:
//! [`Kernel::send_device_interrupt`]), `domsg_timeout` against a server
//! that does not reply in time, and time slicing of two CPU-bound
//! threads. Each part counts per CPU what that CPU did; the report checks
//! every count, so a lost IPI or a thread run on the wrong CPU shows as a
//! wrong number on a named CPU.
//!
//! The few things the program needs from its kernel (printing, failing
//! the run, the clock, sending a device interrupt, the architecture's own
//! per-CPU columns) are the [`Kernel`] trait.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

use core::fmt;

use lwkt_core::{Cpu, Cur};

pub mod bringup;
pub mod heap;
mod interrupts;
pub mod opts;
mod tests;

/// The most CPUs the test program (and both kernels) support.
pub const MAX_CPUS: usize = 256;

/// The interrupt line the kernel must be able to send to a CPU as a
/// device interrupt ([`Kernel::send_device_interrupt`]).
pub const DEVICE_LINE: usize = 6;

/// What the test program needs from the kernel it runs in.
pub trait Kernel: Sync {
    /// Print to the console (callable from threads and interrupt
    /// handlers alike).
    fn print(&self, args: fmt::Arguments<'_>);
    /// Print `FAIL: ` and the message, and end the run as a failure.
    fn fail(&self, args: fmt::Arguments<'_>) -> !;
    /// The backend's clock in nanoseconds (the one `Arch::clock` reads).
    fn now_ns(&self) -> u64;
    /// Make device interrupt line `line` ([`DEVICE_LINE`]) arrive on CPU
    /// `cpu` through the hardware path a device would take (on x86-64 its
    /// IDT vector sent as a fixed IPI, on aarch64 its SGI), so that the
    /// backend's device entry posts it on that CPU.
    fn send_device_interrupt(&self, cpu: usize, line: usize);
    /// The header of the architecture's per-CPU columns in the report.
    fn cpu_header(&self) -> &'static str;
    /// Print CPU `cpu`'s architecture columns (no newline) and say
    /// whether the architecture's own checks on it hold.
    fn cpu_columns(&self, cpu: usize) -> bool;
    /// The body of the program's spin loops: by default
    /// `core::hint::spin_loop()` (`pause` on x86-64, which also makes
    /// QEMU's single-threaded TCG run the other vCPUs); a kernel whose
    /// spin hint does not (`isb` on aarch64) gives one that does.
    fn relax(&self) {
        core::hint::spin_loop();
    }
}

/// A kernel's per-CPU blocks, `[T; n]` built in a `const` with
/// `T::new(i)` for block `i` (both kernels' `PERCPU`).
#[macro_export]
macro_rules! per_cpu_blocks {
    ($t:ty, $n:expr) => {{
        let mut a = [const { <$t>::new(0) }; $n];
        let mut i = 0;
        while i < $n {
            a[i] = <$t>::new(i);
            i += 1;
        }
        a
    }};
}

static KERNEL: spin::Once<&'static dyn Kernel> = spin::Once::new();

/// The kernel [`run`] was given.
fn kernel() -> &'static dyn Kernel {
    *KERNEL
        .get()
        .expect("lwkt-test-program: run() was not called")
}

/// `print!` through the kernel.
#[macro_export]
#[doc(hidden)]
macro_rules! kprint {
    ($($t:tt)*) => { $crate::__print(format_args!($($t)*)) };
}

/// `println!` through the kernel.
#[macro_export]
#[doc(hidden)]
macro_rules! kprintln {
    ($($t:tt)*) => { $crate::__print(format_args!("{}\n", format_args!($($t)*))) };
}

/// Fail the run through the kernel.
#[macro_export]
#[doc(hidden)]
macro_rules! fail {
    ($($t:tt)*) => { $crate::__fail(format_args!($($t)*)) };
}

/// The kernel's spin-loop hint ([`Kernel::relax`]).
fn relax() {
    kernel().relax()
}

#[doc(hidden)]
pub fn __print(args: fmt::Arguments<'_>) {
    kernel().print(args)
}

#[doc(hidden)]
pub fn __fail(args: fmt::Arguments<'_>) -> ! {
    kernel().fail(args)
}

/// Run every test, from a thread on CPU 0 of a running machine whose
/// CPUs are `cpus` (at most [`MAX_CPUS`]), `rounds` rounds of each
/// counted part.
pub fn run(kernel: &'static dyn Kernel, cur: &mut Cur, rounds: u64, cpus: &'static [Cpu]) {
    KERNEL.call_once(|| kernel);
    if cpus.len() > MAX_CPUS {
        fail!(
            "{} CPUs: the test program supports at most {MAX_CPUS}",
            cpus.len()
        );
    }
    tests::run(cur, rounds, cpus);
}

/// The end of the kernel's test thread, after [`run`] (and whatever the
/// kernel runs itself): with `hang`, sleep for ever on a channel nobody
/// wakes (the negative test of the xtask's timeout and hang dump); then
/// ask every CPU to leave its idle loop.
pub fn end_test_thread(kernel: &dyn Kernel, cur: &mut Cur, hang: bool, cpus: &[Cpu]) {
    if hang {
        kernel.print(format_args!("hanging on purpose (hang)\n"));
        cur.sleep(0x4841_4e47);
    }
    for c in cpus {
        c.request_shutdown();
    }
}

/// The verdict, on the boot CPU once every CPU left its idle loop: how
/// much heap the run took, then `PASS` if `ok`. Returns `ok`.
pub fn verdict(kernel: &dyn Kernel, ok: bool, heap_used: usize) -> bool {
    kernel.print(format_args!("heap used: {} KiB\n", heap_used / 1024));
    if ok {
        kernel.print(format_args!("PASS\n"));
    }
    ok
}

/// Print the per-CPU tables and check every count; true if all hold.
/// Call it after [`run`] returned and every CPU left its idle loop.
pub fn report(cpus: &[Cpu]) -> bool {
    tests::report(cpus)
}
