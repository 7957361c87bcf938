//! Which thread a CPU runs now, as code running on that CPU sees it.
//!
//! DragonFly: `curthread == td`.

use crate::mycpu::MyCpu;
use crate::thread::ParkToken;

impl MyCpu<'_> {
    /// Whether `t` names the thread this CPU runs now: the caller's own
    /// thread, or, from an interrupt or an IPI function, the thread it
    /// interrupted. DragonFly: `curthread == td`.
    ///
    /// Only an address comparison (no atomic read-modify-write, no fence):
    /// a thread is the running one of at most one CPU, so `true` means the
    /// caller runs on that thread's CPU, either as the thread itself or
    /// nested inside it, and that thread does not run anywhere else until
    /// the caller returns. For that the token must name a live thread (a
    /// token of an exited thread may compare equal to a thread block that
    /// reuses its memory); lwkt-msg's inline `domsg` asks it of the sender
    /// that waits in the call.
    ///
    /// ```
    /// lwkt_arch_hosted::Machine::new(1).unwrap().run(|cur| {
    ///     let me = cur.park_token();
    ///     assert!(cur.my_cpu().runs(me));
    ///     let other = cur
    ///         .spawn_on(cur.cpu_id(), move |t| assert!(!t.my_cpu().runs(me)))
    ///         .unwrap();
    ///     cur.join(&other);
    /// });
    /// ```
    #[inline(always)]
    pub fn runs(self, t: ParkToken) -> bool {
        ParkToken::of(self.cpu().cur()) == t
    }
}
