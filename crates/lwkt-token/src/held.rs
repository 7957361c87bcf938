//! Holding tokens from Rust: the closure-scoped API and the cell whose data
//! only the current holder can reach.
//!
//! DragonFly: `lwkt_gettoken()`, `lwkt_gettoken_shared()`, `lwkt_trytoken()`,
//! `lwkt_reltoken()`.
//!
//! Every hold ends in a drop guard ([`Hold`]), so it ends whether its closure
//! returns or unwinds: a panic caught by `catch_unwind` leaves no reference
//! on the thread's stack to a token that may be freed afterwards (issue 15,
//! hole 1). What cannot be put right (the closure replaced the thread
//! handle, or broke the stack through its `unsafe` API) aborts: unwinding
//! would let the caller free a token the stack still points at.

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;

use crate::stack::{Mode, OwnerId, Pushed, Slot, TokenStack};
use crate::token::Token;

/// A running thread that can hold tokens: the bridge to a scheduler.
/// lwkt-core implements it for its `Cur`; a kernel with its own scheduler
/// implements it for its own current-thread handle.
///
/// # Safety
///
/// - `token_stack` returns the stack of the thread that is running this
///   code, the same one every time for that thread;
/// - while the thread runs, every reference on its stack is held (the
///   scheduler calls [`TokenStack::release_all`] when it switches the thread
///   out and resumes it only after [`TokenStack::acquire_all`] succeeded);
/// - `wait_for_tokens` blocks the thread and returns only once that is so.
///   If it unwinds instead, it does so before releasing anything (the
///   reference being acquired is then dropped), or the process aborts.
///
/// Everything that may block must take `&mut self` (as `wait_for_tokens`
/// does): [`TokenCell`] data borrowed through `&self` must not outlive a
/// blocking point.
///
/// One thread uses one `TokenThread`. A second one used inside it (a
/// [`SpinThread`](crate::SpinThread) inside an lwkt thread) keeps its tokens
/// when the first one blocks: not undefined behaviour, but the tokens rule
/// is gone, and with it the freedom from deadlock.
pub unsafe trait TokenThread {
    /// This thread's token references.
    fn token_stack(&self) -> &TokenStack;
    /// Block until the scheduler has acquired every reference on the stack.
    fn wait_for_tokens(&mut self);
}

/// Marker: a hold that excludes every other holder.
#[derive(Debug)]
pub enum Exclusive {}
/// Marker: a hold shared with other shared holders.
#[derive(Debug)]
pub enum Shared {}

/// Invariant in `'h` (so the brand cannot be shortened or widened), `!Send`
/// and `!Sync`, carrying the hold's mode `M`.
type Brand<'h, M> = PhantomData<(fn(&'h ()) -> &'h (), M, *mut ())>;

/// Proof that the current thread holds a token, valid inside one
/// [`with_token`] closure (the `'h` brand keeps it from leaving it).
///
/// It names the holder by its stack's owner id, not by address: a closure
/// may move the thread handle's contents out (`mem::replace` of a
/// [`SpinThread`](crate::SpinThread)) and a fresh stack then sits at the
/// holder's address, holding nothing.
pub struct Held<'h, M> {
    tok: *const Token,
    owner: usize,
    _brand: Brand<'h, M>,
}

impl<M> fmt::Debug for Held<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Held").field(&self.token().name()).finish()
    }
}

impl<M> Held<'_, M> {
    /// The token held.
    ///
    /// ```
    /// use lwkt_token::{with_token, SpinThread, Token};
    /// static TOK: Token = Token::new("named");
    /// let mut me = SpinThread::new();
    /// with_token(&mut me, &TOK, |_, held| assert_eq!(held.token().name(), "named"));
    /// ```
    pub fn token(&self) -> &Token {
        // SAFETY: the token outlives the hold: the function that made this
        // `Held` borrows it for longer than the closure the `Held` is
        // confined to (the `'h` brand).
        unsafe { &*self.tok }
    }
}

/// Take `tok` in `mode` for a thread that does not hold it exclusively;
/// `owner` is its stack's id.
#[inline(always)]
fn acquire<C: TokenThread + ?Sized>(cur: &mut C, tok: &Token, mode: Mode, owner: OwnerId) -> Slot {
    let st = cur.token_stack();
    // SAFETY: the running thread's own stack, all its references held; the
    // reference is popped by the `Hold` made right after, while `tok` is
    // still borrowed.
    let fast = unsafe {
        match mode {
            Mode::Exclusive => st.push_exclusive_free(tok, owner),
            Mode::Shared => st.push_shared_first(tok),
        }
    };
    match fast {
        Some(slot) => slot,
        None => acquire_slow(cur, tok, mode),
    }
}

