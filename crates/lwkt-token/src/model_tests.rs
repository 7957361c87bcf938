//! Property test: random acquire/release/block/resume sequences of two
//! threads over three tokens, against a reference model of who holds what.

use proptest::prelude::*;
use std::vec::Vec;

use crate::{Mode, Pushed, Token, TokenStack};

#[derive(Debug, Clone, Copy)]
enum Op {
    Take(usize, usize, bool), // thread, token, exclusive
    Release(usize),
    Resume(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..3usize, any::<bool>()).prop_map(|(t, k, x)| Op::Take(t, k, x)),
        (0..2usize).prop_map(Op::Release),
        (0..2usize).prop_map(Op::Resume),
    ]
}

/// What the model says each thread holds: its stack of (token, mode,
/// recursive), and whether it is blocked waiting to re-acquire all.
#[derive(Default, Clone)]
struct ModelThread {
    refs: Vec<(usize, Mode, bool)>,
    blocked: bool,
}

fn holders(m: &[ModelThread; 2], k: usize) -> (Option<usize>, usize) {
    let mut excl = None;
    let mut shared = 0;
    for (t, th) in m.iter().enumerate() {
        if th.blocked {
            continue;
        }
        for &(kk, mode, rec) in &th.refs {
            if kk == k && !rec {
                match mode {
                    Mode::Exclusive => excl = Some(t),
                    Mode::Shared => shared += 1,
                }
            }
        }
    }
    (excl, shared)
}

fn run(ops: &[Op]) {
    let toks = [Token::new("k0"), Token::new("k1"), Token::new("k2")];
    let stacks = [TokenStack::new(), TokenStack::new()];
    let mut m: [ModelThread; 2] = Default::default();
    for &o in ops {
        match o {
            Op::Take(t, k, x) if !m[t].blocked => {
                let mode = if x { Mode::Exclusive } else { Mode::Shared };
                let base = m[t].refs.iter().find(|r| r.0 == k && !r.2).map(|r| r.1);
                // SAFETY: each stack is used by one simulated thread.
                let r = unsafe { stacks[t].push(&toks[k], mode) };
                match (base, mode) {
                    (Some(Mode::Shared), Mode::Exclusive) => {
                        assert!(r.is_err());
                        continue;
                    }
                    (Some(_), _) => {
                        assert_eq!(r, Ok(Pushed::Recursive));
                        m[t].refs.push((k, mode, true));
                        continue;
                    }
                    (None, _) => assert_eq!(r, Ok(Pushed::New)),
                }
                let (excl, shared) = holders(&m, k);
                let free_for_me = match mode {
                    Mode::Exclusive => excl.is_none() && shared == 0,
                    Mode::Shared => excl.is_none(),
                };
                // SAFETY: as above.
                let got = unsafe { stacks[t].try_top(false) };
                if mode == Mode::Exclusive || got {
                    assert_eq!(got, free_for_me, "try {:?} on k{k} by t{t}", mode);
                }
                m[t].refs.push((k, mode, false));
                if !got {
                    // The scheduler's part: drop everything, wait to resume.
                    // SAFETY: as above.
                    unsafe { stacks[t].release_all() };
                    m[t].blocked = true;
                }
            }
            Op::Release(t) if !m[t].blocked => {
                if let Some(&(k, _, _)) = m[t].refs.last() {
                    // SAFETY: as above; the top ref is held.
                    unsafe { stacks[t].pop(&toks[k]) };
                    m[t].refs.pop();
                }
            }
            Op::Resume(t) if m[t].blocked => {
                let can = m[t].refs.iter().filter(|r| !r.2).all(|&(k, mode, _)| {
                    let (excl, shared) = holders(&m, k);
                    match mode {
                        Mode::Exclusive => excl.is_none() && shared == 0,
                        Mode::Shared => excl.is_none(),
                    }
                });
                // SAFETY: as above.
                let got = unsafe { stacks[t].acquire_all() };
                if !can {
                    assert!(!got, "t{t} re-acquired a set that is not free");
                }
                if got {
                    m[t].blocked = false;
                } else if can {
                    // Only an exclusive request's deferral can refuse a free
                    // set: a shared-only first token deferring to EXCLREQ.
                    assert!(m[t].refs.iter().any(|r| r.1 == Mode::Shared));
                }
            }
            _ => {}
        }
        // Token state agrees with the model.
        for (k, tok) in toks.iter().enumerate() {
            let (excl, shared) = holders(&m, k);
            assert_eq!(tok.shared_holders(), shared, "shared count of k{k}");
            let owner = excl.map_or(0, |t| stacks[t].owner_id());
            assert_eq!(tok.exclusive_owner(), owner, "exclusive owner of k{k}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn token_stacks_match_the_model(ops in proptest::collection::vec(op(), 0..60)) {
        run(&ops);
    }
}
