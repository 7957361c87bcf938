//! Loom models of the message protocol between two CPUs: the originator,
//! the target (which takes the request, sees an abort or not, and replies),
//! and a third party that aborts. They run this crate's own state machine
//! (`header.rs`) through the `sync` shim; the hand-off between CPUs (the
//! port's queue or IPI ring) is a Release store and an Acquire load, as the
//! real rings are. The last models route a put to a thread port whose
//! owner migrates (`port::route_by`, the port's `Queue`), against the
//! handover as lwkt-core makes it. Run with `cargo xtask loom`.

use loom::sync::atomic::AtomicBool;
use loom::sync::Arc;
use loom::thread;

use crate::header::{code, f, Armed, Header};
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

/// `domsg` to another CPU (`begin_domsg`: `SYNC|HELD`): the target takes
/// the request without marking it queued or unmarking it (plain loads, no
/// read-modify-write) while the originator watches the header and then,
/// at any point, announces its sleep with a read-modify-write; the reply
/// must see that announcement or the originator must see the reply (no
/// lost wake-up), the code must be the target's, and the word must never
/// carry `QUEUED`.
#[test]
fn held_domsg_reply_races_the_sleep() {
    loom::model(|| {
        let s = shared(false);
        s.hdr.begin_domsg();
        s.sent.store(true, Ordering::Release);

        let t = {
            let s = s.clone();
            thread::spawn(move || target(&s))
        };

        // The reply watch: one look, then the sleep.
        if !s.hdr.is_done() && !s.hdr.prepare_wait() {
            spin_until(|| s.woken.load(Ordering::Acquire));
        }
        assert!(s.hdr.is_done());
        assert_eq!(s.hdr.flags() & f::QUEUED, 0);
        // SAFETY: done: the originator owns the message.
        assert_eq!(unsafe { s.hdr.code() }, 7);
        t.join().unwrap();
    });
}

/// `domsg_timeout` (`port/timed.rs`): the originator's timed sleep on the
/// message ends unanswered (the timer's wake-up), so it aborts its own
/// message and sleeps again, untimed, until the reply; the target takes
/// the request (answering an abort it sees with `ABORTED`, as the port
/// does) and replies, at any point of that. A wake-up made while the
/// originator is between its two sleeps is lost (it is on no sleep queue
/// then): the model forgets it, and the second `prepare_wait` must see the
/// reply instead. Checked: the originator always gets exactly one reply
/// (no hang: a lost wake-up would spin until loom gives up), its code is
/// the target's, an `ABORTED` reply comes only after a recorded abort, an
/// abort refused means the reply was made, a reply in time is never
/// aborted, and the message is reusable at once with no abort left in
/// its flags. A second sleep that does not look at the message before it
/// waits for the wake-up fails (loom gives up on the spin).
#[test]
fn domsg_timeout_then_abort_races_the_reply() {
    loom::model(|| {
        let s = shared(true);
        s.hdr.begin_send(true);
        s.sent.store(true, Ordering::Release);

        let t = {
            let s = s.clone();
            thread::spawn(move || target(&s))
        };

        // The timed sleep: announce, look; not done means it timed out
        // (the timer's wake-up, which the model takes at once).
        let in_time = s.hdr.prepare_wait();
        let mut aborted = false;
        if !in_time {
            // Between the two sleeps no wake-up is kept: forget one seen.
            let _ = s
                .woken
                .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire);
            aborted = s.hdr.request_abort();
            if !aborted {
                assert!(
                    s.hdr.flags() & (f::REPLY | f::DONE) != 0,
                    "abort refused before any reply"
                );
            }
            // The untimed sleep for the reply the abort brings.
            if !s.hdr.prepare_wait() {
                spin_until(|| s.woken.load(Ordering::Acquire));
            }
        }
        assert!(s.hdr.is_done());
        // SAFETY: done: the originator owns the message.
        let c = unsafe { s.hdr.code() };
        t.join().unwrap();
        assert!(c == 7 || c == code::ABORTED);
        if c == code::ABORTED {
            assert!(aborted, "aborted reply without a recorded abort");
        }
        if in_time {
            assert_eq!(c, 7, "a reply in time is never aborted");
        }
        // Reusable at once, the abort forgotten.
        s.hdr.begin_send(true);
        assert_eq!(
            s.hdr.flags() & (f::ABORTREQ | f::DONE | f::REPLY | f::WAITING),
            0
        );
    });
}

