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

#[test]
fn a_hold_left_by_an_unwound_closure_is_refused_at_release() {
    let (a, b) = (Token::new("a"), Token::new("b"));
    let mut me = SpinThread::new();
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        with_token(&mut me, &a, |me, _| {
            let inner = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_token(me, &b, |_, _| panic!("inner"));
            }));
            assert!(inner.is_err());
            // `b`'s reference is still on top: releasing `a` must refuse.
        });
    }))
    .unwrap_err();
    let msg = err
        .downcast_ref::<std::string::String>()
        .map(|s| s.as_str())
        .unwrap_or_default();
    assert!(msg.contains("LIFO order ('a'"), "{msg}");
    assert_eq!(a.exclusive_owner(), me.token_stack_for_test().owner_id());
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
