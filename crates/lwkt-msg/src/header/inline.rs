//! The inline `domsg` of a put-only port (`f::INLINE`): the transitions of
//! a message whose sender waits inside the handler's call, on its own
//! thread.
//!
//! ```text
//!          begin_inline: SYNC|INLINE (plain)      handler(my, handle)
//!   DONE ───────────────────────────────▶ (in flight, INLINE) ───────────┐
//!    ▲                                           │                        │
//!    │ complete_inline_if: REPLY|DONE (plain) ◀──┘ reply on the sender's  │
//!    │   thread (or an interrupt nested in it)                           │
//!    │                                                                    │
//!    │ complete (RMW, general)      leave_inline (RMW), then the general │
//!    └──────────────────────────── protocol: prepare_wait, sleep ◀───────┘
//!                                   (the handler let the message escape)
//! ```
//!
//! Why the plain stores are enough (docs/soundness.md, "inline domsg"):
//! while `INLINE` is set the word has two writers only. The message's
//! owner (the target, one at a time by the ownership rule; no aborter and
//! no future can reach the message, since `domsg` holds its only borrow)
//! and the originator, which writes it only after the handler's call has
//! returned, and then only with read-modify-writes (`leave_inline`). A
//! reply made while the originator's thread is the one running on the
//! replier's CPU (`MyCpu::runs`) is that thread itself, inside the
//! handler's call, or an interrupt nested in it: in both cases the
//! originator cannot touch the word between the replier's load and its
//! store (it is the same thread, or it is interrupted), so a plain store
//! loses nothing. Every other reply uses the general `complete`, and the
//! originator, finding the message not done when the handler returns,
//! leaves the inline protocol with one RMW before it waits as any `domsg`
//! does.

use super::{f, Header};
use crate::sync::Ordering;

impl Header {
    /// Originator, `domsg` to a put-only port: start the send, inline.
    /// A plain store, as [`begin_send`](Header::begin_send).
    ///
    /// # Panics
    /// If the message is in flight or its reply still sits on its reply
    /// port.
    #[inline(always)]
    #[track_caller]
    pub(crate) fn begin_inline(&self) {
        self.begin(f::SYNC | f::INLINE);
    }

    /// Target, replying: if the message is `INLINE` and
    /// `originator_runs()` says the originator's thread is the one running
    /// here, complete it (`REPLY|DONE`, `INLINE` cleared) with a plain
    /// Release store and return `true`; otherwise touch nothing and return
    /// `false` (the caller completes it the general way).
    /// `originator_runs` is called only when `INLINE` is set (the tag word
    /// then carries the originator's token).
    #[inline(always)]
    pub(crate) fn complete_inline_if(&self, originator_runs: impl FnOnce() -> bool) -> bool {
        let cur = self.flags.load(Ordering::Relaxed);
        if cur & f::INLINE == 0 || !originator_runs() {
            return false;
        }
        debug_assert!(cur & (f::DONE | f::REPLY | f::QUEUED | f::WAITING | f::WAKER) == 0);
        self.flags
            .store((cur & !f::INLINE) | f::REPLY | f::DONE, Ordering::Release);
        true
    }

    /// Whether the message is done and out of the inline protocol (the
    /// originator's look when the handler returns; Acquire: the reply's
    /// code and body are the originator's).
    #[inline(always)]
    pub(crate) fn is_done_inline(&self) -> bool {
        self.flags.load(Ordering::Acquire) & (f::DONE | f::INLINE) == f::DONE
    }

    /// Originator, the handler returned and the message is not
    /// `is_done_inline`: leave the inline protocol (clear `INLINE` with a
    /// read-modify-write, so no reply's update is lost) and return whether
    /// the message is done. From here on every reply completes it the
    /// general way.
    #[inline]
    pub(crate) fn leave_inline(&self) -> bool {
        self.flags.fetch_and(!f::INLINE, Ordering::AcqRel) & f::DONE != 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::{code, f, Header};

    #[test]
    fn an_inline_send_replied_on_the_senders_thread() {
        let h = Header::new(0);
        h.set_abortable();
        h.begin_inline();
        assert_eq!(h.flags(), f::ABORTABLE | f::SYNC | f::INLINE);
        assert!(!h.is_done_inline());
        // SAFETY: the target owns the message until its reply.
        unsafe { h.set_code(5) };
        assert!(h.complete_inline_if(|| true));
        assert_eq!(h.flags(), f::ABORTABLE | f::SYNC | f::REPLY | f::DONE);
        assert!(h.is_done_inline());
        // SAFETY: done: the originator's.
        assert_eq!(unsafe { h.code() }, 5);
        // Reusable, and a past abort request does not survive a send.
        h.begin_send(true);
        assert!(h.request_abort());
        let mut called = false;
        // Not inline: the check is not even asked.
        assert!(!h.complete_inline_if(|| {
            called = true;
            true
        }));
        assert!(!called);
        assert!(!h.complete(|| {}));
        h.begin_inline();
        assert_eq!(h.flags() & (f::ABORTREQ | f::INLINE), f::INLINE);
        // SAFETY: as above.
        unsafe { h.set_code(code::OK) };
        assert!(h.complete_inline_if(|| true));
    }

    #[test]
    fn an_escaped_inline_send_falls_back_to_the_general_protocol() {
        let h = Header::new(0);
        h.begin_inline();
        // Replied elsewhere: refused, then the general completion, which
        // keeps `INLINE` for the sender to clear.
        assert!(!h.complete_inline_if(|| false));
        assert!(!h.complete(|| {}));
        assert!(!h.is_done_inline());
        assert!(h.leave_inline());
        assert!(h.is_done_inline());
        assert_eq!(h.flags() & f::INLINE, 0);
        // Not replied yet when the sender looks: it leaves, then waits.
        h.begin_inline();
        assert!(!h.leave_inline());
        assert!(!h.prepare_wait());
        assert!(!h.complete_inline_if(|| true), "not INLINE any more");
        assert!(h.complete(|| {}), "the sender waits: wake it");
        assert!(h.is_done_inline());
    }

    #[test]
    #[should_panic(expected = "already in flight")]
    fn an_inline_send_of_a_message_in_flight_panics() {
        let h = Header::new(0);
        h.begin_inline();
        h.begin_inline();
    }
}
