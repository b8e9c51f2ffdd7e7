//! Real clients nobody here wrote: lettre, Python's smtplib, swaks and
//! `openssl s_client`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Postern, need};

#[test]
fn lettre_starttls_and_auth() {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};

    let p = Postern::start();
    let tls = TlsParameters::builder("mx.test".to_string())
        .add_root_certificate(Certificate::from_pem(p.cert.cert_pem.as_bytes()).unwrap())
        .build_rustls()
        .unwrap();
    let mailer = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(p.submission().port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new("alice".into(), "secret".into()))
        .timeout(Some(Duration::from_secs(10)))
        .build();
    let email = Message::builder()
        .from("alice@example.com".parse().unwrap())
        .to("friend@elsewhere.test".parse().unwrap())
        .subject("from lettre")
        .body("Hello over STARTTLS\r\n".to_string())
        .unwrap();
    let resp = mailer.send(&email).unwrap();
    assert_eq!(resp.code().to_string(), "250");
    let msg = resp.message().collect::<Vec<_>>().join(" ");
    let id = msg.rsplit(' ').next().unwrap();
    let env = p.envelope(id);
    assert!(
        env.contains("rcpt addr=friend@elsewhere.test action=out"),
        "{env}"
    );
    assert!(env.contains("tls TLSv1."), "{env}");
    let body = String::from_utf8(p.body(id)).unwrap();
    assert!(body.contains("Subject: from lettre"), "{body}");

    // Wrong password: lettre reports the permanent 535.
    let bad = SmtpTransport::builder_dangerous("127.0.0.1")
        .port(p.submission().port())
        .tls(Tls::Required(
            TlsParameters::builder("mx.test".to_string())
                .add_root_certificate(Certificate::from_pem(p.cert.cert_pem.as_bytes()).unwrap())
                .build_rustls()
                .unwrap(),
        ))
        .credentials(Credentials::new("alice".into(), "nope".into()))
        .build();
    let err = bad.send(&email).unwrap_err();
    assert!(
        err.to_string().contains("535") || err.is_permanent(),
        "{err}"
    );
}

