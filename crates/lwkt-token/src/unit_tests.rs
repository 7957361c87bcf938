//! Deterministic tests of the token stack and cells (these also run under
//! Miri, which checks the raw-pointer and `UnsafeCell` code).

use std::string::ToString;
use std::sync::Arc;
use std::vec::Vec;

use crate::{
    try_with_token, with_token, with_token_shared, Mode, Pushed, SpinThread, Token, TokenCell,
    TokenError, TokenStack, MAX_TOKENS,
};

#[test]
fn stack_push_pop_recursion_and_release_all() {
    let (a, b) = (Token::new("a"), Token::new("b"));
    let st = TokenStack::new();
    // SAFETY: one stack, one thread.
    unsafe {
        assert_eq!(st.push(&a, Mode::Exclusive), Ok(Pushed::New));
        assert!(st.try_top(true));
        assert_eq!(st.push(&a, Mode::Shared), Ok(Pushed::Recursive));
        assert_eq!(st.push(&b, Mode::Shared), Ok(Pushed::New));
        assert!(st.try_top(true));
        assert_eq!(b.shared_holders(), 1);
        assert_eq!(a.exclusive_owner(), st.owner_id());
        st.release_all();
        assert_eq!(a.exclusive_owner(), 0);
        assert_eq!(b.shared_holders(), 0);
        assert!(st.acquire_all());
        assert!(st.all_held());
        st.pop(&b);
        st.pop(&a);
        st.pop(&a);
    }
    assert!(st.is_empty());
    assert_eq!(a.exclusive_owner(), 0);
}

#[test]
fn stack_refuses_overflow_and_upgrade() {
    let toks: Vec<Token> = (0..=MAX_TOKENS).map(|_| Token::new("t")).collect();
    let st = TokenStack::new();
    // SAFETY: one stack, one thread.
    unsafe {
        for t in &toks[..MAX_TOKENS] {
            assert_eq!(st.push(t, Mode::Shared), Ok(Pushed::New));
            assert!(st.try_top(false));
        }
        assert_eq!(
            st.push(&toks[MAX_TOKENS], Mode::Shared),
            Err(TokenError::TooManyTokens)
        );
        assert_eq!(
            st.push(&toks[0], Mode::Exclusive),
            Err(TokenError::TooManyTokens),
            "full stack refuses before anything else"
        );
        st.pop(&toks[MAX_TOKENS - 1]);
        assert_eq!(
            st.push(&toks[0], Mode::Exclusive),
            Err(TokenError::ExclusiveWhileShared { token: "t" })
        );
        for t in toks[..MAX_TOKENS - 1].iter().rev() {
            st.pop(t);
        }
    }
    assert_eq!(
        TokenError::TooManyTokens.to_string(),
        "lwkt: a thread may hold at most 32 token references (LWKT_MAXTOKENS)"
    );
}

#[test]
fn sorted_reacquisition_after_repeated_failure() {
    let (a, b) = (Token::new("a"), Token::new("b"));
    let st = TokenStack::new();
    let other = TokenStack::new();
    // SAFETY: each stack used by one simulated thread.
    unsafe {
        assert_eq!(st.push(&b, Mode::Exclusive), Ok(Pushed::New));
        assert!(st.try_top(true));
        assert_eq!(st.push(&a, Mode::Exclusive), Ok(Pushed::New));
        assert!(st.try_top(true));
        st.release_all();
        // Someone else holds `a`: every attempt fails, past the sorted threshold.
        assert_eq!(other.push(&a, Mode::Exclusive), Ok(Pushed::New));
        assert!(other.try_top(true));
        for _ in 0..=crate::SORTED_AFTER + 1 {
            assert!(!st.acquire_all());
            assert_eq!(b.exclusive_owner(), 0, "all or nothing");
        }
        other.pop(&a);
        assert!(st.acquire_all());
        st.pop(&a);
        st.pop(&b);
    }
    assert!(st.failed_acquisitions() > crate::SORTED_AFTER as u64);
}