/// `domsg` on one CPU (`f::PARKED`), the message forwarded by its target to
/// a second CPU which replies: every update of the flags word is a plain
/// store (only the owner writes a parked message's word), the reply code
/// crosses to the second CPU and back with the hand-offs (IPI rings:
/// Release/Acquire), and the completion runs on the waiter's CPU (modelled
/// as the originator's loom thread, which the IPI function would interrupt
/// in its sleep). A third party only reads the word. Loom checks the error
/// cell's happens-before and that no update is lost (the originator sees
/// `DONE` with the code the far target wrote). The message's tag word,
/// which holds the waiter's `ParkToken` while it is parked (`Msg::park_tag`,
/// `parked_waiter`, `unpark_tag`), is a loom cell here: written by the
/// originator before the send, read by the completion on its CPU before
/// `DONE`, put back by the originator after it, and untouched by the far
/// target; loom checks that no access races.
#[test]
fn parked_domsg_replied_from_another_cpu() {
    loom::model(|| {
        let s = shared(false);
        let back = Arc::new(AtomicBool::new(false));
        let tag = Arc::new(crate::sync::UnsafeCell::new(5u64));
        s.hdr.begin_send(true);
        // SAFETY: the originator, before the send (`park_tag`).
        let saved = tag.with_mut(|p| unsafe { core::mem::replace(&mut *p, 0xa110) });
        s.hdr.park_queued(lwkt_core::CpuId::new(0));
        // Taken by the near target on this CPU (after we sleep), which
        // forwards it: the IPI ring to CPU 1.
        let before = s.hdr.take_request();
        assert!(before & f::PARKED != 0 && before & f::QUEUED != 0);
        s.sent.store(true, Ordering::Release);

        let far = {
            let (s, back) = (s.clone(), back.clone());
            thread::spawn(move || {
                spin_until(|| s.sent.load(Ordering::Acquire));
                s.hdr.mark_queued();
                let before = s.hdr.take_request();
                assert!(before & f::PARKED != 0);
                // SAFETY: the far target owns the message until its reply.
                unsafe { s.hdr.set_code(9) };
                // `complete_parked` from CPU 1: by IPI to the waiter's CPU.
                assert_eq!(s.hdr.parked_cpu().get(), 0);
                back.store(true, Ordering::Release);
            })
        };
        let reader = {
            let s = s.clone();
            thread::spawn(move || {
                let _ = s.hdr.flags();
            })
        };

        // The IPI function on CPU 0 completes the message (the waiter
        // sleeps meanwhile; it cannot run between this and its wakeup).
        spin_until(|| back.load(Ordering::Acquire));
        // SAFETY: the completion owns the message until DONE
        // (`parked_waiter`).
        let waiter = tag.with(|p| unsafe { *p });
        assert_eq!(waiter, 0xa110);
        s.hdr.complete_parked();
        assert!(s.hdr.is_done());
        // SAFETY: done: the originator's again (`unpark_tag`).
        tag.with_mut(|p| unsafe { *p = saved });
        assert_eq!(s.hdr.flags() & (f::PARKED | f::PARKED_CPU | f::QUEUED), 0);
        // SAFETY: done: the originator owns the message.
        assert_eq!(unsafe { s.hdr.code() }, 9);
        far.join().unwrap();
        reader.join().unwrap();
        // Reusable at once.
        s.hdr.begin_send(true);
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
        match s.hdr.arm_waker() {
            Armed::Done => {}
            Armed::Pending => {
                // Only the waker can make progress now.
                spin_until(|| waker_ran.load(Ordering::Acquire));
                // Re-polls (the future's executor yields between them)
                // see the second phase done, never a lost reply.
                spin_until(|| s.hdr.arm_waker() == Armed::Done);
            }
            // The replier takes the two-phase path only after a WAKER.
            Armed::Replying => panic!("a first poll found the reply between its phases"),
        }
        assert!(s.hdr.is_done());
        // SAFETY: done.
        assert_eq!(unsafe { s.hdr.code() }, 7);
        t.join().unwrap();
    });
}

