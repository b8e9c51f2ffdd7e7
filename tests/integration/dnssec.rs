//! The resolver against a real validating resolver: unbound serving a zone
//! signed in the test (ldns-signzone) and an unsigned one, with one TLSA
//! RRset tampered with after signing.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern::dns::{Lookup, Resolver, Server, TlsaAnswer};

use crate::harness::need;

const DIGEST: &str = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1";

/// unbound on a loopback port, validating zones signed in the test.
pub struct Unbound {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(dir: &std::path::Path, cmd: &str, args: &[&str]) -> String {
    crate::harness::stdout_of(
        Command::new(cmd).args(args).current_dir(dir),
        &format!("{cmd} {args:?}"),
    )
    .trim()
    .to_string()
}

/// A zone for [`Unbound::start`]: its records after the SOA and NS.
pub struct Zone<'a> {
    /// `secure.test`.
    pub origin: &'a str,
    /// Records, relative to the origin; `ns` is added.
    pub records: String,
    /// Sign it (with a trust anchor); unsigned zones are insecure.
    pub signed: bool,
    /// Owner names (as in the signed file, e.g. `_25._tcp.mx3.secure.test.`)
    /// whose TLSA data is altered after signing: bogus.
    pub tamper: &'a [&'a str],
}

impl Unbound {
    /// Sign the zones that say so (ldns-signzone; signatures expire, so
    /// never commit them), start unbound with their trust anchors, and
    /// wait until it answers for `probe` (a name with an A record).
    pub fn start(zones: &[Zone<'_>], probe: &str) -> Unbound {
        need("unbound", "unbound");
        need("ldns-signzone", "ldnsutils");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut anchors = String::new();
        let mut auth = String::new();
        for z in zones {
            let o = z.origin;
            let text = format!(
                "$ORIGIN {o}.\n$TTL 300\n\
                 @ IN SOA ns.{o}. admin.{o}. 1 3600 600 86400 300\n\
                 @ IN NS ns.{o}.\nns IN A 127.0.0.1\n{}",
                z.records
            );
            let file = format!("{o}.zone");
            std::fs::write(d.join(&file), text).unwrap();
            let served = if z.signed {
                let ksk = run(d, "ldns-keygen", &["-a", "ECDSAP256SHA256", "-k", o]);
                let zsk = run(d, "ldns-keygen", &["-a", "ECDSAP256SHA256", o]);
                run(d, "ldns-signzone", &["-n", &file, &ksk, &zsk]);
                anchors.push_str(&format!(
                    "  trust-anchor-file: \"{}/{ksk}.ds\"\n",
                    d.display()
                ));
                let signed = format!("{file}.signed");
                tamper(&d.join(&signed), z.tamper);
                signed
            } else {
                file
            };
            auth.push_str(&format!(
                "auth-zone:\n  name: \"{o}.\"\n  zonefile: \"{}/{served}\"\n\
                 for-upstream: yes\n  for-downstream: no\n  fallback-enabled: no\n",
                d.display()
            ));
        }
        // unbound serves UDP and TCP on its port: it must be free for both
        // (another test's TCP listener may hold a port UDP would give),
        // and an unbound that exits at start (a port taken meanwhile) is
        // started again on another one.
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_tcp_udp_port();
            let conf = format!(
                "server:\n  interface: 127.0.0.1\n  port: {port}\n  so-reuseport: no\n\
                 do-not-query-localhost: no\n\
                 username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n\
                 directory: \"{d}\"\n  module-config: \"validator iterator\"\n\
                 {anchors}  local-zone: \"test.\" nodefault\n{auth}",
                d = d.display()
            );
            std::fs::write(d.join("unbound.conf"), conf).unwrap();
            let log = std::fs::File::create(d.join("unbound.log")).unwrap();
            let mut child = Command::new("unbound")
                .args(["-d", "-c"])
                .arg(d.join("unbound.conf"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start unbound");
            let r = resolver_at(port, false);
            let t0 = Instant::now();
            // Bounded: 10 s for unbound to load and answer.
            let up = loop {
                if matches!(r.addrs(probe), Ok(Lookup::Found(a)) if !a.is_empty()) {
                    break true;
                }
                if child.try_wait().ok().flatten().is_some()
                    || t0.elapsed() > Duration::from_secs(10)
                {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                break Unbound {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                tries < 3,
                "unbound never answered on 127.0.0.1:{port}; its log:\n{}",
                std::fs::read_to_string(d.join("unbound.log")).unwrap_or_default()
            );
        }
    }
}

/// A loopback port free for both TCP and UDP just now (bounded tries).
fn free_tcp_udp_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP on 127.0.0.1");
}

/// Alter the TLSA data of `owners` in a signed zone file, leaving the
/// signatures as they were.
fn tamper(path: &std::path::Path, owners: &[&str]) {
    let signed = std::fs::read_to_string(path).unwrap();
    let mut done = 0;
    let out: String = signed
        .lines()
        .map(|l| {
            let mut words = l.split_whitespace();
            let owner = words.next().unwrap_or("");
            if owners.contains(&owner) && l.contains("TLSA") && !l.contains("RRSIG") {
                done += 1;
                // The last word is the hex data: flip its first digit.
                let (head, data) = l.rsplit_once(char::is_whitespace).unwrap();
                let flipped = if data.starts_with('0') { "1" } else { "0" };
                format!("{head} {flipped}{}\n", &data[1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_eq!(
        done,
        owners.len(),
        "TLSA lines to tamper with in {}",
        path.display()
    );
    std::fs::write(path, out).unwrap();
}

fn start_unbound() -> Unbound {
    let secure = format!(
        "@ IN MX 10 mx1.secure.test.\n\
         mx1 IN A 127.0.0.2\nmx2 IN A 127.0.0.3\nmx3 IN A 127.0.0.4\nmx4 IN A 127.0.0.5\n\
         alias IN CNAME mx2.secure.test.\n\
         _mta-sts IN TXT \"v=STSv1; \" \"id=20261202;\"\n\
         _25._tcp.mx1 IN TLSA 3 1 1 {DIGEST}\n\
         _25._tcp.mx3 IN TLSA 3 1 1 {DIGEST}\n\
         _25._tcp.mx4 IN TLSA 1 1 1 {DIGEST}\n"
    );
    let plain = format!("mx IN A 127.0.0.6\n_25._tcp.mx IN TLSA 3 1 1 {DIGEST}\n");
    Unbound::start(
        &[
            Zone {
                origin: "secure.test",
                records: secure,
                signed: true,
                tamper: &["_25._tcp.mx3.secure.test."],
            },
            Zone {
                origin: "plain.test",
                records: plain,
                signed: false,
                tamper: &[],
            },
        ],
        "mx1.secure.test",
    )
}

fn resolver(u: &Unbound, distrust: bool) -> Resolver {
    resolver_at(u.port, distrust)
}

fn resolver_at(port: u16, distrust: bool) -> Resolver {
    let mut s = Server::new(SocketAddr::from(([127, 0, 0, 1], port)));
    if distrust {
        s.trust_ad = false;
    }
    Resolver::with_servers(vec![s])
}

fn addrs(r: &Resolver, host: &str) -> (Lookup<std::net::IpAddr>, bool) {
    let a = r.addrs_secure(host).unwrap();
    (a.found, a.secure)
}

#[test]
fn dnssec_answers_and_tlsa_lookups_against_unbound() {
    let u = start_unbound();
    let r = resolver(&u, false);
    let ip = |s: &str| vec![s.parse::<std::net::IpAddr>().unwrap()];
    // A secure address, and its usable TLSA record.
    assert_eq!(
        addrs(&r, "mx1.secure.test"),
        (Lookup::Found(ip("127.0.0.2")), true)
    );
    match r.tlsa(25, "mx1.secure.test").unwrap() {
        TlsaAnswer::Usable(t) => {
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].to_string(), format!("3 1 1 {DIGEST}"));
        }
        other => panic!("mx1: {other:?}"),
    }
    // A CNAME: the addresses come with the name they were found under.
    let a = r.addrs_secure("alias.secure.test").unwrap();
    assert_eq!(
        (a.found, a.secure, a.cname.as_deref()),
        (
            Lookup::Found(ip("127.0.0.3")),
            true,
            Some("mx2.secure.test")
        )
    );
    assert_eq!(r.addrs_secure("mx2.secure.test").unwrap().cname, None);
    // TXT: strings of one record joined; secure; NODATA and NXDOMAIN.
    assert_eq!(
        r.txt("_mta-sts.secure.test").unwrap(),
        (
            Lookup::Found(vec!["v=STSv1; id=20261202;".to_string()]),
            true
        )
    );
    assert_eq!(
        r.txt("mx1.secure.test").unwrap(),
        (Lookup::Found(vec![]), true)
    );
    assert_eq!(r.txt("nx.secure.test").unwrap(), (Lookup::NxDomain, true));
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
        addrs(&r, "mx.plain.test"),
        (Lookup::Found(ip("127.0.0.6")), false)
    );
    assert_eq!(r.tlsa(25, "mx.plain.test").unwrap(), TlsaAnswer::None);
    // NXDOMAIN, securely denied.
    assert_eq!(addrs(&r, "nx.secure.test"), (Lookup::NxDomain, true));
    // The same server without trust: its AD bit means nothing.
    let untrusted = resolver(&u, true);
    assert_eq!(
        addrs(&untrusted, "mx1.secure.test"),
        (Lookup::Found(ip("127.0.0.2")), false)
    );
    assert_eq!(
        untrusted.tlsa(25, "mx1.secure.test").unwrap(),
        TlsaAnswer::None
    );
}
