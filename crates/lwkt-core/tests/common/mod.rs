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

/// Run `f`; if it has not returned within `secs` seconds (a deadlock),
/// abort the test binary with a message naming `what`, rather than hang.
pub fn within_seconds<R>(secs: u64, what: &'static str, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while std::time::Instant::now() < end {
            if d.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        eprintln!("{what}: not finished within {secs} s (deadlock?); aborting");
        std::process::abort();
    });
    let r = f();
    done.store(true, Ordering::Release);
    r
}

/// Spawn the interrupt thread of line `irq` on CPU `cpu`, at
/// `Priority::INT_MED`: it registers the line, then runs `body`. Returns
/// once the line is registered (a raise from then on reaches it).
pub fn spawn_ithread(
    cur: &mut lwkt_core::Cur,
    cpu: u32,
    irq: usize,
    body: impl FnOnce(&mut lwkt_core::Cur) + Send + 'static,
) -> lwkt_core::ThreadHandle {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let ith = cur
        .builder()
        .cpu(lwkt_core::CpuId::new(cpu))
        .priority(lwkt_core::Priority::INT_MED)
        .name("ithread")
        .spawn(move |me| {
            me.register_interrupt(irq).unwrap();
            r.store(true, Ordering::Release);
            body(me);
        })
        .unwrap();
    while !ready.load(Ordering::Acquire) {
        cur.yield_now();
    }
    ith
}
