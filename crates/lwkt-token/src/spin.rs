//! A token thread for code with no scheduler to block in.

use crate::held::TokenThread;
use crate::stack::TokenStack;

/// A [`TokenThread`] whose "blocking" spins: on contention it releases every
/// token it holds, spins, and tries the whole set again (so it still cannot
/// deadlock). For early boot, host threads, and tests; a scheduler should
/// switch to other work instead, as lwkt-core does.
///
/// Keep one per OS thread (it is `!Send` and `!Sync`).
///
/// **Never use one inside an lwkt thread** (or any thread another scheduler
/// can block): the scheduler releases the tokens on its own thread's stack
/// when that thread blocks, not the ones a `SpinThread` holds, so they stay
/// held across every blocking call, and a thread that needs one of them can
/// wait forever (a deadlock, not undefined behaviour). In an lwkt thread,
/// take tokens through its `Cur`. Nothing checks this at run time: this
/// crate cannot see which scheduler, if any, runs the code.
///
/// A `SpinThread` cannot move to another OS thread (it may hold tokens, and
/// a token's owner field names its stack):
///
/// ```compile_fail
/// fn send<T: Send>(_: T) {}
/// send(lwkt_token::SpinThread::new());
/// ```
///
/// ```
/// use lwkt_token::{with_token, SpinThread, Token};
/// static TOK: Token = Token::new("boot");
/// let mut me = SpinThread::new();
/// let v = with_token(&mut me, &TOK, |_, held| held.token().name());
/// assert_eq!(v, "boot");
/// ```
#[derive(Debug, Default)]
pub struct SpinThread {
    stack: TokenStack,
}

impl SpinThread {
    /// A thread holding no token.
    pub const fn new() -> Self {
        SpinThread {
            stack: TokenStack::new(),
        }
    }
}

// SAFETY: the stack is this object's own; outside `wait_for_tokens` every
// reference on it is held (`with_token` acquires before returning control,
// and `wait_for_tokens` returns only after `acquire_all` succeeded).
unsafe impl TokenThread for SpinThread {
    fn token_stack(&self) -> &TokenStack {
        &self.stack
    }

    fn wait_for_tokens(&mut self) {
        let mut spins = 1u32;
        loop {
            // SAFETY: our own stack; nothing else uses it meanwhile.
            unsafe { self.stack.release_all() };
            for _ in 0..spins {
                crate::sync::spin_loop();
            }
            spins = if cfg!(loom) {
                1
            } else {
                (spins * 2).min(1 << 10)
            };
            // SAFETY: as above, nothing held now.
            if unsafe { self.stack.acquire_all() } {
                return;
            }
        }
    }
}
