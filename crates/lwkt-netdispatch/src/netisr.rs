//! Per-CPU protocol threads and the batches they receive.
//!
//! DragonFly: `netisr_init()` (one protocol thread per CPU, each with its
//! own port), `netmsg_service_loop()` (block in `lwkt_waitport`, then take
//! up to `netisr_rollup_limit` messages), and the packet batching of the
//! 2017 forwarding work (a stage of packets per CPU, sent together).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

use lwkt_core::{CpuId, Cur, Priority, SpawnError, ThreadHandle};
use lwkt_msg::Port;

/// Up to `N` items of type `T` carried by one message: the protocol thread
/// is woken once per batch, not once per packet (cohort scheduling).
///
/// ```
/// use lwkt_netdispatch::netisr::Batch;
/// let mut b: Batch<u32, 4> = Batch::new();
/// for i in 0..4 { b.push(i).unwrap(); }
/// assert!(b.is_full());
/// assert_eq!(b.push(9), Err(9));
/// assert_eq!(b.as_slice(), &[0, 1, 2, 3]);
/// b.clear();
/// assert!(b.is_empty());
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Batch<T: Copy + Default, const N: usize> {
    len: usize,
    items: [T; N],
}

impl<T: Copy + Default, const N: usize> Default for Batch<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Default, const N: usize> Batch<T, N> {
    /// An empty batch.
    pub fn new() -> Self {
        Batch {
            len: 0,
            items: [T::default(); N],
        }
    }

    /// Add an item; a full batch gives it back.
    ///
    /// # Errors
    /// The item, when the batch already holds `N`.
    #[inline]
    pub fn push(&mut self, t: T) -> Result<(), T> {
        if self.len == N {
            return Err(t);
        }
        self.items[self.len] = t;
        self.len += 1;
        Ok(())
    }

    /// The items.
    #[inline]
    pub fn as_slice(&self) -> &[T] {
        &self.items[..self.len]
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether it holds `N`.
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Empty it.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The protocol threads of one protocol: one per CPU, each serving its own
/// thread port.
#[derive(Debug)]
pub struct ProtocolThreads<T: Send + 'static> {
    /// `ports[c]` is served by the thread on CPU `c`.
    pub ports: Vec<&'static Port<T>>,
    /// The threads, to join after closing the ports.
    pub threads: Vec<ThreadHandle>,
}

/// Create one protocol thread per CPU (`0..ncpus`), named `name`, each
/// running `service(me, its_port, cpu)` on its own thread port, and return
/// once every port exists. DragonFly: `netisr_init()` /
/// `netmsg_service_port_init()`.
///
/// The threads run at [`Priority::SOFT_NORM`], above ordinary kernel
/// threads (a receive loop or a user request), so a batch that arrives is
/// served at the sender's next preemption point instead of waiting until
/// the sender blocks: the batches in flight stay few and the replies flow.
///
/// ```
/// use lwkt_msg::{Incoming, Msg};
/// use lwkt_netdispatch::netisr::spawn_protocol_threads;
///
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let t = spawn_protocol_threads(cur, 2, "echo", |me, port, cpu| {
///         while let Incoming::Request(mut m) = port.waitport(me) {
///             *m = cpu as u32;
///             m.reply(me.my_cpu(), Ok(()));
///         }
///     }).unwrap();
///     let mut m = core::pin::pin!(Msg::new(0u32));
///     t.ports[1].domsg(cur, m.as_mut()).unwrap();
///     assert_eq!(*m.body(), 1);
///     t.shutdown(cur);
/// });
/// ```
///
/// # Errors
/// A CPU that does not exist, or no memory for a thread.
pub fn spawn_protocol_threads<T, F>(
    cur: &mut Cur,
    ncpus: usize,
    name: &'static str,
    service: F,
) -> Result<ProtocolThreads<T>, SpawnError>
where
    T: Send + 'static,
    F: Fn(&mut Cur, &'static Port<T>, usize) + Send + Sync + Clone + 'static,
{
    let slots: Arc<Vec<AtomicPtr<Port<T>>>> = Arc::new(
        (0..ncpus)
            .map(|_| AtomicPtr::new(core::ptr::null_mut()))
            .collect(),
    );
    let mut threads = Vec::with_capacity(ncpus);
    for cpu in 0..ncpus {
        let (slots, service) = (slots.clone(), service.clone());
        threads.push(
            cur.builder()
                .cpu(CpuId::new(cpu as u32))
                .name(name)
                .priority(Priority::SOFT_NORM)
                .spawn(move |me| {
                    let port: &'static Port<T> = Port::thread(me).leak();
                    slots[cpu].store(port as *const Port<T> as *mut Port<T>, Ordering::Release);
                    service(me, port, cpu);
                    port.close(me);
                })?,
        );
    }
    let mut ports = Vec::with_capacity(ncpus);
    for slot in slots.iter() {
        let p = loop {
            let p = slot.load(Ordering::Acquire);
            if !p.is_null() {
                break p;
            }
            cur.yield_now();
        };
        // SAFETY: a leaked, 'static port published by its thread.
        ports.push(unsafe { &*p });
    }
    Ok(ProtocolThreads { ports, threads })
}

impl<T: Send + 'static> ProtocolThreads<T> {
    /// Close every port (their threads' `waitport` returns
    /// `Incoming::Closed` once the queued messages are taken) and join the
    /// threads.
    pub fn shutdown(self, cur: &mut Cur) {
        for p in &self.ports {
            p.close_from(cur.my_cpu());
        }
        for t in &self.threads {
            cur.join(t);
        }
    }
}
