//! The workloads of the lwkt demo that the benches share: the network
//! workload ([`net`]) runs the same code in `lwkt-demo` and in
//! `cargo bench --bench netdispatch`.

pub mod net;
