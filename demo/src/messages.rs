//! The message workload: on every CPU a server thread owns a port; on
//! every CPU a client thread does synchronous `domsg` round trips to the
//! server of the next CPU, and an async client keeps several `call`s in
//! flight to the same server, awaited with `block_on`.

use core::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use lwkt_core::{CpuId, Cur};
use lwkt_msg::{Msg, Port};

/// Async calls each async client keeps in flight.
const IN_FLIGHT: usize = 8;

pub(crate) fn messages(cur: &mut Cur, rounds: u64) -> String {
    let n = cur.my_cpu().ncpus() as u32;
    let ports: Arc<Vec<OnceLock<&'static Port<u64>>>> =
        Arc::new((0..n).map(|_| OnceLock::new()).collect());
    let start = Instant::now();
    let mut hs = Vec::new();
    for c in 0..n {
        let ports = ports.clone();
        // Each server gets `rounds` sync and `rounds` async requests.
        let serve = 2 * rounds;
        hs.push(spawn(cur, c, "msg-server", move |me| {
            let port = Port::thread(me).leak();
            assert!(ports[c as usize].set(port).is_ok(), "one port per CPU");
            for _ in 0..serve {
                let mut m = port.waitport(me).request().expect("requests only");
                *m += 1;
                m.reply(me.my_cpu(), Ok(()));
            }
            port.close(me);
        }));
    }
    for c in 0..n {
        let next = (c + 1) % n;
        let p = ports.clone();
        hs.push(spawn(cur, c, "msg-client", move |me| {
            let port = wait_port(me, &p[next as usize]);
            let mut m = pin!(Msg::new(0u64));
            for _ in 0..rounds {
                port.domsg(me, m.as_mut()).expect("served");
            }
            assert_eq!(*m.body(), rounds, "a round trip was lost or repeated");
        }));
        let p = ports.clone();
        hs.push(spawn(cur, c, "msg-async", move |me| {
            let port = wait_port(me, &p[next as usize]);
            let mut ms: Vec<Pin<Box<Msg<u64>>>> =
                (0..IN_FLIGHT).map(|_| Box::pin(Msg::new(0u64))).collect();
            let done = lwkt_msg::block_on(me, async |my| {
                let mut done = 0;
                while done < rounds {
                    let k = (rounds - done).min(IN_FLIGHT as u64) as usize;
                    let mut futs: Vec<_> = ms[..k]
                        .iter_mut()
                        .map(|m| port.call(my, m.as_mut()))
                        .collect();
                    for f in futs.iter_mut() {
                        f.await.expect("served");
                    }
                    done += k as u64;
                }
                done
            });
            let served: u64 = ms.iter().map(|m| *m.body()).sum();
            assert_eq!(served, done, "an async call was lost or repeated");
        }));
    }
    for h in &hs {
        cur.join(h);
    }
    let secs = start.elapsed().as_secs_f64();
    let total = 2 * rounds * u64::from(n);
    format!(
        "messages: {total} requests ({} domsg round trips, {} async calls, {IN_FLIGHT} in flight) \
         to {n} servers in {secs:.3} s ({:.0} ns per request), every one replied once",
        rounds * u64::from(n),
        rounds * u64::from(n),
        secs * 1e9 / total as f64
    )
}

fn spawn(
    cur: &mut Cur,
    cpu: u32,
    name: &'static str,
    f: impl FnOnce(&mut Cur) + Send + 'static,
) -> lwkt_core::ThreadHandle {
    cur.builder()
        .cpu(CpuId::new(cpu))
        .name(name)
        .spawn(f)
        .expect("spawn")
}

fn wait_port(me: &mut Cur, slot: &OnceLock<&'static Port<u64>>) -> &'static Port<u64> {
    loop {
        if let Some(p) = slot.get() {
            return p;
        }
        me.yield_now();
    }
}
