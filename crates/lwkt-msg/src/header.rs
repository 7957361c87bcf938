//! The message header and its state machine: who owns a message, and every
//! transition between owners, as atomic operations on one flags word.
//!
//! DragonFly: `struct lwkt_msg`'s `ms_flags`, `MSGF_*`.
//!
//! Ownership follows the flags: the **originator** owns a message while
//! `DONE` is set; the **target** (a port's queue, then whoever took it from
//! there) owns it from the send until its reply; a reply that goes to a
//! reply port's queue belongs to that queue until taken, which sets `DONE`.
//! Only the owner touches the body, the link and the error word; other
//! parties only set bits (`ABORTREQ` by an aborter, `WAITING` and `WAKER`
//! by the originator's waiters) with read-modify-writes, so no transition
//! is lost.
//!
//! ```text
//!            begin_send                 mark_queued         take_request
//!                                  (not recorded for a domsg's HELD message)
//!   DONE ───────────────▶ (in flight) ─────────────▶ QUEUED ─────────────▶ (taken)
//!    ▲                        │ put-only port: handler runs inline          │
//!    │                        ▼  (INLINE: on the sender's thread, plain)    │
//!    │ complete: REPLY|DONE   reply ◀───────────────────────────────────────┘
//!    ├──────────────────────  │  SYNC (domsg, call) or no reply port
//!    │                        │
//!    │ take_reply             ▼  mark_reply_queued
//!    └────────────────── REPLY|QUEUED on the reply port
//! ```

use lwkt_core::CpuId;

use crate::sync::{AtomicU32, Ordering, UnsafeCell};

mod inline;

/// Flag bits (DragonFly `MSGF_*`, where one exists).
pub(crate) mod f {
    /// The originator owns the message (set when created, and by the
    /// reply). DragonFly `MSGF_DONE`.
    pub(crate) const DONE: u32 = 0x1;
    /// The target has replied. DragonFly `MSGF_REPLY`.
    pub(crate) const REPLY: u32 = 0x2;
    /// On a port's queue (a request on its target port, or a reply on its
    /// reply port). DragonFly `MSGF_QUEUED`.
    pub(crate) const QUEUED: u32 = 0x4;
    /// The reply completes the message directly (it wakes the waiter) instead
    /// of going to the reply port's queue. DragonFly `MSGF_SYNC`.
    pub(crate) const SYNC: u32 = 0x8;
    /// Riding an IPI to another CPU (kept in debug builds only, as DragonFly
    /// keeps it only under `INVARIANTS`). DragonFly `MSGF_INTRANSIT`.
    pub(crate) const INTRANSIT: u32 = 0x10;
    /// A thread sleeps on the message's address until `DONE`.
    /// DragonFly `MSGF_WAITING`.
    pub(crate) const WAITING: u32 = 0x20;
    /// The originator waits in `domsg`, asleep on the message's address on
    /// the CPU where it queued it, whose number the word carries
    /// (`PARKED_CPU`); the reply completes the message on that CPU (by IPI
    /// if made elsewhere) and wakes it there, with a sleep and a wakeup
    /// that stay on that CPU (no machine-wide mask, no fence, no
    /// `WAITING`). While it is set nobody but the message's current owner
    /// writes the flags word: `domsg` holds the message's only borrow (no
    /// abort, no future, no other wait) and its originator sets nothing
    /// after the send, so the owner's updates are plain stores. Not in
    /// DragonFly (its `lwkt_domsg` sleeps on the message with `WAITING`).
    pub(crate) const PARKED: u32 = 0x40;
    /// The waiter's CPU of a `PARKED` message (bits 16-23).
    pub(crate) const PARKED_CPU_SHIFT: u32 = 16;
    pub(crate) const PARKED_CPU: u32 = 0xff << PARKED_CPU_SHIFT;
    /// The message may be aborted. DragonFly `MSGF_ABORTABLE`.
    pub(crate) const ABORTABLE: u32 = 0x80;
    /// `domsg` to a put-only port: the originator waits inside the
    /// handler's call, on its own thread, whose token the tag word carries;
    /// a reply made on that thread completes the message with a plain
    /// store. Not in DragonFly. See `header/inline.rs`.
    pub(crate) const INLINE: u32 = 0x100;
    /// The message of a `domsg` that is not `PARKED`: its originator is
    /// inside the call that sent it until its reply, holding its only
    /// borrow, so nobody can look at its flags while it is queued, and
    /// ports do not record `QUEUED` for it (two read-modify-writes fewer
    /// per round trip, one of them on the first touch of a message from
    /// another CPU). `sendmsg` without a reply port is `SYNC` too, but its
    /// originator may read `QUEUED` (`Msg::flags`) while it waits. Not in
    /// DragonFly.
    pub(crate) const HELD: u32 = 0x200;
    /// An abort was requested; the target sees it and replies.
    pub(crate) const ABORTREQ: u32 = 0x1000;
    /// A `Waker` is registered for the reply (an awaiting future).
    pub(crate) const WAKER: u32 = 0x2000;
}

