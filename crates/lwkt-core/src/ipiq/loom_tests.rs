//! Loom models of the IPI ring and doorbell (run with `RUSTFLAGS="--cfg loom"`).

use loom::sync::Arc;
use loom::thread;

use super::Ring;

/// Producer and consumer on two threads: every value arrives once, in order.
#[test]
fn ring_spsc_in_order() {
    loom::model(|| {
        let r: Arc<Ring<u32, 2>> = Arc::new(Ring::new());
        let p = r.clone();
        let t = thread::spawn(move || {
            for i in 0..3u32 {
                // SAFETY: this thread is the only producer.
                while unsafe { p.push(i) }.is_err() {
                    thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < 3 {
            // SAFETY: this thread is the only consumer.
            if let Some(v) = unsafe { r.pop() } {
                assert_eq!(v, next);
                next += 1;
            } else {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { r.pop() }, None);
    });
}
