//! Messages: an intrusive header plus the caller's body, owned in turn by
//! the originator and the target.
//!
//! DragonFly: `struct lwkt_msg`, `lwkt_initmsg()`, `lwkt_checkmsg()`,
//! `lwkt_abortmsg()`, `lwkt_waitmsg()`.

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomPinned;
use core::pin::Pin;
use core::ptr::NonNull;

use atomic_waker::AtomicWaker;
use core::time::Duration;

use lwkt_core::{Cur, ParkToken, TimedOut};

use crate::header::{f, Header};
use crate::port::{sleep_done_until, Deadline};
use crate::{AsPort, MsgError, Port};

/// A message: a header the ports use, a reply port, and a body of type `T`
/// that its current owner reads and writes.
///
/// Sending takes `Pin<&mut Msg<T>>`: the message stays where it is until
/// its reply (ports link it in place; nothing is allocated), and its body is
/// out of the originator's reach meanwhile ([`body`](Self::body) and
/// [`body_mut`](Self::body_mut) panic while it is in flight). A message
/// dropped while in flight **aborts the process** with a message naming the
/// rule, rather than letting the target write freed memory: keep a sent
/// message alive until its reply.
///
/// A `Msg` is aligned to, and sized in, whole 64-byte cache lines, so that
/// the CPU serving it never shares a line with what its originator writes
/// meanwhile. The header, reply port, tag and waker take 56 bytes: a body of
/// up to 8 bytes fits in one line.
///
/// A message carries a **tag** (a `u64`, 0 unless set) that its replies
/// repeat ([`Replied::tag`]): a client with many messages in flight on one
/// reply port tags each (an index into its window, say) and learns which
/// one a reply answers without a search. Only the originator sets it
/// ([`with_tag`](Self::with_tag), [`set_tag`](Self::set_tag)); ports and
/// targets never change it.
///
/// DragonFly: `struct lwkt_msg`; [`Msg::new`] is `lwkt_initmsg()`.
///
/// ```
/// use core::pin::pin;
/// use lwkt_msg::{Msg, MsgHandle, Port};
///
/// fn double(my: lwkt_core::MyCpu<'_>, mut m: MsgHandle<u64>) {
///     *m *= 2;
///     m.reply(my, Ok(()));
/// }
/// static DOUBLER: Port<u64> = Port::put_only(double);
///
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let mut m = pin!(Msg::new(21u64));
///     DOUBLER.domsg(cur, m.as_mut()).unwrap();
///     assert_eq!(*m.body(), 42);
/// });
/// ```
// Cache-line aligned (so sized in whole lines): a message travels between
// CPUs, and must not share a line with what its owner writes meanwhile (its
// stack frame, the next message of an array). 64 messages in flight
// unaligned: 0.20 against 0.17 us per request (`msg_async`, scratch loop).
#[repr(C, align(64))]
pub struct Msg<T: Send + 'static> {
    pub(crate) hdr: Header,
    /// A `'static` port, or a counted one this message holds a count on
    /// (given up when the message drops or changes port).
    reply_port: Option<NonNull<Port<T>>>,
    /// Written only by the originator while it owns the message (`DONE`),
    /// read by anyone: nobody writes it while the message is in flight.
    /// The `waiter` variant only while a same-CPU `domsg` waits, or a
    /// `domsg` to a put-only port runs its handler (`park_tag`).
    tag: TagWord,
    pub(crate) waker: AtomicWaker,
    body: UnsafeCell<T>,
    _pin: PhantomPinned,
}

// SAFETY: the body moves between threads with the message's ownership (the
// target may run on another CPU), so `T: Send` suffices to send a message;
// a `Msg` is only shared with the target through raw pointers while its
// originator's access is fenced off by the `DONE` checks.
unsafe impl<T: Send + 'static> Send for Msg<T> {}

