//! Loom models of the token state machine (`RUSTFLAGS="--cfg loom"`).
//! They run this crate's own `Token`, `TokenStack` and `SpinThread`.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use crate::{with_token, with_token_shared, SpinThread, Token};

struct Shared {
    tok: Token,
    /// Touched only under the token: loom reports any overlap of a write
    /// with another access as a data race, i.e. two exclusive holders.
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is accessed only by a thread holding `tok` (the property
// under test; loom checks it).
unsafe impl Sync for Shared {}

/// Two exclusive holders never overlap, and the contended one always gets
/// the token in the end (tokens are polled: no wake-up to lose).
#[test]
fn exclusive_holders_never_overlap() {
    loom::model(|| {
        let s = Arc::new(Shared {
            tok: Token::new("t"),
            data: UnsafeCell::new(0),
        });
        let ths: std::vec::Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || {
                    let mut me = SpinThread::new();
                    with_token(&mut me, &s.tok, |_, _| {
                        // SAFETY: exclusive holder (checked by loom).
                        s.data.with_mut(|p| unsafe { *p += 1 });
                    });
                })
            })
            .collect();
        for t in ths {
            t.join().unwrap();
        }
        // SAFETY: all threads joined.
        assert_eq!(s.data.with(|p| unsafe { *p }), 2);
        assert_eq!(s.tok.exclusive_owner(), 0);
        assert_eq!(s.tok.shared_holders(), 0);
    });
}

/// A shared holder and an exclusive holder never overlap (loom reports a
/// read concurrent with the write as a race), and both finish.
#[test]
fn a_reader_and_a_writer() {
    loom::model(|| {
        let s = Arc::new(Shared {
            tok: Token::new("rw"),
            data: UnsafeCell::new(0),
        });
        let r = {
            let s = s.clone();
            thread::spawn(move || {
                let mut me = SpinThread::new();
                with_token_shared(&mut me, &s.tok, |_, _| {
                    // SAFETY: shared holder: reads only.
                    let v = s.data.with(|p| unsafe { *p });
                    assert!(v == 0 || v == 1);
                });
            })
        };
        let mut me = SpinThread::new();
        with_token(&mut me, &s.tok, |_, _| {
            // SAFETY: exclusive holder.
            s.data.with_mut(|p| unsafe { *p = 1 });
        });
        r.join().unwrap();
        assert_eq!(s.tok.shared_holders(), 0);
        assert_eq!(s.tok.exclusive_owner(), 0);
    });
}

/// Two shared holders can hold the token at the same time: each waits,
/// holding it, until it has seen the other inside.
#[test]
fn shared_holders_overlap() {
    loom::model(|| {
        let tok = Arc::new(Token::new("readers"));
        let inside = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let (t2, i2) = (tok.clone(), inside.clone());
        let other = thread::spawn(move || {
            let mut me = SpinThread::new();
            with_token_shared(&mut me, &t2, |_, _| {
                i2.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
                while i2.load(core::sync::atomic::Ordering::SeqCst) < 2 {
                    thread::yield_now();
                }
            });
        });
        let mut me = SpinThread::new();
        with_token_shared(&mut me, &tok, |_, _| {
            inside.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
            while inside.load(core::sync::atomic::Ordering::SeqCst) < 2 {
                thread::yield_now();
            }
        });
        other.join().unwrap();
        assert_eq!(tok.shared_holders(), 0);
    });
}

/// `try_exclusive` never succeeds for two at once, and a release lets the
/// other in.
#[test]
fn try_and_release() {
    loom::model(|| {
        let tok = Arc::new(Token::new("try"));
        let t2 = tok.clone();
        let h = thread::spawn(move || {
            if t2.try_exclusive(2, false) {
                // SAFETY: we hold it.
                unsafe { t2.release_exclusive() };
                true
            } else {
                false
            }
        });
        let mine = tok.try_exclusive(1, true);
        if mine {
            assert_eq!(tok.exclusive_owner(), 1);
            // SAFETY: we hold it.
            unsafe { tok.release_exclusive() };
        }
        let theirs = h.join().unwrap();
        assert!(mine || theirs, "a free token was refused to both");
        assert!(
            tok.try_exclusive(3, false),
            "{:?} owner {}",
            tok,
            tok.exclusive_owner()
        );
    });
}
