//! The state machine, row by row against postern(8)'s dialogue. No sockets:
//! each test feeds bytes and reads actions, playing the driver's part.

use super::*;
use crate::smtp::reply::*;

struct TestPolicy;

impl Policy for TestPolicy {
    fn check_rcpt(&self, client: &Client, rcpt: &Mailbox) -> Result<String, Reply> {
        match rcpt.domain_lc().as_str() {
            "example.com" if ["alice", "bob"].contains(&rcpt.local.as_str()) => Ok("local".into()),
            "example.com" => Err(USER_UNKNOWN),
            _ if client.auth.is_some() => Ok("out".into()),
            _ => Err(RELAY_DENIED),
        }
    }
    fn check_auth(&self, user: &str, password: &[u8]) -> bool {
        user == "alice" && password == b"secret"
    }
}

fn params(tls: TlsMode, auth: bool) -> Params {
    Params {
        hostname: "mx.test".into(),
        tls,
        tls_available: true,
        auth,
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 20,
        max_auth_failures: 3,
        auth_failure_delay: Duration::from_millis(10),
        max_hops: 50,
        bare_newline: BareNewline::Reject,
        auth_failures_per_ip: 10,
        junk_commands: 100,
    }
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
        sni: None,
        client_cert: None,
    }
}

/// A session plus what a driver would have recorded.
struct Drive {
    s: Session,
    replies: Vec<Reply>,
    body: Vec<u8>,
    committed: Vec<Vec<u8>>,
    aborted: usize,
    starttls: Vec<usize>,
    sleeps: usize,
    closed: bool,
    fail_open: bool,
    fail_commit: bool,
}

impl Drive {
    fn new(tls: TlsMode, auth: bool) -> Drive {
        Self::with(params(tls, auth), None)
    }

    fn with(p: Params, tls: Option<TlsInfo>) -> Drive {
        let mut d = Drive {
            s: Session::new(p, Arc::new(TestPolicy), "192.0.2.7".parse().unwrap(), tls),
            replies: Vec::new(),
            body: Vec::new(),
            committed: Vec::new(),
            aborted: 0,
            starttls: Vec::new(),
            sleeps: 0,
            closed: false,
            fail_open: false,
            fail_commit: false,
        };
        d.pump();
        d
    }

    fn pump(&mut self) {
        // Bounded: a session never needs more steps than this for our inputs.
        for _ in 0..100_000 {
            match self.s.next_action() {
                Action::NeedInput => return,
                Action::Reply(r) => self.replies.push(r),
                Action::StartTls { discarded } => self.starttls.push(discarded),
                Action::BeginMessage => {
                    let r = if self.fail_open {
                        Err(())
                    } else {
                        Ok(("QID1".into(), "DATE".into()))
                    };
                    self.s.message_opened(r);
                }
                Action::Body(b) => self.body.extend_from_slice(&b),
                Action::Commit => {
                    self.committed.push(std::mem::take(&mut self.body));
                    self.s
                        .queued(if self.fail_commit { Err(()) } else { Ok(()) });
                }
                Action::Abort => {
                    self.aborted += 1;
                    self.body.clear();
                }
                Action::Sleep(_) => self.sleeps += 1,
                Action::Close => self.closed = true,
            }
        }
        panic!("session did not settle");
    }

    /// Send bytes; return the replies they produced as "code esc".
    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        let before = self.replies.len();
        self.s.feed(bytes);
        self.pump();
        self.replies[before..]
            .iter()
            .map(|r| format!("{} {}", r.code, r.esc).trim().to_string())
            .collect()
    }

    fn one(&mut self, line: &str) -> String {
        let r = self.send(format!("{line}\r\n").as_bytes());
        assert_eq!(r.len(), 1, "{line}: expected one reply, got {r:?}");
        r.into_iter().next().unwrap()
    }

    fn last(&self) -> &Reply {
        self.replies.last().unwrap()
    }

    fn ehlo_lines(&mut self) -> Vec<String> {
        self.one("EHLO client.test");
        self.last().text.split('\n').map(str::to_string).collect()
    }

    fn tls_up(&mut self) {
        assert_eq!(self.one("STARTTLS"), "220 2.0.0");
        self.s.tls_started(tls_info());
        self.pump();
    }

    fn greeted_tx(&mut self) {
        self.one("EHLO client.test");
        assert_eq!(self.one("MAIL FROM:<s@sender.test>"), "250 2.1.0");
        assert_eq!(self.one("RCPT TO:<alice@example.com>"), "250 2.1.5");
    }
}