impl<T: Send + 'static> Msg<T> {
    /// A message with body `body` and no reply port: its reply completes it
    /// in place and wakes whoever waits for it ([`Msg::wait`],
    /// [`Port::domsg`], a [`ReplyFuture`](crate::ReplyFuture)).
    /// DragonFly: `lwkt_initmsg(msg, NULL, 0)`.
    pub fn new(body: T) -> Msg<T> {
        Msg::build(None, body)
    }

    /// A message whose asynchronous replies ([`Port::sendmsg`]) are queued
    /// on `reply_port`, where [`Port::getport`] / [`Port::waitport`] or
    /// [`Msg::wait`] take them. Synchronous sends still complete in place.
    /// DragonFly: `lwkt_initmsg(msg, rport, 0)`.
    ///
    /// The port is a `&'static Port<T>` or a [`PortRef`](crate::PortRef)
    /// (by reference or by value): the message then keeps the port alive
    /// for as long as it names it.
    ///
    /// # Panics
    /// If `reply_port` cannot take replies (a put-only port).
    #[track_caller]
    pub fn with_reply_port(reply_port: impl AsPort<T>, body: T) -> Msg<T> {
        Msg::build(Some(Self::name_port(reply_port.as_port())), body)
    }

    /// Check `port` as a reply port and take the message's count on it.
    #[track_caller]
    fn name_port(port: &Port<T>) -> NonNull<Port<T>> {
        port.check_reply_port();
        port.hold();
        NonNull::from(port)
    }

    fn build(reply_port: Option<NonNull<Port<T>>>, body: T) -> Msg<T> {
        Msg {
            hdr: Header::new(0),
            reply_port,
            tag: TagWord { tag: 0 },
            waker: AtomicWaker::new(),
            body: UnsafeCell::new(body),
            _pin: PhantomPinned,
        }
    }

    /// Make the message abortable with [`Msg::abort`].
    /// DragonFly: `lwkt_initmsg_abortable()`.
    pub fn abortable(self) -> Msg<T> {
        self.hdr.set_abortable();
        self
    }

    /// The message with tag `tag`, which its replies carry
    /// ([`Replied::tag`]).
    ///
    /// DragonFly: a client finds the request a reply answers by the message
    /// pointer `lwkt_waitport()` returns, or by fields of its own it keeps in
    /// the message next to `lmsg` (the `lmsg` embedded at the start of a
    /// `netmsg`); the tag is that field, without a cast or a search.
    ///
    /// ```
    /// use lwkt_msg::Msg;
    /// let m = Msg::new(0u32).with_tag(7);
    /// assert_eq!(m.tag(), 7);
    /// ```
    pub fn with_tag(mut self, tag: u64) -> Msg<T> {
        // A message by value is not pinned, so it was never sent.
        self.tag = TagWord { tag };
        self
    }

    /// Change the tag, between sends.
    ///
    /// ```
    /// use core::pin::pin;
    /// use lwkt_msg::Msg;
    /// let mut m = pin!(Msg::new(0u32));
    /// m.as_mut().set_tag(3);
    /// assert_eq!(m.tag(), 3);
    /// ```
    ///
    /// # Panics
    /// While the message is in flight (its reply not yet taken): only its
    /// owner writes the tag.
    #[track_caller]
    pub fn set_tag(self: Pin<&mut Self>, tag: u64) {
        self.assert_owned();
        // SAFETY: the field is not structurally pinned; `DONE` says the
        // originator owns the message, and the exclusive borrow excludes a
        // send, so nobody reads the tag meanwhile.
        unsafe { self.get_unchecked_mut().tag = TagWord { tag } };
    }

    /// The tag (0 unless set with [`with_tag`](Self::with_tag) or
    /// [`set_tag`](Self::set_tag)). Readable at any time: nobody changes it
    /// while the message is in flight.
    ///
    /// ```
    /// use lwkt_msg::Msg;
    /// assert_eq!(Msg::new(()).tag(), 0);
    /// ```
    pub fn tag(&self) -> u64 {
        // SAFETY: the `tag` variant, the only one a `&Msg` can see: `domsg`
        // holds the message's only borrow while it keeps the `waiter`
        // variant there, and puts the tag back before it returns.
        unsafe { self.tag.tag }
    }

    /// Whether the originator owns the message (never sent, or replied and
    /// taken back). DragonFly: `lwkt_checkmsg()`.
    pub fn is_done(&self) -> bool {
        self.hdr.is_done()
    }

    /// The flags word, for inspection and tests.
    pub fn flags(&self) -> MsgFlags {
        MsgFlags(self.hdr.flags())
    }

    /// The body.
    ///
    /// # Panics
    /// While the message is in flight.
    #[track_caller]
    pub fn body(&self) -> &T {
        self.assert_owned();
        // SAFETY: `DONE` (Acquire) means the target has finished with the
        // body and nobody else touches it until the originator sends again,
        // which needs `Pin<&mut Self>`, which this shared borrow excludes.
        unsafe { &*self.body.get() }
    }

    /// The body, mutably.
    ///
    /// # Panics
    /// While the message is in flight.
    #[track_caller]
    pub fn body_mut(self: Pin<&mut Self>) -> &mut T {
        self.assert_owned();
        // SAFETY: as in `get`; the exclusive borrow excludes a send. The body
        // is not structurally pinned.
        unsafe { &mut *self.body.get() }
    }

    /// The result of the last reply (`Ok` for a message never sent).
    ///
    /// # Panics
    /// While the message is in flight.
    #[track_caller]
    pub fn result(&self) -> Result<(), MsgError> {
        self.assert_owned();
        // SAFETY: the originator owns the message (checked above).
        MsgError::decode(unsafe { self.hdr.code() })
    }

    /// Change the reply port (a `&'static Port<T>` or a
    /// [`PortRef`](crate::PortRef)). DragonFly: `lwkt_reinitmsg()`.
    ///
    /// # Panics
    /// While the message is in flight, or if the port cannot take replies.
    #[track_caller]
    pub fn set_reply_port(self: Pin<&mut Self>, port: impl AsPort<T>) {
        self.assert_owned();
        let p = Self::name_port(port.as_port());
        self.replace_reply_port(Some(p));
    }

    /// Remove the reply port: replies complete the message in place.
    ///
    /// # Panics
    /// While the message is in flight.
    #[track_caller]
    pub fn clear_reply_port(self: Pin<&mut Self>) {
        self.assert_owned();
        self.replace_reply_port(None);
    }

    fn replace_reply_port(self: Pin<&mut Self>, port: Option<NonNull<Port<T>>>) {
        // SAFETY: the field is not structurally pinned; the message is done
        // (checked by the callers), so nobody else reads it.
        let old = core::mem::replace(unsafe { &mut self.get_unchecked_mut().reply_port }, port);
        if let Some(old) = old {
            // SAFETY: the count this message held on its old port.
            unsafe { Port::release(old.as_ptr()) };
        }
    }

    /// The reply port, if any.
    pub(crate) fn reply_port(&self) -> Option<&Port<T>> {
        // SAFETY: a `'static` port, or one this message holds a count on
        // (`name_port`) for as long as it names it.
        self.reply_port.map(|p| unsafe { p.as_ref() })
    }

    /// Whether the message has a reply port.
    pub(crate) fn has_reply_port(&self) -> bool {
        self.reply_port.is_some()
    }

    /// Ask the target to give up: it sees the request (a port hands it
    /// queued messages already replied with [`MsgError::Aborted`]; a handler
    /// that holds one checks [`MsgHandle::abort_requested`]) and replies. The
    /// originator still waits for that reply. Returns `false` if the target
    /// had replied already. DragonFly: `lwkt_abortmsg()`.
    ///
    /// # Panics
    /// If the message was not made [`abortable`](Self::abortable).
    pub fn abort(&self) -> bool {
        self.hdr.request_abort()
    }

    /// Block until the message is done, taking its reply off the reply port
    /// if it was queued there, and return the reply's result.
    /// DragonFly: `lwkt_waitmsg()`.
    ///
    /// # Panics
    /// If the reply goes to a thread port that `cur` does not own.
    pub fn wait(self: Pin<&mut Self>, cur: &mut Cur) -> Result<(), MsgError> {
        let m = self.as_ref().get_ref() as *const Msg<T> as *mut Msg<T>;
        if !self.hdr.is_done() {
            match self.reply_port() {
                Some(port) if self.hdr.flags() & f::SYNC == 0 && port.queues_replies() => {
                    port.wait_reply(cur, m)
                }
                _ => {
                    let hdr = &self.hdr;
                    cur.sleep_until(m as usize, || hdr.prepare_wait());
                }
            }
        }
        self.as_ref().get_ref().result()
    }

    /// [`wait`](Self::wait) for at most `timeout`: `Ok(r)` when the
    /// message is done (its reply taken off the reply port if it was
    /// queued there), `r` being the reply's result; `Err(TimedOut)` when
    /// the timeout passed first. The message is then still in flight (or
    /// its reply still queued on the reply port): nothing is aborted, and
    /// the message stays pinned and out of reach until a later wait takes
    /// it back (dropping it meanwhile aborts the process). DragonFly:
    /// `lwkt_waitmsg()` whose sleep has a `timo`; to give up on the
    /// message, [`abort`](Self::abort) it and wait again, as
    /// [`Port::domsg_timeout`] does.
    ///
    /// Never early, and the message is looked at once more when the time
    /// is up, so a reply that lands then wins. A zero timeout looks once;
    /// a huge one never times out.
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// use lwkt_core::CpuId;
    /// use lwkt_msg::{Msg, Port};
    ///
    /// static WORK: Port<u64> = Port::spin();
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let mut m = pin!(Msg::new(1u64)); // no reply port: completed in place
    ///     WORK.sendmsg(cur.my_cpu(), m.as_mut());
    ///     // Nobody serves WORK yet.
    ///     assert!(m.as_mut().wait_timeout(cur, Duration::from_millis(1)).is_err());
    ///     let server = cur.spawn_on(CpuId::new(1), |me| {
    ///         let mut m = WORK.waitport(me).request().unwrap();
    ///         *m += 1;
    ///         m.reply(me.my_cpu(), Ok(()));
    ///     }).unwrap();
    ///     assert_eq!(m.as_mut().wait_timeout(cur, Duration::from_secs(60)), Ok(Ok(())));
    ///     assert_eq!(*m.body(), 2);
    ///     cur.join(&server);
    /// });
    /// ```
    ///
    /// # Panics
    /// As [`wait`](Self::wait); and if the backend has no clock
    /// ([`Arch::clock`](lwkt_core::Arch::clock)).
    #[track_caller]
    pub fn wait_timeout(
        self: Pin<&mut Self>,
        cur: &mut Cur,
        timeout: Duration,
    ) -> Result<Result<(), MsgError>, TimedOut> {
        let deadline = Deadline::after(cur.my_cpu(), timeout);
        let m = self.as_ref().get_ref() as *const Msg<T> as *mut Msg<T>;
        if !self.hdr.is_done() {
            match self.reply_port() {
                Some(port) if self.hdr.flags() & f::SYNC == 0 && port.queues_replies() => {
                    port.wait_reply_until(cur, m, deadline)?
                }
                _ => sleep_done_until(cur, m as usize, &self.hdr, deadline)?,
            }
        }
        Ok(self.as_ref().get_ref().result())
    }

    /// The message as a raw pointer, for the ports.
    pub(crate) fn as_raw(self: Pin<&mut Self>) -> *mut Msg<T> {
        // SAFETY: the pointer is used only under the ownership protocol, and
        // the message is never moved out of.
        unsafe { self.get_unchecked_mut() as *mut Msg<T> }
    }

    /// `domsg` on one CPU (`f::PARKED`), or inline to a put-only port
    /// (`f::INLINE`): keep the waiting sender's
    /// [`ParkToken`](lwkt_core::ParkToken) in the tag word, and return the
    /// tag, which `domsg` puts back once the message is done
    /// ([`unpark_tag`](Self::unpark_tag)). Nobody reads the tag of a
    /// synchronous message in flight (only `Replied::of`, for replies to a
    /// reply port or a reply-only port, which a `SYNC` message never
    /// takes), and the originator's `Pin<&mut>`, held by `domsg` for the
    /// whole wait, excludes `Msg::tag`.
    ///
    /// # Safety
    /// The caller is `domsg`, the originator, between `begin_send(true)`
    /// (or `begin_inline`) and the send; `m` is live.
    #[inline(always)]
    pub(crate) unsafe fn park_tag(m: *mut Msg<T>, waiter: ParkToken) -> u64 {
        // SAFETY: caller: nobody else touches the message yet; the `tag`
        // variant is the one there (`Msg::tag`).
        unsafe {
            let tag = (*m).tag.tag;
            (*m).tag = TagWord { waiter };
            tag
        }
    }

    /// The waiting sender's token of a `PARKED` or `INLINE` message.
    ///
    /// # Safety
    /// The caller owns `m` as its target, before its completion
    /// (`complete_parked`, `complete_inline_if`, `complete`), and the
    /// message is `PARKED` or `INLINE`.
    #[inline(always)]
    pub(crate) unsafe fn parked_waiter(m: *const Msg<T>) -> ParkToken {
        // SAFETY: caller: the target owns it; nobody writes the word while
        // the message is in flight, and a `PARKED` or `INLINE` message
        // carries the `waiter` variant (`park_tag`).
        unsafe { (*m).tag.waiter }
    }

    /// `domsg`: the message is done; its tag back in place.
    ///
    /// # Safety
    /// The caller is `domsg`, the originator, after `DONE`; `m` is live.
    #[inline(always)]
    pub(crate) unsafe fn unpark_tag(m: *mut Msg<T>, tag: u64) {
        // SAFETY: caller: the originator owns the message again, and the
        // target touched nothing after `DONE`.
        unsafe { (*m).tag = TagWord { tag } };
    }

    pub(crate) fn body_ptr(m: *mut Msg<T>) -> *mut T {
        // SAFETY: `m` is live; projecting to the field does not read.
        unsafe { (*m).body.get() }
    }

    #[track_caller]
    fn assert_owned(&self) {
        let fl = self.hdr.flags();
        assert!(
            fl & f::DONE != 0,
            "lwkt-msg: message body used while the message is in flight \
             (rule: the target owns a sent message until its reply{})",
            if fl & f::QUEUED != 0 && fl & f::REPLY != 0 {
                "; its reply is queued on the reply port, take it first"
            } else {
                ""
            }
        );
    }
}

