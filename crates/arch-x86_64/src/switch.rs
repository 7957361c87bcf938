//! The kernel context switch (x86-64 System V, no SSE state: the
//! `x86_64-unknown-none` target is soft-float, so there is no MXCSR or x87
//! state to keep).
//!
//! A switch pushes RFLAGS, rbp, rbx and r12–r15 on the old stack, saves
//! the stack pointer in `from`, loads `to`'s and pops the same set. A new
//! thread's first frame returns into a trampoline that calls
//! `entry(arg)`.
//!
//! **The interrupt flag is per thread.** lwkt-core may switch threads from
//! an interrupt handler ([`lwkt_core::Cpu::preempt_from_interrupt`]),
//! which runs with IF clear (an interrupt gate). Without RFLAGS in the
//! context, the thread switched to would go on with interrupts off (it
//! last switched away in thread context, IF set) until something set IF
//! again, and a thread switched to later from thread context would resume
//! the preempted thread's handler with IF set, on a stack whose handler
//! frame expects it clear. With `pushfq`/`popfq` each thread gets back
//! exactly the flags it switched away with: the preempting thread its
//! IF = 1, the preempted one, later, its IF = 0 inside the handler, which
//! then returns with `iretq` and restores the interrupted code's flags.
//! That is what lets `Arch::preempts_in_interrupt` answer true here.
//! (`popfq` may set IF while lwkt-core's switch is still in its critical
//! section on the new stack: an interrupt there only records its work,
//! as anywhere in a critical section. DF is 0 at every call by the ABI,
//! so restoring it changes nothing; the other flags are scratch.)
//!
//! DragonFly: `cpu_lwkt_switch()` / `cpu_lwkt_restore()` in
//! `sys/platform/pc64/x86_64/swtch.s`.

use lwkt_core::{Context, EntryFn, Stack};

core::arch::global_asm!(
    ".text",
    ".p2align 4",
    ".globl lwkt_x86_switch",
    "lwkt_x86_switch:",
    // rdi = &from.words[0], rsi = &to.words[0]
    "pushfq",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, [rsi]",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "popfq",
    "ret",
    "",
    ".p2align 4",
    ".globl lwkt_x86_trampoline",
    "lwkt_x86_trampoline:",
    // First run: r12 = argument, r13 = entry; rsp is 16-byte aligned.
    "mov rdi, r12",
    "call r13",
    "ud2",
);

extern "C" {
    fn lwkt_x86_switch(from: *mut usize, to: *const usize);
    fn lwkt_x86_trampoline();
}

/// RFLAGS a new thread starts with: IF set (a thread runs with interrupts
/// on, whatever context the switch to it came from) and the reserved bit
/// 1, which always reads as 1.
pub(crate) const INITIAL_RFLAGS: usize = 0x202;

/// Build the first frame of a thread on `stack`: six zeroed callee-saved
/// registers (r12 = `arg`, r13 = `entry`), [`INITIAL_RFLAGS`] and the
/// trampoline as return address, leaving the stack 16-byte aligned at the
/// trampoline's call.
///
/// # Safety
/// `stack` is writable, unused and at least 128 bytes.
pub(crate) unsafe fn init(ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
    let top = (stack.base.as_ptr() as usize + stack.len) & !15;
    // Eight words: after the six pops, the `popfq` and the `ret`, rsp =
    // top, 16-byte aligned before the trampoline's `call`, as the ABI
    // wants.
    let sp = top - 8 * 8;
    let frame = sp as *mut usize;
    // SAFETY: `sp..top` lies inside `stack` (caller) and is 8-aligned.
    unsafe {
        frame.write(0); // r15
        frame.add(1).write(0); // r14
        frame.add(2).write(entry as *const () as usize); // r13
        frame.add(3).write(arg); // r12
        frame.add(4).write(0); // rbx
        frame.add(5).write(0); // rbp
        frame.add(6).write(INITIAL_RFLAGS); // rflags
        frame
            .add(7)
            .write(lwkt_x86_trampoline as *const () as usize); // return address
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
    // SAFETY: the asm saves every callee-saved register and RFLAGS on the
    // current stack and restores them from `to`'s (caller). `words[0]` is
    // the first field of the `repr(C)` `Context`. RFLAGS restored from a
    // frame that `switch` or `init` wrote holds only a value this thread
    // ran with (or IF|bit 1 for a new one), so `popfq` sets no flag that
    // was not set in ring 0 before (IOPL and the like stay as they were).
    unsafe { lwkt_x86_switch(from.words[0].as_ptr(), to.words[0].as_ptr()) }
}