#[test]
fn greeting() {
    let d = Drive::new(TlsMode::Off, false);
    assert_eq!(d.replies[0].to_string(), "220 mx.test ESMTP postern");
}

#[test]
fn ehlo_lists_extensions_in_spec_order() {
    let mut d = Drive::new(TlsMode::Optional, true);
    assert_eq!(
        d.ehlo_lines(),
        [
            "mx.test Hello client.test [192.0.2.7]",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "STARTTLS",
            "HELP"
        ]
    );
    d.tls_up();
    assert_eq!(
        d.ehlo_lines(),
        [
            "mx.test Hello client.test [192.0.2.7]",
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "AUTH PLAIN LOGIN",
            "REQUIRETLS",
            "HELP"
        ]
    );
    let wire = {
        let mut v = Vec::new();
        d.last().write_to(&mut v);
        String::from_utf8(v).unwrap()
    };
    assert!(wire.starts_with("250-mx.test Hello"), "{wire}");
    assert!(wire.ends_with("\r\n250 HELP\r\n"), "{wire}");
}

#[test]
fn ehlo_per_listener_kind() {
    let mut plain = Drive::new(TlsMode::Off, false);
    let l = plain.ehlo_lines();
    assert!(!l.contains(&"STARTTLS".to_string()) && !l.iter().any(|l| l.starts_with("AUTH")));
    let mut smtps = Drive::with(params(TlsMode::Implicit, true), Some(tls_info()));
    let l = smtps.ehlo_lines();
    assert!(!l.contains(&"STARTTLS".to_string()));
    assert!(l.contains(&"AUTH PLAIN LOGIN".to_string()));
    let mut nocert = Drive::with(
        Params {
            tls_available: false,
            ..params(TlsMode::Optional, false)
        },
        None,
    );
    assert!(!nocert.ehlo_lines().contains(&"STARTTLS".to_string()));
    assert_eq!(nocert.one("STARTTLS"), "454 4.7.0");
    // STARTTLS on a TLS-less listener is a command we do not implement there.
    assert_eq!(plain.one("STARTTLS"), "502 5.5.1");
}

#[test]
fn helo_is_one_line() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.one("HELO client.test");
    assert_eq!(d.last().to_string(), "250 mx.test");
}

#[test]
fn sequencing_errors() {
    let mut d = Drive::new(TlsMode::Off, false);
    assert_eq!(d.one("MAIL FROM:<a@b.test>"), "503 5.5.1");
    assert_eq!(d.last().text, "Send EHLO/HELO first");
    assert_eq!(d.one("DATA"), "503 5.5.1");
    d.one("EHLO c.test");
    assert_eq!(d.one("RCPT TO:<alice@example.com>"), "503 5.5.1");
    assert_eq!(d.last().text, "Bad sequence of commands");
    assert_eq!(d.one("DATA"), "503 5.5.1");
    assert_eq!(d.one("MAIL FROM:<a@b.test>"), "250 2.1.0");
    assert_eq!(d.one("MAIL FROM:<a@b.test>"), "503 5.5.1");
    assert_eq!(d.one("DATA"), "503 5.5.1");
}

#[test]
fn bad_paths_and_unknown_commands() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.one("EHLO c.test");
    assert_eq!(d.one("FOO bar"), "500 5.5.2");
    assert_eq!(d.one("MAIL FROM:<bad@>"), "501 5.1.7");
    assert_eq!(d.one("MAIL FROM:<a@b.test> BOGUS=1"), "501 5.5.4");
    d.one("MAIL FROM:<>");
    assert_eq!(d.one("RCPT TO:<@@>"), "501 5.1.3");
    assert_eq!(d.one("EXPN list"), "502 5.5.1");
}

#[test]
fn recipient_policy() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.greeted_tx();
    assert_eq!(d.one("RCPT TO:<carol@example.com>"), "550 5.1.1");
    assert_eq!(d.last().text, "Recipient address rejected: user unknown");
    assert_eq!(d.one("RCPT TO:<x@elsewhere.test>"), "554 5.7.1");
    assert_eq!(d.last().text, "Relay access denied");
    assert_eq!(d.one("RCPT TO:<bob@example.com>"), "250 2.1.5");
    assert_eq!(d.one("RCPT TO:<alice@example.com>"), "250 2.1.5");
    assert_eq!(d.one("RCPT TO:<bob@example.com>"), "452 4.5.3");
}

