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
        // Without allocating: the deadlock may be in the allocator
        // (tests/reentry.rs runs on `GlobalSlab`), and captured test output
        // is a growing buffer.
        for part in [what, ": not finished in time (deadlock?); aborting\n"] {
            // SAFETY: writing a live byte slice to the standard error fd.
            unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
        }
        std::process::abort();
    });
    let r = f();
    done.store(true, Ordering::Release);
    r
}
