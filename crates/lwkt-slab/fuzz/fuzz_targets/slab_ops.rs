//! Arbitrary alloc/free/realloc/reclaim sequences across four CPUs, with
//! the slab's invariant checks and the reference model after every step.
//! `cargo +nightly fuzz run slab_ops` from `crates/lwkt-slab`.
#![no_main]

#[path = "../../tests/ops/mod.rs"]
mod ops;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ops::run(&ops::decode(data));
});