#[test]
fn message_is_queued_with_received_and_unstuffed() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.greeted_tx();
    assert_eq!(d.one("DATA"), "354");
    let r = d.send(b"Subject: t\r\n\r\n..leading dot\r\n.\r\n");
    assert_eq!(r, ["250 2.0.0"]);
    assert_eq!(d.last().text, "Ok: queued as QID1");
    let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
    assert!(body.starts_with("Received: from client.test ([192.0.2.7])\r\n\tby mx.test (postern) with ESMTP id QID1\r\n\tfor <alice@example.com>;\r\n\tDATE\r\n"), "{body}");
    assert!(
        body.ends_with("Subject: t\r\n\r\n.leading dot\r\n"),
        "{body}"
    );
    // The session is back to greeted: a new transaction works.
    assert_eq!(d.one("MAIL FROM:<s@sender.test>"), "250 2.1.0");
    assert_eq!(d.s.transaction().rcpts.len(), 0);
}

#[test]
fn transaction_carries_recipients_and_actions() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.one("EHLO c.test");
    d.one("MAIL FROM:<s@sender.test> BODY=8BITMIME");
    d.one("RCPT TO:<alice@example.com>");
    d.one("RCPT TO:<bob@example.com>");
    d.one("DATA");
    d.s.feed(b"x\r\n.\r\n");
    // Stop before the commit is answered to look at the transaction.
    loop {
        match d.s.next_action() {
            Action::Commit => break,
            Action::NeedInput => panic!("no commit"),
            _ => {}
        }
    }
    let tx = d.s.transaction();
    assert_eq!(tx.from.as_ref().unwrap().to_string(), "s@sender.test");
    assert!(tx.eight_bit);
    let r: Vec<String> = tx
        .rcpts
        .iter()
        .map(|r| format!("{} {}", r.addr, r.action))
        .collect();
    assert_eq!(r, ["alice@example.com local", "bob@example.com local"]);
}

#[test]
fn end_marker_only_after_crlf() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.greeted_tx();
    d.one("DATA");
    // Bare-LF dots (SMTP smuggling) do not end DATA; the message is refused
    // once the real CRLF.CRLF arrives.
    assert!(d.send(b"a\n.\nMAIL FROM:<evil@x.test>\r\n").is_empty());
    assert!(d.send(b"b\r\n\r.\r\nc\r\n").is_empty());
    assert_eq!(d.send(b".\r\n"), ["554 5.5.2"]);
    assert_eq!(d.aborted, 1);
    assert!(d.committed.is_empty());
    assert_eq!(d.one("NOOP"), "250 2.0.0");
}

#[test]
fn bare_cr_in_data_refused() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.greeted_tx();
    d.one("DATA");
    assert_eq!(d.send(b"a\rb\r\n.\r\n"), ["554 5.5.2"]);
    assert!(d.committed.is_empty());
}

#[test]
fn bare_newlines_in_commands() {
    let mut d = Drive::new(TlsMode::Off, false);
    assert_eq!(d.send(b"EHLO c.test\n"), ["554 5.5.2"]);
    assert_eq!(d.send(b"NOOP\rx\r\n"), ["554 5.5.2"]);
    assert_eq!(d.last().text, "Bare LF/CR not allowed");
    assert_eq!(d.one("NOOP"), "250 2.0.0");
}

#[test]
fn size_limits_before_and_after_data() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.one("EHLO c.test");
    assert_eq!(d.one("MAIL FROM:<s@sender.test> SIZE=1001"), "552 5.3.4");
    d.greeted_tx_after_ehlo();
    d.one("DATA");
    let big = "x".repeat(200);
    for _ in 0..10 {
        assert!(d.send(format!("{big}\r\n").as_bytes()).is_empty());
    }
    assert_eq!(d.send(b".\r\n"), ["552 5.3.4"]);
    assert!(d.committed.is_empty());
    assert_eq!(d.aborted, 1);
    // Still usable.
    d.greeted_tx_after_ehlo();
    d.one("DATA");
    assert_eq!(d.send(b"small\r\n.\r\n"), ["250 2.0.0"]);
}

impl Drive {
    fn greeted_tx_after_ehlo(&mut self) {
        assert_eq!(self.one("MAIL FROM:<s@sender.test>"), "250 2.1.0");
        assert_eq!(self.one("RCPT TO:<alice@example.com>"), "250 2.1.5");
    }
}

#[test]
fn long_body_lines_and_chunks() {
    let mut p = params(TlsMode::Off, false);
    p.max_message_size = 10 << 20;
    let mut d = Drive::with(p, None);
    d.greeted_tx();
    d.one("DATA");
    let line = "y".repeat(100_000);
    let mut sent = Vec::new();
    for _ in 0..3 {
        d.send(format!(".{line}\r\n").as_bytes());
        sent.extend_from_slice(format!("{line}\r\n").as_bytes());
    }
    assert_eq!(d.send(b".\r\n"), ["250 2.0.0"]);
    let body = d.committed.pop().unwrap();
    // A dot starting a long line is unstuffed; dots inside it are not lines.
    assert!(body.ends_with(&sent), "body differs");
}

