//! The demo binary end to end: it runs, reports, and refuses bad input.

mod common;

use std::process::Command;

use common::{pcap, pcapng, temp};
use lwkt_demo::net;

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

/// Run the demo on a capture: (exit status, stdout, stderr).
fn replay(path: &str) -> (std::process::ExitStatus, String, String) {
    let out = demo(&["--cpus", "2", "--rounds", "50", "--pcap", path]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, stdout, stderr)
}

#[test]
fn replays_a_pcapng_capture() {
    let frames = net::generated(21, 60, 30);
    let t = temp("cli.pcapng", &pcapng(&frames, 0));
    let (status, stdout, stderr) = replay(t.path());
    assert!(status.success(), "{stdout}\n{stderr}");
    let n = frames.len();
    assert!(
        stdout.contains(&format!("network: {n} frames (")),
        "{stdout}"
    );
    assert!(stdout.contains("tables agree: yes"), "{stdout}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn a_cut_capture_replays_up_to_the_cut_with_a_warning() {
    let frames = net::generated(22, 60, 30);
    let n = frames.len();
    let bytes = pcap(&frames, 65535);
    let t = temp("cli-cut.pcap", &bytes[..bytes.len() - 7]);
    let (status, stdout, stderr) = replay(t.path());
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "lwkt-demo: warning: {}: record {n} is cut short (7 bytes missing",
            t.path()
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("network: {} frames (", n - 1)),
        "{stdout}"
    );
}

#[test]
fn a_record_over_the_snapshot_length_is_reported_malformed() {
    let mut frames = net::generated(23, 60, 30);
    let n = frames.len();
    let snaplen = frames.iter().map(Vec::len).max().unwrap();
    frames[5] = vec![0x11; snaplen + 1];
    for (name, bytes) in [
        ("cli-long.pcap", pcap(&frames, snaplen as u32)),
        ("cli-long.pcapng", pcapng(&frames, snaplen as u32)),
    ] {
        let t = temp(name, &bytes);
        let (status, stdout, stderr) = replay(t.path());
        assert!(status.success(), "{stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!(
                "lwkt-demo: {}: record 6: captured length {} bytes exceeds the snapshot length {snaplen}: malformed, not replayed",
                t.path(),
                snaplen + 1
            )),
            "{name}: {stderr}"
        );
        // Counted with the malformed frames, not replayed as one.
        assert!(
            stdout.contains(&format!("network: {n} frames (")),
            "{stdout}"
        );
        assert!(stdout.contains("over-snaplen 1)"), "{name}: {stdout}");
        assert!(!stdout.contains("non-ip"), "{name}: {stdout}");
    }
}
