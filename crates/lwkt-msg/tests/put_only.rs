//! `domsg` to a put-only port: the handler runs inline, in the sender's
//! call. When it replies there the message is completed with plain stores;
//! when it lets the message escape (forwards it to a thread port here or
//! on another CPU, hands its handle to another thread or to an IPI
//! function) the sender waits for the reply the general way. Every path
//! must give the same results as before, leave the message reusable with
//! no internal flag behind, and a panicking handler must still abort.

mod common;

use core::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use common::{is_child, run_child, server};
use lwkt_arch_hosted::Machine;
use lwkt_core::{CpuId, Cur, MyCpu};
use lwkt_msg::{Incoming, Msg, MsgError, MsgFlags, MsgHandle, Port, PortRef};

/// The flags a message may carry once `domsg` has returned: anything else
/// (the inline protocol's own bit above all) must have been cleared.
fn assert_back(m: &Msg<u64>) {
    let fl = m.flags();
    assert!(fl.contains(MsgFlags::DONE | MsgFlags::REPLY), "{fl:?}");
    let known = (MsgFlags::DONE
        | MsgFlags::REPLY
        | MsgFlags::SYNC
        | MsgFlags::WAITING
        | MsgFlags::ABORTABLE)
        .0;
    assert_eq!(fl.0 & !known, 0, "flags left behind: {:#x}", fl.0);
}

/// Doubles the body; the body's low bits choose the result: 0 `Ok`,
/// 1 `Code(5)`, 2 `Aborted`, 3 `Closed`.
fn double(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
    let r = match *m & 3 {
        0 => Ok(()),
        1 => Err(MsgError::Code(5)),
        2 => Err(MsgError::Aborted),
        _ => Err(MsgError::Closed),
    };
    *m *= 2;
    m.reply(my, r);
}

static DOUBLE: Port<u64> = Port::put_only(double);

#[test]
fn a_handler_that_replies_completes_the_message_in_place() {
    Machine::new(1).unwrap().run(|cur| {
        let switches = cur.switch_count();
        let mut m = pin!(Msg::new(4u64).with_tag(9));
        for _ in 0..3 {
            assert_eq!(DOUBLE.domsg(cur, m.as_mut()), Ok(()));
        }
        assert_eq!(*m.body(), 32);
        // Exactly these: the reply cleared the inline bit in its store.
        assert_eq!(m.flags(), MsgFlags::DONE | MsgFlags::REPLY | MsgFlags::SYNC);
        // The tag word carried the sender's token meanwhile; the tag is back.
        assert_eq!(m.tag(), 9);
        assert_eq!(m.result(), Ok(()));
        assert_eq!(cur.switch_count(), switches, "a switch happened");
        for (v, r) in [
            (1, Err(MsgError::Code(5))),
            (2, Err(MsgError::Aborted)),
            (3, Err(MsgError::Closed)),
            (4, Ok(())),
        ] {
            *m.as_mut().body_mut() = v;
            assert_eq!(DOUBLE.domsg(cur, m.as_mut()), r);
            assert_eq!(m.result(), r);
            assert_eq!(*m.body(), 2 * v);
            assert_back(&m);
        }
    });
}

#[test]
fn a_counted_put_only_port_replies_in_place_too() {
    Machine::new(1).unwrap().run(|cur| {
        let port = PortRef::new(Port::put_only(double));
        let mut m = pin!(Msg::new(8u64));
        assert_eq!(port.domsg(cur, m.as_mut()), Ok(()));
        assert_eq!(*m.body(), 16);
        assert_eq!(m.flags(), MsgFlags::DONE | MsgFlags::REPLY | MsgFlags::SYNC);
    });
}

