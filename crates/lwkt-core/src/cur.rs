//! The running thread's handle, [`Cur`]: proof that code runs as a thread
//! on its CPU, and what only the running thread may do. Its operations live
//! with their concepts: switching and yielding in `switch`, scheduling and
//! priorities in `schedule`, sleeping in `sleep`, watching in `watch`,
//! spawning and joining in `spawn`, migration in `migrate`, critical
//! sections in `crit`. Here: who the thread is, and its tokens.
//!
//! DragonFly: `curthread`.

use crate::cpu::{Cpu, CpuId};
use crate::switch::switch_from;
use crate::thread::{ParkToken, Priority, Thread, ThreadHandle};
use crate::MyCpu;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// The running thread's handle: proof that the code holding it runs as this
/// thread, on its CPU. Every thread body receives `&mut Cur`.
///
/// Everything that may block or switch takes `&mut Cur`; everything that
/// only looks takes `&Cur`. So a borrow obtained from `&Cur` (the current CPU
/// as [`MyCpu`], a critical-section guard, token-protected data in
/// lwkt-token) cannot live across a point where the thread may block, move
/// to another CPU, or let other threads run: the borrow checker rejects it.
///
/// ```compile_fail
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
///     let my = cur.my_cpu();      // borrows `cur`
///     cur.yield_now();            // error: `cur` is borrowed by `my`
///     my.id();
/// });
/// ```
///
/// `Cur` cannot leave its OS thread or CPU:
///
/// ```compile_fail
/// fn needs_send<T: Send>(_: T) {}
/// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| needs_send(cur));
/// ```
pub struct Cur {
    td: NonNull<Thread>,
    _not_send: PhantomData<*mut ()>,
}

impl core::fmt::Debug for Cur {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cur").field("thread", self.td()).finish()
    }
}

// SAFETY: the stack is the running thread's own; `switch_from` releases a
// thread's tokens whenever it switches away and switches to a thread only
// after `acquire_all` succeeded, so a running thread holds all its tokens;
// `wait_for_tokens` is such a switch, and returns only when we run again.
unsafe impl lwkt_token::TokenThread for Cur {
    fn token_stack(&self) -> &lwkt_token::TokenStack {
        &self.td().toks
    }

    fn wait_for_tokens(&mut self) {
        // SAFETY: called by the running thread.
        unsafe { switch_from(self.td()) };
    }
}

impl Cur {
    /// The handle of `td`, for its body.
    ///
    /// # Safety
    /// `td` is the running thread of its CPU, and no other `Cur` of it
    /// exists (`thread_start` makes the one its body receives).
    pub(crate) unsafe fn of_running(td: &Thread) -> Cur {
        Cur {
            td: NonNull::from(td),
            _not_send: PhantomData,
        }
    }

    pub(crate) fn td(&self) -> &Thread {
        // SAFETY: the running thread's block is alive while it runs.
        unsafe { self.td.as_ref() }
    }