#[test]
fn storage_failures() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.greeted_tx();
    d.fail_commit = true;
    d.one("DATA");
    assert_eq!(d.send(b"x\r\n.\r\n"), ["452 4.3.1"]);
    assert_eq!(d.last().text, "Insufficient system storage");
    d.fail_commit = false;
    d.fail_open = true;
    d.greeted_tx_after_ehlo();
    assert_eq!(d.one("DATA"), "452 4.3.1");
}

#[test]
fn long_command_lines() {
    let mut d = Drive::new(TlsMode::Off, false);
    let long = format!("NOOP {}\r\n", "a".repeat(10 * 1024));
    // Fed in pieces as a socket would deliver them.
    let mut replies = Vec::new();
    for piece in long.as_bytes().chunks(1500) {
        replies.extend(d.send(piece));
    }
    assert_eq!(replies, ["500 5.5.2"]);
    assert_eq!(d.last().text, "Line too long");
    assert_eq!(d.one("NOOP"), "250 2.0.0");
    // Exactly at the limit is fine.
    let edge = format!("NOOP {}\r\n", "a".repeat(MAX_COMMAND_LINE - 7));
    assert_eq!(edge.len(), MAX_COMMAND_LINE);
    assert_eq!(d.send(edge.as_bytes()), ["250 2.0.0"]);
}

#[test]
fn simple_commands() {
    let mut d = Drive::new(TlsMode::Off, false);
    assert_eq!(d.one("VRFY alice"), "252 2.1.5");
    assert_eq!(d.one("NOOP"), "250 2.0.0");
    assert_eq!(d.one("HELP"), "214 2.0.0");
    assert_eq!(d.one("RSET"), "250 2.0.0");
    d.greeted_tx();
    assert_eq!(d.one("RSET"), "250 2.0.0");
    assert_eq!(d.one("DATA"), "503 5.5.1");
    assert_eq!(d.one("QUIT"), "221 2.0.0");
    assert!(d.closed);
    assert!(d.s.is_closed());
    assert!(d.send(b"NOOP\r\n").is_empty());
}

