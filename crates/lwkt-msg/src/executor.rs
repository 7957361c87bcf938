//! Running async code on an LWKT thread.

use alloc::sync::Arc;
use alloc::task::Wake;
use core::future::Future;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Poll, Waker};

use lwkt_core::{Cur, MyCpu, ThreadHandle};

/// Run the async closure `f` to completion on the calling LWKT thread,
/// descheduling the thread while the future is pending; its waker makes the
/// thread runnable again from any context of the machine
/// ([`ThreadHandle::wake`]). `f` gets the current CPU, to send messages
/// with ([`Port::call`](crate::Port::call)); the thread stays on its CPU
/// until `block_on` returns.
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
        }
        cur.crit_exit();
    }
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
