//! Several vCPUs on one host thread (M:N), switched in user space, as a
//! hypervisor runs vCPUs on fewer physical CPUs.
//!
//! A host thread that runs more than one vCPU ([`Group`]) keeps a small
//! scheduler on its own OS stack ([`run_group`]); each of its vCPUs runs
//! its idle loop (and so its threads) on a stack of its own
//! ([`VCPU_STACK`]), started by [`vcpu_entry`]. A vCPU gives the host
//! thread back only at cooperative points of lwkt's and this backend's
//! code, never from a signal handler:
//!
//! - `Arch::idle_wait`: nothing to do; it switches to the scheduler marked
//!   [`IDLE`] (and `PARKED` for senders), and is resumed once
//!   [`Cpu::has_pending`] says it has work;
//! - `Arch::pause`: a busy-wait (a full ring, a `cpusync`, tokens that a
//!   thread of a sibling vCPU may hold); it switches marked [`BUSY`] when a
//!   sibling can run, and is resumed at the scheduler's next turn.
//!
//! The scheduler runs the members round-robin: the next [`BUSY`] one, or
//! [`IDLE`] one with work; when none can run it parks the host thread
//! (after a short watch when the host has a core for it). Kicks, timers
//! and interrupts for a member that is not running mark it (a ring entry,
//! a posted flag) and unpark the host thread; the signal handler acts only
//! on the member that runs (and posts the due timers of all members).
//!
//! No vCPU ever moves to another host thread: code in its frames may have
//! cached the addresses of the host thread's thread-locals.

use core::cell::Cell;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use lwkt_core::{Arch, Context, Cpu, Stack};

use crate::vcpu::{self, vcpu_of, HOSTED};

/// Stack of each vCPU of a multiplexed host thread: its idle loop, the IPI
/// functions it runs, and the signal frames that land on it (reserved, not
/// committed: pages are touched as used).
pub(crate) const VCPU_STACK: usize = 2 * 1024 * 1024;

/// Member states ([`Member::state`]).
/// Runnable: switched out in a busy-wait, or not started yet.
pub(crate) const BUSY: u32 = 0;
/// Switched out by its idle loop: runnable once it has work.
pub(crate) const IDLE: u32 = 1;
/// Its idle loop has returned (shutdown): never runs again.
pub(crate) const DONE: u32 = 2;
/// On the host thread now.
pub(crate) const ON: u32 = 3;

/// `Group::current` when the scheduler itself runs.
pub(crate) const NONE: usize = usize::MAX;

/// One vCPU of a multiplexed host thread.
pub(crate) struct Member {
    pub(crate) cpu: *const Cpu,
    /// Its saved context while switched out (the stack pointer of the frame
    /// that called `idle_wait` or `pause`, or the first frame).
    ctx: Context,
    stack: Cell<Option<Stack>>,
    pub(crate) state: AtomicU32,
}

/// The vCPUs one host thread runs, and its scheduler's state.
pub(crate) struct Group {
    pub(crate) members: Box<[Member]>,
    /// The scheduler's context (the host thread's own stack).
    sched: Context,
    /// Index of the member on the host thread now, or [`NONE`].
    pub(crate) current: AtomicUsize,
    /// Switches to members so far: the watchdog sees a host thread that
    /// never switches while a member waits (the starvation rule).
    pub(crate) switches: AtomicU64,
    /// vCPUs of the machine still running (the watchdog's stop signal),
    /// counted down as each member finishes.
    running: *const AtomicUsize,
}

// SAFETY: the contexts and stacks (`Cell`s) are touched only by the host
// thread that runs the group (its scheduler and its members' code); every
// other thread (senders, the watchdog) reads only the atomics and the
// `Cpu` blocks, which are `Sync`, through `cpu` pointers that stay valid
// while the machine runs (the group is dropped after every host thread
// has been joined).
unsafe impl Sync for Group {}
// SAFETY: as above; the group is built on the thread that calls `run` and
// then only shared.
unsafe impl Send for Group {}

impl Group {
    /// A group of the CPUs `cpus` (borrowed for the machine's life).
    pub(crate) fn new(cpus: &[&Cpu], running: &AtomicUsize) -> Group {
        Group {
            members: cpus
                .iter()
                .map(|c| Member {
                    cpu: *c,
                    ctx: Context::new(),
                    stack: Cell::new(None),
                    state: AtomicU32::new(BUSY),
                })
                .collect(),
            sched: Context::new(),
            current: AtomicUsize::new(NONE),
            switches: AtomicU64::new(0),
            running,
        }
    }