#[test]
fn pipelined_commands_answer_in_order() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.one("EHLO c.test");
    let r = d.send(b"MAIL FROM:<s@sender.test>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n");
    assert_eq!(
        r,
        [
            "250 2.1.0",
            "250 2.1.5",
            "550 5.1.1",
            "354",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert_eq!(d.committed.len(), 1);
}

#[test]
fn too_many_errors_closes() {
    let mut d = Drive::new(TlsMode::Off, false);
    for i in 1..20 {
        assert_eq!(d.one("BOGUS"), "500 5.5.2", "error {i}");
    }
    let r = d.send(b"BOGUS\r\n");
    assert_eq!(r, ["500 5.5.2", "421 4.7.0"]);
    assert!(d.closed);
}

#[test]
fn timeout_closes() {
    let mut d = Drive::new(TlsMode::Off, false);
    d.greeted_tx();
    d.one("DATA");
    d.s.timed_out();
    d.pump();
    assert_eq!(
        d.last().to_string(),
        "421 4.4.2 Timeout, closing connection"
    );
    assert_eq!(d.aborted, 1);
    assert!(d.closed);
}

#[test]
fn starttls_replies() {
    let mut d = Drive::new(TlsMode::Optional, false);
    assert_eq!(d.one("STARTTLS now"), "501 5.5.4");
    assert_eq!(d.last().text, "Syntax error (no parameters allowed)");
    d.tls_up();
    assert_eq!(d.starttls, [0]);
    assert_eq!(d.one("STARTTLS"), "503 5.5.1");
    assert_eq!(d.last().text, "TLS already active");
}

#[test]
fn starttls_discards_injected_commands() {
    let mut d = Drive::new(TlsMode::Optional, false);
    d.one("EHLO c.test");
    let r = d.send(b"STARTTLS\r\nRSET\r\n");
    assert_eq!(r, ["220 2.0.0"]);
    assert_eq!(d.starttls, [6]);
    // Even bytes arriving before the handshake completes are not commands.
    assert!(d.send(b"NOOP\r\n").is_empty());
    d.s.tls_started(tls_info());
    d.pump();
    assert_eq!(d.replies.len(), 3, "no reply to the injected RSET");
}

#[test]
fn tls_resets_the_session() {
    let mut d = Drive::new(TlsMode::Optional, true);
    d.one("EHLO c.test");
    d.one("MAIL FROM:<s@sender.test>");
    d.tls_up();
    assert_eq!(d.one("MAIL FROM:<s@sender.test>"), "503 5.5.1");
    assert_eq!(d.last().text, "Send EHLO/HELO first");
    assert!(!d.ehlo_lines().contains(&"STARTTLS".to_string()));
    assert_eq!(d.s.tls().unwrap().version, "TLSv1.3");
}

#[test]
fn tls_require_gates_mail_and_auth() {
    let mut d = Drive::new(TlsMode::Required, true);
    for ok in ["EHLO c.test", "HELO c.test", "NOOP", "RSET", "HELP"] {
        let r = d.one(ok);
        assert!(r.starts_with('2'), "{ok}: {r}");
    }
    for gated in [
        "MAIL FROM:<s@sender.test>",
        "RCPT TO:<alice@example.com>",
        "DATA",
        "AUTH PLAIN",
        "VRFY alice",
    ] {
        assert_eq!(d.one(gated), "530 5.7.0", "{gated}");
    }
    assert_eq!(d.last().text, "Must issue a STARTTLS command first");
    d.tls_up();
    d.one("EHLO c.test");
    assert_eq!(d.one("MAIL FROM:<s@sender.test>"), "250 2.1.0");
    assert_eq!(d.one("QUIT"), "221 2.0.0");
}

#[test]
fn tls_require_quit_before_tls() {
    let mut d = Drive::new(TlsMode::Required, false);
    assert_eq!(d.one("QUIT"), "221 2.0.0");
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn authed_drive() -> Drive {
    let mut d = Drive::new(TlsMode::Optional, true);
    d.tls_up();
    d.one("EHLO c.test");
    d
}

#[test]
fn auth_refusals() {
    let mut no_auth = Drive::new(TlsMode::Optional, false);
    no_auth.tls_up();
    no_auth.one("EHLO c.test");
    assert_eq!(no_auth.one("AUTH PLAIN"), "502 5.5.1");
    assert_eq!(no_auth.last().text, "Command not implemented");
    let mut before_tls = Drive::new(TlsMode::Optional, true);
    before_tls.one("EHLO c.test");
    assert_eq!(before_tls.one("AUTH PLAIN"), "538 5.7.11");
    let mut d = authed_drive();
    assert_eq!(d.one("AUTH CRAM-MD5"), "504 5.5.4");
}

#[test]
fn auth_plain_initial_response() {
    let mut d = authed_drive();
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"\0alice\0secret"))),
        "235 2.7.0"
    );
    assert_eq!(d.s.client().auth.as_deref(), Some("alice"));
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"\0alice\0secret"))),
        "503 5.5.1"
    );
    // Authenticated: relay allowed, and the Received header says ESMTPSA.
    d.one("MAIL FROM:<alice@example.com>");
    assert_eq!(d.one("RCPT TO:<x@elsewhere.test>"), "250 2.1.5");
    d.one("DATA");
    d.send(b"hi\r\n.\r\n");
    let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
    assert!(
        body.contains(
            "with ESMTPSA id QID1\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)"
        ),
        "{body}"
    );
}

#[test]
fn auth_plain_continuation_and_authzid() {
    let mut d = authed_drive();
    assert_eq!(d.one("AUTH PLAIN"), "334");
    let mut wire = Vec::new();
    d.last().write_to(&mut wire);
    assert_eq!(wire, b"334 \r\n");
    assert_eq!(d.one(&b64(b"alice\0alice\0secret")), "235 2.7.0");
    let mut d = authed_drive();
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"bob\0alice\0secret"))),
        "535 5.7.8"
    );
}

#[test]
fn auth_login() {
    let mut d = authed_drive();
    assert_eq!(d.one("AUTH LOGIN"), "334");
    assert_eq!(d.last().text, "VXNlcm5hbWU6");
    assert_eq!(d.one(&b64(b"alice")), "334");
    assert_eq!(d.last().text, "UGFzc3dvcmQ6");
    assert_eq!(d.one(&b64(b"secret")), "235 2.7.0");
    let mut d = authed_drive();
    assert_eq!(d.one(&format!("AUTH LOGIN {}", b64(b"alice"))), "334");
    assert_eq!(d.one(&b64(b"wrong")), "535 5.7.8");
}

