//! Attacks that need the real daemon: mail loops, dripping and chatty
//! clients, password guessing, and what the log must not show.

use std::time::Duration;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn relaying_to_our_own_listener_defers_instead_of_looping() {
    // The shipped rules relay for local clients; a message
    // to an address literal of our own listener used to go round and round.
    let port = free_port();
    let p = Postern::start_with(|d| {
        standard_config(d).replace(
            "listen on 127.0.0.1 port 0\n",
            &format!("listen on 127.0.0.1 port {port}\n"),
        ) + &format!(
            "action \"loopout\" relay port {port}\n\
             match from local for domain \"[127.0.0.1]\" action \"loopout\"\n"
        )
    });
    let id = submit(
        p.plain(),
        "a@sender.test",
        &["loop@[127.0.0.1]"],
        "Subject: loop\r\n\r\nround and round\r\n",
    );
    let line = p.wait_log("to=<loop@[127.0.0.1]>", WAIT);
    assert!(line.contains("status=deferred"), "{line}");
    assert!(
        line.contains("5.4.6 mail for [127.0.0.1] loops back to myself"),
        "{line}"
    );
    // Nothing was sent to ourselves: the one message is all there is.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.queued_ids(), [id]);
    assert!(!p.log_text().contains("status=sent"), "{}", p.log_text());
}

#[test]
fn too_many_received_headers_are_refused_at_end_of_data() {
    let p = Postern::start();
    let mut c = Conn::open(p.plain(), &p.cert.der);
    for (hops, want) in [(51, "554 5.4.6 Too many hops"), (50, "250 2.0.0")] {
        c.cmd("MAIL FROM:<a@sender.test>", "250");
        c.cmd("RCPT TO:<alice@example.com>", "250");
        c.cmd("DATA", "354");
        let mut m = String::new();
        for i in 0..hops {
            m.push_str(&format!("Received: from h{i} by h{}; x\r\n", i + 1));
        }
        m.push_str("Subject: hops\r\n\r\nx\r\n");
        c.send_raw(m.as_bytes());
        c.cmd(".", want);
    }
    c.cmd("QUIT", "221");
}

