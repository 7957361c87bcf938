//! Ports: where messages are put, and where their replies go. One type,
//! four flavours, chosen at construction.
//!
//! DragonFly: `struct lwkt_port`, `lwkt_initport_thread()`,
//! `lwkt_initport_spin()`, `lwkt_initport_putonly()`,
//! `lwkt_initport_replyonly()`; `lwkt_sendmsg()`, `lwkt_domsg()`,
//! `lwkt_replymsg()`, `lwkt_forwardmsg()`, `lwkt_getport()`,
//! `lwkt_waitport()`.
//!
//! | flavour | who may receive | put from another CPU | waiting |
//! |---|---|---|---|
//! | [`Port::thread`] | the owning thread | IPI to the owner's CPU | deschedule; a put schedules the owner |
//! | [`Port::spin`] | any thread | directly, under the port's spin lock | sleep on the port; a put wakes it |
//! | [`Port::serializer`] | any thread holding the port's [`Serializer`] | directly, by a holder | release the serializer and sleep; a put wakes it |
//! | [`Port::put_only`] | nobody: the handler runs in the sender's context | in the sender's context | none |
//! | [`Port::reply_only`] | nobody: a reply completes the message in place | (replies only) | none |

use core::cell::UnsafeCell;
use core::fmt;
use core::pin::Pin;
use core::time::Duration;

use core::sync::atomic::{AtomicU32, Ordering};

use crossbeam_utils::CachePadded;
use lwkt_core::{abort_on_unwind, CpuId, Cur, IpiFn, MyCpu, Serializer, ThreadHandle, TimedOut};

use crate::future::ReplyFuture;
use crate::header::{f, Header};
use crate::queue::Queue;
use crate::spinlock::SpinLock;
use crate::{AsPort, Incoming, Msg, MsgError, MsgHandle, Replied};

mod put_only;
mod timed;
pub(crate) use timed::{sleep_done_until, Deadline};

