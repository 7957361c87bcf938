//! Two threads on one virtual CPU yielding to each other `N` times (default
//! 1,000,000): a fixed workload for instruction counting, e.g.
//! `valgrind --tool=callgrind target/release/examples/switch_loop 1000000`.

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let switches = lwkt_arch_hosted::Machine::new(1)
        .unwrap()
        .pin(false)
        .run(move |cur| {
            let partner = cur
                .spawn_on(lwkt_core::CpuId::new(0), move |me| {
                    for _ in 0..n {
                        me.yield_now();
                    }
                })
                .unwrap();
            for _ in 0..n {
                cur.yield_now();
            }
            cur.join(&partner);
            cur.my_cpu().stats().switches
        });
    println!("{n} yields each by two threads: {switches} switches");
}
