//! The message mesh of the `msg_vcpus` bench group, quick and side by side:
//! lwkt and the OS-thread design alternate, and the medians are printed.
//!
//! `cargo run --release -p lwkt-benches --example mesh -- [VCPUS...] [--runs N] [--one-to-one] [--ab]`
//! (default: 2 3 4 8 16 vCPUs, 5 runs each; more vCPUs than host cores run
//! M:N, `--one-to-one` forces a host thread per vCPU, `--ab` alternates M:N
//! and 1:1 instead of lwkt and OS threads).

use lwkt_benches::mesh;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut counts = Vec::new();
    let mut runs = 5;
    // `--one-to-one`: a host thread per vCPU (the design before M:N);
    // `--ab`: M:N and 1:1 alternately, instead of lwkt and OS threads.
    let (mut one_to_one, mut ab) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--one-to-one" {
            one_to_one = true;
        } else if a == "--ab" {
            ab = true;
        } else if a == "--runs" {
            runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N");
        } else {
            counts.push(a.parse::<usize>().expect("a vCPU count"));
        }
    }
    if counts.is_empty() {
        counts = vec![2, 3, 4, 8, 16];
    }
    if ab {
        println!("vcpus  M:N msg/s    1:1 msg/s   M:N/1:1 (median of per-pair ratios)");
    } else {
        println!("vcpus  lwkt msg/s   OS threads msg/s   lwkt/OS");
    }
    for n in counts {
        let per = mesh::per_client(20_000, n);
        let total = (per * n as u64) as f64;
        let hosts = if one_to_one {
            n
        } else {
            mesh::host_threads_for(n)
        };
        if hosts < n {
            eprintln!("({n} vCPUs on {hosts} host threads: M:N, switched in user space)");
        }
        let (mut l, mut o, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let a = total / mesh::lwkt_on(n, hosts, per).as_secs_f64();
            let b = if ab {
                total / mesh::lwkt_on(n, n, per).as_secs_f64()
            } else {
                total / mesh::os_threads(n, per).as_secs_f64()
            };
            l.push(a);
            o.push(b);
            r.push(a / b);
        }
        let (l, o, r) = (median(l), median(o), median(r));
        if ab {
            println!("{n:5}  {l:11.0}  {o:11.0}   {r:7.2}");
        } else {
            println!("{n:5}  {l:11.0}   {o:16.0}   {:7.2}", l / o);
        }
    }
}