/// Everything the fast path leaves: a busy token (spin a little with
/// back-off, then let the scheduler wait: it acquires every reference before
/// we run again), a shared nested hold found by scanning, misuse.
#[cold]
#[inline(never)]
fn acquire_slow<C: TokenThread + ?Sized>(cur: &mut C, tok: &Token, mode: Mode) -> Slot {
    let st = cur.token_stack();
    // SAFETY: as in `acquire`.
    match unsafe { st.push(tok, mode) } {
        Err(e) => panic!("{e}"),
        Ok(Pushed::Recursive) => return st.top_slot(),
        Ok(Pushed::New) => {}
    }
    // SAFETY: as above; the top reference was just pushed and is not held.
    if unsafe { st.try_top(true) } {
        return st.top_slot();
    }
    #[allow(clippy::reversed_empty_ranges)] // one try under loom
    for i in 1..crate::sync::SPIN_TRIES {
        for _ in 0..(1u32 << i.min(6)) {
            crate::sync::spin_loop();
        }
        // SAFETY: as above.
        if unsafe { st.try_top(true) } {
            return st.top_slot();
        }
    }
    let owner = st.owner_id();
    let wait = Waiting { cur, tok, owner };
    wait.cur.wait_for_tokens();
    let st = wait.cur.token_stack();
    debug_assert!(st.all_held());
    st.top_slot()
}

/// Drops the reference being acquired if `wait_for_tokens` unwinds before
/// it released anything (lwkt-core's does when asked to block in interrupt
/// context); aborts if it unwound having released the thread's tokens.
struct Waiting<'c, 't, C: TokenThread + ?Sized> {
    cur: &'c mut C,
    tok: &'t Token,
    owner: usize,
}

impl<C: TokenThread + ?Sized> Drop for Waiting<'_, '_, C> {
    fn drop(&mut self) {
        let st = self.cur.token_stack();
        if st.all_held() {
            return; // the wait succeeded
        }
        // SAFETY: the running thread's own stack (same id); `tok` is the
        // top reference, pushed by `acquire_slow` and not held.
        if st.raw_id() != self.owner || !unsafe { st.abandon_unheld_top(self.tok) } {
            crate::abort(format_args!(
                "lwkt: wait_for_tokens unwound with the thread's tokens released \
                 (waiting for '{}'); they cannot be restored (aborting)",
                self.tok.name()
            ));
        }
    }
}

/// How a hold ends.
#[derive(Clone, Copy)]
enum End {
    /// A nested hold of a token the thread holds exclusively: uncounted.
    Nested,
    /// A reference stored at the slot, held in the mode: popped.
    Stored(Mode, Slot),
}

/// Ends a hold if its closure unwinds (the normal path ends it itself,
/// with the values in registers). It carries the closure's [`Held`] (in
/// memory anyway: the closure gets a reference to it), the thread handle,
/// and how the hold ends.
struct Hold<'h, C: TokenThread + ?Sized, M> {
    held: Held<'h, M>,
    /// The `&mut C` given to `run`; used here only once the closure, which
    /// had it reborrowed, has unwound.
    cur: *mut C,
    end: End,
}

impl<C: TokenThread + ?Sized, M> Drop for Hold<'_, C, M> {
    #[cold]
    fn drop(&mut self) {
        // SAFETY: `cur` came from the `&mut C` `run` was given; the
        // closure's reborrow of it ended as the closure unwound, and nothing
        // else uses it meanwhile.
        let cur = unsafe { &*self.cur };
        end_hold(cur, self.held.token(), self.held.owner, self.end);
    }
}

/// End a hold on the stack that took it (checked by owner id: the closure
/// may have replaced the handle's contents, and then the reference cannot
/// be reached: abort).
#[inline(always)]
fn end_hold<C: TokenThread + ?Sized>(cur: &C, tok: &Token, owner: usize, end: End) {
    let st = cur.token_stack();
    if st.raw_id() != owner {
        replaced(tok);
    }
    match end {
        // SAFETY: the running thread's own stack (its id is the one that
        // took the hold), pairing with the `nest` in `run`.
        End::Nested => unsafe { st.unnest() },
        // SAFETY: as above; our reference, pushed at `slot` in `mode`
        // (`pop_slot` checks that it is on top, and aborts if not).
        End::Stored(mode, slot) => unsafe { st.pop_slot(tok, mode, slot) },
    }
}

