//! System calls as messages (the 2004 paper's design, on lwkt-msg).
//!
//! The trap (`usermode`'s `syscall` entry) calls [`handler`] on the user
//! thread's own kernel stack. Every system call but the few that act on
//! the calling thread itself (NULL, EXIT, MIGRATE, WAIT, ABORT, REPORT,
//! SAMPLE) is built there as a [`Msg`]`<`[`SysMsg`]`>` and put on
//! [`SYSPORT`], a put-only port whose handler ([`sys_put`]) runs in the
//! sender's context and decides:
//!
//! - a call that can complete at once (ADD, GETCPU, SUM, FILL) is done
//!   there and replied: `domsg` sees the message done on return: no queue,
//!   no switch (the paper's synchronous fast path);
//! - a call that must wait (SLEEP), or any call the user sent
//!   asynchronously (ASYNC), is forwarded to the kernel thread port of the
//!   next CPU's server ([`server`]): a synchronous one blocks the user
//!   thread in `domsg` until the reply; an asynchronous one returns a
//!   handle at once, its message's reply port being the program's own
//!   thread port, where WAIT collects the replies (`waitport`).
//!
//! Copy-in and copy-out happen only on the user thread (in the put
//! handler, which runs there): a kernel thread never touches user memory
//! (and `usermode::copyin` refuses off a user thread). Asynchronous
//! messages live in the program's [`Proc`], are abortable (ABORT goes
//! through `Msg::abort`), and are all accounted for before the program's
//! state is freed: when a program ends with messages in flight, they are
//! aborted and their replies collected by the kernel.

use alloc::boxed::Box;
use core::pin::Pin;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use core::time::Duration;

use lwkt_arch_x86_64::idt::TrapFrame;
use lwkt_arch_x86_64::usermode;
use lwkt_core::{CpuId, Cur, MyCpu};
use lwkt_msg::{Incoming, Msg, MsgError, MsgHandle, Port, PortRef};

use crate::boot::MAX_CPUS;
use crate::uprog::{err, nr};

/// Asynchronous messages a program may have in flight.
pub(crate) const NASYNC: usize = 32;

/// A system call message's body. DragonFly (the paper): `struct
/// sysmsg` / the syscall message with its arguments and `sysmsg_result`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SysMsg {
    op: u64,
    a: u64,
    b: u64,
    c: u64,
    /// Sent with ASYNC: always to a kernel thread.
    is_async: bool,
    /// The result (negative: an error).
    ret: i64,
}

/// The put-only port every system call message is put on.
pub(crate) static SYSPORT: Port<SysMsg> = Port::put_only(sys_put);

