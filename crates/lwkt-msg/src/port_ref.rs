//! Counted port handles: a port that is cloned and sent to other threads
//! and CPUs, freed when the last handle and the last message naming it are
//! gone, and the way to start a server thread with its port in one call.
//!
//! DragonFly keeps ports in long-lived kernel structures (a thread's
//! `td_msgport`, the `netisr_cpu[]` ports), so they need no counting; a
//! Rust kernel that starts and stops servers wants them freed.

#[cfg(feature = "alloc")]
use {
    crate::{Incoming, Msg, MsgError, ReplyFuture},
    alloc::sync::Arc,
    core::fmt,
    core::pin::Pin,
    core::sync::atomic::{AtomicPtr, Ordering},
    core::time::Duration,
    lwkt_core::TimedOut,
    lwkt_core::{Builder, CpuId, Cur, MyCpu, SpawnError, ThreadHandle},
};

use crate::Port;

mod sealed {
    pub trait Sealed {}
}

/// Names a port for as long as a message needs it: a `&'static Port<T>`, or
/// a [`PortRef<T>`] (by reference or by value), which the message then
/// counts. Taken by [`Msg::with_reply_port`], [`Msg::set_reply_port`] and
/// [`MsgHandle::forward`](crate::MsgHandle::forward).
///
/// ```
/// use lwkt_msg::{Msg, Port, PortRef};
/// static REPLIES: Port<u8> = Port::spin();
/// let counted = PortRef::new(Port::<u8>::spin());
/// let a = Msg::with_reply_port(&REPLIES, 1);   // a 'static port
/// let b = Msg::with_reply_port(&counted, 2);   // keeps `counted`'s port alive
/// # drop((a, b));
/// ```
pub trait AsPort<T: Send + 'static>: sealed::Sealed {
    /// The port, for the duration of the borrow.
    #[doc(hidden)]
    fn as_port(&self) -> &Port<T>;
}

impl<T: Send + 'static> sealed::Sealed for &'static Port<T> {}
impl<T: Send + 'static> AsPort<T> for &'static Port<T> {
    fn as_port(&self) -> &Port<T> {
        self
    }
}

#[cfg(feature = "alloc")]
impl<T: Send + 'static> sealed::Sealed for &PortRef<T> {}
#[cfg(feature = "alloc")]
impl<T: Send + 'static> AsPort<T> for &PortRef<T> {
    fn as_port(&self) -> &Port<T> {
        &self.0
    }
}

#[cfg(feature = "alloc")]
impl<T: Send + 'static> sealed::Sealed for PortRef<T> {}
#[cfg(feature = "alloc")]
impl<T: Send + 'static> AsPort<T> for PortRef<T> {
    fn as_port(&self) -> &Port<T> {
        &self.0
    }
}

/// A counted handle to a port: clone it, send it to other threads and CPUs,
/// keep it in a structure; the port is freed when the last handle, the last
/// message that names it as reply port and the last IPI on its way to it
/// are gone. No `leak`, no `static`, no hand-rolled publication.
///
/// Every operation of [`Port`] is here under the same name, with the same
/// rules (which are the port flavour's, not the handle's): anyone with a
/// handle sends to it; only the owner receives from a thread port. A thread
/// port is best made with [`serve_on`], which starts the owning thread and
/// gives back its port at once.
///
/// **Lifetime rules.** The type system sees to the memory: a handle, a
/// message naming the port, or a put riding an IPI each keep it alive, so
/// no use is ever a use after free. What it cannot see is the owner of a
/// thread port: once that thread has exited, sends through a handle still
/// compile and run, and are refused with [`MsgError::Closed`] (a
/// `sendmsg`'s reply says so). Requests still queued when the owner exits
/// are never taken: the owner [`close`](PortRef::close)s its port before it
/// returns (a `waitport` loop that ends on [`Incoming::Closed`] does).
///
/// **Costs.** A send through a handle costs what one through a `&'static
/// Port` does, plus, when it crosses CPUs, one atomic increment and
/// decrement of the port's count (the IPI's hold); a message naming a
/// counted reply port pays the same once per reply. The last handle may be
/// dropped in an IPI function (the one that delivered the last put), so the
/// kernel's global allocator must allow a free there (lwkt-slab's does).
///
/// DragonFly: a `lwkt_port_t`, which there is a plain pointer into a
/// long-lived structure.
///
/// ```
/// use core::pin::pin;
/// use lwkt_core::CpuId;
/// use lwkt_msg::{Incoming, Msg, PortRef};
///
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     // A server on CPU 1 and its port, in one call.
///     let (server, port) = lwkt_msg::serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
///         while let Incoming::Request(mut m) = port.waitport(me) {
///             *m *= 2;
///             m.reply(me.my_cpu(), Ok(()));
///         }
///     }).unwrap();
///     // Clients on both CPUs, each with its own clone of the handle.
///     let clients: Vec<_> = (0..2).map(|c| {
///         let port = port.clone();
///         cur.spawn_on(CpuId::new(c), move |me| {
///             let mut m = pin!(Msg::new(21));
///             port.domsg(me, m.as_mut()).unwrap();
///             assert_eq!(*m.body(), 42);
///         }).unwrap()
///     }).collect();
///     for c in &clients { cur.join(c); }
///     port.close_from(cur.my_cpu());
///     cur.join(&server);
/// });
/// ```
#[cfg(feature = "alloc")]
pub struct PortRef<T: Send + 'static>(Arc<Port<T>>);

