//! Connection-hash dispatch, DragonFly style: packets and connection
//! requests are classified, hashed to a CPU by their flow, and handed to that
//! CPU's protocol thread, so each connection's state lives on one CPU and
//! needs no lock.
//!
//! - [`classify`]: raw Ethernet frames to [`classify::Class`] (a TCP/UDP
//!   [`Flow`], a fragment, something without a flow, or malformed by
//!   kind), never trusting the bytes; [`classify::Counters`] counts them.
//! - [`rss`]: the Toeplitz hash (`toeplitz_hash(key, input)`, bit-exact
//!   with the RSS verification suite), the symmetric default key, the
//!   indirection table, and the paper's legacy XOR hash.
//! - [`Dispatcher`]: frame or flow to CPU.
//! - [`registry`]: protocols register one port per CPU and a dispatch
//!   function; [`netisr`]: per-CPU protocol threads and packet batches.
//!
//! ```
//! use lwkt_netdispatch::{classify::Class, Dispatcher, Flow};
//!
//! // An Ethernet/IPv4/UDP frame, 10.0.0.1:5000 -> 10.0.0.2:53.
//! let mut f = vec![0u8; 12];
//! f.extend_from_slice(&[0x08, 0x00]);
//! f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
//! f.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
//!
//! let d = Dispatcher::new(4).unwrap();
//! let r = d.route(&f);
//! let flow = Flow::udp([10, 0, 0, 1].into(), 5000, [10, 0, 0, 2].into(), 53);
//! assert_eq!(r.class, Class::Flow(flow));
//! // The reply and any user request on this connection go to the same CPU.
//! assert_eq!(r.cpu, Some(d.cpu_of_flow(&flow.reversed())));
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod classify;
mod dispatch;
mod flow;
pub mod netisr;
pub mod registry;
pub mod rss;

pub use dispatch::{Dispatcher, Routed, MAX_DISPATCH_CPUS};
pub use flow::{Flow, L4};
pub use registry::DispatchError;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