/// The handler of a put-only port, run in the sender's context, which may
/// be interrupt context (a put from an IPI function): it must do only what
/// an [`IpiFn`] may (not block, not take a lock the interrupted code may
/// hold); it replies to or forwards the message. It runs on the port's
/// behalf, so a panic in it aborts ([`abort_on_unwind`]).
pub type PutFn<T> = fn(MyCpu<'_>, MsgHandle<T>);

/// Called by a reply-only port once a reply has completed its message, in
/// the replier's context, which may be interrupt context: the rules of
/// [`PutFn`] apply (and a panic aborts).
pub type ReplyFn<T> = fn(MyCpu<'_>, Replied<T>);

/// A message port for messages with bodies of type `T`.
///
/// Ports are used as `&'static Port<T>` (a `static`, or
/// [`leak`](Port::leak)ed): a put to another CPU's port rides an IPI that
/// may arrive after the sender has moved on, and replies find their port
/// long after the send, so a port must outlive every message that names it.
///
/// DragonFly: `struct lwkt_port`.
///
/// ```
/// use core::pin::pin;
/// use lwkt_core::CpuId;
/// use lwkt_msg::{Msg, Port};
///
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     // A server thread on CPU 1 creates its port and hands it out.
///     let (tx, rx) = std::sync::mpsc::channel();
///     let server = cur.spawn_on(CpuId::new(1), move |me| {
///         let port: &'static Port<u32> = Port::thread(me).leak();
///         tx.send(port).unwrap();
///         let mut m = port.waitport(me).request().unwrap();
///         *m += 1;
///         m.reply(me.my_cpu(), Ok(()));
///         port.close(me);
///     }).unwrap();
///     let port = loop {
///         if let Ok(p) = rx.try_recv() { break p; }
///         cur.yield_now();
///     };
///     let mut m = pin!(Msg::new(41));
///     port.domsg(cur, m.as_mut()).unwrap();   // across CPUs, by IPI
///     assert_eq!(*m.body(), 42);
///     cur.join(&server);
/// });
/// ```
pub struct Port<T: Send + 'static> {
    kind: Kind<T>,
    lock: SpinLock,
    /// Serializer ports: bumped by every put, so a receiver that released
    /// the serializer to sleep sees whether anything arrived meanwhile.
    gen: AtomicU32,
    /// Null for a `'static` port; for a port in a `PortRef`'s `Arc`, its
    /// own address as `Arc::as_ptr` gives it (with the provenance of the
    /// whole allocation, counts included, which `&self` lacks). Everything
    /// that names a counted port beyond a call holds a count through it: an
    /// IPI carrying the port, a message whose reply port it is.
    origin: *const Port<T>,
    /// The receiver's state, on its own cache line: senders on other CPUs
    /// read `kind` on every put, and must not take away the line the
    /// receiver writes on every push and pop.
    inner: CachePadded<UnsafeCell<Inner>>,
}

/// How long `domsg` to a port served on another CPU watches for the reply
/// before it sleeps, in cycles of [`Arch::cycles`](lwkt_core::Arch::cycles)
/// (about 2 µs at 2.5 GHz): longer than a typical cross-CPU round trip,
/// short enough that the threads of this CPU barely notice.
pub const DOMSG_POLL_CYCLES: u64 = 5_000;

/// The `domsg` reply watch reads the clock at one turn in this many: a read
/// costs about 10 ns on a hosted guest (as much as the rest of a turn), and
/// a reply that lands during it waits for it.
const DOMSG_CLOCK_EVERY: u32 = 8;

enum Kind<T: Send + 'static> {
    Thread(ThreadHandle),
    Spin,
    Serializer(&'static Serializer),
    PutOnly(PutFn<T>),
    ReplyOnly(Option<ReplyFn<T>>),
}

struct Inner {
    q: Queue,
    /// The receiver sleeps until something is queued
    /// (DragonFly `MSGPORTF_WAITING`).
    waiting: bool,
    closed: bool,
}

// SAFETY: `inner` is touched only by the CPU the owner lives on, inside a
// critical section (thread ports: `route` finds the owner here only after
// the handover of a migrating owner is complete, and puts from elsewhere
// arrive by IPI), under `lock` (spin ports), or by the thread holding the
// port's serializer, in a critical section (checked on every operation;
// interrupt context never holds it); put-only and reply-only ports never
// touch it. Bodies cross threads with their messages, hence `T: Send`.
unsafe impl<T: Send + 'static> Sync for Port<T> {}
// SAFETY: as above; a port holds no thread-affine state.
unsafe impl<T: Send + 'static> Send for Port<T> {}

impl<T: Send + 'static> Port<T> {
    const fn with_kind(kind: Kind<T>) -> Port<T> {
        Port {
            kind,
            lock: SpinLock::new(),
            gen: AtomicU32::new(0),
            origin: core::ptr::null(),
            inner: CachePadded::new(UnsafeCell::new(Inner {
                q: Queue::new(),
                waiting: false,
                closed: false,
            })),
        }
    }

    /// A port owned by the calling thread: only it receives; a put from
    /// another CPU travels by IPI to the owner's CPU (following it if it
    /// migrates), so the queue needs no lock.
    /// DragonFly: `lwkt_initport_thread()` (a thread's `td_msgport`).
    pub fn thread(cur: &Cur) -> Port<T> {
        Port::with_kind(Kind::Thread(cur.handle()))
    }

    /// A thread port owned by `owner`, made by another thread (`serve`).
    #[cfg(feature = "alloc")]
    pub(crate) fn thread_of(owner: ThreadHandle) -> Port<T> {
        Port::with_kind(Kind::Thread(owner))
    }

    /// Record that the port lives in an `Arc` at `origin` (only
    /// `PortRef::new`, before the port is shared).
    #[cfg(feature = "alloc")]
    pub(crate) fn set_origin(&mut self, origin: *const Port<T>) {
        self.origin = origin;
    }

    /// A port any thread may receive from, guarded by a spin lock; puts from
    /// any CPU go straight to its queue. DragonFly: `lwkt_initport_spin()`.
    ///
    /// ```
    /// use lwkt_msg::Port;
    /// static WORK: Port<u64> = Port::spin();
    /// ```
    pub const fn spin() -> Port<T> {
        Port::with_kind(Kind::Spin)
    }

    /// A port whose queue belongs to whoever holds `slz`: every operation on
    /// it must be made holding the serializer (checked: a clear panic
    /// otherwise), and a receiver waiting for a message releases the
    /// serializer while it sleeps. DragonFly: `lwkt_initport_serialize()`.
    ///
    /// ```
    /// use lwkt_core::Serializer;
    /// use lwkt_msg::Port;
    /// static DRIVER: Serializer = Serializer::new();
    /// static RX: Port<u64> = Port::serializer(&DRIVER);
    /// ```
    pub const fn serializer(slz: &'static Serializer) -> Port<T> {
        Port::with_kind(Kind::Serializer(slz))
    }

    /// A port with no queue: a put runs `handler` at once in the sender's
    /// context, so [`domsg`](Port::domsg) completes without a switch.
    /// DragonFly: `lwkt_initport_putonly()`.
    pub const fn put_only(handler: PutFn<T>) -> Port<T> {
        Port::with_kind(Kind::PutOnly(handler))
    }

    /// A port that only takes replies: a reply calls `on_reply`, if given,
    /// then completes the message in place.
    /// DragonFly: `lwkt_initport_replyonly()` / `_replyonly_null()`.
    pub const fn reply_only(on_reply: Option<ReplyFn<T>>) -> Port<T> {
        Port::with_kind(Kind::ReplyOnly(on_reply))
    }

    /// Give the port a `'static` address for good (the memory is never
    /// freed).
    #[cfg(feature = "alloc")]
    pub fn leak(self) -> &'static Port<T> {
        alloc::boxed::Box::leak(alloc::boxed::Box::new(self))
    }

    /// Send `msg` and return at once; the target replies later. The reply
    /// goes to the message's reply port if it has one, and completes it in
    /// place otherwise ([`Msg::wait`]). DragonFly: `lwkt_sendmsg()`.
    ///
    /// # Panics
    /// If `msg` is in flight, this port takes no requests, or it is the
    /// thread port of another machine's thread.
    #[track_caller]
    pub fn sendmsg(&'static self, my: MyCpu<'_>, msg: Pin<&mut Msg<T>>) {
        self.do_sendmsg(my, msg)
    }

    /// Send `msg` and block until its reply; returns the reply's result. On
    /// a [`put_only`](Port::put_only) port the handler runs in the caller's
    /// context and nothing switches. DragonFly: `lwkt_domsg()`.
    ///
    /// # Panics
    /// If `msg` is in flight, this port takes no requests, it is the
    /// caller's own thread port (nobody would ever receive it), or the
    /// thread port of another machine's thread.
    #[track_caller]
    #[inline]
    pub fn domsg(&'static self, cur: &mut Cur, msg: Pin<&mut Msg<T>>) -> Result<(), MsgError> {
        self.domsg_dispatch(cur, msg)
    }

    /// [`domsg`](Port::domsg) for at most `timeout`: send `msg` and wait
    /// for its reply until the timeout passes; then **abort** it
    /// ([`Msg::abort`]) and wait for the reply the abort brings. DragonFly:
    /// `lwkt_domsg()` whose `lwkt_waitmsg()` times out, then
    /// `lwkt_abortmsg()`, then the wait for the reply (the abort is a
    /// request: exactly one reply still comes back).
    ///
    /// - `Ok(r)`: the message is back, and `r` is its reply's result:
    ///   `Ok(())` when the target finished it (before the timeout, or after
    ///   it despite the abort: the reply raced the abort and won),
    ///   `Err(MsgError::Aborted)` when the abort took (the port replied it
    ///   before handing it out, or the handler saw
    ///   [`MsgHandle::abort_requested`] and gave up), or the handler's own
    ///   error.
    /// - `Err(TimedOut)`: only for a message not made
    ///   [`abortable`](Msg::abortable), when the timeout passed before its
    ///   reply. The target still holds it: it is **still in flight**, and
    ///   stays pinned where it is. Wait for it ([`Msg::wait`],
    ///   [`Msg::wait_timeout`]) before reusing it; dropping it first aborts
    ///   the process (see [`Msg`]), so its memory is never reused under
    ///   the target.
    ///
    /// Past the timeout an abortable message waits without a limit for its
    /// reply: a target that holds a message should look at
    /// `abort_requested` while it works on it. A zero timeout sends, looks
    /// once, and aborts unless the reply was made at once (a put-only
    /// port's handler); a huge one never times out. Unlike
    /// [`domsg`](Port::domsg) it neither parks on this CPU nor watches for
    /// a reply from another: it sleeps on the message, as
    /// [`Msg::wait`] does.
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// use lwkt_core::CpuId;
    /// use lwkt_msg::{serve_on, Incoming, Msg, MsgError, PortRef};
    ///
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     // A slow server: it works until the originator gives up.
    ///     let (t, port) = serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
    ///         while let Incoming::Request(m) = port.waitport(me) {
    ///             while !m.abort_requested() {
    ///                 me.yield_now();
    ///             }
    ///             m.reply(me.my_cpu(), Err(MsgError::Aborted));
    ///         }
    ///     }).unwrap();
    ///     let mut m = pin!(Msg::new(1u64).abortable());
    ///     let r = port.domsg_timeout(cur, m.as_mut(), Duration::from_millis(2));
    ///     assert_eq!(r, Ok(Err(MsgError::Aborted)));
    ///     assert!(m.is_done()); // ours again
    ///     port.close_from(cur.my_cpu());
    ///     cur.join(&t);
    /// });
    /// ```
    ///
    /// # Panics
    /// As [`domsg`](Port::domsg); and if the backend has no clock
    /// ([`Arch::clock`](lwkt_core::Arch::clock)), before anything is sent.
    #[track_caller]
    pub fn domsg_timeout(
        &'static self,
        cur: &mut Cur,
        msg: Pin<&mut Msg<T>>,
        timeout: core::time::Duration,
    ) -> Result<Result<(), MsgError>, lwkt_core::TimedOut> {
        self.do_domsg_timeout(cur, msg, timeout)
    }

    /// Whether requests to this port are served on a CPU other than the
    /// caller's (a thread port whose owner lives elsewhere).
    fn served_elsewhere(&self, cur: &Cur) -> bool {
        match &self.kind {
            Kind::Thread(owner) => owner.cpu() != cur.cpu_id(),
            _ => false,
        }
    }

    /// Send `msg` and return a future of its reply, for async code (the
    /// reply wakes the future's waker, maybe in interrupt context: see
    /// [`ReplyFuture`] for what the waker may do). The message is sent now,
    /// not at the first poll.
    ///
    /// # Panics
    /// As [`sendmsg`](Port::sendmsg).
    #[track_caller]
    pub fn call<'a>(&'static self, my: MyCpu<'_>, msg: Pin<&'a mut Msg<T>>) -> ReplyFuture<'a, T> {
        self.do_call(my, msg)
    }

    /// Take the next request or reply without blocking.
    /// DragonFly: `lwkt_getport()`.
    ///
    /// # Panics
    /// On a thread port, if `cur` is not its owner; on a put-only or
    /// reply-only port.
    #[track_caller]
    pub fn getport(&'static self, cur: &Cur) -> Option<Incoming<T>> {
        self.do_getport(cur)
    }

    /// Block until a request or reply arrives and take it; once the port is
    /// closed and empty, return [`Incoming::Closed`] (a closing port wakes
    /// its waiters). DragonFly: `lwkt_waitport()`.
    ///
    /// # Panics
    /// As [`getport`](Port::getport).
    #[track_caller]
    #[inline]
    pub fn waitport(&'static self, cur: &mut Cur) -> Incoming<T> {
        self.do_waitport(cur)
    }

    /// [`waitport`](Port::waitport) for at most `timeout`: the next request
    /// or reply, or [`Incoming::Closed`], or `Err(TimedOut)` when nothing
    /// arrived in time. DragonFly: `lwkt_waitport()` whose sleep has a
    /// `timo` (`EWOULDBLOCK`).
    ///
    /// Never early: `Err(TimedOut)` comes only once the timeout has passed
    /// on the backend's clock (one deadline for the whole wait, however
    /// often the thread is woken), and the port is looked at once more
    /// first, so a message that arrives as the time runs out is returned.
    /// A zero timeout looks once (as [`getport`](Port::getport), but
    /// returning [`Incoming::Closed`] for a closed, empty port); a huge one
    /// never times out. A thread port still watches for puts before it
    /// blocks (at most the backend's watch, about 75 µs hosted, past the
    /// deadline).
    ///
    /// ```
    /// use std::time::Duration;
    /// use lwkt_msg::Port;
    ///
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let port: &'static Port<u32> = Port::thread(cur).leak();
    ///     // Nobody sends: the wait times out.
    ///     let r = port.waitport_timeout(cur, Duration::from_millis(1));
    ///     assert_eq!(r.err(), Some(lwkt_core::TimedOut));
    ///     port.close(cur);
    /// });
    /// ```
    ///
    /// # Panics
    /// As [`getport`](Port::getport); and if the backend has no clock
    /// ([`Arch::clock`](lwkt_core::Arch::clock)).
    #[track_caller]
    pub fn waitport_timeout(
        &'static self,
        cur: &mut Cur,
        timeout: core::time::Duration,
    ) -> Result<Incoming<T>, lwkt_core::TimedOut> {
        self.do_waitport_timeout(cur, timeout)
    }

    /// Close the port: every queued request is replied [`MsgError::Closed`],
    /// queued replies go back to their originators, and later puts are
    /// refused the same way. A thread port's owner closes it before it
    /// exits (a put to a port whose owner has exited is refused too, but
    /// messages queued before the exit would wait for a receiver).
    ///
    /// # Panics
    /// As [`getport`](Port::getport).
    #[track_caller]
    pub fn close(&'static self, cur: &Cur) {
        self.do_close(cur)
    }

    /// Close the port from any thread: later puts are refused
    /// ([`MsgError::Closed`]); its receiver takes what is already queued,
    /// then [`waitport`](Port::waitport) returns [`Incoming::Closed`]. For
    /// a thread port the close travels by IPI to the owner's CPU; use
    /// [`close`](Port::close) from a serializer port's holder.
    ///
    /// ```
    /// use lwkt_core::CpuId;
    /// use lwkt_msg::{Incoming, Port};
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let (tx, rx) = std::sync::mpsc::channel();
    ///     let t = cur.spawn_on(CpuId::new(1), move |me| {
    ///         let port: &'static Port<u8> = Port::thread(me).leak();
    ///         tx.send(port).unwrap();
    ///         assert!(matches!(port.waitport(me), Incoming::Closed));
    ///     }).unwrap();
    ///     let port = loop { if let Ok(p) = rx.try_recv() { break p; } cur.yield_now(); };
    ///     port.close_from(cur.my_cpu());
    ///     cur.join(&t);
    /// });
    /// ```
    ///
    /// # Panics
    /// On a serializer, put-only or reply-only port, and on the thread port
    /// of another machine's thread.
    #[track_caller]
    pub fn close_from(&'static self, my: MyCpu<'_>) {
        self.do_close_from(my)
    }

    /// Whether [`close`](Port::close) was called.
    ///
    /// # Panics
    /// As [`getport`](Port::getport).
    #[track_caller]
    pub fn is_closed(&'static self, cur: &Cur) -> bool {
        self.do_is_closed(cur)
    }

    // ---- internals -------------------------------------------------------

    #[track_caller]
    pub(crate) fn do_sendmsg(&self, my: MyCpu<'_>, msg: Pin<&mut Msg<T>>) {
        self.check_put(my);
        msg.hdr.begin_send(!msg.has_reply_port());
        self.put(my, msg.as_raw());
    }

    /// `domsg`, inlined into the caller down to the same-CPU hand-off
    /// (`domsg_here`), whose switch then returns into the caller's own
    /// frame; every other case is `domsg_put_and_wait`.
    #[track_caller]
    #[inline(always)]
    pub(crate) fn do_domsg(&self, cur: &mut Cur, msg: Pin<&mut Msg<T>>) -> Result<(), MsgError> {
        // A put-only port: the handler runs in this call (`put_only`).
        if let Kind::PutOnly(handler) = self.kind {
            return put_only::domsg_inline(handler, cur, msg);
        }
        self.check_put(cur.my_cpu());
        if let Kind::Thread(owner) = &self.kind {
            if cur.is(owner) {
                own_port_domsg();
            }
        }
        msg.hdr.begin_domsg();
        let m = msg.as_raw();
        if let Kind::Thread(owner) = &self.kind {
            if self.domsg_here(cur, owner, m) {
                // SAFETY: the caller's pinned borrow keeps the message
                // alive; done: the originator owns the message again.
                return MsgError::decode(unsafe { (*m).hdr.code() });
            }
        }
        self.domsg_put_and_wait(cur, m)
    }

    /// The rest of `domsg`, for a message begun (`begin_send(true)`) that
    /// `domsg_here` did not take: put it, then wait for its reply (watching
    /// for it first when it is served on another CPU).
    #[track_caller]
    #[inline(never)]
    fn domsg_put_and_wait(&self, cur: &mut Cur, m: *mut Msg<T>) -> Result<(), MsgError> {
        // SAFETY: the caller's pinned borrow keeps the message alive for
        // this whole call; we touch only its atomic header.
        let hdr = unsafe { &(*m).hdr };
        let my = cur.my_cpu();
        // Our own `HELD` message, to the port we borrow until it is done:
        // the IPI that carries it needs no count (`Carry`).
        self.put_as(my, m, Carry::Borrowed);
        if !hdr.is_done() && self.served_elsewhere(cur) && cur.my_cpu().spin_wait_pays() {
            // The reply is being made on another CPU, often within a few
            // hundred nanoseconds: watch for it before sleeping (unless that
            // CPU may not be running: a hosted machine with more vCPUs than
            // host cores, where the watch would hold a core it needs). A reply
            // seen here costs the replier no wake-up, and us no sleep-queue
            // operations and no IPI back (DragonFly's thread ports spin
            // likewise before blocking, `lwkt_spin_loops`). IPIs to this
            // CPU are served meanwhile (we are not in a critical section).
            //
            // The watch looks at the header from the start and does not
            // pause between looks. Both were tried the other way: a quiet
            // time before the first look (so as not to take the line from
            // a replier still writing it) and a `pause` per turn each made
            // the reply seen later than the replier's lost line cost it
            // (docs/benchmark-notes.md, session 16: 158 -> 135 ns per round
            // trip in the fast placement, 630 -> 525 in the slow one). The
            // watch is bounded by `DOMSG_POLL_CYCLES`.
            let start = my.cycles();
            let mut turn = 0u32;
            while !hdr.is_done() {
                turn = turn.wrapping_add(1);
                if turn % DOMSG_CLOCK_EVERY == 0
                    && my.cycles().wrapping_sub(start) >= DOMSG_POLL_CYCLES
                {
                    break;
                }
            }
        }
        if !hdr.is_done() {
            cur.sleep_until(m as usize, || hdr.prepare_wait());
        }
        // SAFETY: done: the originator owns the message again.
        MsgError::decode(unsafe { hdr.code() })
    }

    /// `domsg` to a thread port whose owner lives on this CPU: queue the
    /// message and, if the owner waits on the port, hand the CPU straight
    /// to it ([`Cur::block_for`]); sleep on the message until the reply,
    /// which is completed on this CPU (`f::PARKED`): all in one critical
    /// section, with a sleep and a wakeup that stay on this CPU and no
    /// read-modify-write. DragonFly's `lwkt_domsg` to a thread port on the
    /// same CPU. Returns `false`, having done nothing, when the owner lives
    /// elsewhere or the port refuses the message (the general path then
    /// sends it).
    #[inline(always)]
    fn domsg_here(&self, cur: &mut Cur, owner: &ThreadHandle, m: *mut Msg<T>) -> bool {
        cur.crit_enter();
        let waiter = cur.park_token();
        let my = cur.my_cpu();
        let mut tag = 0;
        let mut wake = false;
        // SAFETY: the owner lives here (`is_local`, M4), and we are in a
        // critical section; the borrow ends before anything else runs.
        let queued = owner.is_local(my)
            && unsafe {
                let inner = self.inner();
                !inner.closed && !owner.has_exited() && {
                    // We are the originator, just after `begin_send(true)`,
                    // and wait below, on this CPU, until the message is
                    // done: the target wakes us by the token it finds in
                    // the message (`complete_parked`).
                    tag = Msg::park_tag(m, waiter);
                    (*m).hdr.park_queued(my.id());
                    // `m` is in flight, on no queue, and stays alive.
                    inner.q.push(m as *mut Header);
                    wake = core::mem::take(&mut inner.waiting);
                    true
                }
            };
        if queued {
            // SAFETY: the caller's pinned borrow keeps the message alive.
            let hdr = unsafe { &(*m).hdr };
            // Off the run queue until the reply's `unpark` (or any other
            // wake-up: then look again). In our critical section, so the
            // reply, made on this CPU, comes only once we have switched
            // away; the test reads our own CPU's last store. An owner
            // waiting on the port runs next, in our turn when it has our
            // priority (the direct hand-off); one that does not wait
            // finds the message when it next looks.
            if wake {
                cur.block_for(owner);
            }
            while !hdr.is_done() {
                cur.block();
            }
            // SAFETY: done: the originator owns the message again.
            unsafe { Msg::unpark_tag(m, tag) };
        }
        cur.crit_exit();
        queued
    }

    #[track_caller]
    pub(crate) fn do_call<'a>(
        &self,
        my: MyCpu<'_>,
        msg: Pin<&'a mut Msg<T>>,
    ) -> ReplyFuture<'a, T> {
        self.check_put(my);
        msg.hdr.begin_send(true);
        let m = msg.as_raw();
        self.put(my, m);
        // SAFETY: `m` comes from the pinned borrow `'a` given to the future.
        unsafe { ReplyFuture::new(m) }
    }

    #[track_caller]
    pub(crate) fn do_getport(&self, cur: &Cur) -> Option<Incoming<T>> {
        self.check_receiver(cur);
        let my = cur.my_cpu();
        loop {
            let h = self.pop(my)?;
            if let Some(x) = self.classify(my, h) {
                return Some(x);
            }
        }
    }

    /// `waitport`: inlined, the owner of a thread port takes a message
    /// already queued (a request its sender queued while the owner ran, as
    /// after the reply's hand-back, `complete_parked`) in one critical
    /// section and no call; anything else is `waitport_slow`.
    #[track_caller]
    #[inline]
    pub(crate) fn do_waitport(&self, cur: &mut Cur) -> Incoming<T> {
        if let Kind::Thread(owner) = &self.kind {
            if cur.is(owner) {
                cur.crit_enter();
                // SAFETY: the owner (just checked), on its CPU, in a
                // critical section; the borrow ends before anything else
                // runs.
                let Some(h) = unsafe { self.inner() }.q.pop() else {
                    // Empty: wait, in the section already held.
                    return self.owner_wait_untimed(cur);
                };
                cur.crit_exit();
                if let Some(x) = self.classify(cur.my_cpu(), h) {
                    return x;
                }
            }
        }
        self.waitport_slow(cur)
    }

    /// `waitport` by a thread port's owner that found the queue empty, in
    /// the critical section it looked in.
    #[inline(never)]
    fn owner_wait_untimed(&self, cur: &mut Cur) -> Incoming<T> {
        match self.owner_wait_in_crit(cur, None) {
            Ok(x) => x,
            Err(TimedOut) => unreachable!("an untimed wait timed out"),
        }
    }

    #[track_caller]
    #[inline(never)]
    fn waitport_slow(&self, cur: &mut Cur) -> Incoming<T> {
        if let Kind::Thread(_) = self.kind {
            return self.thread_waitport(cur);
        }
        loop {
            if let Some(x) = self.do_getport(cur) {
                return x;
            }
            if self.sleep_on(cur, |inner| !inner.q.is_empty() || inner.closed) {
                // Closed; take what arrived before the close, if anything.
                return self.do_getport(cur).unwrap_or(Incoming::Closed);
            }
        }
    }

    /// `waitport` on a thread port, by its owner: the queue is looked at,
    /// and the owner blocked, in as few critical sections as the waiting
    /// allows: one per message taken when messages are queued; one from
    /// finding the queue empty, through the watch and the block, to taking
    /// the message that ends it.
    #[track_caller]
    #[inline]
    fn thread_waitport(&self, cur: &mut Cur) -> Incoming<T> {
        self.check_receiver(cur);
        match self.owner_wait(cur, None) {
            Ok(x) => x,
            Err(TimedOut) => unreachable!("an untimed wait timed out"),
        }
    }

    /// The owner's wait loop (`thread_waitport`, and with a deadline
    /// `thread_waitport_until`): take a queued message, or watch the
    /// rings, or block, for at most the time left before `deadline` if
    /// there is one. Inlined into both, so the untimed wait carries no
    /// deadline test.
    #[inline(always)]
    fn owner_wait(
        &self,
        cur: &mut Cur,
        deadline: Option<timed::Deadline>,
    ) -> Result<Incoming<T>, TimedOut> {
        cur.crit_enter();
        self.owner_wait_in_crit(cur, deadline)
    }

    /// [`owner_wait`](Self::owner_wait) entered in a critical section the
    /// caller holds (its own, which this leaves before returning); the
    /// caller is the owner (`check_receiver`, or `cur.is(owner)`).
    #[inline(always)]
    fn owner_wait_in_crit(
        &self,
        cur: &mut Cur,
        deadline: Option<timed::Deadline>,
    ) -> Result<Incoming<T>, TimedOut> {
        loop {
            // SAFETY: the owner (`check_receiver`), on its CPU, in a
            // critical section; the borrow ends before anything else runs.
            let (h, closed) = unsafe {
                let inner = self.inner();
                (inner.q.pop(), inner.closed)
            };
            if let Some(h) = h {
                cur.crit_exit();
                if let Some(x) = self.classify(cur.my_cpu(), h) {
                    return Ok(x);
                }
                cur.crit_enter();
                continue;
            }
            if closed {
                cur.crit_exit();
                return Ok(Incoming::Closed);
            }
            // Looked at the queue after every wake-up: a put that lands as
            // the time runs out is taken, not lost to the timeout.
            let left = match deadline {
                None => None,
                Some(d) => match d.remaining(cur.my_cpu()) {
                    Some(left) => Some(left),
                    None => {
                        cur.crit_exit();
                        return Err(TimedOut);
                    }
                },
            };
            // The idle loop would watch the rings for us while we sleep;
            // watching them here instead serves the next put in this
            // thread, with no wake-up and no switch. As long as the idle
            // loop would (the backend's `idle_poll_cycles`), and only when
            // no other thread waits to run here: otherwise (a sender of
            // this CPU we just answered, say) we go back to sleep at once,
            // without a look (nothing could land: we are in our section).
            // The watch runs the IPIs it finds itself, inside our section.
            if !cur.others_runnable() {
                let queued = || {
                    // SAFETY: the owner, on its CPU, in the critical
                    // section `watch_until` runs this in.
                    let inner = unsafe { self.inner() };
                    !inner.q.is_empty() || inner.closed
                };
                if cur.watch_until(u64::MAX, queued) {
                    continue;
                }
            }
            if cur.my_cpu().has_deferred() {
                // IPIs arrived after the watch's last look (deferred by our
                // section): run them now, as the section's end does, rather
                // than switch away and back for a put among them.
                cur.crit_exit();
                cur.crit_enter();
                continue;
            }
            // Nothing queued and not closed at the watch's last look, and
            // nothing could land since: we have been in our critical
            // section throughout, and nothing waits in it.
            // SAFETY: the owner, on its CPU, in a critical section.
            unsafe { self.inner() }.waiting = true;
            // A put that lands from here on (deferred by the critical
            // section until we switch) schedules us again; we take it in
            // the same critical section.
            match left {
                None => cur.block(),
                Some(left) => {
                    // The timer schedules us when `left` has passed.
                    let _ = cur.block_timeout(left);
                    // SAFETY: as above. Timed out, nobody cleared it: a
                    // later put need not schedule a thread that no longer
                    // waits here.
                    unsafe { self.inner() }.waiting = false;
                }
            }
        }
    }

    #[track_caller]
    pub(crate) fn do_close(&self, cur: &Cur) {
        self.check_receiver(cur);
        let my = cur.my_cpu();
        // SAFETY: receiver's access (owner CPU in a critical section, or
        // the lock), as `with_inner` requires.
        let waiting = self.with_inner(my, |inner| {
            inner.closed = true;
            core::mem::take(&mut inner.waiting)
        });
        if waiting && !matches!(self.kind, Kind::Thread(_)) {
            // Receivers asleep on the port see it closed.
            self.gen.fetch_add(1, Ordering::Release);
            my.wakeup(self.chan());
        }
        while let Some(h) = self.pop(my) {
            let m = h as *mut Msg<T>;
            // SAFETY: popped: ours to dispose of.
            let hdr = unsafe { &(*m).hdr };
            if hdr.flags() & f::REPLY != 0 {
                hdr.take_reply();
            } else {
                hdr.take_request();
                // SAFETY: a request we took: we own it as its target.
                unsafe { MsgHandle::from_raw(m) }.reply(my, Err(MsgError::Closed));
            }
        }
    }

    #[track_caller]
    pub(crate) fn do_close_from(&self, my: MyCpu<'_>) {
        match &self.kind {
            Kind::Thread(owner) => {
                check_machine(owner, my);
                // Closed here if the owner lives here, else by IPI.
                my.crit(|| close_or_send(my, self));
            }
            Kind::Spin => {
                let waiting = my.crit(|| {
                    self.lock.with(|| {
                        // SAFETY: under the lock.
                        let inner = unsafe { self.inner() };
                        inner.closed = true;
                        core::mem::take(&mut inner.waiting)
                    })
                });
                if waiting {
                    my.wakeup(self.chan());
                }
            }
            _ => panic!(
                "lwkt-msg: close_from works on thread and spin ports (a serializer \
                 port is closed by its holder with close)"
            ),
        }
    }

    #[track_caller]
    pub(crate) fn do_is_closed(&self, cur: &Cur) -> bool {
        self.check_receiver(cur);
        self.with_inner(cur.my_cpu(), |inner| inner.closed)
    }

    /// Put an in-flight message (sent, or forwarded) on this port.
    pub(crate) fn put(&self, my: MyCpu<'_>, m: *mut Msg<T>) {
        self.put_as(my, m, Carry::Counted)
    }

    /// [`put`](Self::put), naming the port in the IPI to a thread port's
    /// owner on another CPU as `carry` says.
    fn put_as(&self, my: MyCpu<'_>, m: *mut Msg<T>, carry: Carry) {
        match &self.kind {
            Kind::Thread(_) => my.crit(|| self.thread_push(my, m, false, carry)),
            Kind::Spin => my.crit(|| self.spin_push(my, m, false)),
            Kind::Serializer(slz) => self.serial_push(my, slz, m, false),
            Kind::PutOnly(handler) => {
                // SAFETY: the sender handed the message over; the handler
                // owns it.
                let h = unsafe { MsgHandle::from_raw(m) };
                abort_on_unwind("a put-only port's handler", || handler(my, h));
            }
            Kind::ReplyOnly(_) => unreachable!("checked by check_put"),
        }
    }

    /// Deliver a reply to this port (the message's reply port).
    #[track_caller]
    pub(crate) fn deliver_reply(&self, my: MyCpu<'_>, m: *mut Msg<T>) {
        match &self.kind {
            Kind::Thread(_) => my.crit(|| self.thread_push(my, m, true, Carry::Counted)),
            Kind::Spin => my.crit(|| self.spin_push(my, m, true)),
            Kind::Serializer(slz) => self.serial_push(my, slz, m, true),
            Kind::ReplyOnly(on_reply) => {
                // The hook runs first, so whoever sees the message done also
                // sees what the hook did.
                if let Some(cb) = on_reply {
                    // SAFETY: the replier owns the message until `complete`.
                    let r = unsafe { Replied::of(m) };
                    abort_on_unwind("a reply-only port's callback", || cb(my, r));
                }
                complete(my, m);
            }
            Kind::PutOnly(_) => unreachable!("checked by check_reply_port"),
        }
    }

    /// Whether replies to this port wait on its queue (not completed in
    /// place).
    pub(crate) fn queues_replies(&self) -> bool {
        matches!(
            self.kind,
            Kind::Thread(_) | Kind::Spin | Kind::Serializer(_)
        )
    }

    /// Before a send touches the message: the port takes requests, from
    /// this machine.
    #[track_caller]
    #[inline]
    fn check_put(&self, my: MyCpu<'_>) {
        match &self.kind {
            Kind::ReplyOnly(_) => panic!(
                "lwkt-msg: put to a reply-only port (rule: reply-only ports \
                 take replies, never requests)"
            ),
            Kind::Thread(owner) => check_machine(owner, my),
            _ => {}
        }
    }

    #[track_caller]
    pub(crate) fn check_reply_port(&self) {
        if let Kind::PutOnly(_) = self.kind {
            panic!(
                "lwkt-msg: a put-only port cannot be a reply port (rule: \
                 put-only ports take requests only)"
            );
        }
    }

    #[track_caller]
    #[inline]
    fn check_receiver(&self, cur: &Cur) {
        match &self.kind {
            Kind::Thread(owner) => {
                if !cur.is(owner) {
                    not_the_owner(cur, owner);
                }
            }
            Kind::Spin => {}
            Kind::Serializer(slz) => assert!(
                slz.is_held_by(cur),
                "lwkt-msg: thread '{}' used a serializer port without holding its \
                 serializer (rule: every operation on a serializer port holds it)",
                cur.name()
            ),
            Kind::PutOnly(_) | Kind::ReplyOnly(_) => panic!(
                "lwkt-msg: put-only and reply-only ports have no queue to \
                 receive from"
            ),
        }
    }

    fn send_remote(&self, my: MyCpu<'_>, cpu: CpuId, m: *mut Msg<T>, func: IpiFn, carry: Carry) {
        // SAFETY: the message is in flight and live.
        unsafe { (*m).hdr.transit(true) };
        self.send_ipi(my, cpu, func, m as usize, carry);
    }

    /// Send an IPI naming this port to `cpu`. `Counted`: the IPI function
    /// gives up the count taken here when it is done with the port
    /// ([`Port::release`]); `Borrowed`: no count, the originator's borrow
    /// keeps the port alive ([`Carry::Borrowed`]).
    fn send_ipi(&self, my: MyCpu<'_>, cpu: CpuId, func: IpiFn, arg: usize, carry: Carry) {
        if carry == Carry::Counted {
            self.hold();
        }
        my.send_ipi(cpu, func, self as *const Port<T> as usize, arg)
            .expect("lwkt-msg: the port owner's CPU is not on this machine");
    }

    /// Take a count on a counted port (nothing for a `'static` one), for
    /// something that will name the port beyond the caller's borrow.
    pub(crate) fn hold(&self) {
        #[cfg(feature = "alloc")]
        if !self.origin.is_null() {
            // SAFETY: `origin` is the port's `Arc::as_ptr` (`PortRef::new`
            // is the only place that sets it), and the caller's `&self`
            // comes from a live count.
            unsafe { alloc::sync::Arc::increment_strong_count(self.origin) };
        }
    }

    /// Give up a count taken with [`hold`](Port::hold); the last one frees
    /// the port. A raw pointer, not `&self`: the port may be freed here.
    ///
    /// # Safety
    /// `port` is live and the caller owns a count on it taken by `hold`
    /// (or the port is `'static`), and does not use `port` afterwards.
    pub(crate) unsafe fn release(port: *const Port<T>) {
        // SAFETY: live (the caller's count).
        let origin = unsafe { (*port).origin };
        #[cfg(feature = "alloc")]
        if !origin.is_null() {
            // SAFETY: the caller's count, taken by `hold` on the `Arc`
            // `origin` points into.
            unsafe { alloc::sync::Arc::decrement_strong_count(origin) };
        }
        #[cfg(not(feature = "alloc"))]
        let _ = origin;
    }

    /// Thread port: queue `m` if the owner lives on this CPU, or send it by
    /// IPI to the owner's CPU, which does the same (chasing a migrating
    /// owner). Runs in a critical section.
    ///
    /// # Panics
    /// If the owner belongs to another machine.
    #[track_caller]
    fn thread_push(&self, my: MyCpu<'_>, m: *mut Msg<T>, is_reply: bool, carry: Carry) {
        let Kind::Thread(owner) = &self.kind else {
            unreachable!()
        };
        if let Some(c) = route(owner, my) {
            let func: IpiFn = match (is_reply, carry) {
                (true, _) => push_remote::<T, true, true>,
                (false, Carry::Counted) => push_remote::<T, false, true>,
                (false, Carry::Borrowed) => push_remote::<T, false, false>,
            };
            debug_assert!(!(is_reply && carry == Carry::Borrowed));
            return self.send_remote(my, c, m, func, carry);
        }
        // SAFETY: the owner lives here (`route`), in a critical section.
        let closed = unsafe { self.inner() }.closed || owner.has_exited();
        if closed {
            return refuse(my, m, is_reply);
        }
        // SAFETY: as above; the borrow ends before anything else runs.
        let wake = unsafe {
            let inner = self.inner();
            inner.q.push(m as *mut Header);
            mark(m, is_reply);
            core::mem::take(&mut inner.waiting)
        };
        if wake {
            my.schedule(owner);
        }
    }

    /// Spin port: queue `m` under the lock. Runs in a critical section.
    fn spin_push(&self, my: MyCpu<'_>, m: *mut Msg<T>, is_reply: bool) {
        let r = self.lock.with(|| {
            // SAFETY: under the lock.
            let inner = unsafe { self.inner() };
            if inner.closed {
                return None;
            }
            // SAFETY: `m` is in flight, on no queue, and stays alive.
            unsafe { inner.q.push(m as *mut Header) };
            mark(m, is_reply);
            Some(core::mem::take(&mut inner.waiting))
        });
        match r {
            None => refuse(my, m, is_reply),
            Some(true) => my.wakeup(self.chan()),
            Some(false) => {}
        }
    }

    /// Serializer port: queue `m`; the running thread holds the serializer
    /// (not interrupt context: an IPI function is never the holder).
    #[track_caller]
    fn serial_push(&self, my: MyCpu<'_>, slz: &Serializer, m: *mut Msg<T>, is_reply: bool) {
        assert!(
            slz.is_held_here(my),
            "lwkt-msg: put or reply to a serializer port without holding its \
             serializer, or from interrupt context (rule: every operation on a \
             serializer port is made by the thread holding it)"
        );
        let r = self.with_inner(my, |inner| {
            if inner.closed {
                return None;
            }
            // SAFETY: `m` is in flight, on no queue, and stays alive.
            unsafe { inner.q.push(m as *mut Header) };
            mark(m, is_reply);
            self.gen.fetch_add(1, Ordering::Release);
            Some(core::mem::take(&mut inner.waiting))
        });
        match r {
            None => refuse(my, m, is_reply),
            Some(true) => my.wakeup(self.chan()),
            Some(false) => {}
        }
    }

    fn pop(&self, my: MyCpu<'_>) -> Option<*mut Header> {
        self.with_inner(my, |inner| inner.q.pop())
    }

    /// Hand a popped message to the receiver: a reply goes back to its
    /// originator, a request to the receiver, unless its originator asked
    /// to abort (then it is replied [`MsgError::Aborted`] here).
    fn classify(&self, my: MyCpu<'_>, h: *mut Header) -> Option<Incoming<T>> {
        let m = h as *mut Msg<T>;
        // SAFETY: popped from our queue: the receiver owns it now.
        let hdr = unsafe { &(*m).hdr };
        if hdr.flags() & f::REPLY != 0 {
            // SAFETY: we own the queued reply until `take_reply`, which
            // hands it back to the originator (who may retag it after).
            let r = unsafe { Replied::of(m) };
            hdr.take_reply();
            return Some(Incoming::Reply(r));
        }
        let before = hdr.take_request();
        // SAFETY: a request taken from our queue: we are its target.
        let h = unsafe { MsgHandle::from_raw(m) };
        if before & f::ABORTREQ != 0 {
            h.reply(my, Err(MsgError::Aborted));
            return None;
        }
        Some(Incoming::Request(h))
    }

    /// Sleep until `ready(inner)` holds (checked with the receiver's access);
    /// returns whether the port is closed.
    fn sleep_on(&self, cur: &mut Cur, ready: impl Fn(&Inner) -> bool) -> bool {
        self.sleep_on_within(cur, None, ready)
    }

    /// [`sleep_on`](Self::sleep_on), for at most `left` when it is given:
    /// returns when `ready(inner)` may hold, or when the time is up (a
    /// timed caller looks again, and at its deadline); and whether the port
    /// is closed.
    fn sleep_on_within(
        &self,
        cur: &mut Cur,
        left: Option<Duration>,
        ready: impl Fn(&Inner) -> bool,
    ) -> bool {
        match self.kind {
            Kind::Thread(_) => {
                // The idle loop would watch the rings for us while we
                // sleep; watching them here instead serves the next put in
                // this thread, with no wake-up and no switch. As long as the
                // idle loop would (the backend's `idle_poll_cycles`).
                let queued = || {
                    // SAFETY: the owner, on its CPU, in the critical
                    // section `watch_until` runs this in.
                    ready(unsafe { self.inner() })
                };
                if cur.watch_until(u64::MAX, queued) {
                    return self.with_inner(cur.my_cpu(), |inner| inner.closed);
                }
                cur.crit_enter();
                // SAFETY: the owner, on its CPU, in a critical section.
                let sleep = unsafe {
                    let inner = self.inner();
                    !ready(inner) && {
                        inner.waiting = true;
                        true
                    }
                };
                if sleep {
                    // A put that lands from here on (deferred by the critical
                    // section until we switch) schedules us again; so does
                    // the timer, when there is one.
                    match left {
                        None => cur.block(),
                        Some(left) => {
                            let _ = cur.block_timeout(left);
                            // SAFETY: as above. Timed out, nobody cleared
                            // it: a later put need not schedule us.
                            unsafe { self.inner() }.waiting = false;
                        }
                    }
                }
                cur.crit_exit();
            }
            Kind::Serializer(slz) => {
                let gen = self.gen.load(Ordering::Acquire);
                // SAFETY: the serializer is held (check_receiver).
                let sleep = unsafe {
                    let inner = self.inner();
                    !ready(inner) && {
                        inner.waiting = true;
                        true
                    }
                };
                if sleep {
                    // Puts need the serializer, so none lands between the
                    // check and the exit; one after the exit bumps `gen`.
                    slz.exit(cur);
                    let chan = self.chan();
                    sleep_chan(cur, chan, left, || self.gen.load(Ordering::Acquire) != gen);
                    slz.enter(cur);
                }
            }
            _ => sleep_chan(cur, self.chan(), left, || {
                self.lock.with(|| {
                    // SAFETY: under the lock.
                    let inner = unsafe { self.inner() };
                    ready(inner) || {
                        inner.waiting = true;
                        false
                    }
                })
            }),
        }
        self.with_inner(cur.my_cpu(), |inner| inner.closed)
    }

    /// Wait for the reply to `m` (whose reply port this is) and take it off
    /// the queue.
    pub(crate) fn wait_reply(&self, cur: &mut Cur, m: *mut Msg<T>) {
        self.check_receiver(cur);
        // SAFETY: the caller's pinned borrow keeps `m` alive.
        let hdr = unsafe { &(*m).hdr };
        loop {
            let got = self.with_inner(cur.my_cpu(), |inner| {
                hdr.is_queued_reply() && inner.q.remove(m as *mut Header)
            });
            if got {
                hdr.take_reply();
                return;
            }
            if hdr.is_done() {
                return;
            }
            self.sleep_on(cur, |inner| {
                hdr.is_queued_reply() || hdr.is_done() || inner.closed
            });
        }
    }

    /// Run `f` with the receiver's access to the queue: the owner CPU's
    /// critical section (thread ports, called by the owner), or the lock.
    fn with_inner<R>(&self, my: MyCpu<'_>, f: impl FnOnce(&mut Inner) -> R) -> R {
        my.crit(|| match self.kind {
            // SAFETY: callers checked `check_receiver`: we are the owner, so
            // on the owner's CPU, and in a critical section; or the running
            // thread holds the serializer (`check_receiver`, `serial_push`).
            Kind::Thread(_) | Kind::Serializer(_) => f(unsafe { self.inner() }),
            // SAFETY: under the lock.
            _ => self.lock.with(|| f(unsafe { self.inner() })),
        })
    }

    /// # Safety
    /// The caller has the receiver's access (see `with_inner`) and holds no
    /// other reference from `inner`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn inner(&self) -> &mut Inner {
        // SAFETY: forwarded.
        unsafe { &mut *self.inner.get() }
    }

    fn chan(&self) -> usize {
        self as *const Port<T> as usize
    }
}

