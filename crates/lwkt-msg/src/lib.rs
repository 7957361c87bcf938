//! DragonFly BSD's LWKT ports and messages: a request is a message put on a
//! port; its target replies; the originator waits, or does not. Across CPUs
//! a put or a reply travels by the IPI queues to the CPU that owns the port,
//! so a thread port needs no lock.
//!
//! | paper / DragonFly | here |
//! |---|---|
//! | `lwkt_initmsg(msg, rport, flags)` | [`Msg::new`], [`Msg::with_reply_port`], [`Msg::abortable`] |
//! | `lwkt_sendmsg(port, msg)` | [`Port::sendmsg`] |
//! | `lwkt_domsg(port, msg)` | [`Port::domsg`] |
//! | `lwkt_replymsg(msg, error)` | [`MsgHandle::reply`] |
//! | `lwkt_forwardmsg(port, msg)` | [`MsgHandle::forward`] |
//! | `lwkt_abortmsg(msg)` | [`Msg::abort`] |
//! | `lwkt_getport(port)` | [`Port::getport`] |
//! | `lwkt_waitport(port)` | [`Port::waitport`]; with a `timo`: [`Port::waitport_timeout`] |
//! | `lwkt_waitmsg(msg)` | [`Msg::wait`]; with a `timo`: [`Msg::wait_timeout`] |
//! | `lwkt_domsg` timing out: `lwkt_waitmsg` + `lwkt_abortmsg` + wait | [`Port::domsg_timeout`] |
//! | `lwkt_checkmsg(msg)` | [`Msg::is_done`] |
//! | thread / spin / put-only / reply-only port | [`Port::thread`], [`Port::spin`], [`Port::put_only`], [`Port::reply_only`] |
//! | `lwkt_port_t` handed around | `&'static Port`, or a counted [`PortRef`]; [`serve_on`] starts a server with its port |
//! | (async Rust) | [`Port::call`] → [`ReplyFuture`]; [`block_on`], [`block_on_timeout`] |
//!
//! # Ownership, and what the types guarantee
//!
//! A message is intrusive: it lives in the originator's memory, pinned, and
//! ports link it in place, so sending allocates nothing. The originator
//! owns it until it sends it, the target from then until its reply, the
//! originator again after. The API keeps that safe:
//!
//! - sending takes `Pin<&mut Msg<T>>`, so the message cannot move; the body
//!   is reachable only through [`Msg::body`]/[`Msg::body_mut`], which panic
//!   while the message is in flight;
//! - the target receives a [`MsgHandle`], the only way to the body on its
//!   side; [`reply`](MsgHandle::reply) and [`forward`](MsgHandle::forward)
//!   consume it, and dropping it unreplied panics;
//! - a message dropped while in flight aborts the process (the target
//!   still points at it), and sending a message that is in flight panics;
//! - a port is `&'static`, or counted ([`PortRef`]): puts and replies may
//!   still be riding an IPI to a port after the sender has returned, so
//!   each such IPI, and each message naming a counted reply port, holds
//!   the port.
//!
//! # The flags
//!
//! The state lives in one atomic word per message (DragonFly `ms_flags`):
//! `DONE` (the originator owns it), `REPLY` (replied), `QUEUED` (on a
//! port's queue), `SYNC` (the reply completes it in place and wakes the
//! waiter), `INTRANSIT` (riding an IPI; debug builds), `WAITING` (a thread
//! sleeps on it), `ABORTABLE`, `ABORT_REQUESTED`, `WAKER` (a future awaits
//! it). The transitions are drawn in the source of `header.rs` and checked
//! by the loom models.
//!
//! ```
//! use core::pin::pin;
//! use lwkt_core::CpuId;
//! use lwkt_msg::{Incoming, Msg, Port, PortRef};
//!
//! lwkt_arch_hosted::Machine::new(2).unwrap().run(|cur| {
//!     // Our own port takes the replies of our asynchronous sends.
//!     let replies = PortRef::thread(cur);
//!     static WORK: Port<u64> = Port::spin();
//!     let worker = cur.spawn_on(CpuId::new(1), |me| {
//!         for _ in 0..2 {
//!             let mut m = WORK.waitport(me).request().unwrap();
//!             *m *= 10;
//!             m.reply(me.my_cpu(), Ok(()));
//!         }
//!     }).unwrap();
//!     let mut a = pin!(Msg::with_reply_port(&replies, 1));
//!     let mut b = pin!(Msg::with_reply_port(&replies, 2));
//!     WORK.sendmsg(cur.my_cpu(), a.as_mut());
//!     WORK.sendmsg(cur.my_cpu(), b.as_mut());
//!     for _ in 0..2 {
//!         let Incoming::Reply(r) = replies.waitport(cur) else { unreachable!() };
//!         assert!(r.is(&a) || r.is(&b));
//!     }
//!     assert_eq!((*a.body(), *b.body()), (10, 20));
//!     cur.join(&worker);
//!     replies.close(cur);
//! });
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(test)]
extern crate std;

mod error;
#[cfg(feature = "alloc")]
mod executor;
mod future;
mod header;
mod msg;
mod port;
mod port_ref;
mod queue;
mod spinlock;
mod sync;

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod unit_tests;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use error::MsgError;
#[cfg(feature = "alloc")]
pub use executor::{block_on, block_on_timeout};
pub use future::ReplyFuture;
/// What a timed wait returns when its time ran out (lwkt-core's, here
/// for convenience). DragonFly: `EWOULDBLOCK`.
pub use lwkt_core::TimedOut;
pub use msg::{Incoming, Msg, MsgFlags, MsgHandle, Replied};
pub use port::{Port, PutFn, ReplyFn, DOMSG_POLL_CYCLES};
pub use port_ref::AsPort;
#[cfg(feature = "alloc")]
pub use port_ref::{serve, serve_on, PortRef};