#[cold]
#[inline(never)]
fn replaced(tok: &Token) -> ! {
    crate::abort(format_args!(
        "lwkt: the thread handle was replaced inside a closure holding token '{}': \
         the stack that holds it is out of reach (aborting)",
        tok.name()
    ))
}

/// Run `f` under the hold of `tok` that ends as `end` says, ending it when
/// `f` returns or unwinds.
#[inline(always)]
fn run<C, M, R>(
    cur: &mut C,
    tok: &Token,
    owner: OwnerId,
    end: End,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, M>) -> R,
) -> R
where
    C: TokenThread + ?Sized,
{
    let st = cur.token_stack();
    if let End::Nested = end {
        // SAFETY: the running thread's own stack; it holds `tok`
        // exclusively; the `Hold` below pairs it with an `unnest`.
        unsafe { st.nest() };
    }
    let cur: *mut C = cur;
    let g = Hold {
        held: Held {
            tok,
            owner: owner.get(),
            _brand: PhantomData,
        },
        cur,
        end,
    };
    // SAFETY: `cur` is the `&mut C` we were given, reborrowed for `f` alone
    // (`g` touches it only if `f` unwinds, after the reborrow ended).
    let r = f(unsafe { &mut *cur }, &g.held);
    core::mem::forget(g);
    // SAFETY: as above; `f`'s reborrow has ended.
    end_hold(unsafe { &*cur }, tok, owner.get(), end);
    r
}

#[inline(always)]
fn with_mode<C, M, R>(
    cur: &mut C,
    tok: &Token,
    mode: Mode,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, M>) -> R,
) -> R
where
    C: TokenThread + ?Sized,
{
    let owner = cur.token_stack().owner();
    if tok.is_held_by(owner) {
        return run(cur, tok, owner, End::Nested, f);
    }
    let slot = acquire(cur, tok, mode, owner);
    run(cur, tok, owner, End::Stored(mode, slot), f)
}

/// Hold `tok` exclusively while `f` runs. DragonFly: `lwkt_gettoken()` ...
/// `lwkt_reltoken()`.
///
/// If the token is busy this blocks. If `f` blocks (anything taking
/// `&mut` of the thread handle), the token is released meanwhile and held
/// again before `f` continues: **data it protects may have changed across
/// every blocking call**. Taking a token the thread already holds nests at
/// no cost.
///
/// If `f` panics, the hold ends as the panic unwinds (a `catch_unwind`
/// further out finds the token released and off the thread's stack).
///
/// ```
/// use lwkt_token::{with_token, SpinThread, Token};
/// static TOK: Token = Token::new("t");
/// let mut me = SpinThread::new();
/// let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
///     with_token(&mut me, &TOK, |_, _| panic!("oops"))
/// }));
/// assert!(caught.is_err());
/// assert_eq!(TOK.exclusive_owner(), 0); // released on the way out
/// ```
///
/// # Panics
/// With more than [`MAX_TOKENS`](crate::MAX_TOKENS) references, or when the
/// thread holds `tok` only shared (that could never succeed).
///
/// # Aborts
/// If `f` replaces the thread handle's contents (`mem::replace` of a
/// [`SpinThread`](crate::SpinThread)) and does not put them back: the stack
/// holding the token is out of reach, and the caller may free the token.
pub fn with_token<C, R>(
    cur: &mut C,
    tok: &Token,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, Exclusive>) -> R,
) -> R
where
    C: TokenThread + ?Sized,
{
    with_mode(cur, tok, Mode::Exclusive, f)
}

/// Hold `tok` shared while `f` runs. DragonFly: `lwkt_gettoken_shared()`.
/// As [`with_token`] otherwise (unwinding, panics, aborts).
///
/// ```
/// use lwkt_token::{with_token_shared, SpinThread, Token, TokenCell};
/// static TOK: Token = Token::new("config");
/// static LIMIT: TokenCell<'static, u32> = TokenCell::new(&TOK, 64);
/// let mut me = SpinThread::new();
/// assert_eq!(with_token_shared(&mut me, &TOK, |me, h| *LIMIT.get(h, me)), 64);
/// ```
pub fn with_token_shared<C, R>(
    cur: &mut C,
    tok: &Token,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, Shared>) -> R,
) -> R
where
    C: TokenThread + ?Sized,
{
    with_mode(cur, tok, Mode::Shared, f)
}

