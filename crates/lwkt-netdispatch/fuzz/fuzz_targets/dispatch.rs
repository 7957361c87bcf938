//! Arbitrary bytes as an Ethernet frame through classification and
//! dispatch. `cargo +nightly fuzz run dispatch` from
//! `crates/lwkt-netdispatch`.
#![no_main]

#[path = "../../tests/check/mod.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check::run(data);
});