/// A message's tag word: its tag, or (while a same-CPU `domsg` waits for
/// it, `f::PARKED`, or a `domsg` to a put-only port runs its handler,
/// `f::INLINE`) the waiting sender's token. Never read as the other
/// variant: `domsg` saves the tag, keeps its token there, and puts the tag
/// back once the message is done.
#[derive(Clone, Copy)]
union TagWord {
    tag: u64,
    waiter: ParkToken,
}

impl<T: Send + 'static> Drop for Msg<T> {
    fn drop(&mut self) {
        if !self.hdr.is_done() {
            abort_in_flight();
        }
        if let Some(p) = self.reply_port.take() {
            // SAFETY: the count this message held on its reply port; done,
            // so no reply is on its way to the port.
            unsafe { Port::release(p.as_ptr()) };
        }
    }
}

impl<T: Send + fmt::Debug + 'static> fmt::Debug for Msg<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Msg");
        d.field("flags", &self.flags());
        d.field("tag", &self.tag());
        if self.is_done() {
            d.field("body", self.body());
        }
        d.finish_non_exhaustive()
    }
}

/// Stop the process: a message is being freed while a port or handler still
/// points at it. Panicking again while the first panic unwinds aborts (and a
/// `panic = "abort"` kernel aborts at the first), so the memory is never
/// reused under the target.
#[cold]
#[inline(never)]
fn abort_in_flight() -> ! {
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            panic!("lwkt-msg: aborting: a message in flight cannot be freed");
        }
    }
    let _abort = Abort;
    panic!(
        "lwkt-msg: message dropped while in flight (rule: a sent message must \
         stay alive until its reply; wait for it with Msg::wait)"
    );
}

