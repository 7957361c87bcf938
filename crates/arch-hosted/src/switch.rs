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
//!
//! With the cargo feature `asan` (for `-Zsanitizer=address` builds only),
//! each switch also tells AddressSanitizer which stack takes over (see
//! `asan`); without it the switch is the asm alone.

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
);

#[cfg(not(feature = "asan"))]
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
#[cfg(feature = "asan")]
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

extern "sysv64" {
    /// Saves the stack pointer at `from`, loads it from `to`; `_arch` is
    /// not used (see the asm).
    fn lwkt_hosted_switch(_arch: *const (), from: *const usize, to: *const usize);
    fn lwkt_hosted_trampoline();
}

/// `Context` word holding the saved stack pointer (the asm's `[rsi]`/`[rdx]`).
const SP: usize = 0;

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
    ctx.words[SP].set(sp);
    #[cfg(feature = "asan")]
    {
        ctx.words[asan::BOTTOM].set(stack.base.as_ptr() as usize);
        ctx.words[asan::SIZE].set(stack.len);
        ctx.words[asan::FAKE_SLOT].set(crate::stack::fake_stack_slot(&stack) as usize);
    }
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
