//! Counters for `posternctl show stats`: plain atomics, bumped where the
//! event happens, never locked.

use std::sync::atomic::{AtomicU64, Ordering};

/// A counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Take one away (gauges).
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sessions open now.
pub static SESSIONS_ACTIVE: Counter = Counter::new();
/// Sessions since start.
pub static SESSIONS_TOTAL: Counter = Counter::new();
/// Sessions that completed a TLS handshake.
pub static SESSIONS_TLS: Counter = Counter::new();
/// Connections refused by a limit or a full pool.
pub static SESSIONS_REFUSED: Counter = Counter::new();
/// Messages queued.
pub static MESSAGES_IN: Counter = Counter::new();
/// Messages queued that arrived over TLS.
pub static MESSAGES_IN_TLS: Counter = Counter::new();
/// Recipients delivered.
pub static DELIVERED: Counter = Counter::new();
/// Recipients delivered remotely over TLS.
pub static DELIVERED_TLS: Counter = Counter::new();
/// Recipients delivered remotely (TLS or not).
pub static DELIVERED_REMOTE: Counter = Counter::new();
/// Recipients delivered to a server authenticated by DANE.
pub static DELIVERED_DANE: Counter = Counter::new();
/// TLSA lookups (RFC 7672 §2.2) that found secure, usable records.
pub static TLSA_USABLE: Counter = Counter::new();
/// TLSA lookups that found secure records, none usable.
pub static TLSA_UNUSABLE: Counter = Counter::new();
/// TLSA lookups that found no secure records.
pub static TLSA_NONE: Counter = Counter::new();
/// TLSA lookups that failed (the host was skipped).
pub static TLSA_FAILED: Counter = Counter::new();
/// Handshakes whose certificate matched the TLSA records.
pub static DANE_AUTHENTICATED: Counter = Counter::new();
/// Handshakes whose certificate matched no TLSA record.
pub static DANE_MISMATCHED: Counter = Counter::new();
/// Deferrals.
pub static DEFERRED: Counter = Counter::new();
/// Recipients bounced.
pub static BOUNCED: Counter = Counter::new();

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// The `show stats` text; `queue` is the scheduler's message count.
pub fn report(queue: usize) -> String {
    let (tin, min) = (MESSAGES_IN_TLS.get(), MESSAGES_IN.get());
    let (tout, rout) = (DELIVERED_TLS.get(), DELIVERED_REMOTE.get());
    format!(
        "sessions.active={}\nsessions.total={}\nsessions.tls={}\nsessions.refused={}\n\
         messages.in={min}\nmessages.in.tls-share={}\n\
         recipients.delivered={}\nrecipients.remote={rout}\nrecipients.remote.tls-share={}\n\
         recipients.remote.dane={}\n\
         recipients.deferred={}\nrecipients.bounced={}\nqueue.messages={queue}\n\
         tlsa.usable={}\ntlsa.unusable={}\ntlsa.none={}\ntlsa.error={}\n\
         dane.authenticated={}\ndane.mismatched={}\n",
        SESSIONS_ACTIVE.get(),
        SESSIONS_TOTAL.get(),
        SESSIONS_TLS.get(),
        SESSIONS_REFUSED.get(),
        share(tin, min),
        DELIVERED.get(),
        share(tout, rout),
        DELIVERED_DANE.get(),
        DEFERRED.get(),
        BOUNCED.get(),
        TLSA_USABLE.get(),
        TLSA_UNUSABLE.get(),
        TLSA_NONE.get(),
        TLSA_FAILED.get(),
        DANE_AUTHENTICATED.get(),
        DANE_MISMATCHED.get(),
    )
}
