//! Group commit: sessions committing at the same time share one flush.
//!
//! Every commit needs a flush before its 250: the bucket directory's fsync
//! after its rename, one syncfs(2) of the spool's file system under `limit
//! queue-sync filesystem`, or the commit log's fdatasync after its record.
//! A caller takes a ticket once its part is written; whoever finds no flush
//! running starts one covering every ticket taken so far, and the others
//! wait, parked, for the flush that covers theirs: each is woken only by
//! that flush, or to start the next one. Nobody is told "durable" before a
//! flush that started after their write has completed.

use std::io;
use std::sync::Mutex;
use std::thread::Thread;

#[derive(Default)]
struct State {
    /// Tickets handed out.
    issued: u64,
    /// Every ticket up to this one is durable.
    done: u64,
    /// An fsync is running.
    busy: bool,
    /// The last failed batch: tickets in `lo..=hi` get this error.
    failed: Option<(u64, u64, io::ErrorKind, String)>,
    /// Callers parked until `done` reaches their ticket, or until they
    /// are to start the next flush.
    waiting: Vec<(u64, Thread)>,
}

/// Shared by every clone of a `Spool`.
#[derive(Default)]
pub struct Group {
    state: Mutex<State>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Group")
    }
}

impl Group {
    /// Return once `flush` (this caller's or another's: every caller of one
    /// group passes the same) has completed, begun after this call began.
    /// Its error names what failed.
    pub fn sync(&self, flush: impl Fn() -> io::Result<()>) -> io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut g = lock();
        g.issued += 1;
        let mine = g.issued;
        // Bounded: each pass either runs an fsync that covers `mine` or
        // parks until a flush ends (or, spuriously, sooner).
        loop {
            if let Some((lo, hi, kind, msg)) = &g.failed
                && (*lo..=*hi).contains(&mine)
            {
                return Err(io::Error::new(*kind, msg.clone()));
            }
            if g.done >= mine {
                return Ok(());
            }
            if !g.busy {
                g.busy = true;
                let (from, upto) = (g.done + 1, g.issued);
                drop(g);
                let r = flush();
                g = lock();
                g.busy = false;
                g.done = upto;
                if let Err(e) = r {
                    g.failed = Some((from, upto, e.kind(), e.to_string()));
                }
                // Wake only whom this flush covered, and one caller it did
                // not, to start the next: a caller woken for nothing costs
                // two context switches, and with every session of the
                // spool on one group there are many.
                let (mut wake, mut next) = (Vec::new(), false);
                for (t, th) in &g.waiting {
                    if *t <= upto || !next {
                        next |= *t > upto;
                        wake.push(th.clone());
                    }
                }
                drop(g);
                for th in wake {
                    th.unpark();
                }
                g = lock();
                continue;
            }
            g.waiting.push((mine, std::thread::current()));
            drop(g);
            std::thread::park();
            g = lock();
            g.waiting.retain(|(t, _)| *t != mine);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    fn fsync(dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    #[test]
    fn concurrent_callers_all_return() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(Group::default());
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (s, p) = (s.clone(), d.path().to_path_buf());
                std::thread::spawn(move || (0..50).all(|_| s.sync(|| fsync(&p)).is_ok()))
            })
            .collect();
        assert!(hs.into_iter().all(|h| h.join().unwrap()));
        let g = s.state.lock().unwrap();
        assert_eq!((g.issued, g.done), (800, 800));
    }

    #[test]
    fn concurrent_callers_share_flushes() {
        let s = Arc::new(Group::default());
        let flushes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (s, flushes) = (s.clone(), flushes.clone());
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        s.sync(|| {
                            flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            Ok(())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let n = flushes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n < 160, "160 commits took {n} flushes: none were shared");
    }

    #[test]
    fn failures_reach_their_batch() {
        let s = Group::default();
        let e = s
            .sync(|| fsync(Path::new("/nonexistent/postern")))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A later batch that succeeds is not told about the old failure.
        let d = tempfile::tempdir().unwrap();
        assert!(s.sync(|| fsync(d.path())).is_ok());
    }
}