/// Each CPU's system call server's port.
static SERVERS: [AtomicPtr<Port<SysMsg>>; MAX_CPUS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

type Counts = [AtomicU64; MAX_CPUS];
/// Per CPU: messages the servers handled (by server CPU).
pub(crate) static K_SERVED: Counts = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Asynchronous messages sent, and replies collected (by WAIT or at the
/// program's end), in total.
pub(crate) static K_ASYNC_SENT: AtomicU64 = AtomicU64::new(0);
pub(crate) static K_ASYNC_COLLECTED: AtomicU64 = AtomicU64::new(0);
/// Replies that named no message in flight (must stay 0).
pub(crate) static K_STRAY: AtomicU64 = AtomicU64::new(0);

/// Benchmark samples, per kind.
pub(crate) const MAX_SAMPLES: usize = 2048;
pub(crate) static SAMPLES: [[AtomicU64; MAX_SAMPLES]; 3] =
    [const { [const { AtomicU64::new(0) }; MAX_SAMPLES] }; 3];
pub(crate) static NSAMPLES: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// A running program's kernel state (DragonFly: its `proc`/`lwp`, here
/// only what system calls need), pinned in a box for the program's life.
pub(crate) struct Proc {
    /// The user thread's `Cur`, for blocking calls from the handler.
    cur: *mut Cur,
    /// The id a program names its reply port by (its slot).
    pub(crate) port_id: u64,
    /// Its reply port: the user thread's own thread port.
    port: PortRef<SysMsg>,
    msgs: [Msg<SysMsg>; NASYNC],
    in_flight: [bool; NASYNC],
    /// The message every synchronous system call is built in, reused
    /// (DragonFly: the `sysmsg` in the thread's kernel-side state): it is
    /// done again when `domsg` returns.
    sync: Msg<SysMsg>,
    pub(crate) sync_done: u64,
    pub(crate) async_sent: u64,
    pub(crate) async_collected: u64,
    /// Replies collected by the kernel at the program's end.
    pub(crate) reaped: u64,
    /// The program's own counts (REPORT).
    pub(crate) report: Option<[u64; 4]>,
}

impl Proc {
    /// State for a program run by the thread of `cur`.
    pub(crate) fn new(cur: &mut Cur, port_id: u64) -> Pin<Box<Proc>> {
        let port = PortRef::thread(cur);
        let msgs = core::array::from_fn(|i| {
            Msg::with_reply_port(&port, SysMsg::default())
                .abortable()
                .with_tag(i as u64)
        });
        Box::pin(Proc {
            cur: cur as *mut Cur,
            port_id,
            port,
            msgs,
            in_flight: [false; NASYNC],
            sync: Msg::new(SysMsg::default()),
            sync_done: 0,
            async_sent: 0,
            async_collected: 0,
            reaped: 0,
            report: None,
        })
    }

    fn msg(self: Pin<&mut Self>, i: usize) -> Pin<&mut Msg<SysMsg>> {
        // SAFETY: structural pinning of `msgs`: the `Proc` is pinned and
        // never moves a message out.
        unsafe { self.map_unchecked_mut(|p| &mut p.msgs[i]) }
    }

    fn sync_msg(self: Pin<&mut Self>) -> Pin<&mut Msg<SysMsg>> {
        // SAFETY: structural pinning of `sync`, as for `msgs`.
        unsafe { self.map_unchecked_mut(|p| &mut p.sync) }
    }

    fn fields(self: Pin<&mut Self>) -> &mut Proc {
        // SAFETY: the caller only touches fields other than `msgs`, which
        // it does not move (the `msgs` are reached only through `msg`).
        unsafe { self.get_unchecked_mut() }
    }

    /// After the program ended: abort every message still in flight and
    /// collect its reply, so no message is lost or freed in flight; then
    /// close the reply port.
    pub(crate) fn reap(mut self: Pin<&mut Self>, cur: &mut Cur) {
        for i in 0..NASYNC {
            if self.in_flight[i] {
                self.as_mut().msg(i).abort();
            }
        }
        while self.in_flight.iter().any(|&b| b) {
            match self.port.waitport(cur) {
                Incoming::Reply(r) => {
                    let i = r.tag() as usize;
                    let p = self.as_mut().fields();
                    if i < NASYNC && p.in_flight[i] {
                        p.in_flight[i] = false;
                        p.reaped += 1;
                        K_ASYNC_COLLECTED.fetch_add(1, Ordering::Relaxed);
                    } else {
                        K_STRAY.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Incoming::Request(m) => m.reply(cur.my_cpu(), Err(MsgError::Code(9))),
                Incoming::Closed => break,
            }
        }
        self.port.close(cur);
    }
}

/// `-e` as the register value.
fn neg(e: i64) -> i64 {
    -e
}

/// The system call handler (`usermode::set_syscall_handler`): the
/// registers are untrusted user input.
pub(crate) fn handler(f: &mut TrapFrame) {
    let Some(cookie) = usermode::user_cookie() else {
        f.rax = neg(err::ENOSYS) as u64;
        return;
    };
    // SAFETY: the cookie of every program this kernel runs is its pinned,
    // live `Proc` (`usertest::run_program`), used only by its own thread,
    // which is here.
    let p: Pin<&mut Proc> = unsafe { Pin::new_unchecked(&mut *(cookie as *mut Proc)) };
    let (r, r2) = dispatch(p, f.rax, f.rdi, f.rsi, f.rdx, f.r10);
    f.rax = r as u64;
    f.rdx = r2;
}

fn dispatch(mut p: Pin<&mut Proc>, n: u64, a: u64, b: u64, c: u64, d: u64) -> (i64, u64) {
    // SAFETY: the user thread's `Cur` (`Proc::new`), whose body is inside
    // `run_user` and does not use it until the program ends.
    let cur: &mut Cur = unsafe { &mut *p.cur };
    match n {
        nr::NULL => (0, 0),
        nr::EXIT => {
            // SAFETY: nothing on this stack needs dropping: `p` and `cur`
            // are references, no message of this frame is in flight.
            unsafe { usermode::exit_user(a) }
        }
        nr::ADD | nr::GETCPU | nr::SLEEP | nr::SUM | nr::FILL => {
            let mut m = p.as_mut().sync_msg();
            *m.as_mut().body_mut() = SysMsg {
                op: n,
                a,
                b,
                c,
                is_async: false,
                ret: 0,
            };
            let r = match SYSPORT.domsg(cur, m.as_mut()) {
                Ok(()) => m.body().ret,
                Err(_) => neg(err::EINTR),
            };
            p.fields().sync_done += 1;
            (r, 0)
        }
        nr::MIGRATE => {
            if a >= cur.my_cpu().ncpus() as u64 {
                return (neg(err::EINVAL), 0);
            }
            match cur.migrate(CpuId::new(a as u32)) {
                Ok(()) => (0, 0),
                Err(_) => (neg(err::EINVAL), 0),
            }
        }
        nr::ASYNC => {
            if !matches!(a, nr::ADD | nr::SLEEP | nr::HOLD) {
                return (neg(err::ENOSYS), 0);
            }
            if a == nr::SLEEP && b > 1_000_000 {
                return (neg(err::EINVAL), 0);
            }
            let Some(i) = p.in_flight.iter().position(|&f| !f) else {
                return (neg(err::EAGAIN), 0);
            };
            *p.as_mut().msg(i).body_mut() = SysMsg {
                op: a,
                a: b,
                b: c,
                c: d,
                is_async: true,
                ret: 0,
            };
            let pf = p.as_mut().fields();
            pf.in_flight[i] = true;
            pf.async_sent += 1;
            K_ASYNC_SENT.fetch_add(1, Ordering::Relaxed);
            SYSPORT.sendmsg(cur.my_cpu(), p.as_mut().msg(i));
            (i as i64, 0)
        }
        nr::WAIT => {
            if a != p.port_id {
                return (neg(err::EBADF), 0);
            }
            if !p.in_flight.iter().any(|&f| f) {
                return (neg(err::ECHILD), 0);
            }
            loop {
                match p.port.waitport(cur) {
                    Incoming::Reply(r) => {
                        let i = r.tag() as usize;
                        if i >= NASYNC || !p.in_flight[i] {
                            K_STRAY.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let v = match r.result() {
                            Ok(()) => p.msgs[i].body().ret,
                            Err(MsgError::Aborted) => neg(err::EINTR),
                            Err(_) => neg(err::EINTR),
                        };
                        let pf = p.as_mut().fields();
                        pf.in_flight[i] = false;
                        pf.async_collected += 1;
                        K_ASYNC_COLLECTED.fetch_add(1, Ordering::Relaxed);
                        return (i as i64, v as u64);
                    }
                    // Nobody sends requests to a reply port; refuse any.
                    Incoming::Request(m) => m.reply(cur.my_cpu(), Err(MsgError::Code(9))),
                    Incoming::Closed => return (neg(err::EBADF), 0),
                }
            }
        }
        nr::ABORT => {
            let i = a as usize;
            if a >= NASYNC as u64 || !p.in_flight[i] {
                return (neg(err::EINVAL), 0);
            }
            if p.msgs[i].abort() {
                (0, 0)
            } else {
                (neg(err::EALREADY), 0)
            }
        }
        nr::REPORT => {
            p.fields().report = Some([a, b, c, d]);
            (0, 0)
        }
        nr::SAMPLE => {
            if a < 3 {
                let k = a as usize;
                let i = NSAMPLES[k].fetch_add(1, Ordering::Relaxed) as usize;
                if i < MAX_SAMPLES {
                    SAMPLES[k][i].store(b, Ordering::Relaxed);
                }
            }
            (0, 0)
        }
        _ => (neg(err::ENOSYS), 0),
    }
}

/// Sum of `len` user bytes at `addr` (copied in), or an error.
fn sum(addr: u64, len: u64) -> i64 {
    if len > 256 {
        return neg(err::EINVAL);
    }
    let mut buf = [0u8; 256];
    let buf = &mut buf[..len as usize];
    match usermode::copyin(addr as usize, buf) {
        Ok(()) => buf.iter().map(|&x| i64::from(x)).sum(),
        Err(usermode::Fault) => neg(err::EFAULT),
    }
}

/// Write `len` bytes of `v` to user address `addr` (copied out).
fn fill(addr: u64, len: u64, v: u64) -> i64 {
    if len > 256 {
        return neg(err::EINVAL);
    }
    let buf = [v as u8; 256];
    match usermode::copyout(&buf[..len as usize], addr as usize) {
        Ok(()) => 0,
        Err(usermode::Fault) => neg(err::EFAULT),
    }
}

/// [`SYSPORT`]'s handler, in the sender's (the user thread's) context:
/// complete at once what can be, forward the rest to the next CPU's server.
/// DragonFly: the syscall port's `mp_putport`, which runs the call
/// synchronously or queues it for an asynchronous completion.
fn sys_put(my: MyCpu<'_>, mut m: MsgHandle<SysMsg>) {
    if m.is_async || m.op == nr::SLEEP {
        return to_server(my, m);
    }
    m.ret = match m.op {
        nr::ADD => m.a.wrapping_add(m.b) as i64,
        nr::GETCPU => my.id().index() as i64,
        nr::SUM | nr::FILL => return with_user_memory(my, m),
        _ => neg(err::ENOSYS),
    };
    m.reply(my, Ok(()))
}

/// [`sys_put`]'s calls that copy user memory (SUM, FILL). Apart, so that
/// the calls answered in registers (ADD, GETCPU) make no call of their own
/// before the reply, and need no stack frame.
#[inline(never)]
fn with_user_memory(my: MyCpu<'_>, mut m: MsgHandle<SysMsg>) {
    m.ret = match m.op {
        nr::SUM => sum(m.a, m.b),
        _ => fill(m.a, m.b, m.c),
    };
    m.reply(my, Ok(()))
}

/// [`sys_put`]'s calls that wait, or were sent asynchronously: forwarded to
/// the next CPU's server (refused with `EAGAIN` before it has started).
#[inline(never)]
fn to_server(my: MyCpu<'_>, mut m: MsgHandle<SysMsg>) {
    if m.op == nr::SLEEP && m.a > 1_000_000 {
        m.ret = neg(err::EINVAL);
        return m.reply(my, Ok(()));
    }
    let t = (my.id().index() + 1) % my.ncpus();
    let port = SERVERS[t].load(Ordering::Acquire);
    if port.is_null() {
        m.ret = neg(err::EAGAIN);
        return m.reply(my, Ok(()));
    }
    // SAFETY: a leaked, 'static port published by its server.
    m.forward(my, unsafe { &*port })
}

/// A CPU's system call server: a kernel thread serving the messages
/// forwarded to its port until the port is closed. It never touches user
/// memory. DragonFly: a kernel thread serving a port (the paper's
/// asynchronous completion).
pub(crate) fn server(me: &mut Cur) {
    let c = me.my_cpu().id().index();
    let port: &'static Port<SysMsg> = Port::thread(me).leak();
    SERVERS[c].store(port as *const _ as *mut _, Ordering::Release);
    loop {
        let mut m = match port.waitport(me) {
            Incoming::Request(m) => m,
            Incoming::Reply(_) => continue,
            Incoming::Closed => break,
        };
        K_SERVED[c].fetch_add(1, Ordering::Relaxed);
        match m.op {
            nr::ADD => m.ret = m.a.wrapping_add(m.b) as i64,
            nr::SLEEP => {
                me.sleep_for(Duration::from_micros(m.a));
                m.ret = 0;
            }
            nr::HOLD => {
                let mut waited = 0;
                while !m.abort_requested() && waited < 50_000 {
                    me.sleep_for(Duration::from_micros(100));
                    waited += 1;
                }
                if m.abort_requested() {
                    m.reply(me.my_cpu(), Err(MsgError::Aborted));
                    continue;
                }
                m.ret = 0;
            }
            _ => m.ret = neg(err::ENOSYS),
        }
        if m.abort_requested() && m.op != nr::ADD {
            m.reply(me.my_cpu(), Err(MsgError::Aborted));
        } else {
            m.reply(me.my_cpu(), Ok(()));
        }
    }
    SERVERS[c].store(core::ptr::null_mut(), Ordering::Release);
}

/// Whether CPU `c`'s server has published its port.
pub(crate) fn server_ready(c: usize) -> bool {
    !SERVERS[c].load(Ordering::Acquire).is_null()
}

/// Close every server's port (they then exit).
pub(crate) fn stop_servers(my: MyCpu<'_>, n: usize) {
    for s in SERVERS.iter().take(n) {
        let p = s.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a leaked, 'static port.
            unsafe { &*p }.close_from(my);
        }
    }
}
