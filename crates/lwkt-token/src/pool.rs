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

/// The pool slot for `addr`: two hashes of different bit ranges of the
/// address, each modulo a large prime, exclusive-or'ed (DragonFly's scheme).
pub fn pool_index(addr: usize) -> usize {
    const P1: usize = 4_194_301;
    const P2: usize = 4_194_287;
    let h1 = (addr.wrapping_add(addr >> 18)) % P1;
    let h2 = ((addr >> 8).wrapping_add(addr >> 24)) % P2;
    (h1 ^ h2) & (POOL_SIZE - 1)
}
