//! `domsg` to a put-only port, inline: the handler runs in the sender's
//! call, on its thread, and when it replies there the message's state is
//! kept with plain stores (no read-modify-write, no sleep-queue look).
//! The general protocol takes over only when the handler lets the message
//! escape (forwards it to a queued port, hands its `MsgHandle` to another
//! thread, or keeps it).
//!
//! DragonFly: `lwkt_domsg()` on a port made by `lwkt_initport_putonly()`,
//! whose `mp_putport` handles the message synchronously and replies with
//! `lwkt_replymsg()`, which finds `MSGF_SYNC` and sets `MSGF_DONE` itself.
//!
//! The argument, in full in `docs/soundness.md` ("inline domsg"): the
//! sender marks the message `INLINE` and leaves its thread's
//! [`ParkToken`](lwkt_core::ParkToken) in the tag word; a reply made while
//! that thread is the one running on the replier's CPU
//! ([`MyCpu::runs`]) is that thread inside the handler's call or an
//! interrupt nested in it, so nothing of the sender runs between its load
//! and its store of the flags word, and a plain store completes the
//! message (`Header::complete_inline_if`). Any other reply is the general
//! `complete`; the sender, finding the message not done once the handler
//! returns, first leaves the inline protocol with a read-modify-write
//! (`Header::leave_inline`), then waits as every `domsg` does.

use core::pin::Pin;

use lwkt_core::{abort_on_unwind, Cur, MyCpu};

use super::{Kind, Port, PutFn};
use crate::{Msg, MsgError, MsgHandle};

impl<T: Send + 'static> Port<T> {
    /// [`Port::domsg`]: inline to a put-only port, the general way to the
    /// others. Inlined into the caller, so a `static` port's `domsg`
    /// reaches the inline path without a call. (`do_domsg`, which
    /// `PortRef::domsg` calls, starts with the same test.)
    #[track_caller]
    #[inline]
    pub(crate) fn domsg_dispatch(
        &self,
        cur: &mut Cur,
        msg: Pin<&mut Msg<T>>,
    ) -> Result<(), MsgError> {
        match self.kind {
            Kind::PutOnly(handler) => domsg_inline(handler, cur, msg),
            _ => self.do_domsg(cur, msg),
        }
    }
}

/// `domsg` to a put-only port whose handler is `handler`: send `msg`
/// inline, run the handler in this call, and return the reply's result.
/// What a put to the port would check (`check_put`) holds for every
/// put-only port.
///
/// # Panics
/// If `msg` is in flight or its reply still sits on its reply port. A
/// panic in the handler aborts, as for every put ([`PutFn`]).
#[track_caller]
#[inline(always)]
pub(super) fn domsg_inline<T: Send + 'static>(
    handler: PutFn<T>,
    cur: &mut Cur,
    msg: Pin<&mut Msg<T>>,
) -> Result<(), MsgError> {
    msg.hdr.begin_inline();
    let m = msg.as_raw();
    // SAFETY: we are the originator, just after the send began and before
    // the handler (the send) has the message; the caller's pinned borrow
    // keeps it alive for this whole call.
    let tag = unsafe { Msg::park_tag(m, cur.park_token()) };
    let my = cur.my_cpu();
    // SAFETY: the message is in flight and handed over: the handler owns
    // it as its target until it replies or forwards it.
    let h = unsafe { MsgHandle::from_raw(m) };
    // The handler runs on the port's behalf: a panic in it aborts, so the
    // message it holds is never left in flight by an unwind through us.
    abort_on_unwind("a put-only port's handler", || handler(my, h));
    // SAFETY: live (the pinned borrow); we touch its atomic header only.
    let hdr = unsafe { &(*m).hdr };
    if !hdr.is_done_inline() {
        escaped(cur, m);
    }
    // SAFETY: done: the originator owns the message again; the target
    // touches nothing of it after `DONE`.
    unsafe {
        Msg::unpark_tag(m, tag);
        MsgError::decode(hdr.code())
    }
}

/// The handler returned without completing the message on this thread (it
/// forwarded it to a queued port, handed its handle to another thread, or
/// kept it; or the reply was made on another CPU): leave the inline
/// protocol, then wait for the reply as the general `domsg` does. Returns
/// once the message is done.
#[cold]
#[inline(never)]
fn escaped<T: Send + 'static>(cur: &mut Cur, m: *mut Msg<T>) {
    // SAFETY: the caller's pinned borrow keeps the message alive; we touch
    // its atomic header only.
    let hdr = unsafe { &(*m).hdr };
    if !hdr.leave_inline() {
        // No longer `INLINE`: the reply is the general `complete`, which
        // sees `WAITING` and wakes the message's address.
        cur.sleep_until(m as usize, || hdr.prepare_wait());
    }
}

/// A reply (`MsgHandle::reply`, the code already stored): complete `m`
/// with a plain store if it is `INLINE` and its originator's thread runs
/// here (the handler's own reply, or an interrupt nested in that thread);
/// `false`, having touched nothing, otherwise.
#[inline(always)]
pub(crate) fn complete_inline<T: Send + 'static>(my: MyCpu<'_>, m: *mut Msg<T>) -> bool {
    // SAFETY: the caller owns the message as its target: it is live.
    let hdr = unsafe { &(*m).hdr };
    hdr.complete_inline_if(|| {
        // SAFETY: `INLINE` is set, so the tag word carries the waiting
        // originator's token (`domsg_inline`), which it keeps until the
        // message is done; we own the message, before its completion.
        my.runs(unsafe { Msg::parked_waiter(m) })
    })
}
