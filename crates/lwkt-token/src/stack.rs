//! The per-thread token reference stack and the all-or-nothing
//! re-acquisition a scheduler runs before resuming a thread.
//!
//! DragonFly: `td_toks_array[LWKT_MAXTOKENS]`, `td_toks_stop`,
//! `td_toks_have`, `lwkt_relalltokens()`, `lwkt_getalltokens()`,
//! `_lwkt_getalltokens_sorted()`.
//!
//! Every method is `unsafe` with one contract: only the thread that owns the
//! stack calls it, or its scheduler while that thread is not running, and
//! never concurrently. The stack's address is the thread's owner id in
//! [`Token::exclusive_owner`].

use core::cell::Cell;
use core::fmt;
use core::ptr;

use crate::token::Token;

/// Most token references one thread may hold at once (DragonFly `LWKT_MAXTOKENS`).
pub const MAX_TOKENS: usize = 32;

/// After this many failed re-acquisitions, a thread's tokens are taken in
/// address order, which breaks livelock between CPUs that want overlapping
/// sets (DragonFly's `lwkt_spin_loops` default).
pub const SORTED_AFTER: u32 = 10;

/// How a token is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Alone.
    Exclusive,
    /// With other shared holders.
    Shared,
}

/// Misuse that the token stack refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The thread already holds [`MAX_TOKENS`] references.
    TooManyTokens,
    /// Exclusive acquisition of a token this thread holds only shared:
    /// it could never succeed (DragonFly's one token deadlock).
    ExclusiveWhileShared {
        /// The token's name.
        token: &'static str,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::TooManyTokens => write!(
                f,
                "lwkt: a thread may hold at most {MAX_TOKENS} token references (LWKT_MAXTOKENS)"
            ),
            TokenError::ExclusiveWhileShared { token } => write!(
                f,
                "lwkt: taking token '{token}' exclusively while holding it shared can never succeed"
            ),
        }
    }
}

#[derive(Clone, Copy)]
struct Ref {
    tok: *const Token,
    mode: Mode,
    /// A nested hold of a token held deeper in the stack: costs no atomic.
    /// Its `mode` is the mode the token is held in (the acquiring ref's).
    recursive: bool,
}

const EMPTY: Ref = Ref {
    tok: ptr::null(),
    mode: Mode::Shared,
    recursive: true,
};

/// One thread's token references, bottom first.
pub struct TokenStack {
    refs: [Cell<Ref>; MAX_TOKENS],
    len: Cell<usize>,
    /// Refs `0..held` are acquired now (`td_toks_have`).
    held: Cell<usize>,
    contended: Cell<u32>,
    acquisitions_failed: Cell<u64>,
}

impl fmt::Debug for TokenStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStack")
            .field("len", &self.len.get())
            .field("held", &self.held.get())
            .finish()
    }
}

impl Default for TokenStack {
    fn default() -> Self {
        Self::new()
    }
}

/// Result of [`TokenStack::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Nested hold of a token this thread already has: nothing to acquire.
    Recursive,
    /// A new reference; acquire it with [`TokenStack::try_top`].
    New,
}

impl TokenStack {
    /// An empty stack.
    pub const fn new() -> TokenStack {
        TokenStack {
            refs: [const { Cell::new(EMPTY) }; MAX_TOKENS],
            len: Cell::new(0),
            held: Cell::new(0),
            contended: Cell::new(0),
            acquisitions_failed: Cell::new(0),
        }
    }

    /// This stack's owner id (its address), as recorded in tokens it holds.
    pub fn owner_id(&self) -> usize {
        self as *const TokenStack as usize
    }

    /// References on the stack.
    pub fn len(&self) -> usize {
        self.len.get()
    }

    /// No references?
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// Are all references acquired right now?
    pub fn all_held(&self) -> bool {
        self.held.get() == self.len.get()
    }

    /// Times re-acquisition of the whole set failed for this thread.
    pub fn failed_acquisitions(&self) -> u64 {
        self.acquisitions_failed.get()
    }