/// A thread port's owner, as lwkt-core keeps it: its CPU number and its
/// CPU pointer (`Thread::cpuid`, `Thread::gd`; here the pointer is a
/// number too). A migration's handover (lwkt-core `finish_switch`, on the
/// old CPU after the thread has switched away) stores the number (Relaxed)
/// then the pointer (Release); `ThreadHandle::is_local` loads the pointer
/// (Acquire). Those orderings are lwkt-core's, restated here.
struct Migrating {
    cpuid: loom::sync::atomic::AtomicU32,
    gd: loom::sync::atomic::AtomicU32,
    /// The port's queue (lwkt-msg's own `Queue`, and `Header`s whose links
    /// are loom cells), in a loom cell: loom checks who touches it.
    q: loom::cell::UnsafeCell<crate::queue::Queue>,
    hdrs: [Header; 2],
    /// The IPI rings' hand-off (Release/Acquire), one way each: 0 nothing,
    /// 1 a put, 2 "no put is coming".
    to_old: loom::sync::atomic::AtomicU32,
    to_new: AtomicBool,
}

// SAFETY: the queue's raw pointers name `hdrs`, inside the same `Arc`; loom
// checks every access to the queue and the links.
unsafe impl Send for Migrating {}
// SAFETY: as above.
unsafe impl Sync for Migrating {}

impl Migrating {
    fn hdr(&self, i: usize) -> *mut Header {
        &self.hdrs[i] as *const Header as *mut Header
    }

    /// A put on CPU `here`, as `thread_push` makes it: route, then push
    /// (the queue is ours) or pass it on.
    fn put(&self, here: u32, is_local: impl Fn(&Migrating, u32) -> bool) -> Option<u32> {
        let r = crate::port::route_by(
            lwkt_core::CpuId::new(here),
            || is_local(self, here),
            || lwkt_core::CpuId::new(self.cpuid.load(Ordering::Relaxed)),
        );
        match r {
            None => {
                // SAFETY: `route` says the owner lives here.
                self.q.with_mut(|q| unsafe { (*q).push(self.hdr(1)) });
                self.hdrs[1].mark_queued();
                None
            }
            Some(c) => Some(c.get()),
        }
    }
}

/// The owner of a thread port migrates from CPU 0 to CPU 1 right after its
/// last look at the port's queue, while a put to the port arrives on CPU 1
/// (an IPI from a sender that read the old number, or a sender there). The
/// put must not touch the queue before the owner's last access on CPU 0 is
/// ordered before it. `is_local` is the check the put routes by.
fn migration_model(is_local: fn(&Migrating, u32) -> bool) {
    loom::model(move || {
        let p = Arc::new(Migrating {
            cpuid: loom::sync::atomic::AtomicU32::new(0),
            gd: loom::sync::atomic::AtomicU32::new(0),
            q: loom::cell::UnsafeCell::new(crate::queue::Queue::new()),
            hdrs: [Header::new(0), Header::new(0)],
            to_old: loom::sync::atomic::AtomicU32::new(0),
            to_new: AtomicBool::new(false),
        });
        // A request queued on CPU 0 before.
        p.hdrs[0].begin_send(false);
        // SAFETY: nobody else runs yet.
        p.q.with_mut(|q| unsafe { (*q).push(p.hdr(0)) });
        p.hdrs[0].mark_queued();
        p.hdrs[1].begin_send(false);

        let old = {
            let p = p.clone();
            thread::spawn(move || {
                // CPU 0: the owner takes the request, then migrates; the
                // next thread there hands it over.
                // SAFETY: the owner lives here.
                let h = p.q.with_mut(|q| unsafe { (*q).pop() });
                assert_eq!(h, Some(p.hdr(0)));
                p.hdrs[0].take_request();
                p.cpuid.store(1, Ordering::Relaxed);
                p.gd.store(1, Ordering::Release);
                // An IPI may bring the put here: route it on.
                spin_until(|| p.to_old.load(Ordering::Acquire) != 0);
                if p.to_old.load(Ordering::Acquire) == 1 {
                    assert_eq!(p.put(0, is_local), Some(1), "the owner left CPU 0");
                    p.to_new.store(true, Ordering::Release);
                }
            })
        };

        // CPU 1: the put arrives.
        match p.put(1, is_local) {
            None => p.to_old.store(2, Ordering::Release),
            Some(c) => {
                assert_eq!(c, 0);
                p.to_old.store(1, Ordering::Release);
                spin_until(|| p.to_new.load(Ordering::Acquire));
                assert_eq!(p.put(1, is_local), None, "back here after the handover");
            }
        }
        old.join().unwrap();
        // The owner, now on CPU 1, finds the put and nothing else.
        // SAFETY: the owner lives here.
        let h = p.q.with_mut(|q| unsafe { (*q).pop() });
        assert_eq!(h, Some(p.hdr(1)));
        // SAFETY: as above.
        assert!(p.q.with(|q| unsafe { (*q).is_empty() }));
    });
}