    /// The current CPU, for operations that do not block.
    #[inline]
    pub fn my_cpu(&self) -> MyCpu<'_> {
        MyCpu::new(self.td().gd())
    }

    /// The current CPU, with a lifetime the caller chooses rather than a
    /// borrow of `self`: for an executor that lends the CPU to a future
    /// while it keeps `&mut Cur` to block between polls.
    ///
    /// # Safety
    /// For all of `'a`, this thread stays on its CPU (no [`migrate`]) and
    /// the returned value is used only by this thread.
    ///
    /// [`migrate`]: Cur::migrate
    #[inline]
    pub unsafe fn my_cpu_unbound<'a>(&self) -> MyCpu<'a> {
        // SAFETY: the CPU block outlives every thread running on it; the
        // caller keeps the thread on it for `'a`.
        MyCpu::new(unsafe { &*(self.td().gd() as *const Cpu) })
    }

    /// This thread's CPU.
    #[inline]
    pub fn cpu_id(&self) -> CpuId {
        self.td().gd().id()
    }

    /// This thread's name.
    pub fn name(&self) -> &'static str {
        self.td().name
    }

    /// This thread's priority.
    pub fn priority(&self) -> Priority {
        self.td().pri.get()
    }

    /// Times this thread has been switched to.
    pub fn switch_count(&self) -> u64 {
        self.td().switches.get()
    }

    /// A handle to this thread, to give to others (for example to wake it).
    pub fn handle(&self) -> ThreadHandle {
        ThreadHandle::new_held(self.td())
    }

    /// This thread's [`ParkToken`], for a party that will wake it on this
    /// CPU with [`MyCpu::unpark`] while it waits in [`block`](Self::block).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     assert_eq!(cur.park_token(), cur.park_token());
    /// });
    /// ```
    #[inline(always)]
    pub fn park_token(&self) -> ParkToken {
        ParkToken::of(self.td())
    }

    /// Whether `h` is a handle to this thread (no atomic operation).
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.handle();
    ///     assert!(cur.is(&me));
    /// });
    /// ```
    #[inline]
    pub fn is(&self, h: &ThreadHandle) -> bool {
        self.td == h.td
    }

    /// Hold `tok` exclusively while `f` runs; see [`lwkt_token::with_token`].
    /// DragonFly: `lwkt_gettoken()` ... `lwkt_reltoken()`.
    ///
    /// If `f` blocks, the token is released meanwhile and all of this
    /// thread's tokens are held again before it continues.
    ///
    /// ```
    /// use lwkt_core::token::{Token, TokenCell};
    /// static TOK: Token = Token::new("stats");
    /// static HITS: TokenCell<'static, u64> = TokenCell::new(&TOK, 0);
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     cur.with_token(&TOK, |cur, held| *HITS.get_mut(held, cur) += 1);
    /// });
    /// ```
    pub fn with_token<R>(
        &mut self,
        tok: &lwkt_token::Token,
        f: impl for<'h> FnOnce(&mut Cur, &lwkt_token::Held<'h, lwkt_token::Exclusive>) -> R,
    ) -> R {
        lwkt_token::with_token(self, tok, f)
    }

    /// Hold `tok` shared while `f` runs. DragonFly: `lwkt_gettoken_shared()`.
    pub fn with_token_shared<R>(
        &mut self,
        tok: &lwkt_token::Token,
        f: impl for<'h> FnOnce(&mut Cur, &lwkt_token::Held<'h, lwkt_token::Shared>) -> R,
    ) -> R {
        lwkt_token::with_token_shared(self, tok, f)
    }

    /// Hold `tok` exclusively while `f` runs, only if it is free now.
    /// DragonFly: `lwkt_trytoken()`.
    pub fn try_with_token<R>(
        &mut self,
        tok: &lwkt_token::Token,
        f: impl for<'h> FnOnce(&mut Cur, &lwkt_token::Held<'h, lwkt_token::Exclusive>) -> R,
    ) -> Option<R> {
        lwkt_token::try_with_token(self, tok, f)
    }

    /// The owner id this thread's exclusive token holds carry
    /// ([`Token::exclusive_owner`](lwkt_token::Token::exclusive_owner)).
    pub fn token_stack_id(&self) -> usize {
        self.td().toks.owner_id()
    }

    /// Token references this thread holds now.
    pub fn tokens_held(&self) -> usize {
        self.td().toks.len()
    }

    /// Run `f` on every CPU in `mask` (here too, if included), in interrupt
    /// context, and return when all have finished. DragonFly:
    /// `lwkt_cpusync_simple()`.
    ///
    /// ```
    /// use core::sync::atomic::{AtomicUsize, Ordering};
    /// use lwkt_core::CpuMask;
    /// lwkt_arch_hosted::Machine::new(3).unwrap().run(|cur| {
    ///     let n = AtomicUsize::new(0);
    ///     cur.cpusync(CpuMask::all(3), &|_| { n.fetch_add(1, Ordering::Relaxed); });
    ///     assert_eq!(n.load(Ordering::Relaxed), 3);
    /// });
    /// ```
    pub fn cpusync(&mut self, mask: crate::CpuMask, f: &(dyn Fn(MyCpu<'_>) + Sync)) {
        crate::cpusync::cpusync(self.td(), mask, f);
    }
}