    /// Whether member `i` would run at the scheduler's next turn.
    pub(crate) fn runnable(&self, i: usize) -> bool {
        let m = &self.members[i];
        match m.state.load(Ordering::SeqCst) {
            BUSY => true,
            // SAFETY: a CPU of the group's machine, alive while it runs.
            IDLE => unsafe { &*m.cpu }.has_pending(),
            _ => false,
        }
    }
}

thread_local! {
    /// The group of the calling host thread (null on a 1:1 vCPU thread).
    static GROUP: Cell<*const Group> = const { Cell::new(ptr::null()) };
    /// Set while the IPI signal handler runs lwkt code on this host thread:
    /// no vCPU switch may happen then (the interrupted code may hold the C
    /// library's locks or a thread-local borrow that a sibling would take).
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

/// The calling host thread's group, if it multiplexes vCPUs.
pub(crate) fn my_group() -> Option<&'static Group> {
    // SAFETY: set by `run_group` for its whole run and cleared before the
    // group is dropped; the 'static does not leave this crate's callers,
    // which use it only while their vCPU runs.
    unsafe { GROUP.with(Cell::get).as_ref() }
}

/// Mark (or unmark) the signal handler's lwkt work on this host thread;
/// returns the previous mark.
pub(crate) fn set_in_handler(on: bool) -> bool {
    IN_HANDLER.with(|h| h.replace(on))
}

/// The calling vCPU's group and index, when it may switch to a sibling now:
/// it belongs to a group of more than one, and the signal handler is not
/// running on this host thread.
fn switchable(cpu: &Cpu) -> Option<(&'static Group, usize)> {
    let g = my_group()?;
    if g.members.len() < 2 || IN_HANDLER.with(Cell::get) {
        return None;
    }
    let i = g.current.load(Ordering::Relaxed);
    (i != NONE && ptr::eq(g.members[i].cpu, cpu)).then_some((g, i))
}

/// Whether `cpu`'s host thread runs other vCPUs too (and `cpu` is the
/// calling vCPU): its idle loop must not watch its rings, nor a thread
/// spin for a reply, while a sibling may have work.
pub(crate) fn shares_host_thread() -> bool {
    my_group().is_some_and(|g| g.members.len() > 1)
}

/// Switch from member `i` (running) to the scheduler, leaving it in
/// `state`; returns when the scheduler resumes it.
fn to_scheduler(g: &Group, i: usize, state: u32) {
    let m = &g.members[i];
    m.state.store(state, Ordering::SeqCst);
    // The handler acts on no vCPU while the switch is under way.
    vcpu::set_current(ptr::null());
    // SAFETY: `m.ctx` is the running member's own context (saved here) and
    // `g.sched` the scheduler's, saved when it switched to `m` and alive
    // (the host thread's stack); nothing else runs on either: one host
    // thread, and the signal handler never switches vCPUs.
    unsafe { crate::switch::switch(&HOSTED as *const _ as *const (), &m.ctx, &g.sched) };
    vcpu::set_current(m.cpu);
}

/// `Arch::idle_wait` of a member of a group: give the host thread to the
/// scheduler until this vCPU has work. False when `cpu` does not share its
/// host thread (the caller waits the 1:1 way).
pub(crate) fn idle_wait(cpu: &Cpu) -> bool {
    let Some((g, i)) = switchable(cpu) else {
        return false;
    };
    // SAFETY: a CPU of a running machine of this backend.
    let v = unsafe { vcpu_of(cpu) };
    // Published before the scheduler's `has_pending` look (SeqCst both
    // sides): a sender that does not see PARKED queued before that look
    // (and unparks the host thread anyway).
    v.sleeping.store(vcpu::PARKED, Ordering::SeqCst);
    to_scheduler(g, i, IDLE);
    v.sleeping.store(vcpu::RUNNING, Ordering::SeqCst);
    true
}

/// `Arch::pause` of a member: let a sibling that can run have the host
/// thread (the CPU being waited for may be one of them). False when none
/// can, or `cpu` does not share its host thread.
pub(crate) fn pause(cpu: &Cpu) -> bool {
    let Some((g, i)) = switchable(cpu) else {
        return false;
    };
    let n = g.members.len();
    if !(1..n).any(|k| g.runnable((i + k) % n)) {
        return false;
    }
    to_scheduler(g, i, BUSY);
    true
}