/// A snapshot of a message's flags. DragonFly: `ms_flags`, `MSGF_*`.
///
/// ```
/// use lwkt_msg::{Msg, MsgFlags};
/// let m = Msg::new(0u8);
/// assert!(m.flags().contains(MsgFlags::DONE));
/// assert!(!m.flags().contains(MsgFlags::QUEUED));
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MsgFlags(pub u32);

impl MsgFlags {
    /// The originator owns the message. `MSGF_DONE`.
    pub const DONE: MsgFlags = MsgFlags(f::DONE);
    /// The target has replied. `MSGF_REPLY`.
    pub const REPLY: MsgFlags = MsgFlags(f::REPLY);
    /// On a port's queue. `MSGF_QUEUED`.
    pub const QUEUED: MsgFlags = MsgFlags(f::QUEUED);
    /// Synchronous: the reply completes it in place. `MSGF_SYNC`.
    pub const SYNC: MsgFlags = MsgFlags(f::SYNC);
    /// Riding an IPI (debug builds). `MSGF_INTRANSIT`.
    pub const INTRANSIT: MsgFlags = MsgFlags(f::INTRANSIT);
    /// A thread waits for it. `MSGF_WAITING`.
    pub const WAITING: MsgFlags = MsgFlags(f::WAITING);
    /// May be aborted. `MSGF_ABORTABLE`.
    pub const ABORTABLE: MsgFlags = MsgFlags(f::ABORTABLE);
    /// An abort was requested.
    pub const ABORT_REQUESTED: MsgFlags = MsgFlags(f::ABORTREQ);
    /// A future awaits the reply.
    pub const WAKER: MsgFlags = MsgFlags(f::WAKER);

