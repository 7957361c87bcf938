//! The message workload: on every CPU a server thread owns a port; on
//! every CPU a client thread does synchronous `domsg` round trips to the
//! server of the next CPU, and an async client keeps several `call`s in
//! flight to the same server, awaited with `block_on`.

use core::pin::{pin, Pin};
use std::time::Instant;

use lwkt_core::{CpuId, Cur};
use lwkt_msg::{Msg, PortRef};

/// Async calls each async client keeps in flight.
const IN_FLIGHT: usize = 8;

pub(crate) fn messages(cur: &mut Cur, rounds: u64) -> String {
    let n = cur.my_cpu().ncpus() as u32;
    let start = Instant::now();
    let mut hs = Vec::new();
    // A server on every CPU, its port handed back at once (`serve`): each
    // gets `rounds` sync and `rounds` async requests, then closes its port.
    let serve = 2 * rounds;
    let ports: Vec<PortRef<u64>> = (0..n)
        .map(|c| {
            let builder = cur.builder().cpu(CpuId::new(c)).name("msg-server");
            let (h, port) = lwkt_msg::serve(builder, move |me, port: PortRef<u64>| {
                for _ in 0..serve {
                    let mut m = port.waitport(me).request().expect("requests only");
                    *m += 1;
                    m.reply(me.my_cpu(), Ok(()));
                }
                port.close(me);
            })
            .expect("spawn");
            hs.push(h);
            port
        })
        .collect();
    for c in 0..n {
        let next = (c + 1) % n;
        let port = ports[next as usize].clone();
        hs.push(spawn(cur, c, "msg-client", move |me| {
            let mut m = pin!(Msg::new(0u64));
            for _ in 0..rounds {
                port.domsg(me, m.as_mut()).expect("served");
            }
            assert_eq!(*m.body(), rounds, "a round trip was lost or repeated");
        }));
        let port = ports[next as usize].clone();
        hs.push(spawn(cur, c, "msg-async", move |me| {
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
