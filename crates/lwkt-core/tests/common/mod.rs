//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use lwkt_test_support::{is_child, run_child, within_seconds};

/// Spawn the interrupt thread of line `irq` on CPU `cpu`, at
/// `Priority::INT_MED`: it registers the line, then runs `body`. Returns
/// once the line is registered (a raise from then on reaches it).
pub fn spawn_ithread(
    cur: &mut lwkt_core::Cur,
    cpu: u32,
    irq: usize,
    body: impl FnOnce(&mut lwkt_core::Cur) + Send + 'static,
) -> lwkt_core::ThreadHandle {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let ith = cur
        .builder()
        .cpu(lwkt_core::CpuId::new(cpu))
        .priority(lwkt_core::Priority::INT_MED)
        .name("ithread")
        .spawn(move |me| {
            me.register_interrupt(irq).unwrap();
            r.store(true, Ordering::Release);
            body(me);
        })
        .unwrap();
    while !ready.load(Ordering::Acquire) {
        cur.yield_now();
    }
    ith
}
