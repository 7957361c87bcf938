//! Pool tokens: a fixed array of tokens chosen by hashing an address, a
//! type-stable lock for objects that may be freed.
//!
//! DragonFly: `lwkt_token_pool_lookup()`, `lwkt_getpooltoken()`.

use crossbeam_utils::CachePadded;

use crate::token::Token;

/// Tokens in the pool (DragonFly has 16384; 1024 cache-padded tokens are
/// 128 KiB here).
pub const POOL_SIZE: usize = 1024;

static POOL: [CachePadded<Token>; POOL_SIZE] =
    [const { CachePadded::new(Token::new("pool")) }; POOL_SIZE];

/// The pool token for the object at `addr`: always the same token for the
/// same address. Two addresses may share a token (taking both is fine:
/// the second nests).
///
/// ```
/// let x = 5u64;
/// let a = lwkt_token::pool_token(&x as *const u64 as usize);
/// let b = lwkt_token::pool_token(&x as *const u64 as usize);
/// assert!(core::ptr::eq(a, b));
/// ```
pub fn pool_token(addr: usize) -> &'static Token {
    &POOL[pool_index(addr)]
}

/// The pool slot for `addr`: Fibonacci hashing (multiply by 2^64/phi, keep
/// the top bits). DragonFly hashes two shifted ranges of the address modulo
/// large primes; on small heap objects that keeps the always-zero low bits
/// and used only 383 of 1024 slots for 1000 consecutive 16-byte boxes here,
/// where the multiplicative hash spreads them (see the lwkt-core token tests).
pub fn pool_index(addr: usize) -> usize {
    const SHIFT: u32 = u64::BITS - POOL_SIZE.trailing_zeros();
    ((addr as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> SHIFT) as usize
}