/// The check thread ports route by (`ThreadHandle::is_local`: the owner's
/// CPU pointer, Acquire): the put on the new CPU comes after the owner's
/// last access on the old one, whichever way it is routed (the spin of
/// `route_by` while the number is ahead of the pointer included).
#[test]
fn thread_port_push_after_migration() {
    migration_model(|p, here| p.gd.load(Ordering::Acquire) == here);
}

/// The check thread ports routed by before issue 15 (the owner's CPU
/// number, Relaxed): loom finds the put on the new CPU racing the owner's
/// last access to the queue on the old one.
#[test]
#[should_panic(expected = "Causality violation")]
fn thread_port_push_by_cpu_number_races() {
    migration_model(|p, here| p.cpuid.load(Ordering::Relaxed) == here);
}

/// The inline `domsg` of a put-only port (`header/inline.rs`,
/// `port/put_only.rs`) once the handler has returned without a reply it
/// made itself: the sender looks (`is_done_inline`), leaves the inline
/// protocol with a read-modify-write (`leave_inline`), and sleeps until
/// woken unless the message is done; as `put_only::escaped` does.
/// `interrupt(running)` runs what may land at that point on the sender's
/// CPU (`running`: whether the sender's thread is the one running there).
fn inline_sender_waits(s: &Shared, interrupt: &dyn Fn(bool)) {
    interrupt(true);
    if s.hdr.is_done_inline() {
        return;
    }
    interrupt(true);
    if s.hdr.leave_inline() {
        return;
    }
    interrupt(true);
    if s.hdr.prepare_wait() {
        return;
    }
    // Asleep: the CPU runs another thread, or idles; interrupts land there.
    spin_until(|| {
        interrupt(false);
        s.woken.load(Ordering::Acquire)
    });
}

/// The sender is back from an inline `domsg`: the message is done, with
/// the replier's code, no `INLINE` left, and reusable.
fn inline_sender_back(s: &Shared, tag: &crate::sync::UnsafeCell<u64>, saved: u64) {
    assert!(s.hdr.is_done());
    // SAFETY: done: the originator's again (`unpark_tag`).
    tag.with_mut(|p| unsafe { *p = saved });
    // SAFETY: done: the originator owns the message.
    assert_eq!(unsafe { s.hdr.code() }, 7);
    let fl = s.hdr.flags();
    assert_eq!(fl & f::INLINE, 0, "INLINE left behind: {fl:#x}");
    assert_eq!(fl & (f::REPLY | f::SYNC), f::REPLY | f::SYNC);
    s.hdr.begin_send(true);
}

