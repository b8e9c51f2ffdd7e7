//! AUTH failures per client address, shared by every session and listener
//! and kept across reloads: the per-session limit alone let one address
//! try a password every 80 ms by reconnecting. Each failure
//! counts for `limit auth-lockout`, counted from the latest one; a session
//! answers slower with each failure its address has, and refuses AUTH
//! outright past `limit auth-failures-per-ip`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Addresses remembered at most; past it, expired ones go first, then all
/// (an attacker with that many networks is not slowed by this anyway).
const MAX_ENTRIES: usize = 100_000;

fn table() -> &'static Mutex<HashMap<IpAddr, (u32, Instant)>> {
    static T: OnceLock<Mutex<HashMap<IpAddr, (u32, Instant)>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Failures from `key` that still count.
pub fn auth_failures(key: IpAddr, window: Duration) -> u32 {
    let t = table().lock().unwrap_or_else(|p| p.into_inner());
    match t.get(&key) {
        Some((n, last)) if last.elapsed() < window => *n,
        _ => 0,
    }
}

/// Count one more failure from `key`.
pub fn auth_failed(key: IpAddr, window: Duration) {
    let mut t = table().lock().unwrap_or_else(|p| p.into_inner());
    if t.len() >= MAX_ENTRIES {
        t.retain(|_, (_, last)| last.elapsed() < window);
        if t.len() >= MAX_ENTRIES {
            t.clear();
        }
    }
    let now = Instant::now();
    let e = t.entry(key).or_insert((0, now));
    if e.1.elapsed() >= window {
        e.0 = 0;
    }
    *e = (e.0.saturating_add(1), now);
}

#[cfg(test)]
#[test]
fn failures_count_until_the_window_passes() {
    let k: IpAddr = "192.0.2.200".parse().unwrap();
    let w = Duration::from_millis(300);
    assert_eq!(auth_failures(k, w), 0);
    auth_failed(k, w);
    auth_failed(k, w);
    assert_eq!(auth_failures(k, w), 2);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(auth_failures(k, w), 0);
    auth_failed(k, w);
    assert_eq!(auth_failures(k, w), 1);
}
