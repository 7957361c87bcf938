//! The workloads of the lwkt demo that the benches share: the network
//! workload ([`net`]) runs the same code in `lwkt-demo` and in
//! `cargo bench --bench netdispatch`.

pub mod net;

/// The root README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
