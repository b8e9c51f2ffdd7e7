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
    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
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

/// Inbound TLS handshakes that completed, by version.
pub static TLS_V12: Counter = Counter::new();
/// Likewise, TLS 1.3.
pub static TLS_V13: Counter = Counter::new();
/// Inbound handshakes that failed: an error (alert, protocol).
pub static TLS_HANDSHAKE_ERRORS: Counter = Counter::new();
/// Inbound handshakes the client gave up on (closed, went silent).
pub static TLS_CLIENT_GAVE_UP: Counter = Counter::new();
/// EHLO replies that offered STARTTLS.
pub static STARTTLS_OFFERED: Counter = Counter::new();
/// AUTH successes.
pub static AUTH_OK: Counter = Counter::new();
/// AUTH failures.
pub static AUTH_FAILED: Counter = Counter::new();
/// Messages refused at the end of DATA (size, bare newlines, hops, disk).
pub static MESSAGES_REFUSED: Counter = Counter::new();
/// Bytes of messages queued.
pub static BYTES_IN: Counter = Counter::new();
/// Recipients delivered to a server authenticated by MTA-STS.
pub static DELIVERED_STS: Counter = Counter::new();
/// Recipients delivered to a server whose chain verified against a CA.
pub static DELIVERED_CA: Counter = Counter::new();
/// `may` handshakes that failed and were retried without TLS.
pub static DOWNGRADES: Counter = Counter::new();
/// Hosts given up on by the TLS policy: STARTTLS not offered.
pub static POLICY_NOT_OFFERED: Counter = Counter::new();
/// ... STARTTLS refused.
pub static POLICY_REFUSED: Counter = Counter::new();
/// ... the handshake (or the certificate check) failed.
pub static POLICY_HANDSHAKE: Counter = Counter::new();
/// ... bytes after the 220 to STARTTLS.
pub static POLICY_BYTES_AFTER_220: Counter = Counter::new();
/// ... skipped by DANE or MTA-STS before connecting.
pub static POLICY_SKIPPED: Counter = Counter::new();
/// ... unsuitable for a REQUIRETLS message.
pub static POLICY_REQUIRETLS: Counter = Counter::new();
/// Messages committed to the spool.
pub static SPOOL_COMMITS: Counter = Counter::new();
/// How long a commit's fsyncs (file and directory) took.
pub static SPOOL_FSYNC: Histogram = Histogram::new();

/// A latency histogram with fixed buckets (seconds).
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// Upper bounds of the histogram buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            counts: [const { AtomicU64::new(0) }; BUCKETS.len()],
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Queue figures the scheduler knows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Queue {
    /// Messages in the queue.
    pub messages: usize,
    /// Age of the oldest, in seconds (0 when empty).
    pub oldest: u64,
}

