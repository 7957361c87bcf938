//! The per-thread token reference stack and the all-or-nothing
//! re-acquisition a scheduler runs before resuming a thread.
//!
//! DragonFly: `td_toks_array[LWKT_MAXTOKENS]`, `td_toks_stop`,
//! `td_toks_have`, `lwkt_relalltokens()`, `lwkt_getalltokens()`,
//! `_lwkt_getalltokens_sorted()`.
//!
//! Every method that changes the stack is `unsafe` with one contract: only
//! the thread that owns the stack calls it, or its scheduler while that
//! thread is not running, and never concurrently; and a token stays alive
//! while a reference to it is on the stack. Each stack has an owner id
//! ([`OwnerId`]), a number no other stack of the process ever has, recorded
//! in [`Token::exclusive_owner`] of the tokens it holds exclusively.

use core::cell::Cell;
use core::fmt;
use core::num::NonZeroUsize;
use core::ptr;
// Not loom's: ids only need to be unique, they are not part of any model.
use core::sync::atomic::{AtomicUsize as IdCounter, Ordering as IdOrdering};

use crate::token::Token;

/// Most token references one thread may hold at once (DragonFly
/// `LWKT_MAXTOKENS`). Nested holds of a token the thread holds exclusively,
/// taken through [`with_token`](crate::with_token) and friends, are only
/// counted and do not use up this space.
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

/// Low bits of a reference word. Tokens are at least 8-byte aligned (their
/// state is an `AtomicUsize`), so the bits below the alignment are free.
const SHARED_BIT: usize = 1;
const RECURSIVE_BIT: usize = 2;
const TAG_BITS: usize = SHARED_BIT | RECURSIVE_BIT;
const _: () = assert!(core::mem::align_of::<Token>() > TAG_BITS);
const _: () = assert!(MAX_TOKENS <= u8::MAX as usize);

/// One token reference in one word: the token's address, bit 0 set when the
/// token is held shared, bit 1 set for a nested hold of a token held deeper
/// in the stack (it costs no atomic). A nested reference records the mode
/// the token is actually held in (its acquiring reference's), so one scan
/// finds it.
#[derive(Clone, Copy)]
struct Ref(*const Token);

impl Ref {
    const EMPTY: Ref = Ref(ptr::null());

    #[inline(always)]
    fn new(tok: &Token, mode: Mode, recursive: bool) -> Ref {
        let bits = match mode {
            Mode::Exclusive => 0,
            Mode::Shared => SHARED_BIT,
        } | if recursive { RECURSIVE_BIT } else { 0 };
        Ref((tok as *const Token).map_addr(|a| a | bits))
    }

    #[inline(always)]
    fn tok(self) -> *const Token {
        self.0.map_addr(|a| a & !TAG_BITS)
    }

    #[inline(always)]
    fn is(self, tok: &Token) -> bool {
        self.0.addr() & !TAG_BITS == (tok as *const Token).addr()
    }

    #[inline(always)]
    fn mode(self) -> Mode {
        if self.0.addr() & SHARED_BIT != 0 {
            Mode::Shared
        } else {
            Mode::Exclusive
        }
    }

    #[inline(always)]
    fn recursive(self) -> bool {
        self.0.addr() & RECURSIVE_BIT != 0
    }
}

/// Where the closure API's reference went, for [`TokenStack::pop_slot`]:
/// its index, and whether it is a nested hold (which releases nothing).
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    /// Below [`MAX_TOKENS`]: a byte keeps a hold's record short.
    n: u8,
    recursive: bool,
}

impl Slot {
    #[inline(always)]
    fn new(n: usize, recursive: bool) -> Slot {
        Slot {
            n: n as u8,
            recursive,
        }
    }
}

/// A stack that has not needed an owner id yet. No token's owner field
/// ever holds it: the owner field is written only from an [`OwnerId`], and
/// ids count up from 1 and stop short of `NO_ID` (0 means "no exclusive
/// holder"). So a fresh stack never takes a token's owner field for its own
/// (issue 15, hole 2: a forged `usize::MAX` once made every fresh stack
/// "hold" a token).
const NO_ID: usize = usize::MAX;

/// The next owner id; it stays at [`NO_ID`] once the ids are used up.
static NEXT_ID: IdCounter = IdCounter::new(1);

