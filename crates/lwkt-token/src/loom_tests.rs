//! Loom models of the token state machine (`RUSTFLAGS="--cfg loom"`).
//! They run this crate's own `Token`, `TokenStack` and `SpinThread`.

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;

use crate::{with_token, with_token_shared, Mode, Pushed, SpinThread, Token, TokenStack};

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
            let me = TokenStack::new();
            // SAFETY: this thread's own stack.
            if unsafe { t2.try_exclusive(me.owner(), false) } {
                // SAFETY: we hold it; no hold was made from it.
                unsafe { t2.release_exclusive() };
                true
            } else {
                false
            }
        });
        let me = TokenStack::new();
        // SAFETY: this thread's own stack.
        let mine = unsafe { tok.try_exclusive(me.owner(), true) };
        if mine {
            assert_eq!(tok.exclusive_owner(), me.owner_id());
            // SAFETY: we hold it; no hold was made from it.
            unsafe { tok.release_exclusive() };
        }
        let theirs = h.join().unwrap();
        assert!(mine || theirs, "a free token was refused to both");
        // SAFETY: this thread's own stack.
        let again = unsafe { tok.try_exclusive(me.owner(), false) };
        assert!(again, "{:?} owner {}", tok, tok.exclusive_owner());
    });
}

/// Two tokens and the data they protect together.
struct Two {
    a: Token,
    b: Token,
    /// Touched only by a thread holding both tokens (loom reports an
    /// overlap as a data race).
    data: UnsafeCell<u32>,
}

// SAFETY: `data` is accessed only by a thread holding `a` and `b` (the
// property under test; loom checks it).
unsafe impl Sync for Two {}

impl Two {
    fn new() -> Arc<Two> {
        Arc::new(Two {
            a: Token::new("a"),
            b: Token::new("b"),
            data: UnsafeCell::new(0),
        })
    }

    /// A read-modify-write of the data, for a holder of both tokens.
    fn bump(&self) {
        // SAFETY: the caller holds both tokens (checked by loom).
        self.data.with_mut(|p| unsafe { *p += 1 });
    }

    fn assert_free(&self) {
        for t in [&self.a, &self.b] {
            assert_eq!(t.exclusive_owner(), 0, "{t:?} still held");
            assert_eq!(t.shared_holders(), 0);
        }
    }
}

/// A stack handed from one CPU to another, as the scheduler hands a
/// switched-out thread to the CPU it migrates to (the hand-off, here the
/// spawn, orders the two CPUs' uses of it).
struct Migrating(TokenStack);

// SAFETY: only one CPU uses the stack at a time: CPU 0 until it hands it
// over, CPU 1 after; the spawn orders the two.
unsafe impl Send for Migrating {}

/// A blocked thread's stack holding `toks` exclusively, released, as its
/// scheduler leaves it (made on this loom thread, then handed to a CPU).
fn blocked_holding(toks: [&Token; 2]) -> Migrating {
    let st = TokenStack::new();
    // SAFETY: `st` is used by one thread at a time (here, then the CPU it
    // is handed to); the tokens outlive every reference (`Two` in an `Arc`
    // held until the references are popped).
    unsafe {
        for t in toks {
            assert_eq!(st.push(t, Mode::Exclusive), Ok(Pushed::New));
            assert!(st.try_top(true));
        }
        st.release_all();
    }
    Migrating(st)
}

/// CPU `x`'s scheduler: resume the thread (re-acquire all, or try again as
/// the scheduler does with the next candidate), run it, block it again,
/// resume it, and let it release its tokens.
fn run_on_cpu(s: Arc<Two>, x: Migrating, order: [usize; 2]) {
    let toks = [&s.a, &s.b];
    for round in 0..2 {
        // SAFETY: the thread is not running; only this CPU uses its stack.
        while !unsafe { x.0.acquire_all() } {
            thread::yield_now();
        }
        let id = x.0.owner_id();
        assert_eq!(s.a.exclusive_owner(), id, "resumed without a");
        assert_eq!(s.b.exclusive_owner(), id, "resumed without b");
        s.bump();
        if round == 0 {
            // SAFETY: the thread blocks: its scheduler releases its stack.
            unsafe { x.0.release_all() };
        }
    }
    // SAFETY: the thread runs, holding both: it releases them, LIFO.
    unsafe {
        x.0.pop(toks[order[1]]);
        x.0.pop(toks[order[0]]);
    }
}

/// The scheduler's token re-acquisition on two CPUs at once (issue 15),
/// with the code lwkt-core's switch runs (`release_all` when a thread
/// blocks, `acquire_all` for a candidate, retried until it succeeds): each
/// CPU resumes a thread holding both tokens (taken in opposite orders),
/// runs it, blocks it, and resumes it again, against the other CPU doing
/// the same. The two never overlap, and a thread resumes only holding every
/// token of its stack (no acquisition lost, none left behind).
#[test]
fn reacquisition_on_two_cpus_excludes() {
    loom::model(|| {
        let s = Two::new();
        let x = blocked_holding([&s.a, &s.b]);
        let y = blocked_holding([&s.b, &s.a]);
        let s0 = s.clone();
        let c0 = thread::spawn(move || run_on_cpu(s0, x, [0, 1]));
        run_on_cpu(s.clone(), y, [1, 0]);
        c0.join().unwrap();
        // SAFETY: all threads joined.
        assert_eq!(s.data.with(|p| unsafe { *p }), 4);
        s.assert_free();
    });
}

/// A thread holding both tokens blocks on CPU 0 (its stack released) and is
/// resumed on CPU 1, whose scheduler re-acquires the stack, while CPU 0
/// runs another thread that takes the tokens in the other order: they never
/// overlap, and the migrated thread resumes holding both.
#[test]
fn a_migrated_thread_reacquires_on_another_cpu() {
    loom::model(|| {
        let s = Two::new();
        let x = TokenStack::new();
        // SAFETY: `x` is the stack of the thread running here (CPU 0); the
        // tokens live in `s` until every reference is popped.
        unsafe {
            for t in [&s.a, &s.b] {
                assert_eq!(x.push(t, Mode::Exclusive), Ok(Pushed::New));
                assert!(x.try_top(true));
            }
        }
        s.bump();
        // SAFETY: the thread blocks: its scheduler releases its stack.
        unsafe { x.release_all() };
        let moved = Migrating(x);
        let s1 = s.clone();
        let cpu1 = thread::spawn(move || {
            let x = moved;
            // CPU 1's scheduler: the thread runs only once it holds all.
            // SAFETY: the thread is not running; only this CPU uses its
            // stack now.
            while !unsafe { x.0.acquire_all() } {
                thread::yield_now();
            }
            let id = x.0.owner_id();
            assert_eq!(s1.a.exclusive_owner(), id, "resumed without a");
            assert_eq!(s1.b.exclusive_owner(), id, "resumed without b");
            s1.bump();
            // SAFETY: the thread runs, holding both: it releases them.
            unsafe {
                x.0.pop(&s1.b);
                x.0.pop(&s1.a);
            }
        });
        // CPU 0 runs another thread meanwhile.
        let mut y = SpinThread::new();
        with_token(&mut y, &s.b, |y, _| with_token(y, &s.a, |_, _| s.bump()));
        cpu1.join().unwrap();
        // SAFETY: all threads joined.
        assert_eq!(s.data.with(|p| unsafe { *p }), 3);
        s.assert_free();
    });
}
