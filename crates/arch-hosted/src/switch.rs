//! The user-space context switch: x86-64 System V and AArch64 (AAPCS64).
//!
//! A switch saves the callee-saved registers and the floating-point
//! control register(s) on the old stack, saves the stack pointer, loads the
//! new one, and restores the same set from there. The `Context` holds only
//! the saved stack pointer; the frame is the architecture's:
//!
//! **x86-64.** The switch pushes the callee-saved registers, the MXCSR and
//! the x87 control word, and ends in `pop rcx; jmp rcx` rather than `ret`:
//! a `ret` to an address pushed on another stack mispredicts every time,
//! the indirect jump does not (3 ns against 9 ns measured on this machine).
//! MXCSR and the x87 control word are reloaded only when the resumed
//! thread's saved control bits differ from the current ones, which are the
//! values just saved on the old stack: the comparison reads memory only,
//! and late (see the asm). Frame, from the saved stack pointer up:
//! `[mxcsr:u32 fcw:u16 pad] r15 r14 r13 r12 rbx rbp return-address`.
//!
//! **AArch64.** AAPCS64's callee-saved set is x19-x28, the frame pointer
//! x29, the link register x30, sp, and the low 64 bits of v8-v15 (d8-d15);
//! FPCR (rounding mode, flush-to-zero, default NaN, trap enables) is the
//! analogue of MXCSR's control bits and is per thread too (FPSR, the
//! status flags, is not preserved by the ABI and is not saved). The frame,
//! 176 bytes from the saved stack pointer up (16-aligned, as sp must be):
//! `[fpcr pad] d8 d9 d10 d11 d12 d13 d14 d15 x19 x20 ... x28 x29 x30`.
//! The switch lowers sp before it stores (AArch64 Linux has no red zone: a
//! signal frame may be pushed right below sp at any instruction), returns
//! with `ret` through the restored x30, and writes FPCR only when the
//! resumed thread's value differs from the current one (a write may
//! synchronise the FP pipeline; it rarely differs). `ret` rather than `br`:
//! a `br` target would have to be a BTI landing pad on a BTI-guarded
//! binary; whether `br` would predict better, as `jmp` does on x86-64, was
//! not measured (this port was tested under user-mode QEMU only).
//!
//! A new thread's first frame resumes in `lwkt_hosted_trampoline` with its
//! argument and entry function in two callee-saved registers (r12/r13,
//! x19/x20), which calls the entry and traps (`ud2`/`brk`) should it ever
//! return (it must not: lwkt-core's entry ends in a switch away).
//!
//! With the cargo feature `asan` (for `-Zsanitizer=address` builds only),
//! each switch also tells AddressSanitizer which stack takes over (see
//! `asan`); without it the switch is the asm alone.

use lwkt_core::{Context, EntryFn, Stack};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("lwkt-arch-hosted has a context switch for x86-64 and AArch64 only");

#[cfg(target_arch = "x86_64")]
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
);