impl<T: Send + 'static> fmt::Debug for Port<T> {
    fn fmt(&self, fm: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Thread(o) => return fm.debug_tuple("Port::thread").field(&o.name()).finish(),
            Kind::Spin => "Port::spin",
            Kind::Serializer(_) => "Port::serializer",
            Kind::PutOnly(_) => "Port::put_only",
            Kind::ReplyOnly(_) => "Port::reply_only",
        };
        fm.write_str(kind)
    }
}

impl<T: Send + 'static> MsgHandle<T> {
    /// Reply: hand the message back to its originator with `result` (to its
    /// reply port's queue, or completing it in place for a synchronous send
    /// or a message without reply port). DragonFly: `lwkt_replymsg()`.
    ///
    /// The reply to a [`domsg`](Port::domsg) made on this CPU may switch to
    /// its sender at once, when the replier runs alone at its priority
    /// outside any critical section and holds no tokens
    /// ([`MyCpu::unpark_hand_back`]): the sender resumes as from a call,
    /// and the replier, still runnable, when the sender blocks again (as
    /// any final `crit_exit` may switch). Inside a critical section a reply
    /// never switches.
    ///
    /// # Panics
    /// If `result` is `Err(MsgError::Code(c))` with `c <= 0`; if the reply
    /// port is the thread port of another machine's thread, or a
    /// serializer port whose serializer the running thread does not hold
    /// (the message then stays in flight).
    #[track_caller]
    #[inline]
    pub fn reply(self, my: MyCpu<'_>, result: Result<(), MsgError>) {
        let code = MsgError::encode(result);
        let m = self.into_raw();
        // SAFETY: we owned the message as its target until now.
        unsafe { (*m).hdr.set_code(code) };
        // Made inside a put-only port's handler on the thread that waits
        // for it in `domsg`: completed with a plain store.
        if put_only::complete_inline(my, m) {
            return;
        }
        // The message of a same-CPU `domsg` (synchronous, so never for a
        // reply port's queue): straight to its completion.
        // SAFETY: as above.
        if unsafe { (*m).hdr.flags() } & f::PARKED != 0 {
            return complete_parked(my, m);
        }
        reply_coded(my, m);
    }

    /// Pass the message on to `port`, still in flight; its eventual reply
    /// goes to the originator as usual. DragonFly: `lwkt_forwardmsg()`.
    ///
    /// # Panics
    /// If `port` takes no requests, or is the thread port of another
    /// machine's thread.
    #[track_caller]
    pub fn forward(self, my: MyCpu<'_>, port: impl AsPort<T>) {
        let port = port.as_port();
        port.check_put(my);
        port.put(my, self.into_raw());
    }
}

