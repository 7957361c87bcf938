//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::process::Command;

/// Run this test binary again with only `test_name`, with `LWKT_CHILD=1`,
/// and return (success, stderr). Used for misuse that must abort the process
/// (a panic inside an LWKT thread cannot unwind through its first frame).
pub fn run_child(test_name: &str) -> (bool, String) {
    let out = self_command()
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env("LWKT_CHILD", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command that runs this test binary again: the binary itself or, under
/// a user-mode emulator that cannot start it by `exec` (qemu-user without
/// binfmt_misc; `.cargo/config.toml`'s aarch64 runner names itself in
/// `LWKT_TEST_RUNNER`), the emulator with the binary.
fn self_command() -> Command {
    let exe = std::env::current_exe().unwrap();
    match std::env::var_os("LWKT_TEST_RUNNER") {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

pub fn is_child() -> bool {
    std::env::var_os("LWKT_CHILD").is_some()
}

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
