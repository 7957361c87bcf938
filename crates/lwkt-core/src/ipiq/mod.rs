//! IPI message queues: one SPSC ring per (source, target) CPU pair carrying
//! function-plus-arguments messages, and the interlock that sends a
//! hardware IPI only when the target needs one.
//!
//! DragonFly: `lwkt_send_ipiq3()`, `lwkt_process_ipiq()`, `gd_ipimask`,
//! `gd_npoll`, `lwkt_ipiq`.
//!
//! Sending: write the ring (one Release store per batch, whatever its
//! length: see [`Ring`]), make sure the source's bit is
//! set in the target's `ipimask`, and kick the target only if its `npoll`
//! interlock was clear. Both checks first *read* the shared word and write
//! it only when it must change, after a full fence, so a stream of messages
//! to a busy target costs a ring write and two reads of mostly-unchanged
//! lines, and one kick per batch.
//!
//! Receiving: clear `npoll` (so later senders kick again), then for every
//! source in `ipimask` drain its ring, clear the bit, and re-check the ring
//! (a sender may have seen the bit still set and skipped setting it). A
//! drain reads one sequence word per published batch and frees the batch's
//! slots with one store once it has taken the batch's last message.
//!
//! An idle CPU first watches its rings for a while with `npoll` set to
//! `WATCHING`: senders then only write the ring (no `ipimask` bit, no
//! kick), and the watcher reads the rings' indices. It clears `npoll` and
//! looks at every ring once more before it switches to a thread or waits
//! for an interrupt.
//!
//! A full ring makes the sender drain its own incoming rings while it waits,
//! so two CPUs flooding each other cannot deadlock.

mod ring;

pub use ring::{Consumer, NativeIndex, Producer, Ring, RingIndex};

use crate::cpu::{Cpu, CpuId, CpuMask};
use crate::cpumask::AtomicCpuMask;
use crate::sync::{fence_seqcst, AtomicU32, Ordering};
use crate::MyCpu;

/// Entries per IPI ring (DragonFly `MAXCPUFIFO`).
pub const IPIQ_SIZE: usize = 256;

/// A function run on the target CPU, in interrupt context (inside a
/// critical section, not allowed to block), with two argument words.
///
/// DragonFly: `ipifunc3_t`.
pub type IpiFn = fn(MyCpu<'_>, usize, usize);

/// One IPI message.
#[derive(Clone, Copy)]
pub struct IpiMsg {
    /// What to run.
    pub func: IpiFn,
    /// First argument.
    pub arg1: usize,
    /// Second argument.
    pub arg2: usize,
}

impl core::fmt::Debug for IpiMsg {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IpiMsg")
            .field("func", &(self.func as *const ()))
            .field("arg1", &self.arg1)
            .field("arg2", &self.arg2)
            .finish()
    }
}

/// The ring type between two CPUs.
pub type IpiRing = Ring<IpiMsg, IPIQ_SIZE>;

/// Errors from sending an IPI message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiError {
    /// The target CPU does not exist.
    NoSuchCpu {
        /// The CPU asked for.
        cpu: CpuId,
        /// How many CPUs the machine has.
        ncpus: usize,
    },
}

impl core::fmt::Display for IpiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IpiError::NoSuchCpu { cpu, ncpus } => {
                write!(
                    f,
                    "lwkt: no CPU {} on this machine (CPUs 0..{ncpus})",
                    cpu.get()
                )
            }
        }
    }
}

/// The target-side interlock words: who has queued work here, and whether a
/// kick is outstanding. Split out of [`Cpu`] so the loom model runs exactly
/// this code.
pub(crate) struct Doorbell<'a> {
    pub(crate) ipimask: &'a AtomicCpuMask,
    pub(crate) npoll: &'a AtomicU32,
}

/// `npoll` values.
pub(crate) mod npoll {
    /// The target looks only when kicked: the next sender kicks.
    pub(crate) const CLEAR: u32 = 0;
    /// A kick is on its way; the target will drain every ring marked in
    /// `ipimask`.
    pub(crate) const KICKED: u32 = 1;
    /// The target watches every ring itself (its idle loop, a thread in
    /// `watch_until`, and every final `crit_exit` of its threads): senders
    /// neither mark `ipimask` nor kick.
    pub(crate) const WATCHING: u32 = 2;
}

/// What [`Doorbell::settle_for_wait`] decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settled {
    /// Nothing can be queued without a kick on its way: wait.
    pub(crate) wait: bool,
    /// A kick was outstanding and is answered (for the CPU's counters).
    pub(crate) answered: bool,
}