/// The rest of a reply whose code is stored: to the reply port's queue, or
/// completing the message in place for a synchronous send or a message
/// without reply port.
#[track_caller]
#[inline(never)]
fn reply_coded<T: Send + 'static>(my: MyCpu<'_>, m: *mut Msg<T>) {
    // SAFETY: the message is live until `deliver_reply` or `complete`
    // hands it back; its reply port is fixed while it is in flight, and
    // held by it.
    let hdr = unsafe { &(*m).hdr };
    // SAFETY: as above.
    match unsafe { (*m).reply_port() } {
        Some(port) if hdr.flags() & f::SYNC == 0 => {
            // Once the reply lands, the originator may take it and drop
            // the message, and with it the message's count on a counted
            // port: hold one of our own until the delivery returns.
            port.hold();
            let port: *const Port<T> = port;
            // SAFETY: live: the count just taken.
            unsafe { &*port }.deliver_reply(my, m);
            // SAFETY: that count, given up; `port` is not used after.
            unsafe { Port::release(port) };
        }
        _ => complete(my, m),
    }
}

/// Mark a message just linked on a queue.
fn mark<T: Send + 'static>(m: *mut Msg<T>, is_reply: bool) {
    // SAFETY: the message is live (queued).
    let hdr = unsafe { &(*m).hdr };
    if is_reply {
        hdr.mark_reply_queued();
    } else {
        hdr.mark_queued();
    }
}

