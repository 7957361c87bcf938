//! `cargo xtask miri`: every test of lwkt-token, lwkt-core, lwkt-msg,
//! lwkt-slab and lwkt-netdispatch that does not need the hosted backend,
//! under Miri.
//!
//! The hosted backend (lwkt-arch-hosted) switches stacks with inline
//! assembly and delivers IPIs with SIGUSR1, neither of which Miri can run,
//! so what uses it is left out by a rule, found afresh on every run:
//!
//! - unit tests (`--lib`): all run (they model CPUs with plain threads);
//! - integration tests (`tests/*.rs`): a file that names `lwkt_arch_hosted`
//!   (itself or a `mod` it declares) is left out;
//! - doctests: listed by rustdoc, each code block read from its source (or
//!   from the README a `#[doc = include_str!(..)]` brings in); a block that
//!   names `lwkt_arch_hosted` is left out, and so is one marked
//!   `compile_fail`, `no_run` or `ignore` (nothing runs; `cargo test`
//!   checks them). The others are selected by a filter (see
//!   [`doc_filters`]).
//!
//! [`MARKERS`] also leaves out what uses lwkt-slab's mmap page source
//! (`HostedPages`, `GlobalSlab`: `MAP_NORESERVE`, which Miri's `mmap`
//! refuses); [`EXCLUDED`] names the few others, each with why. Every exclusion is
//! printed with its reason. Isolation is off (`-Zmiri-disable-isolation`):
//! the fixture and corpus tests read files, and proptest looks up its
//! working directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The crates whose tests run under Miri.
const CRATES: &[(&str, &str)] = &[
    ("lwkt-token", "crates/lwkt-token"),
    ("lwkt-core", "crates/lwkt-core"),
    ("lwkt-msg", "crates/lwkt-msg"),
    ("lwkt-slab", "crates/lwkt-slab"),
    ("lwkt-netdispatch", "crates/lwkt-netdispatch"),
];

/// What marks a test (its file, or a doctest's code block) as one Miri
/// cannot run, and why.
const MARKERS: &[(&str, &str)] = &[
    (
        "lwkt_arch_hosted",
        "uses the hosted backend (inline-assembly stack switch, SIGUSR1 IPIs)",
    ),
    (
        "HostedPages",
        "uses lwkt-slab's HostedPages, which maps with MAP_NORESERVE: Miri's \
         mmap takes only MAP_PRIVATE|MAP_ANONYMOUS",
    ),
    (
        "GlobalSlab",
        "uses lwkt-slab's GlobalSlab (HostedPages inside: MAP_NORESERVE)",
    ),
];

/// Why `text` cannot run under Miri, if a marker is in it.
fn marked(text: &str) -> Option<&'static str> {
    MARKERS
        .iter()
        .find(|(m, _)| text.contains(m))
        .map(|(_, why)| *why)
}

/// Where a test lives, for [`EXCLUDED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A whole integration test target (`tests/<name>.rs`).
    Target,
    /// One test (a libtest name) of the crate's unit or integration tests.
    Test,
}

/// Left out of Miri although they do not use the hosted backend:
/// (crate, kind, name, why).
pub(crate) const EXCLUDED: &[(&str, Kind, &str, &str)] = &[
    (
        "lwkt-netdispatch",
        Kind::Target,
        "capture",
        "2046 captured frames classified and hashed for 16 dispatchers: \
         safe code (etherparse, the Toeplitz tables), hours under Miri",
    ),
    (
        "lwkt-netdispatch",
        Kind::Target,
        "fuzz_corpus",
        "111 corpus inputs through the classifier and dispatcher: safe code, \
         12 minutes under Miri (cargo test replays the corpus, cargo xtask \
         fuzz runs from it)",
    ),
    (
        "lwkt-netdispatch",
        Kind::Test,
        "both_directions_hash_alike_with_the_default_key",
        "10,000 random flows hashed both ways: safe code, 104 s under Miri",
    ),
    (
        "lwkt-netdispatch",
        Kind::Test,
        "ipv4_fragments_all_go_to_one_cpu",
        "fragment trains for 1 to 16 CPUs: safe code, 68 s under Miri",
    ),
    (
        "lwkt-netdispatch",
        Kind::Test,
        "never_panics",
        "a proptest of the classifier on arbitrary bytes: safe code, 41 s under \
         Miri for 4 cases (the fuzz target covers it)",
    ),
    (
        "lwkt-netdispatch",
        Kind::Test,
        "flows_spread_evenly_over_1_to_16_cpus",
        "a statistical test over 100,000 flows per CPU count: safe code, \
         hours under Miri",
    ),
];