/// The handler sees a synchronous message with no abort requested, even
/// when the message's previous flight was aborted; an abort after the
/// reply is refused.
#[test]
fn an_abort_of_an_earlier_flight_is_not_seen_by_the_handler() {
    static SAW_SYNC: AtomicBool = AtomicBool::new(false);
    static SAW_ABORT: AtomicBool = AtomicBool::new(true);
    fn look(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
        SAW_SYNC.store(m.is_sync(), Ordering::Relaxed);
        SAW_ABORT.store(m.abort_requested(), Ordering::Relaxed);
        *m += 1;
        m.reply(my, Ok(()));
    }
    static LOOK: Port<u64> = Port::put_only(look);
    static NOBODY: Port<u64> = Port::spin();
    Machine::new(1).unwrap().run(|cur| {
        let mut m = pin!(Msg::new(0u64).abortable());
        NOBODY.sendmsg(cur.my_cpu(), m.as_mut());
        assert!(m.abort());
        // The port replies the aborted request as it hands it out.
        assert!(NOBODY.getport(cur).is_none());
        assert_eq!(m.as_mut().wait(cur), Err(MsgError::Aborted));
        assert_eq!(LOOK.domsg(cur, m.as_mut()), Ok(()));
        assert!(SAW_SYNC.load(Ordering::Relaxed));
        assert!(!SAW_ABORT.load(Ordering::Relaxed));
        assert!(!m.abort(), "replied: the abort must be refused");
        assert_eq!(*m.body(), 1);
        assert_back(&m);
        // `domsg_timeout` to a put-only port (the general path) still
        // returns the handler's reply at once.
        let r = LOOK.domsg_timeout(cur, m.as_mut(), std::time::Duration::ZERO);
        assert_eq!(r, Ok(Ok(())));
        assert_eq!(*m.body(), 2);
    });
}

