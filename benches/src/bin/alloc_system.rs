//! The allocator workloads (`lwkt_benches::alloc_workloads`) on the C
//! library's malloc: `alloc_system larson|churn|xmalloc [threads]`.

#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;

fn main() {
    lwkt_benches::alloc_workloads::main();
}
