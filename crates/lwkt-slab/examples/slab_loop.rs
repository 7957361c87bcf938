//! A tight local alloc+free loop on one LWKT thread, for instruction
//! counts: `valgrind --tool=callgrind target/release/examples/slab_loop N`
//! for two values of N; the difference divided by the difference in N is
//! the cost of one alloc+free pair (64 bytes, or the second argument). Without valgrind it prints the
//! time per pair.

use core::alloc::Layout;
use std::time::Instant;

use lwkt_slab::{Flags, HostedPages, MallocType, Slab};

static M_LOOP: MallocType = MallocType::new("loop");
static SLAB: Slab<HostedPages> = Slab::new(HostedPages::new(16 << 20), 1);

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let size: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let ns = lwkt_arch_hosted::Machine::new(1).unwrap().run(move |cur| {
        let l = Layout::from_size_align(std::hint::black_box(size), 8).unwrap();
        let t = Instant::now();
        for _ in 0..n {
            let p = SLAB.alloc(cur, l, &M_LOOP, Flags::NONE).unwrap();
            let p = std::hint::black_box(p);
            // SAFETY: allocated just above with `l`.
            unsafe { SLAB.free(cur, p, l, &M_LOOP) };
        }
        t.elapsed().as_nanos() as f64 / n as f64
    });
    println!("{n} alloc+free pairs of {size} bytes: {ns:.2} ns per pair");
}
