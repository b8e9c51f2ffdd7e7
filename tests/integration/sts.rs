//! MTA-STS end to end (RFC 8461): a sending postern with the default
//! `tls dane`, unbound serving the `_mta-sts` TXT records (and one signed
//! zone, for DANE's precedence), a Python HTTPS server serving the policy
//! files with a certificate from a test CA, and receiving posterns with a
//! CA-issued, a self-signed and a wrong-name certificate.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dane::{deliver_and_check, mail_of, receiver, spki_sha256};
use crate::dnssec::{Unbound, Zone};
use crate::harness::{Postern, TestCa, need, stdout_of};

const WAIT: Duration = Duration::from_secs(20);

/// Python's HTTPS server, answering `/.well-known/mta-sts.txt` with the
/// file named after the Host header in its directory: 404 when there is
/// none, a 301 when the file says `REDIRECT`.
struct PolicyServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// Kept open: a closed pipe would kill the server at its next write.
    _stdout: std::process::ChildStdout,
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVER: &str = r#"
import http.server, os, ssl, sys
root, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        path = os.path.join(root, "policies", host)
        if self.path != "/.well-known/mta-sts.txt" or "/" in host or not os.path.exists(path):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers(); return
        body = open(path, "rb").read()
        if body.startswith(b"REDIRECT"):
            self.send_response(301); self.send_header("Location", "https://elsewhere.test/"); self.send_header("Content-Length", "0"); self.end_headers(); return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or "0")
        body = self.rfile.read(n)
        name = "posted-%s" % self.path.strip("/").replace("/", "_")
        with open(os.path.join(root, name + ".tmp"), "wb") as f:
            f.write(self.headers.get("Content-Type", "").encode() + b"\n" + body)
        os.rename(os.path.join(root, name + ".tmp"), os.path.join(root, name))
        self.send_response(201); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(root, "cert.pem"), os.path.join(root, "key.pem"))
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

impl PolicyServer {
    fn start(cert: &(String, String)) -> PolicyServer {
        need("python3", "python3");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(dir.path().join("cert.pem"), &cert.0).unwrap();
        std::fs::write(dir.path().join("key.pem"), &cert.1).unwrap();
        std::fs::write(dir.path().join("server.py"), SERVER).unwrap();
        let port = crate::harness::free_port();
        let mut child = Command::new("python3")
            .arg(dir.path().join("server.py"))
            .arg(dir.path())
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut out = child.stdout.take().unwrap();
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(&mut out, &mut ready).expect("policy server did not start");
        assert_eq!(&ready, b"ready\n");
        PolicyServer {
            child,
            port,
            dir,
            _stdout: out,
        }
    }

    fn serve(&self, domain: &str, text: &str) {
        std::fs::write(
            self.dir
                .path()
                .join("policies")
                .join(format!("mta-sts.{domain}")),
            text,
        )
        .unwrap();
    }

    fn withdraw(&self, domain: &str) {
        let _ = std::fs::remove_file(
            self.dir
                .path()
                .join("policies")
                .join(format!("mta-sts.{domain}")),
        );
    }
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mx: String = mx.iter().map(|m| format!("mx: {m}\r\n")).collect();
    format!("version: STSv1\r\nmode: {mode}\r\n{mx}max_age: 86400\r\n")
}

/// The zones for one phase: the MX records and STS ids of sts.test, and
/// the signed sec.test for DANE's precedence.
fn dns(port: u16, sts_records: &str, b_311: &str) -> Unbound {
    let sts = format!(
        "mx-good A 127.0.0.2\nmx-self A 127.0.0.3\nmx-wrong A 127.0.0.4\n\
         mta-sts.good A 127.0.0.1\nmta-sts.badcert A 127.0.0.1\nmta-sts.unlisted A 127.0.0.1\n\
         mta-sts.testing A 127.0.0.1\nmta-sts.redirect A 127.0.0.1\nmta-sts.wrongname A 127.0.0.1\n\
         mta-sts.idchange A 127.0.0.1\n{sts_records}"
    );
    let sec = format!(
        "dd MX 10 mx-dd\nmx-dd A 127.0.0.3\n_{port}._tcp.mx-dd TLSA 3 1 1 {b_311}\n\
         _mta-sts.dd TXT \"v=STSv1; id=1\"\nmta-sts.dd A 127.0.0.1\n"
    );
    Unbound::start(
        &[
            Zone {
                origin: "sts.test",
                records: sts,
                signed: false,
                tamper: &[],
            },
            Zone {
                origin: "sec.test",
                records: sec,
                signed: true,
                tamper: &[],
            },
        ],
        "mx-good.sts.test",
    )
}

