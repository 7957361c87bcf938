//! The soak's checks catch what they are for: each `--inject` fault, put
//! into the soak's own workload once, must end the run with exit status 1
//! and the message naming it; a clean run passes.

use std::process::Command;

fn soak(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lwkt-soak"))
        .args(["--cpus", "2", "--seconds", "2", "--stall", "3"])
        .args(args)
        .output()
        .expect("lwkt-soak runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The run fails, with a message holding each of `parts`.
fn caught(fault: &str, parts: &[&str]) {
    let (code, text) = soak(&["--inject", fault]);
    assert_eq!(
        code,
        Some(1),
        "--inject {fault} did not fail the soak:\n{text}"
    );
    for p in ["lwkt-soak: FAIL: "].iter().chain(parts) {
        assert!(text.contains(p), "--inject {fault}: no '{p}' in:\n{text}");
    }
}

#[test]
fn a_clean_run_passes() {
    let (code, text) = soak(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("lwkt-soak: OK"), "{text}");
}

#[test]
fn a_lost_message_is_caught_by_the_watchdog() {
    caught("lose", &["no progress for 3 s in ", "client cpu 1"]);
}

#[test]
fn a_duplicated_message_is_caught_by_the_counts() {
    caught(
        "duplicate",
        &["client cpu 1 to server cpu 0: ", " served, "],
    );
}

#[test]
fn a_misdirected_message_is_caught_by_its_server() {
    caught(
        "misdirect",
        &[
            "server cpu 0: took a message meant for cpu 1",
            "misdirected",
        ],
    );
}

#[test]
fn a_half_move_breaks_the_token_invariant() {
    caught(
        "half-move",
        &["token worker A-B cpu 0", "(invariant broken)"],
    );
}

#[test]
fn a_lost_wakeup_is_caught_by_the_watchdog() {
    caught(
        "lost-wakeup",
        &["no progress for 3 s in sleep ping cpu 0 (pair 0)"],
    );
}
