//! PROXY protocol behind a real haproxy (send-proxy and send-proxy-v2,
//! STARTTLS and smtps backends): the client's own address, not the load
//! balancer's, reaches the rules, the Received header and the logs; a
//! connection without a header, or from a peer not in `proxy from`, gets
//! 421.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    Conn, Postern, connect_from, free_port, maildir_files, need, stdout_of, wait_until,
};

struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// haproxy with one frontend per (backend address, send-proxy option);
/// returns it and the frontends' ports in order.
fn haproxy(backends: &[(SocketAddr, &str)]) -> (Haproxy, Vec<u16>) {
    need("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let mut conf = String::from(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    let mut ports = Vec::new();
    for (i, (addr, opt)) in backends.iter().enumerate() {
        let port = free_port();
        ports.push(port);
        conf.push_str(&format!(
            "frontend f{i}\n  bind 127.0.0.1:{port}\n  default_backend b{i}\nbackend b{i}\n  server s{i} {addr} {opt}\n"
        ));
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    stdout_of(
        Command::new("haproxy").arg("-c").arg("-f").arg(&path),
        "haproxy -c",
    );
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let h = Haproxy { child, _dir: dir };
    let t0 = Instant::now();
    // Bounded: 10 s for haproxy to listen on every frontend.
    for p in &ports {
        while std::net::TcpStream::connect(("127.0.0.1", *p)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "haproxy did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (h, ports)
}

#[test]
fn clients_behind_haproxy_keep_their_address() {
    let p = Postern::start_with(|d| {
        format!(
            r#"hostname mx.test
queue "{d}/queue"
pki mx.test cert "{d}/cert.pem"
pki mx.test key "{d}/key.pem"
table lbs {{ 127.0.0.1 }}
table nobody {{ 192.0.2.0/24 }}
table relayers {{ 127.0.0.5 }}
table locals {{ alice }}
listen on 127.0.0.1 port 0 tls pki mx.test proxy from <lbs>
listen on 127.0.0.1 port 0 smtps pki mx.test proxy
listen on 127.0.0.1 port 0 tls pki mx.test proxy from <nobody>
resolver 127.0.0.1:9
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
action "out" relay
match from any for domain "example.test" action "local"
match from src <relayers> for any action "out"
"#,
            d = d.display()
        )
    });
    let (starttls, smtps, untrusted) = (p.addrs[0], p.addrs[1], p.addrs[2]);
    let (_h, fronts) = haproxy(&[
        (starttls, "send-proxy"),
        (starttls, "send-proxy-v2"),
        (smtps, "send-proxy-v2"),
        (untrusted, "send-proxy"),
    ]);
    let front = |i: usize| SocketAddr::from(([127, 0, 0, 1], fronts[i]));
    // v1 and v2 to the STARTTLS listener, from 127.0.0.5: relaying is
    // allowed for that address (not for haproxy's 127.0.0.1), and the
    // message is stamped with it.
    for (i, version) in [(0, "v1"), (1, "v2")] {
        let mut c = Conn::from_tcp(connect_from("127.0.0.5", front(i)), &p.cert.der);
        c.expect("220");
        c.ehlo();
        // STARTTLS through the balancer, on the v2 pass.
        if version == "v2" {
            c.starttls();
            c.ehlo();
        }
        c.cmd("MAIL FROM:<carol@client.test>", "250");
        c.cmd("RCPT TO:<bob@far.example>", "250");
        c.cmd("RCPT TO:<alice@example.test>", "250");
        c.cmd("DATA", "354");
        c.send_raw(format!("Subject: via {version}\r\n\r\nHello.\r\n.\r\n").as_bytes());
        c.expect("250");
        c.cmd("QUIT", "221");
    }
    // smtps behind send-proxy-v2: the header, then the TLS handshake.
    let mut c = Conn::from_tcp(connect_from("127.0.0.5", front(2)), &p.cert.der);
    c.tls("mx.test").unwrap();
    c.expect("220");
    c.ehlo();
    c.cmd("MAIL FROM:<carol@client.test>", "250");
    c.cmd("RCPT TO:<alice@example.test>", "250");
    c.cmd("QUIT", "221");
    // Another client address behind the same haproxy is not a relayer.
    let mut c = Conn::from_tcp(connect_from("127.0.0.6", front(0)), &p.cert.der);
    c.expect("220");
    c.ehlo();
    c.cmd("MAIL FROM:<carol@client.test>", "250");
    c.cmd("RCPT TO:<bob@far.example>", "554");
    c.cmd("QUIT", "221");
    let maildir = p.dir.path().join("mail/alice/Maildir");
    wait_until(Duration::from_secs(20), "two messages for alice", || {
        maildir_files(&maildir).len() == 2
    });
    for f in maildir_files(&maildir) {
        let m = std::fs::read_to_string(f).unwrap();
        assert!(
            m.contains("Received: from client.test ([127.0.0.5])"),
            "{m}"
        );
    }
    let log = p.log_text();
    assert!(
        log.contains("smtp connected address=127.0.0.5:") && log.contains(" proxy=127.0.0.1:"),
        "{log}"
    );
    // Straight to the proxy listener, without a header: 421.
    let mut c = Conn::connect(starttls, &p.cert.der);
    c.send_raw(b"EHLO client.test\r\n");
    assert!(c.reply().is_some_and(|r| r.starts_with("421 4.7.0")));
    // Through haproxy, but to a listener whose <nobody> does not list it.
    let mut c = Conn::from_tcp(connect_from("127.0.0.5", front(3)), &p.cert.der);
    assert!(c.reply().is_some_and(|r| r.starts_with("421 4.7.0")));
    p.wait_log(
        "which is not in <nobody>: add the load balancer",
        Duration::from_secs(5),
    );
    p.wait_log(
        "every connection must come through the load balancer",
        Duration::from_secs(5),
    );
}

/// Two postern nodes, each with its own spool, behind one haproxy with
/// SMTP health checks (the shipped etc/haproxy.cfg's settings): when one
/// is killed, new sessions succeed through the other within 10 s, and the
/// mail the killed node acknowledged is delivered once it is back.
#[test]
fn two_nodes_as_one_service() {
    let ports = [free_port(), free_port()];
    // Both hold their queues (delivery-workers 0) until the end.
    let conf = |d: &std::path::Path, port: u16, workers: usize| {
        format!(
            r#"hostname node{port}.test
queue "{d}/queue"
table lbs {{ 127.0.0.1 }}
table locals {{ alice }}
listen on 127.0.0.1 port {port} proxy from <lbs>
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
match from any for domain "example.test" action "local"
limit delivery-workers {workers}
"#,
            d = d.display()
        )
    };
    let mut nodes: Vec<Postern> = ports
        .iter()
        .map(|&port| Postern::start_with(|d| conf(d, port, 0)))
        .collect();
    need("haproxy", "haproxy");
    let dir = tempfile::tempdir().unwrap();
    let front = free_port();
    let cfg = format!(
        "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
         frontend smtp\n  bind 127.0.0.1:{front}\n  default_backend nodes\n\
         backend nodes\n  balance roundrobin\n  option smtpchk HELO haproxy.test\n\
         default-server send-proxy-v2 check-send-proxy check inter 300ms fall 1 rise 1\n\
         server n1 127.0.0.1:{}\n  server n2 127.0.0.1:{}\n",
        ports[0], ports[1]
    );
    std::fs::write(dir.path().join("h.cfg"), cfg).unwrap();
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(dir.path().join("h.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _h = Haproxy { child, _dir: dir };
    let front = SocketAddr::from(([127, 0, 0, 1], front));
    let send = |subject: &str| -> Option<String> {
        let s = std::net::TcpStream::connect_timeout(&front, Duration::from_secs(2)).ok()?;
        let mut c = Conn::from_tcp(s, &nodes_cert());
        let greeting = c.reply()?;
        if !greeting.starts_with("220") {
            return None;
        }
        c.ehlo();
        Some(c.send_message(
            "carol@client.test",
            &["alice@example.test"],
            &format!("Subject: {subject}\r\n\r\nHello.\r\n"),
        ))
    };
    // Bounded: haproxy up and both nodes checked healthy within 10 s.
    let t0 = Instant::now();
    while send("warm-up").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "haproxy never served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(700));
    let mut acked = 1;
    for i in 0..6 {
        assert!(send(&format!("before {i}")).is_some());
        acked += 1;
    }
    // Both nodes took some.
    assert!(nodes.iter().all(|n| !n.queued_ids().is_empty()));
    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();
    // Within 10 s every new session goes to the node that is left.
    let t0 = Instant::now();
    let mut ok_in_a_row = 0;
    while ok_in_a_row < 4 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sessions kept failing after a node died"
        );
        if send("after").is_some() {
            ok_in_a_row += 1;
            acked += 1;
        } else {
            ok_in_a_row = 0;
        }
    }
    // Both back with delivery on: every acknowledged message arrives.
    for (i, n) in nodes.iter_mut().enumerate() {
        let d = n.dir.path().to_path_buf();
        std::fs::write(
            &n.config,
            crate::harness::as_root_too(conf(&d, ports[i], 2)),
        )
        .unwrap();
        // The killed node starts again; the other restarts to take the
        // new configuration (kill -9 loses nothing either way).
        n.kill9_and_restart();
    }
    let delivered = || -> usize {
        nodes
            .iter()
            .map(|n| maildir_files(&n.dir.path().join("mail/alice/Maildir")).len())
            .sum()
    };
    wait_until(
        Duration::from_secs(20),
        "every acknowledged message delivered",
        || delivered() == acked,
    );
}

/// Any certificate will do: the nodes above speak no TLS.
fn nodes_cert() -> rustls::pki_types::CertificateDer<'static> {
    crate::harness::make_cert(&["unused.test"]).der
}