    /// Does this thread hold `tok` (in any mode)?
    pub fn holds(&self, tok: &Token) -> bool {
        (0..self.held.get()).any(|i| ptr::eq(self.refs[i].get().tok, tok))
    }

    /// Record a reference to `tok` in `mode`. A token the thread already
    /// holds (exclusively, or shared for a shared request) nests at no cost.
    ///
    /// # Safety
    /// Called by the owning thread while it runs with all its tokens held.
    pub unsafe fn push(&self, tok: &Token, mode: Mode) -> Result<Pushed, TokenError> {
        let n = self.len.get();
        if n == MAX_TOKENS {
            return Err(TokenError::TooManyTokens);
        }
        // A nested reference records the mode the token is actually held in
        // (that of its acquiring reference), so one scan finds it.
        let mut base = None;
        for i in (0..n).rev() {
            let r = self.refs[i].get();
            if ptr::eq(r.tok, tok) {
                base = Some(r.mode);
                break;
            }
        }
        let (mode, recursive) = match (base, mode) {
            (Some(Mode::Shared), Mode::Exclusive) => {
                return Err(TokenError::ExclusiveWhileShared { token: tok.name() })
            }
            (Some(held_as), _) => (held_as, true),
            (None, _) => (mode, false),
        };
        self.refs[n].set(Ref {
            tok,
            mode,
            recursive,
        });
        self.len.set(n + 1);
        if recursive {
            self.held.set(n + 1);
            Ok(Pushed::Recursive)
        } else {
            Ok(Pushed::New)
        }
    }

    /// Try once to acquire the top reference (after `push` said `New`).
    /// On success every reference is held; on failure the top one is not,
    /// and the caller must block (its scheduler then re-acquires all).
    ///
    /// # Safety
    /// As for [`push`](Self::push); the top reference is not yet held.
    pub unsafe fn try_top(&self, blocking: bool) -> bool {
        let n = self.len.get();
        debug_assert!(n > 0 && self.held.get() == n - 1);
        let r = self.refs[n - 1].get();
        // SAFETY: a reference on a live thread's stack points at a live token
        // (the token outlives every hold: `with_token` borrows it).
        let tok = unsafe { &*r.tok };
        let ok = match r.mode {
            Mode::Exclusive => tok.try_exclusive(self.owner_id(), blocking),
            Mode::Shared => tok.try_shared(blocking && n == 1),
        };
        if ok {
            self.held.set(n);
        } else {
            tok.note_collision();
        }
        ok
    }

    /// Remove the top reference, which a failed [`try_top`](Self::try_top)
    /// left unheld (the `lwkt_trytoken` failure path).
    ///
    /// # Safety
    /// As for [`push`](Self::push); the top reference is `tok`, not held.
    pub unsafe fn abandon_top(&self, tok: &Token) {
        let n = self.len.get();
        assert!(n > 0 && ptr::eq(self.refs[n - 1].get().tok, tok));
        debug_assert_eq!(self.held.get(), n - 1);
        self.len.set(n - 1);
    }

    /// Remove the top reference, releasing the token unless it was nested.
    ///
    /// # Safety
    /// As for [`push`](Self::push); the top reference is `tok` and is held.
    ///
    /// # Panics
    /// If the top reference is not `tok` (releases are LIFO).
    pub unsafe fn pop(&self, tok: &Token) {
        let n = self.len.get();
        assert!(
            n > 0,
            "lwkt: release of token '{}' that this thread does not hold",
            tok.name()
        );
        let r = self.refs[n - 1].get();
        assert!(
            ptr::eq(r.tok, tok),
            "lwkt: tokens must be released in LIFO order ('{}' is not the most recent)",
            tok.name()
        );
        debug_assert!(self.held.get() == n);
        if !r.recursive {
            // SAFETY: held by this thread in `r.mode`.
            unsafe { release(tok, r.mode) };
        }
        self.len.set(n - 1);
        self.held.set(n - 1);
    }

