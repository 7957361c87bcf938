//! The kernel context switch (AAPCS64).
//!
//! A switch stores, on the old stack, the callee-saved registers x19–x28,
//! the frame pointer x29, the link register x30, the low halves of v8–v15
//! (d8–d15, the callee-saved part of the SIMD registers), `FPCR`, and
//! `DAIF`; saves the stack pointer in `from`, loads `to`'s and restores
//! the same set, then returns through x30. A new thread's first frame
//! returns into a trampoline that calls `entry(arg)`.
//!
//! **`DAIF` is per thread**, for the reason `RFLAGS` is on x86-64:
//! lwkt-core may switch threads from the IRQ entry
//! ([`lwkt_core::Cpu::preempt_from_interrupt`]), which runs with IRQs
//! masked. The thread switched to gets back the mask it switched away
//! with (unmasked, in thread context); the preempted one, later, its
//! masked state inside its handler, which returns with `eret` and
//! restores the interrupted `PSTATE` from the frame. That is what lets
//! `Arch::preempts_in_interrupt` answer true. `DAIF` is written last,
//! once the new stack is in place: an IRQ taken there pushes its frame
//! below a consistent stack pointer.
//!
//! DragonFly: `cpu_lwkt_switch()` (`swtch.s` on x86-64); the hosted
//! backend's AArch64 switch (`crates/arch-hosted/src/switch.rs`) has the
//! same frame without `DAIF`.

use lwkt_core::{Context, EntryFn, Stack};

core::arch::global_asm!(
    ".text",
    ".globl lwkt_a64_switch",
    ".p2align 4",
    "lwkt_a64_switch:",
    // x0 = &from.words[0], x1 = &to.words[0].
    "sub sp, sp, #176",
    "mrs x9, fpcr",
    "mrs x10, daif",
    "stp x9, x10, [sp]",
    "stp d8, d9, [sp, #16]",
    "stp d10, d11, [sp, #32]",
    "stp d12, d13, [sp, #48]",
    "stp d14, d15, [sp, #64]",
    "stp x19, x20, [sp, #80]",
    "stp x21, x22, [sp, #96]",
    "stp x23, x24, [sp, #112]",
    "stp x25, x26, [sp, #128]",
    "stp x27, x28, [sp, #144]",
    "stp x29, x30, [sp, #160]",
    "mov x11, sp",
    "str x11, [x0]",
    "ldr x11, [x1]",
    "mov sp, x11",
    "ldp x9, x10, [sp]",
    "ldp d8, d9, [sp, #16]",
    "ldp d10, d11, [sp, #32]",
    "ldp d12, d13, [sp, #48]",
    "ldp d14, d15, [sp, #64]",
    "ldp x19, x20, [sp, #80]",
    "ldp x21, x22, [sp, #96]",
    "ldp x23, x24, [sp, #112]",
    "ldp x25, x26, [sp, #128]",
    "ldp x27, x28, [sp, #144]",
    "ldp x29, x30, [sp, #160]",
    "msr fpcr, x9",
    "add sp, sp, #176",
    "msr daif, x10",
    "ret",
    "",
    ".globl lwkt_a64_trampoline",
    ".p2align 4",
    "lwkt_a64_trampoline:",
    // First run: x19 = argument, x20 = entry; sp 16-byte aligned, x29 = 0
    // (the end of the frame-pointer chain).
    "mov x0, x19",
    "blr x20",
    "brk #1",
);

extern "C" {
    fn lwkt_a64_switch(from: *mut usize, to: *const usize);
    fn lwkt_a64_trampoline();
}

/// `DAIF` a new thread starts with: all of D, A, I, F unmasked (a thread
/// runs with interrupts on, whatever context the switch came from).
pub(crate) const INITIAL_DAIF: u64 = 0;
/// `FPCR` a new thread starts with: round to nearest, no traps.
const INITIAL_FPCR: u64 = 0;

/// Build the first frame of a thread on `stack`.
///
/// # Safety
/// `stack` is writable, unused and at least 256 bytes.
pub(crate) unsafe fn init(ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
    let top = (stack.base.as_ptr() as usize + stack.len) & !15;
    let sp = top - 176;
    let frame = sp as *mut u64;
    // SAFETY: `sp..top` lies inside `stack` (caller), 16-aligned.
    unsafe {
        core::ptr::write_bytes(frame, 0, 22);
        frame.write(INITIAL_FPCR);
        frame.add(1).write(INITIAL_DAIF);
        frame.add(10).write(arg as u64); // x19
        frame.add(11).write(entry as *const () as usize as u64); // x20
        frame
            .add(21)
            .write(lwkt_a64_trampoline as *const () as usize as u64); // x30
    }
    ctx.words[0].set(sp);
}

/// Save the running context in `from` and resume `to`.
///
/// # Safety
/// `to` holds a stack pointer saved by `switch` or built by `init`, whose
/// stack is alive; nothing else runs on it.
#[inline(always)]
pub(crate) unsafe fn switch(from: &Context, to: &Context) {
    // SAFETY: the asm saves every callee-saved register, FPCR and DAIF on
    // the current stack and restores them from `to`'s (caller); `words[0]`
    // is the first field of the `repr(C)` `Context`. DAIF restored from a
    // frame that `switch` or `init` wrote holds only a mask this thread ran
    // with (or all unmasked for a new one).
    unsafe { lwkt_a64_switch(from.words[0].as_ptr(), to.words[0].as_ptr()) }
}