impl Doorbell<'_> {
    /// Sender, after publishing ring entries: unless the target watches its
    /// rings, mark source `src` and decide whether the target needs a kick
    /// (true) or one is already pending.
    #[inline]
    pub(crate) fn ring(&self, src: CpuId) -> bool {
        // Orders the ring publication before the reads below; pairs with the
        // receiver's RMWs on `npoll` and `ipimask` before it re-reads rings.
        fence_seqcst();
        let n = self.npoll.load(Ordering::SeqCst);
        if n == npoll::WATCHING {
            // It will see the ring itself (or, if the watch ends now, in
            // the look that follows `end_watch`): nothing to write on
            // its lines.
            return false;
        }
        if !self.ipimask.contains(src, Ordering::SeqCst) {
            self.ipimask.set(src, Ordering::SeqCst);
        }
        // A failed exchange means another sender kicked, or the target
        // began watching: either way it will look.
        n == npoll::CLEAR
            && self
                .npoll
                .compare_exchange(
                    npoll::CLEAR,
                    npoll::KICKED,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
    }

    /// Receiver, before scanning: later senders must kick again. Returns
    /// whether a kick was outstanding (now answered).
    #[inline]
    pub(crate) fn begin_poll(&self) -> bool {
        self.npoll.load(Ordering::Relaxed) != 0 && self.npoll.swap(0, Ordering::SeqCst) != 0
    }

    /// Receiver: watch every ring from now on, so senders neither mark
    /// `ipimask` nor kick. Draining does not clear the watch.
    #[inline]
    pub(crate) fn begin_watch(&self) {
        self.npoll.swap(npoll::WATCHING, Ordering::SeqCst);
    }

    /// Receiver: stop watching; from now on senders mark and kick. The
    /// caller must look at every ring once more: a sender that saw the watch
    /// wrote nothing, and either it sees `npoll` cleared here or we see its
    /// entry (its fence and our RMW order both sides).
    #[inline]
    pub(crate) fn end_watch(&self) {
        self.npoll.swap(npoll::CLEAR, Ordering::SeqCst);
        // Pairs with the sender's fence: the ring reads that follow see
        // every entry whose sender saw `WATCHING` (loom finds the lost
        // message without it).
        fence_seqcst();
    }

    /// Receiver, its idle loop with nothing to run, about to wait for a
    /// kick. If it was watching, end the watch and run `drain_all` (what
    /// senders queued unmarked meanwhile; it returns whether that made work
    /// to do). Then clear the kick interlock, so that every sender from now
    /// on kicks, and look once more with `pending` (the CPU's
    /// `has_pending`). Without the clearing, a kick whose message already
    /// ran (for one, set just after the watch ended and run by its drain)
    /// leaves `npoll` set; its signal may land after the wait began, and
    /// later senders, seeing `npoll` set, never kick again.
    pub(crate) fn settle_for_wait(
        &self,
        watched: bool,
        drain_all: impl FnOnce() -> bool,
        pending: impl FnOnce() -> bool,
    ) -> Settled {
        if watched {
            self.end_watch();
            if drain_all() {
                return Settled {
                    wait: false,
                    answered: false,
                };
            }
        }
        let answered = self.begin_poll();
        Settled {
            wait: !pending(),
            answered,
        }
    }

    /// Receiver: sources that have queued work.
    #[inline]
    pub(crate) fn pending(&self) -> CpuMask {
        self.ipimask.load(Ordering::Acquire)
    }

    /// Receiver, after draining `src`'s ring: clear its bit; the caller must
    /// then re-check the ring and call [`rearm`](Self::rearm) if it is not empty.
    #[inline]
    pub(crate) fn drained(&self, src: CpuId) {
        self.ipimask.clear(src, Ordering::SeqCst);
        // Pairs with the fence in `ring`: either the sender saw the bit
        // cleared (and sets it again), or our re-check sees its entry.
        fence_seqcst();
    }

    /// Receiver: `src`'s ring refilled after `drained`.
    #[inline]
    pub(crate) fn rearm(&self, src: CpuId) {
        self.ipimask.set(src, Ordering::SeqCst);
    }
}

impl Cpu {
    pub(crate) fn doorbell(&self) -> Doorbell<'_> {
        Doorbell {
            ipimask: &self.ipimask,
            npoll: &self.npoll,
        }
    }
}

/// Queue `msgs` from `gd` to `target` and kick it if needed. With
/// `gd == target` the functions run at once.
///
/// # Safety
/// Runs on `gd` inside a critical section (the ring's single-producer rule).
pub(crate) unsafe fn send(gd: &Cpu, target: CpuId, msgs: &[IpiMsg]) -> Result<(), IpiError> {
    let m = gd.machine();
    let Some(tgd) = m.cpu(target) else {
        return Err(IpiError::NoSuchCpu {
            cpu: target,
            ncpus: m.ncpus,
        });
    };
    if target == gd.id() {
        for msg in msgs {
            crate::abort_on_unwind("an IPI function", || {
                (msg.func)(MyCpu::new(gd), msg.arg1, msg.arg2)
            });
        }
        return Ok(());
    }
    let ring = m.ring(gd.id(), target);
    let mut rest = msgs;
    let mut spins = 0u32;
    while !rest.is_empty() {
        // SAFETY: only code on `gd` in a critical section pushes to this ring.
        let n = unsafe { ring.push_batch(rest) };
        rest = &rest[n..];
        if n > 0 {
            gd.stats.ipis_sent.add(n as u64);
            announce(gd, tgd);
        }
        if !rest.is_empty() {
            // Full: let the target see what we queued, and drain our own
            // incoming rings meanwhile; the target may be waiting on us.
            gd.stats.ring_full_waits.add(1);
            if gd.async_entry.get() {
                // Inside a signal-safe interrupt: only lwkt's own functions
                // may run here; the rest wait for the next full drain.
                // SAFETY: on `gd` in a critical section (caller).
                if unsafe { process_own(gd) } {
                    gd.reqflags
                        .fetch_or(crate::crit::rqf::IPIQ, Ordering::Relaxed);
                }
            } else {
                // SAFETY: on `gd` in a critical section (caller).
                unsafe { process(gd) };
            }
            m.arch.pause(spins);
            spins = spins.wrapping_add(1);
        }
    }
    Ok(())
}