#[cfg(all(target_arch = "x86_64", not(feature = "asan")))]
core::arch::global_asm!(
    ".text",
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

// The same, telling ASan first that the switch to the new stack is over
// (r12 and r13 are callee-saved, so they survive the call).
#[cfg(all(target_arch = "x86_64", feature = "asan"))]
core::arch::global_asm!(
    ".text",
    ".globl lwkt_hosted_trampoline",
    ".hidden lwkt_hosted_trampoline",
    ".p2align 4",
    "lwkt_hosted_trampoline:",
    "call {start}",
    "mov rdi, r12",
    "call r13",
    "ud2",
    start = sym asan::thread_start,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".text",
    ".globl lwkt_hosted_switch",
    ".hidden lwkt_hosted_switch",
    ".p2align 4",
    "lwkt_hosted_switch:",
    // x0 is unused (`&HostedArch`, passed through as on x86-64), x1 is
    // `from`, x2 is `to`. Room first, then the stores (no red zone).
    "sub sp, sp, #176",
    "mrs x9, fpcr",
    "stp x19, x20, [sp, #80]",
    "stp x21, x22, [sp, #96]",
    "stp x23, x24, [sp, #112]",
    "stp x25, x26, [sp, #128]",
    "stp x27, x28, [sp, #144]",
    "stp x29, x30, [sp, #160]",
    "stp d8, d9, [sp, #16]",
    "stp d10, d11, [sp, #32]",
    "stp d12, d13, [sp, #48]",
    "stp d14, d15, [sp, #64]",
    "str x9, [sp]",
    "mov x10, sp",
    "str x10, [x1]",
    "ldr x10, [x2]",
    "mov sp, x10",
    "ldr x11, [sp]",
    "ldp x19, x20, [sp, #80]",
    "ldp x21, x22, [sp, #96]",
    "ldp x23, x24, [sp, #112]",
    "ldp x25, x26, [sp, #128]",
    "ldp x27, x28, [sp, #144]",
    "ldp x29, x30, [sp, #160]",
    "ldp d8, d9, [sp, #16]",
    "ldp d10, d11, [sp, #32]",
    "ldp d12, d13, [sp, #48]",
    "ldp d14, d15, [sp, #64]",
    // FPCR is written only when the resumed thread's differs from ours
    // (x9, read above).
    "cmp x9, x11",
    "b.ne 2f",
    "add sp, sp, #176",
    "ret",
    "2:",
    "msr fpcr, x11",
    "add sp, sp, #176",
    "ret",
);

#[cfg(all(target_arch = "aarch64", not(feature = "asan")))]
core::arch::global_asm!(
    ".text",
    ".globl lwkt_hosted_trampoline",
    ".hidden lwkt_hosted_trampoline",
    ".p2align 4",
    "lwkt_hosted_trampoline:",
    // First run of a thread: x19 = argument, x20 = entry; sp is 16-byte
    // aligned and x29 is 0 (the end of the frame-pointer chain).
    "mov x0, x19",
    "blr x20",
    "brk #1",
);

#[cfg(all(target_arch = "aarch64", feature = "asan"))]
core::arch::global_asm!(
    ".text",
    ".globl lwkt_hosted_trampoline",
    ".hidden lwkt_hosted_trampoline",
    ".p2align 4",
    "lwkt_hosted_trampoline:",
    "bl {start}",
    "mov x0, x19",
    "blr x20",
    "brk #1",
    start = sym asan::thread_start,
);

// The C ABI: System V on x86-64 Linux (as the asm above assumes), AAPCS64
// on AArch64.
extern "C" {
    /// Saves the stack pointer at `from`, loads it from `to`; `_arch` is
    /// not used (see the asm).
    fn lwkt_hosted_switch(_arch: *const (), from: *const usize, to: *const usize);
    fn lwkt_hosted_trampoline();
}

/// `Context` word holding the saved stack pointer (the asm's `[rsi]`/`[rdx]`,
/// `[x1]`/`[x2]`).
const SP: usize = 0;

/// MXCSR with all exceptions masked, round-to-nearest (the ABI's initial value).
#[cfg(target_arch = "x86_64")]
const MXCSR_DEFAULT: u32 = 0x1F80;
/// x87 control word: all exceptions masked, 64-bit precision, round-to-nearest.
#[cfg(target_arch = "x86_64")]
const FCW_DEFAULT: u16 = 0x037F;

/// FPCR as Linux starts a process: round-to-nearest, no flush-to-zero, no
/// default NaN, no traps.
#[cfg(target_arch = "aarch64")]
const FPCR_DEFAULT: u64 = 0;

/// Build the first frame of a thread on `stack`.
///
/// # Safety
/// `stack` is writable, unused, and at least 256 bytes.
pub(crate) unsafe fn init(ctx: &Context, stack: Stack, entry: EntryFn, arg: usize) {
    let top = (stack.base.as_ptr() as usize + stack.len) & !15;
    // SAFETY: `top` is the 16-aligned end of `stack`, which is writable,
    // unused and large enough for a first frame (caller).
    let sp = unsafe { first_frame(top, entry, arg) };
    ctx.words[SP].set(sp);
    #[cfg(feature = "asan")]
    {
        ctx.words[asan::BOTTOM].set(stack.base.as_ptr() as usize);
        ctx.words[asan::SIZE].set(stack.len);
        ctx.words[asan::FAKE_SLOT].set(crate::stack::fake_stack_slot(&stack) as usize);
    }
}

/// Write the x86-64 first frame (see the module docs) below `top`; returns
/// the stack pointer to save.
///
/// # Safety
/// `top - 64..top` is writable and unused; `top` is 16-aligned.
#[cfg(target_arch = "x86_64")]
unsafe fn first_frame(top: usize, entry: EntryFn, arg: usize) -> usize {
    let sp = top - 64;
    let frame = sp as *mut u64;
    // SAFETY: `sp..top` is writable and unused (caller) and 8-aligned.
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
    sp
}

/// Write the AArch64 first frame (see the module docs) below `top`;
/// returns the stack pointer to save.
///
/// # Safety
/// `top - 176..top` is writable and unused; `top` is 16-aligned.
#[cfg(target_arch = "aarch64")]
unsafe fn first_frame(top: usize, entry: EntryFn, arg: usize) -> usize {
    let sp = top - 176;
    let frame = sp as *mut u64;
    // SAFETY: `sp..top` is writable and unused (caller) and 16-aligned.
    unsafe {
        core::ptr::write_bytes(frame, 0, 22); // d8-d15, x21-x29 and the pad: 0
        frame.write(FPCR_DEFAULT);
        frame.add(10).write(arg as u64); // x19
        frame.add(11).write(entry as usize as u64); // x20
        frame
            .add(21)
            .write(lwkt_hosted_trampoline as *const () as usize as u64); // x30
    }
    sp
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
    #[cfg(feature = "asan")]
    // SAFETY: `from` is the running context, `to` the one resumed next
    // (caller); the switch below follows at once.
    unsafe {
        asan::start_switch(from, to)
    };
    // SAFETY: the asm saves every callee-saved register (and MXCSR/FCW) on
    // the current stack and restores them from `to`'s, per the caller.
    // `words[0]` is the first field of the `repr(C)` `Context`.
    unsafe {
        lwkt_hosted_switch(
            arch,
            from.words[SP].as_ptr().cast_const(),
            to.words[SP].as_ptr().cast_const(),
        )
    };
    #[cfg(feature = "asan")]
    // SAFETY: `from` is our own context, just resumed by a switch that
    // began with `start_switch`.
    unsafe {
        asan::finish_switch(from)
    };
}

/// AddressSanitizer's fiber annotations (cargo feature `asan`).
///
/// ASan keeps, per OS thread, the bounds of the stack it runs on (to
/// unpoison the frames a `-> !` call or an unwind leaves, at
/// `__asan_handle_no_return`) and a "fake stack" of frames for
/// `detect_stack_use_after_return`. Each switch tells it that another stack
/// takes over and hands it that stack's fake stack:
/// `__sanitizer_start_switch_fiber` before the jump, with the place where
/// the leaving context's fake stack is kept and the next stack's bounds;
/// `__sanitizer_finish_switch_fiber` right after, on the resumed stack, with
/// the fake stack kept there (null for a new thread, whose trampoline calls
/// [`thread_start`] before anything else).
///
/// Where each context keeps what ([`fiber`]): a thread made by
/// `init_context` has its stack bounds in `Context` words 1 and 2, and its
/// fake stack in a slot below its stack's guard page (word 3 holds the
/// slot's address). The slot survives the thread: the backend does not
/// learn which switch is a thread's last (lwkt-core's `Arch::switch` does
/// not say), so an exited thread's fake stack stays in its slot and is
/// destroyed when its stack is freed ([`stack_freed`]). A context whose
/// words 1 and 2 are zero is the vCPU's own OS-thread context (its idle
/// thread's): its bounds and fake stack live in a thread-local, the bounds
/// recorded at the first finish on that OS thread (the first switch there
/// always leaves the idle thread, on the OS stack).
///
/// Linking needs the ASan runtime (`-Zsanitizer=address`).
#[cfg(feature = "asan")]
pub(crate) mod asan {
    use core::cell::Cell;
    use core::ffi::c_void;
    use core::ptr;

    use lwkt_core::Context;

    /// `Context` word: lowest address of the thread's stack.
    pub(crate) const BOTTOM: usize = 1;
    /// `Context` word: size of the thread's stack (0 for the OS-thread context).
    pub(crate) const SIZE: usize = 2;
    /// `Context` word: address of the slot that keeps the thread's fake stack.
    pub(crate) const FAKE_SLOT: usize = 3;

    extern "C" {
        fn __sanitizer_start_switch_fiber(
            fake_stack_save: *mut *mut c_void,
            bottom: *const c_void,
            size: usize,
        );
        fn __sanitizer_finish_switch_fiber(
            fake_stack_save: *mut c_void,
            bottom_old: *mut *const c_void,
            size_old: *mut usize,
        );
        fn __asan_unpoison_memory_region(addr: *const c_void, size: usize);
    }

    /// The vCPU's own OS-thread context: its stack's bounds and, while it
    /// is switched out, its fake stack.
    struct OsStack {
        bottom: Cell<usize>,
        size: Cell<usize>,
        fake: Cell<*mut c_void>,
    }

    std::thread_local! {
        static OS_STACK: OsStack = const {
            OsStack {
                bottom: Cell::new(0),
                size: Cell::new(0),
                fake: Cell::new(ptr::null_mut()),
            }
        };
    }

    /// Where `ctx` keeps its fake stack while switched out, and its stack's
    /// bottom and size.
    fn fiber(ctx: &Context) -> (*mut *mut c_void, usize, usize) {
        let size = ctx.words[SIZE].get();
        if size != 0 {
            let slot = ctx.words[FAKE_SLOT].get() as *mut *mut c_void;
            (slot, ctx.words[BOTTOM].get(), size)
        } else {
            OS_STACK.with(|o| (o.fake.as_ptr(), o.bottom.get(), o.size.get()))
        }
    }

    /// The first finish on an OS thread reports the OS thread's own stack.
    fn record_os_stack(bottom: *const c_void, size: usize) {
        OS_STACK.with(|o| {
            if o.size.get() == 0 {
                o.bottom.set(bottom as usize);
                o.size.set(size);
            }
        });
    }

    /// Before a switch from `from` to `to`.
    ///
    /// # Safety
    /// `from` is the running context and `to` the one the switch that
    /// follows at once resumes (both initialised by `init` or the
    /// OS-thread context of this vCPU).
    #[inline(never)]
    pub(crate) unsafe fn start_switch(from: &Context, to: &Context) {
        let (save, _, _) = fiber(from);
        let (_, bottom, size) = fiber(to);
        // SAFETY: `save` is `from`'s slot (a word below its stack's guard
        // page, mapped as long as the stack) or this OS thread's
        // thread-local; ASan writes the fake stack there and reads the
        // bounds only as numbers. No other switch is under way on this OS
        // thread: switches run in a critical section, so the IPI signal
        // handler, which could free a stack (`stack_freed`), defers.
        unsafe { __sanitizer_start_switch_fiber(save, bottom as *const c_void, size) };
    }

    /// Right after a switch resumed `own` (on its stack).
    ///
    /// # Safety
    /// `own` is the context just resumed by a switch begun with
    /// [`start_switch`].
    #[inline(never)]
    pub(crate) unsafe fn finish_switch(own: &Context) {
        let (save, _, _) = fiber(own);
        let mut bottom = ptr::null();
        let mut size = 0;
        // SAFETY: `save` holds what `start_switch` stored when `own` was
        // switched out (the caller), which ASan hands back as this stack's
        // fake stack; the out-pointers are our locals.
        unsafe { __sanitizer_finish_switch_fiber(*save, &mut bottom, &mut size) };
        record_os_stack(bottom, size);
    }

    /// A new thread's first code, called by the trampoline: the switch to
    /// its fresh stack is over, with no fake stack yet.
    pub(crate) extern "C" fn thread_start() {
        let mut bottom = ptr::null();
        let mut size = 0;
        // SAFETY: the switch that entered the trampoline began with
        // `start_switch`; a null save gives the new stack a fresh fake
        // stack; the out-pointers are our locals.
        unsafe { __sanitizer_finish_switch_fiber(ptr::null_mut(), &mut bottom, &mut size) };
        record_os_stack(bottom, size);
    }

    /// Before a thread's stack `base..base+len` is unmapped: destroy the
    /// fake stack its last switch left in `slot`, and unpoison the stack
    /// (frames that never returned keep their redzones poisoned, which a
    /// later mapping at the same address would inherit).
    ///
    /// ASan destroys a fake stack only at a switch that saves it nowhere
    /// (a null save), so this makes the running context briefly adopt the
    /// dead one and switch away from it with a null save, then come back
    /// to its own: four calls, no real switch.
    ///
    /// # Safety
    /// `slot` is the stack's fake-stack slot, `base..base+len` the stack;
    /// nothing runs on it any more, and no switch is under way on this OS
    /// thread (an interrupted switch is inside a critical section, so the
    /// IPI signal handler never frees a stack in the middle of one).
    pub(crate) unsafe fn stack_freed(slot: *mut *mut c_void, base: *const c_void, len: usize) {
        // SAFETY: the slot's page is mapped until the caller unmaps it.
        let dead = unsafe { *slot };
        if !dead.is_null() {
            let mut own = ptr::null_mut();
            let mut bottom = ptr::null();
            let mut size = 0;
            // SAFETY: a switch "to a stack of bounds (0, 0)" that keeps our
            // fake stack in `own` and takes `dead` as the new one; then a
            // switch back to our real bounds (reported by the first finish)
            // with a null save, which destroys `dead`, and the finish that
            // gives us our own fake stack back. Nothing runs on the dead
            // stack (caller), and none of it moves our stack pointer.
            unsafe {
                __sanitizer_start_switch_fiber(&mut own, ptr::null(), 0);
                __sanitizer_finish_switch_fiber(dead, &mut bottom, &mut size);
                __sanitizer_start_switch_fiber(ptr::null_mut(), bottom, size);
                __sanitizer_finish_switch_fiber(own, ptr::null_mut(), ptr::null_mut());
                *slot = ptr::null_mut();
            }
        }
        // SAFETY: `base..base+len` is mapped until the caller unmaps it;
        // unpoisoning only clears its shadow.
        unsafe { __asan_unpoison_memory_region(base, len) };
    }
}

#[cfg(test)]
mod tests {
    use core::hint::black_box;

    /// Floating-point values live across a switch, in both threads: on
    /// AArch64 the compiler keeps them in d8-d15 (callee-saved), which the
    /// switch must carry; on x86-64 they are spilled (no callee-saved
    /// vector registers), and the test holds trivially.
    #[test]
    fn floating_point_values_live_across_a_switch_survive() {
        fn run(me: &mut lwkt_core::Cur, base: f64) -> f64 {
            let v: [f64; 8] = core::array::from_fn(|i| black_box(base + i as f64));
            me.yield_now();
            let w: [f64; 8] = core::array::from_fn(|i| black_box(v[i] * 2.0));
            me.yield_now();
            v.iter().zip(&w).map(|(a, b)| a + b).sum()
        }
        crate::Machine::new(1).unwrap().run(|cur| {
            let t = cur
                .spawn_on(lwkt_core::CpuId::new(0), |me| {
                    assert_eq!(run(me, 1000.0), 3.0 * (8.0 * 1000.0 + 28.0));
                })
                .unwrap();
            assert_eq!(run(cur, 1.0), 3.0 * (8.0 + 28.0));
            cur.join(&t);
        });
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests_x86_64 {
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

#[cfg(all(test, target_arch = "aarch64"))]
mod tests_aarch64 {
    use core::arch::asm;

    fn fpcr() -> u64 {
        let v: u64;
        // SAFETY: reads FPCR, readable at EL0.
        unsafe { asm!("mrs {}, fpcr", out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }

    fn set_fpcr(v: u64) {
        // SAFETY: writes a valid FPCR value (a rounding mode, no trap
        // enables, no reserved bits); the test restores the default
        // before the thread ends.
        unsafe { asm!("msr fpcr, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
    }

    /// FPCR's RMode field set to round toward zero.
    const TOWARD_ZERO: u64 = 0b11 << 22;

    #[test]
    fn each_thread_keeps_its_fpcr() {
        crate::Machine::new(1).unwrap().run(|cur| {
            let t = cur
                .spawn_on(lwkt_core::CpuId::new(0), |me| {
                    assert_eq!(fpcr(), 0, "a new thread starts with the default");
                    set_fpcr(TOWARD_ZERO);
                    me.yield_now();
                    assert_eq!(fpcr(), TOWARD_ZERO, "restored after the switch");
                    set_fpcr(0);
                })
                .unwrap();
            cur.yield_now(); // `t` changes FPCR and yields back
            assert_eq!(fpcr(), 0, "not the other thread's");
            cur.join(&t);
            assert_eq!(fpcr(), 0);
        });
    }
}