#[test]
fn cells_under_spin_threads_exclude_each_other() {
    static TOK: Token = Token::new("cell");
    static DATA: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    const N: u64 = if cfg!(miri) { 20 } else { 10_000 };
    let hs: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(|| {
                let mut me = SpinThread::new();
                for _ in 0..N {
                    with_token(&mut me, &TOK, |me, held| {
                        let v = *DATA.get(held, me);
                        *DATA.get_mut(held, me) = v + 1;
                    });
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let mut me = SpinThread::new();
    assert_eq!(
        with_token_shared(&mut me, &TOK, |me, held| *DATA.get(held, me)),
        3 * N
    );
    let held_elsewhere = Arc::new(Token::new("busy"));
    let other = SpinThread::new();
    // SAFETY: `other`'s stack is used only here, by this thread.
    unsafe {
        other
            .token_stack_for_test()
            .push(&held_elsewhere, Mode::Exclusive)
            .unwrap();
        assert!(other.token_stack_for_test().try_top(true));
    }
    assert_eq!(try_with_token(&mut me, &held_elsewhere, |_, _| ()), None);
    assert_eq!(me_len(&me), 0, "a failed try leaves nothing behind");
}

fn me_len(t: &SpinThread) -> usize {
    use crate::TokenThread;
    t.token_stack().len()
}

impl SpinThread {
    fn token_stack_for_test(&self) -> &TokenStack {
        use crate::TokenThread;
        self.token_stack()
    }
}

#[test]
fn nested_holds_are_counted_and_release_nothing() {
    let (a, b) = (Token::new("a"), Token::new("b"));
    let mut me = SpinThread::new();
    with_token(&mut me, &a, |me, _| {
        assert_eq!(me_len(me), 1);
        with_token(me, &a, |me, _| {
            assert_eq!(me_len(me), 2);
            with_token_shared(me, &a, |me, _| assert_eq!(me_len(me), 3));
            assert_eq!(try_with_token(me, &a, |me, _| me_len(me)), Some(3));
            with_token_shared(me, &b, |me, _| {
                assert_eq!(me_len(me), 3);
                // A nested shared hold of a shared token is found by scanning.
                with_token_shared(me, &b, |me, _| assert_eq!(me_len(me), 4));
                assert_eq!(b.shared_holders(), 1);
            });
            assert_eq!(b.shared_holders(), 0);
        });
        assert_eq!(me_len(me), 1);
        assert_eq!(a.exclusive_owner(), me.token_stack_for_test().owner_id());
    });
    assert_eq!(me_len(&me), 0);
    assert_eq!(a.exclusive_owner(), 0);
}

/// Owner ids are not addresses: a fresh thread that ends up where a holder
/// used to be does not inherit its holds.
#[test]
fn a_stack_at_a_holders_old_address_does_not_hold_its_tokens() {
    let a = Token::new("a");
    let mut me = SpinThread::new();
    with_token(&mut me, &a, |me, _| {
        let holder = core::mem::replace(me, SpinThread::new());
        assert_eq!(try_with_token(me, &a, |_, _| ()), None);
        assert_ne!(a.exclusive_owner(), me.token_stack_for_test().owner_id());
        *me = holder;
        assert_eq!(try_with_token(me, &a, |me, _| me_len(me)), Some(2));
    });
    assert_eq!(a.exclusive_owner(), 0);
}

/// Issue 15, hole 1: a closure that panics, caught by `catch_unwind`, must
/// not leave its hold on the thread's stack. Here the token lives in a box
/// dropped right after; its memory is taken by a canary, and the stack then
/// releases and re-acquires everything (what blocking does): a dead
/// reference left on the stack would write into the canary.
#[test]
fn an_unwound_closure_releases_its_token() {
    use std::boxed::Box;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    const CANARY: usize = 0xA5A5_A5A5_A5A5_A5A5;
    let outer = Token::new("outer");
    let mut me = SpinThread::new();
    with_token(&mut me, &outer, |me, _| {
        for way in 0..3 {
            let boxed = Box::new(Token::new("boxed"));
            let r = catch_unwind(AssertUnwindSafe(|| match way {
                0 => with_token(me, &boxed, |_, _| panic!("exclusive")),
                1 => with_token_shared(me, &boxed, |_, _| panic!("shared")),
                _ => try_with_token(me, &boxed, |_, _| panic!("try")).unwrap(),
            }));
            assert!(r.is_err());
            assert_eq!(me_len(me), 1, "way {way}: the unwound hold was popped");
            assert_eq!(boxed.exclusive_owner(), 0, "way {way}: released");
            assert_eq!(boxed.shared_holders(), 0, "way {way}: released");
            drop(boxed);
            let canary: Vec<Box<[usize; 5]>> = (0..8).map(|_| Box::new([CANARY; 5])).collect();
            let st = me.token_stack_for_test();
            // SAFETY: our own stack, not used elsewhere meanwhile: what
            // `wait_for_tokens` does when a token is busy.
            unsafe {
                st.release_all();
                assert!(st.acquire_all());
            }
            for c in &canary {
                assert_eq!(**c, [CANARY; 5], "way {way}: a dead token was written");
            }
        }
    });
    assert_eq!(outer.exclusive_owner(), 0);
}

/// Hole 1, nested holds: an unwound nested hold is uncounted.
#[test]
fn an_unwound_nested_hold_is_uncounted() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    let a = Token::new("a");
    let mut me = SpinThread::new();
    with_token(&mut me, &a, |me, _| {
        let r = catch_unwind(AssertUnwindSafe(|| {
            with_token(me, &a, |me, _| {
                assert_eq!(me_len(me), 2);
                panic!("nested")
            })
        }));
        assert!(r.is_err());
        assert_eq!(me_len(me), 1);
    });
    assert_eq!(me_len(&me), 0);
    assert_eq!(a.exclusive_owner(), 0);
}

/// A thread whose `wait_for_tokens` unwinds (lwkt-core's does when asked to
/// block in interrupt context): the reference being acquired is dropped.
#[test]
fn an_unwinding_wait_leaves_no_reference() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    struct CannotBlock(TokenStack);
    // SAFETY: the stack is this object's own; it never blocks (it panics
    // before changing anything), so every reference is held while it runs.
    unsafe impl crate::TokenThread for CannotBlock {
        fn token_stack(&self) -> &TokenStack {
            &self.0
        }
        fn wait_for_tokens(&mut self) {
            panic!("cannot block here");
        }
    }
    let (a, busy) = (Token::new("a"), Token::new("busy"));
    let other = TokenStack::new();
    // SAFETY: `other` is used only here, by this thread.
    unsafe {
        other.push(&busy, Mode::Exclusive).unwrap();
        assert!(other.try_top(true));
    }
    let mut me = CannotBlock(TokenStack::new());
    with_token(&mut me, &a, |me, _| {
        let r = catch_unwind(AssertUnwindSafe(|| with_token(me, &busy, |_, _| ())));
        assert!(r.is_err());
        assert_eq!(me.0.len(), 1, "the busy token's reference was dropped");
        assert!(me.0.all_held());
    });
    assert_eq!(a.exclusive_owner(), 0);
    // SAFETY: as above.
    unsafe { other.pop(&busy) };
}

/// A closure that replaces the thread handle (`mem::replace` of a
/// `SpinThread`) leaves the old stack, which holds the token, elsewhere: a
/// hold proof must not open the cell for the new handle, though its stack
/// sits at the same address.
#[test]
fn a_hold_does_not_open_the_cell_for_a_replaced_handle() {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    static TOK: Token = Token::new("swapped");
    static DATA: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    let mut me = SpinThread::new();
    with_token(&mut me, &TOK, |me, held| {
        let mut holder = core::mem::replace(me, SpinThread::new());
        let r = catch_unwind(AssertUnwindSafe(|| {
            let a = DATA.get_mut(held, me);
            // The holder still holds the token: a nested hold for it.
            with_token(&mut holder, &TOK, |h, held2| {
                let b = DATA.get_mut(held2, h);
                *a += 1;
                *b += 1;
            });
        }));
        let err = r.unwrap_err();
        let msg = err
            .downcast_ref::<&str>()
            .copied()
            .or(err
                .downcast_ref::<std::string::String>()
                .map(|s| s.as_str()))
            .unwrap_or_default();
        assert!(msg.contains("a token hold of another thread"), "{msg}");
        *me = holder;
        *DATA.get_mut(held, me) += 1;
    });
    assert_eq!(with_token(&mut me, &TOK, |me, h| *DATA.get(h, me)), 1);
}