/// Read until the server closes (or 10 s pass); what it said.
fn read_to_close(s: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded by the read timeout and the server's own limits.
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

#[test]
fn a_dripped_command_cannot_outlast_command_timeout() {
    // One byte every 300 ms never let a read time out.
    use std::io::Write;
    let p = Postern::start_with(|d| {
        standard_config(d).replace("limit command-timeout 30s", "limit command-timeout 1s")
    });
    let mut s = std::net::TcpStream::connect(p.plain()).unwrap();
    let t0 = std::time::Instant::now();
    let writer = {
        let mut w = s.try_clone().unwrap();
        std::thread::spawn(move || {
            // Bounded: 40 bytes, 12 s.
            for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP".iter() {
                if w.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    let said = read_to_close(&mut s);
    let took = t0.elapsed();
    assert!(said.starts_with("220 "), "{said}");
    assert!(took < Duration::from_secs(6), "the session lasted {took:?}");
    p.wait_log("reason=timeout", WAIT);
    writer.join().unwrap();
}

#[test]
fn a_chatty_idle_client_is_closed_by_the_junk_limit_and_the_lifetime() {
    use std::io::Write;
    let p =
        Postern::start_with(|d| standard_config(d) + "limit junk-commands 3\nlimit max-errors 5\n");
    let mut s = std::net::TcpStream::connect(p.plain()).unwrap();
    s.write_all(&b"NOOP\r\n".repeat(20)).unwrap();
    let said = read_to_close(&mut s);
    // 3 free, then 5 that count as errors: the 8th ends the session.
    assert_eq!(said.matches("250 2.0.0 Ok").count(), 7, "{said}");
    assert!(said.contains("421 4.7.0 Too many errors"), "{said}");

    let p = Postern::start_with(|d| standard_config(d) + "limit session-lifetime 2s\n");
    let mut s = std::net::TcpStream::connect(p.plain()).unwrap();
    let t0 = std::time::Instant::now();
    let mut w = s.try_clone().unwrap();
    let chat = std::thread::spawn(move || {
        // Bounded: 30 NOOPs, one every 300 ms.
        for _ in 0..30 {
            if w.write_all(b"NOOP\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    read_to_close(&mut s);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(5), "the session lasted {took:?}");
    chat.join().unwrap();
}

#[test]
fn a_spool_below_its_free_space_floor_takes_no_new_mail() {
    // Postfix's queue_minfree, OpenSMTPD's 5 %.
    let p = Postern::start_with(|d| standard_config(d) + "limit queue-minfree 1000000G\n");
    let mut c = Conn::open(p.plain(), &p.cert.der);
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "452 4.3.1");
    p.wait_log("below limit queue-minfree", WAIT);
    assert!(p.queued_ids().is_empty());
}

/// A TLS session on the submission listener, greeted, from `src`.
fn submission_from(p: &Postern, src: &str) -> Conn {
    Conn::from_tcp(connect_from(src, p.submission()), &p.cert.der).secure()
}

#[test]
fn auth_failures_from_one_address_lock_it_out_across_sessions() {
    // Reconnecting after each 421 gave 12.7 guesses a second.
    let p = Postern::start_with(|d| {
        standard_config(d) + "limit auth-failures 1\nlimit auth-failures-per-ip 3\n"
    });
    // base64("\0alice\0wrong")
    let fail_three_times = |src: &str| {
        for _ in 0..3 {
            let mut c = submission_from(&p, src);
            c.send("AUTH PLAIN AGFsaWNlAHdyb25n");
            c.expect("535 5.7.8");
            c.expect("421 4.7.0");
        }
    };
    fail_three_times("127.0.0.3");
    // Now even the right password is not tried from there...
    let mut c = submission_from(&p, "127.0.0.3");
    c.send("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
    c.expect("421 4.7.0 Too many authentication failures from your address");
    assert!(c.closed());
    p.wait_log("recent failures from 127.0.0.3", WAIT);
    // ...while another address logs in as usual, and so does a local
    // program (a webmail on 127.0.0.1 is exempt, as from sessions-per-ip).
    let mut c = submission_from(&p, "127.0.0.2");
    c.auth_alice();
    fail_three_times("127.0.0.1");
    let mut c = submission_from(&p, "127.0.0.1");
    c.auth_alice();
}

#[test]
fn credentials_pipelined_after_a_refused_auth_are_not_logged() {
    // With -v (the harness runs postern with it).
    let p = Postern::start();
    let mut c = submission_from(&p, "127.0.0.1");
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.send_raw(b"AUTH LOGIN\r\nYWxpY2U=\r\nTEVBS0VELVBBU1NXT1JELTE=\r\n");
    c.expect("503");
    c.expect("500");
    c.expect("500");
    c.cmd("RSET", "250");
    c.auth_alice();
    // base64("\0alice\0LEAKED-PASSWORD-2")
    c.send_raw(b"AUTH PLAIN\r\nAGFsaWNlAExFQUtFRC1QQVNTV09SRC0y\r\n");
    c.expect("503");
    c.expect("500");
    c.cmd("QUIT", "221");
    p.wait_log("smtp disconnected", WAIT);
    let log = p.log_text();
    assert!(log.contains("(unrecognised, 24 octets)"), "{log}");
    for secret in [
        "YWxpY2U=",
        "TEVBS0VELVBBU1NXT1JELTE",
        "AGFsaWNlAExFQUtFRC1QQVNTV09SRC0y",
        "AGFsaWNlAHNlY3JldA",
    ] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn show_stats_counts_sessions() {
    // Sessions.active wrapped below zero; total and tls
    // stayed 0.
    let p = Postern::start();
    let mut c = submission_from(&p, "127.0.0.1");
    c.cmd("QUIT", "221");
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    c.cmd("QUIT", "221");
    let stats = || p.ctl(&["show", "stats"]).1;
    wait_until(WAIT, "both sessions ended", || {
        stats().contains("sessions.active=0\n")
    });
    let s = stats();
    assert!(s.contains("sessions.total=2\n"), "{s}");
    assert!(s.contains("sessions.tls=1\n"), "{s}");
}