#[test]
fn auth_failures_delay_and_disconnect() {
    let mut d = authed_drive();
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"\0alice\0nope"))),
        "535 5.7.8"
    );
    assert_eq!(d.sleeps, 1);
    assert_eq!(d.last().text, "Authentication credentials invalid");
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"\0alice\0nope"))),
        "535 5.7.8"
    );
    let r = d.send(format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0nope")).as_bytes());
    assert_eq!(r, ["535 5.7.8", "421 4.7.0"]);
    assert_eq!(d.sleeps, 3);
    assert!(d.closed);
}

#[test]
fn auth_bad_input() {
    let mut d = authed_drive();
    assert_eq!(d.one("AUTH PLAIN !!!notbase64"), "501 5.5.2");
    assert_eq!(d.last().text, "Cannot decode response");
    assert_eq!(d.one("AUTH PLAIN"), "334");
    assert_eq!(d.one("*"), "501 5.7.0");
    assert_eq!(d.last().text, "Authentication cancelled");
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"no-nuls"))),
        "501 5.5.2"
    );
    d.one("MAIL FROM:<s@sender.test>");
    assert_eq!(
        d.one(&format!("AUTH PLAIN {}", b64(b"\0alice\0secret"))),
        "503 5.5.1"
    );
}

#[test]
fn auth_before_ehlo_is_a_sequence_error() {
    let mut d = Drive::new(TlsMode::Optional, true);
    d.tls_up();
    assert_eq!(d.one("AUTH PLAIN"), "503 5.5.1");
}

#[test]
fn received_header_for_helo_and_tls() {
    let mut d = Drive::new(TlsMode::Optional, false);
    d.one("HELO old.test");
    d.one("MAIL FROM:<s@sender.test>");
    d.one("RCPT TO:<alice@example.com>");
    d.one("RCPT TO:<bob@example.com>");
    d.one("DATA");
    d.send(b"x\r\n.\r\n");
    let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
    assert!(
        body.starts_with(
            "Received: from old.test ([192.0.2.7])\r\n\tby mx.test (postern) with SMTP id QID1;\r\n"
        ),
        "{body}"
    );
    d.tls_up();
    d.greeted_tx();
    d.one("DATA");
    d.send(b"x\r\n.\r\n");
    let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
    assert!(body.contains("with ESMTPS id QID1\r\n\t(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\tfor <alice@example.com>"), "{body}");
}

#[test]
fn received_header_names_a_client_certificate() {
    let mut d = Drive::new(TlsMode::Optional, false);
    assert_eq!(d.one("STARTTLS"), "220 2.0.0");
    d.s.tls_started(TlsInfo {
        client_cert: Some(crate::tls::client_auth::ClientCert {
            sha256: "ab".repeat(32),
            subject: "CN=laptop".into(),
            verified: true,
        }),
        ..tls_info()
    });
    d.pump();
    assert_eq!(d.s.client().cert.as_ref().map(|c| c.verified), Some(true));
    d.greeted_tx();
    d.one("DATA");
    d.send(b"x\r\n.\r\n");
    let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
    let want = format!(
        "(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\t(client-cert subject=\"CN=laptop\"\r\n\t sha256={} verified=yes)\r\n\tfor <alice@example.com>",
        "ab".repeat(32)
    );
    assert!(body.contains(&want), "{body}");
}

#[test]
fn every_reply_comes_from_the_table() {
    // Drive a bit of everything, then check each reply is a table entry or
    // one of the few built at run time (greeting, EHLO/HELO, 334, 354, queued).
    let mut d = authed_drive();
    for l in [
        "FOO",
        "MAIL FROM:<x>",
        "AUTH PLAIN",
        "*",
        "VRFY a",
        "RSET",
        "HELP",
        "STARTTLS",
        "DATA",
    ] {
        d.one(l);
    }
    d.greeted_tx_after_ehlo();
    d.one("DATA");
    d.send(b"x\r\n.\r\nQUIT\r\n");
    for r in &d.replies {
        let dynamic =
            matches!(r.code, 220 | 250 | 334 | 354) || r.text.starts_with("Ok: queued as ");
        assert!(dynamic || ALL.contains(&r), "reply not in the table: {r}");
        assert!(
            r.esc.is_empty() || r.esc.starts_with(char::from(b'0' + (r.code / 100) as u8)),
            "{r}"
        );
    }
}

