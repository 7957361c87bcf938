//! More vCPUs than host cores (issue 17): such a machine is not pinned, so
//! the host balances its vCPUs over the cores; one that fits is pinned, a
//! vCPU per core.

use std::sync::{Arc, Mutex};

use lwkt_arch_hosted::Machine;
use lwkt_core::CpuId;

/// The cores the calling OS thread may run on.
fn affinity() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for the kernel to fill.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        let r = libc::sched_getaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(r, 0, "sched_getaffinity");
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn online() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).unwrap()
}

/// Each vCPU's affinity, seen from a thread running on it.
fn vcpu_affinities(n: usize) -> Vec<Vec<usize>> {
    let seen = Arc::new(Mutex::new(vec![Vec::new(); n]));
    Machine::new(n).unwrap().run(|cur| {
        let ts: Vec<_> = (0..n)
            .map(|c| {
                let seen = seen.clone();
                cur.spawn_on(CpuId::new(c as u32), move |_| {
                    seen.lock().unwrap()[c] = affinity();
                })
                .unwrap()
            })
            .collect();
        for t in &ts {
            cur.join(t);
        }
    });
    Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
}

#[test]
fn more_vcpus_than_cores_are_not_pinned() {
    let mine = affinity();
    let seen = vcpu_affinities(online() + 1);
    for (c, a) in seen.iter().enumerate() {
        assert_eq!(a, &mine, "vCPU {c} keeps the process's affinity");
    }
}

#[test]
fn vcpus_that_fit_get_a_core_each() {
    let mine = affinity();
    if mine.len() < online() {
        // A restricted host (a CPU set narrower than the online cores):
        // pinning to online cores may be refused there; nothing to check.
        return;
    }
    let n = online().min(4);
    let seen = vcpu_affinities(n);
    for (c, a) in seen.iter().enumerate() {
        assert_eq!(a, &vec![c], "vCPU {c} pinned to core {c}");
    }
}
