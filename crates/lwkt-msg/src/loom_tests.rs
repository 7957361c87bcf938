//! Loom models of the message protocol between two CPUs: the originator,
//! the target (which takes the request, sees an abort or not, and replies),
//! and a third party that aborts. They run this crate's own state machine
//! (`header.rs`) through the `sync` shim; the hand-off between CPUs (the
//! port's queue or IPI ring) is a Release store and an Acquire load, as the
//! real rings are. Run with `cargo xtask loom`.

use loom::sync::atomic::AtomicBool;
use loom::sync::Arc;
use loom::thread;

use crate::header::{code, f, Header};
use crate::sync::Ordering;

struct Shared {
    hdr: Header,
    /// The put: the request reaches the target.
    sent: AtomicBool,
    /// The target's `wakeup` of a sleeping originator.
    woken: AtomicBool,
}

fn shared(abortable: bool) -> Arc<Shared> {
    let hdr = Header::new(0);
    if abortable {
        hdr.set_abortable();
    }
    Arc::new(Shared {
        hdr,
        sent: AtomicBool::new(false),
        woken: AtomicBool::new(false),
    })
}

fn spin_until(cond: impl Fn() -> bool) {
    while !cond() {
        thread::yield_now();
    }
}

/// The target: take the request off the queue, answer an abort seen at
/// that point with `ABORTED`, reply directly, wake a sleeping originator.
fn target(s: &Shared) {
    spin_until(|| s.sent.load(Ordering::Acquire));
    s.hdr.mark_queued();
    let before = s.hdr.take_request();
    let c = if before & f::ABORTREQ != 0 {
        code::ABORTED
    } else {
        7
    };
    // SAFETY: the target owns the message between take and reply.
    unsafe { s.hdr.set_code(c) };
    if s.hdr.complete(|| {}) {
        s.woken.store(true, Ordering::Release);
    }
}

/// Synchronous send, reply and abort racing: the originator is woken
/// exactly when it went to sleep (no lost wakeup), it reads the code the
/// target wrote (loom checks the cell's happens-before), and an `ABORTED`
/// reply implies an abort was recorded.
#[test]
fn domsg_reply_and_abort_race() {
    loom::model(|| {
        let s = shared(true);
        s.hdr.begin_send(true);
        s.sent.store(true, Ordering::Release);

        let t = {
            let s = s.clone();
            thread::spawn(move || target(&s))
        };
        let aborter = {
            let s = s.clone();
            thread::spawn(move || s.hdr.request_abort())
        };

        // The originator waits as `domsg` does: announce, then sleep until
        // woken unless already done.
        if !s.hdr.prepare_wait() {
            spin_until(|| s.woken.load(Ordering::Acquire));
        }
        assert!(s.hdr.is_done());
        // SAFETY: done: the originator owns the message.
        let c = unsafe { s.hdr.code() };
        t.join().unwrap();
        let aborted = aborter.join().unwrap();
        assert!(c == 7 || c == code::ABORTED);
        if c == code::ABORTED {
            assert!(aborted, "aborted reply without a recorded abort");
        }
        assert!(!s.hdr.request_abort(), "replied: abort refused");
    });
}

/// Asynchronous send whose reply is queued on the reply port: ownership
/// comes back only when the reply port's owner takes it, and the
/// originator may abort meanwhile without losing the reply.
#[test]
fn queued_reply_and_abort_race() {
    loom::model(|| {
        let s = shared(true);
        let replied = Arc::new(AtomicBool::new(false));
        s.hdr.begin_send(false);
        s.sent.store(true, Ordering::Release);

        let t = {
            let (s, replied) = (s.clone(), replied.clone());
            thread::spawn(move || {
                spin_until(|| s.sent.load(Ordering::Acquire));
                s.hdr.mark_queued();
                let before = s.hdr.take_request();
                let c = if before & f::ABORTREQ != 0 {
                    code::ABORTED
                } else {
                    7
                };
                // SAFETY: the target owns it until the reply is queued.
                unsafe { s.hdr.set_code(c) };
                s.hdr.mark_reply_queued();
                replied.store(true, Ordering::Release);
            })
        };

        let aborted = s.hdr.request_abort();
        spin_until(|| replied.load(Ordering::Acquire));
        assert!(s.hdr.is_queued_reply() && !s.hdr.is_done());
        s.hdr.take_reply();
        assert!(s.hdr.is_done());
        // SAFETY: taken back: the originator owns it.
        let c = unsafe { s.hdr.code() };
        t.join().unwrap();
        if c == code::ABORTED {
            assert!(aborted);
        }
        // Reusable at once.
        s.hdr.begin_send(true);
        assert_eq!(s.hdr.flags() & (f::ABORTREQ | f::DONE | f::REPLY), 0);
        s.hdr.complete(|| {});
    });
}

/// A future's waker against the reply: the waker runs (or the poll sees
/// the reply) before the message is done, and the future always completes.
#[test]
fn future_waker_and_reply_race() {
    loom::model(|| {
        let s = shared(false);
        let waker_ran = Arc::new(AtomicBool::new(false));
        s.hdr.begin_send(true);
        s.sent.store(true, Ordering::Release);

        let t = {
            let (s, waker_ran) = (s.clone(), waker_ran.clone());
            thread::spawn(move || {
                spin_until(|| s.sent.load(Ordering::Acquire));
                s.hdr.take_request();
                // SAFETY: the target owns it.
                unsafe { s.hdr.set_code(7) };
                let waiting = s.hdr.complete(|| {
                    assert!(!s.hdr.is_done(), "waker ran after DONE");
                    waker_ran.store(true, Ordering::Release);
                });
                assert!(!waiting, "no thread sleeps on it");
            })
        };

        // First poll: register, or find it done.
        if !s.hdr.arm_waker() {
            // Pending: only the waker can make progress now.
            spin_until(|| waker_ran.load(Ordering::Acquire));
            // The re-poll waits out the second phase.
            assert!(s.hdr.arm_waker());
        }
        assert!(s.hdr.is_done());
        // SAFETY: done.
        assert_eq!(unsafe { s.hdr.code() }, 7);
        t.join().unwrap();
    });
}
