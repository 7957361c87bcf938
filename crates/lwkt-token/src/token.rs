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

use crate::stack::OwnerId;
use crate::sync::{AtomicUsize, Ordering};

const EXCLUSIVE: usize = 1;
const EXCLREQ: usize = 2;
const INCR: usize = 4;

/// A serializing token. A thread holds its tokens only while it runs: when
/// it blocks, they are released, and they are all re-acquired before it runs
/// again. So holding a token guarantees exclusion only between blocking
/// points, and tokens can never deadlock.
///
/// Use it through [`with_token`](crate::with_token) and [`TokenCell`](crate::TokenCell);
/// the methods here are the raw state machine, which [`TokenStack`] drives
/// for schedulers.
///
/// ```
/// use lwkt_token::{Token, TokenStack};
/// static VM_TOKEN: Token = Token::new("vm");
/// let me = TokenStack::new(); // this thread's stack
/// // SAFETY: our own stack's id, on this thread.
/// assert!(unsafe { VM_TOKEN.try_exclusive(me.owner(), false) });
/// assert!(!VM_TOKEN.try_shared(false));
/// assert_eq!(VM_TOKEN.exclusive_owner(), me.owner_id());
/// // SAFETY: we hold it, and no hold was taken through it.
/// unsafe { VM_TOKEN.release_exclusive() };
/// assert_eq!(VM_TOKEN.name(), "vm");
/// ```
///
/// [`TokenStack`]: crate::TokenStack
pub struct Token {
    state: AtomicUsize,
    /// The exclusive holder's owner id (its token stack's id), 0 if none.
    owner: AtomicUsize,
    collisions: AtomicUsize,
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
            collisions: AtomicUsize::new(0),
            name,
        }
    }

    /// A free token (loom build).
    #[cfg(loom)]
    pub fn new(name: &'static str) -> Token {
        Token {
            state: AtomicUsize::new(0),
            owner: AtomicUsize::new(0),
            collisions: AtomicUsize::new(0),
            name,
        }
    }

    /// Its name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Failed acquisitions so far (DragonFly `t_collisions`).
    /// (Counted in a machine word: it wraps after 2^32 on 32-bit targets,
    /// which have no 64-bit atomics to spare for a statistic.)
    pub fn collisions(&self) -> u64 {
        self.collisions.load(Ordering::Relaxed) as u64
    }

    pub(crate) fn note_collision(&self) {
        self.collisions.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of shared holders now (a snapshot).
    pub fn shared_holders(&self) -> usize {
        self.state.load(Ordering::Relaxed) / INCR
    }

    /// The exclusive holder's owner id ([`OwnerId::get`]), or 0 (a
    /// snapshot). A thread that reads its own stack's id here holds the
    /// token: only the holder stores its id, and it stores 0 before it
    /// releases.
    ///
    /// ```
    /// let t = lwkt_token::Token::new("free");
    /// assert_eq!(t.exclusive_owner(), 0);
    /// ```
    #[inline(always)]
    pub fn exclusive_owner(&self) -> usize {
        self.owner.load(Ordering::Relaxed)
    }

    /// Does the stack with id `owner` hold this token exclusively? One load,
    /// no scan. Only the thread running with that stack stores its id here
    /// (no other stack has that id, wherever either lives, and the owner
    /// field is written only from an [`OwnerId`]: never the value a stack
    /// without an id has), and it stores 0 before every release (its
    /// scheduler does so for it while it is switched out), so a running
    /// thread that reads its own id here holds the token now.
    #[inline(always)]
    pub(crate) fn is_held_by(&self, owner: OwnerId) -> bool {
        self.exclusive_owner() == owner.get()
    }

    /// Take a free token exclusively for `owner` with one compare-and-swap;
    /// false if it is held or has a waiting exclusive requester (then
    /// [`try_exclusive`](Self::try_exclusive) decides). The fast path.
    #[inline(always)]
    pub(crate) fn try_exclusive_free(&self, owner: OwnerId) -> bool {
        if self
            .state
            .compare_exchange(0, EXCLUSIVE, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.owner.store(owner.get(), Ordering::Relaxed);
        true
    }

    /// Try to take the token exclusively for the thread whose token stack
    /// has id `owner`. A `blocking` requester that fails leaves `EXCLREQ`
    /// set so new shared holders defer to it. DragonFly:
    /// `_lwkt_trytokref()`.
    ///
    /// # Safety
    /// `owner` is the id of the token stack of the thread this runs on
    /// (or, in its scheduler, of the thread being resumed), taken on that
    /// thread's behalf. A thread that finds its stack's id in the owner
    /// field believes it holds the token: a nested
    /// [`with_token`](crate::with_token) then reaches the protected data
    /// with no atomic operation, so a hold stored for another thread's id
    /// would let that thread in without synchronising with the previous
    /// holder. (Safe code cannot name an id at all: an [`OwnerId`] comes
    /// only from a stack, so `usize::MAX`, which once matched every fresh
    /// stack, cannot be passed.)
    ///
    /// A hold taken here and never released leaves the token held for
    /// good: a deadlock for others, not unsoundness.
    ///
    /// ```compile_fail
    /// static T: lwkt_token::Token = lwkt_token::Token::new("t");
    /// // error: expected `OwnerId`, found `usize` (issue 15, hole 2)
    /// let _ = unsafe { T.try_exclusive(usize::MAX, false) };
    /// ```
    ///
    /// ```compile_fail,E0133
    /// static T: lwkt_token::Token = lwkt_token::Token::new("t");
    /// let me = lwkt_token::TokenStack::new();
    /// let _ = T.try_exclusive(me.owner(), false); // error: unsafe
    /// ```
    pub unsafe fn try_exclusive(&self, owner: OwnerId, blocking: bool) -> bool {
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
                        self.owner.store(owner.get(), Ordering::Relaxed);
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
    /// DragonFly: `_lwkt_trytokref()` for a shared reference.
    ///
    /// Safe: a shared hold taken here opens no [`TokenCell`] (that needs a
    /// [`Held`] from the closure API), and only
    /// [`release_shared`](Self::release_shared), which is `unsafe`, undoes
    /// it. One never released keeps exclusive holders out for good: a
    /// deadlock, not unsoundness.
    ///
    /// ```
    /// let t = lwkt_token::Token::new("shared");
    /// assert!(t.try_shared(false) && t.try_shared(false));
    /// assert_eq!(t.shared_holders(), 2);
    /// // SAFETY: both holds are ours, and no `Held` was made from them.
    /// unsafe { t.release_shared(); t.release_shared() };
    /// ```
    ///
    /// [`TokenCell`]: crate::TokenCell
    /// [`Held`]: crate::Held
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
    /// The caller holds the token exclusively, and no hold made from this
    /// one is still in use (a closure of [`with_token`](crate::with_token)
    /// that nested on it): a release by anyone else, or under a live hold,
    /// would let two threads into the protected data.
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
    /// The caller holds one shared hold, and no [`Held`](crate::Held) made
    /// from it is still in use.
    #[inline]
    pub unsafe fn release_shared(&self) {
        let old = self.state.fetch_sub(INCR, Ordering::Release);
        debug_assert!(
            old >= INCR && old & EXCLUSIVE == 0,
            "release of a token not held shared"
        );
    }
}
