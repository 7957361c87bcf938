//! The token itself: one word of state, changed only by atomics.
//!
//! DragonFly: `struct lwkt_token`, `_lwkt_trytokref()`, `_lwkt_reltokref()`.
//!
//! State word: bit 0 `EXCLUSIVE` (held exclusively), bit 1 `EXCLREQ` (an
//! exclusive requester is waiting; new shared holders that hold no other
//! token defer to it), and the shared-holder count in units of 4.
//!
//! Differences from DragonFly, for speed:
//! - shared acquisition is a compare-and-swap that never adds to the count
//!   while the token is exclusive (DragonFly adds, looks, and subtracts
//!   again), so nothing but the owner writes the word while it is held
//!   exclusively;
//! - a waiting exclusive requester sets `EXCLREQ` only while the token is
//!   held shared, with a compare-and-swap whose expected value has
//!   `EXCLUSIVE` clear;
//! - so while a token is held exclusively nobody else writes its state word
//!   (every foreign write is a CAS that cannot succeed then), and the
//!   exclusive release is a plain store: one locked instruction per
//!   exclusive acquire+release pair instead of DragonFly's two.

use core::fmt;

use crate::sync::{AtomicU64, AtomicUsize, Ordering};

const EXCLUSIVE: usize = 1;
const EXCLREQ: usize = 2;
const INCR: usize = 4;

/// A serializing token. A thread holds its tokens only while it runs: when
/// it blocks, they are released, and they are all re-acquired before it runs
/// again. So holding a token guarantees exclusion only between blocking
/// points, and tokens can never deadlock.
///
/// Use it through [`with_token`](crate::with_token) and [`TokenCell`](crate::TokenCell);
/// the methods here are the raw state machine for schedulers.
///
/// ```
/// use lwkt_token::Token;
/// static VM_TOKEN: Token = Token::new("vm");
/// assert!(VM_TOKEN.try_exclusive(1, false));
/// assert!(!VM_TOKEN.try_shared(false));
/// // SAFETY: we hold it exclusively.
/// unsafe { VM_TOKEN.release_exclusive() };
/// assert_eq!(VM_TOKEN.name(), "vm");
/// ```
pub struct Token {
    state: AtomicUsize,
    /// The exclusive holder's owner id (its token stack's id), 0 if none.
    owner: AtomicUsize,
    collisions: AtomicU64,
    name: &'static str,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("Token")
            .field("name", &self.name)
            .field("exclusive", &(s & EXCLUSIVE != 0))
            .field("shared", &(s / INCR))
            .field("collisions", &self.collisions())
            .finish()
    }
}

impl Token {
    /// A free token; `name` shows in statistics (DragonFly `t_desc`).
    #[cfg(not(loom))]
    pub const fn new(name: &'static str) -> Token {
        Token {
            state: AtomicUsize::new(0),
            owner: AtomicUsize::new(0),
            collisions: AtomicU64::new(0),
            name,
        }
    }

    /// A free token (loom build).
    #[cfg(loom)]
    pub fn new(name: &'static str) -> Token {
        Token {
            state: AtomicUsize::new(0),
            owner: AtomicUsize::new(0),
            collisions: AtomicU64::new(0),
            name,
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Failed acquisitions so far (DragonFly `t_collisions`).
    pub fn collisions(&self) -> u64 {
        self.collisions.load(Ordering::Relaxed)
    }

    pub(crate) fn note_collision(&self) {
        self.collisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of shared holders now (a snapshot).
    pub fn shared_holders(&self) -> usize {
        self.state.load(Ordering::Relaxed) / INCR
    }

    /// The exclusive holder's owner id, or 0 (a snapshot). A thread that
    /// reads its own id here holds the token: only the holder stores its id,
    /// and it stores 0 before it releases.
    #[inline(always)]
    pub fn exclusive_owner(&self) -> usize {
        self.owner.load(Ordering::Relaxed)
    }

    /// Take a free token exclusively for `owner` with one compare-and-swap;
    /// false if it is held or has a waiting exclusive requester (then
    /// [`try_exclusive`](Self::try_exclusive) decides). The fast path.
    #[inline(always)]
    pub(crate) fn try_exclusive_free(&self, owner: usize) -> bool {
        debug_assert!(owner != 0);
        if self
            .state
            .compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.owner.store(owner, Ordering::Relaxed);
        true
    }

    /// Try to take the token exclusively for `owner` (a non-zero id unique
    /// to the holder). A `blocking` requester that fails leaves `EXCLREQ`
    /// set so new shared holders defer to it.
    pub fn try_exclusive(&self, owner: usize, blocking: bool) -> bool {
        debug_assert!(owner != 0);
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & !EXCLREQ == 0 {
                match self.state.compare_exchange_weak(
                    s,
                    EXCLUSIVE,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.owner.store(owner, Ordering::Relaxed);
                        return true;
                    }
                    Err(now) => s = now,
                }
            } else {
                // Ask shared holders to let us in next, but only while the
                // token is shared: a CAS that cannot succeed while it is held
                // exclusively, so that nobody but the exclusive holder ever
                // writes the word then (which is what lets its release be a
                // plain store).
                if blocking && s & (EXCLUSIVE | EXCLREQ) == 0 {
                    let _ = self.state.compare_exchange(
                        s,
                        s | EXCLREQ,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return false;
            }
        }
    }

    /// Try to take a shared hold. `defer` (the requester holds no other
    /// token) makes it give way to a waiting exclusive requester.
    #[inline]
    pub fn try_shared(&self, defer: bool) -> bool {
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if s & EXCLUSIVE != 0 || (defer && s & EXCLREQ != 0) {
                return false;
            }
            match self.state.compare_exchange_weak(
                s,
                s + INCR,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    /// Give up an exclusive hold: a plain store, since nobody else writes
    /// the state word while it is held exclusively.
    ///
    /// # Safety
    /// The caller holds the token exclusively (a release by anyone else
    /// would let two threads into the protected data).
    #[inline(always)]
    pub unsafe fn release_exclusive(&self) {
        debug_assert!(
            self.state.load(Ordering::Relaxed) & EXCLUSIVE != 0,
            "release of a token not held exclusively"
        );
        self.owner.store(0, Ordering::Relaxed);
        self.state.store(0, Ordering::Release);
    }

    /// Give up a shared hold.
    ///
    /// # Safety
    /// The caller holds one shared hold.
    #[inline]
    pub unsafe fn release_shared(&self) {
        let old = self.state.fetch_sub(INCR, Ordering::Release);
        debug_assert!(
            old >= INCR && old & EXCLUSIVE == 0,
            "release of a token not held shared"
        );
    }
}