#[inline]
fn announce(gd: &Cpu, tgd: &Cpu) {
    if tgd.doorbell().ring(gd.id()) {
        gd.stats.kicks_sent.add(1);
        // SAFETY: `tgd` is a CPU of the running machine `gd` belongs to,
        // bound on its backend.
        unsafe { gd.machine().arch.kick(tgd) };
    } else {
        gd.stats.kicks_avoided.add(1);
    }
}

/// Run every queued message for `gd` (DragonFly `lwkt_process_ipiq`).
///
/// # Safety
/// Runs on `gd` inside a critical section (the rings' single-consumer rule).
pub(crate) unsafe fn process(gd: &Cpu) {
    // SAFETY: forwarded.
    unsafe { process_with(gd, gd.watching.get()) }
}

/// [`process`], looking at every ring (`all`) or only the marked ones.
/// While the CPU watches, and once right after, senders mark nothing.
///
/// # Safety
/// As for [`process`].
pub(crate) unsafe fn process_with(gd: &Cpu, all: bool) {
    // SAFETY: forwarded.
    unsafe { drain::<false>(gd, all) };
}

/// Run the queued messages for `gd` that are lwkt-core's own
/// ([`crate::schedule::is_own_ipi`]), oldest first, stopping at each ring's
/// first other entry, which waits with its source still marked for the
/// next full [`process`]. Returns whether any waits. For a backend whose
/// interrupt can land anywhere in the host's code (a signal handler): the
/// user's IPI functions may allocate or lock, which the interrupted code
/// may be doing.
///
/// # Safety
/// As for [`process`].
pub(crate) unsafe fn process_own(gd: &Cpu) -> bool {
    // SAFETY: forwarded.
    unsafe { drain::<true>(gd, gd.watching.get()) }
}

/// How many messages a drain runs between two updates of the CPU's
/// `ipis_received` counter (the hosted watchdog reads it to see progress).
const STATS_EVERY: u64 = 64;

/// [`process_with`], or [`process_own`] with `OWN_ONLY`. Returns whether
/// an entry was left queued.
///
/// # Safety
/// As for [`process`].
#[inline(always)]
unsafe fn drain<const OWN_ONLY: bool>(gd: &Cpu, all: bool) -> bool {
    let db = gd.doorbell();
    if !gd.watching.get() && db.begin_poll() {
        gd.stats.kicks_answered.add(1);
    }
    let marked = db.pending();
    let mask = if all {
        gd.machine().sources_of(gd.id())
    } else {
        marked
    };
    if mask.is_empty() {
        return false;
    }
    let m = gd.machine();
    let mut left = false;
    gd.processing_ipiq.set(gd.processing_ipiq.get() + 1);
    gd.intr_nesting.set(gd.intr_nesting.get() + 1);
    for src in mask.iter() {
        let ring = m.ring(src, gd.id());
        loop {
            // Counted here and added every `STATS_EVERY` messages and at the
            // end of the pass: one counter store per batch, not per message.
            let mut ran = 0u64;
            // SAFETY: only code on `gd` in a critical section pops this ring.
            while let Some(msg) = unsafe {
                if OWN_ONLY {
                    ring.pop_if(|msg| crate::schedule::is_own_ipi(msg.func))
                } else {
                    ring.pop()
                }
            } {
                ran += 1;
                if ran == STATS_EVERY {
                    gd.stats.ipis_received.add(ran);
                    ran = 0;
                }
                crate::abort_on_unwind("an IPI function", || {
                    (msg.func)(MyCpu::new(gd), msg.arg1, msg.arg2)
                });
            }
            if ran != 0 {
                gd.stats.ipis_received.add(ran);
            }
            if OWN_ONLY && !ring.is_empty() {
                // A user's function heads the ring: it and what follows
                // wait, the source still marked (or watched).
                left = true;
                break;
            }
            if !marked.contains(src) {
                // Unmarked (watched): the watch looks again by itself.
                break;
            }
            db.drained(src);
            if ring.is_empty() {
                break;
            }
            db.rearm(src);
        }
    }
    gd.intr_nesting.set(gd.intr_nesting.get() - 1);
    gd.processing_ipiq.set(gd.processing_ipiq.get() - 1);
    left
}

#[cfg(all(test, loom))]
mod loom_tests;
