//! The timed waits of ports and messages: `waitport` and `domsg` with a
//! timeout, and the timed wait for one message. Kept apart from the
//! untimed paths (`port.rs`), which they mirror, so that those stay as
//! they are (the `domsg` instruction-count gate).
//!
//! DragonFly: `lwkt_waitport(port, flags)` and `lwkt_waitmsg(msg, flags)`
//! sleep with `tsleep`'s `timo` in their loops; a timed-out `lwkt_domsg`
//! is `lwkt_waitmsg` timing out, then `lwkt_abortmsg`, then a wait for
//! the reply (`lwkt_thread_waitmsg`'s "waitabt" sleep).

use core::pin::Pin;
use core::time::Duration;

use lwkt_core::{Cur, MyCpu, TimedOut};

use super::{Kind, Port};
use crate::header::{f, Header};
use crate::{Incoming, Msg, MsgError};

/// A deadline on the backend's clock ([`MyCpu::clock`]), in nanoseconds:
/// one deadline for a whole wait, however many times the waiter is woken
/// before it ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline(u64);

impl Deadline {
    /// `d` from now (saturating: a huge `d` is a deadline that never
    /// comes).
    ///
    /// # Panics
    /// If the backend has no clock.
    #[track_caller]
    pub(crate) fn after(my: MyCpu<'_>, d: Duration) -> Deadline {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Deadline(now(my).saturating_add(ns))
    }

    /// The time left, or `None` once the deadline has passed (a zero
    /// timeout has passed at once: its wait is one look).
    #[track_caller]
    pub(crate) fn remaining(self, my: MyCpu<'_>) -> Option<Duration> {
        let now = now(my);
        (now < self.0).then(|| Duration::from_nanos(self.0 - now))
    }
}

#[track_caller]
fn now(my: MyCpu<'_>) -> u64 {
    my.clock().unwrap_or_else(|| no_clock())
}

#[cold]
#[inline(never)]
#[track_caller]
fn no_clock() -> ! {
    panic!(
        "lwkt-msg: a timed wait needs a clock, and this backend has none \
         (rule: waitport_timeout, domsg_timeout, Msg::wait_timeout and \
         block_on_timeout need Arch::clock to return Some)"
    )
}

/// Sleep on the message `m` (its address is the channel, as `domsg` and
/// `Msg::wait` sleep) until it is done or `deadline` passes. A reply that
/// lands as the time runs out wins: the message is looked at once more.
pub(crate) fn sleep_done_until(
    cur: &mut Cur,
    m: usize,
    hdr: &Header,
    deadline: Deadline,
) -> Result<(), TimedOut> {
    match deadline.remaining(cur.my_cpu()) {
        None => {
            if hdr.is_done() {
                Ok(())
            } else {
                Err(TimedOut)
            }
        }
        Some(left) => cur.sleep_until_timeout(m, left, || hdr.prepare_wait()),
    }
}

