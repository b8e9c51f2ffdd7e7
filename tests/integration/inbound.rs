//! The dialogue over real sockets: STARTTLS, tls-require, smtps, AUTH,
//! relay control, sizes, bare newlines, long lines and the spool.

use std::time::Duration;

use crate::harness::{Conn, Postern};

fn message(subject: &str) -> String {
    format!(
        "From: a@sender.test\r\nTo: alice@example.com\r\nSubject: {subject}\r\n\r\nbody line\r\n..dotted\r\n"
    )
}

#[test]
fn starttls_advertised_once_and_session_reset() {
    let p = Postern::start();
    let mut c = Conn::connect(p.tls(), &p.cert.der);
    c.expect("220 mx.test ESMTP postern");
    let caps = c.ehlo();
    assert!(caps.contains("250-STARTTLS"), "{caps}");
    assert!(!caps.contains("AUTH"), "{caps}");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.starttls();
    let (v, peer) = c.tls_info().unwrap();
    assert!(matches!(
        v,
        rustls::ProtocolVersion::TLSv1_3 | rustls::ProtocolVersion::TLSv1_2
    ));
    assert_eq!(peer, p.cert.der.to_vec());
    // Everything from before TLS is forgotten: EHLO again first.
    c.cmd(
        "MAIL FROM:<a@sender.test>",
        "503 5.5.1 Send EHLO/HELO first",
    );
    let caps = c.ehlo();
    assert!(!caps.contains("STARTTLS"), "{caps}");
    c.cmd("STARTTLS", "503 5.5.1 TLS already active");
    c.cmd("QUIT", "221");
}

#[test]
fn starttls_injection_is_discarded() {
    let p = Postern::start();
    let mut c = Conn::open(p.tls(), &p.cert.der);
    c.send_raw(b"STARTTLS\r\nRSET\r\n");
    c.expect("220 2.0.0 Ready to start TLS");
    c.tls("mx.test").unwrap();
    // Had RSET been kept, its "250 2.0.0 Ok" would come before EHLO's reply.
    let r = c.ehlo();
    assert!(r.starts_with("250-mx.test Hello client.test"), "{r}");
    c.cmd("NOOP", "250 2.0.0");
    p.wait_log("starttls-injection", Duration::from_secs(5));
    assert!(p.log_text().contains("discarded=6"), "{}", p.log_text());
}

#[test]
fn tls_require_listener_refuses_mail_before_tls() {
    let p = Postern::start();
    let mut c = Conn::connect(p.submission(), &p.cert.der);
    c.expect("220");
    let caps = c.ehlo();
    assert!(
        caps.contains("STARTTLS") && !caps.contains("AUTH"),
        "{caps}"
    );
    for cmd in [
        "MAIL FROM:<a@sender.test>",
        "RCPT TO:<alice@example.com>",
        "DATA",
        "AUTH PLAIN",
        "VRFY alice",
    ] {
        c.cmd(cmd, "530 5.7.0 Must issue a STARTTLS command first");
    }
    c.cmd("NOOP", "250");
    c.cmd("RSET", "250");
    c.cmd("HELP", "214");
    c.starttls();
    let caps = c.ehlo();
    assert!(caps.contains("250-AUTH PLAIN LOGIN"), "{caps}");
    c.auth_alice();
    c.cmd("MAIL FROM:<alice@example.com>", "250");
    c.cmd("QUIT", "221");
}

#[test]
fn smtps_greets_inside_tls() {
    let p = Postern::start();
    let mut c = Conn::connect_tls(p.smtps(), &p.cert.der);
    c.expect("220 mx.test ESMTP postern");
    let caps = c.ehlo();
    assert!(!caps.contains("STARTTLS"), "{caps}");
    assert!(caps.contains("AUTH PLAIN LOGIN"), "{caps}");
    c.auth_alice();
    // And a plaintext client on the smtps port gets no greeting, only a close.
    let mut plain = Conn::connect(p.smtps(), &p.cert.der);
    plain.send("EHLO x");
    assert!(plain.closed());
    let mut again = Conn::connect_tls(p.smtps(), &p.cert.der);
    again.expect("220");
}