/// Complete `m` in place and wake its waiters. After this the message is
/// its originator's, so nothing here touches it once `complete` has set
/// `DONE` (the sleep channel is only its address).
#[inline]
fn complete<T: Send + 'static>(my: MyCpu<'_>, m: *mut Msg<T>) {
    // SAFETY: we own the message until it is done.
    if unsafe { (*m).hdr.flags() } & f::PARKED != 0 {
        return complete_parked(my, m);
    }
    // SAFETY: we own the message until `complete` sets DONE; the waker runs
    // before that.
    let waiting = unsafe {
        let waker = &(*m).waker;
        (*m).hdr
            .complete(|| abort_on_unwind("a ReplyFuture's waker", || waker.wake()))
    };
    if waiting {
        my.wakeup(m as usize);
    }
}

/// Complete a `PARKED` message (`domsg` on one CPU) on its waiter's CPU
/// and wake the waiter there, by the [`ParkToken`](lwkt_core::ParkToken)
/// it left in the message; from another CPU (the message was forwarded)
/// the completion travels there by IPI. Inlined into `reply`'s head, so
/// the replier that hands the CPU back (`unpark_hand_back`) resumes in its
/// own frame, with no return the return-stack predictor has wrong.
#[inline(always)]
fn complete_parked<T: Send + 'static>(my: MyCpu<'_>, m: *mut Msg<T>) {
    // SAFETY: we own the message as its target until `complete_parked`
    // sets DONE (then we touch it no more); it is live until then (M2).
    let hdr = unsafe { &(*m).hdr };
    let cpu = hdr.parked_cpu();
    if cpu == my.id() {
        // SAFETY: as above, before DONE.
        let waiter = unsafe { Msg::parked_waiter(m) };
        // The waiter waits here (it blocked in `domsg_here`, in the
        // critical section in which it queued the message, so before
        // anything here could reply): it cannot run between the DONE store
        // and the wake-up, since only a switch made by the thread running
        // here lets it run (an interrupt meanwhile cannot switch).
        hdr.complete_parked();
        // The waiter takes our turn at once when it would anyway (we are
        // a thread alone at its priority, outside any critical section):
        // the CPU goes straight back to it, as a procedure returns, and we
        // resume when it blocks again (its next `domsg` to us, say);
        // otherwise it is made runnable as usual.
        // SAFETY: the token of the originator, which waits in `domsg_here`
        // until DONE and has not run since, so has not exited. Of another
        // machine (a reply carried there; CPU numbers overlap), it is left
        // alone: `unpark_hand_back` checks (a known limit,
        // docs/soundness.md: it is not woken).
        unsafe { my.unpark_hand_back(waiter) };
    } else {
        complete_parked_elsewhere(my, m, cpu);
    }
}