/// The counters in the Prometheus text format (version 0.0.4): fixed
/// label sets only, never a domain or an address.
pub fn prometheus(q: Queue) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, rows: &[(&str, u64)]| {
        o.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, v) in rows {
            if labels.is_empty() {
                o.push_str(&format!("{name} {v}\n"));
            } else {
                o.push_str(&format!("{name}{{{labels}}} {v}\n"));
            }
        }
    };
    let remote = DELIVERED_REMOTE.get();
    let none =
        remote.saturating_sub(DELIVERED_DANE.get() + DELIVERED_STS.get() + DELIVERED_CA.get());
    family(
        "postern_sessions_total",
        "counter",
        "SMTP sessions accepted.",
        &[("", SESSIONS_TOTAL.get())],
    );
    family(
        "postern_sessions_active",
        "gauge",
        "SMTP sessions open now.",
        &[("", SESSIONS_ACTIVE.get())],
    );
    family(
        "postern_sessions_refused_total",
        "counter",
        "Connections refused by a limit, a full pool or a missing PROXY header.",
        &[("", SESSIONS_REFUSED.get())],
    );
    family(
        "postern_starttls_offered_total",
        "counter",
        "EHLO replies that offered STARTTLS.",
        &[("", STARTTLS_OFFERED.get())],
    );
    family(
        "postern_tls_handshakes_total",
        "counter",
        "Inbound TLS handshakes (STARTTLS and smtps) by result and version.",
        &[
            ("result=\"ok\",version=\"TLSv1.2\"", TLS_V12.get()),
            ("result=\"ok\",version=\"TLSv1.3\"", TLS_V13.get()),
            (
                "result=\"handshake_error\",version=\"none\"",
                TLS_HANDSHAKE_ERRORS.get(),
            ),
            (
                "result=\"client_gave_up\",version=\"none\"",
                TLS_CLIENT_GAVE_UP.get(),
            ),
        ],
    );
    family(
        "postern_auth_total",
        "counter",
        "AUTH attempts by result.",
        &[
            ("result=\"ok\"", AUTH_OK.get()),
            ("result=\"failed\"", AUTH_FAILED.get()),
        ],
    );
    family(
        "postern_messages_total",
        "counter",
        "Messages at the end of DATA: queued or refused.",
        &[
            ("result=\"accepted\"", MESSAGES_IN.get()),
            ("result=\"refused\"", MESSAGES_REFUSED.get()),
        ],
    );
    family(
        "postern_message_bytes_total",
        "counter",
        "Bytes of messages queued.",
        &[("", BYTES_IN.get())],
    );
    family(
        "postern_queue_messages",
        "gauge",
        "Messages in the queue.",
        &[("", q.messages as u64)],
    );
    family(
        "postern_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest message in the queue.",
        &[("", q.oldest)],
    );
    family(
        "postern_deliveries_total",
        "counter",
        "Recipient results by status.",
        &[
            ("status=\"sent\"", DELIVERED.get()),
            ("status=\"deferred\"", DEFERRED.get()),
            ("status=\"bounced\"", BOUNCED.get()),
        ],
    );
    family(
        "postern_remote_deliveries_total",
        "counter",
        "Recipients delivered to another server, by how that server was authenticated.",
        &[
            ("verified=\"dane\"", DELIVERED_DANE.get()),
            ("verified=\"sts\"", DELIVERED_STS.get()),
            ("verified=\"ca\"", DELIVERED_CA.get()),
            ("verified=\"none\"", none),
        ],
    );
    family(
        "postern_tls_downgrades_total",
        "counter",
        "Failed 'may' handshakes retried without TLS.",
        &[("", DOWNGRADES.get())],
    );
    family(
        "postern_tls_policy_failures_total",
        "counter",
        "Hosts the outbound TLS policy gave up on, by reason.",
        &[
            ("reason=\"starttls_not_offered\"", POLICY_NOT_OFFERED.get()),
            ("reason=\"starttls_refused\"", POLICY_REFUSED.get()),
            ("reason=\"handshake\"", POLICY_HANDSHAKE.get()),
            ("reason=\"bytes_after_220\"", POLICY_BYTES_AFTER_220.get()),
            ("reason=\"dane_or_sts\"", POLICY_SKIPPED.get()),
            ("reason=\"requiretls\"", POLICY_REQUIRETLS.get()),
        ],
    );
    family(
        "postern_dane_tlsa_lookups_total",
        "counter",
        "TLSA lookups by what they found.",
        &[
            ("result=\"usable\"", TLSA_USABLE.get()),
            ("result=\"unusable\"", TLSA_UNUSABLE.get()),
            ("result=\"none\"", TLSA_NONE.get()),
            ("result=\"error\"", TLSA_FAILED.get()),
        ],
    );
    family(
        "postern_dane_handshakes_total",
        "counter",
        "DANE certificate checks by result.",
        &[
            ("result=\"matched\"", DANE_AUTHENTICATED.get()),
            ("result=\"mismatched\"", DANE_MISMATCHED.get()),
        ],
    );
    family(
        "postern_spool_commits_total",
        "counter",
        "Messages committed to the spool.",
        &[("", SPOOL_COMMITS.get())],
    );
    let h = &SPOOL_FSYNC;
    o.push_str("# HELP postern_spool_fsync_seconds Time a commit spent in fsync (file and directory).\n# TYPE postern_spool_fsync_seconds histogram\n");
    let mut cumulative = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cumulative += h.counts[i].load(Ordering::Relaxed);
        o.push_str(&format!(
            "postern_spool_fsync_seconds_bucket{{le=\"{b}\"}} {cumulative}\n"
        ));
    }
    let count = h.count.load(Ordering::Relaxed);
    o.push_str(&format!(
        "postern_spool_fsync_seconds_bucket{{le=\"+Inf\"}} {count}\n"
    ));
    o.push_str(&format!(
        "postern_spool_fsync_seconds_sum {}\npostern_spool_fsync_seconds_count {count}\n",
        h.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    ));
    o
}

fn share(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// The `show stats` text; `queue` is the scheduler's message count.
pub fn report(q: Queue) -> String {
    let queue = q.messages;
    let (tin, min) = (MESSAGES_IN_TLS.get(), MESSAGES_IN.get());
    let (tout, rout) = (DELIVERED_TLS.get(), DELIVERED_REMOTE.get());
    format!(
        "sessions.active={}\nsessions.total={}\nsessions.tls={}\nsessions.refused={}\n\
         messages.in={min}\nmessages.in.tls-share={}\n\
         recipients.delivered={}\nrecipients.remote={rout}\nrecipients.remote.tls-share={}\n\
         recipients.remote.dane={}\n\
         recipients.deferred={}\nrecipients.bounced={}\nqueue.messages={queue}\n\
         tlsa.usable={}\ntlsa.unusable={}\ntlsa.none={}\ntlsa.error={}\n\
         dane.authenticated={}\ndane.mismatched={}\n\
         recipients.remote.sts={}\nrecipients.remote.ca={}\n\
         starttls.offered={}\ntls.handshake-errors={}\ntls.client-gave-up={}\n\
         auth.ok={}\nauth.failed={}\nmessages.refused={}\nmessages.bytes={}\n\
         tls.downgrades={}\nspool.commits={}\nqueue.oldest-age={}s\n",
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
        DELIVERED_STS.get(),
        DELIVERED_CA.get(),
        STARTTLS_OFFERED.get(),
        TLS_HANDSHAKE_ERRORS.get(),
        TLS_CLIENT_GAVE_UP.get(),
        AUTH_OK.get(),
        AUTH_FAILED.get(),
        MESSAGES_REFUSED.get(),
        BYTES_IN.get(),
        DOWNGRADES.get(),
        SPOOL_COMMITS.get(),
        q.oldest,
    )
}