/// Result codes stored in the header: 0 is success, negative values are
/// this crate's errors, positive values belong to the application.
pub(crate) mod code {
    pub(crate) const OK: i32 = 0;
    pub(crate) const ABORTED: i32 = -1;
    pub(crate) const CLOSED: i32 = -2;
}

/// The part of every message that ports and the protocol touch. It sits at
/// offset 0 of [`Msg`](crate::Msg) (`repr(C)`), so a header pointer is a
/// message pointer.
#[repr(C)]
pub(crate) struct Header {
    /// Queue link, owned by whoever owns the queue the message is on.
    pub(crate) next: UnsafeCell<*mut Header>,
    flags: AtomicU32,
    /// Reply code, written by the target before the reply, read by the
    /// originator after it.
    error: UnsafeCell<i32>,
}

impl Header {
    pub(crate) fn new(extra: u32) -> Header {
        Header {
            next: UnsafeCell::new(core::ptr::null_mut()),
            flags: AtomicU32::new(f::DONE | extra),
            error: UnsafeCell::new(code::OK),
        }
    }

    /// Creator: allow aborts (before the message is shared).
    pub(crate) fn set_abortable(&self) {
        self.flags.fetch_or(f::ABORTABLE, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn flags(&self) -> u32 {
        self.flags.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        self.flags() & f::DONE != 0
    }

    /// Originator: start a send (`SYNC` for a direct reply). Only the
    /// originator writes the word while `DONE` is set (nobody else sets bits
    /// on a message that is not in flight), so a plain store suffices; the
    /// port's queue or IPI ring publishes it with Release.
    ///
    /// # Panics
    /// If the message is in flight or its reply still sits on its reply port.
    #[inline]
    pub(crate) fn begin_send(&self, sync: bool) {
        self.begin(if sync { f::SYNC } else { 0 });
    }

    /// Originator, in `domsg`: start a send whose reply completes the
    /// message in place while the caller waits inside the call (`SYNC`,
    /// `HELD`).
    #[inline]
    pub(crate) fn begin_domsg(&self) {
        self.begin(f::SYNC | f::HELD);
    }

    /// `begin_send` with the flags `bits` (`SYNC`, `INLINE`).
    #[inline(always)]
    #[track_caller]
    fn begin(&self, bits: u32) {
        let cur = self.flags.load(Ordering::Acquire);
        if cur & f::DONE == 0 {
            in_flight_panic(cur);
        }
        self.flags
            .store((cur & f::ABORTABLE) | bits, Ordering::Relaxed);
    }

    /// Originator, in `domsg`: the message (just begun with `SYNC`) joins
    /// the queue of a port whose receiver lives on this CPU, `cpu`, and
    /// the caller sleeps there until it is done (`PARKED`). A plain store:
    /// nobody else knows the message yet (the queue is this CPU's, and the
    /// caller is in a critical section); the queue publishes it to the
    /// receiver, on this CPU, and an IPI ring with Release to any CPU the
    /// message is forwarded to.
    #[inline]
    pub(crate) fn park_queued(&self, cpu: CpuId) {
        const _: () = assert!(lwkt_core::MAX_CPUS <= 256);
        let cur = self.flags.load(Ordering::Relaxed);
        debug_assert!(cur & (f::SYNC | f::DONE | f::PARKED_CPU) == f::SYNC);
        self.flags.store(
            cur | f::QUEUED | f::PARKED | (cpu.get() << f::PARKED_CPU_SHIFT),
            Ordering::Relaxed,
        );
    }

    /// Target of a `PARKED` message: the CPU its originator waits on.
    #[inline]
    pub(crate) fn parked_cpu(&self) -> CpuId {
        CpuId::new((self.flags.load(Ordering::Relaxed) & f::PARKED_CPU) >> f::PARKED_CPU_SHIFT)
    }

    /// Target: complete a `PARKED` message (`REPLY|DONE`, Release: the
    /// reply code and body are the originator's once it sees `DONE`). A
    /// plain store: nobody else writes a parked message's word. After it
    /// the target touches nothing of the message.
    #[inline]
    pub(crate) fn complete_parked(&self) {
        let cur = self.flags.load(Ordering::Relaxed);
        debug_assert!(cur & (f::PARKED | f::DONE | f::QUEUED) == f::PARKED);
        self.flags.store(
            (cur & !(f::PARKED | f::PARKED_CPU)) | f::REPLY | f::DONE,
            Ordering::Release,
        );
    }

    /// Port owner: the message joined a queue as a request (not recorded
    /// for a `HELD` message: see there).
    #[inline]
    pub(crate) fn mark_queued(&self) {
        // `HELD` is the originator's, written before the send published
        // the message to us.
        if self.flags.load(Ordering::Relaxed) & f::HELD == 0 {
            self.flags.fetch_or(f::QUEUED, Ordering::Relaxed);
        }
    }

    /// Port owner: a request left the queue; returns the flags before, so the
    /// caller sees an abort requested meanwhile (Acquire pairs with the
    /// sender's publication).
    #[inline]
    pub(crate) fn take_request(&self) -> u32 {
        let cur = self.flags.load(Ordering::Acquire);
        if cur & f::PARKED != 0 {
            // Only the owner writes a parked message's word (`f::PARKED`).
            self.flags.store(cur & !f::QUEUED, Ordering::Relaxed);
            return cur;
        }
        if cur & f::HELD != 0 {
            // Never marked (`mark_queued`). An abort requested after this
            // load is seen by the handler (`abort_requested`), as one
            // requested after the read-modify-write would be.
            return cur;
        }
        self.flags.fetch_and(!f::QUEUED, Ordering::Acquire)
    }

    /// Reply port owner: the reply joined the reply port's queue.
    #[inline]
    pub(crate) fn mark_reply_queued(&self) {
        self.flags.fetch_or(f::REPLY | f::QUEUED, Ordering::Release);
    }

    /// Reply port owner: the reply left the queue; ownership goes back to
    /// the originator (QUEUED was set and DONE clear, so XOR flips both).
    #[inline]
    pub(crate) fn take_reply(&self) {
        let prev = self.flags.fetch_xor(f::QUEUED | f::DONE, Ordering::AcqRel);
        debug_assert!(prev & (f::QUEUED | f::REPLY) == f::QUEUED | f::REPLY);
        debug_assert!(prev & f::DONE == 0);
    }

    /// Whether a reply sits on the reply port's queue.
    #[inline]
    pub(crate) fn is_queued_reply(&self) -> bool {
        self.flags() & (f::REPLY | f::QUEUED | f::DONE) == f::REPLY | f::QUEUED
    }

    /// Target: complete a direct (`SYNC` or reply-port-less) reply. Returns
    /// whether a thread sleeps on the message (the caller then wakes its
    /// address). `wake_waker` runs while the message is still in flight, so
    /// the memory it touches stays valid; after the `DONE` store the target
    /// touches nothing.
    #[inline]
    pub(crate) fn complete(&self, wake_waker: impl FnOnce()) -> bool {
        let mut cur = self.flags.load(Ordering::Relaxed);
        loop {
            if cur & f::WAKER != 0 {
                // Two phases: REPLY, wake the future, then DONE. A poll that
                // sees REPLY without DONE waits for DONE (nanoseconds).
                self.flags.fetch_or(f::REPLY, Ordering::AcqRel);
                wake_waker();
                let prev = self.flags.fetch_or(f::DONE, Ordering::AcqRel);
                return prev & f::WAITING != 0;
            }
            match self.flags.compare_exchange_weak(
                cur,
                cur | f::REPLY | f::DONE,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return cur & f::WAITING != 0,
                Err(now) => cur = now,
            }
        }
    }

    /// Originator about to sleep until `DONE`: announce it, and return
    /// whether the message is done already (then do not sleep).
    #[inline]
    pub(crate) fn prepare_wait(&self) -> bool {
        self.flags.fetch_or(f::WAITING, Ordering::AcqRel) & f::DONE != 0
    }

    /// A future registered its waker: announce it. Returns whether the
    /// message is done, pending, or replied but not yet done: the replier is
    /// between the two phases of [`complete`](Self::complete), waking the
    /// waker of an earlier poll, which may block (an IPI to a full ring).
    /// The poller must not spin for the second phase: on a host thread
    /// shared by several vCPUs (arch-hosted M:N) the replier may be a
    /// sibling vCPU that runs only once the poller's vCPU gives the host
    /// thread up, at one of lwkt's cooperative points (found by a demo run
    /// that hung with both host threads spinning here). The future wakes
    /// itself instead, and its executor polls again after a yield.
    #[inline]
    pub(crate) fn arm_waker(&self) -> Armed {
        let prev = self.flags.fetch_or(f::WAKER, Ordering::AcqRel);
        if prev & f::DONE != 0 {
            return Armed::Done;
        }
        if prev & (f::REPLY | f::QUEUED) == f::REPLY {
            return Armed::Replying;
        }
        Armed::Pending
    }

    /// Anyone: ask the target to abort. Returns whether the request was
    /// recorded (false once the target has replied).
    ///
    /// # Panics
    /// If the message was not made abortable.
    pub(crate) fn request_abort(&self) -> bool {
        let mut cur = self.flags.load(Ordering::Relaxed);
        assert!(
            cur & f::ABORTABLE != 0,
            "lwkt-msg: abort of a message not created abortable (rule: only \
             messages built with Msg::abortable may be aborted)"
        );
        loop {
            if cur & (f::DONE | f::REPLY) != 0 {
                return false;
            }
            match self.flags.compare_exchange_weak(
                cur,
                cur | f::ABORTREQ,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Debug builds: mark the message as riding an IPI, or arrived.
    #[inline(always)]
    pub(crate) fn transit(&self, on: bool) {
        if cfg!(debug_assertions) {
            if on {
                let prev = self.flags.fetch_or(f::INTRANSIT, Ordering::Relaxed);
                assert!(
                    prev & f::INTRANSIT == 0,
                    "lwkt-msg: message already in transit"
                );
            } else {
                self.flags.fetch_and(!f::INTRANSIT, Ordering::Relaxed);
            }
        }
    }

    /// Target: store the reply code (before the reply publishes it).
    ///
    /// # Safety
    /// The caller owns the message as its target.
    #[inline]
    pub(crate) unsafe fn set_code(&self, c: i32) {
        // SAFETY: only the owning target writes; the reply's Release
        // publishes it.
        self.error.with_mut(|p| unsafe { *p = c });
    }

    /// The reply code.
    ///
    /// # Safety
    /// The caller owns the message, or owns its queued reply.
    #[inline]
    pub(crate) unsafe fn code(&self) -> i32 {
        // SAFETY: no one writes while the caller owns it.
        self.error.with(|p| unsafe { *p })
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn in_flight_panic(flags: u32) -> ! {
    if flags & f::QUEUED != 0 && flags & f::REPLY != 0 {
        panic!(
            "lwkt-msg: message sent again while its reply is still queued on \
             its reply port (rule: take the reply with getport/waitport/wait \
             before reusing the message)"
        )
    }
    panic!(
        "lwkt-msg: message sent while already in flight (rule: a message may \
         be sent again only after its reply)"
    )
}

/// What [`Header::arm_waker`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Armed {
    /// Not replied: the replier will wake the registered waker.
    Pending,
    /// Replied and done: the result may be read.
    Done,
    /// Replied, not yet done: the replier is waking an earlier waker; poll
    /// again soon (after a yield), without spinning.
    Replying,
}
