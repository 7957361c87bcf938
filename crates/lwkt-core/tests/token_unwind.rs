//! Issue 15, hole 1, on the lwkt scheduler: a token closure that panics,
//! caught by `catch_unwind` inside the thread, leaves nothing on the
//! thread's token stack, so a token freed afterwards is never touched by the
//! scheduler's release/re-acquire when the thread blocks.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use lwkt_arch_hosted::Machine;
use lwkt_core::token::Token;
use lwkt_core::CpuId;

const CANARY: usize = 0xA5A5_A5A5_A5A5_A5A5;

/// Boxes the size of a `Token`, allocated right after one was freed (the
/// allocator hands its memory to one of them): a write through a dead
/// token reference shows as a changed canary.
#[allow(clippy::vec_box)] // one allocation per canary, each the size of a token
fn canaries() -> Vec<Box<[usize; 5]>> {
    const _: () = assert!(std::mem::size_of::<Token>() == std::mem::size_of::<[usize; 5]>());
    (0..16).map(|_| Box::new([CANARY; 5])).collect()
}

#[allow(clippy::vec_box)]
fn assert_intact(c: &[Box<[usize; 5]>], what: &str) {
    for b in c {
        assert_eq!(**b, [CANARY; 5], "{what}: a dead token was written");
    }
}

#[test]
fn a_panicking_closure_leaves_no_dead_token_for_the_scheduler() {
    static BUSY: Token = Token::new("busy");
    static HOLDING: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    Machine::new(2).unwrap().run(|cur| {
        let holder = cur
            .spawn_on(CpuId::new(1), |me| {
                me.with_token(&BUSY, |_, _| {
                    HOLDING.store(true, Ordering::SeqCst);
                    while !RELEASE.load(Ordering::SeqCst) {
                        std::hint::spin_loop();
                    }
                });
            })
            .unwrap();
        for way in 0..3 {
            let boxed = Box::new(Token::new("boxed"));
            let r = catch_unwind(AssertUnwindSafe(|| match way {
                0 => cur.with_token(&boxed, |_, _| panic!("lwkt test: exclusive closure panics")),
                1 => {
                    cur.with_token_shared(&boxed, |_, _| panic!("lwkt test: shared closure panics"))
                }
                _ => cur
                    .try_with_token(&boxed, |_, _| panic!("lwkt test: try closure panics"))
                    .unwrap(),
            }));
            assert!(r.is_err());
            assert_eq!(
                cur.tokens_held(),
                0,
                "way {way}: the unwound hold was popped"
            );
            assert_eq!(
                boxed.exclusive_owner(),
                0,
                "way {way}: and its token released"
            );
            assert_eq!(
                boxed.shared_holders(),
                0,
                "way {way}: and its token released"
            );
            drop(boxed);
            let c = canaries();
            cur.yield_now(); // a switch: release_all / acquire_all
            assert_intact(&c, "yield_now");
        }
        // Block on a busy token: the thread's stack is released and
        // re-acquired (perhaps several times) before it runs again.
        let boxed = Box::new(Token::new("boxed"));
        let r = catch_unwind(AssertUnwindSafe(|| {
            cur.with_token(&boxed, |_, _| panic!("lwkt test: closure panics"))
        }));
        assert!(r.is_err());
        drop(boxed);
        let c = canaries();
        while !HOLDING.load(Ordering::SeqCst) {
            cur.yield_now();
        }
        std::thread::spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            RELEASE.store(true, Ordering::SeqCst);
        });
        cur.with_token(&BUSY, |_, _| ());
        assert_intact(&c, "a blocking with_token");
        cur.join(&holder);
    });
}

/// A nested hold of a token the thread holds exclusively is uncounted when
/// its closure unwinds.
#[test]
fn a_panicking_nested_closure_is_uncounted() {
    static TOK: Token = Token::new("nested");
    Machine::new(1).unwrap().run(|cur| {
        cur.with_token(&TOK, |cur, _| {
            let r = catch_unwind(AssertUnwindSafe(|| {
                cur.with_token(&TOK, |_, _| panic!("lwkt test: nested closure panics"))
            }));
            assert!(r.is_err());
            assert_eq!(cur.tokens_held(), 1);
        });
        assert_eq!(cur.tokens_held(), 0);
        assert_eq!(TOK.exclusive_owner(), 0);
    });
}

/// A closure that moves the thread handle's contents out for good (here a
/// `SpinThread`, replaced with a fresh one and stashed) leaves the token's
/// reference on a stack the hold cannot reach; unwinding or returning would
/// let the caller free the token under it. It aborts, saying why.
#[test]
fn replacing_the_thread_handle_for_good_aborts() {
    if common::is_child() {
        use lwkt_core::token::{with_token, SpinThread, TokenThread};
        let t = Box::new(Token::new("replaced"));
        let mut me = SpinThread::new();
        let mut stash = None;
        let _ = catch_unwind(AssertUnwindSafe(|| {
            with_token(&mut me, &t, |me, _| {
                stash = Some(std::mem::replace(me, SpinThread::new()));
            })
        }));
        // Not reached since the fix: the stashed stack still points at `t`.
        drop(t);
        let c = canaries();
        let mut holder = stash.unwrap();
        let other = Token::new("other");
        with_token(&mut holder, &other, |h, _| h.wait_for_tokens());
        assert_intact(&c, "the stashed stack's release/re-acquire");
        return;
    }
    let (ok, err) = common::run_child("replacing_the_thread_handle_for_good_aborts");
    assert!(!ok);
    assert!(
        err.contains("the thread handle was replaced inside a closure holding token 'replaced'"),
        "stderr: {err}"
    );
}
