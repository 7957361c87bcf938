//! Thread creation, start, exit and join: the thread block and closure at
//! the top of a fresh stack, the first switch to it, and the exit that
//! wakes its joiners.
//!
//! DragonFly: `lwkt_create()`, `lwkt_exit()`.

use crate::arch::Stack;
use crate::cpu::{Cpu, CpuId};
use crate::crit;
use crate::crit::crit_exit_td;
use crate::ipiq::{self, IpiMsg};
use crate::schedule::{dequeue, schedule_local};
use crate::sleep;
use crate::switch::{finish_switch, switch_from};
use crate::sync::Ordering;
use crate::thread::{tdf, Priority, SpawnError, Thread, ThreadHandle};
use crate::{Cur, MyCpu};
use core::mem::{align_of, size_of};
use core::ptr::{self, NonNull};

/// Smallest stack left for a thread's own frames after its thread block and
/// closure are placed at the top of its stack.
pub const MIN_STACK: usize = 8 * 1024;

/// Default stack size for [`Cur::spawn_on`].
pub const DEFAULT_STACK: usize = 64 * 1024;

/// Copies of a thread's closure its own frames may hold while calling it,
/// reserved beyond [`MIN_STACK`] (see `create_thread`).
pub(crate) const CLOSURE_COPIES: usize = 2;

impl Cur {
    /// Create a thread on `cpu` at the default priority and stack size; it
    /// runs `f` and exits when `f` returns. DragonFly: `lwkt_create()`.
    ///
    /// ```
    /// use lwkt_core::CpuId;
    /// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
    ///     let t = cur.spawn_on(CpuId::new(1), |me| assert_eq!(me.cpu_id().get(), 1)).unwrap();
    ///     cur.join(&t);
    ///     assert!(cur.spawn_on(CpuId::new(9), |_| {}).is_err());
    /// });
    /// ```
    pub fn spawn_on<F>(&self, cpu: CpuId, f: F) -> Result<ThreadHandle, SpawnError>
    where
        F: FnOnce(&mut Cur) + Send + 'static,
    {
        self.builder().cpu(cpu).spawn(f)
    }

    /// A [`Builder`] for a thread with chosen CPU, priority, stack and name.
    pub fn builder(&self) -> Builder<'_> {
        Builder {
            cur: self,
            cpu: self.cpu_id(),
            pri: Priority::default(),
            stack: DEFAULT_STACK,
            name: "lwkt",
            async_preempt: false,
        }
    }

    /// Block until the thread behind `h` has exited.
    ///
    /// # Panics
    /// If `h` belongs to another machine (it could never be seen to exit).
    pub fn join(&mut self, h: &ThreadHandle) {
        self.my_cpu().check_machine(h.thread());
        let chan = h.td.as_ptr() as usize;
        self.sleep_until(chan, || h.has_exited());
    }
}

/// Options for a new thread. DragonFly: the arguments of `lwkt_create()`.
///
/// ```
/// use lwkt_core::{CpuId, Priority};
/// lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
///     let h = cur.builder().cpu(CpuId::new(1)).priority(Priority::SOFT_NORM)
///         .stack_size(32 * 1024).name("worker")
///         .spawn(|me| assert_eq!(me.name(), "worker")).unwrap();
///     cur.join(&h);
/// });
/// ```
#[derive(Debug)]
pub struct Builder<'a> {
    cur: &'a Cur,
    cpu: CpuId,
    pri: Priority,
    stack: usize,
    name: &'static str,
    async_preempt: bool,
}

