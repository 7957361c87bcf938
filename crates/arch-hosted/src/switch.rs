//! The user-space context switch (x86-64 System V).
//!
//! A switch pushes the callee-saved registers, the MXCSR and the x87 control
//! word on the old stack, saves the stack pointer, loads the new one, and
//! pops the same set. It ends in `pop rcx; jmp rcx` rather than `ret`: a
//! `ret` to an address pushed on another stack mispredicts every time, the
//! indirect jump does not (3 ns against 9 ns measured on this machine).
//!
//! MXCSR and the x87 control word are reloaded only when the resumed
//! thread's saved control bits differ from the current ones, which are the
//! values just saved on the old stack: the comparison reads memory only,
//! and late (see the asm).
//!
//! Frame on a saved stack, from the saved stack pointer up:
//! `[mxcsr:u32 fcw:u16 pad] r15 r14 r13 r12 rbx rbp return-address`.

use lwkt_core::{Context, EntryFn, Stack};

#[cfg(not(target_arch = "x86_64"))]
compile_error!("lwkt-arch-hosted has a context switch for x86-64 only");

core::arch::global_asm!(
    ".text",
    ".globl lwkt_hosted_switch",
    // Not preemptible: callers jump to it directly, not through the GOT.
    ".hidden lwkt_hosted_switch",
    ".p2align 4",
    "lwkt_hosted_switch:",
    // Save MXCSR and the x87 control word first, into what becomes the
    // bottom of the frame (the red zone until the pushes below reach it;
    // signal frames are pushed below the red zone).
    "stmxcsr [rsp - 56]",
    "fnstcw [rsp - 52]",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "sub rsp, 8",
    // rdi is unused (it carries `&HostedArch` through unchanged, so the
    // trait method is a bare jump here), rsi is `from`, rdx is `to`.
    "mov [rsi], rsp",
    "mov rdi, rsp",
    "mov rsp, [rdx]",
    "mov eax, [rsp]",
    "movzx edx, word ptr [rsp + 4]",
    "add rsp, 8",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    // Reload MXCSR and the x87 control word only when the control bits
    // differ (MXCSR's low six bits are status flags, not preserved): both
    // loads are slow, and they rarely differ. The current values are the
    // ones saved at `rdi`; they are compared only now, well after the
    // `stmxcsr`, because a load right behind it waits for its store
    // (about 2 ns per switch on this Zen 4).
    "xor eax, [rdi]",
    "test eax, 0xffc0",
    "jnz 4f",
    "2:",
    "cmp dx, [rdi + 4]",
    "jne 5f",
    "3:",
    "pop rcx",
    "jmp rcx",
    // The new frame's MXCSR and control word now lie in the red zone.
    "4:",
    "ldmxcsr [rsp - 56]",
    "jmp 2b",
    "5:",
    "fldcw [rsp - 52]",
    "jmp 3b",
    "",
    ".globl lwkt_hosted_trampoline",
    ".hidden lwkt_hosted_trampoline",
    ".p2align 4",
    "lwkt_hosted_trampoline:",
    // First run of a thread: r12 = argument, r13 = entry. The stack pointer
    // is 16-byte aligned here, as the ABI wants before a call.
    "mov rdi, r12",
    "call r13",
    "ud2",
);

extern "sysv64" {
    /// Saves the stack pointer at `from`, loads it from `to`; `_arch` is
    /// not used (see the asm).
    fn lwkt_hosted_switch(_arch: *const (), from: *const usize, to: *const usize);
    fn lwkt_hosted_trampoline();
}

/// MXCSR with all exceptions masked, round-to-nearest (the ABI's initial value).
const MXCSR_DEFAULT: u32 = 0x1F80;
/// x87 control word: all exceptions masked, 64-bit precision, round-to-nearest.
const FCW_DEFAULT: u16 = 0x037F;

