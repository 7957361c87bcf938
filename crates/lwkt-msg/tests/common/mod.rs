//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub use lwkt_test_support::{is_child, run_child, within_seconds};

use std::sync::{Arc, OnceLock};

use lwkt_core::{CpuId, Cur, ThreadHandle};
use lwkt_msg::Port;

/// Spawn a thread on `cpu` that creates its own thread port and runs
/// `body(me, port)`; return the port once it exists, and the thread.
pub fn server<T, F>(cur: &mut Cur, cpu: u32, body: F) -> (&'static Port<T>, ThreadHandle)
where
    T: Send + 'static,
    F: FnOnce(&mut Cur, &'static Port<T>) + Send + 'static,
{
    let slot: Arc<OnceLock<&'static Port<T>>> = Arc::new(OnceLock::new());
    let s2 = slot.clone();
    let h = cur
        .builder()
        .cpu(CpuId::new(cpu))
        .name("server")
        .spawn(move |me| {
            let port = Port::thread(me).leak();
            s2.set(port).ok().unwrap();
            body(me, port);
        })
        .unwrap();
    loop {
        if let Some(p) = slot.get() {
            return (*p, h);
        }
        cur.yield_now();
    }
}