#[test]
fn received_headers_over_max_hops_are_refused_as_a_loop() {
    // RFC 5321 §6.3; Postfix's hopcount_limit. Only the header section
    // counts, in any case, and a body line that looks like one does not.
    let message = |n: usize, tail: &str| {
        let mut m = String::new();
        for i in 0..n {
            m.push_str(&format!(
                "{}: from hop{i}\r\n\tby x; date\r\n",
                ["Received", "RECEIVED", "received"][i % 3]
            ));
        }
        m.push_str("Subject: loop\r\n\r\n");
        m.push_str(tail);
        m.push_str(".\r\n");
        m
    };
    for (n, tail, want) in [
        (50, "", "250 2.0.0"),
        (51, "", "554 5.4.6"),
        (50, "Received: in the body\r\n", "250 2.0.0"),
    ] {
        let mut p = params(TlsMode::Off, false);
        p.max_message_size = 1 << 20;
        let mut d = Drive::with(p, None);
        d.greeted_tx();
        assert_eq!(d.one("DATA"), "354");
        let r = d.send(message(n, tail).as_bytes());
        assert_eq!(r, [want], "{n} hops");
        // The session goes on after the refusal.
        assert_eq!(d.one("NOOP"), "250 2.0.0");
    }
}

#[test]
fn a_bad_line_ends_the_auth_exchange() {
    // The commands after an overlong response are commands,
    // not the user name and password.
    let mut d = authed_drive();
    assert_eq!(d.one("AUTH LOGIN"), "334");
    let long = "A".repeat(5000);
    assert_eq!(d.one(&long), "500 5.5.2");
    assert_eq!(d.one("NOOP"), "250 2.0.0");
    assert_eq!(d.one("AUTH LOGIN"), "334");
    assert_eq!(d.send(b"dXNlcg==\rx\r\n"), ["554 5.5.2"]);
    assert_eq!(d.one("QUIT"), "221 2.0.0");
}

#[test]
fn lines_after_a_refused_auth_are_hidden_from_the_log() {
    // Inside a transaction AUTH is refused; the pipelined
    // responses that follow are not logged (see dialogue_log).
    let mut d = authed_drive();
    d.one("MAIL FROM:<s@sender.test>");
    let r = d.send(b"AUTH LOGIN\r\nYWxpY2U=\r\nTEVBS0VELVBBU1NXT1JELTE=\r\nNOOP\r\n");
    assert_eq!(r, ["503 5.5.1", "500 5.5.2", "500 5.5.2", "250 2.0.0"]);
    // What the log shows of those lines (see dialogue_log).
    assert_eq!(
        dialogue_log(
            b"TEVBS0VELVBBU1NXT1JELTE=",
            command::parse(b"TEVBS0VELVBBU1NXT1JELTE=").is_ok()
        ),
        "(unrecognised, 24 octets)"
    );
}

/// A policy that remembers AUTH failures like the shared per-address
/// table does.
struct Remembering(std::sync::Mutex<u32>);

impl Policy for Remembering {
    fn check_rcpt(&self, c: &Client, r: &Mailbox) -> Result<String, Reply> {
        TestPolicy.check_rcpt(c, r)
    }
    fn check_auth(&self, u: &str, p: &[u8]) -> bool {
        TestPolicy.check_auth(u, p)
    }
    fn auth_failures(&self, _: &Client) -> u32 {
        *self.0.lock().unwrap()
    }
    fn auth_failed(&self, _: &Client) {
        *self.0.lock().unwrap() += 1;
    }
}

#[test]
fn auth_failures_across_sessions_slow_down_then_lock_out() {
    // Reconnecting does not reset the count.
    let policy = Arc::new(Remembering(std::sync::Mutex::new(0)));
    let mut p = params(TlsMode::Optional, true);
    p.max_auth_failures = 1;
    p.auth_failures_per_ip = 3;
    let mut delays = Vec::new();
    for attempt in 0..4 {
        let mut s = Session::new(
            p.clone(),
            policy.clone(),
            "192.0.2.7".parse().unwrap(),
            Some(tls_info()),
        );
        s.feed(format!("EHLO c.test\r\nAUTH PLAIN {}\r\n", b64(b"\0alice\0nope")).as_bytes());
        let mut replies = Vec::new();
        for _ in 0..100 {
            match s.next_action() {
                Action::NeedInput => break,
                Action::Reply(r) => replies.push(format!("{} {}", r.code, r.esc)),
                Action::Sleep(d) => delays.push(d),
                _ => {}
            }
        }
        if attempt < 3 {
            assert!(replies.contains(&"535 5.7.8".to_string()), "{replies:?}");
        } else {
            // Locked out: even the right password is not tried.
            assert_eq!(replies.last().unwrap(), "421 4.7.0", "{replies:?}");
            assert!(s.is_closed());
        }
    }
    let d = p.auth_failure_delay;
    assert_eq!(delays, [d, d * 2, d * 3]);
}

