//! Pools of idle byte buffers: a message or a session takes one that an
//! earlier one gave back instead of allocating its own. Allocating tens of
//! KiB per message had glibc's malloc consolidate its free lists each time,
//! and per connection it faults in pages the thread's arena had just given
//! back (perf, `make bench` rows b and a).

use std::sync::Mutex;

/// Size of a socket read buffer: a session's, and a TLS read-ahead's.
pub const READ: usize = 16 * 1024;

/// Socket read buffers, each [`READ`] bytes long.
pub static READS: Pool = Pool::new(128, READ);

/// Up to `max_idle` buffers waiting to be used again.
pub struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
    max_idle: usize,
    /// One whose capacity grew past this is let go, so the pool's memory
    /// stays bounded by `max_idle` times it.
    max_keep: usize,
}

impl Pool {
    /// An empty pool.
    pub const fn new(max_idle: usize, max_keep: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_idle,
            max_keep,
        }
    }

    /// A buffer given back earlier, as it was given back; None if there is
    /// none.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keep `b` for a later [`Pool::take`], unless it grew too big or
    /// enough are kept already.
    pub fn give(&self, b: Vec<u8>) {
        if b.capacity() > self.max_keep {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(b);
        }
    }
}

/// A read buffer of [`READ`] bytes, from the pool or new; its contents are
/// whatever was read into it before.
pub fn read_buffer() -> Vec<u8> {
    match READS.take() {
        Some(b) if b.len() == READ => b,
        _ => vec![0u8; READ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_within_bounds() {
        let p = Pool::new(2, 100);
        assert!(p.take().is_none());
        let b = Vec::with_capacity(50);
        let at = b.as_ptr();
        p.give(b);
        assert_eq!(p.take().map(|b| b.as_ptr()), Some(at), "the same one back");
        p.give(Vec::with_capacity(1000));
        assert!(p.take().is_none(), "one that grew too big is let go");
        for _ in 0..3 {
            p.give(Vec::with_capacity(10));
        }
        assert_eq!(p.idle.lock().unwrap().len(), 2, "at most max_idle kept");
    }
}
