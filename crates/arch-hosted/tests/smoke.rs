//! Smallest end-to-end check: boot, spawn across CPUs, join, shut down.
use lwkt_core::CpuId;
#[test]
fn boots_and_spawns() {
    let (v, rep) = lwkt_arch_hosted::Machine::new(2)
        .unwrap()
        .run_with_report(|cur| {
            let h = cur
                .spawn_on(CpuId::new(1), |me| {
                    assert_eq!(lwkt_arch_hosted::current_vcpu(), Some(CpuId::new(1)));
                    me.yield_now();
                })
                .unwrap();
            let h2 = cur
                .spawn_on(CpuId::new(0), |me| {
                    me.yield_now();
                })
                .unwrap();
            cur.yield_now();
            cur.join(&h);
            cur.join(&h2);
            42
        });
    println!("{rep}");
    assert_eq!(v, 42);
    assert_eq!(rep.leaked_threads, 0);
}
