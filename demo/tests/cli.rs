//! The demo binary end to end: it runs, reports, and refuses bad input.

use std::process::Command;

fn demo(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lwkt-demo"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn runs_eight_cpus_and_reports_every_cpu() {
    let out = demo(&["--cpus", "8", "--rounds", "500"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ping-pong: 8 pairs"));
    assert!(stdout.contains("sums check out"));
    assert!(stdout.contains("messages: 8000 requests"));
    assert!(stdout.contains("every one replied once"));
    assert!(stdout.contains("threads never exited: 0"));
    for c in 0..8 {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{c} "))),
            "no row for cpu {c}"
        );
    }
}

#[test]
fn refuses_zero_cpus_with_a_clear_message() {
    let out = demo(&["--cpus", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cpus 0: a machine needs at least 1 CPU")
    );
}
