//! The command-line options (`-append`) both test kernels take, and the
//! parsing loop, which a kernel extends with its own options.

use alloc::string::String;

/// The options both kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opts {
    /// `rounds=N`: rounds of each counted part of the test program
    /// (default 200, at least 1).
    pub rounds: u64,
    /// `fault=CPU`: that CPU (not the boot CPU) faults on purpose once
    /// online: the negative test of the fault report.
    pub fault: Option<usize>,
    /// `expect-cpus=N`: wait for N CPUs instead of the firmware's count
    /// (more than exist tests the "a CPU never came online" path).
    pub expect_cpus: Option<usize>,
    /// `hang`: the test thread sleeps forever after the tests: the
    /// negative test of the xtask's timeout and its per-CPU dump.
    pub hang: bool,
    /// `attach-twice`: the boot CPU attaches its `Cpu` a second time: the
    /// negative test of `attach`'s check that one CPU drives one `Cpu`.
    pub attach_twice: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            rounds: 200,
            fault: None,
            expect_cpus: None,
            hang: false,
            attach_twice: false,
        }
    }
}

/// The options of [`Opts`], as the "known" list of an error names them.
pub const KNOWN: &str = "rounds=N fault=CPU expect-cpus=N hang attach-twice";

/// The value of option `word` (`key=value`) as a number.
pub fn number(word: &str, value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| alloc::format!("option '{word}': '{value}' is not a number"))
}

/// Parse `cmdline`: each word is `key` or `key=value`; the common
/// options go into the result, every other word to `extra(word, key,
/// value)`, which takes it (`Ok(true)`), refuses it with a reason, or
/// does not know it (`Ok(false)`: then "unknown option" names every
/// known one, ours and `extra_known`).
pub fn parse(
    cmdline: &str,
    extra_known: &str,
    mut extra: impl FnMut(&str, &str, &str) -> Result<bool, String>,
) -> Result<Opts, String> {
    let mut o = Opts::default();
    for w in cmdline.split_whitespace() {
        let (k, v) = w.split_once('=').unwrap_or((w, ""));
        match k {
            "rounds" => o.rounds = number(w, v)?.max(1),
            "fault" => o.fault = Some(number(w, v)? as usize),
            "expect-cpus" => o.expect_cpus = Some(number(w, v)? as usize),
            "hang" => o.hang = true,
            "attach-twice" => o.attach_twice = true,
            _ if extra(w, k, v)? => {}
            _ => {
                let sep = if extra_known.is_empty() { "" } else { " " };
                return Err(alloc::format!(
                    "unknown option '{w}' (known: {KNOWN}{sep}{extra_known})"
                ));
            }
        }
    }
    Ok(o)
}

impl Opts {
    /// The CPU count the kernel runs with: `expect-cpus`, or the
    /// firmware's `found`; checked (1 to `max`, and a `fault` CPU that is
    /// not the boot CPU and exists).
    pub fn ncpus(&self, found: usize, max: usize) -> Result<usize, String> {
        let ncpus = self.expect_cpus.unwrap_or(found);
        if ncpus == 0 || ncpus > max {
            return Err(alloc::format!(
                "{ncpus} CPUs: this kernel supports 1 to {max}"
            ));
        }
        if let Some(f) = self.fault.filter(|&f| f == 0 || f >= ncpus) {
            return Err(alloc::format!(
                "fault={f}: pick a CPU other than the boot CPU, 1 to {}",
                ncpus - 1
            ));
        }
        Ok(ncpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_options_and_a_kernels_own() {
        let mut seen = alloc::vec::Vec::new();
        let o = parse("rounds=0 fault=2 hang own=x", "own=X", |w, k, v| {
            seen.push((String::from(w), String::from(k), String::from(v)));
            Ok(k == "own")
        })
        .unwrap();
        assert_eq!(o.rounds, 1, "at least one round");
        assert_eq!((o.fault, o.hang, o.attach_twice), (Some(2), true, false));
        assert_eq!(seen, [("own=x".into(), "own".into(), "x".into())]);
        let e = parse("bogus=1", "own=X", |_, _, _| Ok(false)).unwrap_err();
        assert!(
            e.contains("unknown option 'bogus=1'") && e.ends_with("attach-twice own=X)"),
            "{e}"
        );
        let e = parse("rounds=x", "", |_, _, _| Ok(false)).unwrap_err();
        assert_eq!(e, "option 'rounds=x': 'x' is not a number");
        assert_eq!(o.ncpus(4, 256), Ok(4));
        assert!(o.ncpus(2, 256).unwrap_err().starts_with("fault=2: pick"));
        assert!(Opts::default()
            .ncpus(300, 256)
            .unwrap_err()
            .contains("1 to 256"));
    }
}
