//! Attaching a backend's per-CPU block and a hardware interrupt
//! destination to a [`Cpu`], exactly once: the bare-metal backends'
//! `attach` (x86-64: the `PerCpu` block in GS and the local APIC id;
//! aarch64: the `PerCpu` block in `TPIDR_EL1` and the MPIDR affinity).
//!
//! Two halves name each other, for good:
//!
//! - the `Cpu` keeps the destination in [`Cpu::arch_word`]
//!   [`WORD_DEST`] and the block's address in [`WORD_BLOCK`] (0 until it
//!   is attached): [`Cpu::attached_dest`] is what a kick is sent to,
//!   [`Cpu::attached_block`] is how a backend finds its block from a
//!   `Cpu` (`Arch::set_timer`);
//! - the block keeps a [`CpuLink`]: the `Cpu` it drives and the same
//!   destination ([`CpuLink::cpu`] is what a backend's `current_cpu`
//!   returns).
//!
//! [`Cpu::attach_block`] checks both halves and stores both under one
//! lock, so that no `Cpu` is driven by two blocks (two CPUs would run one
//! scheduler) and no block drives two `Cpu`s. A backend that uses it
//! leaves words [`WORD_DEST`] and [`WORD_BLOCK`] to it.
//!
//! DragonFly: `mi_gdinit()`/`cpu_gdinit()`, which tie `struct globaldata`
//! to `struct mdglobaldata` and record the CPU's APIC id (`gd_apic_id`).

use core::ptr::NonNull;
// Plain `core` atomics, not `crate::sync`'s: attaching happens once per
// CPU before the machine runs (no loom model covers it), and a `CpuLink`
// must be made in a `const` (the backends' `PerCpu::new`).
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::cpu::Cpu;

/// [`Cpu::arch_word`] that [`Cpu::attach_block`] stores the hardware
/// interrupt destination in (x86-64: the local APIC id; aarch64: the
/// MPIDR affinity).
pub const WORD_DEST: usize = 0;
/// [`Cpu::arch_word`] that [`Cpu::attach_block`] stores the backend
/// block's address in; 0 while the `Cpu` is not attached.
pub const WORD_BLOCK: usize = 1;

/// The block's half of an attachment: the [`Cpu`] a backend's per-CPU
/// block drives and its interrupt destination, set once by
/// [`Cpu::attach_block`]. A backend puts one in its per-CPU block;
/// `#[repr(C)]`, two words (the `Cpu`, then the destination), so a block
/// read from assembly keeps its offsets.
///
/// ```
/// use lwkt_core::CpuLink;
/// static LINK: CpuLink = CpuLink::new();
/// assert!(LINK.cpu().is_none() && LINK.dest().is_none(), "not attached");
/// ```
#[derive(Debug)]
#[repr(C)]
pub struct CpuLink {
    /// The `Cpu`, once attached (null before). Stored last, with Release.
    cpu: AtomicPtr<Cpu>,
    /// The destination, stored before `cpu`.
    dest: AtomicUsize,
}

impl CpuLink {
    /// A link to no `Cpu`.
    pub const fn new() -> CpuLink {
        CpuLink {
            cpu: AtomicPtr::new(core::ptr::null_mut()),
            dest: AtomicUsize::new(0),
        }
    }

    /// The `Cpu` this block drives, once attached.
    pub fn cpu(&self) -> Option<&'static Cpu> {
        let p = self.cpu.load(Ordering::Acquire);
        // SAFETY: only `Cpu::attach_block` stores here, a `&'static Cpu`
        // (Release, which this Acquire pairs with).
        unsafe { p.as_ref() }
    }

    /// The interrupt destination recorded with the `Cpu`, once attached.
    pub fn dest(&self) -> Option<usize> {
        // Acquire in `cpu()`: the destination was stored before the `Cpu`.
        self.cpu().map(|_| self.dest.load(Ordering::Relaxed))
    }
}