const SMTPLIB: &str = r#"
import smtplib, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP(host, port, timeout=10)
s.ehlo("py.test")
assert s.has_extn("starttls"), s.esmtp_features
assert not s.has_extn("auth"), "AUTH offered before TLS"
code, _ = s.starttls(context=ctx)
assert code == 220, code
s.ehlo("py.test")
assert not s.has_extn("starttls"), "STARTTLS offered inside TLS"
assert "plain" in s.esmtp_features.get("auth", "").lower()
try:
    s.login("alice", "wrong")
    raise SystemExit("wrong password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535, e
s.login("alice", "secret")
refused = s.sendmail("alice@example.com", ["bob@example.com", "x@elsewhere.test"], b"Subject: py\r\n\r\nfrom smtplib\r\n")
assert refused == {}, refused
s.quit()
print("ok")
"#;

#[test]
fn python_smtplib() {
    need("python3", "python3");
    let p = Postern::start();
    let out = Command::new("python3")
        .args([
            "-c",
            SMTPLIB,
            "127.0.0.1",
            &p.submission().port().to_string(),
        ])
        .arg(p.cert_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = p.queued_ids();
    assert_eq!(ids.len(), 1);
    let env = p.envelope(&ids[0]);
    assert!(
        env.contains("addr=bob@example.com action=local")
            && env.contains("addr=x@elsewhere.test action=out"),
        "{env}"
    );
}

#[test]
fn swaks_submission_and_failures() {
    need("swaks", "swaks");
    let p = Postern::start();
    let port = p.submission().port().to_string();
    let server = format!("127.0.0.1:{port}");
    let run = |extra: &[&str]| {
        Command::new("swaks")
            .args([
                "--server",
                &server,
                "--from",
                "alice@example.com",
                "--to",
                "x@elsewhere.test",
                "--timeout",
                "10",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let ok = run(&["-tls", "-au", "alice", "-ap", "secret"]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as"), "{text}");
    assert_eq!(p.queued_ids().len(), 1);
    // Without TLS on the require listener: refused with 530.
    let plain = run(&[]);
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(!plain.status.success());
    assert!(
        text.contains("530 5.7.0 Must issue a STARTTLS command first"),
        "{text}"
    );
    // Wrong password.
    let bad = run(&["-tls", "-au", "alice", "-ap", "wrong"]);
    assert!(String::from_utf8_lossy(&bad.stdout).contains("535 5.7.8"));
    assert_eq!(p.queued_ids().len(), 1);
}

fn s_client(args: &[&str], input: &str) -> (bool, String) {
    need("openssl", "openssl");
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    // s_client exits at EOF on stdin; give the server time to answer first.
    let feeder = std::thread::spawn(move || {
        for line in input.lines() {
            std::thread::sleep(Duration::from_millis(300));
            // -crlf turns each LF into CRLF itself.
            let _ = stdin.write_all(format!("{line}\n").as_bytes());
        }
        std::thread::sleep(Duration::from_millis(500));
    });
    let out = child.wait_with_output().unwrap();
    let _ = feeder.join();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn openssl_starttls_smtp() {
    let p = Postern::start();
    let addr = p.tls().to_string();
    let (_, text) = s_client(
        &[
            "-starttls",
            "smtp",
            "-connect",
            &addr,
            "-CAfile",
            p.cert_path().to_str().unwrap(),
            "-verify_return_error",
            "-crlf",
            "-quiet",
        ],
        "EHLO openssl.test\nQUIT",
    );
    assert!(text.contains("250-mx.test Hello openssl.test"), "{text}");
    assert!(
        !text.contains("STARTTLS\n") && !text.contains("250-STARTTLS"),
        "STARTTLS re-advertised: {text}"
    );
    assert!(text.contains("221 2.0.0 Bye"), "{text}");
    assert!(text.contains("verify return:1"), "{text}");
}

#[test]
fn tls_1_1_and_1_0_refused() {
    let p = Postern::start();
    let addr = p.tls().to_string();
    for v in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(
            &[
                "-starttls",
                "smtp",
                "-connect",
                &addr,
                v,
                "-cipher",
                "DEFAULT:@SECLEVEL=0",
            ],
            "QUIT",
        );
        assert!(!ok, "{v} accepted: {text}");
        assert!(!text.contains("221 2.0.0"), "{v}: {text}");
    }
    let (ok, text) = s_client(
        &[
            "-starttls",
            "smtp",
            "-connect",
            &addr,
            "-tls1_2",
            "-brief",
            "-crlf",
        ],
        "QUIT",
    );
    assert!(ok, "TLS 1.2 refused: {text}");
    assert!(text.contains("TLSv1.2"), "{text}");
    p.wait_log("tls-failed", Duration::from_secs(5));
}

#[test]
fn openssl_smtps() {
    let p = Postern::start();
    let addr = p.smtps().to_string();
    let (_, text) = s_client(
        &[
            "-connect",
            &addr,
            "-CAfile",
            p.cert_path().to_str().unwrap(),
            "-crlf",
            "-quiet",
            "-servername",
            "mx.test",
        ],
        "EHLO openssl.test\nQUIT",
    );
    assert!(text.contains("220 mx.test ESMTP postern"), "{text}");
    assert!(text.contains("250-AUTH PLAIN LOGIN"), "{text}");
    p.wait_log("sni=mx.test", Duration::from_secs(5));
}

/// What one of tests/peers' Python scripts printed (trimmed), and its
/// stderr for the failure message.
fn python_peer(script: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/peers/{script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tls_sessions_end_with_close_notify() {
    // OpenSSL with ragged EOFs reported, as Exim's GnuTLS
    // does, saw the connection cut after 221.
    let p = Postern::start();
    for (port, mode) in [(p.tls().port(), "starttls"), (p.smtps().port(), "smtps")] {
        let (said, err) = python_peer("close_notify.py", &["client", &port.to_string(), mode]);
        assert_eq!(said, "clean", "{mode}: {err}");
    }
}

#[test]
fn a_tls_1_3_session_as_openssl_sees_it() {
    // The server's suite order wins over OpenSSL's AES-256-GCM first
    // (postern.conf(5) TLS); the ticket rides with the first reply instead
    // of a write of its own, and it still resumes.
    let p = Postern::start();
    let (said, err) = python_peer("tls_session.py", &[&p.tls().port().to_string()]);
    assert_eq!(
        said, "before-ehlo=0 cipher=TLS_AES_128_GCM_SHA256 reused=yes",
        "{err}"
    );
}

#[test]
fn a_tls_1_1_client_is_logged_in_words() {
    // An administrator reads "offered only TLS 1.1", not rustls's enum.
    let p = Postern::start();
    let script = "import socket, ssl, sys\n\
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)\n\
        ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n\
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1\n\
        ctx.set_ciphers('DEFAULT@SECLEVEL=0')\n\
        s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)\n\
        try:\n    ctx.wrap_socket(s, server_hostname='x'); print('handshake succeeded')\n\
        except ssl.SSLError as e:\n    print('refused', e)\n";
    let out = Command::new("python3")
        .args(["-c", script, &p.smtps().port().to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("refused"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = p.wait_log("smtp tls-failed", Duration::from_secs(10));
    assert!(
        line.contains(
            "reason=\"the client offered only TLS 1.1 or older; postern needs TLS 1.2 or 1.3\""
        ),
        "{line}"
    );
}

#[test]
fn fail2ban_finds_auth_failures_and_relay_probes() {
    // etc/fail2ban/postern.conf against the lines this daemon logs at its
    // default level, as a syslog daemon writes them to the maillog.
    need("fail2ban-regex", "fail2ban");
    let p = Postern::start();
    let mut c = crate::harness::Conn::connect(p.submission(), &p.cert.der).secure();
    // base64("\0alice\0wrong")
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8");
    c.cmd("MAIL FROM:<probe@sender.test>", "250");
    c.cmd("RCPT TO:<victim@elsewhere.test>", "554 5.7.1");
    c.cmd("RCPT TO:<nobody@example.com>", "550 5.1.1");
    c.cmd("QUIT", "221");
    p.wait_log("smtp disconnected", Duration::from_secs(10));
    let maillog: String = p
        .log_text()
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m))
        .filter(|m| m.contains(" smtp auth-failed ") || m.contains(" smtp reject "))
        .map(|m| format!("Dec  1 23:00:55 mx postern[4242]: {m}\n"))
        .collect();
    assert_eq!(maillog.lines().count(), 3, "{}", p.log_text());
    assert!(
        !maillog.contains("wrong") && !maillog.contains("AGFsaWNl"),
        "{maillog}"
    );
    // The filter includes fail2ban's common.conf from its own directory.
    let d = p.dir.path().join("fail2ban");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy("/etc/fail2ban/filter.d/common.conf", d.join("common.conf")).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/etc/fail2ban/postern.conf"),
        d.join("postern.conf"),
    )
    .unwrap();
    std::fs::write(d.join("mail.log"), &maillog).unwrap();
    let out = Command::new("fail2ban-regex")
        .arg(d.join("mail.log"))
        .arg(d.join("postern.conf"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    // The AUTH failure and the relay probe, not the unknown user.
    assert!(
        report.contains("Lines: 3 lines, 0 ignored, 2 matched, 1 missed"),
        "{maillog}\n{report}"
    );
}