fn sender_config(dir: &Path, dns: u16, port: u16, sts_port: u16) -> String {
    format!(
        r#"hostname sender.test
queue "{q}/queue"
listen on 127.0.0.1 port 0
resolver 127.0.0.1:{dns}
mta-sts port {sts_port}
table locals {{ carol }}
action "local" maildir "{q}/mail/%{{user}}/Maildir" users <locals>
action "out" relay port {port} ca "{q}/ca.pem"
match from any for domain "sender.test" action "local"
match from local for any action "out"
limit retry-interval 1s
tls-report from "tlsrpt@sender.test" dkim-key "{q}/dkim.pem" selector tlsrpt org "Sender Org"
"#,
        q = dir.display()
    )
}

#[test]
fn mta_sts_enforces_tests_caches_and_yields_to_dane() {
    let ca = TestCa::new("MTA-STS test CA");
    let good = ca.issue(&["mx-good.sts.test"]);
    let wrong = ca.issue(&["elsewhere.sts.test"]);
    let a = receiver(
        "127.0.0.2",
        0,
        "mx-good.sts.test",
        true,
        Some((&good.0, &good.1)),
    );
    let port = a.addrs[0].port();
    let b = receiver("127.0.0.3", port, "mx-self.sts.test", true, None);
    let c = receiver(
        "127.0.0.4",
        port,
        "mx-wrong.sts.test",
        true,
        Some((&wrong.0, &wrong.1)),
    );
    let b_311 = spki_sha256(&b.dir.path().join("cert.pem"));
    let web = PolicyServer::start(&ca.issue(&[
        "mta-sts.good.sts.test",
        "mta-sts.badcert.sts.test",
        "mta-sts.unlisted.sts.test",
        "mta-sts.testing.sts.test",
        "mta-sts.redirect.sts.test",
        "mta-sts.wrongname.sts.test",
        "mta-sts.idchange.sts.test",
        "mta-sts.dd.sec.test",
    ]));
    web.serve("good.sts.test", &policy("enforce", &["mx-good.sts.test"]));
    web.serve("badcert.sts.test", &policy("enforce", &["*.sts.test"]));
    web.serve("unlisted.sts.test", &policy("enforce", &["other.sts.test"]));
    web.serve(
        "testing.sts.test",
        &policy("testing", &["mx-self.sts.test"]),
    );
    web.serve("redirect.sts.test", "REDIRECT");
    web.serve(
        "wrongname.sts.test",
        &policy("enforce", &["mx-wrong.sts.test"]),
    );
    web.serve(
        "idchange.sts.test",
        &policy("testing", &["mx-good.sts.test"]),
    );
    web.serve("dd.sec.test", &policy("enforce", &["nothing.sec.test"]));
    let phase1 = format!(
        "good MX 10 mx-good\n_mta-sts.good TXT \"v=STSv1; id=1\"\n\
                  badcert MX 10 mx-self\n_mta-sts.badcert TXT \"v=STSv1; id=1\"\n\
                  unlisted MX 10 mx-good\n_mta-sts.unlisted TXT \"v=STSv1; id=1\"\n\
                  testing MX 10 mx-self\n_mta-sts.testing TXT \"v=STSv1; id=1\"\n\
                  redirect MX 10 mx-self\n_mta-sts.redirect TXT \"v=STSv1; id=1\"\n\
                  wrongname MX 10 mx-wrong\n_mta-sts.wrongname TXT \"v=STSv1; id=1\"\n\
                  idchange MX 10 mx-self\n_mta-sts.idchange TXT \"v=STSv1; id=1\"\n\
                  _smtp._tls.good TXT \"v=TLSRPTv1; rua=mailto:alice@report.sts.test\"\n\
                  _smtp._tls.badcert TXT \"v=TLSRPTv1; rua=mailto:alice@report.sts.test\"\n\
                  report MX 10 mx-good\n\
                  _smtp._tls.report TXT \"v=TLSRPTv1; rua=mailto:alice@report.sts.test\"\n\
                  _smtp._tls.testing TXT \"v=TLSRPTv1; rua=https://mta-sts.good.sts.test:{}/tlsrpt\"\n",
        web.port
    );
    let dns1 = dns(port, &phase1, &b_311);
    let mut s = Postern::start_with(|dir| {
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        dkim_key(dir);
        sender_config(dir, dns1.port, port, web.port)
    });
    deliver_and_check(
        &s,
        &[
            (
                "good.sts.test",
                &[
                    "relay=mx-good.sts.test[127.0.0.2]",
                    "verified=sts policy=sts status=sent",
                ],
            ),
            (
                "badcert.sts.test",
                &["status=deferred (451 4.7.5 TLS handshake with mx-self.sts.test[127.0.0.3]"],
            ),
            (
                "unlisted.sts.test",
                &[
                    "status=deferred (451 4.7.5 MTA-STS: the enforced policy of unlisted.sts.test does not list MX host mx-good.sts.test",
                ],
            ),
            (
                "testing.sts.test",
                &[
                    "relay=mx-self.sts.test[127.0.0.3]",
                    "verified=no policy=may status=sent",
                ],
            ),
            (
                "redirect.sts.test",
                &[
                    "relay=mx-self.sts.test[127.0.0.3]",
                    "verified=no policy=may status=sent",
                ],
            ),
            (
                "wrongname.sts.test",
                &["status=deferred (451 4.7.5 TLS handshake with mx-wrong.sts.test[127.0.0.4]"],
            ),
            (
                "idchange.sts.test",
                &[
                    "relay=mx-self.sts.test[127.0.0.3]",
                    "policy=may status=sent",
                ],
            ),
            // Secure TLSA records: DANE decides, the STS policy (which
            // lists no host) is not consulted.
            (
                "dd.sec.test",
                &[
                    "relay=mx-dd.sec.test[127.0.0.3]",
                    "verified=dane policy=dane status=sent",
                ],
            ),
        ],
    );
    let log = s.log_text();
    assert!(
        log.contains("MTA-STS redirect.sts.test: fetching the policy failed"),
        "{log}"
    );
    assert!(log.contains("HTTP status 301"), "{log}");
    assert!(!log.contains("retrying once without TLS"), "{log}");
    let mail_b = mail_of(&b);
    assert!(
        !mail_b.contains("Subject: badcert.sts.test\n"),
        "badcert reached B"
    );
    assert!(mail_b.contains("Subject: testing.sts.test\n"));
    assert_eq!(mail_of(&c), "", "the wrong-name host got mail");
    assert!(!mail_of(&a).contains("Subject: unlisted.sts.test\n"));
    // tls-check sees the same policy and verdict (with a cache of its own
    // in memory: it leaves the spool alone).
    let (code, text, _) = s.posternctl(&["tls-check", "good.sts.test"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("MTA-STS policy: id 1, mode enforce, mx mx-good.sts.test, max_age 86400"),
        "{text}"
    );
    assert!(text.contains("policy: sts"), "{text}");
    assert!(text.contains("MTA-STS: listed in the policy"), "{text}");
    assert!(
        text.contains("TLS-RPT: mailto:alice@report.sts.test"),
        "{text}"
    );
    assert!(
        text.contains("verdict: would deliver to mx-good.sts.test with MTA-STS authentication"),
        "{text}"
    );
    let (code, text, _) = s.posternctl(&["tls-check", "unlisted.sts.test"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("skipped: 451 4.7.5 MTA-STS"), "{text}");
    assert!(text.contains("MTA-STS: not listed in the policy"), "{text}");
    assert!(
        text.contains("TLS-RPT: none (no _smtp._tls record)"),
        "{text}"
    );
    let cached = std::fs::read_to_string(s.queue().join("sts/good.sts.test")).unwrap();
    assert!(cached.starts_with("postern-sts 1\nid 1\n"), "{cached}");
    tls_reports(&s, &a);
    // The https rua of testing.sts.test got its report by POST.
    let posted = std::fs::read(web.dir.path().join("posted-tlsrpt")).expect("no report posted");
    let (ctype, gz) = posted.split_at(posted.iter().position(|&b| b == b'\n').unwrap() + 1);
    assert_eq!(ctype, b"application/tlsrpt+gzip\n");
    let mut json = Command::new("python3")
        .args(["-c", "import gzip,json,sys; r=json.loads(gzip.decompress(sys.stdin.buffer.read())); p=r['policies'][0]; print(p['policy']['policy-domain'], p['policy']['policy-type'], p['summary']['total-successful-session-count'])"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut json.stdin.take().unwrap(), gz).unwrap();
    let out = json.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "testing.sts.test sts 1"
    );

    // Phase 2, after a restart: good.sts.test's TXT id changes but its
    // policy can no longer be fetched, and its MX now points at a host
    // the cached policy does not list: the cached enforce policy still
    // applies. idchange.sts.test's id changes and its new policy is
    // enforce without mx-self: refreshed and enforced.
    drop(dns1);
    web.withdraw("good.sts.test");
    web.serve(
        "idchange.sts.test",
        &policy("enforce", &["mx-good.sts.test"]),
    );
    let phase2 = "good MX 10 mx-self\n_mta-sts.good TXT \"v=STSv1; id=2\"\n\
                  idchange MX 10 mx-self\n_mta-sts.idchange TXT \"v=STSv1; id=2\"\n";
    let dns2 = dns(port, phase2, &b_311);
    let conf = sender_config(s.dir.path(), dns2.port, port, web.port);
    std::fs::write(&s.config, crate::harness::as_root_too(conf)).unwrap();
    s.kill9_and_restart();
    let t0 = Instant::now();
    deliver_and_check(
        &s,
        &[
            (
                "good.sts.test",
                &[
                    "status=deferred (451 4.7.5 MTA-STS: the enforced policy of good.sts.test does not list MX host mx-self.sts.test",
                ],
            ),
            (
                "idchange.sts.test",
                &[
                    "status=deferred (451 4.7.5 MTA-STS: the enforced policy of idchange.sts.test does not list MX host mx-self.sts.test",
                ],
            ),
        ],
    );
    assert!(t0.elapsed() < WAIT);
    let log = s.log_text();
    assert!(
        log.contains("MTA-STS good.sts.test: fetching the policy failed (HTTP status 404)"),
        "{log}"
    );
    assert!(
        log.contains("using the cached one (id 1, mode enforce)"),
        "{log}"
    );
    assert!(
        log.contains("MTA-STS idchange.sts.test: policy id 2 fetched: mode enforce"),
        "{log}"
    );
    assert!(!mail_of(&b).contains("Subject: good.sts.test\n"));
}

/// An RSA key for DKIM, by openssl, mode 600.
fn dkim_key(dir: &Path) {
    need("openssl", "openssl");
    let key = dir.join("dkim.pem");
    let ok = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Reads each TLS report in a Maildir the way a receiver would: DKIM
/// verified by dkimpy against the public key (as a DNS answer would give
/// it), the gzip'd JSON unpacked, and prints one line per report.
const READ_REPORTS: &str = r#"
import base64, dkim, email, gzip, json, os, re, subprocess, sys
maildir, key = sys.argv[1], sys.argv[2]
der = subprocess.run(["openssl", "pkey", "-in", key, "-pubout", "-outform", "DER"], capture_output=True, check=True).stdout
record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
def dns(name, timeout=5):
    return record if name == b"tlsrpt._domainkey.sender.test." else None
for sub in ("new", "cur"):
    d = os.path.join(maildir, sub)
    for f in sorted(os.listdir(d)):
        raw = open(os.path.join(d, f), "rb").read()
        if b"TLS-Report-Domain" not in raw:
            continue
        crlf = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
        ok = dkim.verify(crlf, dnsfunc=dns)
        m = email.message_from_bytes(raw)
        assert m.get_content_type() == "multipart/report", m.get_content_type()
        assert m.get_param("report-type") == "tlsrpt"
        part = [p for p in m.walk() if p.get_content_type() == "application/tlsrpt+gzip"][0]
        assert part.get_filename().endswith(".json.gz"), part.get_filename()
        r = json.loads(gzip.decompress(part.get_payload(decode=True)))
        p = r["policies"][0]
        details = ",".join(d["result-type"] + "@" + d["receiving-mx-hostname"] for d in p["failure-details"])
        print("dkim=%s domain=%s header=%s type=%s ok=%d failed=%d details=%s org=%s contact=%s start=%s" % (
            ok, p["policy"]["policy-domain"], m["TLS-Report-Domain"], p["policy"]["policy-type"],
            p["summary"]["total-successful-session-count"], p["summary"]["total-failure-session-count"],
            details, r["organization-name"], r["contact-info"], r["date-range"]["start-datetime"][11:]))
"#;

/// `posternctl tls-report show` and `send`, and the reports as their
/// receiver reads them.
fn tls_reports(s: &Postern, receiver: &Postern) {
    if Command::new("python3")
        .args(["-c", "import dkim"])
        .status()
        .map_or(true, |st| !st.success())
    {
        panic!("python3 cannot import dkim: install dkimpy (pip) or python3-dkim");
    }
    let (ok, shown, err) = s.ctl(&["tls-report", "show"]);
    assert!(ok, "{err}");
    assert!(
        shown.contains("good.sts.test sts: 1 successful, 0 failed"),
        "{shown}"
    );
    assert!(
        shown.contains("badcert.sts.test sts: 0 successful, "),
        "{shown}"
    );
    assert!(shown.contains("certificate-not-trusted"), "{shown}");
    // Domains that publish no _smtp._tls are not recorded.
    assert!(!shown.contains("unlisted.sts.test"), "{shown}");
    let (ok, sent, err) = s.ctl(&["tls-report", "send"]);
    assert!(ok, "{err}");
    assert!(sent.contains("good.sts.test: report "), "{sent}");
    assert!(sent.contains("queued as"), "{sent}");
    assert!(sent.contains("testing.sts.test: report "), "{sent}");
    assert!(
        sent.contains("posted to https://mta-sts.good.sts.test:"),
        "{sent}"
    );
    let maildir = receiver.dir.path().join("mail/alice/Maildir");
    let mut lines = String::new();
    crate::harness::wait_until(WAIT, "two TLS reports delivered", || {
        lines = stdout_of(
            Command::new("python3")
                .args(["-c", READ_REPORTS])
                .arg(&maildir)
                .arg(s.dir.path().join("dkim.pem")),
            "python3 report reader",
        );
        lines.lines().count() >= 2
    });
    let good = lines
        .lines()
        .find(|l| l.contains("domain=good.sts.test"))
        .unwrap_or_else(|| panic!("no report for good.sts.test: {lines}"));
    assert!(
        good.starts_with("dkim=True domain=good.sts.test header=good.sts.test type=sts ok=1 failed=0 details= org=Sender Org contact=tlsrpt@sender.test start=00:00:00Z"),
        "{good}"
    );
    let bad = lines
        .lines()
        .find(|l| l.contains("domain=badcert.sts.test"))
        .unwrap_or_else(|| panic!("no report for badcert.sts.test: {lines}"));
    assert!(
        bad.starts_with("dkim=True domain=badcert.sts.test"),
        "{bad}"
    );
    assert!(bad.contains(" ok=0 "), "{bad}");
    assert!(
        bad.contains("details=certificate-not-trusted@mx-self.sts.test"),
        "{bad}"
    );
    // The reports' own delivery (to report.sts.test, which asks for
    // reports too) was not counted.
    let (_, shown, _) = s.ctl(&["tls-report", "show"]);
    assert!(!shown.contains("report.sts.test"), "{shown}");
}
