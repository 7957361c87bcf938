//! Shared pieces of the lwkt benches: pinning OS threads to cores and
//! running a closure on an LWKT thread of a fresh hosted machine.
//!
//! The benches use criterion's `iter_custom`: each sample boots a machine
//! (not timed), runs the measured loop inside an LWKT thread, and returns the
//! time that loop took, so machine boot never pollutes a number.

use std::time::Duration;

use criterion::Criterion;

use lwkt_core::Cur;

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

/// Boot an `ncpus` machine, run `f` as its main thread, return its result.
pub fn on_lwkt<R: Send>(ncpus: usize, f: impl FnOnce(&mut Cur) -> R + Send) -> R {
    lwkt_arch_hosted::Machine::new(ncpus)
        .expect("machine")
        .run(f)
}

/// Time `f` in an LWKT main thread.
pub fn time_on_lwkt(ncpus: usize, f: impl FnOnce(&mut Cur) + Send) -> Duration {
    on_lwkt(ncpus, |cur| {
        let t = std::time::Instant::now();
        f(cur);
        t.elapsed()
    })
}

/// The criterion settings every group uses: short warm-up, 2 s of samples.
pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}