    /// Whether every bit of `other` is set.
    ///
    /// ```
    /// use lwkt_msg::MsgFlags;
    /// assert!((MsgFlags::DONE | MsgFlags::REPLY).contains(MsgFlags::REPLY));
    /// ```
    pub fn contains(self, other: MsgFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl core::ops::BitOr for MsgFlags {
    type Output = MsgFlags;
    fn bitor(self, rhs: MsgFlags) -> MsgFlags {
        MsgFlags(self.0 | rhs.0)
    }
}

impl fmt::Debug for MsgFlags {
    fn fmt(&self, fm: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u32, &str); 9] = [
            (f::DONE, "DONE"),
            (f::REPLY, "REPLY"),
            (f::QUEUED, "QUEUED"),
            (f::SYNC, "SYNC"),
            (f::INTRANSIT, "INTRANSIT"),
            (f::WAITING, "WAITING"),
            (f::ABORTABLE, "ABORTABLE"),
            (f::ABORTREQ, "ABORT_REQUESTED"),
            (f::WAKER, "WAKER"),
        ];
        let mut first = true;
        for (bit, name) in NAMES {
            if self.0 & bit != 0 {
                if !first {
                    fm.write_str("|")?;
                }
                fm.write_str(name)?;
                first = false;
            }
        }
        if first {
            fm.write_str("(none)")?;
        }
        Ok(())
    }
}

