//! Helpers shared by the integration tests of lwkt-core, lwkt-msg and
//! lwkt-slab: running one test again in a child process (for misuse that
//! must abort the process), and a deadlock guard. Not published; each
//! crate's `tests/common` re-exports what it uses.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Run this test binary again with only `test_name`, with `LWKT_CHILD=1`,
/// and return (success, stderr). Used for misuse that must abort the
/// process (a panic inside an LWKT thread cannot unwind through its first
/// frame).
///
/// ```no_run
/// if lwkt_test_support::is_child() {
///     std::process::abort(); // what the child is expected to do
/// }
/// let (ok, stderr) = lwkt_test_support::run_child("aborts");
/// assert!(!ok, "{stderr}");
/// ```
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

/// Is this process the child [`run_child`] started?
///
/// ```
/// assert!(!lwkt_test_support::is_child() || std::env::var_os("LWKT_CHILD").is_some());
/// ```
pub fn is_child() -> bool {
    std::env::var_os("LWKT_CHILD").is_some()
}

/// Run `f`; if it has not returned within `secs` seconds (a deadlock),
/// abort the test binary with a message naming `what`, rather than hang.
/// The message is written without allocating: the deadlock may be in the
/// allocator (lwkt-slab's `tests/reentry.rs` runs on `GlobalSlab`), and
/// captured test output is a growing buffer.
///
/// ```
/// let v = lwkt_test_support::within_seconds(10, "adding", || 1 + 1);
/// assert_eq!(v, 2);
/// ```
pub fn within_seconds<R>(secs: u64, what: &'static str, f: impl FnOnce() -> R) -> R {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if d.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