impl Default for CpuLink {
    fn default() -> Self {
        CpuLink::new()
    }
}

/// Serialises [`Cpu::attach_block`] across CPUs: its two checks and its
/// stores are one step.
static ATTACH: AtomicBool = AtomicBool::new(false);

/// Holds [`ATTACH`]; released when dropped, so a refused attach (a panic)
/// leaves it free.
struct AttachLock;

impl AttachLock {
    fn take() -> AttachLock {
        while ATTACH
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        AttachLock
    }
}

impl Drop for AttachLock {
    fn drop(&mut self) {
        ATTACH.store(false, Ordering::Release);
    }
}

impl Cpu {
    /// Attach the backend's per-CPU block `block`, whose [`CpuLink`] is
    /// `link`, to this `Cpu`, with hardware interrupt destination `dest`:
    /// from now on `link` names this `Cpu` and `dest`, and this `Cpu`
    /// names `block` ([`attached_block`](Cpu::attached_block)) and `dest`
    /// ([`attached_dest`](Cpu::attached_dest)), for good. The backends'
    /// `attach` calls it after their own checks (the block is the one
    /// installed on the calling CPU, its interrupt controller is on).
    /// DragonFly: `mi_gdinit()`/`cpu_gdinit()`.
    ///
    /// Checked, with a panic before anything is stored: this `Cpu` has no
    /// block ([`WORD_BLOCK`] is 0), and `link` names no `Cpu`. Both checks
    /// and the stores are made under one global lock, so two CPUs
    /// attaching at once cannot both pass.
    ///
    /// # Safety
    /// [`set_arch_word`](Cpu::set_arch_word)'s: this `Cpu` belongs to a
    /// machine of the calling backend that has not started (its `kick`
    /// will send to `dest`, and it may read `block` back as a `B`). `link`
    /// is `block`'s own link (the one its `current_cpu` reads).
    ///
    /// # Panics
    /// If this `Cpu` or `link` is attached already (two CPUs could then
    /// drive one `Cpu`); nothing is changed then.
    ///
    /// ```
    /// use lwkt_core::{Cpu, CpuId, CpuLink};
    /// struct Block { link: CpuLink }
    /// static BLOCK: Block = Block { link: CpuLink::new() };
    /// let cpu: &'static Cpu = Box::leak(Box::new(Cpu::new(CpuId::new(0))));
    /// assert_eq!(cpu.attached_dest(), None);
    /// // SAFETY: `cpu` belongs to no machine; `BLOCK.link` is `BLOCK`'s.
    /// unsafe { cpu.attach_block(&BLOCK, &BLOCK.link, 7) };
    /// assert_eq!(cpu.attached_dest(), Some(7));
    /// assert!(core::ptr::eq(BLOCK.link.cpu().unwrap(), cpu));
    /// ```
    pub unsafe fn attach_block<B: Sync>(
        &'static self,
        block: &'static B,
        link: &CpuLink,
        dest: usize,
    ) {
        let _g = AttachLock::take();
        assert!(
            self.arch_word(WORD_BLOCK) == 0,
            "lwkt: Cpu {} is attached already: two CPUs would drive one Cpu",
            self.id().index()
        );
        if let Some(other) = link.cpu() {
            panic!(
                "lwkt: the per-CPU block given for Cpu {} is attached already, to Cpu {} \
                 (one block drives one Cpu)",
                self.id().index(),
                other.id().index()
            );
        }
        link.dest.store(dest, Ordering::Relaxed);
        // Release: a reader that sees the `Cpu` sees the destination.
        link.cpu
            .store(self as *const Cpu as *mut Cpu, Ordering::Release);
        // SAFETY: caller (a machine of this backend, not started); the
        // destination first, then (Release) the block that
        // `attached_dest` tests before it reads the destination. The
        // block is stored as a pointer: `attached_block` gets it back
        // with its provenance.
        unsafe {
            self.set_arch_word(WORD_DEST, dest);
            self.set_arch_word_ptr(WORD_BLOCK, (block as *const B).cast_mut().cast());
        }
    }

