//! Holding tokens from Rust: the closure-scoped API and the cell whose data
//! only the current holder can reach.
//!
//! DragonFly: `lwkt_gettoken()`, `lwkt_gettoken_shared()`, `lwkt_trytoken()`,
//! `lwkt_reltoken()`.

use core::cell::UnsafeCell;
use core::fmt;
use core::marker::PhantomData;
use core::ptr;

use crate::stack::{Mode, Pushed, Slot, TokenStack};
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
///
/// Everything that may block must take `&mut self` (as `wait_for_tokens`
/// does): [`TokenCell`] data borrowed through `&self` must not outlive a
/// blocking point.
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
pub struct Held<'h, M> {
    tok: *const Token,
    stack: *const TokenStack,
    _brand: Brand<'h, M>,
}

impl<M> fmt::Debug for Held<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: the token outlives the hold (`with_token` borrows it).
        f.debug_tuple("Held")
            .field(&unsafe { &*self.tok }.name())
            .finish()
    }
}

impl<M> Held<'_, M> {
    /// The token held.
    pub fn token(&self) -> &Token {
        // SAFETY: as in `Debug`.
        unsafe { &*self.tok }
    }
}

/// Take `tok` in `mode` for a thread that does not hold it exclusively.
#[inline(always)]
fn acquire<C: TokenThread + ?Sized>(cur: &mut C, tok: &Token, mode: Mode) -> Slot {
    let st = cur.token_stack();
    // SAFETY: the running thread's own stack, all its references held.
    let fast = unsafe {
        match mode {
            Mode::Exclusive => st.push_exclusive_free(tok),
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
    // SAFETY: the running thread's own stack, all its references held.
    match unsafe { st.push(tok, mode) } {
        Err(e) => panic!("{e}"),
        Ok(Pushed::Recursive) => return st.top_slot(),
        Ok(Pushed::New) => {}
    }
    // SAFETY: as above; the top reference was just pushed and is not held.
    if unsafe { st.try_top(true) } {
        return st.top_slot();
    }
    for i in 1..crate::sync::SPIN_TRIES {
        for _ in 0..(1u32 << i.min(6)) {
            crate::sync::spin_loop();
        }
        // SAFETY: as above.
        if unsafe { st.try_top(true) } {
            return st.top_slot();
        }
    }
    cur.wait_for_tokens();
    let st = cur.token_stack();
    debug_assert!(st.all_held());
    st.top_slot()
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
    if cur.token_stack().holds_exclusive(tok) {
        return run_nested(cur, tok, f);
    }
    let slot = acquire(cur, tok, mode);
    run_stored(cur, tok, mode, slot, f)
}

/// Run `f` under a nested hold of `tok`, which the thread holds
/// exclusively: counted, nothing to acquire or release.
#[inline(always)]
fn run_nested<C, M, R>(
    cur: &mut C,
    tok: &Token,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, M>) -> R,
) -> R
where
    C: TokenThread + ?Sized,
{
    let st = cur.token_stack();
    // SAFETY: the running thread's own stack; it holds `tok` exclusively.
    unsafe { st.nest() };
    let h = held(st, tok);
    let r = f(cur, &h);
    // SAFETY: pairs with the `nest` above.
    unsafe { cur.token_stack().unnest() };
    r
}

/// Run `f` under the hold the thread has just taken on `tok` in `mode`,
/// recorded at `slot`, then drop it (it is on top: closures nest).
#[inline(always)]
fn run_stored<C, M, R>(
    cur: &mut C,
    tok: &Token,
    mode: Mode,
    slot: Slot,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, M>) -> R,
) -> R
where
    C: TokenThread + ?Sized,
{
    let h = held(cur.token_stack(), tok);
    let r = f(cur, &h);
    // SAFETY: our reference, pushed at `slot`, held (we run).
    unsafe { cur.token_stack().pop_slot(tok, mode, slot) };
    r
}

/// The proof of a hold the thread owning `stack` has just taken on `tok`.
#[inline(always)]
fn held<'h, M>(stack: &TokenStack, tok: &Token) -> Held<'h, M> {
    Held {
        tok,
        stack,
        _brand: PhantomData,
    }
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
/// # Panics
/// With more than [`MAX_TOKENS`](crate::MAX_TOKENS) references, or when the
/// thread holds `tok` only shared (that could never succeed).
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
/// `None` otherwise. DragonFly: `lwkt_trytoken()`.
pub fn try_with_token<C, R>(
    cur: &mut C,
    tok: &Token,
    f: impl for<'h> FnOnce(&mut C, &Held<'h, Exclusive>) -> R,
) -> Option<R>
where
    C: TokenThread + ?Sized,
{
    let st = cur.token_stack();
    if st.holds_exclusive(tok) {
        return Some(run_nested(cur, tok, f));
    }
    // SAFETY: the running thread's own stack, all its references held.
    let slot = match unsafe { st.push_exclusive_free(tok) } {
        Some(slot) => slot,
        None => try_slow(st, tok)?,
    };
    Some(run_stored(cur, tok, Mode::Exclusive, slot, f))
}

/// `try_with_token` when the fast path could not decide: without waiting.
#[cold]
#[inline(never)]
fn try_slow(st: &TokenStack, tok: &Token) -> Option<Slot> {
    // SAFETY: the running thread's own stack, all its references held.
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
            ptr::eq(held.stack, cur.token_stack()),
            "lwkt: a token hold of another thread was used"
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
}