#[test]
fn auth_replies() {
    let p = Postern::start();
    // Listener without auth.
    let mut c = Conn::connect(p.tls(), &p.cert.der);
    c.expect("220");
    c.starttls();
    c.ehlo();
    c.cmd(
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
        "502 5.5.1 Command not implemented",
    );
    // Auth listener, before TLS: on smtps there is no "before"; use a
    // tls+auth listener.
    let p2 = Postern::start_with(|d| {
        crate::harness::standard_config(d).replace(
            "listen on 127.0.0.1 port 0 tls pki mx.test\n",
            "listen on 127.0.0.1 port 0 tls pki mx.test auth <users>\n",
        )
    });
    let mut c = Conn::open(p2.tls(), &p2.cert.der);
    c.cmd(
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
        "538 5.7.11 Encryption required",
    );
    c.starttls();
    c.ehlo();
    c.cmd("AUTH PLAIN !notbase64!", "501 5.5.2 Cannot decode response");
    c.cmd("AUTH PLAIN", "334");
    c.cmd("*", "501 5.7.0 Authentication cancelled");
    // base64("\0alice\0wrong")
    let t0 = std::time::Instant::now();
    c.cmd(
        "AUTH PLAIN AGFsaWNlAHdyb25n",
        "535 5.7.8 Authentication credentials invalid",
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(50),
        "no delay after a failure"
    );
    c.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6");
    c.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6");
    c.cmd("c2VjcmV0", "235 2.7.0 Authentication successful");
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "503 5.5.1");
    c.cmd("QUIT", "221");
    // -v logs the dialogue, but never a credential.
    p2.wait_log("< QUIT", Duration::from_secs(5));
    let log = p2.log_text();
    assert!(log.contains("< EHLO client.test"), "{log}");
    for secret in [
        "AGFsaWNlAHNlY3JldA==",
        "AGFsaWNlAHdyb25n",
        "c2VjcmV0",
        "YWxpY2U=",
    ] {
        assert!(
            !log.contains(secret),
            "credential {secret} in the log:\n{log}"
        );
    }
}

#[test]
fn repeated_auth_failures_disconnect() {
    let p = Postern::start();
    let mut c = Conn::connect_tls(p.smtps(), &p.cert.der);
    c.expect("220");
    c.ehlo();
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535");
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535");
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535");
    c.expect("421 4.7.0");
    assert!(c.closed());
}

#[test]
fn relay_needs_auth() {
    let p = Postern::start();
    let mut c = Conn::connect(p.tls(), &p.cert.der);
    c.expect("220");
    c.starttls();
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd(
        "RCPT TO:<someone@elsewhere.test>",
        "554 5.7.1 Relay access denied",
    );
    c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1");
    c.cmd("RCPT TO:<alice@example.com>", "250 2.1.5");
    let mut s = Conn::connect(p.submission(), &p.cert.der);
    s.expect("220");
    s.starttls();
    s.ehlo();
    s.auth_alice();
    s.cmd("MAIL FROM:<alice@example.com>", "250");
    s.cmd("RCPT TO:<someone@elsewhere.test>", "250 2.1.5");
    s.cmd("DATA", "354");
    s.send_raw(message("relayed").as_bytes());
    let ok = s.cmd(".", "250 2.0.0 Ok: queued as ");
    let id = ok.rsplit(' ').next().unwrap().to_string();
    let env = p.envelope(&id);
    assert!(
        env.contains("auth alice\n") && env.contains("action=out"),
        "{env}"
    );
    let body = String::from_utf8(p.body(&id)).unwrap();
    assert!(body.contains("with ESMTPSA id"), "{body}");
}

#[test]
fn spooled_body_is_what_was_sent_plus_received() {
    let p = Postern::start();
    let mut c = Conn::connect(p.tls(), &p.cert.der);
    c.expect("220");
    c.starttls();
    c.ehlo();
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "354");
    let sent = message("exact");
    c.send_raw(sent.as_bytes());
    let ok = c.cmd(".", "250 2.0.0 Ok: queued as ");
    let id = ok.rsplit(' ').next().unwrap();
    assert_eq!(p.queued_ids(), [id]);
    let body = p.body(id);
    let text = String::from_utf8(body.clone()).unwrap();
    let (received, rest) = text.split_at(text.find("From: a@sender.test").unwrap());
    assert!(
        received.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (postern) with ESMTPS id "
        ),
        "{received}"
    );
    assert!(
        received.contains("(version=TLSv1.3 cipher=TLS13_"),
        "{received}"
    );
    assert!(received.contains(&format!("id {id}")), "{received}");
    assert!(received.ends_with(" +0000\r\n"), "{received}");
    assert_eq!(rest, sent.replace("\r\n..dotted", "\r\n.dotted"));
    // The scheduler's envelope rewrites pass through tmp/ for an instant.
    crate::harness::wait_until(Duration::from_secs(5), "an empty tmp/", || {
        p.files_in("tmp") == 0
    });
}

#[test]
fn size_limits_keep_the_session() {
    let p = Postern::start();
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    let caps = c.ehlo();
    assert!(caps.contains("250-SIZE 10240"), "{caps}");
    c.cmd(
        "MAIL FROM:<a@sender.test> SIZE=20000",
        "552 5.3.4 Message size exceeds fixed limit",
    );
    c.cmd("MAIL FROM:<a@sender.test> SIZE=100", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "354");
    let line = format!("{}\r\n", "x".repeat(998));
    for _ in 0..20 {
        c.send_raw(line.as_bytes());
    }
    c.cmd(".", "552 5.3.4");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"small\r\n");
    c.cmd(".", "250 2.0.0");
    assert_eq!(p.queued_ids().len(), 1);
}