#[cfg(feature = "alloc")]
impl<T: Send + 'static> PortRef<T> {
    /// Put `port` (of any flavour) behind a counted handle.
    ///
    /// ```
    /// use lwkt_msg::{Port, PortRef};
    /// let work: PortRef<u32> = PortRef::new(Port::spin());
    /// let for_a_worker = work.clone();
    /// # drop(for_a_worker);
    /// ```
    pub fn new(port: Port<T>) -> PortRef<T> {
        let mut arc = Arc::new(port);
        let origin = Arc::as_ptr(&arc);
        Arc::get_mut(&mut arc)
            .expect("a new Arc is unique")
            .set_origin(origin);
        PortRef(arc)
    }

    /// How many counts the port has (handles, messages naming it, IPIs).
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// A thread port owned by the calling thread (see [`Port::thread`]),
    /// behind a counted handle: the handle to give out when the owner
    /// already runs (else see [`serve_on`]).
    pub fn thread(cur: &Cur) -> PortRef<T> {
        PortRef::new(Port::thread(cur))
    }

    /// As [`Port::sendmsg`]. DragonFly: `lwkt_sendmsg()`.
    ///
    /// # Panics
    /// As [`Port::sendmsg`].
    #[track_caller]
    pub fn sendmsg(&self, my: MyCpu<'_>, msg: Pin<&mut Msg<T>>) {
        self.0.do_sendmsg(my, msg)
    }

    /// As [`Port::domsg`]. DragonFly: `lwkt_domsg()`.
    ///
    /// # Panics
    /// As [`Port::domsg`].
    #[track_caller]
    #[inline]
    pub fn domsg(&self, cur: &mut Cur, msg: Pin<&mut Msg<T>>) -> Result<(), MsgError> {
        self.0.do_domsg(cur, msg)
    }

    /// As [`Port::domsg_timeout`]: `domsg` for at most `timeout`, then
    /// abort and wait for the reply. DragonFly: `lwkt_domsg()` timing out
    /// (`lwkt_waitmsg()`, `lwkt_abortmsg()`, the wait for the reply).
    ///
    /// ```
    /// use core::pin::pin;
    /// use std::time::Duration;
    /// use lwkt_core::CpuId;
    /// use lwkt_msg::{serve_on, Incoming, Msg, PortRef};
    ///
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let (t, port) = serve_on(cur, CpuId::new(1), |me, port: PortRef<u64>| {
    ///         while let Incoming::Request(mut m) = port.waitport(me) {
    ///             *m += 1;
    ///             m.reply(me.my_cpu(), Ok(()));
    ///         }
    ///     }).unwrap();
    ///     let mut m = pin!(Msg::new(1u64).abortable());
    ///     // A prompt server: the reply comes long before a minute.
    ///     assert_eq!(port.domsg_timeout(cur, m.as_mut(), Duration::from_secs(60)), Ok(Ok(())));
    ///     assert_eq!(*m.body(), 2);
    ///     port.close_from(cur.my_cpu());
    ///     cur.join(&t);
    /// });
    /// ```
    ///
    /// # Panics
    /// As [`Port::domsg_timeout`].
    #[track_caller]
    pub fn domsg_timeout(
        &self,
        cur: &mut Cur,
        msg: Pin<&mut Msg<T>>,
        timeout: Duration,
    ) -> Result<Result<(), MsgError>, TimedOut> {
        self.0.do_domsg_timeout(cur, msg, timeout)
    }

    /// As [`Port::call`]: send, and get a future of the reply.
    ///
    /// # Panics
    /// As [`Port::sendmsg`].
    #[track_caller]
    pub fn call<'a>(&self, my: MyCpu<'_>, msg: Pin<&'a mut Msg<T>>) -> ReplyFuture<'a, T> {
        self.0.do_call(my, msg)
    }

    /// As [`Port::getport`]. DragonFly: `lwkt_getport()`.
    ///
    /// # Panics
    /// As [`Port::getport`].
    #[track_caller]
    pub fn getport(&self, cur: &Cur) -> Option<Incoming<T>> {
        self.0.do_getport(cur)
    }

    /// As [`Port::waitport`]. DragonFly: `lwkt_waitport()`.
    ///
    /// # Panics
    /// As [`Port::getport`].
    #[track_caller]
    #[inline]
    pub fn waitport(&self, cur: &mut Cur) -> Incoming<T> {
        self.0.do_waitport(cur)
    }

    /// As [`Port::waitport_timeout`]: the next message, or `Err(TimedOut)`
    /// once `timeout` has passed with none. DragonFly: `lwkt_waitport()`
    /// with a `timo`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lwkt_msg::{Incoming, PortRef};
    ///
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let port: PortRef<u8> = PortRef::thread(cur);
    ///     assert!(port.waitport_timeout(cur, Duration::ZERO).is_err()); // one look
    ///     port.close(cur);
    ///     // Closed and empty: no waiting at all.
    ///     assert!(matches!(port.waitport_timeout(cur, Duration::MAX), Ok(Incoming::Closed)));
    /// });
    /// ```
    ///
    /// # Panics
    /// As [`Port::waitport_timeout`].
    #[track_caller]
    pub fn waitport_timeout(
        &self,
        cur: &mut Cur,
        timeout: Duration,
    ) -> Result<Incoming<T>, TimedOut> {
        self.0.do_waitport_timeout(cur, timeout)
    }

    /// As [`Port::close`]: the receiver closes its port.
    ///
    /// # Panics
    /// As [`Port::getport`].
    #[track_caller]
    pub fn close(&self, cur: &Cur) {
        self.0.do_close(cur)
    }

    /// As [`Port::close_from`]: any thread closes a thread or spin port.
    ///
    /// # Panics
    /// As [`Port::close_from`].
    #[track_caller]
    pub fn close_from(&self, my: MyCpu<'_>) {
        self.0.do_close_from(my)
    }

    /// As [`Port::is_closed`].
    ///
    /// # Panics
    /// As [`Port::getport`].
    #[track_caller]
    pub fn is_closed(&self, cur: &Cur) -> bool {
        self.0.do_is_closed(cur)
    }

    /// Whether `a` and `b` are handles to the same port.
    pub fn ptr_eq(a: &PortRef<T>, b: &PortRef<T>) -> bool {
        Arc::ptr_eq(&a.0, &b.0)
    }
}

#[cfg(feature = "alloc")]
impl<T: Send + 'static> Clone for PortRef<T> {
    fn clone(&self) -> Self {
        PortRef(Arc::clone(&self.0))
    }
}