/// A member's first frame: run its vCPU, then hand the host thread back
/// for good.
extern "C" fn vcpu_entry(arg: usize) -> ! {
    // SAFETY: `arg` is the address of the group, alive until `run_group`
    // returns, which is after every member is DONE.
    let g = unsafe { &*(arg as *const Group) };
    let i = g.current.load(Ordering::Relaxed);
    let m = &g.members[i];
    // SAFETY: a CPU of the bound machine, which outlives its host thread;
    // this member runs it, once.
    let cpu = unsafe { &*m.cpu };
    // SAFETY: as above: each CPU runs on exactly one host thread, once.
    unsafe { vcpu::run_vcpu_here(cpu) };
    // SAFETY: a CPU of this machine.
    vcpu::retire_pthread(unsafe { vcpu_of(cpu) });
    // SAFETY: `running` is the machine's counter, alive while it runs.
    unsafe { &*g.running }.fetch_sub(1, Ordering::Release);
    m.state.store(DONE, Ordering::SeqCst);
    // SAFETY: as in `to_scheduler`; this context is never resumed (DONE),
    // and its stack is freed only after the host thread has left it.
    unsafe { crate::switch::switch(&HOSTED as *const _ as *const (), &m.ctx, &g.sched) };
    unreachable!("lwkt-arch-hosted: a finished vCPU was resumed");
}

/// Run every vCPU of `g` on the calling host thread until all have shut
/// down.
///
/// # Safety
/// The group's CPUs belong to a bound machine that outlives this call, and
/// run nowhere else; `g` is not moved while this runs.
pub(crate) unsafe fn run_group(g: &Group) {
    for m in g.members.iter() {
        let s = crate::stack::alloc(VCPU_STACK)
            .unwrap_or_else(|| panic!("lwkt-arch-hosted: cannot map a vCPU stack"));
        // SAFETY: a fresh stack, owned by this member, unused; the entry
        // finds its member by `current` when it first runs.
        unsafe { crate::switch::init(&m.ctx, s, vcpu_entry, g as *const Group as usize) };
        m.stack.set(Some(s));
    }
    GROUP.with(|c| c.set(g));
    vcpu::LIVE_VCPUS.fetch_add(1, Ordering::Relaxed);
    let n = g.members.len();
    let mut last = n - 1;
    loop {
        if g.members
            .iter()
            .all(|m| m.state.load(Ordering::SeqCst) == DONE)
        {
            break;
        }
        let next = (1..=n).map(|k| (last + k) % n).find(|&i| g.runnable(i));
        let Some(i) = next else {
            wait_for_work(g);
            continue;
        };
        last = i;
        let m = &g.members[i];
        m.state.store(ON, Ordering::SeqCst);
        g.current.store(i, Ordering::SeqCst);
        g.switches.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `m.ctx` was built by `init` or saved by the member's own
        // switch to us, on its stack, alive; nothing else runs it.
        unsafe { crate::switch::switch(&HOSTED as *const _ as *const (), &g.sched, &m.ctx) };
        g.current.store(NONE, Ordering::SeqCst);
    }
    vcpu::LIVE_VCPUS.fetch_sub(1, Ordering::Relaxed);
    GROUP.with(|c| c.set(ptr::null()));
    for m in g.members.iter() {
        if let Some(s) = m.stack.take() {
            // SAFETY: the member is DONE: nothing runs on its stack, and
            // its context is never resumed.
            unsafe { crate::stack::free(s) };
        }
    }
}

/// How long a host thread with a core of its own watches its members for
/// work before it parks (about 20 µs at 2.6 GHz): a park costs the senders
/// futex wake-ups.
const GROUP_POLL_CYCLES: u64 = 50_000;

/// No member can run: watch a little (when the host has a core for every
/// host thread), then park until a kick, a timer or an interrupt unparks
/// the host thread, or a member's deadline passes.
fn wait_for_work(g: &Group) {
    let any = || (0..g.members.len()).any(|i| g.runnable(i));
    if !vcpu::oversubscribed() {
        let t0 = HOSTED.cycles();
        while HOSTED.cycles().wrapping_sub(t0) < GROUP_POLL_CYCLES {
            if any() {
                return;
            }
            core::hint::spin_loop();
        }
    } else {
        std::thread::yield_now();
        if any() {
            return;
        }
    }
    // The members' `sleeping` is PARKED (set before they switched out): a
    // sender unparks this thread after queueing, so a look after the park
    // token is consumed cannot miss it.
    let mut deadline = u64::MAX;
    for m in g.members.iter() {
        // SAFETY: a CPU of this running machine.
        let v = unsafe { vcpu_of(&*m.cpu) };
        deadline = deadline.min(v.timer.load(Ordering::Acquire));
    }
    if any() {
        return;
    }
    if deadline == u64::MAX {
        std::thread::park();
    } else {
        let now = vcpu::clock_ns();
        if deadline > now {
            std::thread::park_timeout(Duration::from_nanos(deadline - now));
        }
        for m in g.members.iter() {
            // SAFETY: as above: a CPU of this running machine, set up by
            // this backend.
            let (cpu, v) = unsafe { (&*m.cpu, vcpu_of(&*m.cpu)) };
            vcpu::take_due_timer(cpu, v);
        }
    }
}