impl<'a> Builder<'a> {
    /// The thread that makes the new one (the `Cur` the builder came from),
    /// for code that takes a builder and also needs its maker.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let b = cur.builder().name("worker");
    ///     assert!(b.cur().is(&cur.handle()));
    /// });
    /// ```
    pub fn cur(&self) -> &'a Cur {
        self.cur
    }

    /// The CPU the thread lives on.
    pub fn cpu(mut self, cpu: CpuId) -> Self {
        self.cpu = cpu;
        self
    }
    /// Its priority.
    pub fn priority(mut self, pri: Priority) -> Self {
        self.pri = pri;
        self
    }
    /// Its stack size in bytes (the thread block and closure live at the top).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack = bytes;
        self
    }
    /// Its name, for reports.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Let the thread be preempted at any instruction outside its
    /// critical sections, from the backend's interrupt handler, even on a
    /// backend whose interrupts arrive in host context (the hosted
    /// backend's signals), where lwkt otherwise waits for the thread's
    /// next final `crit_exit`. For CPU-bound threads that never call lwkt
    /// and must still yield to interrupt threads and time slicing. The
    /// CPU's deferred work (expired timers and callouts, fast handlers,
    /// IPI functions) may then run in the handler too, as at a final
    /// `crit_exit`. Not in DragonFly (every kernel thread there is preemptible).
    ///
    /// # Safety
    /// Outside its critical sections the thread never runs code that
    /// another thread of its CPU may re-enter: on the hosted backend, that
    /// is the C library (its allocator, locks, stdio) and state the OS
    /// thread shares between the vCPU's threads (thread-locals); for
    /// example, it only computes, or it allocates through an allocator
    /// that holds a critical section. On a bare-metal backend every
    /// thread is preemptible anyway ([`Arch::preempts_in_interrupt`]).
    ///
    /// [`Arch::preempts_in_interrupt`]: crate::Arch::preempts_in_interrupt
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     // SAFETY: the body only does arithmetic.
    ///     let h = unsafe { cur.builder().async_preemptible() }
    ///         .spawn(|_| {
    ///             let mut x = 0u64;
    ///             for i in 0..1000 {
    ///                 x = x.wrapping_mul(31).wrapping_add(i);
    ///             }
    ///             std::hint::black_box(x);
    ///         })
    ///         .unwrap();
    ///     cur.join(&h);
    /// });
    /// ```
    pub unsafe fn async_preemptible(mut self) -> Self {
        self.async_preempt = true;
        self
    }

    /// Create the thread and make it runnable.
    pub fn spawn<F>(self, f: F) -> Result<ThreadHandle, SpawnError>
    where
        F: FnOnce(&mut Cur) + Send + 'static,
    {
        let gd = self.cur.td().gd();
        let td = create_thread(gd.machine(), self.cpu, self.pri, self.stack, self.name, f)?;
        // SAFETY: `create_thread` returned a live, unpublished thread.
        let t = unsafe { td.as_ref() };
        if self.async_preempt {
            // Not yet published: nobody else reads its flags.
            t.set(tdf::ASYNC_PREEMPT);
        }
        let handle = ThreadHandle::new_held(t);
        let cur_td = self.cur.td();
        crit::enter(&cur_td.critcount);
        if self.cpu == gd.id() {
            // SAFETY: on our CPU in a critical section; `t` is new and ours.
            unsafe { adopt(gd, t) };
        } else {
            t.hold(); // for the message in flight
            let msg = IpiMsg {
                func: adopt_remote,
                arg1: td.as_ptr() as usize,
                arg2: 0,
            };
            // SAFETY: on our CPU in a critical section.
            let r = unsafe { ipiq::send(gd, self.cpu, &[msg]) };
            debug_assert!(r.is_ok());
        }
        crit_exit_td(cur_td);
        Ok(handle)
    }
}

/// Allocate and lay out a thread (not yet runnable anywhere).
pub(crate) fn create_thread<F>(
    m: &crate::MachineState,
    cpu: CpuId,
    pri: Priority,
    stack_size: usize,
    name: &'static str,
    f: F,
) -> Result<NonNull<Thread>, SpawnError>
where
    F: FnOnce(&mut Cur) + Send,
{
    let Some(target) = m.cpu(cpu) else {
        return Err(SpawnError::NoSuchCpu {
            cpu,
            ncpus: m.ncpus,
        });
    };
    let too_small = SpawnError::StackTooSmall {
        requested: stack_size,
    };
    // The closure is stored above the stack proper, and the new thread
    // moves it onto its own frames to call it (`thread_start`): one copy
    // there, and in unoptimised builds another for the by-value call.
    // Each copy may need up to its alignment of padding.
    let copy = size_of::<F>() + align_of::<F>();
    let frames = MIN_STACK + CLOSURE_COPIES * copy;
    let need = size_of::<Thread>() + copy + 64 + frames;
    if stack_size < need {
        return Err(too_small);
    }
    let stack = m
        .arch
        .alloc_stack(stack_size)
        .ok_or(SpawnError::OutOfStacks)?;
    // Layout, top down: thread block, closure, then the stack proper.
    let top = stack.base.as_ptr() as usize + stack.len;
    let td_addr = (top - size_of::<Thread>()) & !(align_of::<Thread>().max(16) - 1);
    let f_addr = (td_addr - size_of::<F>()) & !(align_of::<F>().max(16) - 1);
    let sp_top = f_addr & !15;
    if sp_top < stack.base.as_ptr() as usize + frames {
        // SAFETY: just allocated, unused.
        unsafe { m.arch.free_stack(stack) };
        return Err(too_small);
    }
    let td_ptr = td_addr as *mut Thread;
    // SAFETY: `td_addr..top` and `f_addr..td_addr` lie inside the fresh
    // stack, suitably aligned and unused.
    unsafe {
        td_ptr.write(Thread::new(
            m.arch,
            m.id,
            target,
            cpu,
            pri,
            Some(stack),
            name,
        ));
        (f_addr as *mut F).write(f);
    }
    // SAFETY: just written.
    let td = unsafe { &*td_ptr };
    td.closure.set(f_addr as *mut u8);
    let inner = Stack {
        base: stack.base,
        len: sp_top - stack.base.as_ptr() as usize,
    };
    // SAFETY: `inner` belongs to the new thread and nothing runs on it.
    unsafe {
        m.arch
            .init_context(&td.ctx, inner, thread_start::<F>, td_addr)
    };
    // SAFETY: non-null (derived from a stack address).
    Ok(unsafe { NonNull::new_unchecked(td_ptr) })
}

