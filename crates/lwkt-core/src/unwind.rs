//! What happens when code that lwkt calls back panics: one policy for every
//! callback.
//!
//! - **Thread context may unwind.** A panic in code a thread runs (its body
//!   below any frame of lwkt's, a token closure, a `sleep_until` condition,
//!   a `watch_until` test) unwinds through lwkt's frames, which restore what
//!   they changed on the way out (a token closure's hold is popped and the
//!   token released), so a `catch_unwind` in the thread leaves it sound.
//! - **Interrupt context aborts.** A panic in an IPI function, a `cpusync`
//!   function, a port function run by IPI, or anything else lwkt runs on a
//!   CPU on behalf of another, aborts (the kernel's panic, or the process
//!   on the hosted backend). Unwinding there would leave the CPU half way
//!   through its IPI rings, and another CPU waiting on a descriptor that the
//!   unwind just freed (a `cpusync` master's stack frame).
//! - **A thread body's own panic aborts too**: there is nothing above its
//!   first frame to unwind into. Catch it inside the body to keep the thread.
//!
//! DragonFly has no unwinding; its `panic()` stops the machine, which is
//! what the second and third rules amount to.

/// Run `f`; if it panics, abort instead of unwinding, naming `what` ("an
/// IPI function") in the message. Free when `f` returns normally.
///
/// lwkt runs every interrupt-context callback through this; crates built on
/// lwkt (lwkt-msg's port functions) do the same.
///
/// ```
/// let n = lwkt_core::abort_on_unwind("a callback", || 1 + 1);
/// assert_eq!(n, 2);
/// ```
#[inline(always)]
pub fn abort_on_unwind<R>(what: &'static str, f: impl FnOnce() -> R) -> R {
    let bomb = AbortOnUnwind(what);
    let r = f();
    core::mem::forget(bomb);
    r
}

/// Panics when dropped, which during an unwind aborts (a panic while
/// panicking cannot unwind).
struct AbortOnUnwind(&'static str);

impl Drop for AbortOnUnwind {
    #[cold]
    fn drop(&mut self) {
        panic!(
            "lwkt: {} panicked; a panic cannot unwind out of interrupt context or a \
             thread's first frame (aborting)",
            self.0
        );
    }
}