/// `complete_parked` from a CPU other than the waiter's: by IPI.
#[inline(never)]
fn complete_parked_elsewhere<T: Send + 'static>(my: MyCpu<'_>, m: *mut Msg<T>, cpu: CpuId) {
    if my
        .send_ipi(cpu, complete_parked_remote::<T>, m as usize, 0)
        .is_err()
    {
        // No such CPU here: a reply from another machine. Complete the
        // message; its originator is not woken (a known limit,
        // docs/soundness.md).
        // SAFETY: we own the message until DONE; nothing after.
        unsafe { (*m).hdr.complete_parked() };
    }
}

/// IPI function: `complete_parked` arriving at the waiter's CPU.
fn complete_parked_remote<T: Send + 'static>(my: MyCpu<'_>, m: usize, _: usize) {
    complete_parked(my, m as *mut Msg<T>);
}

/// A port refused `m` (closed, or its owner exited): a request is replied
/// [`MsgError::Closed`]; a reply completes its message in place.
fn refuse<T: Send + 'static>(my: MyCpu<'_>, m: *mut Msg<T>, is_reply: bool) {
    if is_reply {
        complete(my, m);
    } else {
        // SAFETY: the port would have become its owner; we act for it.
        unsafe { MsgHandle::from_raw(m) }.reply(my, Err(MsgError::Closed));
    }
}