/// A session that normalizes bare LF (the daemon's default).
fn normalizing() -> Drive {
    let mut p = params(TlsMode::Off, false);
    p.bare_newline = BareNewline::Normalize;
    Drive::with(p, None)
}

#[test]
fn bare_lf_is_normalized_to_crlf() {
    // curl uploads LF-only files; Postfix 3.9 takes them.
    let mut d = normalizing();
    assert_eq!(d.send(b"EHLO c.test\n"), ["250"]);
    assert_eq!(
        d.send(b"MAIL FROM:<s@sender.test>\nRCPT TO:<alice@example.com>\nDATA\n"),
        ["250 2.1.0", "250 2.1.5", "354"]
    );
    assert_eq!(
        d.send(b"Subject: lf\n\nhello\n..dot\n\r\n.\r\n"),
        ["250 2.0.0"]
    );
    let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
    assert!(
        body.ends_with("Subject: lf\r\n\r\nhello\r\n.dot\r\n\r\n"),
        "{body:?}"
    );
    // A bare CR is still refused, in a command and in DATA.
    assert_eq!(d.send(b"NOOP\rx\n"), ["554 5.5.2"]);
    d.greeted_tx_after_ehlo();
    d.one("DATA");
    assert_eq!(d.send(b"a\rb\r\n.\r\n"), ["554 5.5.2"]);
}

#[test]
fn only_crlf_dot_crlf_ends_data_when_normalizing() {
    // The smuggling forms: a dot line after a bare LF, or ended by one, is
    // content; the smuggled transaction stays inside the one message.
    for attempt in [
        &b"x\n.\nMAIL FROM:<evil@x.test>\r\n"[..],
        b"x\n.\r\nMAIL FROM:<evil@x.test>\r\n",
        b"x\r\n.\nMAIL FROM:<evil@x.test>\r\n",
    ] {
        let mut d = normalizing();
        d.greeted_tx();
        d.one("DATA");
        assert!(d.send(attempt).is_empty(), "{attempt:?} ended DATA");
        assert_eq!(d.send(b".\r\n"), ["250 2.0.0"]);
        let body = String::from_utf8(d.committed.pop().unwrap()).unwrap();
        assert!(body.contains("MAIL FROM:<evil@x.test>\r\n"), "{body:?}");
        assert_eq!(d.one("NOOP"), "250 2.0.0");
    }
}

/// REQUIRETLS (RFC 8689 §4.1): offered and accepted only inside TLS, and
/// recorded with the transaction.
#[test]
fn requiretls_only_inside_tls() {
    let mut d = Drive::new(TlsMode::Optional, false);
    assert!(!d.ehlo_lines().contains(&"REQUIRETLS".to_string()));
    assert_eq!(d.one("MAIL FROM:<s@sender.test> REQUIRETLS"), "530 5.7.10");
    d.tls_up();
    assert!(d.ehlo_lines().contains(&"REQUIRETLS".to_string()));
    assert_eq!(d.one("MAIL FROM:<s@sender.test> REQUIRETLS"), "250 2.1.0");
    assert!(d.s.transaction().requiretls);
    assert_eq!(d.one("RSET"), "250 2.0.0");
    assert_eq!(d.one("MAIL FROM:<s@sender.test>"), "250 2.1.0");
    assert!(!d.s.transaction().requiretls);
}

/// `TLS-Required: No` (RFC 8689 §5) in the header section, any case,
/// folded or not; the same words in the body do not count.
#[test]
fn tls_required_no_is_noticed_in_the_header_only() {
    let cases: &[(&[u8], bool)] = &[
        (b"Subject: x\r\nTLS-Required: No\r\n\r\nbody\r\n", true),
        (b"tls-required:   nO  \r\n\r\nbody\r\n", true),
        (b"TLS-Required:\r\n  No\r\n\r\nbody\r\n", true),
        (b"TLS-Required: Yes\r\n\r\nbody\r\n", false),
        (b"Subject: x\r\n\r\nTLS-Required: No\r\n", false),
        (b"X-TLS-Required: No\r\n\r\nbody\r\n", false),
    ];
    for (body, want) in cases {
        let mut d = Drive::new(TlsMode::Optional, false);
        d.greeted_tx();
        d.one("DATA");
        // Looked at before the final dot: the transaction is reset once
        // the message is queued (the driver reads it at the commit).
        d.send(body);
        assert_eq!(
            d.s.transaction().tls_optional,
            *want,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
}