#[cfg(feature = "alloc")]
impl<T: Send + 'static> From<Port<T>> for PortRef<T> {
    fn from(port: Port<T>) -> Self {
        PortRef::new(port)
    }
}

#[cfg(feature = "alloc")]
impl<T: Send + 'static> fmt::Debug for PortRef<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PortRef").field(&*self.0).finish()
    }
}

/// Start a server thread on `cpu` and return it with its thread port: the
/// port exists (and takes sends) when this returns, and `body` receives it
/// as its owner. The shortest way to a server: no `leak`, no channel, no
/// waiting for the thread to publish its port.
///
/// The usual body is a `waitport` loop that ends when the port is closed
/// (by anyone with a handle, [`PortRef::close_from`]), so the requests
/// queued before the close are all taken.
///
/// ```
/// use core::pin::pin;
/// use lwkt_core::CpuId;
/// use lwkt_msg::{Incoming, Msg, PortRef};
///
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let (server, port) = lwkt_msg::serve_on(cur, CpuId::new(1), |me, port: PortRef<String>| {
///         while let Incoming::Request(mut m) = port.waitport(me) {
///             m.make_ascii_uppercase();
///             m.reply(me.my_cpu(), Ok(()));
///         }
///     }).unwrap();
///     let mut m = pin!(Msg::new(String::from("lwkt")));
///     port.domsg(cur, m.as_mut()).unwrap();
///     assert_eq!(m.body(), "LWKT");
///     port.close_from(cur.my_cpu());
///     cur.join(&server);
/// });
/// ```
///
/// # Errors
/// As [`Cur::spawn_on`].
#[cfg(feature = "alloc")]
pub fn serve_on<T, F>(
    cur: &Cur,
    cpu: CpuId,
    body: F,
) -> Result<(ThreadHandle, PortRef<T>), SpawnError>
where
    T: Send + 'static,
    F: FnOnce(&mut Cur, PortRef<T>) + Send + 'static,
{
    serve(cur.builder().cpu(cpu), body)
}

/// [`serve_on`] with a thread [`Builder`] (name, priority, stack size).
///
/// ```
/// use lwkt_core::CpuId;
/// use lwkt_msg::{Incoming, PortRef};
///
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let (t, port) = lwkt_msg::serve(cur.builder().name("echo"), |me, port: PortRef<u8>| {
///         assert_eq!(me.name(), "echo");
///         while let Incoming::Request(m) = port.waitport(me) {
///             m.reply(me.my_cpu(), Ok(()));
///         }
///     }).unwrap();
///     port.close_from(cur.my_cpu());
///     cur.join(&t);
/// });
/// ```
///
/// # Errors
/// As [`Builder::spawn`].
#[cfg(feature = "alloc")]
pub fn serve<T, F>(builder: Builder<'_>, body: F) -> Result<(ThreadHandle, PortRef<T>), SpawnError>
where
    T: Send + 'static,
    F: FnOnce(&mut Cur, PortRef<T>) + Send + 'static,
{
    let my = builder.cur().my_cpu();
    let slot = Arc::new(Slot::<T>(AtomicPtr::new(core::ptr::null_mut())));
    let theirs = Arc::clone(&slot);
    let server = builder.spawn(move |me| {
        let port = theirs.take(me);
        body(me, port)
    })?;
    // The port is made here, for the new thread, so that it exists before
    // this returns; its owner takes it from the slot when it first runs.
    let port = PortRef::new(Port::thread_of(server.clone()));
    slot.put(my, port.clone());
    Ok((server, port))
}

/// Hands the port from `serve` to its new thread.
#[cfg(feature = "alloc")]
struct Slot<T: Send + 'static>(AtomicPtr<Port<T>>);

#[cfg(feature = "alloc")]
impl<T: Send + 'static> Slot<T> {
    fn chan(&self) -> usize {
        self as *const Slot<T> as usize
    }

    fn put(&self, my: MyCpu<'_>, port: PortRef<T>) {
        let p = Arc::into_raw(port.0) as *mut Port<T>;
        self.0.store(p, Ordering::Release);
        my.wakeup(self.chan());
    }

    fn take(&self, me: &mut Cur) -> PortRef<T> {
        me.sleep_until(self.chan(), || !self.0.load(Ordering::Acquire).is_null());
        let p = self.0.swap(core::ptr::null_mut(), Ordering::Acquire);
        // SAFETY: `put` stored a pointer from `Arc::into_raw` (non-null:
        // the sleep ended), and the swap takes it exactly once.
        PortRef(unsafe { Arc::from_raw(p) })
    }
}

#[cfg(feature = "alloc")]
impl<T: Send + 'static> Drop for Slot<T> {
    fn drop(&mut self) {
        let p = *self.0.get_mut();
        if !p.is_null() {
            // SAFETY: a count `put` stored and nobody took.
            drop(unsafe { Arc::from_raw(p) });
        }
    }
}
