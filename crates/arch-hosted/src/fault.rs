//! Stack-overflow reports: a SIGSEGV/SIGBUS handler (on the alternate signal
//! stack that std gives every thread it spawns) that recognises a fault in
//! the guard page of the running LWKT thread, says so by name, and aborts.
//! Any other fault goes to the handler that was there before.
//!
//! Nothing here is per architecture: the fault address is the siginfo's
//! `si_addr` (the kernel fills it from CR2 on x86-64, from FAR_EL1 on
//! AArch64), and the handler reads no register from the `ucontext` (the
//! running thread's stack comes from its vCPU's block, not from the
//! interrupted sp).

use core::cell::UnsafeCell;
use std::sync::Once;

use crate::vcpu::current_cpu_block;

struct OldActions(UnsafeCell<[libc::sigaction; 2]>);
// SAFETY: written once under `INSTALL` before the handler can run, then only read.
unsafe impl Sync for OldActions {}

static INSTALL: Once = Once::new();
// SAFETY: an all-zero `sigaction` is a valid value (SIG_DFL, empty mask).
static OLD: OldActions = OldActions(UnsafeCell::new(unsafe { core::mem::zeroed() }));

pub(crate) fn install() {
    INSTALL.call_once(|| {
        for (i, sig) in [libc::SIGSEGV, libc::SIGBUS].into_iter().enumerate() {
            // SAFETY: installing a handler with a valid, zero-initialised
            // sigaction; OLD is written before any fault can reach `handler`.
            unsafe {
                let mut sa: libc::sigaction = core::mem::zeroed();
                sa.sa_sigaction = handler as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut sa.sa_mask);
                let old = &mut (*OLD.0.get())[i];
                libc::sigaction(sig, &sa, old);
            }
        }
    });
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    if let Some(cpu) = current_cpu_block() {
        // SAFETY: the fault handler runs on the vCPU thread of `cpu`.
        if let Some((stack, name)) = unsafe { cpu.current_stack() } {
            if crate::stack::in_guard(&stack, addr) {
                let mut buf = [0u8; 256];
                let msg = format_overflow(&mut buf, name, cpu.id().get());
                // SAFETY: write(2) and abort(3) are async-signal-safe.
                unsafe {
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::abort();
                }
            }
        }
    }
    let i = usize::from(sig == libc::SIGBUS);
    // SAFETY: OLD was filled by `install` before this handler was set.
    let old = unsafe { &(*OLD.0.get())[i] };
    if old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
        // SAFETY: restore the default action and return: the fault repeats
        // and the process dies with the signal, as it would have without us.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    } else if old.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler expects exactly these arguments.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { core::mem::transmute(old.sa_sigaction) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { core::mem::transmute(old.sa_sigaction) };
        f(sig);
    }
}

/// "lwkt: thread 'NAME' on cpu N overflowed its stack" without allocating.
fn format_overflow<'a>(buf: &'a mut [u8; 256], name: &str, cpu: u32) -> &'a [u8] {
    let mut n = 0;
    let mut put = |s: &[u8]| {
        let k = s.len().min(buf.len() - n);
        buf[n..n + k].copy_from_slice(&s[..k]);
        n += k;
    };
    put(b"\nlwkt: thread '");
    put(name.as_bytes());
    put(b"' on cpu ");
    let mut digits = [0u8; 10];
    let mut d = digits.len();
    let mut v = cpu;
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    put(&digits[d..]);
    put(b" overflowed its stack (guard page hit); aborting\n");
    &buf[..n]
}