    /// The destination a kick to this `Cpu` goes to, or `None` while no
    /// CPU has [attached](Cpu::attach_block) it (it has not started: its
    /// idle loop looks at its rings when it does, so no kick is needed,
    /// and an interrupt sent to a CPU that may not have its block
    /// installed could make its entry read wild memory).
    pub fn attached_dest(&self) -> Option<usize> {
        if self.arch_word(WORD_BLOCK) == 0 {
            None
        } else {
            // Acquire in `arch_word`: stored before the block.
            Some(self.arch_word(WORD_DEST))
        }
    }

    /// The block [attached](Cpu::attach_block) to this `Cpu`, as a
    /// pointer to `B`, or `None` while none is. Reading through it is the
    /// caller's business: it is a `&'static B` only if `B` is the type
    /// the block was attached as (a backend knows: only it attaches its
    /// machine's `Cpu`s).
    pub fn attached_block<B>(&self) -> Option<NonNull<B>> {
        NonNull::new(self.arch_word_ptr(WORD_BLOCK).cast::<B>())
    }
}

// Not under loom: a `Cpu`'s atomics are loom's there, made only inside a
// model; attaching is set-up before a machine runs, which no model covers.
#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::CpuId;
    use std::boxed::Box;
    use std::string::String;

    struct Block {
        link: CpuLink,
    }

    fn panic_message(f: impl FnOnce()) -> String {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
        e.downcast_ref::<String>().cloned().unwrap_or_default()
    }

    #[test]
    fn a_cpu_and_a_block_are_attached_once() {
        static A: Block = Block {
            link: CpuLink::new(),
        };
        static B: Block = Block {
            link: CpuLink::new(),
        };
        let cpu: &'static Cpu = Box::leak(Box::new(Cpu::new(CpuId::new(1))));
        let other: &'static Cpu = Box::leak(Box::new(Cpu::new(CpuId::new(2))));
        assert_eq!(cpu.attached_dest(), None, "not attached: no kick");
        assert!(cpu.attached_block::<Block>().is_none());
        // SAFETY: `cpu` belongs to no machine; nothing reads its words but
        // this test; `A.link` is `A`'s.
        unsafe { cpu.attach_block(&A, &A.link, 5) };
        assert_eq!(cpu.attached_dest(), Some(5));
        assert_eq!(cpu.arch_word(WORD_DEST), 5);
        assert_eq!(cpu.attached_block::<Block>(), Some(NonNull::from(&A)));
        assert!(core::ptr::eq(A.link.cpu().unwrap(), cpu));
        assert_eq!(A.link.dest(), Some(5));

        // A second block for the same `Cpu` (two CPUs would drive it).
        let msg = panic_message(|| {
            // SAFETY: as above.
            unsafe { cpu.attach_block(&B, &B.link, 6) }
        });
        assert!(msg.contains("Cpu 1 is attached already"), "{msg}");
        assert!(B.link.cpu().is_none(), "the refused block stays unbound");
        assert_eq!(cpu.attached_dest(), Some(5), "the first binding stands");
        assert_eq!(cpu.attached_block::<Block>(), Some(NonNull::from(&A)));

        // The same block for a second `Cpu`.
        let msg = panic_message(|| {
            // SAFETY: as above.
            unsafe { other.attach_block(&A, &A.link, 7) }
        });
        assert!(msg.contains("attached already, to Cpu 1"), "{msg}");
        assert_eq!(other.attached_dest(), None, "the refused Cpu stays unbound");
        assert_eq!(A.link.dest(), Some(5));

        // The lock was released by the refusals: a fresh pair attaches.
        // SAFETY: as above.
        unsafe { other.attach_block(&B, &B.link, 8) };
        assert_eq!(other.attached_dest(), Some(8));
        assert!(core::ptr::eq(B.link.cpu().unwrap(), other));
    }
}
