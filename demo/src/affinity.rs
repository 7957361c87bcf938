//! Pinning OS threads to host cores (shared by the demo's latency
//! measurement and the benches).

/// Pin the calling OS thread to host core `core` (by explicit id: after a
/// thread pins itself, `sched_getaffinity` in its children sees one core).
pub fn pin(core: usize) {
    set_affinity(core..core + 1);
}

/// Let the calling OS thread run on every core again.
pub fn unpin() {
    set_affinity(0..cores());
}

fn set_affinity(cores: std::ops::Range<usize>) {
    // SAFETY: a zeroed cpu_set_t is empty; we add the cores and apply the
    // set to the calling thread (failure leaves its affinity unchanged).
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        for c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Host cores online. Not `available_parallelism`: that reads the calling
/// thread's affinity, which is one core once a bench has pinned it.
pub fn cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}