/// One integration test target or doctest, and why it is left out.
struct Found {
    name: String,
    excluded: Option<String>,
}

/// Why the test file `path` cannot run under Miri, if a marker is in it or
/// in a `mod` file it declares.
fn test_file_marked(path: &Path) -> Result<Option<&'static str>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(why) = marked(&text) {
        return Ok(Some(why));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    for line in text.lines() {
        let Some(m) = line.trim().strip_prefix("mod ") else {
            continue;
        };
        let m = m.trim_end_matches(';').trim();
        for f in [dir.join(m).join("mod.rs"), dir.join(format!("{m}.rs"))] {
            if let Some(why) = std::fs::read_to_string(&f).ok().and_then(|t| marked(&t)) {
                return Ok(Some(why));
            }
        }
    }
    Ok(None)
}

/// The crate's integration test targets (`tests/*.rs`), classified.
fn integration_tests(krate: &str, dir: &Path) -> Result<Vec<Found>, String> {
    let tests = dir.join("tests");
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(&tests) else {
        return Ok(v);
    };
    for e in rd {
        let p = e.map_err(|e| format!("{}: {e}", tests.display()))?.path();
        if p.extension().is_none_or(|x| x != "rs") {
            continue;
        }
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let listed = EXCLUDED
            .iter()
            .find(|(c, k, n, _)| *c == krate && *k == Kind::Target && *n == name);
        let excluded = if let Some((_, _, _, why)) = listed {
            Some((*why).to_string())
        } else {
            test_file_marked(&p)?.map(str::to_string)
        };
        v.push(Found { name, excluded });
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// The doc-comment text of a source line (`///`, `//!`), or the line.
fn doc_text(line: &str) -> &str {
    let t = line.trim_start();
    t.strip_prefix("///")
        .or_else(|| t.strip_prefix("//!"))
        .map_or(t, |r| r.strip_prefix(' ').unwrap_or(r))
}

/// The fence line and body of the code block opening at (1-based) `line`
/// of `lines`.
fn block_at(lines: &[&str], line: usize) -> Option<(String, String)> {
    let fence = doc_text(lines.get(line.checked_sub(1)?)?);
    if !fence.starts_with("```") {
        return None;
    }
    let body: Vec<&str> = lines[line..]
        .iter()
        .map(|l| doc_text(l))
        .take_while(|l| !l.starts_with("```"))
        .collect();
    Some((fence.to_string(), body.join("\n")))
}

/// The code block of doctest `file` line `line`: in the file, or in the
/// file a `#[doc = include_str!("..")]` at line L brings in, where rustdoc
/// numbers its line k as L + k - 1.
fn doctest_block(root: &Path, file: &str, line: usize) -> Result<(String, String), String> {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    if let Some(b) = block_at(&lines, line) {
        return Ok(b);
    }
    for at in (1..=line.min(lines.len())).rev() {
        let l = lines[at - 1];
        let Some(rest) = l.split("include_str!(\"").nth(1) else {
            continue;
        };
        let inc = rest.split('"').next().unwrap_or_default();
        let inc_path = path.parent().unwrap_or(root).join(inc);
        let inc_text = std::fs::read_to_string(&inc_path)
            .map_err(|e| format!("{}: {e}", inc_path.display()))?;
        let inc_lines: Vec<&str> = inc_text.lines().collect();
        if let Some(b) = block_at(&inc_lines, line - at + 1) {
            return Ok(b);
        }
        break;
    }
    Err(format!(
        "doctest at {file} line {line}: no code block found there (xtask miri cannot classify it)"
    ))
}

/// The crate's doctests, classified. Names are as libtest lists them:
/// `FILE - ITEM (line N)`.
fn doctests(root: &Path, krate: &str, target_dir: &Path) -> Result<Vec<Found>, String> {
    let out = Command::new("cargo")
        .current_dir(root)
        .args([
            "+nightly", "miri", "test", "--doc", "-p", krate, "--", "--list",
        ])
        .env("CARGO_TARGET_DIR", target_dir)
        .output()
        .map_err(|e| format!("cannot list the doctests of {krate}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "listing the doctests of {krate} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut v = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = l.strip_suffix(": test") else {
            continue;
        };
        let (file, line) = name
            .split_once(" - ")
            .and_then(|(file, rest)| {
                let n = rest.rsplit_once("(line ")?.1.split(')').next()?;
                Some((file, n.parse::<usize>().ok()?))
            })
            .ok_or_else(|| format!("doctest name not understood: '{name}'"))?;
        let (fence, body) = doctest_block(root, file, line)?;
        let excluded = if ["compile_fail", "no_run", "ignore"]
            .iter()
            .any(|m| fence.contains(m))
        {
            Some(format!("{}: nothing runs", fence.trim_start_matches('`')))
        } else {
            marked(&body).map(str::to_string)
        };
        v.push(Found {
            name: name.to_string(),
            excluded,
        });
    }
    Ok(v)
}

/// Positive filters that select every runnable doctest and no excluded
/// one, and the runnable doctests no filter can single out.
///
/// rustdoc splits its test arguments at whitespace, and a doctest's name is
/// `FILE - ITEM (line N)`: a filter is one of its space-free pieces, chosen
/// so that no excluded doctest's name contains it: the item's path, else
/// `N)`, else the file.
fn doc_filters(docs: &[Found]) -> (Vec<String>, Vec<&Found>) {
    let excluded: Vec<&str> = docs
        .iter()
        .filter(|d| d.excluded.is_some())
        .map(|d| d.name.as_str())
        .collect();
    let (mut filters, mut lost) = (Vec::<String>::new(), Vec::new());
    for d in docs.iter().filter(|d| d.excluded.is_none()) {
        let (file, rest) = d.name.split_once(" - ").unwrap_or((&d.name, ""));
        let (item, line) = rest.rsplit_once(" (line ").unwrap_or((rest, ""));
        let key = [item, line, file].into_iter().find(|k| {
            !k.is_empty()
                && !k.contains(char::is_whitespace)
                && !excluded.iter().any(|e| e.contains(k))
        });
        match key {
            Some(k) if !filters.iter().any(|f| f == k) => filters.push(k.to_string()),
            Some(_) => {}
            None => lost.push(d),
        }
    }
    (filters, lost)
}

fn miri_cargo(root: &Path, target_dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root)
        .args(["+nightly", "miri", "test"])
        .env("CARGO_TARGET_DIR", target_dir)
        .env(
            "MIRIFLAGS",
            "-Zmiri-strict-provenance -Zmiri-disable-isolation",
        )
        // Proptests without a case count of their own: a few cases.
        .env("PROPTEST_CASES", "4");
    c
}

fn report(what: &str, krate: &str, found: &[Found]) {
    for f in found {
        if let Some(why) = &f.excluded {
            eprintln!("xtask: miri: {krate} {what} '{}' left out: {why}", f.name);
        }
    }
}

pub(crate) fn miri() -> Result<(), String> {
    crate::nightly(&["miri", "rust-src"])?;
    crate::run(Command::new("cargo").args(["+nightly", "miri", "setup"]))?;
    let root = crate::root();
    let target_dir: PathBuf = crate::tool_target_dir("miri");
    let start = Instant::now();
    let (mut ran, mut left) = (0usize, 0usize);
    for (krate, dir) in CRATES {
        let targets = integration_tests(krate, &root.join(dir))?;
        report("test target", krate, &targets);
        let mut cmd = miri_cargo(&root, &target_dir);
        cmd.args(["-p", krate, "--lib"]);
        for t in targets.iter().filter(|t| t.excluded.is_none()) {
            cmd.args(["--test", &t.name]);
        }
        cmd.arg("--");
        for (_, _, name, why) in EXCLUDED
            .iter()
            .filter(|(c, k, _, _)| c == krate && *k == Kind::Test)
        {
            eprintln!("xtask: miri: {krate} test '{name}' left out: {why}");
            cmd.args(["--skip", name]);
        }
        crate::run(&mut cmd)?;

        let docs = doctests(&root, krate, &target_dir)?;
        report("doctest", krate, &docs);
        let (filters, lost) = doc_filters(&docs);
        for d in &lost {
            eprintln!(
                "xtask: miri: {krate} doctest '{}' left out: no filter selects it without an \
                 excluded block of the same item",
                d.name
            );
        }
        let run_docs = docs
            .iter()
            .filter(|d| filters.iter().any(|f| d.name.contains(f.as_str())))
            .count();
        ran += targets.iter().filter(|t| t.excluded.is_none()).count() + run_docs;
        left += targets.iter().filter(|t| t.excluded.is_some()).count() + docs.len() - run_docs;
        if !filters.is_empty() {
            let mut cmd = miri_cargo(&root, &target_dir);
            cmd.args(["--doc", "-p", krate, "--"]).args(&filters);
            crate::run(&mut cmd)?;
        }
    }
    eprintln!(
        "xtask: miri: done in {:.0} s: unit tests of {} crates, {ran} integration test targets \
         and doctests run, {left} left out (listed above)",
        start.elapsed().as_secs_f64(),
        CRATES.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_blocks_are_found_in_comments_and_included_files() {
        let lines = [
            "/// text",
            "/// ```compile_fail",
            "/// let x = 1;",
            "/// ```",
            "fn f() {}",
        ];
        let (fence, body) = block_at(&lines, 2).unwrap();
        assert_eq!(
            (fence.as_str(), body.as_str()),
            ("```compile_fail", "let x = 1;")
        );
        assert!(block_at(&lines, 1).is_none());
        // The README of lwkt-msg, brought in by include_str: rustdoc's line
        // for its first block is the attribute's line plus the block's
        // line in the README, less one.
        let root = crate::root();
        let lib = std::fs::read_to_string(root.join("crates/lwkt-msg/src/lib.rs")).unwrap();
        let at = lib
            .lines()
            .position(|l| l.contains("include_str!(\"../README.md\")"))
            .unwrap()
            + 1;
        let readme = std::fs::read_to_string(root.join("crates/lwkt-msg/README.md")).unwrap();
        let k = readme
            .lines()
            .position(|l| l.starts_with("```rust"))
            .unwrap()
            + 1;
        let (fence, body) = doctest_block(&root, "crates/lwkt-msg/src/lib.rs", at + k - 1).unwrap();
        assert_eq!(fence, "```rust");
        assert!(marked(&body).is_some());
    }

    #[test]
    fn doctest_filters_select_the_runnable_and_no_excluded_one() {
        let found = |name: &str, excluded: bool| Found {
            name: name.to_string(),
            excluded: excluded.then(|| "why".to_string()),
        };
        let docs = [
            found("src/a.rs - a::Cur (line 4)", true),
            found("src/a.rs - a::Cur (line 9)", false),
            found("src/a.rs - a::Cur::spin (line 20)", false),
            found("src/a.rs - a::Msg (line 30)", true),
            found("src/a.rs - a::MsgFlags (line 40)", false),
            found("src/lib.rs - (line 3)", false),
            found("src/c.rs - c::X (line 3)", true),
            found("src/c.rs - c::X (line 13)", true),
            found("src/d.rs - d::Y (line 3)", true),
            found("src/d.rs - d::Y (line 13)", false),
        ];
        let (filters, lost) = doc_filters(&docs);
        assert_eq!(filters, ["9)", "a::Cur::spin", "a::MsgFlags", "src/lib.rs"]);
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].name, "src/d.rs - d::Y (line 13)");
        for d in &docs {
            let selected = filters.iter().any(|f| d.name.contains(f.as_str()));
            assert!(!(selected && d.excluded.is_some()), "{} selected", d.name);
        }
    }

    #[test]
    fn a_test_file_miri_cannot_run_is_found() {
        let root = crate::root();
        assert!(
            test_file_marked(&root.join("crates/lwkt-msg/tests/stress.rs"))
                .unwrap()
                .is_some()
        );
        assert!(
            test_file_marked(&root.join("crates/lwkt-netdispatch/tests/rss.rs"))
                .unwrap()
                .is_none()
        );
    }
}