static SERVER_PORT: [OnceLock<&'static Port<u64>>; 2] = [OnceLock::new(), OnceLock::new()];

fn serve_add_100(me: &mut Cur, port: &'static Port<u64>) {
    while let Incoming::Request(mut m) = port.waitport(me) {
        *m += 100;
        m.reply(me.my_cpu(), Ok(()));
    }
}

/// Forwards to the thread port of `SERVER_PORT[*body & 1]`.
fn to_server(my: MyCpu<'_>, m: MsgHandle<u64>) {
    let port = *SERVER_PORT[(*m & 1) as usize].get().unwrap();
    m.forward(my, port);
}

static FORWARDER: Port<u64> = Port::put_only(to_server);

/// The handler forwards the message to a thread port served on the
/// sender's CPU (slot 0) or on another CPU (slot 1): the sender waits for
/// the server's reply, and gets the message back clean.
#[test]
fn a_handler_that_forwards_to_a_thread_port_here_or_elsewhere() {
    Machine::new(2).unwrap().run(|cur| {
        let (here, t0) = server(cur, 0, serve_add_100);
        let (there, t1) = server(cur, 1, serve_add_100);
        SERVER_PORT[0].set(here).unwrap();
        SERVER_PORT[1].set(there).unwrap();
        for start in [0u64, 1] {
            let mut m = pin!(Msg::new(start));
            for i in 1..=50 {
                assert_eq!(FORWARDER.domsg(cur, m.as_mut()), Ok(()));
                assert_eq!(*m.body(), start + 100 * i);
                assert_back(&m);
            }
        }
        here.close_from(cur.my_cpu());
        there.close_from(cur.my_cpu());
        cur.join(&t0);
        cur.join(&t1);
    });
}

/// Forwarding from one put-only port to another: both handlers run in the
/// sender's call, and the second one's reply completes the message there.
#[test]
fn a_handler_that_forwards_to_another_put_only_port() {
    fn relay(my: MyCpu<'_>, mut m: MsgHandle<u64>) {
        *m += 1;
        m.forward(my, &DOUBLE);
    }
    static RELAY: Port<u64> = Port::put_only(relay);
    Machine::new(1).unwrap().run(|cur| {
        let switches = cur.switch_count();
        let mut m = pin!(Msg::new(3u64));
        assert_eq!(RELAY.domsg(cur, m.as_mut()), Ok(()));
        assert_eq!(*m.body(), 8);
        assert_eq!(m.flags(), MsgFlags::DONE | MsgFlags::REPLY | MsgFlags::SYNC);
        assert_eq!(cur.switch_count(), switches);
    });
}

static KEPT: Mutex<Option<MsgHandle<u64>>> = Mutex::new(None);
static RETURNED: AtomicBool = AtomicBool::new(false);
static SEEN_WAITING: AtomicU32 = AtomicU32::new(0);

/// Keeps the message: hands its handle to whoever takes it from `KEPT`.
fn keep(_: MyCpu<'_>, m: MsgHandle<u64>) {
    *KEPT.lock().unwrap() = Some(m);
}

static KEEPER: Port<u64> = Port::put_only(keep);

/// A handler that does not reply but keeps the message (its handle handed
/// to another thread, here on the sender's CPU or on another one): the
/// sender waits in `domsg` until that thread replies, however long, and
/// gets the message back with that reply.
#[test]
fn a_handler_that_keeps_the_message_is_waited_for() {
    Machine::new(2).unwrap().run(|cur| {
        for cpu in [0u32, 1] {
            RETURNED.store(false, Ordering::Relaxed);
            let replier = cur
                .spawn_on(CpuId::new(cpu), |me| loop {
                    let taken = KEPT.lock().unwrap().take();
                    if let Some(mut h) = taken {
                        // The sender cannot have returned: nobody replied.
                        if !RETURNED.load(Ordering::Acquire) {
                            SEEN_WAITING.fetch_add(1, Ordering::Relaxed);
                        }
                        for _ in 0..10 {
                            me.yield_now();
                        }
                        *h += 7;
                        h.reply(me.my_cpu(), Err(MsgError::Code(3)));
                        return;
                    }
                    me.yield_now();
                })
                .unwrap();
            let mut m = pin!(Msg::new(1u64));
            assert_eq!(KEEPER.domsg(cur, m.as_mut()), Err(MsgError::Code(3)));
            RETURNED.store(true, Ordering::Release);
            assert_eq!(*m.body(), 8);
            assert_back(&m);
            cur.join(&replier);
        }
        assert_eq!(SEEN_WAITING.load(Ordering::Relaxed), 2);
    });
}

/// The handler hands the message to an IPI function: on the sender's own
/// CPU it runs at once, in interrupt context nested in the sender's
/// thread, and replies there; on another CPU it replies there while the
/// sender waits.
#[test]
fn a_reply_from_an_ipi_function() {
    fn reply_in_ipi(my: MyCpu<'_>, h: usize, add: usize) {
        // SAFETY: the box `by_ipi` made for this call.
        let mut h = *unsafe { Box::from_raw(h as *mut MsgHandle<u64>) };
        *h += add as u64;
        h.reply(my, Ok(()));
    }
    fn by_ipi(my: MyCpu<'_>, m: MsgHandle<u64>) {
        let target = CpuId::new((*m % 2) as u32);
        let h = Box::into_raw(Box::new(m)) as usize;
        my.send_ipi(target, reply_in_ipi, h, 10).unwrap();
    }
    static BY_IPI: Port<u64> = Port::put_only(by_ipi);
    Machine::new(2).unwrap().run(|cur| {
        assert_eq!(cur.cpu_id(), CpuId::new(0));
        // Even bodies: an IPI to CPU 0, ours; odd: to CPU 1.
        for start in [0u64, 1] {
            let mut m = pin!(Msg::new(start));
            for i in 1..=20 {
                assert_eq!(BY_IPI.domsg(cur, m.as_mut()), Ok(()));
                assert_eq!(*m.body(), start + 10 * i);
                assert_back(&m);
            }
        }
    });
}

/// The panic policy is kept: a handler that panics aborts the process
/// (before its reply, the message would stay in flight; after it, the
/// sender would unwind past a message it believes done), even under
/// `catch_unwind`.
#[test]
fn a_panicking_handler_aborts() {
    const TEST: &str = "a_panicking_handler_aborts";
    fn panics_before(_: MyCpu<'_>, _m: MsgHandle<u64>) {
        panic!("handler panics before its reply");
    }
    fn panics_after(my: MyCpu<'_>, m: MsgHandle<u64>) {
        m.reply(my, Ok(()));
        panic!("handler panics after its reply");
    }
    static BEFORE: Port<u64> = Port::put_only(panics_before);
    static AFTER: Port<u64> = Port::put_only(panics_after);
    if !is_child() {
        for (case, what) in [
            // The handle, dropped by the unwind, panics in its destructor:
            // a panic during a panic aborts.
            ("before", "a received message was dropped without a reply"),
            ("after", "a put-only port's handler panicked"),
        ] {
            std::env::set_var(TEST, case);
            let (ok, stderr) = run_child(TEST);
            assert!(!ok, "{case}: the child should have failed:\n{stderr}");
            assert!(
                stderr.contains(what) && !stderr.contains("the panic was caught"),
                "{case}: expected {what:?} and an abort:\n{stderr}"
            );
        }
        return;
    }
    let case = std::env::var(TEST).unwrap_or_default();
    Machine::new(1).unwrap().run(move |cur| {
        let port = if case == "before" { &BEFORE } else { &AFTER };
        let mut m = Pin::static_mut(Box::leak(Box::new(Msg::new(0u64))));
        let r =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| port.domsg(cur, m.as_mut())));
        eprintln!("the panic was caught: {}", r.is_err());
    });
}