/// Hold `tok` exclusively while `f` runs if it can be had without waiting;
/// `None` otherwise. DragonFly: `lwkt_trytoken()`. As [`with_token`]
/// otherwise (unwinding, panics, aborts).
///
/// ```
/// use lwkt_token::{try_with_token, SpinThread, Token};
/// static TOK: Token = Token::new("t");
/// let mut me = SpinThread::new();
/// assert_eq!(try_with_token(&mut me, &TOK, |_, _| 1), Some(1));
/// ```
pub fn try_with_token<C, R>(
    cur: &mut C,
    tok: &Token,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, Exclusive>) -> R,
) -> Option<R>
where
    C: TokenThread + ?Sized,
{
    let st = cur.token_stack();
    let owner = st.owner();
    if tok.is_held_by(owner) {
        return Some(run(cur, tok, owner, End::Nested, f));
    }
    // SAFETY: the running thread's own stack, all its references held; the
    // reference is popped by the `Hold` `run` makes, while `tok` is borrowed.
    let slot = match unsafe { st.push_exclusive_free(tok, owner) } {
        Some(slot) => slot,
        None => try_slow(st, tok)?,
    };
    Some(run(cur, tok, owner, End::Stored(Mode::Exclusive, slot), f))
}

/// `try_with_token` when the fast path could not decide: without waiting.
#[cold]
#[inline(never)]
fn try_slow(st: &TokenStack, tok: &Token) -> Option<Slot> {
    // SAFETY: as in `try_with_token`.
    match unsafe { st.push(tok, Mode::Exclusive) } {
        Err(e) => panic!("{e}"),
        Ok(Pushed::Recursive) => {}
        Ok(Pushed::New) => {
            // SAFETY: as above; the top reference was just pushed.
            if !unsafe { st.try_top(false) } {
                // SAFETY: the top reference is ours and not held.
                unsafe { st.abandon_top(tok) };
                return None;
            }
        }
    }
    Some(st.top_slot())
}

/// Data protected by a token. Reach it with the current thread's handle and
/// a [`Held`] proof for that token:
///
/// - [`get`](TokenCell::get) borrows the handle shared: no blocking call
///   (they all take it `&mut`) can happen while the `&T` lives;
/// - [`get_mut`](TokenCell::get_mut) needs an exclusive hold and borrows the
///   handle mutably, so at most one `&mut T` exists, even under recursion.
///
/// DragonFly has no such type: there, any code may touch token-protected
/// data, and "re-check after blocking" is a comment in the man page. Here
/// the borrow checker enforces it.
///
/// ```
/// use lwkt_token::{with_token, Token, TokenCell};
/// # use lwkt_token::SpinThread as Thread;
/// static TOK: Token = Token::new("counter");
/// static COUNT: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
/// # let mut cur = Thread::new();
/// with_token(&mut cur, &TOK, |cur, held| {
///     *COUNT.get_mut(held, cur) += 1;
///     assert_eq!(*COUNT.get(held, cur), 1);
/// });
/// ```
///
/// A reference into the data cannot live across a blocking call:
///
/// ```compile_fail
/// use lwkt_token::{with_token, Token, TokenCell, TokenThread};
/// # use lwkt_token::SpinThread as Thread;
/// static TOK: Token = Token::new("t");
/// static DATA: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
/// # let mut cur = Thread::new();
/// with_token(&mut cur, &TOK, |cur, held| {
///     let v = DATA.get(held, cur);
///     cur.wait_for_tokens(); // blocks: the token may change hands here
///     println!("{v}");       // error: `cur` is still borrowed by `v`
/// });
/// ```
///
/// Two `&mut` to the same data cannot coexist, even with the token taken
/// twice:
///
/// ```compile_fail
/// use lwkt_token::{with_token, Token, TokenCell};
/// # use lwkt_token::SpinThread as Thread;
/// static TOK: Token = Token::new("t");
/// static DATA: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
/// # let mut cur = Thread::new();
/// with_token(&mut cur, &TOK, |cur, h1| {
///     let a = DATA.get_mut(h1, cur);
///     with_token(cur, &TOK, |cur, h2| { // error: `cur` is borrowed by `a`
///         *DATA.get_mut(h2, cur) += 1;
///     });
///     *a += 1;
/// });
/// ```
///
/// A hold cannot leave its closure:
///
/// ```compile_fail
/// use lwkt_token::{with_token, Token};
/// # use lwkt_token::SpinThread as Thread;
/// static TOK: Token = Token::new("t");
/// # let mut cur = Thread::new();
/// let escaped = with_token(&mut cur, &TOK, |_, held| held);
/// ```
///
/// A shared hold gives only `&T`:
///
/// ```compile_fail
/// use lwkt_token::{with_token_shared, Token, TokenCell};
/// # use lwkt_token::SpinThread as Thread;
/// static TOK: Token = Token::new("t");
/// static DATA: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
/// # let mut cur = Thread::new();
/// with_token_shared(&mut cur, &TOK, |cur, held| *DATA.get_mut(held, cur) += 1);
/// ```
pub struct TokenCell<'t, T: ?Sized> {
    token: &'t Token,
    data: UnsafeCell<T>,
}

