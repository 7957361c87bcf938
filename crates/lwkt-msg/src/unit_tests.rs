//! Unit tests of the queue, the header's state machine and the ownership
//! checks, without a machine (so Miri runs them: `cargo xtask miri`).

use std::boxed::Box;
use std::vec::Vec;

use crate::header::{f, Armed, Header};
use crate::queue::Queue;
use crate::{Msg, MsgError, MsgHandle};

#[test]
fn queue_is_fifo_and_removes_anywhere() {
    let hs: Vec<Header> = (0..5).map(|_| Header::new(0)).collect();
    let p = |i: usize| &hs[i] as *const Header as *mut Header;
    let mut q = Queue::new();
    assert!(q.is_empty() && q.pop().is_none());
    for i in 0..5 {
        // SAFETY: live headers on no queue, outliving the queue.
        unsafe { q.push(p(i)) };
    }
    assert_eq!(q.len(), 5);
    assert!(q.remove(p(2)));
    assert!(q.remove(p(4)), "tail");
    assert!(!q.remove(p(4)), "already gone");
    assert_eq!(q.len(), 3);
    // SAFETY: as above.
    unsafe { q.push(p(4)) };
    let order: Vec<_> = core::iter::from_fn(|| q.pop()).collect();
    assert_eq!(order, [p(0), p(1), p(3), p(4)]);
    assert!(q.is_empty());
    assert_eq!(q.len(), 0);
}

#[test]
fn request_lifecycle_direct_reply() {
    let h = Header::new(0);
    assert!(h.is_done());
    h.begin_send(true);
    assert_eq!(h.flags(), f::SYNC);
    h.mark_queued();
    assert_eq!(h.take_request() & f::QUEUED, f::QUEUED);
    // SAFETY: we act as the target.
    unsafe { h.set_code(5) };
    assert!(!h.prepare_wait(), "not done yet: the waiter sleeps");
    assert!(h.complete(|| panic!("no waker")), "the waiter is woken");
    assert!(h.is_done());
    // SAFETY: the originator owns it again.
    let code = unsafe { h.code() };
    assert_eq!(MsgError::decode(code), Err(MsgError::Code(5)));
}

#[test]
fn a_domsg_request_is_not_marked_while_queued() {
    let h = Header::new(0);
    h.begin_domsg();
    h.mark_queued();
    // Nobody could look: the originator waits inside `domsg`.
    assert_eq!(h.flags(), f::SYNC | f::HELD);
    assert_eq!(h.take_request() & f::QUEUED, 0);
    assert!(!h.complete(|| panic!("no waker")), "nobody sleeps on it");
    assert!(h.is_done());
}

#[test]
fn queued_reply_returns_ownership_when_taken() {
    let h = Header::new(0);
    h.begin_send(false);
    h.mark_reply_queued();
    assert!(h.is_queued_reply() && !h.is_done());
    h.take_reply();
    assert!(h.is_done() && !h.is_queued_reply());
    assert_eq!(h.flags() & f::QUEUED, 0);
}

#[test]
fn a_waker_is_woken_before_done() {
    let h = Header::new(0);
    h.begin_send(true);
    assert_eq!(h.arm_waker(), Armed::Pending);
    let mut woke = false;
    let waiting = h.complete(|| {
        assert!(
            !h.is_done(),
            "the waker runs while the message is in flight"
        );
        woke = true;
    });
    assert!(woke && !waiting && h.is_done());
    assert_eq!(h.arm_waker(), Armed::Done, "done: the future completes");
}

#[test]
fn abort_is_recorded_until_the_reply() {
    let h = Header::new(0);
    h.set_abortable();
    h.begin_send(true);
    assert!(h.request_abort());
    assert_ne!(h.take_request() & f::ABORTREQ, 0);
    h.complete(|| {});
    assert!(!h.request_abort(), "replied: too late");
    h.begin_send(true);
    assert_eq!(h.flags() & f::ABORTREQ, 0, "a new send clears the request");
    assert_ne!(h.flags() & f::ABORTABLE, 0, "and keeps abortability");
    h.complete(|| {});
}

#[test]
#[should_panic(expected = "not created abortable")]
fn abort_of_a_plain_message_panics() {
    Header::new(0).request_abort();
}

#[test]
#[should_panic(expected = "already in flight")]
fn sending_a_message_in_flight_panics() {
    let h = Header::new(0);
    h.begin_send(true);
    h.begin_send(true);
}

