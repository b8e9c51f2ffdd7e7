//! Group commit for the spool directory's fsync.
//!
//! Every commit renames its files into `mail/` and then needs `mail/`
//! fsynced before its 250. Sessions committing at the same time share one
//! fsync: a caller takes a ticket after its renames; whoever finds no fsync
//! running starts one covering every ticket taken so far, and the others
//! wait for the fsync that covers theirs. Nobody is told "durable" before an
//! fsync that started after their renames has completed.

use std::io;
use std::path::Path;
use std::sync::{Condvar, Mutex};

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
}

/// Shared by every clone of a `Spool`.
#[derive(Default)]
pub struct DirSync {
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for DirSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirSync")
    }
}

fn fsync(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl DirSync {
    /// Return once `dir` has been fsynced after this call began.
    pub fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.issued += 1;
        let mine = g.issued;
        // Bounded: each pass either runs an fsync that covers `mine` or
        // waits for one that started later than the last check.
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
                let r = fsync(dir);
                g = self.state.lock().unwrap_or_else(|p| p.into_inner());
                g.busy = false;
                g.done = upto;
                if let Err(e) = r {
                    g.failed = Some((from, upto, e.kind(), format!("{}: {e}", dir.display())));
                }
                self.cv.notify_all();
                continue;
            }
            g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn concurrent_callers_all_return() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(DirSync::default());
        let hs: Vec<_> = (0..16)
            .map(|_| {
                let (s, p) = (s.clone(), d.path().to_path_buf());
                std::thread::spawn(move || (0..50).all(|_| s.sync(&p).is_ok()))
            })
            .collect();
        assert!(hs.into_iter().all(|h| h.join().unwrap()));
        let g = s.state.lock().unwrap();
        assert_eq!((g.issued, g.done), (800, 800));
    }

    #[test]
    fn failures_reach_their_batch() {
        let s = DirSync::default();
        let e = s.sync(Path::new("/nonexistent/postern")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // A later batch that succeeds is not told about the old failure.
        let d = tempfile::tempdir().unwrap();
        assert!(s.sync(d.path()).is_ok());
    }
}
