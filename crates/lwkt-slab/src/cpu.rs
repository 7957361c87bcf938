//! What the slab needs from the kernel: the current CPU, inside a critical
//! section. A small trait, so a kernel with its own scheduler can use the
//! slab too.

/// The current CPU, held for the duration of a closure.
///
/// DragonFly: `mycpu` inside `crit_enter()` ... `crit_exit()`.
///
/// # Safety
/// `with_cpu` runs `f` with the index of the CPU it runs on, and for the
/// whole call nothing else uses that index with the same slab: no other
/// thread runs on that CPU, and an interrupt that could allocate is
/// deferred until `f` returns (a critical section), or the implementation
/// otherwise excludes other users of the index (a lock). Indices are below
/// the CPU count the slab was built with.
pub unsafe trait CpuContext {
    /// Run `f(cpu)` in a critical section on the current CPU.
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R;
}

// SAFETY: `MyCpu::crit` is a critical section on the CPU `MyCpu` names, and
// a `MyCpu` exists only in code running on that CPU; LWKT threads are not
// preempted by other threads, and IPIs are deferred inside it.
unsafe impl CpuContext for lwkt_core::MyCpu<'_> {
    #[inline(always)]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let cpu = self.id().index();
        self.crit(|| f(cpu))
    }
}

// SAFETY: as for `MyCpu` (a thread's current CPU, in its critical section;
// a thread does not change CPU inside one).
unsafe impl CpuContext for lwkt_core::Cur {
    #[inline(always)]
    fn with_cpu<R>(&self, f: impl FnOnce(usize) -> R) -> R {
        let _crit = self.crit();
        f(self.cpu_id().index())
    }
}