#[test]
#[should_panic(expected = "reply is still queued")]
fn sending_a_message_whose_reply_is_queued_panics() {
    let h = Header::new(0);
    h.begin_send(false);
    h.mark_reply_queued();
    h.begin_send(false);
}

#[test]
fn the_target_owns_the_body_through_its_handle() {
    let mut m = Box::pin(Msg::new(1u32));
    m.hdr.begin_send(true);
    let raw = m.as_mut().as_raw();
    // SAFETY: we act as the target of the sent message.
    let mut h = unsafe { MsgHandle::from_raw(raw) };
    *h += 41;
    assert!(h.is_sync() && !h.abort_requested());
    let raw = h.into_raw();
    // SAFETY: still the target, until `complete`.
    unsafe { (*raw).hdr.complete(|| {}) };
    assert_eq!(*m.body(), 42);
    assert_eq!(m.result(), Ok(()));
}

/// Run `f`, which must panic with a message containing `rule`.
fn panics_with(rule: &str, f: impl FnOnce()) {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("no panic");
    let msg = err
        .downcast_ref::<std::string::String>()
        .map(|s| s.as_str())
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("");
    assert!(msg.contains(rule), "panic {msg:?} does not name {rule:?}");
}

#[test]
fn the_body_is_out_of_reach_in_flight() {
    let mut m = Box::pin(Msg::new(0u32));
    m.hdr.begin_send(true);
    panics_with("message body used while the message is in flight", || {
        let _ = m.body();
    });
    panics_with("message body used while the message is in flight", || {
        let _ = m.as_mut().body_mut();
    });
    m.hdr.complete(|| {});
}

#[test]
fn a_handle_dropped_unreplied_panics() {
    let mut m = Box::pin(Msg::new(0u32));
    m.hdr.begin_send(true);
    let raw = m.as_mut().as_raw();
    panics_with("dropped without a reply", || {
        // SAFETY: we act as the target.
        drop(unsafe { MsgHandle::from_raw(raw) });
    });
    m.hdr.complete(|| {});
}

#[test]
fn error_codes_round_trip() {
    for r in [
        Ok(()),
        Err(MsgError::Aborted),
        Err(MsgError::Closed),
        Err(MsgError::Code(1)),
        Err(MsgError::Code(i32::MAX)),
    ] {
        assert_eq!(MsgError::decode(MsgError::encode(r)), r);
    }
}

#[test]
#[should_panic(expected = "must be positive")]
fn non_positive_codes_are_refused() {
    MsgError::encode(Err(MsgError::Code(0)));
}

/// The layout budget: header 16, reply port 8, tag 8, waker 24 bytes, so a
/// body of up to 8 bytes keeps a message in one cache line.
#[test]
fn a_message_with_a_word_sized_body_fits_one_cache_line() {
    use crate::Msg;
    use core::mem::{align_of, size_of};
    assert_eq!(align_of::<Msg<u64>>(), 64);
    assert_eq!(size_of::<Msg<u64>>(), 64);
    assert_eq!(size_of::<Msg<()>>(), 64);
    assert_eq!(size_of::<Msg<[u64; 2]>>(), 128);
}

/// A message holds a count on its counted reply port for as long as it
/// names it (Miri checks the `Arc` arithmetic and the provenance).
#[test]
fn a_message_counts_its_counted_reply_port() {
    use crate::{Port, PortRef};
    let p: PortRef<u32> = PortRef::new(Port::spin());
    let q = p.clone();
    assert_eq!(p.count(), 2);
    let mut m = Box::pin(Msg::with_reply_port(&p, 1));
    assert_eq!(p.count(), 3, "the message's count");
    m.as_mut().set_reply_port(&p);
    assert_eq!(p.count(), 3, "changing to the same port keeps one count");
    m.as_mut().clear_reply_port();
    assert_eq!(p.count(), 2);
    m.as_mut().set_reply_port(q);
    assert_eq!(
        p.count(),
        2,
        "a handle moved in: the message's count replaces it"
    );
    static STATIC: Port<u32> = Port::spin();
    m.as_mut().set_reply_port(&STATIC);
    assert_eq!(p.count(), 1);
    m.as_mut().set_reply_port(p.clone());
    assert_eq!(p.count(), 2);
    drop(m);
    assert_eq!(p.count(), 1, "a dropped message gives its count up");
}