/// Close a thread port on its owner's CPU, or send the close there by IPI
/// (chasing a migrated owner), and wake the owner if it waits on the port.
/// Runs in a critical section (`close_from`'s, or an IPI function's).
fn close_or_send<T: Send + 'static>(my: MyCpu<'_>, port: &Port<T>) {
    let Kind::Thread(owner) = &port.kind else {
        unreachable!()
    };
    if let Some(c) = route(owner, my) {
        return port.send_ipi(my, c, close_remote::<T>, 0, Carry::Counted);
    }
    // SAFETY: the owner lives here (`route`), in a critical section.
    let wake = unsafe {
        let inner = port.inner();
        inner.closed = true;
        core::mem::take(&mut inner.waiting)
    };
    if wake {
        my.schedule(owner);
    }
}

/// IPI function: `close_or_send` arriving at the owner's CPU.
fn close_remote<T: Send + 'static>(my: MyCpu<'_>, port: usize, _: usize) {
    let port = port as *const Port<T>;
    // SAFETY: the sender's `send_ipi` took a count for this IPI (or the
    // port is 'static), so the port is live; we run in a critical section.
    close_or_send(my, unsafe { &*port });
    // SAFETY: that count is ours to give up; `port` is not used after.
    unsafe { Port::release(port) };
}

