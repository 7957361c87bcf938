//! `cargo xtask asan`: the hosted tests (unit, integration and doc tests)
//! of lwkt-token, lwkt-core, lwkt-msg and lwkt-slab under AddressSanitizer
//! (nightly `-Zsanitizer=address`), in a target directory of its own.
//!
//! lwkt-arch-hosted's feature `asan` is on: every context switch tells ASan
//! which stack takes over (`__sanitizer_start_switch_fiber` /
//! `__sanitizer_finish_switch_fiber`), so ASan knows each LWKT stack's
//! bounds and gives each LWKT thread a fake stack of its own.
//!
//! `--target` is given, so `RUSTFLAGS` instrument only the target's code:
//! build scripts and proc macros run uninstrumented. A canary (a deliberate
//! use after free) is built and run first with the same flags and must be
//! caught, so a sanitizer that silently does nothing fails the step too.
//! Any ASan report makes its test binary exit nonzero, which fails the run.

use std::path::Path;
use std::process::Command;

const CRATES: &[&str] = &["lwkt-token", "lwkt-core", "lwkt-msg", "lwkt-slab"];
const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS: &str = "-Zsanitizer=address";
/// The hosted backend's fiber annotations (they link only under ASan).
const FEATURES: &str = "lwkt-arch-hosted/asan";

/// ASan's run-time options, each with why.
pub(crate) const ASAN_OPTIONS: &[(&str, &str)] = &[
    (
        "detect_stack_use_after_return=1",
        "stack use after return is caught (fake stacks, one per LWKT thread \
         thanks to the fiber annotations of lwkt-arch-hosted's feature asan)",
    ),
    (
        "detect_leaks=1",
        "leaks count, except the deliberate ones in LEAKS",
    ),
    (
        "halt_on_error=1",
        "the first error ends the test binary, nonzero",
    ),
];

/// Tests not run under ASan: (name as libtest filters it, why). None since
/// lwkt-arch-hosted tells ASan about its stack switches (feature `asan`):
/// the two tests that catch a panic on an LWKT stack
/// (`callbacks_in_thread_context_unwind_cleanly` in lwkt-core and
/// `a_bare_my_cpu_binds_and_another_machine_is_still_refused` in lwkt-slab)
/// used to leave stale stack poison, ASan not knowing the stack's bounds.
pub(crate) const SKIP: &[(&str, &str)] = &[];

/// Deliberate leaks LeakSanitizer would report: (a function on the
/// allocation's stack, why).
///
/// LeakSanitizer sees these only since the fiber annotations: before them,
/// its check at exit did not run at all in (at least) lwkt-msg's
/// tests/soundness.rs, which printed ASan's "ignoring requested
/// __asan_handle_no_return" (no "checking for leaks" with
/// `LSAN_OPTIONS=verbosity=1`).
pub(crate) const LEAKS: &[(&str, &str)] = &[
    (
        "four_cpus_never_share_an_object_and_construct_few",
        "lwkt-slab tests/objcache.rs leaks its ObjCache (Box::leak: the threads \
         need a 'static cache)",
    ),
    (
        "lwkt_msg::port::Port<*>::leak",
        "lwkt-msg's Port::leak gives a port a 'static address for good: its \
         tests and doctests leak their ports on purpose",
    ),
    (
        "leaked_msg",
        "lwkt-msg tests/soundness.rs leaks messages a child that must fail \
         may leave in flight",
    ),
    (
        "eight_cpus_exchange_messages",
        "lwkt-msg tests/msg.rs leaks its Vec of ports (Vec::leak, inlined: \
         the report shows only the test's frames)",
    ),
    (
        "_doctest_main_crates_lwkt_msg_src_",
        "lwkt-msg's doctests leak their ports (Port::leak; inlined, so the \
         doctest's own frame is the only one to match)",
    ),
];

/// A use after free that ASan must catch.
const CANARY: &str = r#"
fn main() {
    let b = Box::new([7u8; 64]);
    let p: *const u8 = &b[0];
    drop(b);
    // SAFETY: none: a deliberate use after free, for ASan to report.
    let v = unsafe { std::ptr::read_volatile(p) };
    println!("read {v} from freed memory");
}
"#;

fn asan_options() -> String {
    ASAN_OPTIONS
        .iter()
        .map(|(o, _)| *o)
        .collect::<Vec<_>>()
        .join(":")
}

fn canary(dir: &Path) -> Result<(), String> {
    let src = dir.join("canary.rs");
    let exe = dir.join("canary");
    std::fs::write(&src, CANARY).map_err(|e| format!("{}: {e}", src.display()))?;
    crate::run(
        Command::new("rustc")
            .args([
                "+nightly",
                "--edition",
                "2021",
                "--target",
                TARGET,
                RUSTFLAGS,
            ])
            .arg(&src)
            .arg("-o")
            .arg(&exe),
    )?;
    let out = Command::new(&exe)
        .env("ASAN_OPTIONS", asan_options())
        .output()
        .map_err(|e| format!("cannot run the ASan canary: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("heap-use-after-free") {
        return Err(format!(
            "ASan did not catch the canary's use after free (status {}):\n{stderr}",
            out.status
        ));
    }
    eprintln!("xtask: asan: the canary's use after free was caught");
    Ok(())
}

pub(crate) fn asan() -> Result<(), String> {
    // x86_64-unknown-linux-gnu's ASan runtime ships with nightly's rustc.
    crate::nightly(&[])?;
    let dir = crate::tool_target_dir("asan");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    canary(&dir)?;
    let supp = dir.join("lsan.supp");
    let text: String = LEAKS
        .iter()
        .map(|(f, why)| format!("# {why}\nleak:{f}\n"))
        .collect();
    std::fs::write(&supp, text).map_err(|e| format!("{}: {e}", supp.display()))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(crate::root())
        .args(["+nightly", "test", "--no-fail-fast", "--target", TARGET])
        .args(["--features", FEATURES]);
    for c in CRATES {
        cmd.args(["-p", c]);
    }
    cmd.arg("--");
    for (t, why) in SKIP {
        eprintln!("xtask: asan: skipping '{t}': {why}");
        cmd.args(["--skip", t]);
    }
    crate::run(
        cmd.env("RUSTFLAGS", RUSTFLAGS)
            .env("RUSTDOCFLAGS", RUSTFLAGS)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env("CARGO_TARGET_DIR", &dir)
            .env("ASAN_OPTIONS", asan_options())
            .env(
                "LSAN_OPTIONS",
                format!("suppressions={}:print_suppressions=0", supp.display()),
            ),
    )
}
