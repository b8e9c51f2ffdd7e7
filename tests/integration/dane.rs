//! DANE end to end (RFC 7672): a sending postern with the default
//! `tls dane`, unbound validating a zone signed in the test, and receiving
//! posterns on 127.0.0.2–5 (one port) whose certificates the TLSA records
//! describe. The expected digests come from openssl, not from postern.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::dnssec::{Unbound, Zone};
use crate::harness::{Postern, maildir_files, need, submit, write_mode};

const WAIT: Duration = Duration::from_secs(20);

/// SHA2-256 of a PEM certificate's SubjectPublicKeyInfo, by openssl (the
/// `3 1 1` data).
pub fn spki_sha256(pem: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -noout -pubkey | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r",
            pem.display()
        ))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl failed on {}", pem.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(hex.len(), 64, "openssl digest of {}: {text}", pem.display());
    hex
}

/// A receiving postern for any domain's alice, on `ip:port`, with or
/// without STARTTLS; `chain` replaces its self-signed certificate.
pub fn receiver(
    ip: &str,
    port: u16,
    name: &str,
    starttls: bool,
    chain: Option<(&str, &str)>,
) -> Postern {
    Postern::start_named(&[name], |d| {
        if let Some((cert, key)) = chain {
            write_mode(&d.join("cert.pem"), cert, 0o644);
            write_mode(&d.join("key.pem"), key, 0o600);
        }
        format!(
            r#"hostname {name}
queue "{d}/queue"
pki {name} cert "{d}/cert.pem"
pki {name} key "{d}/key.pem"
table locals {{ alice }}
listen on {ip} port {port} {tls}
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
match from any for any action "local"
"#,
            d = d.display(),
            tls = if starttls { "tls" } else { "" }
        )
    })
}

/// A private CA and a leaf it signed for `name`: (chain PEM: leaf then
/// CA, leaf key PEM, CA PEM).
fn ca_chain(name: &str) -> (String, String, String) {
    let ca = crate::harness::TestCa::new("DANE test CA");
    let (leaf, key) = ca.issue(&[name]);
    (format!("{leaf}{}", ca.pem()), key, ca.pem())
}

pub fn msg(subject: &str) -> String {
    format!(
        "From: carol@sender.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@sender.test>\r\n\r\nHello.\r\n"
    )
}

/// Submit one message from carol per domain (to alice there), then check
/// each one's first result line for every string in its list.
pub fn deliver_and_check(s: &Postern, cases: &[(&str, &[&str])]) {
    let ids: Vec<String> = cases
        .iter()
        .map(|(domain, _)| {
            let to = format!("alice@{domain}");
            submit(s.addrs[0], "carol@sender.test", &[&to], &msg(domain))
        })
        .collect();
    for ((domain, wants), id) in cases.iter().zip(&ids) {
        let line = s.wait_log(&format!("{id}: to=<alice@{domain}>"), WAIT);
        for want in *wants {
            assert!(
                line.contains(want),
                "{domain}: wanted {want:?} in\n{line}\nlog:\n{}",
                s.log_text()
            );
        }
    }
}

