//! `metrics on ADDR port N`: the Prometheus text that an independent
//! parser (Python's prometheus_client) reads, and counters that move as
//! sessions happen.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Conn, Postern, need, standard_config};

fn scrape(port: u16) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

/// Samples as `name{labels} value` lines, as prometheus_client reads them.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %s" % (s.name, labels, s.value))
"#;

fn parse(body: &str) -> String {
    need("python3", "python3");
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{body}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn value(samples: &str, key: &str) -> f64 {
    samples
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {key} in\n{samples}"))
}

#[test]
fn metrics_parse_and_count_sessions() {
    let port = crate::harness::free_port();
    let p = Postern::start_with(|d| {
        standard_config(d) + &format!("metrics on 127.0.0.1 port {port}\n")
    });
    // Three STARTTLS sessions, one of them with a message.
    for i in 0..3 {
        let mut c = Conn::connect(p.tls(), &p.cert.der).secure();
        if i == 0 {
            c.send_message(
                "carol@client.test",
                &["alice@example.com"],
                "Subject: counted\r\n\r\nHello.\r\n",
            );
        }
        c.cmd("QUIT", "221");
    }
    let (head, body) = scrape(port);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let samples = parse(&body);
    let tls = value(
        &samples,
        "postern_tls_handshakes_total{result=ok,version=TLSv1.3}",
    ) + value(
        &samples,
        "postern_tls_handshakes_total{result=ok,version=TLSv1.2}",
    );
    assert!(tls >= 3.0, "{samples}");
    assert!(value(&samples, "postern_starttls_offered_total{}") >= 3.0);
    assert!(value(&samples, "postern_messages_total{result=accepted}") >= 1.0);
    assert!(value(&samples, "postern_message_bytes_total{}") > 0.0);
    assert!(value(&samples, "postern_spool_commits_total{}") >= 1.0);
    assert!(value(&samples, "postern_spool_fsync_seconds_count{}") >= 1.0);
    assert!(
        value(&samples, "postern_queue_messages{}") >= 1.0,
        "{samples}"
    );
    assert!(value(&samples, "postern_sessions_total{}") >= 3.0);
    // Never a per-domain or per-address label.
    for l in samples.lines() {
        assert!(!l.contains("domain=") && !l.contains("address="), "{l}");
    }
    // Anything but GET /metrics is not served.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    // posternctl show stats reads the same counters.
    let (ok, stats, _) = p.ctl(&["show", "stats"]);
    assert!(ok);
    let offered: u64 = stats
        .lines()
        .find_map(|l| l.strip_prefix("starttls.offered="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(offered >= 3, "{stats}");
}