/// A token stack's owner id: what a token's owner field records of the
/// stack holding it exclusively. Only a [`TokenStack`] makes one
/// ([`TokenStack::owner`]); it is never 0 ("no holder") nor the value a
/// stack without an id compares equal to, and no two stacks of the process
/// ever have the same one.
///
/// ```
/// use lwkt_token::TokenStack;
/// let (a, b) = (TokenStack::new(), TokenStack::new());
/// assert_ne!(a.owner(), b.owner());
/// assert_eq!(a.owner(), a.owner());
/// assert_eq!(a.owner().get(), a.owner_id());
/// ```
///
/// It cannot be made from a number:
///
/// ```compile_fail
/// let forged = lwkt_token::OwnerId(core::num::NonZeroUsize::MAX); // error: private
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerId(NonZeroUsize);

impl OwnerId {
    /// The id as a number, as [`Token::exclusive_owner`] shows it.
    ///
    /// ```
    /// let st = lwkt_token::TokenStack::new();
    /// assert_ne!(st.owner().get(), 0);
    /// ```
    #[inline(always)]
    pub fn get(self) -> usize {
        self.0.get()
    }
}

/// One thread's token references, bottom first.
pub struct TokenStack {
    /// Owner id, or [`NO_ID`] until the first exclusive acquisition. Not
    /// the stack's address: a stack may move (a `SpinThread` can be moved
    /// out from under a closure), and another stack may later live at the
    /// same address while a token still records this one.
    id: Cell<usize>,
    refs: [Cell<Ref>; MAX_TOKENS],
    /// References in `refs`.
    len: Cell<usize>,
    /// Nested holds of tokens this thread holds exclusively, taken through
    /// the closure API: they release nothing and are re-acquired with their
    /// token's acquiring reference, so they are only counted, not stored.
    nested: Cell<usize>,
    /// The top `unheld` references are not acquired now: `len - unheld` is
    /// DragonFly's `td_toks_have`. Zero while the thread runs, so the fast
    /// paths never write it.
    unheld: Cell<usize>,
    contended: Cell<u32>,
    acquisitions_failed: Cell<u64>,
}

