//! Client certificates inbound, with a real client (Python's smtplib and
//! ssl): `ask-cert` and `verify-cert` listeners, relaying by a listed
//! fingerprint or by a certificate that chains to the listener's `ca`,
//! and the Received header and session log naming the certificate. The
//! expected fingerprint comes from openssl.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Postern, maildir_files, need, stdout_of, wait_until, write_mode};

/// Issues client certificates from a test CA.
struct Issuer {
    ca: crate::harness::TestCa,
}

impl Issuer {
    fn new() -> Issuer {
        Issuer {
            ca: crate::harness::TestCa::new("Branch CA"),
        }
    }

    /// Write `NAME.pem` and `NAME.key` in `dir`: issued by the CA (with
    /// only the given key usage), or self-signed.
    fn write(&self, dir: &Path, name: &str, by_ca: bool, eku: rcgen::ExtendedKeyUsagePurpose) {
        let host = format!("{name}.example");
        let (cert, key) = if by_ca {
            self.ca.issue_with(&[&host], Some(name), &[eku])
        } else {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec![host]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.extended_key_usages = vec![eku];
            (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        write_mode(&dir.join(format!("{name}.pem")), &cert, 0o644);
        write_mode(&dir.join(format!("{name}.key")), &key, 0o600);
    }
}

/// `AB:CD:…`, as openssl prints a certificate's SHA-256 fingerprint.
fn openssl_fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let fp = text.trim().rsplit('=').next().unwrap_or("").to_string();
    assert_eq!(fp.len(), 95, "{text}");
    fp
}

/// STARTTLS with an optional client certificate, then MAIL and one RCPT
/// per argument; prints `ADDR CODE` lines, or `starttls-failed` when the
/// server ended TLS. With `--send`, sends a message to the first address.
const CLIENT: &str = r#"
import smtplib, ssl, sys
port, cert, key, server_ca, send = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "send"
rcpts = sys.argv[6:]
ctx = ssl.create_default_context(cafile=server_ca)
ctx.check_hostname = False
if cert != "-":
    ctx.load_cert_chain(cert, key)
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("client.test")
try:
    s.starttls(context=ctx)
    s.ehlo("client.test")
    code, _ = s.mail("carol@client.test")
except Exception as e:
    print("starttls-failed", type(e).__name__)
    sys.exit(0)
for r in rcpts:
    code, _ = s.rcpt(r)
    print(r, code)
if send:
    code, _ = s.data(b"Subject: by certificate\r\n\r\nHello.\r\n")
    print("data", code)
s.quit()
"#;

fn client(p: &Postern, port: u16, who: Option<&str>, send: bool, rcpts: &[&str]) -> String {
    let d = p.dir.path();
    let (cert, key) = match who {
        Some(n) => (
            d.join(format!("{n}.pem")).display().to_string(),
            d.join(format!("{n}.key")).display().to_string(),
        ),
        None => ("-".into(), "-".into()),
    };
    stdout_of(
        Command::new("python3")
            .args(["-c", CLIENT, &port.to_string(), &cert, &key])
            .arg(d.join("cert.pem"))
            .arg(if send { "send" } else { "nosend" })
            .args(rcpts),
        "python3 smtplib client",
    )
}

#[test]
fn relay_by_client_certificate() {
    need("python3", "python3");
    need("openssl", "openssl");
    let issuer = Issuer::new();
    let mut laptop_fp = String::new();
    let p = Postern::start_with(|d| {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        write_mode(&d.join("ca.pem"), &issuer.ca.pem(), 0o644);
        issuer.write(d, "laptop", true, ClientAuth);
        // A branch mail server's own certificate: serverAuth only.
        issuer.write(d, "branch", true, ServerAuth);
        issuer.write(d, "stranger", false, ClientAuth);
        laptop_fp = openssl_fingerprint(&d.join("laptop.pem"));
        format!(
            r#"hostname mx.test
queue "{d}/queue"
pki mx.test cert "{d}/cert.pem"
pki mx.test key "{d}/key.pem"
table locals {{ alice }}
table relaycerts {{ {laptop_fp} }}
listen on 127.0.0.1 port 0 tls pki mx.test ca "{d}/ca.pem" ask-cert
listen on 127.0.0.1 port 0 tls-require pki mx.test ca "{d}/ca.pem" verify-cert
resolver 127.0.0.1:9
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
action "out" relay
match from any for domain "example.test" action "local"
match cert <relaycerts> from any for any action "out"
match cert from any for domain "branch.example" action "out"
"#,
            d = d.display()
        )
    });
    let (ask, verify) = (p.addrs[0].port(), p.addrs[1].port());
    let far = "bob@far.example";
    let branch = "bob@branch.example";
    let local = "alice@example.test";
    // (client certificate, what each recipient gets)
    type Expect<'a> = &'a [(&'a str, u16)];
    let cases: &[(Option<&str>, Expect)] = &[
        (Some("laptop"), &[(far, 250), (branch, 250), (local, 250)]),
        (Some("branch"), &[(far, 554), (branch, 250), (local, 250)]),
        (Some("stranger"), &[(far, 554), (branch, 554), (local, 250)]),
        (None, &[(far, 554), (branch, 554), (local, 250)]),
    ];
    for (who, want) in cases {
        let rcpts: Vec<&str> = want.iter().map(|(r, _)| *r).collect();
        let out = client(&p, ask, *who, false, &rcpts);
        for (r, code) in *want {
            assert!(out.contains(&format!("{r} {code}\n")), "{who:?} {r}: {out}");
        }
    }
    // verify-cert: no certificate, or one the CA did not issue, gets no
    // session; a CA-issued one does.
    for who in [None, Some("stranger")] {
        let out = client(&p, verify, who, false, &[local]);
        assert!(out.starts_with("starttls-failed"), "{who:?}: {out}");
    }
    let out = client(&p, verify, Some("branch"), false, &[local]);
    assert!(out.contains(&format!("{local} 250")), "{out}");
    // The Received header and the session log name the certificate.
    let out = client(&p, ask, Some("laptop"), true, &[local]);
    assert!(out.contains("data 250"), "{out}");
    let fp = laptop_fp.replace(':', "").to_ascii_lowercase();
    let maildir = p.dir.path().join("mail/alice/Maildir");
    wait_until(
        Duration::from_secs(20),
        "the message in alice's Maildir",
        || !maildir_files(&maildir).is_empty(),
    );
    let msg = std::fs::read_to_string(&maildir_files(&maildir)[0]).unwrap();
    assert!(
        msg.contains(&format!(
            "(client-cert subject=\"CN=laptop\"\n\t sha256={fp} verified=yes)"
        )),
        "{msg}"
    );
    p.wait_log(
        &format!("client-cert=sha256:{fp} verified=yes subject=\"CN=laptop\""),
        Duration::from_secs(5),
    );
    p.wait_log("client-cert=sha256:", Duration::from_secs(5));
    assert!(
        p.log_text().contains("verified=no subject=\"CN=stranger\""),
        "{}",
        p.log_text()
    );
}

/// A relay action with `pki` presents that certificate to a server that
/// asks for one: here a receiving postern that takes mail for its domain
/// only from that certificate.
#[test]
fn relay_action_presents_its_pki() {
    need("openssl", "openssl");
    let issuer = Issuer::new();
    let mut fp = String::new();
    let receiver = Postern::start_named(&["mx.test"], |d| {
        use rcgen::ExtendedKeyUsagePurpose::ServerAuth;
        write_mode(&d.join("ca.pem"), &issuer.ca.pem(), 0o644);
        issuer.write(d, "branch", true, ServerAuth);
        fp = openssl_fingerprint(&d.join("branch.pem"));
        format!(
            r#"hostname mx.test
queue "{d}/queue"
pki mx.test cert "{d}/cert.pem"
pki mx.test key "{d}/key.pem"
table locals {{ alice }}
table branches {{ {fp} }}
listen on 127.0.0.2 port 0 tls pki mx.test ca "{d}/ca.pem" ask-cert
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
match cert <branches> from any for domain "example.test" action "local"
"#,
            d = d.display()
        )
    });
    let port = receiver.addrs[0].port();
    let (cert, key) = (
        receiver.dir.path().join("branch.pem"),
        receiver.dir.path().join("branch.key"),
    );
    let sender = Postern::start_with(|d| {
        format!(
            r#"hostname branch.example
queue "{d}/queue"
pki branch cert "{cert}"
pki branch key "{key}"
listen on 127.0.0.1 port 0
action "out" relay host smtp://127.0.0.2:{port} pki branch
match from local for any action "out"
"#,
            d = d.display(),
            cert = cert.display(),
            key = key.display()
        )
    });
    let id = crate::harness::submit(
        sender.addrs[0],
        "carol@branch.example",
        &["alice@example.test"],
        "Subject: from a branch\r\n\r\nHello.\r\n",
    );
    let line = sender.wait_log(
        &format!("{id}: to=<alice@example.test>"),
        Duration::from_secs(20),
    );
    assert!(line.contains("status=sent"), "{line}");
    let fp = fp.replace(':', "").to_ascii_lowercase();
    receiver.wait_log(
        &format!("client-cert=sha256:{fp} verified=yes subject=\"CN=branch\""),
        Duration::from_secs(5),
    );
}
