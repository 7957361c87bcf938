//! DragonFly BSD's serializing tokens, `#![no_std]`, atomics only.
//!
//! A token is a lock with one unusual rule: **a thread holds its tokens only
//! while it runs.** When it blocks, its scheduler releases all of them; before
//! it runs again, the scheduler re-acquires all of them, all or nothing. So
//! tokens never deadlock, whatever the order they are taken in, and a thread
//! sleeping while it "holds" a token does not stop anyone else. The price is
//! that token-protected state may change across every blocking call.
//!
//! # The Rust API makes that rule a compile-time property
//!
//! Tokens are held for the length of a closure ([`with_token`],
//! [`with_token_shared`], [`try_with_token`]), which receives the thread's
//! handle `&mut C` and a [`Held`] proof. Protected data lives in a
//! [`TokenCell`]; reaching it borrows the handle (`&` for reading, `&mut`
//! for writing), and every blocking call takes the handle `&mut`. So a
//! reference into protected data cannot be kept across a blocking point: the
//! borrow checker refuses (see the compile-fail examples on [`TokenCell`]).
//!
//! # The classic token pattern
//!
//! Take the token, look something up, block, and, having been given the
//! token back, look again, because the data may have changed meanwhile:
//!
//! ```
//! use lwkt_token::{with_token, SpinThread, Token, TokenCell, TokenThread};
//!
//! static CACHE_TOKEN: Token = Token::new("cache");
//! static CACHE: TokenCell<'static, [Option<u32>; 4]> = TokenCell::new(&CACHE_TOKEN, [None; 4]);
//!
//! fn lookup_or_load<C: TokenThread>(cur: &mut C, key: usize, load: impl Fn(&mut C) -> u32) -> u32 {
//!     with_token(cur, &CACHE_TOKEN, |cur, held| {
//!         if let Some(v) = CACHE.get(held, cur)[key] {
//!             return v; // hit
//!         }
//!         // Miss: loading blocks, so the token is released meanwhile...
//!         let v = load(cur);
//!         // ...and someone may have filled the slot: look again.
//!         let slot = &mut CACHE.get_mut(held, cur)[key];
//!         *slot.get_or_insert(v)
//!     })
//! }
//!
//! let mut me = SpinThread::new();
//! assert_eq!(lookup_or_load(&mut me, 1, |_| 7), 7);
//! assert_eq!(lookup_or_load(&mut me, 1, |_| 9), 7);
//! ```
//!
//! # Pieces
//!
//! - [`Token`]: the state machine (exclusive, shared, try, release).
//! - [`TokenStack`]: a thread's references, bounded by [`MAX_TOKENS`];
//!   what a scheduler releases and re-acquires (all or nothing).
//! - [`TokenThread`]: the bridge to a scheduler; lwkt-core's `Cur`
//!   implements it, [`SpinThread`] is one for code with no scheduler.
//! - [`pool_token`]: type-stable tokens looked up by address.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

mod held;
#[cfg(not(loom))]
mod pool;
mod spin;
mod stack;
mod sync;
mod token;

pub use held::{
    try_with_token, with_token, with_token_shared, Exclusive, Held, Shared, TokenCell, TokenThread,
};
#[cfg(not(loom))]
pub use pool::{pool_index, pool_token, POOL_SIZE};
pub use spin::SpinThread;
pub use stack::{Mode, OwnerId, Pushed, TokenError, TokenStack, MAX_TOKENS, SORTED_AFTER};
pub use token::Token;

#[cfg(feature = "bench-counters")]
pub mod sync_events;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Print the message and abort the process: for a state that cannot be put
/// right and must not unwind (unwinding would let a caller free a token a
/// thread's stack still points at). The panic starts the message; a panic
/// while it unwinds aborts (`no_std`: there is no `process::abort`).
#[cold]
#[inline(never)]
pub(crate) fn abort(msg: core::fmt::Arguments<'_>) -> ! {
    struct Abort;
    impl Drop for Abort {
        fn drop(&mut self) {
            panic!("lwkt: aborting");
        }
    }
    let _abort = Abort;
    panic!("{msg}");
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom), not(miri)))]
mod model_tests;
#[cfg(all(test, not(loom)))]
mod unit_tests;
