//! Connection-hash dispatch, DragonFly style: packets and connection
//! requests are classified, hashed to a CPU by their flow, and handed to that
//! CPU's protocol thread, so each connection's state lives on one CPU and
//! needs no lock.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;
pub mod netisr;
pub mod registry;
