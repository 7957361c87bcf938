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

/// An idle vCPU's timed sleep ends by its own kernel timer (the signal
/// handler posts the deadline), not by the watchdog thread; a sleep on a
/// vCPU kept busy by another thread is delivered the same way.
#[test]
fn timed_sleeps_are_delivered_by_the_vcpus_kernel_timer() {
    let ((), report) = lwkt_arch_hosted::Machine::new(1)
        .unwrap()
        .run_with_report(|cur| {
            for _ in 0..5 {
                let t = std::time::Instant::now();
                cur.sleep_for(std::time::Duration::from_millis(1));
                assert!(t.elapsed() >= std::time::Duration::from_millis(1));
            }
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let d2 = done.clone();
            let busy = cur
                .spawn_on(lwkt_core::CpuId::new(0), move |me| {
                    while !d2.load(std::sync::atomic::Ordering::Acquire) {
                        me.yield_now();
                    }
                })
                .unwrap();
            cur.sleep_for(std::time::Duration::from_millis(2));
            done.store(true, std::sync::atomic::Ordering::Release);
            cur.join(&busy);
        });
    // At least the idle ones: the park's own timeout is only a backstop,
    // later than the kernel timer by the host's timer slack.
    assert!(
        report.timer_signals[0] >= 3,
        "timer signals: {:?}",
        report.timer_signals
    );
}