/// A message with a reply port, sent with `domsg`: synchronous, so the
/// handler's reply completes it in place and nothing reaches the reply
/// port (as before the inline path).
#[test]
fn a_reply_port_is_not_used_by_an_inline_reply() {
    static REPLIES: Port<u64> = Port::spin();
    Machine::new(1).unwrap().run(|cur| {
        let mut m = pin!(Msg::with_reply_port(&REPLIES, 5u64));
        assert_eq!(DOUBLE.domsg(cur, m.as_mut()), Err(MsgError::Code(5)));
        assert_eq!(*m.body(), 10);
        assert!(REPLIES.getport(cur).is_none());
        assert_eq!(m.flags(), MsgFlags::DONE | MsgFlags::REPLY | MsgFlags::SYNC);
        // An asynchronous send to the same port still replies to it.
        *m.as_mut().body_mut() = 4;
        DOUBLE.sendmsg(cur.my_cpu(), m.as_mut());
        let Some(Incoming::Reply(r)) = REPLIES.getport(cur) else {
            panic!("the asynchronous reply is not on the reply port");
        };
        assert!(r.is(&m));
        assert_eq!(r.result(), Ok(()));
        assert_eq!(*m.body(), 8);
    });
}

static HELD: Mutex<Option<MsgHandle<u64>>> = Mutex::new(None);

/// Holds the message until its sender asks to abort it.
fn hold(_: MyCpu<'_>, m: MsgHandle<u64>) {
    *HELD.lock().unwrap() = Some(m);
}

static HOLDER: Port<u64> = Port::put_only(hold);

/// An abort reaches a put-only port's handler that kept the message:
/// `domsg_timeout` (the general path) times out, aborts, and the thread
/// holding the handle sees `abort_requested` and replies `Aborted`.
#[test]
fn an_abort_requested_reaches_a_kept_message() {
    Machine::new(2).unwrap().run(|cur| {
        let holder = cur
            .spawn_on(CpuId::new(1), |me| loop {
                let taken = HELD.lock().unwrap().take();
                match taken {
                    Some(h) if h.abort_requested() => {
                        return h.reply(me.my_cpu(), Err(MsgError::Aborted));
                    }
                    Some(h) => *HELD.lock().unwrap() = Some(h),
                    None => {}
                }
                me.yield_now();
            })
            .unwrap();
        let mut m = pin!(Msg::new(0u64).abortable());
        let r = HOLDER.domsg_timeout(cur, m.as_mut(), std::time::Duration::from_millis(1));
        assert_eq!(r, Ok(Err(MsgError::Aborted)));
        assert!(m.is_done());
        cur.join(&holder);
        // And the message goes inline again at once, with no abort left.
        assert_eq!(DOUBLE.domsg(cur, m.as_mut()), Ok(()));
        assert_back(&m);
    });
}