/// Inline `domsg` whose handler hands the message to another thread (a
/// forward to a thread port, or its handle sent away), on another CPU or
/// on the sender's (where either may preempt the other anywhere): that
/// replier is not on the sender's thread, so `complete_inline_if` refuses
/// and it completes the general way, at any point of the sender's return
/// from the handler, its look, its `leave_inline` and its sleep. Checked:
/// no lost wake-up (a lost one spins until loom gives up), the code is the
/// replier's, `INLINE` never outlives the call, and the tag word (the
/// sender's token, read by the replier only while it sees `INLINE`) is
/// never accessed by both at once.
#[test]
fn inline_domsg_replied_from_another_cpu() {
    loom::model(|| {
        let s = shared(false);
        let tag = Arc::new(crate::sync::UnsafeCell::new(5u64));
        s.hdr.begin_inline();
        // SAFETY: the originator, before the send (`park_tag`).
        let saved = tag.with_mut(|p| unsafe { core::mem::replace(&mut *p, 0xa110) });
        // The handler hands the message over (a queue or ring: Release).
        s.sent.store(true, Ordering::Release);
        let far = {
            let (s, tag) = (s.clone(), tag.clone());
            thread::spawn(move || {
                spin_until(|| s.sent.load(Ordering::Acquire));
                // SAFETY: the replier owns the message until its reply.
                unsafe { s.hdr.set_code(7) };
                let inline = s.hdr.complete_inline_if(|| {
                    // SAFETY: INLINE seen: the token is there until DONE
                    // (`parked_waiter`).
                    let waiter = tag.with(|p| unsafe { *p });
                    assert_eq!(waiter, 0xa110);
                    false // `MyCpu::runs`: the sender is not this thread
                });
                assert!(!inline);
                if s.hdr.complete(|| {}) {
                    s.woken.store(true, Ordering::Release);
                }
            })
        };
        inline_sender_waits(&s, &|_| {});
        inline_sender_back(&s, &tag, saved);
        far.join().unwrap();
    });
}

/// Inline `domsg` whose handler sends the message's handle to another CPU,
/// which sends it back by IPI to the sender's CPU, where the IPI function
/// replies: inside the handler's call or after it, before or after the
/// sender's `leave_inline`, or while the sender sleeps. While the sender's
/// thread runs there (`MyCpu::runs`) the reply is the plain store of
/// `complete_inline_if`; once it sleeps, the general `complete`. Checked:
/// the sender always returns (no lost wake-up), with the code, no `INLINE`
/// left, and no race on the tag word.
#[test]
fn inline_domsg_replied_by_an_interrupt_on_the_senders_cpu() {
    loom::model(|| {
        let s = shared(false);
        let ipi = Arc::new(AtomicBool::new(false));
        let tag = Arc::new(crate::sync::UnsafeCell::new(5u64));
        s.hdr.begin_inline();
        // SAFETY: the originator, before the send (`park_tag`).
        let saved = tag.with_mut(|p| unsafe { core::mem::replace(&mut *p, 0xa110) });
        s.sent.store(true, Ordering::Release);
        let far = {
            let (s, ipi) = (s.clone(), ipi.clone());
            thread::spawn(move || {
                spin_until(|| s.sent.load(Ordering::Acquire));
                // The handle goes back to the sender's CPU in an IPI.
                ipi.store(true, Ordering::Release);
            })
        };
        // The IPI function, when it lands on the sender's CPU.
        let interrupt = |running: bool| {
            // Only this CPU takes it off: a look, then a plain store.
            if !ipi.load(Ordering::Acquire) {
                return;
            }
            ipi.store(false, Ordering::Relaxed);
            // SAFETY: the IPI function owns the message until its reply.
            unsafe { s.hdr.set_code(7) };
            let inline = s.hdr.complete_inline_if(|| {
                // SAFETY: INLINE seen: the token is there until DONE.
                assert_eq!(tag.with(|p| unsafe { *p }), 0xa110);
                // `leave_inline` comes before any sleep: a sleeping
                // sender's message is never `INLINE`.
                assert!(running, "INLINE seen while the sender sleeps");
                running
            });
            if !inline && s.hdr.complete(|| {}) {
                s.woken.store(true, Ordering::Release);
            }
        };
        // Inside the handler's call, after it handed the handle over.
        interrupt(true);
        inline_sender_waits(&s, &interrupt);
        inline_sender_back(&s, &tag, saved);
        far.join().unwrap();
    });
}
