//! Arbitrary bytes into the inbound state machine, played by a driver that
//! says yes to everything: it must never panic, and never begin a message
//! without an accepted MAIL and RCPT. The input is cut into reads at points
//! chosen by its first bytes, and the replies and stored bytes must be the
//! same as when it arrives in one read.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use postern::smtp::address::Mailbox;
use postern::smtp::reply::{self, Reply};
use postern::smtp::server::{
    Action, BareNewline, Client, Params, Policy, Session, TlsInfo, TlsMode,
};

struct Yes;
impl Policy for Yes {
    fn check_rcpt(&self, _: &Client, rcpt: &Mailbox) -> Result<String, Reply> {
        if rcpt.local == "no" { Err(reply::RELAY_DENIED) } else { Ok("a".into()) }
    }
    fn check_auth(&self, user: &str, _: &[u8]) -> bool {
        user == "alice"
    }
}

fn info() -> TlsInfo {
    TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), sni: None, client_cert: None }
}

fuzz_target!(|data: &[u8]| {
    let (mode, data) = data.split_first().map(|(m, d)| (*m, d)).unwrap_or((0, data));
    let (seed, data) = match data {
        [a, b, rest @ ..] => (u32::from(*a) << 8 | u32::from(*b), rest),
        _ => (1, data),
    };
    let whole = play(mode, &[data]);
    // Cut points from a small LCG: reads of 1 byte to 20 KiB, so the DATA
    // pieces of 16 KiB split where the input says.
    // At least one read, possibly empty, as for the whole input.
    let mut parts = vec![&data[..0]];
    let (mut at, mut x) = (0usize, seed | 1);
    while at < data.len() {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let n = 1 + (x as usize >> 8) % 20_000;
        let end = (at + n).min(data.len());
        parts.push(&data[at..end]);
        at = end;
    }
    // STARTTLS discards what was pipelined after it in the same read (RFC
    // 3207 §5), so only sessions where it cannot start must not care.
    let tls = mode % 4;
    if tls == 0 || tls == 3 {
        assert_eq!(play(mode, &parts), whole, "the read boundaries changed the outcome");
    } else {
        play(mode, &parts);
    }
});

fn play(mode: u8, parts: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
    let tls = [TlsMode::Off, TlsMode::Optional, TlsMode::Required, TlsMode::Implicit][(mode % 4) as usize];
    let params = Params {
        hostname: "mx.test".into(),
        tls,
        tls_available: true,
        auth: true,
        max_message_size: 64 * 1024,
        max_recipients: 4,
        max_errors: 50,
        max_auth_failures: 5,
        auth_failure_delay: Duration::ZERO,
        max_hops: 50,
        // Both meanings of a bare LF, by a bit of the mode byte.
        bare_newline: if mode & 4 == 0 { BareNewline::Reject } else { BareNewline::Normalize },
        auth_failures_per_ip: 10,
        junk_commands: 100,
    };
    let implicit = (tls == TlsMode::Implicit).then(info);
    let mut s = Session::new(params, Arc::new(Yes), "192.0.2.1".parse().unwrap(), implicit);
    let (mut replies, mut stored) = (Vec::new(), Vec::new());
    for chunk in parts {
        s.feed(chunk);
        for _ in 0..100_000 {
            match s.next_action() {
                Action::NeedInput => break,
                Action::Reply(r) => replies.push(r.to_string()),
                Action::BeginMessage => {
                    assert!(!s.transaction().rcpts.is_empty(), "DATA without RCPT");
                    s.message_opened(Ok(("ID".into(), "D".into())));
                }
                Action::Body(b) => stored.extend_from_slice(&b),
                Action::Commit => {
                    stored.extend_from_slice(b"<commit>");
                    s.queued(Ok(()))
                }
                // An aborted message's bytes are thrown away with it; how
                // many were stored depends on the reads.
                Action::Abort => {
                    let keep = (0..=stored.len())
                        .rev()
                        .find(|&i| stored[..i].ends_with(b"<commit>") || stored[..i].ends_with(b"<abort>"))
                        .unwrap_or(0);
                    stored.truncate(keep);
                    stored.extend_from_slice(b"<abort>");
                }
                Action::StartTls { .. } => s.tls_started(info()),
                _ => {}
            }
        }
    }
    (replies, stored)
}
