//! The `log` feature (turned on by this crate's dev-dependencies): the
//! shutdown report goes through the `log` facade.
#![cfg(feature = "log")]

use std::sync::Mutex;

use lwkt_core::CpuId;

struct Capture(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, r: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

static LOGGER: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn shutdown_report_warns_of_blocked_threads() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let (_, rep) = lwkt_arch_hosted::Machine::new(2)
        .unwrap()
        .run_with_report(|cur| {
            let _never = cur
                .spawn_on(CpuId::new(1), |me| {
                    me.deschedule_self();
                    me.switch(); // nobody schedules it again
                })
                .unwrap();
            for _ in 0..1000 {
                cur.yield_now();
            }
        });
    assert_eq!(rep.leaked_threads, 1);
    let logs = LOGGER.0.lock().unwrap();
    assert!(
        logs.iter()
            .any(|(l, m)| *l == log::Level::Warn
                && m.contains("1 thread(s) still blocked at shutdown")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|(l, m)| *l == log::Level::Debug && m.contains("machine of 2 CPUs stopped")),
        "{logs:?}"
    );
}
