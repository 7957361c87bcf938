//! The allocator workloads (`lwkt_benches::alloc_workloads`) on
//! lwkt-slab's `GlobalSlab`: `alloc_slab larson|churn|xmalloc [threads]`.

#[global_allocator]
static ALLOC: lwkt_slab::GlobalSlab = lwkt_slab::GlobalSlab::new(1 << 30, 8).thread_cached(&ALLOC);

fn main() {
    lwkt_benches::alloc_workloads::main();
}