/// Every maildir file of `p`, as text.
pub fn mail_of(p: &Postern) -> String {
    maildir_files(&p.dir.path().join("mail/alice/Maildir"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

#[test]
fn dane_authenticates_defers_and_falls_back_as_rfc_7672_says() {
    need("openssl", "openssl");
    // Receivers: A and B with their own self-signed certificates, C with a
    // chain from a private CA, D without STARTTLS. All on A's port.
    let a = receiver("127.0.0.2", 0, "mx-a.secure.test", true, None);
    let port = a.addrs[0].port();
    let b = receiver("127.0.0.3", port, "mx-b.secure.test", true, None);
    let (chain, key, ca) = ca_chain("mx-c.secure.test");
    let c = receiver(
        "127.0.0.4",
        port,
        "mx-c.secure.test",
        true,
        Some((&chain, &key)),
    );
    let d = receiver("127.0.0.5", port, "mx-d.secure.test", false, None);
    let a_311 = spki_sha256(&a.dir.path().join("cert.pem"));
    let ca_pem = c.dir.path().join("ca.pem");
    std::fs::write(&ca_pem, &ca).unwrap();
    let ca_211 = spki_sha256(&ca_pem);

    let secure = format!(
        "good MX 10 mx-a\n\
         next MX 10 mx-b\nnext MX 20 mx-a\n\
         bad MX 10 mx-b\n\
         ta MX 10 mx-c\n\
         bogus MX 10 mx-t\n\
         notlsa MX 10 mx-n\n\
         unusable MX 10 mx-u\n\
         nostarttls MX 10 mx-d\n\
         cname MX 10 mx-alias\n\
         strict MX 10 mx-n\n\
         mx-a A 127.0.0.2\n_{port}._tcp.mx-a TLSA 3 1 1 {a_311}\n\
         mx-b A 127.0.0.3\n_{port}._tcp.mx-b TLSA 3 1 1 {a_311}\n\
         mx-c A 127.0.0.4\n_{port}._tcp.mx-c TLSA 2 1 1 {ca_211}\n\
         mx-t A 127.0.0.2\n_{port}._tcp.mx-t TLSA 3 1 1 {a_311}\n\
         mx-n A 127.0.0.3\n\
         mx-u A 127.0.0.3\n_{port}._tcp.mx-u TLSA 0 0 1 {a_311}\n\
         mx-d A 127.0.0.5\n_{port}._tcp.mx-d TLSA 3 1 1 {a_311}\n\
         mx-alias CNAME mx-a.secure.test.\n"
    );
    // An unsigned zone: its TLSA record (which B would fail) is ignored;
    // and a "smart MX" in a signed zone behind an insecure MX record.
    let plain = format!(
        "@ MX 10 mx.plain.test.\nmx A 127.0.0.3\n_{port}._tcp.mx TLSA 3 1 1 {a_311}\n\
         smart MX 10 mx-a.secure.test.\n"
    );
    let tampered = format!("_{port}._tcp.mx-t.secure.test.");
    let unbound = Unbound::start(
        &[
            Zone {
                origin: "secure.test",
                records: secure,
                signed: true,
                tamper: &[&tampered],
            },
            Zone {
                origin: "plain.test",
                records: plain,
                signed: false,
                tamper: &[],
            },
        ],
        "mx-a.secure.test",
    );

    let s = Postern::start_with(|dir| {
        format!(
            r#"hostname sender.test
queue "{q}/queue"
listen on 127.0.0.1 port 0
resolver 127.0.0.1:{dns}
table locals {{ carol }}
table strict {{ strict.secure.test = dane-only }}
action "local" maildir "{q}/mail/%{{user}}/Maildir" users <locals>
action "out" relay port {port} tls-policy <strict>
match from any for domain "sender.test" action "local"
match from local for any action "out"
limit retry-interval 1s
"#,
            q = dir.display(),
            dns = unbound.port
        )
    });
    let cases: &[(&str, &[&str])] = &[
        // A matching 3 1 1: authenticated.
        (
            "good.secure.test",
            &[
                "relay=mx-a.secure.test[127.0.0.2]",
                "verified=dane policy=dane status=sent",
            ],
        ),
        // A mismatch on the first MX: no mail there, the next MX gets it.
        (
            "next.secure.test",
            &[
                "relay=mx-a.secure.test[127.0.0.2]",
                "verified=dane policy=dane status=sent",
            ],
        ),
        // A mismatch on the only MX: deferred, never plaintext.
        (
            "bad.secure.test",
            &[
                "status=deferred (451 4.7.5 TLS handshake with mx-b.secure.test[127.0.0.3]",
                "DANE: no TLSA record matched",
            ],
        ),
        // DANE-TA with a private CA the server sends, name checked.
        (
            "ta.secure.test",
            &[
                "relay=mx-c.secure.test[127.0.0.4]",
                "verified=dane policy=dane status=sent",
            ],
        ),
        // Bogus TLSA (SERVFAIL): a lookup error, deferred.
        (
            "bogus.secure.test",
            &["status=deferred (451 4.7.5 TLSA lookup error for mx-t.secure.test"],
        ),
        // Signed, no TLSA: opportunistic TLS.
        (
            "notlsa.secure.test",
            &[
                "relay=mx-n.secure.test[127.0.0.3]",
                "verified=no policy=may status=sent",
            ],
        ),
        // Only unusable records: encrypted, unauthenticated.
        (
            "unusable.secure.test",
            &[
                "relay=mx-u.secure.test[127.0.0.3]",
                "tls=TLSv1.3",
                "verified=no policy=encrypt status=sent",
            ],
        ),
        // DANE host without STARTTLS: deferred, nothing sent in plaintext.
        (
            "nostarttls.secure.test",
            &["status=deferred (451 4.7.5 TLS is required, but mx-d.secure.test[127.0.0.5]"],
        ),
        // The TLSA records under the CNAME target.
        (
            "cname.secure.test",
            &[
                "relay=mx-alias.secure.test[127.0.0.2]",
                "verified=dane policy=dane status=sent",
            ],
        ),
        // dane-only without TLSA records.
        (
            "strict.secure.test",
            &[
                "status=deferred (451 4.7.5 tls dane-only: no TLSA records found for mx-n.secure.test",
            ],
        ),
        // Unsigned: the published TLSA record is not even asked for.
        (
            "plain.test",
            &[
                "relay=mx.plain.test[127.0.0.3]",
                "verified=no policy=may status=sent",
            ],
        ),
        // Insecure MX, secure host with TLSA: DANE still applies.
        (
            "smart.plain.test",
            &[
                "relay=mx-a.secure.test[127.0.0.2]",
                "verified=dane policy=dane status=sent",
            ],
        ),
    ];
    deliver_and_check(&s, cases);
    let log = s.log_text();
    // The mismatch names what the server presented, as openssl sees it
    // (B's key), ready for a TLSA record.
    let b_311 = spki_sha256(&b.dir.path().join("cert.pem"));
    assert!(
        log.contains(&format!("the server's certificate is 3 1 1 {b_311}")),
        "{log}"
    );
    assert!(!log.contains("retrying once without TLS"), "{log}");
    // Where DANE failed, the receivers got nothing.
    let mail_b = mail_of(&b);
    for domain in ["next.secure.test", "bad.secure.test", "strict.secure.test"] {
        assert!(
            !mail_b.contains(&format!("Subject: {domain}\n")),
            "{domain} reached B"
        );
    }
    assert!(mail_b.contains("Subject: notlsa.secure.test\n"), "{mail_b}");
    assert!(!mail_of(&a).contains("Subject: bogus.secure.test\n"));
    assert_eq!(mail_of(&d), "", "nothing reaches a DANE host in plaintext");
    assert!(mail_of(&c).contains("Subject: ta.secure.test\n"));
    tls_check(&s, &a_311, &b_311);
    let (_, stats, _) = s.ctl(&["show", "stats"]);
    for want in ["dane.authenticated=", "dane.mismatched=", "tlsa.error="] {
        let n: u64 = stats
            .lines()
            .find_map(|l| l.strip_prefix(want))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(n >= 1, "{want} in\n{stats}");
    }
}

/// `posternctl tls-check` against the same DNS and receivers: each verdict
/// and its exit code.
fn tls_check(s: &Postern, a_311: &str, b_311: &str) {
    let run = |args: &[&str]| s.posternctl(&[&["tls-check"], args].concat());
    let cases: &[(&str, i32, &[String])] = &[
        (
            "good.secure.test",
            0,
            &[
                "MX answer: DNSSEC-secure".into(),
                "addresses: 127.0.0.2 (DNSSEC-secure)".into(),
                format!("TLSA: usable\n    3 1 1 {a_311}"),
                "policy: dane".into(),
                format!("DANE: matched 3 1 1 {a_311}"),
                "subject CN=mx-a.secure.test; issuer CN=mx-a.secure.test; expires ".into(),
                format!("SPKI SHA-256 {a_311}"),
                "CA store: does not verify for mx-a.secure.test".into(),
                "verdict: would deliver to mx-a.secure.test with DANE authentication".into(),
            ],
        ),
        (
            "next.secure.test",
            0,
            &[
                format!("SPKI SHA-256 {b_311}"),
                "no mail: 451 4.7.5 TLS handshake with mx-b.secure.test".into(),
                "verdict: would deliver to mx-a.secure.test with DANE authentication".into(),
            ],
        ),
        (
            "bad.secure.test",
            2,
            &[
                format!("the server's certificate is 3 1 1 {b_311}"),
                format!("SPKI SHA-256 {b_311}"),
                "verdict: would defer: mx-b.secure.test: 451 4.7.5 TLS handshake".into(),
            ],
        ),
        (
            "ta.secure.test",
            0,
            &[
                "issuer CN=DANE test CA".into(),
                "verdict: would deliver to mx-c.secure.test with DANE authentication".into(),
            ],
        ),
        (
            "notlsa.secure.test",
            1,
            &[
                "TLSA: none".into(),
                "policy: may".into(),
                "verdict: would deliver to mx-n.secure.test over TLS without authentication".into(),
            ],
        ),
        (
            "bogus.secure.test",
            2,
            &[
                "TLSA: error".into(),
                "verdict: would defer: mx-t.secure.test: 451 4.7.5 TLSA lookup error".into(),
            ],
        ),
        (
            "nostarttls.secure.test",
            2,
            &["did not offer STARTTLS".into()],
        ),
        (
            "plain.test",
            1,
            &["MX answer: insecure".into(), "TLSA: not looked up".into()],
        ),
        (
            "nx.secure.test",
            2,
            &["verdict: would bounce: 550 5.1.2 domain nx.secure.test does not exist".into()],
        ),
    ];
    for (domain, code, wants) in cases {
        let (got, out, err) = run(&[domain]);
        assert_eq!(got, Some(*code), "{domain}: {out}{err}");
        for want in *wants {
            assert!(
                out.contains(want.as_str()),
                "{domain}: wanted {want:?} in\n{out}"
            );
        }
    }
    // Mail for a local domain is no TLS question: an error, exit 3.
    let (got, _, err) = run(&["sender.test"]);
    assert_eq!(got, Some(3), "{err}");
    assert!(
        err.contains("tls-check: ") && err.contains("sender.test"),
        "{err}"
    );
    // JSON that a JSON parser reads, with the same verdict.
    let (got, json, _) = run(&["--json", "good.secure.test"]);
    assert_eq!(got, Some(0));
    let check = Command::new("python3")
        .args([
            "-c",
            "import json,sys; r=json.load(sys.stdin); p=r['hosts'][0]['probes'][0]; \
             print(r['exit'], p['verified'], p['chain'][0]['spki_sha256'])",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(json.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        format!("0 dane {a_311}"),
        "{json}"
    );
}
