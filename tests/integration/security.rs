//! The SECURITY-2 reproductions that need the real daemon: mail loops (M3)
//! and the rest of the findings that a client or server can trigger.

use std::time::Duration;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn relaying_to_our_own_listener_defers_instead_of_looping() {
    // SECURITY-2 M3: the shipped rules relay for local clients; a message
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
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("220");
    c.ehlo();
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
