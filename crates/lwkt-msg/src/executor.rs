//! Running async code on an LWKT thread.

use alloc::sync::Arc;
use alloc::task::Wake;
use core::future::Future;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

use lwkt_core::{Cur, MyCpu, ThreadHandle, TimedOut};

use crate::port::Deadline;

/// Run the async closure `f` to completion on the calling LWKT thread,
/// descheduling the thread while the future is pending; its waker makes the
/// thread runnable again from any context of the machine
/// ([`ThreadHandle::wake`]). `f` gets the current CPU, to send messages
/// with ([`Port::call`](crate::Port::call)); the thread stays on its CPU
/// until `block_on` returns. A future woken while it was polled is polled
/// again after a [`Cur::yield_now`] (DragonFly's `lwkt_yield`), so that
/// what it waits for can run, even on a vCPU sharing this one's host
/// thread.
///
/// ```
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let cpu = lwkt_msg::block_on(cur, async |my| my.id().get());
///     assert_eq!(cpu, 0);
/// });
/// ```
pub fn block_on<F, R>(cur: &mut Cur, f: F) -> R
where
    F: for<'m> AsyncFnOnce(MyCpu<'m>) -> R,
{
    // SAFETY: the thread cannot migrate while we hold `&mut Cur` and only
    // block (never migrate) below; `my` goes only to `f`'s future, which
    // ends before we return, and `MyCpu` is not `Send`.
    let my = unsafe { cur.my_cpu_unbound() };
    let fut = f(my);
    let mut fut = core::pin::pin!(fut);
    let w = Arc::new(ThreadWaker {
        woken: AtomicBool::new(false),
        td: cur.handle(),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        cur.crit_enter();
        if !w.woken.swap(false, Ordering::AcqRel) {
            // A wake from here on is deferred by the critical section (or
            // comes by IPI) and schedules us again after the switch.
            cur.deschedule_self();
            cur.switch();
            cur.crit_exit();
        } else {
            woken_while_polled(cur);
        }
    }
}

/// [`block_on`] for at most `timeout`: run the async closure `f` on the
/// calling LWKT thread until it completes (`Ok` with its value) or the
/// timeout passes (`Err(TimedOut)`, and the future is dropped unfinished).
/// The way to bound a [`ReplyFuture`](crate::ReplyFuture): lwkt-core's
/// timers wake threads, not wakers, so the bound belongs to the executor,
/// as `tsleep`'s `timo` belongs to the sleep. DragonFly has no executor;
/// the wait is `lwkt_waitmsg()` with a `timo`.
///
/// The future is polled once more after the timer's wake-up, so a reply
/// that lands at the timeout wins; `Err(TimedOut)` is never early. A zero
/// timeout polls once; a huge one never times out.
///
/// Dropping a `ReplyFuture` does not cancel its message: after a timeout,
/// a message the future awaited is **still in flight**, pinned where it
/// is, and must be waited for ([`Msg::wait`](crate::Msg::wait)) before it
/// is reused, or aborted first if it is abortable
/// ([`Msg::abort`](crate::Msg::abort)); dropping it in flight aborts the
/// process.
///
/// ```
/// use core::pin::pin;
/// use std::time::Duration;
/// use lwkt_msg::{Msg, Port};
///
/// static NOBODY: Port<u8> = Port::spin(); // nobody receives here
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let mut m = pin!(Msg::new(1u8).abortable());
///     let r = lwkt_msg::block_on_timeout(cur, Duration::from_millis(1), async |my| {
///         NOBODY.call(my, m.as_mut()).await
///     });
///     assert_eq!(r, Err(lwkt_core::TimedOut));
///     // Still in flight: abort it, and take it back from the port.
///     assert!(m.abort());
///     assert!(NOBODY.getport(cur).is_none()); // the port replied `Aborted` itself
///     assert_eq!(m.as_mut().wait(cur), Err(lwkt_msg::MsgError::Aborted));
/// });
/// ```
///
/// # Panics
/// If the backend has no clock ([`Arch::clock`](lwkt_core::Arch::clock)).
#[track_caller]
pub fn block_on_timeout<F, R>(
    cur: &mut Cur,
    timeout: core::time::Duration,
    f: F,
) -> Result<R, TimedOut>
where
    F: for<'m> AsyncFnOnce(MyCpu<'m>) -> R,
{
    let deadline = Deadline::after(cur.my_cpu(), timeout);
    // SAFETY: as in `block_on`: the thread only blocks below, never
    // migrates; `my` goes only to `f`'s future, which ends (is dropped, on
    // a timeout) before we return, and `MyCpu` is not `Send`.
    let my = unsafe { cur.my_cpu_unbound() };
    let fut = f(my);
    let mut fut = core::pin::pin!(fut);
    let w = Arc::new(ThreadWaker {
        woken: AtomicBool::new(false),
        td: cur.handle(),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        cur.crit_enter();
        if !w.woken.swap(false, Ordering::AcqRel) {
            let Some(left) = deadline.remaining(cur.my_cpu()) else {
                cur.crit_exit();
                return Err(TimedOut);
            };
            // A wake from here on is deferred by the critical section (or
            // comes by IPI) and schedules us again; so does the timer.
            let _ = cur.block_timeout(left);
            cur.crit_exit();
        } else {
            woken_while_polled(cur);
        }
    }
}

/// The future was woken while it was polled (entered in a critical
/// section): yield before polling it again (DragonFly's `lwkt_yield`), so
/// that whatever it waits for can run, other threads of this CPU or, on a
/// host thread shared by several vCPUs, a sibling vCPU
/// ([`Arch::yield_point`](lwkt_core::Arch::yield_point)). A
/// [`ReplyFuture`](crate::ReplyFuture) whose reply is between its two
/// phases wakes itself and relies on this to let the replier finish.
fn woken_while_polled(cur: &mut Cur) {
    cur.crit_exit();
    cur.yield_now();
}

struct ThreadWaker {
    woken: AtomicBool,
    td: ThreadHandle,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.td.wake();
    }
}