    /// Release every acquired reference, keeping them on the stack as the
    /// set to re-acquire (DragonFly `lwkt_relalltokens`). The scheduler calls
    /// this when the thread blocks or switches away.
    ///
    /// # Safety
    /// Owner or its scheduler, the thread not running concurrently.
    pub unsafe fn release_all(&self) {
        for i in (0..self.held.get()).rev() {
            let r = self.refs[i].get();
            if !r.recursive {
                // SAFETY: refs below `held` are acquired, in their mode.
                unsafe { release(&*r.tok, r.mode) };
            }
        }
        self.held.set(0);
    }

    /// Acquire every reference, all or nothing (DragonFly
    /// `lwkt_getalltokens`). After [`SORTED_AFTER`] failures in a row the
    /// tokens are taken in address order.
    ///
    /// # Safety
    /// Owner or its scheduler, the thread not running concurrently; nothing
    /// on the stack is held (`release_all` was called).
    pub unsafe fn acquire_all(&self) -> bool {
        debug_assert_eq!(self.held.get(), 0);
        let n = self.len.get();
        let ok = if self.contended.get() > SORTED_AFTER {
            // SAFETY: forwarded.
            unsafe { self.acquire_sorted(n) }
        } else {
            // SAFETY: forwarded.
            unsafe { self.acquire_in_order(n) }
        };
        if ok {
            self.held.set(n);
            self.contended.set(0);
        } else {
            self.contended.set(self.contended.get().saturating_add(1));
            self.acquisitions_failed
                .set(self.acquisitions_failed.get() + 1);
        }
        ok
    }

    unsafe fn acquire_in_order(&self, n: usize) -> bool {
        for i in 0..n {
            let r = self.refs[i].get();
            if r.recursive {
                continue;
            }
            // SAFETY: references point at live tokens.
            let tok = unsafe { &*r.tok };
            if !try_acquire(tok, r.mode, self.owner_id(), i > 0) {
                tok.note_collision();
                for j in (0..i).rev() {
                    let q = self.refs[j].get();
                    if !q.recursive {
                        // SAFETY: acquired just above.
                        unsafe { release(&*q.tok, q.mode) };
                    }
                }
                return false;
            }
        }
        true
    }

    unsafe fn acquire_sorted(&self, n: usize) -> bool {
        // Indices of acquiring references, sorted by token address.
        let mut idx = [0u8; MAX_TOKENS];
        let mut k = 0;
        for i in 0..n {
            if !self.refs[i].get().recursive {
                let a = self.refs[i].get().tok as usize;
                let mut j = k;
                while j > 0 && self.refs[idx[j - 1] as usize].get().tok as usize > a {
                    idx[j] = idx[j - 1];
                    j -= 1;
                }
                idx[j] = i as u8;
                k += 1;
            }
        }
        for (pos, &i) in idx[..k].iter().enumerate() {
            let r = self.refs[i as usize].get();
            // SAFETY: references point at live tokens.
            let tok = unsafe { &*r.tok };
            if !try_acquire(tok, r.mode, self.owner_id(), pos > 0) {
                tok.note_collision();
                for &j in idx[..pos].iter().rev() {
                    let q = self.refs[j as usize].get();
                    // SAFETY: acquired just above.
                    unsafe { release(&*q.tok, q.mode) };
                }
                return false;
            }
        }
        true
    }
}

fn try_acquire(tok: &Token, mode: Mode, owner: usize, holds_others: bool) -> bool {
    match mode {
        Mode::Exclusive => tok.try_exclusive(owner, true),
        Mode::Shared => tok.try_shared(!holds_others),
    }
}

/// # Safety
/// The caller holds `tok` in `mode`.
unsafe fn release(tok: &Token, mode: Mode) {
    // SAFETY: forwarded.
    unsafe {
        match mode {
            Mode::Exclusive => tok.release_exclusive(),
            Mode::Shared => tok.release_shared(),
        }
    }
}
