//! Hostile clients: idle floods, per-address floods, garbage of every
//! kind. After each, the server must still serve a normal client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{Conn, Postern, connect_from, standard_config, submit};

/// A whole transaction works (the server is healthy).
fn healthy(p: &Postern) {
    let id = submit(
        p.plain(),
        "a@sender.test",
        &["alice@example.com"],
        "Subject: ok\r\n\r\nfine\r\n",
    );
    assert_eq!(id.len(), 16);
}

#[test]
fn idle_connections_do_not_starve_a_real_client() {
    let p = Postern::start_with(|d| {
        standard_config(d).replace("limit workers 8", "limit workers 600")
            + "limit sessions 600\nlimit sessions-per-ip 600\n"
    });
    let idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(p.plain()).unwrap())
        .collect();
    // Let the acceptor hand them all out.
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    healthy(&p);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a transaction took {took:?} beside 500 idle connections"
    );
    drop(idle);
}

fn first_line(s: &mut TcpStream) -> String {
    let mut buf = [0u8; 512];
    // Retried on EINTR (a child of the test process exiting), a few times.
    let mut n = 0;
    for _ in 0..5 {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => {
                n = r.unwrap_or(0);
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn one_address_flooding_hits_its_limit_alone() {
    let p = Postern::start_with(|d| standard_config(d) + "limit sessions-per-ip 5\n");
    let mut flood: Vec<TcpStream> = (0..5)
        .map(|_| connect_from("127.0.0.3", p.plain()))
        .collect();
    for s in &mut flood {
        assert!(first_line(s).starts_with("220 "));
    }
    for _ in 0..10 {
        let mut extra = connect_from("127.0.0.3", p.plain());
        assert!(first_line(&mut extra).starts_with("421 4.3.2"));
    }
    // Another address is served meanwhile.
    let mut other = connect_from("127.0.0.2", p.plain());
    assert!(first_line(&mut other).starts_with("220 "));
    p.wait_log("reason=limit-sessions-per-ip", Duration::from_secs(5));
}

/// Send `bytes`, then read until the server closes or goes quiet; returns
/// what it said. Never hangs: reads time out.
fn throw(p: &Postern, addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    // Bounded: at most 200 reads of a closing or timing-out socket.
    for _ in 0..200 {
        match s.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let _ = p;
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn garbage_is_answered_or_closed_and_the_server_lives() {
    let p = Postern::start();
    let nul = throw(
        &p,
        p.plain(),
        b"EHLO a\0b\r\nMAIL\0FROM:<a@b>\r\n\0\0\0\r\n",
    );
    assert!(
        nul.starts_with("220 ") && nul.contains("500 5.5.2"),
        "{nul}"
    );
    let utf8 = throw(&p, p.plain(), b"\xff\xfe\xfd\r\nEHLO \xc3\x28\r\n");
    assert!(utf8.contains("500 5.5.2"), "{utf8}");
    let mut pipelined = Vec::new();
    for i in 0..200u32 {
        pipelined.extend_from_slice(
            format!("XYZZY{i} {}\r\n", "#".repeat((i % 50) as usize)).as_bytes(),
        );
    }
    let junk = throw(&p, p.plain(), &pipelined);
    assert!(junk.contains("421 4.7.0 Too many errors"), "{junk}");
    let mut huge = b"MAIL FROM:<".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b">\r\nNOOP\r\n");
    let long = throw(&p, p.plain(), &huge);
    assert!(
        long.contains("500 5.5.2 Line too long") && long.contains("250 2.0.0 Ok"),
        "{long}"
    );
    healthy(&p);
}

#[test]
fn tls_client_hello_on_the_plain_port() {
    let p = Postern::start();
    let cfg = crate::harness::client_tls(&p.cert.der, &[&rustls::version::TLS13]);
    let mut conn = rustls::ClientConnection::new(cfg, "mx.test".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100);
    let said = throw(&p, p.plain(), &hello);
    assert!(said.starts_with("220 "), "{said}");
    // And plaintext on the smtps port gets a closed connection, no greeting.
    let said = throw(&p, p.smtps(), b"EHLO plain.test\r\n");
    assert!(!said.contains("220"), "{said}");
    p.wait_log("tls-failed", Duration::from_secs(5));
    healthy(&p);
    let mut c = Conn::connect_tls(p.smtps(), &p.cert.der);
    c.expect("220");
}
