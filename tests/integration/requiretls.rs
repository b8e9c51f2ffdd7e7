//! REQUIRETLS and TLS-Required: No (RFC 8689) end to end: a message
//! submitted with `MAIL FROM:<…> REQUIRETLS` (by Python's smtplib) goes
//! only to an authenticated server that offers REQUIRETLS, carrying the
//! parameter; otherwise it bounces with 5.7.10 or 5.7.30. A message whose
//! header says `TLS-Required: No` goes where the policy would refuse.

use std::process::Command;
use std::time::Duration;

use crate::delivery::Peer;
use crate::harness::{Dns, Postern, maildir_files, need, submit, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// Submit over STARTTLS with `MAIL FROM:<carol@sender.test> REQUIRETLS`;
/// returns the queue id from the 250 reply.
fn submit_requiretls(port: u16, to: &str, subject: &str) -> String {
    need("python3", "python3");
    let script = r#"
import smtplib, ssl, sys
port, to, subject = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("client.test")
s.starttls(context=ctx)
s.ehlo("client.test")
assert s.has_extn("requiretls"), s.esmtp_features
s.mail("carol@sender.test", ["REQUIRETLS"])
s.rcpt(to)
code, msg = s.data(("Subject: %s\r\n\r\nHello.\r\n" % subject).encode())
print(code, msg.decode())
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string(), to, subject])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.starts_with("250 "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A receiving postern (REQUIRETLS inside TLS) for alice at example.test
/// and implicit.test, on 127.0.0.2.
fn receiver() -> Postern {
    Postern::start_named(&["mx1.example.test"], |d| {
        format!(
            r#"hostname mx1.example.test
queue "{d}/queue"
pki mx1.example.test cert "{d}/cert.pem"
pki mx1.example.test key "{d}/key.pem"
table locals {{ alice }}
listen on 127.0.0.2 port 0 tls
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
match from any for domain "example.test" action "local"
match from any for domain "implicit.test" action "local"
"#,
            d = d.display()
        )
    })
}

/// A sending postern with a TLS listener for submissions, carol's local
/// mailbox (for bounces), and `out` as given.
fn sender(dns: u16, out: &str) -> Postern {
    Postern::start_with(|d| {
        format!(
            r#"hostname sender.test
queue "{d}/queue"
pki sender cert "{d}/cert.pem"
pki sender key "{d}/key.pem"
listen on 127.0.0.1 port 0 tls pki sender
resolver 127.0.0.1:{dns}
table locals {{ carol }}
table strict {{ example.test = verify }}
action "local" maildir "{d}/mail/%{{user}}/Maildir" users <locals>
{out}
match from any for domain "sender.test" action "local"
match from local for any action "out"
limit retry-interval 1s
"#,
            d = d.display()
        )
    })
}

fn carols_mail(s: &Postern) -> String {
    maildir_files(&s.dir.path().join("mail/carol/Maildir"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect()
}

#[test]
fn requiretls_goes_only_over_authenticated_tls_that_offers_it() {
    let dns = Dns::start();
    let r = receiver();
    let port = r.addrs[0].port();
    let ca = r.dir.path().join("cert.pem");
    // Authenticated by `tls verify` with the receiver's certificate as CA,
    // and the receiver offers REQUIRETLS: delivered, parameter passed on.
    let s = sender(
        dns.port,
        &format!(
            "action \"out\" relay port {port} tls verify ca \"{}\"",
            ca.display()
        ),
    );
    let id = submit_requiretls(s.addrs[0].port(), "alice@example.test", "kept-secret");
    let line = s.wait_log(&format!("{id}: to=<alice@example.test>"), WAIT);
    assert!(
        line.contains("verified=ca policy=verify status=sent"),
        "{line}"
    );
    r.wait_log("from=<carol@sender.test>", WAIT);
    assert!(
        r.log_text()
            .lines()
            .any(|l| l.contains("from=<carol@sender.test>") && l.contains("requiretls=yes")),
        "{}",
        r.log_text()
    );
    // The parameter went on to the next hop.
    let mail = r.wait_log("< MAIL FROM:<carol@sender.test>", WAIT);
    assert!(mail.ends_with(" REQUIRETLS"), "{mail}");
}

#[test]
fn requiretls_bounces_without_authentication_and_tls_required_no_goes_anyway() {
    let dns = Dns::start();
    let r = receiver();
    let port = r.addrs[0].port();
    // Default `dane` without DNSSEC is `may` for implicit.test, and
    // example.test is `verify` with no CA that knows the receiver.
    let s = sender(
        dns.port,
        &format!("action \"out\" relay port {port} tls-policy <strict>"),
    );
    let id = submit_requiretls(s.addrs[0].port(), "alice@implicit.test", "unauthenticated");
    let line = s.wait_log(&format!("{id}: to=<alice@implicit.test>"), WAIT);
    assert!(
        line.contains("status=bounced (550 5.7.10 REQUIRETLS: TLS to implicit.test would not be authenticated (policy may"),
        "{line}"
    );
    wait_until(WAIT, "the 5.7.10 bounce for carol", || {
        carols_mail(&s).contains("Status: 5.7.10")
    });
    assert!(!r.log_text().contains("requiretls=yes"), "{}", r.log_text());
    // An ordinary message to the `verify` domain waits for a certificate
    // that verifies; one with TLS-Required: No goes with what there is.
    let plain = submit(
        s.addrs[0],
        "carol@sender.test",
        &["alice@example.test"],
        "Subject: ordinary\r\n\r\nHello.\r\n",
    );
    let line = s.wait_log(&format!("{plain}: to=<alice@example.test>"), WAIT);
    assert!(
        line.contains("status=deferred (451 4.7.5 TLS handshake"),
        "{line}"
    );
    let relaxed = submit(
        s.addrs[0],
        "carol@sender.test",
        &["alice@example.test"],
        "Subject: relaxed\r\nTLS-Required: No\r\n\r\nHello.\r\n",
    );
    let line = s.wait_log(&format!("{relaxed}: to=<alice@example.test>"), WAIT);
    assert!(
        line.contains("verified=no policy=may status=sent"),
        "{line}"
    );
    assert!(
        s.log_text()
            .lines()
            .any(|l| l.contains(&format!("{relaxed}: from=")) && l.contains("tls-required=no")),
        "{}",
        s.log_text()
    );
}

/// aiosmtpd (with STARTTLS and a certificate the sender trusts) is
/// authenticated, but does not offer REQUIRETLS.
#[test]
fn requiretls_bounces_with_5_7_30_where_the_server_lacks_it() {
    let dns = Dns::start();
    // Certificate files for mx1.example.test, from a throwaway postern.
    let certs = receiver();
    let peer = Peer::start("127.0.0.2", Some(&certs), false);
    let s = sender(
        dns.port,
        &format!(
            "action \"out\" relay host smtp://mx1.example.test:{} tls verify ca \"{}\"",
            peer.port,
            certs.dir.path().join("cert.pem").display()
        ),
    );
    let id = submit_requiretls(s.addrs[0].port(), "someone@far.test", "no-support");
    let line = s.wait_log(&format!("{id}: to=<someone@far.test>"), WAIT);
    assert!(
        line.contains(
            "status=bounced (550 5.7.30 REQUIRETLS support required, but mx1.example.test[127.0.0.2]"
        ),
        "{line}"
    );
    wait_until(WAIT, "the 5.7.30 bounce for carol", || {
        carols_mail(&s).contains("Status: 5.7.30")
    });
    assert!(peer.messages().is_empty(), "{:?}", peer.messages());
}
