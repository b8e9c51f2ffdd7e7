//! The resolver against a real validating resolver: unbound serving a zone
//! signed in the test (ldns-signzone) and an unsigned one, with one TLSA
//! RRset tampered with after signing.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern::dns::{Lookup, Resolver, Server, TlsaAnswer};

use crate::harness::need;

const DIGEST: &str = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1";

struct Unbound {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(dir: &std::path::Path, cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start_unbound() -> Unbound {
    need("unbound", "unbound");
    need("ldns-signzone", "ldnsutils");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let secure = format!(
        "$ORIGIN secure.test.\n$TTL 300\n\
         @ IN SOA ns.secure.test. admin.secure.test. 1 3600 600 86400 300\n\
         @ IN NS ns.secure.test.\nns IN A 127.0.0.1\n\
         @ IN MX 10 mx1.secure.test.\n\
         mx1 IN A 127.0.0.2\nmx2 IN A 127.0.0.3\nmx3 IN A 127.0.0.4\nmx4 IN A 127.0.0.5\n\
         _25._tcp.mx1 IN TLSA 3 1 1 {DIGEST}\n\
         _25._tcp.mx3 IN TLSA 3 1 1 {DIGEST}\n\
         _25._tcp.mx4 IN TLSA 1 1 1 {DIGEST}\n"
    );
    std::fs::write(d.join("secure.test.zone"), secure).unwrap();
    let plain = format!(
        "$ORIGIN plain.test.\n$TTL 300\n\
         @ IN SOA ns.plain.test. admin.plain.test. 1 3600 600 86400 300\n\
         @ IN NS ns.plain.test.\nns IN A 127.0.0.1\nmx IN A 127.0.0.6\n\
         _25._tcp.mx IN TLSA 3 1 1 {DIGEST}\n"
    );
    std::fs::write(d.join("plain.test.zone"), plain).unwrap();
    let ksk = run(
        d,
        "ldns-keygen",
        &["-a", "ECDSAP256SHA256", "-k", "secure.test"],
    );
    let zsk = run(d, "ldns-keygen", &["-a", "ECDSAP256SHA256", "secure.test"]);
    run(d, "ldns-signzone", &["-n", "secure.test.zone", &ksk, &zsk]);
    // Tamper with mx3's TLSA after signing: its RRset is now bogus.
    let signed = std::fs::read_to_string(d.join("secure.test.zone.signed")).unwrap();
    let mut tampered = false;
    let signed: String = signed
        .lines()
        .map(|l| {
            if l.starts_with("_25._tcp.mx3.") && l.contains("TLSA") && !l.contains("RRSIG") {
                tampered = true;
                format!("{}\n", l.replace(&DIGEST[..8], "00000000"))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert!(tampered, "no TLSA line for mx3 in the signed zone");
    std::fs::write(d.join("secure.test.zone.signed"), signed).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-not-query-localhost: no\n\
         username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n\
         directory: \"{d}\"\n  module-config: \"validator iterator\"\n\
         trust-anchor-file: \"{d}/{ksk}.ds\"\n  local-zone: \"test.\" nodefault\n\
         auth-zone:\n  name: \"secure.test.\"\n  zonefile: \"{d}/secure.test.zone.signed\"\n\
         for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n\
         auth-zone:\n  name: \"plain.test.\"\n  zonefile: \"{d}/plain.test.zone\"\n\
         for-upstream: yes\n  for-downstream: no\n",
        d = d.display()
    );
    std::fs::write(d.join("unbound.conf"), conf).unwrap();
    let child = Command::new("unbound")
        .args(["-d", "-c"])
        .arg(d.join("unbound.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start unbound");
    let u = Unbound {
        child,
        port,
        _dir: dir,
    };
    let r = resolver(&u, false);
    let t0 = Instant::now();
    // Bounded: 10 s for unbound to load and answer.
    while !matches!(r.addrs("mx1.secure.test"), Ok(Lookup::Found(a)) if !a.is_empty()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "unbound never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    u
}

fn resolver(u: &Unbound, distrust: bool) -> Resolver {
    let mut s = Server::new(SocketAddr::from(([127, 0, 0, 1], u.port)));
    if distrust {
        s.trust_ad = false;
    }
    Resolver::with_servers(vec![s])
}

#[test]
fn dnssec_answers_and_tlsa_lookups_against_unbound() {
    let u = start_unbound();
    let r = resolver(&u, false);
    let ip = |s: &str| vec![s.parse::<std::net::IpAddr>().unwrap()];
    // A secure address, and its usable TLSA record.
    assert_eq!(
        r.addrs_secure("mx1.secure.test").unwrap(),
        (Lookup::Found(ip("127.0.0.2")), true)
    );
    match r.tlsa(25, "mx1.secure.test").unwrap() {
        TlsaAnswer::Usable(t) => {
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].to_string(), format!("3 1 1 {DIGEST}"));
        }
        other => panic!("mx1: {other:?}"),
    }
    // A secure denial: no DANE.
    assert_eq!(r.tlsa(25, "mx2.secure.test").unwrap(), TlsaAnswer::None);
    // The port is part of the name.
    assert_eq!(r.tlsa(587, "mx2.secure.test").unwrap(), TlsaAnswer::None);
    // Bogus (tampered after signing): an error that defers, never "none".
    let bogus = r.tlsa(25, "mx3.secure.test");
    assert!(bogus.is_err(), "{bogus:?}");
    // Secure, but only a usage SMTP cannot use (PKIX-EE, RFC 7672 §3.1.3).
    assert_eq!(r.tlsa(25, "mx4.secure.test").unwrap(), TlsaAnswer::Unusable);
    // An unsigned zone: insecure answers, its TLSA ignored.
    assert_eq!(
        r.addrs_secure("mx.plain.test").unwrap(),
        (Lookup::Found(ip("127.0.0.6")), false)
    );
    assert_eq!(r.tlsa(25, "mx.plain.test").unwrap(), TlsaAnswer::None);
    // NXDOMAIN, securely denied.
    assert_eq!(
        r.addrs_secure("nx.secure.test").unwrap(),
        (Lookup::NxDomain, true)
    );
    // The same server without trust: its AD bit means nothing.
    let untrusted = resolver(&u, true);
    assert_eq!(
        untrusted.addrs_secure("mx1.secure.test").unwrap(),
        (Lookup::Found(ip("127.0.0.2")), false)
    );
    assert_eq!(
        untrusted.tlsa(25, "mx1.secure.test").unwrap(),
        TlsaAnswer::None
    );
}
