//! The workloads of the lwkt demo that the benches share: the network
//! workload ([`net`]) runs the same code in `lwkt-demo` and in
//! `cargo bench --bench netdispatch`; the interrupt latency ([`latency`])
//! in `lwkt-demo` and `cargo bench --bench time`.

pub mod affinity;
pub mod latency;
pub mod net;

/// The root README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// `docs/porting.md`'s examples, compiled (and, where they need no ring 0,
/// run) as doctests.
#[doc = include_str!("../../docs/porting.md")]
#[cfg(doctest)]
pub struct PortingGuideDoctests;