// SAFETY: the data is reached only by a thread holding `token` (checked on
// every access): exclusively for `&mut T` (so `T: Send` suffices to hand it
// between threads), or by several shared holders at once for `&T` (so
// `T: Sync` too).
unsafe impl<T: ?Sized + Send + Sync> Sync for TokenCell<'_, T> {}

impl<T: ?Sized> fmt::Debug for TokenCell<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCell")
            .field("token", &self.token.name())
            .finish_non_exhaustive()
    }
}

impl<'t, T> TokenCell<'t, T> {
    /// Data `value` protected by `token`.
    pub const fn new(token: &'t Token, value: T) -> Self {
        TokenCell {
            token,
            data: UnsafeCell::new(value),
        }
    }

    /// The data, when nobody else can reach the cell.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<'t, T: ?Sized> TokenCell<'t, T> {
    /// The protecting token.
    pub fn token(&self) -> &'t Token {
        self.token
    }

    fn check<M, C: TokenThread + ?Sized>(&self, held: &Held<'_, M>, cur: &C) {
        assert!(
            ptr::eq(held.tok, self.token),
            "lwkt: token '{}' does not protect this cell (its token is '{}')",
            held.token().name(),
            self.token.name()
        );
        assert!(
            held.owner == cur.token_stack().raw_id(),
            "lwkt: a token hold of another thread (or of a replaced thread handle) was used"
        );
    }

    /// Read the data. The `&T` borrows the thread handle, so it cannot live
    /// across a blocking call.
    ///
    /// # Panics
    /// If `held` is for another token or another thread.
    pub fn get<'a, M, C: TokenThread + ?Sized>(&'a self, held: &Held<'_, M>, cur: &'a C) -> &'a T {
        self.check(held, cur);
        // SAFETY: the running thread holds the token (`held`, checked to be
        // this cell's token and this thread's hold; a running thread holds
        // all its tokens), so only shared holders may exist, and no `&mut T`
        // exists in this thread: `get_mut` needs `cur` mutably, and `cur` is
        // borrowed shared for `'a`.
        unsafe { &*self.data.get() }
    }

    /// Change the data (exclusive hold only). The `&mut T` borrows the
    /// thread handle mutably: nothing else can touch it meanwhile.
    ///
    /// # Panics
    /// If `held` is for another token or another thread.
    #[allow(clippy::mut_from_ref)]
    pub fn get_mut<'a, C: TokenThread + ?Sized>(
        &'a self,
        held: &Held<'_, Exclusive>,
        cur: &'a mut C,
    ) -> &'a mut T {
        self.check(held, &*cur);
        // SAFETY: the running thread holds the token exclusively (checked as
        // in `get`), so no other thread touches the data; within this thread
        // every access borrows `cur`, which is borrowed mutably for `'a`.
        unsafe { &mut *self.data.get() }
    }

    /// The data, through exclusive access to the cell itself.
    pub fn get_mut_unprotected(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Take the token exclusively for code outside any LWKT thread (a
    /// plain OS thread, a test's assertions after its machine stopped, a
    /// `static` cell) and run `f` on the data. It spins while another
    /// thread holds the token (an LWKT thread that blocks releases its
    /// tokens, so it is never waited for across a block).
    ///
    /// Inside an LWKT thread use its `Cur` (`with_token`): this call takes
    /// the token for a separate, spinning token stack, so a thread that
    /// already holds the token waits for itself for ever (a deadlock, not
    /// undefined behaviour). DragonFly has no such call: its code always
    /// runs in a thread.
    ///
    /// ```
    /// use lwkt_token::{Token, TokenCell};
    /// static TOK: Token = Token::new("stats");
    /// static COUNT: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    /// COUNT.with_spin(|n| *n += 2);
    /// assert_eq!(COUNT.with_spin_shared(|n| *n), 2);
    /// ```
    pub fn with_spin<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut me = crate::SpinThread::new();
        with_token(&mut me, self.token, |me, held| f(self.get_mut(held, me)))
    }

    /// As [`with_spin`](Self::with_spin), with a shared hold: other shared
    /// holders may read meanwhile.
    pub fn with_spin_shared<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        let mut me = crate::SpinThread::new();
        with_token_shared(&mut me, self.token, |me, held| f(self.get(held, me)))
    }
}