/// Where a thread port's queue may be touched, seen from `my` inside a
/// critical section: `None` when the owner lives on this CPU (then only
/// this CPU touches the queue until the critical section ends), else the
/// CPU to send the operation to by IPI (which routes it again: a migrating
/// owner is chased). DragonFly: `lwkt_thread_putport()`'s
/// `td->td_gd == mycpu` test.
///
/// "Lives here" is [`ThreadHandle::is_local`]: its Acquire load of the
/// owner's CPU pairs with the Release store by which the old CPU hands a
/// migrating thread over (lwkt-core's `finish_switch`, after the thread has
/// switched away), so everything the owner did to the queue on its old CPU
/// happens before this CPU's push. The CPU number alone (a Relaxed load)
/// does not order them: that was a data race on the queue (loom model
/// `loom_tests::thread_port_push_after_migration`).
///
/// # Panics
/// If the owner belongs to another machine (its CPU numbers name CPUs of
/// that machine, not of `my`'s).
#[track_caller]
fn route(owner: &ThreadHandle, my: MyCpu<'_>) -> Option<CpuId> {
    route_by(
        my.id(),
        || owner.is_local(my),
        || {
            check_machine(owner, my);
            owner.cpu()
        },
    )
}

/// `route` over the owner's two words, for the loom models: `is_local()`
/// (its CPU pointer, Acquire: is it this CPU) and `cpu()` (its number).
pub(crate) fn route_by(
    here: CpuId,
    is_local: impl Fn() -> bool,
    cpu: impl Fn() -> CpuId,
) -> Option<CpuId> {
    loop {
        if is_local() {
            return None;
        }
        let c = cpu();
        if c != here {
            return Some(c);
        }
        // The owner's number already says this CPU, its CPU pointer not yet:
        // the old CPU is between the two stores of the handover (they come
        // one after the other, in its critical section), or this load of
        // the pointer came before that store. Sending to ourselves would run
        // this again at once; look again instead.
        crate::sync::spin_loop();
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn own_port_domsg() -> ! {
    panic!(
        "lwkt-msg: domsg to the caller's own thread port would wait \
         forever (rule: a thread cannot receive while it waits)"
    )
}

#[cold]
#[inline(never)]
#[track_caller]
fn not_the_owner(cur: &Cur, owner: &ThreadHandle) -> ! {
    panic!(
        "lwkt-msg: thread '{}' received from the port of thread '{}' \
         (rule: only a thread port's owner receives from it)",
        cur.name(),
        owner.name()
    )
}

/// Panic unless `owner` is a thread of `my`'s machine.
#[track_caller]
#[inline]
fn check_machine(owner: &ThreadHandle, my: MyCpu<'_>) {
    if !owner.is_of_machine(my) {
        other_machine(owner);
    }
}

#[cold]
#[inline(never)]
#[track_caller]
fn other_machine(owner: &ThreadHandle) -> ! {
    panic!(
        "lwkt-msg: port of another machine: the thread port of '{}' used from a CPU \
         of another lwkt machine (rule: a thread port takes puts, replies and \
         closes only from the machine of its owner)",
        owner.name()
    )
}

/// IPI function: a put (`REPLY = false`) or reply (`true`) arriving at the
/// owner's CPU of a thread port, carrying a count on the port (`COUNTED`)
/// or riding the originator's borrow ([`Carry::Borrowed`]).
fn push_remote<T: Send + 'static, const REPLY: bool, const COUNTED: bool>(
    my: MyCpu<'_>,
    port: usize,
    m: usize,
) {
    let port = port as *const Port<T>;
    let m = m as *mut Msg<T>;
    // SAFETY: the message is in flight and live.
    unsafe { (*m).hdr.transit(false) };
    let carry = if COUNTED {
        Carry::Counted
    } else {
        Carry::Borrowed
    };
    // SAFETY: the port is live: `COUNTED`, the sender's `send_ipi` took a
    // count for this IPI (or the port is 'static); otherwise the message
    // is a `domsg`'s, whose originator borrows the port until the message
    // is done, and the message cannot be done before `thread_push` has
    // finished with the port (`Carry::Borrowed`). IPI functions run in a
    // critical section.
    unsafe { &*port }.thread_push(my, m, REPLY, carry);
    if COUNTED {
        // SAFETY: that count is ours to give up; `port` is not used after.
        unsafe { Port::release(port) };
    }
    // Borrowed: nothing here touches the port after `thread_push` (the
    // message may be done, and the port dropped, once it returns).
}

/// How a put to a thread port on another CPU names the port in the IPI
/// that carries it there.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Carry {
    /// The IPI holds a count on the port ([`Port::hold`]), given up by its
    /// function: the port may outlive every other holder meanwhile (a
    /// `sendmsg`, a forward, a reply).
    Counted,
    /// No count: the put is a `domsg`'s own (its message `HELD`), whose
    /// caller borrows the port until the message is done. Every touch of
    /// the port on the way precedes the message's completion: `thread_push`
    /// queues it where only the owner takes it (the owner cannot run on
    /// that CPU before the IPI function or the put's critical section
    /// ends, and `schedule(owner)` comes before that), refuses it last
    /// (the reply completes it; nothing of the port is touched after), or
    /// sends it on by another IPI that is `Borrowed` too. Saves the two
    /// read-modify-writes of the count per round trip on a counted port
    /// (`PortRef`), on a line both CPUs write.
    Borrowed,
}

/// `Cur::sleep_until` on `chan`, for at most `left` when it is given (a
/// timeout returns like a wake-up: the caller looks again).
fn sleep_chan(cur: &mut Cur, chan: usize, left: Option<Duration>, cond: impl FnMut() -> bool) {
    match left {
        None => cur.sleep_until(chan, cond),
        Some(left) => {
            let _ = cur.sleep_until_timeout(chan, left, cond);
        }
    }
}