/// A received message: the target's ownership of it. Dereferences to the
/// body. Consumed by [`reply`](Self::reply) or [`forward`](Self::forward);
/// dropping it unreplied panics (a reply is what hands the message back, so
/// a dropped handle would strand its originator).
///
/// DragonFly: the `lwkt_msg_t` a port hands its owner.
#[must_use = "a received message must be replied to or forwarded"]
pub struct MsgHandle<T: Send + 'static> {
    pub(crate) m: NonNull<Msg<T>>,
}

// SAFETY: the handle is the sole owner of the message while it exists; the
// body is `Send`.
unsafe impl<T: Send + 'static> Send for MsgHandle<T> {}

impl<T: Send + 'static> MsgHandle<T> {
    /// # Safety
    /// The caller owns `m` as its target.
    pub(crate) unsafe fn from_raw(m: *mut Msg<T>) -> MsgHandle<T> {
        MsgHandle {
            // SAFETY: `m` comes from a pinned, live message.
            m: unsafe { NonNull::new_unchecked(m) },
        }
    }

    pub(crate) fn into_raw(self) -> *mut Msg<T> {
        let m = self.m.as_ptr();
        core::mem::forget(self);
        m
    }

    pub(crate) fn hdr(&self) -> &Header {
        // SAFETY: the message is live while in flight (its drop aborts).
        unsafe { &self.m.as_ref().hdr }
    }

    /// Whether the originator asked to abort. DragonFly: the target's check
    /// after `ms_abortfn`.
    pub fn abort_requested(&self) -> bool {
        self.hdr().flags() & f::ABORTREQ != 0
    }

    /// Whether the originator waits synchronously (`domsg`, a future).
    pub fn is_sync(&self) -> bool {
        self.hdr().flags() & f::SYNC != 0
    }
}

impl<T: Send + 'static> core::ops::Deref for MsgHandle<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the handle owns the message; nobody else touches the body.
        unsafe { &*Msg::body_ptr(self.m.as_ptr()) }
    }
}

impl<T: Send + 'static> core::ops::DerefMut for MsgHandle<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, exclusively.
        unsafe { &mut *Msg::body_ptr(self.m.as_ptr()) }
    }
}

impl<T: Send + 'static> Drop for MsgHandle<T> {
    fn drop(&mut self) {
        panic!(
            "lwkt-msg: a received message was dropped without a reply \
             (rule: the target must reply to or forward every message it takes)"
        );
    }
}

impl<T: Send + fmt::Debug + 'static> fmt::Debug for MsgHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgHandle")
            .field("flags", &MsgFlags(self.hdr().flags()))
            .field("body", &**self)
            .finish()
    }
}