/// An SMTP-smuggling attempt: "\n.\n" then a second transaction, inside
/// one message to alice.
fn smuggle(c: &mut Conn) {
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "354");
    c.send_raw(
        b"Subject: a\r\n\r\nx\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n",
    );
    c.send("NOOP");
}

#[test]
fn bare_lf_refused_and_does_not_end_data_with_reject() {
    let p =
        Postern::start_with(|d| crate::harness::standard_config(d) + "smtp bare-newline reject\n");
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    c.send_raw(b"EHLO client.test\n");
    c.expect("554 5.5.2 Bare LF/CR not allowed");
    c.ehlo();
    smuggle(&mut c);
    c.cmd(".", "554 5.5.2");
    c.cmd("NOOP", "250");
    assert!(p.queued_ids().is_empty());
}

#[test]
fn bare_lf_is_normalized_and_cannot_end_data() {
    // The default, Postfix 3.9's: LF-only lines are stored as CR LF, and
    // the smuggling attempt's "\n.\n" stays inside the one message.
    let p = Postern::start();
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    c.send_raw(b"EHLO client.test\n");
    c.expect("250");
    smuggle(&mut c);
    c.cmd(".", "250 2.0.0");
    c.cmd("NOOP", "250");
    let ids = p.queued_ids();
    assert_eq!(ids.len(), 1);
    let body = String::from_utf8(p.body(&ids[0])).unwrap();
    assert!(
        body.ends_with("Subject: a\r\n\r\nx\r\n\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nNOOP\r\n"),
        "{body:?}"
    );
}

#[test]
fn curl_uploads_an_lf_only_file() {
    // Curl without --crlf used to get 554.
    crate::harness::need("curl", "curl");
    let p = Postern::start();
    let file = p.dir.path().join("msg.eml");
    std::fs::write(
        &file,
        "From: a@sender.test\nTo: alice@example.com\nSubject: lf\n\nhello\n",
    )
    .unwrap();
    crate::harness::stdout_of(
        std::process::Command::new("curl")
            .arg("--url")
            .arg(format!("smtp://{}", p.plain()))
            .args([
                "--mail-from",
                "a@sender.test",
                "--mail-rcpt",
                "alice@example.com",
            ])
            .arg("--upload-file")
            .arg(&file)
            .args(["--max-time", "10", "-sS"]),
        "curl",
    );
    let ids = p.queued_ids();
    assert_eq!(ids.len(), 1);
    let body = String::from_utf8(p.body(&ids[0])).unwrap();
    assert!(body.contains("Subject: lf\r\n\r\nhello\r\n"), "{body:?}");
}

#[test]
fn ten_kilobyte_line_answered_500() {
    let p = Postern::start();
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    c.cmd(
        &format!("NOOP {}", "a".repeat(10 * 1024)),
        "500 5.5.2 Line too long",
    );
    c.cmd("NOOP", "250 2.0.0");
    c.ehlo();
}

#[test]
fn disconnect_mid_data_leaves_nothing() {
    let p = Postern::start();
    {
        let mut c = Conn::open(p.plain(), &p.cert.der);
        c.cmd("MAIL FROM:<a@sender.test>", "250");
        c.cmd("RCPT TO:<alice@example.com>", "250");
        c.cmd("DATA", "354");
        c.send_raw(b"Subject: cut\r\n\r\nhalf a mess");
    }
    p.wait_log("message-aborted", Duration::from_secs(5));
    p.wait_log("reason=disconnect", Duration::from_secs(5));
    assert_eq!(p.files_in("tmp"), 0);
    assert_eq!(p.files_in("mail"), 0);
}

#[test]
fn pipelined_transaction() {
    let p = Postern::start();
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    let caps = c.ehlo();
    assert!(caps.contains("250-PIPELINING"));
    c.send_raw(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("250 2.1.5");
    c.expect("354");
    c.send_raw(b"hi\r\n.\r\nQUIT\r\n");
    c.expect("250 2.0.0 Ok: queued as");
    c.expect("221");
    let ids = p.queued_ids();
    assert_eq!(ids.len(), 1);
    assert_eq!(p.envelope(&ids[0]).matches("\nrcpt ").count(), 2);
}

#[test]
fn too_many_errors_disconnects() {
    let p = Postern::start();
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    for _ in 0..19 {
        c.cmd("BOGUS", "500 5.5.2");
    }
    c.cmd("BOGUS", "500 5.5.2");
    c.expect("421 4.7.0 Too many errors");
    assert!(c.closed());
}

#[test]
fn idle_timeout_421() {
    let p =
        Postern::start_with(|d| crate::harness::standard_config(d) + "limit command-timeout 1s\n");
    let mut c = Conn::open(p.plain(), &p.cert.der);
    c.expect("421 4.4.2 Timeout, closing connection");
    assert!(c.closed());
}
