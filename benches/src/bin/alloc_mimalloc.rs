//! The allocator workloads (`lwkt_benches::alloc_workloads`) on mimalloc:
//! `alloc_mimalloc larson|churn|xmalloc [threads]`.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    lwkt_benches::alloc_workloads::main();
}
