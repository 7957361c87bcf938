//! Awaiting a reply from async code.

use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::task::{Context, Poll};

use crate::header::Armed;
use crate::{Msg, MsgError};

/// The reply to a message sent with [`Port::call`](crate::Port::call), as a
/// future. It resolves to the reply's result; the message is the caller's
/// again afterwards.
///
/// # Where the waker runs
///
/// The reply wakes the waker of the last poll in the replier's context, on
/// the replier's CPU: a thread, or **interrupt context** when the reply is
/// made by an IPI function (a handler the target runs there, or lwkt-msg
/// refusing the message on a closed port's CPU). So the waker must do only
/// what an [`IpiFn`](lwkt_core::IpiFn) may: not block, not take a lock the
/// interrupted code may hold. A panic in it aborts (it runs on the
/// message's behalf, half way through the reply; see
/// [`abort_on_unwind`](lwkt_core::abort_on_unwind)). The waker of
/// [`block_on`](crate::block_on) qualifies: it stores a flag and makes a
/// thread runnable.
///
/// Dropping the future before the reply does not cancel the message (the
/// message itself must still outlive its reply, see [`Msg`]); it takes its
/// waker back, so a later reply wakes nothing.
///
/// To bound the wait, run it with
/// [`block_on_timeout`](crate::block_on_timeout) (`alloc` feature): the
/// future is then dropped at the timeout, its message left in flight to be
/// waited for ([`Msg::wait`], [`Msg::wait_timeout`]) or aborted first.
///
/// ```
/// use core::pin::pin;
/// use lwkt_msg::{Msg, MsgHandle, Port};
///
/// fn echo(my: lwkt_core::MyCpu<'_>, m: MsgHandle<u8>) { m.reply(my, Ok(())) }
/// static ECHO: Port<u8> = Port::put_only(echo);
///
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let mut m = pin!(Msg::new(7u8));
///     let r = lwkt_msg::block_on(cur, async |my| ECHO.call(my, m.as_mut()).await);
///     assert_eq!(r, Ok(()));
///     assert_eq!(*m.body(), 7);
/// });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct ReplyFuture<'a, T: Send + 'static> {
    m: *mut Msg<T>,
    _msg: PhantomData<&'a mut Msg<T>>,
}

// SAFETY: polling touches only the message's atomic header and waker slot;
// the body (`T: Send`) is read by nobody through the future.
unsafe impl<T: Send + 'static> Send for ReplyFuture<'_, T> {}

impl<T: Send + 'static> ReplyFuture<'_, T> {
    /// # Safety
    /// `m` is a pinned message borrowed for the future's lifetime, just sent
    /// with `SYNC`.
    pub(crate) unsafe fn new(m: *mut Msg<T>) -> Self {
        ReplyFuture {
            m,
            _msg: PhantomData,
        }
    }
}

impl<T: Send + 'static> Future for ReplyFuture<'_, T> {
    type Output = Result<(), MsgError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: the message is pinned and borrowed by us for 'a.
        let msg = unsafe { &*self.m };
        if !msg.hdr.is_done() {
            msg.waker.register(cx.waker());
            match msg.hdr.arm_waker() {
                Armed::Done => {}
                Armed::Pending => return Poll::Pending,
                Armed::Replying => {
                    // The replier is waking an earlier waker and then sets
                    // DONE: ask to be polled again rather than spin for it
                    // (see `Header::arm_waker`).
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(msg.result())
    }
}

impl<T: Send + 'static> Drop for ReplyFuture<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the message is borrowed by us until the end of this drop.
        // `AtomicWaker::take` races `wake` safely: one of them gets it.
        let msg = unsafe { &*self.m };
        drop(msg.waker.take());
    }
}

impl<T: Send + 'static> core::fmt::Debug for ReplyFuture<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // SAFETY: as in `poll`.
        let done = unsafe { (*self.m).is_done() };
        f.debug_struct("ReplyFuture").field("done", &done).finish()
    }
}