/// Build the first frame of a thread on `stack`.
///
/// # Safety
/// `stack` is writable, unused, and at least 128 bytes.
pub(crate) unsafe fn init(ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
    let top = (stack.base.as_ptr() as usize + stack.len) & !15;
    let sp = top - 64;
    let frame = sp as *mut u64;
    // SAFETY: `sp..top` lies in `stack` (caller) and is 8-aligned.
    unsafe {
        frame.write(u64::from(MXCSR_DEFAULT) | (u64::from(FCW_DEFAULT) << 32));
        frame.add(1).write(0); // r15
        frame.add(2).write(0); // r14
        frame.add(3).write(entry as usize as u64); // r13
        frame.add(4).write(arg as u64); // r12
        frame.add(5).write(0); // rbx
        frame.add(6).write(0); // rbp
        frame
            .add(7)
            .write(lwkt_hosted_trampoline as *const () as usize as u64); // return address
    }
    ctx.words[0].set(sp);
}

/// Save the running context in `from` and resume `to`. `arch` is passed
/// through untouched so that the caller's registers already hold the
/// arguments (the trait method compiles to a bare jump).
///
/// # Safety
/// `to` holds a stack pointer saved by `switch` or built by `init`, whose
/// stack is alive; nothing else runs on it.
#[inline(always)]
pub(crate) unsafe fn switch(arch: *const (), from: &Context, to: &Context) {
    // SAFETY: the asm saves every callee-saved register (and MXCSR/FCW) on
    // the current stack and restores them from `to`'s, per the caller.
    // `words[0]` is the first field of the `repr(C)` `Context`.
    unsafe {
        lwkt_hosted_switch(
            arch,
            from.words[0].as_ptr().cast_const(),
            to.words[0].as_ptr().cast_const(),
        )
    }
}

#[cfg(test)]
mod tests {
    use core::arch::asm;

    fn mxcsr() -> u32 {
        let mut v = 0u32;
        // SAFETY: stores MXCSR into `v`.
        unsafe { asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack)) };
        v
    }

    fn set_mxcsr(v: u32) {
        // SAFETY: loads a valid MXCSR value (no reserved bits); nothing
        // between here and its restore does floating-point arithmetic.
        unsafe { asm!("ldmxcsr [{}]", in(reg) &v, options(nostack)) };
    }

    fn fcw() -> u16 {
        let mut v = 0u16;
        // SAFETY: stores the x87 control word into `v`.
        unsafe { asm!("fnstcw [{}]", in(reg) &mut v, options(nostack)) };
        v
    }

    fn set_fcw(v: u16) {
        // SAFETY: loads a valid control word; no x87 code runs meanwhile.
        unsafe { asm!("fldcw [{}]", in(reg) &v, options(nostack)) };
    }

    /// Control bits (not the status flags) of MXCSR.
    const CONTROL: u32 = 0xffc0;

    #[test]
    fn each_thread_keeps_its_mxcsr_and_x87_control_word() {
        crate::Machine::new(1).unwrap().run(|cur| {
            let t = cur
                .spawn_on(lwkt_core::CpuId::new(0), |me| {
                    assert_eq!(
                        mxcsr() & CONTROL,
                        0x1f80,
                        "a new thread starts with the default"
                    );
                    assert_eq!(fcw(), 0x037f);
                    set_mxcsr(0x7f80); // round toward zero
                    set_fcw(0x027f); // 53-bit precision
                    me.yield_now();
                    assert_eq!(mxcsr() & CONTROL, 0x7f80, "restored after the switch");
                    assert_eq!(fcw(), 0x027f);
                    set_mxcsr(0x1f80);
                    set_fcw(0x037f);
                })
                .unwrap();
            cur.yield_now(); // `t` changes both and yields back
            assert_eq!(mxcsr() & CONTROL, 0x1f80, "not the other thread's");
            assert_eq!(fcw(), 0x037f);
            cur.join(&t);
            assert_eq!(mxcsr() & CONTROL, 0x1f80);
        });
    }
}
