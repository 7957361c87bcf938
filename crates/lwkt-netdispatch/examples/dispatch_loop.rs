//! Route one Ethernet/IPv4/TCP frame `N` times (default 1,000,000): a
//! fixed workload for instruction counting (`cargo xtask instr`), e.g.
//! `valgrind --tool=callgrind target/release/examples/dispatch_loop 100000`.

use std::hint::black_box;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    // 10.0.0.1:40000 -> 10.0.0.2:80, TCP SYN, no payload.
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    let d = lwkt_netdispatch::Dispatcher::new(4).unwrap();
    let mut cpus = 0usize;
    for _ in 0..n {
        cpus += d.route(black_box(&f)).cpu.unwrap();
    }
    println!("{n} frames routed, CPU sum {cpus}");
}