impl Cpu {
    /// Create a thread on this CPU before the CPU starts (boot threads; the
    /// hosted backend's main thread). `F` need not be `'static`.
    ///
    /// # Safety
    /// - this CPU has not entered [`idle_loop`](Cpu::idle_loop) yet and no
    ///   other code touches it meanwhile;
    /// - whatever `f` borrows outlives the machine (every CPU has left its
    ///   idle loop before the borrowed data goes away).
    pub unsafe fn spawn_boot_thread<F>(
        &self,
        pri: Priority,
        stack_size: usize,
        name: &'static str,
        f: F,
    ) -> Result<ThreadHandle, SpawnError>
    where
        F: FnOnce(&mut Cur) + Send,
    {
        let td = create_thread(self.machine(), self.id(), pri, stack_size, name, f)?;
        // SAFETY: just created.
        let t = unsafe { td.as_ref() };
        let h = ThreadHandle::new_held(t);
        // SAFETY: the CPU is not running (caller), so nothing else touches its queues.
        unsafe { adopt(self, t) };
        Ok(h)
    }
}

/// A new thread arrives on its CPU: count it and make it runnable.
///
/// # Safety
/// On `gd`, in a critical section; `td` is a new thread of `gd`.
pub(crate) unsafe fn adopt(gd: &Cpu, td: &Thread) {
    gd.live_threads.fetch_add(1, Ordering::Relaxed);
    gd.stats.threads_created.add(1);
    // SAFETY: forwarded.
    unsafe { schedule_local(gd, td) };
}

pub(crate) fn adopt_remote(my: MyCpu<'_>, td: usize, _: usize) {
    // SAFETY: `td` was held for this message by `spawn`; IPI functions run
    // on their CPU in a critical section.
    unsafe {
        let t = NonNull::new_unchecked(td as *mut Thread);
        adopt(my.cpu(), t.as_ref());
        Thread::release(t);
    }
}

/// The first code a new thread runs. DragonFly: the `lwkt_create` trampoline.
pub(crate) extern "C" fn thread_start<F: FnOnce(&mut Cur)>(arg: usize) -> ! {
    let td_ptr = arg as *mut Thread;
    // SAFETY: `arg` is the thread block `spawn` wrote; the thread is running.
    let td = unsafe { &*td_ptr };
    // SAFETY: we were just switched to, on our CPU, in a critical section.
    unsafe { finish_switch(td.gd()) };
    crit_exit_td(td); // new threads start inside a critical section
                      // SAFETY: `td` is the running thread, and this is its only `Cur`.
    let mut cur = unsafe { Cur::of_running(td) };
    let f = td.closure.get() as *mut F;
    crate::abort_on_unwind("a thread body", || {
        // SAFETY: `spawn` wrote an `F` there and nothing else reads it.
        let f = unsafe { ptr::read(f) };
        f(&mut cur)
    });
    exit_current(td)
}

/// End the running thread. DragonFly: `lwkt_exit()`.
pub(crate) fn exit_current(td: &Thread) -> ! {
    crit::enter(&td.critcount);
    assert!(!td.has(tdf::EXITING), "lwkt: thread exited twice");
    let gd = td.gd();
    td.set(tdf::EXITING);
    debug_assert!(td.toks.is_empty(), "lwkt: thread exits holding tokens");
    // SAFETY: on our CPU in a critical section.
    unsafe {
        if td.has(tdf::TSLEEPQ) {
            sleep::unqueue(gd, td);
        }
        dequeue(gd, td);
        crate::intr::unregister_all(td);
    }
    gd.live_threads.fetch_sub(1, Ordering::Relaxed);
    gd.stats.threads_exited.add(1);
    // Off the run queue, so the switch below happens; the next thread
    // finds us in `prev` and releases our own hold once we are off the CPU.
    gd.prev.set(td as *const Thread as *mut Thread);
    // SAFETY: we are the running thread.
    unsafe { switch_from(td) };
    unreachable!("lwkt: an exited thread was switched to")
}
