//! Deadlines that a peer cannot stretch.
//!
//! A socket timeout bounds one `read()` or `write()`, not a reply: a peer
//! that sends one byte just before each timeout, or drips a TLS record
//! (rustls keeps reading until the record is whole), holds a thread for as
//! long as it likes. A [`Guard`] gives a connection a
//! deadline for the current step ([`Guard::arm`]) and a lifetime; one
//! thread shuts down the reading side of any connection past either, which
//! ends a blocked read at once while the owner can still say why (`421`),
//! and [`GRACE`] later the whole socket, which ends a blocked write too.
//! The owner sees end of input or an I/O error and asks [`Guard::fired`]
//! to name it as a timeout.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The watchdog thread checks at least this often; deadlines are kept to
/// within it.
const TICK: Duration = Duration::from_millis(250);

/// From the reading side's shutdown to the whole socket's.
pub const GRACE: Duration = Duration::from_secs(10);

struct Entry {
    sock: TcpStream,
    step: Instant,
    end: Instant,
    fired: Arc<AtomicBool>,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<HashMap<u64, Entry>>,
    wake: Condvar,
    next: AtomicU64,
}

fn inner() -> &'static Arc<Inner> {
    static WATCHDOG: OnceLock<Arc<Inner>> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let inner = Arc::new(Inner::default());
        let run = inner.clone();
        // Started on first use: by then the daemon has dropped privileges.
        let started = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || run.run());
        if let Err(e) = started {
            // Socket timeouts still bound each read and write.
            log::error!("cannot start the deadline watchdog: {e}");
        }
        inner
    })
}

impl Inner {
    fn run(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            entries.retain(|_, e| {
                if now < e.step.min(e.end) {
                    return true;
                }
                if e.fired.swap(true, Ordering::AcqRel) {
                    let _ = e.sock.shutdown(Shutdown::Both);
                    return false;
                }
                let _ = e.sock.shutdown(Shutdown::Read);
                (e.step, e.end) = (now + GRACE, now + GRACE);
                true
            });
            entries = self
                .wake
                .wait_timeout(entries, TICK)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A watched connection; dropping it stops the watch.
pub struct Guard {
    id: u64,
    fired: Arc<AtomicBool>,
}

/// Watch `sock` for at most `lifetime` from now; the first step's deadline
/// is the lifetime too, until [`Guard::arm`] sets one.
pub fn watch(sock: &TcpStream, lifetime: Duration) -> io::Result<Guard> {
    let inner = inner();
    let sock = sock.try_clone()?;
    let end = Instant::now() + lifetime;
    let fired = Arc::new(AtomicBool::new(false));
    let id = inner.next.fetch_add(1, Ordering::Relaxed);
    inner
        .entries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            id,
            Entry {
                sock,
                step: end,
                end,
                fired: fired.clone(),
            },
        );
    Ok(Guard { id, fired })
}

impl Guard {
    /// The current step (a reply, a write, a command) must be done within
    /// `limit`, and in any case before the connection's lifetime ends.
    pub fn arm(&self, limit: Duration) {
        let mut entries = inner().entries.lock().unwrap_or_else(|p| p.into_inner());
        // Once fired, only the grace period is left.
        if let Some(e) = entries
            .get_mut(&self.id)
            .filter(|e| !e.fired.load(Ordering::Acquire))
        {
            e.step = Instant::now() + limit;
        }
    }

    /// The watchdog shut the connection down: a deadline passed.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let inner = inner();
        inner
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (TcpStream, TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn a_dripping_peer_cannot_stretch_a_step() {
        let (mut c, mut s) = pair();
        let g = watch(&c, Duration::from_secs(60)).unwrap();
        g.arm(Duration::from_millis(600));
        // One byte every 200 ms: each read succeeds, the step never ends.
        let drip = std::thread::spawn(move || {
            for _ in 0..50 {
                if std::io::Write::write_all(&mut s, b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let t0 = Instant::now();
        let mut buf = [0u8; 1];
        let mut got = 0;
        // Bounded: 50 bytes at most come.
        while let Ok(1) = c.read(&mut buf) {
            got += 1;
        }
        let took = t0.elapsed();
        assert!(g.fired(), "the watchdog did not fire");
        assert!(got < 10, "read {got} bytes past the deadline");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        drop(drip);
    }

    #[test]
    fn the_lifetime_bounds_every_step() {
        let (mut c, _s) = pair();
        let g = watch(&c, Duration::from_millis(300)).unwrap();
        g.arm(Duration::from_secs(60));
        let mut buf = [0u8; 1];
        assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
        assert!(g.fired());
    }

    #[test]
    fn a_dropped_guard_stops_watching() {
        let (c, _s) = pair();
        let g = watch(&c, Duration::from_millis(100)).unwrap();
        let fired = g.fired.clone();
        drop(g);
        std::thread::sleep(Duration::from_millis(600));
        assert!(!fired.load(Ordering::Acquire));
    }
}
