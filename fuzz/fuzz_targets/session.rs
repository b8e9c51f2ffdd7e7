//! Arbitrary bytes into the inbound state machine, played by a driver that
//! says yes to everything: it must never panic, and never begin a message
//! without an accepted MAIL and RCPT.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use postern::smtp::address::Mailbox;
use postern::smtp::reply::{self, Reply};
use postern::smtp::server::{Action, Client, Params, Policy, Session, TlsInfo, TlsMode};

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
    TlsInfo { version: "TLSv1.3".into(), cipher: "X".into(), sni: None }
}

fuzz_target!(|data: &[u8]| {
    let (mode, data) = data.split_first().map(|(m, d)| (*m, d)).unwrap_or((0, data));
    let tls = [TlsMode::Off, TlsMode::Optional, TlsMode::Required, TlsMode::Implicit][(mode % 4) as usize];
    let params = Params {
        hostname: "mx.test".into(),
        tls,
        tls_available: true,
        auth: true,
        max_message_size: 2048,
        max_recipients: 4,
        max_errors: 50,
        max_auth_failures: 5,
        auth_failure_delay: Duration::ZERO,
    };
    let implicit = (tls == TlsMode::Implicit).then(info);
    let mut s = Session::new(params, Arc::new(Yes), "192.0.2.1".parse().unwrap(), implicit);
    for chunk in data.chunks(97) {
        s.feed(chunk);
        for _ in 0..10_000 {
            match s.next_action() {
                Action::NeedInput => break,
                Action::BeginMessage => {
                    assert!(!s.transaction().rcpts.is_empty(), "DATA without RCPT");
                    s.message_opened(Ok(("ID".into(), "D".into())));
                }
                Action::Commit => s.queued(Ok(())),
                Action::StartTls { .. } => s.tls_started(info()),
                _ => {}
            }
        }
    }
});
