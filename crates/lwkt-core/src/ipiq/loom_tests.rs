//! Loom models of the IPI ring and doorbell (run with `RUSTFLAGS="--cfg loom"`).

use loom::sync::Arc;
use loom::thread;

use super::{Ring, RingIndex};

/// Producer and consumer on two threads: every value arrives once, in order.
#[test]
fn ring_spsc_in_order() {
    loom::model(|| {
        let r: Arc<Ring<u32, 2>> = Arc::new(Ring::new());
        let p = r.clone();
        let t = thread::spawn(move || {
            for i in 0..3u32 {
                // SAFETY: this thread is the only producer.
                while unsafe { p.push(i) }.is_err() {
                    thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < 3 {
            // SAFETY: this thread is the only consumer.
            if let Some(v) = unsafe { r.pop() } {
                assert_eq!(v, next);
                next += 1;
            } else {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { r.pop() }, None);
    });
}

/// A full ring refuses a push without overwriting anything, and takes it
/// after a pop; a batch publishes what fits.
#[test]
fn ring_full_then_drained() {
    loom::model(|| {
        let r: Arc<Ring<u32, 2>> = Arc::new(Ring::new());
        let p = r.clone();
        let t = thread::spawn(move || {
            // SAFETY: this thread is the only producer.
            unsafe {
                assert_eq!(p.push_batch(&[1, 2, 3]), 2, "a batch takes what fits");
                let mut third = 3;
                while let Err(v) = p.push(third) {
                    third = v; // refused, not lost
                    thread::yield_now();
                }
            }
        });
        let mut got = std::vec::Vec::new();
        while got.len() < 3 {
            // SAFETY: this thread is the only consumer.
            match unsafe { r.pop() } {
                Some(v) => got.push(v),
                None => thread::yield_now(),
            }
        }
        t.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

/// Batches through a two-slot ring, around it more than twice: each batch
/// is one run, published with one store after its entries, and taken with
/// one Acquire load of its head; a run's slots are freed only when its last
/// entry is taken, so a batch that does not fit is taken in part, and the
/// producer waits for the run before it to be freed. The consumer mixes
/// `pop`, `pop_if` (refusing once inside a run) and a handle. Every value
/// arrives once, in order, and loom finds any read of an entry not ordered
/// after its write (a data race on the slot).
#[test]
fn ring_batches_wrap_in_order() {
    batches_wrap_in_order::<u64>();
}

/// The same with `u32` indices (a target without 64-bit atomics): the
/// batches' tail writes of sequence words race with nothing the consumer
/// reads as a run's head.
#[test]
fn ring_batches_wrap_in_order_u32() {
    batches_wrap_in_order::<u32>();
}

fn batches_wrap_in_order<I: RingIndex>() {
    loom::model(|| {
        let r: Arc<Ring<u32, 2, I>> = Arc::new(Ring::new());
        let p = r.clone();
        let t = thread::spawn(move || {
            let items = [0u32, 1, 2, 3, 4];
            let mut sent = 0;
            for len in [2usize, 3] {
                let end = sent + len;
                while sent < end {
                    // SAFETY: this thread is the only producer.
                    let n = unsafe { p.push_batch(&items[sent..end]) };
                    sent += n;
                    if n == 0 {
                        thread::yield_now();
                    }
                }
            }
        });
        let mut next = 0;
        while next < 5 {
            // SAFETY: this thread is the only consumer.
            let got = unsafe {
                match next {
                    1 => {
                        // Inside the first run: refuse, then take.
                        assert_eq!(r.pop_if(|_| false), None);
                        r.pop_if(|v| *v == 1)
                    }
                    3 => r.consumer().pop(),
                    _ => r.pop(),
                }
            };
            match got {
                Some(v) => {
                    assert_eq!(v, next);
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        t.join().unwrap();
        // SAFETY: as above.
        unsafe {
            assert_eq!(r.pop(), None);
        }
        assert!(r.is_empty());
        assert_eq!(r.len(), 0);
    });
}

/// A consumer part-way through a run: the ring does not look empty while
/// the run's rest is queued, and the producer does not get the run's slots back before the
/// consumer has read them (loom reports the race if it could).
#[test]
fn ring_part_taken_run_stays_visible() {
    loom::model(|| {
        let r: Arc<Ring<u32, 2>> = Arc::new(Ring::new());
        // SAFETY: this thread is the producer until the spawn below.
        assert_eq!(unsafe { r.push_batch(&[10, 11]) }, 2);
        let c = r.clone();
        let t = thread::spawn(move || {
            // SAFETY: this thread is the only consumer.
            unsafe {
                assert_eq!(c.pop(), Some(10));
                assert!(!c.is_empty(), "the run's rest is queued");
                assert_eq!(c.pop(), Some(11));
            }
        });
        // The producer: the next batch fits only once the run is freed.
        let mut sent = 0;
        while sent < 2 {
            // SAFETY: this thread is the only producer.
            let n = unsafe { r.push_batch(&[[12, 13][sent]]) };
            sent += n;
            if n == 0 {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        // SAFETY: the consumer thread has ended; this one takes over.
        unsafe {
            assert_eq!(r.pop(), Some(12));
            assert_eq!(r.pop(), Some(13));
            assert_eq!(r.pop(), None);
        }
    });
}

use crate::cpu::CpuId;
use crate::cpumask::AtomicCpuMask;
use crate::sync::{AtomicBool, AtomicU32, Ordering};

use super::Doorbell;

/// The idle loop's last steps before it waits, with the hosted backend's
/// kick. A kick leaves a wake-up token (an unpark: a wait that starts later
/// returns at once) and, to a receiver not yet waiting, also an interrupt
/// that only records a request and may land late (a signal does not end a
/// `park()`). The receiver watches, drains, runs `settle_for_wait`, and
/// waits unless told not to, re-checking after it published that it waits,
/// as `idle_wait` does. A receiver left waiting with no token must have
/// nothing queued. Without the token it fails: a sender can choose a signal
/// just before the receiver parks and set `KICKED` after the receiver's
/// last clearing; every later sender then marks without kicking (the
/// session-4 hang of the 8-CPU message test). The token is taken with a
/// compare-exchange, not a swap: loom 0.7 can give a swap a history no
/// machine allows (tokio-rs/loom#254).
#[test]
fn idle_wait_loses_no_kick() {
    loom::model(|| {
        let ring: Arc<Ring<u32, 4>> = Arc::new(Ring::new());
        let ipimask = Arc::new(AtomicCpuMask::new());
        let npoll = Arc::new(AtomicU32::new(0));
        // What the kick looks at, and what it leaves.
        let waiting = Arc::new(AtomicBool::new(false));
        let token = Arc::new(AtomicBool::new(false));
        let recorded = Arc::new(AtomicBool::new(false));
        let db = Doorbell {
            ipimask: &ipimask,
            npoll: &npoll,
        };
        db.begin_watch();
        let sender = {
            let (waiting, token, recorded) = (waiting.clone(), token.clone(), recorded.clone());
            spawn_sender(&ring, &ipimask, &npoll, move || {
                token.store(true, Ordering::SeqCst);
                if !waiting.load(Ordering::SeqCst) {
                    // The signal lands some time later.
                    thread::yield_now();
                    recorded.store(true, Ordering::SeqCst);
                }
            })
        };
        let mut seen = std::vec::Vec::new();
        if !ring.is_empty() {
            drain_once(&db, &ring, &mut seen);
        }
        let pending = || !db.pending().is_empty() || recorded.load(Ordering::SeqCst);
        let settled = db.settle_for_wait(
            true,
            || {
                drain_once(&db, &ring, &mut seen);
                false
            },
            pending,
        );
        let mut asleep = false;
        if settled.wait {
            waiting.store(true, Ordering::SeqCst);
            let token_taken = token
                .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok();
            asleep = !pending() && !token_taken;
        }
        sender.join().unwrap();
        if asleep && !token.load(Ordering::SeqCst) {
            assert!(
                ring.is_empty(),
                "a message queued while asleep, and no wake-up"
            );
        }
    });
}

/// The model's sender (CPU 0): queue message 0, then messages 1 and 2 as
/// one batch, ringing the doorbell after each and calling `kick` when it
/// says so.
fn spawn_sender(
    ring: &Arc<Ring<u32, 4>>,
    ipimask: &Arc<AtomicCpuMask>,
    npoll: &Arc<AtomicU32>,
    kick: impl Fn() + Send + 'static,
) -> thread::JoinHandle<()> {
    let (ring, ipimask, npoll) = (ring.clone(), ipimask.clone(), npoll.clone());
    thread::spawn(move || {
        let db = Doorbell {
            ipimask: &ipimask,
            npoll: &npoll,
        };
        // Message 0 alone, then 1 and 2 as one batch (one publication).
        for batch in [&[0u32][..], &[1, 2][..]] {
            // SAFETY: this thread is the only producer.
            assert_eq!(unsafe { ring.push_batch(batch) }, batch.len());
            if db.ring(CpuId::new(0)) {
                kick();
            }
        }
    })
}

/// A kick that only raises a flag.
fn flag_kick(kick: &Arc<AtomicBool>) -> impl Fn() + Send + 'static {
    let kick = kick.clone();
    move || kick.store(true, Ordering::SeqCst)
}

/// The receive protocol of `ipiq::process`, on a model ring.
fn drain(db: &Doorbell<'_>, ring: &Ring<u32, 4>, seen: &mut std::vec::Vec<u32>) {
    db.begin_poll();
    let mask = db.pending();
    if !mask.contains(CpuId::new(0)) {
        return;
    }
    drain_watching(db, ring, seen);
}

/// Sender: queue, then `Doorbell::ring`, kicking when it says so. Receiver:
/// drain on every kick, and before "sleeping" clear the interlock and look
/// once more, as the idle loop does. Every message is run exactly once, in
/// order, and none is left behind without a kick pending.
#[test]
fn doorbell_loses_no_kick() {
    loom::model(|| {
        let ring: Arc<Ring<u32, 4>> = Arc::new(Ring::new());
        let ipimask = Arc::new(AtomicCpuMask::new());
        let npoll = Arc::new(AtomicU32::new(0));
        let kick = Arc::new(AtomicBool::new(false));
        let sender = spawn_sender(&ring, &ipimask, &npoll, flag_kick(&kick));
        let db = Doorbell {
            ipimask: &ipimask,
            npoll: &npoll,
        };
        let mut seen = std::vec::Vec::new();
        // A receiver that is kicked once or twice while the sender runs.
        for _ in 0..2 {
            if kick.swap(false, Ordering::SeqCst) {
                drain(&db, &ring, &mut seen);
            }
            thread::yield_now();
        }
        // Going idle: clear the interlock, look once more (idle loop).
        db.begin_poll();
        if !db.pending().is_empty() {
            drain(&db, &ring, &mut seen);
        }
        sender.join().unwrap();
        // Whatever is still queued must have a kick pending (or a mask bit
        // the idle loop will see), or the receiver would sleep forever.
        if !ring.is_empty() {
            assert!(
                kick.load(Ordering::SeqCst) || !ipimask.is_empty(Ordering::SeqCst),
                "lost kick"
            );
            drain(&db, &ring, &mut seen);
        }
        assert_eq!(seen, [0, 1, 2], "every message once, in order");
    });
}

/// The idle watch: the receiver sets `npoll` to `WATCHING` and reads the
/// ring itself; the sender then writes only the ring (no mask bit, no
/// kick). The receiver ends the watch and drains every ring once (as
/// `end_watch` does), then "sleeps". Every message is run once, in
/// order, and none is left queued without a kick pending or a mask bit.
#[test]
fn idle_watch_loses_no_message() {
    loom::model(|| {
        let ring: Arc<Ring<u32, 4>> = Arc::new(Ring::new());
        let ipimask = Arc::new(AtomicCpuMask::new());
        let npoll = Arc::new(AtomicU32::new(0));
        let kick = Arc::new(AtomicBool::new(false));
        let db = Doorbell {
            ipimask: &ipimask,
            npoll: &npoll,
        };
        db.begin_watch();
        let sender = spawn_sender(&ring, &ipimask, &npoll, flag_kick(&kick));
        let mut seen = std::vec::Vec::new();
        // Watching: the ring itself says whether there is work.
        if !ring.is_empty() {
            drain_once(&db, &ring, &mut seen);
        }
        thread::yield_now();
        // End of the watch, then every ring once, then "sleep".
        db.end_watch();
        drain_once(&db, &ring, &mut seen);
        sender.join().unwrap();
        if !ring.is_empty() {
            assert!(
                kick.load(Ordering::SeqCst) || !ipimask.is_empty(Ordering::SeqCst),
                "queued after the watch, and neither kicked nor marked"
            );
            drain(&db, &ring, &mut seen);
        }
        assert_eq!(seen, [0, 1, 2], "every message once, in order");
    });
}

/// `process_with(all)` on one ring: a marked ring goes through the mask
/// protocol; an unmarked one (queued during a watch) is just drained.
fn drain_once(db: &Doorbell<'_>, ring: &Ring<u32, 4>, seen: &mut std::vec::Vec<u32>) {
    if db.pending().contains(CpuId::new(0)) {
        drain_watching(db, ring, seen);
    } else {
        // SAFETY: the calling thread is the only consumer.
        while let Some(v) = unsafe { ring.pop() } {
            seen.push(v);
        }
    }
}

/// The mask protocol of `ipiq::process` on one ring: drain, clear the bit,
/// re-check.
fn drain_watching(db: &Doorbell<'_>, ring: &Ring<u32, 4>, seen: &mut std::vec::Vec<u32>) {
    loop {
        // SAFETY: the calling thread is the only consumer.
        while let Some(v) = unsafe { ring.pop() } {
            seen.push(v);
        }
        db.drained(CpuId::new(0));
        if ring.is_empty() {
            break;
        }
        db.rearm(CpuId::new(0));
    }
}

/// The critical-section hand-off: an interrupt (kick) that arrives inside a
/// critical section is recorded, not run; the final exit runs it, exactly
/// once, with no message left behind. Kicks are counted by the sender and
/// taken by the CPU by comparing with what it has handled.
#[test]
fn crit_defers_the_interrupt_to_the_final_exit() {
    loom::model(|| {
        let ring: Arc<Ring<u32, 4>> = Arc::new(Ring::new());
        let ipimask = Arc::new(AtomicCpuMask::new());
        let npoll = Arc::new(AtomicU32::new(0));
        let kicks = Arc::new(AtomicU32::new(0));
        let sender = {
            let (ring, ipimask, npoll, kicks) =
                (ring.clone(), ipimask.clone(), npoll.clone(), kicks.clone());
            thread::spawn(move || {
                let db = Doorbell {
                    ipimask: &ipimask,
                    npoll: &npoll,
                };
                // SAFETY: this thread is the only producer.
                assert!(unsafe { ring.push(7) }.is_ok());
                if db.ring(CpuId::new(0)) {
                    kicks.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        let count = AtomicU32::new(0);
        let reqflags = AtomicU32::new(0);
        let db = Doorbell {
            ipimask: &ipimask,
            npoll: &npoll,
        };
        let mut seen = std::vec::Vec::new();
        let mut taken = 0;
        crate::crit::enter(&count);
        // The interrupt may arrive here, inside the section: deferred.
        if kicks.load(Ordering::SeqCst) > taken {
            taken += 1;
            assert!(!crate::crit::interrupt_arrives(
                &count,
                0,
                &reqflags,
                crate::crit::rqf::IPIQ
            ));
            assert!(seen.is_empty(), "an IPI ran inside a critical section");
        }
        if crate::crit::exit(&count, &reqflags) {
            // The final exit runs what was deferred (`splz`).
            reqflags.fetch_and(!crate::crit::rqf::IPIQ, Ordering::Relaxed);
            drain(&db, &ring, &mut seen);
        }
        sender.join().unwrap();
        // Or it arrives after the section, and runs at once.
        if kicks.load(Ordering::SeqCst) > taken {
            assert!(crate::crit::interrupt_arrives(
                &count,
                0,
                &reqflags,
                crate::crit::rqf::IPIQ
            ));
            drain(&db, &ring, &mut seen);
        }
        assert_eq!(seen, [7], "the message ran exactly once");
        assert_eq!(reqflags.load(Ordering::Relaxed) & crate::crit::rqf::IPIQ, 0);
    });
}