/// A reply taken from a reply port: the message is its originator's again.
/// It names the message (its [`tag`](Self::tag), or compare with
/// [`is`](Self::is)) and carries the result; the originator reads the body
/// through its own reference.
///
/// The pattern: messages made [`with_reply_port`](Msg::with_reply_port)
/// (the client's own port) and [`with_tag`](Msg::with_tag) (an index into
/// the client's window), sent with [`Port::sendmsg`]; each reply comes back
/// as [`Incoming::Reply`] from [`Port::waitport`] or [`Port::getport`].
///
/// ```
/// use core::pin::Pin;
/// use lwkt_core::CpuId;
/// use lwkt_msg::{Incoming, Msg, Port};
///
/// static WORK: Port<u64> = Port::spin();
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let server = cur.spawn_on(CpuId::new(1), |me| {
///         while let Incoming::Request(mut m) = WORK.waitport(me) {
///             *m += 1;
///             m.reply(me.my_cpu(), Ok(()));
///         }
///     }).unwrap();
///     let replies: &'static Port<u64> = Port::thread(cur).leak();
///     let mut window: Vec<Pin<Box<Msg<u64>>>> = (0..4)
///         .map(|i| Box::pin(Msg::with_reply_port(replies, 10 * i).with_tag(i)))
///         .collect();
///     for m in &mut window {
///         WORK.sendmsg(cur.my_cpu(), m.as_mut());
///     }
///     for _ in 0..4 {
///         let Incoming::Reply(r) = replies.waitport(cur) else { unreachable!() };
///         let i = r.tag();
///         assert_eq!(*window[i as usize].body(), 10 * i + 1);
///     }
///     WORK.close_from(cur.my_cpu());
///     cur.join(&server);
///     replies.close(cur);
/// });
/// ```
///
/// DragonFly: the `lwkt_msg_t` `lwkt_waitport()` returns to the client.
#[derive(Clone, Copy)]
pub struct Replied<T: Send + 'static> {
    m: *const Msg<T>,
    result: Result<(), MsgError>,
    tag: u64,
}

impl<T: Send + 'static> Replied<T> {
    /// The reply to `m`, read while its reply is still ours to hand back.
    ///
    /// # Safety
    /// The caller owns `m`'s reply: it popped it from the reply port's queue
    /// and has not yet handed it back (`take_reply`), or it is the replier
    /// and has not yet completed it. So `m` is live and its error word and
    /// tag are not written meanwhile (M1).
    pub(crate) unsafe fn of(m: *mut Msg<T>) -> Replied<T> {
        // SAFETY: the caller owns the reply (above); the target's writes
        // happen before the reply's publication, which the caller acquired.
        // The tag word holds the `tag` variant: a reply to a reply port or
        // a reply-only port is never of a `SYNC` message, so never of a
        // parked one (`Msg::park_tag`).
        let (code, tag) = unsafe { ((*m).hdr.code(), (*m).tag.tag) };
        Replied {
            m,
            result: MsgError::decode(code),
            tag,
        }
    }

    /// Whether this is the reply to `msg`.
    pub fn is(&self, msg: &Msg<T>) -> bool {
        core::ptr::eq(self.m, msg)
    }

    /// The tag of the message this replies to, as its originator set it
    /// ([`Msg::with_tag`], [`Msg::set_tag`]) before sending: which request
    /// this answers, without a search. Copied when the reply was taken off
    /// the reply port.
    ///
    /// DragonFly: the client's own fields next to the returned `lmsg`.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// The reply's result.
    pub fn result(&self) -> Result<(), MsgError> {
        self.result
    }
}

impl<T: Send + 'static> fmt::Debug for Replied<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replied")
            .field("msg", &self.m)
            .field("tag", &self.tag)
            .field("result", &self.result)
            .finish()
    }
}

/// What a port hands its owner: a request to handle, or a reply to one of
/// the owner's own messages. DragonFly ports carry both on one queue (the
/// `MSGF_REPLY` flag tells them apart).
#[derive(Debug)]
pub enum Incoming<T: Send + 'static> {
    /// A request; the receiver owns it until it replies.
    Request(MsgHandle<T>),
    /// A reply to a message this port was the reply port of.
    Reply(Replied<T>),
    /// The port is closed and empty ([`Port::waitport`] only): nothing
    /// more will arrive.
    Closed,
}

impl<T: Send + 'static> Incoming<T> {
    /// The request, or `None` for a reply or a closed port.
    pub fn request(self) -> Option<MsgHandle<T>> {
        match self {
            Incoming::Request(h) => Some(h),
            Incoming::Reply(_) | Incoming::Closed => None,
        }
    }
}