impl<T: Send + 'static> Port<T> {
    /// `waitport` with a deadline (`Port::waitport_timeout`).
    #[track_caller]
    pub(crate) fn do_waitport_timeout(
        &self,
        cur: &mut Cur,
        timeout: Duration,
    ) -> Result<Incoming<T>, TimedOut> {
        self.check_receiver(cur);
        let deadline = Deadline::after(cur.my_cpu(), timeout);
        if let Kind::Thread(_) = self.kind {
            return self.thread_waitport_until(cur, deadline);
        }
        loop {
            if let Some(x) = self.do_getport(cur) {
                return Ok(x);
            }
            if self.with_inner(cur.my_cpu(), |inner| inner.closed) {
                // Take what arrived before the close, if anything.
                return Ok(self.do_getport(cur).unwrap_or(Incoming::Closed));
            }
            let Some(left) = deadline.remaining(cur.my_cpu()) else {
                return Err(TimedOut);
            };
            self.sleep_on_within(cur, Some(left), |inner| !inner.q.is_empty() || inner.closed);
        }
    }

    /// `thread_waitport` with a deadline: the same loop (look, watch,
    /// block), blocking with [`Cur::block_timeout`] for the time left.
    #[track_caller]
    fn thread_waitport_until(
        &self,
        cur: &mut Cur,
        deadline: Deadline,
    ) -> Result<Incoming<T>, TimedOut> {
        self.owner_wait(cur, Some(deadline))
    }

    /// `Msg::wait_timeout` of a message whose reply goes to this port's
    /// queue: wait for the reply to `m` and take it, or time out (the
    /// message then stays in flight, or its reply queued).
    #[track_caller]
    pub(crate) fn wait_reply_until(
        &self,
        cur: &mut Cur,
        m: *mut Msg<T>,
        deadline: Deadline,
    ) -> Result<(), TimedOut> {
        self.check_receiver(cur);
        // SAFETY: the caller's pinned borrow keeps `m` alive.
        let hdr = unsafe { &(*m).hdr };
        loop {
            let got = self.with_inner(cur.my_cpu(), |inner| {
                hdr.is_queued_reply() && inner.q.remove(m as *mut Header)
            });
            if got {
                hdr.take_reply();
                return Ok(());
            }
            if hdr.is_done() {
                return Ok(());
            }
            let Some(left) = deadline.remaining(cur.my_cpu()) else {
                return Err(TimedOut);
            };
            self.sleep_on_within(cur, Some(left), |inner| {
                hdr.is_queued_reply() || hdr.is_done() || inner.closed
            });
        }
    }

    /// `domsg` with a timeout (`Port::domsg_timeout`): send, sleep on the
    /// message until its reply or the deadline; past the deadline, abort
    /// it (an abortable message) and wait for the reply the abort brings,
    /// or (a message that cannot be aborted) return with it in flight.
    #[track_caller]
    pub(crate) fn do_domsg_timeout(
        &self,
        cur: &mut Cur,
        msg: Pin<&mut Msg<T>>,
        timeout: Duration,
    ) -> Result<Result<(), MsgError>, TimedOut> {
        self.check_put(cur.my_cpu());
        if let Kind::Thread(owner) = &self.kind {
            assert!(
                !cur.is(owner),
                "lwkt-msg: domsg_timeout to the caller's own thread port would \
                 wait forever (rule: a thread cannot receive while it waits)"
            );
        }
        // Before the send: a backend without a clock panics here, with the
        // message still ours (a panic with it in flight would abort).
        let deadline = Deadline::after(cur.my_cpu(), timeout);
        msg.hdr.begin_send(true);
        let m = msg.as_raw();
        // SAFETY: the caller's pinned borrow keeps the message alive for
        // this whole call (and, if we return it in flight, the message's
        // own drop check keeps it alive until its reply); we touch only
        // its atomic header here.
        let hdr = unsafe { &(*m).hdr };
        // The general put: never parked (`f::PARKED`), whose flags word
        // only its owner may write, so an abort may always set its bit.
        self.put(cur.my_cpu(), m);
        if sleep_done_until(cur, m as usize, hdr, deadline).is_err() {
            if hdr.flags() & f::ABORTABLE == 0 {
                // The target still holds it: the caller keeps it pinned
                // and waits for it (`Msg::wait`); dropping it in flight
                // aborts the process, so its memory is never reused
                // under the target.
                return Err(TimedOut);
            }
            // DragonFly `lwkt_abortmsg`, then the "waitabt" sleep: the
            // abort is a request, and exactly one reply still comes (the
            // port replies `Aborted` to a message it had not handed out;
            // a handler holding it sees `abort_requested`). `false` means
            // the reply is made already: the wait below ends at once.
            let _ = hdr.request_abort();
            cur.sleep_until(m as usize, || hdr.prepare_wait());
        }
        // SAFETY: done: the originator owns the message again.
        Ok(MsgError::decode(unsafe { hdr.code() }))
    }
}