impl fmt::Debug for TokenStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStack")
            .field("len", &self.len.get())
            .field("held", &self.held())
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
            id: Cell::new(NO_ID),
            refs: [const { Cell::new(Ref::EMPTY) }; MAX_TOKENS],
            len: Cell::new(0),
            nested: Cell::new(0),
            unheld: Cell::new(0),
            contended: Cell::new(0),
            acquisitions_failed: Cell::new(0),
        }
    }

    /// This stack's owner id, as recorded in tokens it holds exclusively,
    /// assigned on first use.
    ///
    /// # Panics
    /// When the process has used up every id (`usize::MAX - 1` stacks that
    /// held a token, or needed an id, in its lifetime).
    #[inline(always)]
    pub fn owner(&self) -> OwnerId {
        let id = self.id.get();
        if id != NO_ID {
            // SAFETY: an assigned id is never 0 (`assign_id`).
            OwnerId(unsafe { NonZeroUsize::new_unchecked(id) })
        } else {
            self.assign_id()
        }
    }

    /// [`owner`](Self::owner) as a number: what
    /// [`Token::exclusive_owner`] shows while this stack holds a token
    /// exclusively.
    ///
    /// ```
    /// use lwkt_token::{with_token, SpinThread, Token, TokenThread};
    /// static TOK: Token = Token::new("t");
    /// let mut me = SpinThread::new();
    /// with_token(&mut me, &TOK, |me, _| {
    ///     assert_eq!(TOK.exclusive_owner(), me.token_stack().owner_id());
    /// });
    /// ```
    #[inline(always)]
    pub fn owner_id(&self) -> usize {
        self.owner().get()
    }

    /// The id, or [`NO_ID`] before one was needed; no allocation of one.
    #[inline(always)]
    pub(crate) fn raw_id(&self) -> usize {
        self.id.get()
    }

    #[cold]
    #[inline(never)]
    fn assign_id(&self) -> OwnerId {
        // Never wraps: once the counter reaches NO_ID it stays there, and
        // no later stack gets 0 or a reused id.
        let id = NEXT_ID
            .fetch_update(IdOrdering::Relaxed, IdOrdering::Relaxed, |n| {
                (n < NO_ID).then_some(n + 1)
            })
            .unwrap_or_else(|_| panic!("lwkt: token owner ids exhausted"));
        self.id.set(id);
        // `NEXT_ID` starts at 1 and only grows.
        OwnerId(NonZeroUsize::new(id).expect("lwkt: token owner id 0"))
    }

    /// References on the stack, nested holds included.
    #[inline]
    pub fn len(&self) -> usize {
        self.len.get() + self.nested.get()
    }

    /// No references? (A nested hold always sits above its token's
    /// acquiring reference, so a stack with no stored reference has none.)
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    /// References acquired now (`td_toks_have`).
    #[inline]
    fn held(&self) -> usize {
        self.len.get() - self.unheld.get()
    }

    /// Are all references acquired right now?
    pub fn all_held(&self) -> bool {
        self.unheld.get() == 0
    }

    /// Times re-acquisition of the whole set failed for this thread.
    pub fn failed_acquisitions(&self) -> u64 {
        self.acquisitions_failed.get()
    }

    /// Does this thread hold `tok` (in any mode)?
    pub fn holds(&self, tok: &Token) -> bool {
        (0..self.held()).any(|i| self.refs[i].get().is(tok))
    }

    /// Put `r` on top; `n` is the length, below [`MAX_TOKENS`].
    #[inline(always)]
    fn put(&self, n: usize, r: Ref) -> Slot {
        debug_assert!(n < MAX_TOKENS && n == self.len.get());
        // SAFETY: `n < MAX_TOKENS` (every caller checked it), so in bounds.
        unsafe { self.refs.get_unchecked(n) }.set(r);
        self.len.set(n + 1);
        Slot::new(n, r.recursive())
    }

    /// The top reference, as a [`Slot`] for [`pop_slot`](Self::pop_slot).
    pub(crate) fn top_slot(&self) -> Slot {
        let n = self.len.get() - 1;
        Slot::new(n, self.refs[n].get().recursive())
    }

    /// Count a nested hold of a token this thread holds exclusively (see
    /// [`Token::is_held_by`]): no atomic operation, and
    /// no stored reference, since it releases nothing and is re-acquired
    /// with its token's acquiring reference.
    ///
    /// # Safety
    /// As for [`push`](Self::push); the thread holds the token exclusively.
    #[inline(always)]
    pub(crate) unsafe fn nest(&self) {
        debug_assert!(self.len.get() > 0 && self.unheld.get() == 0);
        self.nested.set(self.nested.get().wrapping_add(1));
    }

    /// End a hold counted by [`nest`](Self::nest).
    ///
    /// # Safety
    /// As for [`push`](Self::push); pairs with `nest`.
    #[inline(always)]
    pub(crate) unsafe fn unnest(&self) {
        debug_assert!(self.nested.get() > 0);
        self.nested.set(self.nested.get().wrapping_sub(1));
    }

    /// Fast path of an exclusive get of a token this thread does not hold
    /// exclusively: a free token, taken with one compare-and-swap. Returns
    /// `None`, having changed nothing, when [`push`](Self::push) and
    /// [`try_top`](Self::try_top) must decide (a busy token, a full stack,
    /// misuse).
    ///
    /// # Safety
    /// As for [`push`](Self::push); `owner` is this stack's id.
    #[inline(always)]
    pub(crate) unsafe fn push_exclusive_free(&self, tok: &Token, owner: OwnerId) -> Option<Slot> {
        debug_assert!(owner == self.owner());
        let n = self.len.get();
        if n >= MAX_TOKENS || !tok.try_exclusive_free(owner) {
            return None;
        }
        Some(self.put(n, Ref::new(tok, Mode::Exclusive, false)))
    }

    /// Fast path of a shared get of a token this thread does not hold
    /// exclusively: only as its first token (nothing to scan). As
    /// [`push_exclusive_free`](Self::push_exclusive_free) otherwise.
    ///
    /// # Safety
    /// As for [`push`](Self::push).
    #[inline(always)]
    pub(crate) unsafe fn push_shared_first(&self, tok: &Token) -> Option<Slot> {
        // Holding no other token, defer to a waiting exclusive requester.
        if self.len.get() != 0 || !tok.try_shared(true) {
            return None;
        }
        Some(self.put(0, Ref::new(tok, Mode::Shared, false)))
    }

    /// Record a reference to `tok` in `mode`. A token the thread already
    /// holds (exclusively, or shared for a shared request) nests at no cost.
    ///
    /// # Safety
    /// Called by the owning thread while it runs with all its tokens held;
    /// `tok` stays alive until this reference is popped
    /// ([`pop`](Self::pop), [`abandon_top`](Self::abandon_top)): the stack
    /// keeps its address, and [`release_all`](Self::release_all) and
    /// [`acquire_all`](Self::acquire_all) write to it.
    pub unsafe fn push(&self, tok: &Token, mode: Mode) -> Result<Pushed, TokenError> {
        let n = self.len.get();
        if n >= MAX_TOKENS {
            return Err(TokenError::TooManyTokens);
        }
        debug_assert_eq!(self.unheld.get(), 0);
        let base = self.refs[..n]
            .iter()
            .rev()
            .map(Cell::get)
            .find(|r| r.is(tok))
            .map(Ref::mode);
        let (mode, recursive) = match (base, mode) {
            (Some(Mode::Shared), Mode::Exclusive) => {
                return Err(TokenError::ExclusiveWhileShared { token: tok.name() })
            }
            (Some(held_as), _) => (held_as, true),
            (None, _) => (mode, false),
        };
        self.put(n, Ref::new(tok, mode, recursive));
        if recursive {
            Ok(Pushed::Recursive)
        } else {
            self.unheld.set(1);
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
        debug_assert!(n > 0 && self.unheld.get() == 1);
        let r = self.refs[n - 1].get();
        // SAFETY: a reference on a live thread's stack points at a live token
        // (the token outlives every hold: `with_token` borrows it).
        let tok = unsafe { &*r.tok() };
        let ok = match r.mode() {
            // SAFETY: our own id, on behalf of the thread that owns this
            // stack (the caller's contract), which records the hold here.
            Mode::Exclusive => unsafe { tok.try_exclusive(self.owner(), blocking) },
            Mode::Shared => tok.try_shared(blocking && n == 1),
        };
        if ok {
            self.unheld.set(0);
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
        assert!(n > 0 && self.refs[n - 1].get().is(tok) && self.unheld.get() == 1);
        self.len.set(n - 1);
        self.unheld.set(0);
    }

    /// Remove the top reference if it is `tok` and the only one not held:
    /// what a `wait_for_tokens` that unwound before it released anything
    /// leaves. False (nothing changed) for any other state.
    ///
    /// # Safety
    /// As for [`push`](Self::push), except that the top reference is not
    /// held.
    pub(crate) unsafe fn abandon_unheld_top(&self, tok: &Token) -> bool {
        let n = self.len.get();
        if n == 0 || !self.refs[n - 1].get().is(tok) || self.unheld.get() != 1 {
            return false;
        }
        self.len.set(n - 1);
        self.unheld.set(0);
        true
    }

    /// Remove the top reference, releasing the token unless it was nested.
    ///
    /// # Safety
    /// As for [`push`](Self::push); the top reference is `tok` and is held.
    ///
    /// # Panics
    /// If the top reference is not `tok` (releases are LIFO).
    #[inline(always)]
    pub unsafe fn pop(&self, tok: &Token) {
        let n = self.len.get();
        if n == 0 {
            not_held(tok);
        }
        // SAFETY: `0 < n <= MAX_TOKENS`.
        let r = unsafe { self.refs.get_unchecked(n - 1) }.get();
        if !r.is(tok) {
            not_lifo(tok);
        }
        debug_assert_eq!(self.unheld.get(), 0);
        if !r.recursive() {
            // SAFETY: held by this thread in `r.mode()`.
            unsafe { release(tok, r.mode()) };
        }
        self.len.set(n - 1);
    }

    /// [`pop`](Self::pop) for the closure API, which knows where its
    /// reference is and in which mode it asked for the token (a reference
    /// that is not nested holds the token in the mode asked for). The
    /// reference must still be on top (the stack is `slot.n + 1` long) and
    /// held, which nested closures guarantee (each ends its hold as it
    /// returns or unwinds) unless the stack's `unsafe` API was misused; then
    /// this aborts, since a panic would leave a reference to a token its
    /// owner may free.
    ///
    /// # Safety
    /// As for [`pop`](Self::pop); `slot` came from this stack's push of
    /// `tok` in `mode`.
    #[inline(always)]
    pub(crate) unsafe fn pop_slot(&self, tok: &Token, mode: Mode, slot: Slot) {
        let n = usize::from(slot.n);
        if self.len.get() != n + 1 {
            closure_end_broken(tok);
        }
        debug_assert_eq!(self.unheld.get(), 0);
        debug_assert!(self.refs[n].get().is(tok));
        debug_assert!(slot.recursive || self.refs[n].get().mode() == mode);
        if !slot.recursive {
            // SAFETY: held by this thread in `mode` (caller).
            unsafe { release(tok, mode) };
        }
        self.len.set(n);
    }

    /// Release every acquired reference, keeping them on the stack as the
    /// set to re-acquire (DragonFly `lwkt_relalltokens`). The scheduler calls
    /// this when the thread blocks or switches away.
    ///
    /// # Safety
    /// Owner or its scheduler, the thread not running concurrently.
    pub unsafe fn release_all(&self) {
        for i in (0..self.held()).rev() {
            let r = self.refs[i].get();
            if !r.recursive() {
                // SAFETY: refs below `held` are acquired, in their mode.
                unsafe { release(&*r.tok(), r.mode()) };
            }
        }
        self.unheld.set(self.len.get());
    }

    /// Acquire every reference, all or nothing (DragonFly
    /// `lwkt_getalltokens`). After [`SORTED_AFTER`] failures in a row the
    /// tokens are taken in address order.
    ///
    /// # Safety
    /// Owner or its scheduler, the thread not running concurrently; nothing
    /// on the stack is held (`release_all` was called).
    pub unsafe fn acquire_all(&self) -> bool {
        debug_assert_eq!(self.held(), 0);
        let n = self.len.get();
        let ok = if self.contended.get() > SORTED_AFTER {
            // SAFETY: forwarded.
            unsafe { self.acquire_sorted(n) }
        } else {
            // SAFETY: forwarded.
            unsafe { self.acquire_in_order(n) }
        };
        if ok {
            self.unheld.set(0);
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
            if r.recursive() {
                continue;
            }
            // SAFETY: references point at live tokens.
            let tok = unsafe { &*r.tok() };
            // SAFETY: our id; the scheduler acquires for our thread.
            if !unsafe { try_acquire(tok, r.mode(), self.owner(), i > 0) } {
                tok.note_collision();
                for j in (0..i).rev() {
                    let q = self.refs[j].get();
                    if !q.recursive() {
                        // SAFETY: acquired just above.
                        unsafe { release(&*q.tok(), q.mode()) };
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
            let r = self.refs[i].get();
            if !r.recursive() {
                let a = r.tok().addr();
                let mut j = k;
                while j > 0 && self.refs[idx[j - 1] as usize].get().tok().addr() > a {
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
            let tok = unsafe { &*r.tok() };
            // SAFETY: as in `acquire_in_order`.
            if !unsafe { try_acquire(tok, r.mode(), self.owner(), pos > 0) } {
                tok.note_collision();
                for &j in idx[..pos].iter().rev() {
                    let q = self.refs[j as usize].get();
                    // SAFETY: acquired just above.
                    unsafe { release(&*q.tok(), q.mode()) };
                }
                return false;
            }
        }
        true
    }
}

#[cold]
#[inline(never)]
fn not_held(tok: &Token) -> ! {
    panic!(
        "lwkt: release of token '{}' that this thread does not hold",
        tok.name()
    )
}

#[cold]
#[inline(never)]
fn closure_end_broken(tok: &Token) -> ! {
    crate::abort(format_args!(
        "lwkt: token '{}' is not the held top of its thread's token stack at the end of \
         its closure (the stack's unsafe API was misused; aborting)",
        tok.name()
    ))
}

#[cold]
#[inline(never)]
fn not_lifo(tok: &Token) -> ! {
    panic!(
        "lwkt: tokens must be released in LIFO order ('{}' is not the most recent)",
        tok.name()
    )
}

/// # Safety
/// `owner` is the id of the stack `tok`'s reference is on, acquired on
/// behalf of that stack's thread.
unsafe fn try_acquire(tok: &Token, mode: Mode, owner: OwnerId, holds_others: bool) -> bool {
    match mode {
        // SAFETY: forwarded.
        Mode::Exclusive => unsafe { tok.try_exclusive(owner, true) },
        Mode::Shared => tok.try_shared(!holds_others),
    }
}

/// # Safety
/// The caller holds `tok` in `mode`.
#[inline(always)]
unsafe fn release(tok: &Token, mode: Mode) {
    // SAFETY: forwarded.
    unsafe {
        match mode {
            Mode::Exclusive => tok.release_exclusive(),
            Mode::Shared => tok.release_shared(),
        }
    }
}
