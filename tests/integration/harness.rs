//! Start the real postern binary on loopback with a test-made certificate
//! and config in a temp dir, and talk to it line by line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};

/// `openssl passwd -6 -salt saltsaltsaltsalt secret`
pub const ALICE_HASH: &str = "$6$saltsaltsaltsalt$ph0yGsyjzqdeFaon7.gJZo8eAG5/rj9/JdzOu1Rl7dKzBYg3xgvl7T2VQ2Rt81bc5AXkdA54r0p8QvC1omD6R1";

/// A certificate and key made for a test.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn make_cert(names: &[&str]) -> TestCert {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.self_signed(&key).unwrap();
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A CA made for a test, issuing certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    /// A CA whose subject is `CN=cn`.
    pub fn new(cn: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        TestCa {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// Its certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// (certificate PEM, key PEM) for `names`.
    pub fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_with(names, None, &[])
    }

    /// As [`TestCa::issue`], with a subject `CN=cn` and these extended key
    /// usages.
    pub fn issue_with(
        &self,
        names: &[&str],
        cn: Option<&str>,
        eku: &[rcgen::ExtendedKeyUsagePurpose],
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        p.extended_key_usages = eku.to_vec();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A temp dir with `cert.pem`, `key.pem` (mode 600) for `names` and a
/// `users` table with alice's hash: what every test config refers to.
pub fn test_dir(names: &[&str]) -> (tempfile::TempDir, TestCert) {
    let dir = tempfile::tempdir().unwrap();
    let cert = make_cert(names);
    write_mode(&dir.path().join("cert.pem"), &cert.cert_pem, 0o644);
    write_mode(&dir.path().join("key.pem"), &cert.key_pem, 0o600);
    write_mode(
        &dir.path().join("users"),
        &format!("alice {ALICE_HASH}\n"),
        0o600,
    );
    (dir, cert)
}

/// Write a file with the given mode.
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The standard test setup: three listeners like `make run`'s, plus a plain
/// one, local delivery for example.com, relay only after AUTH.
///
/// Deliveries here always defer, so tests can inspect the spool without
/// racing the delivery threads: the maildir lies under a plain file and DNS
/// goes to a port where nothing answers.
pub fn standard_config(dir: &Path) -> String {
    format!(
        r#"hostname mx.test
queue "{q}"
pki mx.test cert "{d}/cert.pem"
pki mx.test key "{d}/key.pem"
table users file:{d}/users
table locals {{ postmaster, alice, bob }}
listen on 127.0.0.1 port 0 tls pki mx.test
listen on 127.0.0.1 port 0 tls-require pki mx.test auth <users>
listen on 127.0.0.1 port 0 smtps pki mx.test auth <users>
listen on 127.0.0.1 port 0
action "local" maildir "{d}/cert.pem/%{{user}}/Maildir" users <locals>
action "out" relay
resolver 127.0.0.1:9
match from any for domain "example.com" action "local"
match auth from any for any action "out"
limit max-message-size 10K
limit auth-delay 50ms
limit workers 8
limit command-timeout 30s
"#,
        q = dir.join("queue").display(),
        d = dir.display()
    )
}

/// postern refuses to run as root without a `user` directive; tests that
/// are not about privileges say `user root` when they run as root (CI).
pub fn as_root_too(conf: String) -> String {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if root && !conf.lines().any(|l| l.starts_with("user ")) {
        conf + "user root\n"
    } else {
        conf
    }
}

/// Shared view of the daemon's stderr.
#[derive(Default)]
pub struct LogBuf {
    lines: Mutex<Vec<String>>,
    cond: Condvar,
}

pub struct Postern {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub addrs: Vec<SocketAddr>,
    pub cert: TestCert,
    pub log: Arc<LogBuf>,
    pub config: PathBuf,
}

impl Postern {
    /// Start with [`standard_config`].
    pub fn start() -> Postern {
        Self::start_with(standard_config)
    }

    /// Start with a config made from the temp dir's path.
    pub fn start_with(conf: impl FnOnce(&Path) -> String) -> Postern {
        Self::start_named(&["mx.test", "localhost"], conf)
    }

    /// Start with a certificate for `names` and a config made from the temp
    /// dir's path.
    pub fn start_named(names: &[&str], conf: impl FnOnce(&Path) -> String) -> Postern {
        let (dir, cert) = test_dir(names);
        let config = dir.path().join("postern.conf");
        std::fs::write(&config, as_root_too(conf(dir.path()))).unwrap();
        Self::spawn(dir, cert, config)
    }

    /// `kill -9`, then start again on the same spool and config.
    pub fn kill9_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (child, log) = spawn_child(&self.config);
        self.child = child;
        self.log = log;
        self.read_addrs();
    }

    fn spawn(dir: tempfile::TempDir, cert: TestCert, config: PathBuf) -> Postern {
        let (child, log) = spawn_child(&config);
        let mut p = Postern {
            child,
            dir,
            addrs: Vec::new(),
            cert,
            log,
            config,
        };
        p.read_addrs();
        p
    }

    fn read_addrs(&mut self) {
        let started = self.wait_log("postern started: listening on ", Duration::from_secs(20));
        let list = started
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split(" with ")
            .next()
            .unwrap();
        self.addrs = list.split(", ").map(|a| a.parse().unwrap()).collect();
    }

    /// Wait for a log line containing `needle`; panics with the log so far.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "no log line with {needle:?} within {limit:?}; log:\n{}",
                    lines.join("\n")
                );
            }
            lines = self.log.cond.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Listener addresses in config order: tls, tls-require, smtps, plain.
    pub fn tls(&self) -> SocketAddr {
        self.addrs[0]
    }
    pub fn submission(&self) -> SocketAddr {
        self.addrs[1]
    }
    pub fn smtps(&self) -> SocketAddr {
        self.addrs[2]
    }
    pub fn plain(&self) -> SocketAddr {
        self.addrs[3]
    }

    pub fn queue(&self) -> PathBuf {
        self.dir.path().join("queue")
    }

    /// Committed message ids.
    /// The daemon's spool, read with the library's own layout.
    fn spool(&self) -> postern::spool::Spool {
        postern::spool::Spool::open(&self.queue()).unwrap()
    }

    pub fn queued_ids(&self) -> Vec<String> {
        self.spool().list().unwrap()
    }

    /// A queued message's body: what a delivery sends.
    pub fn body(&self, id: &str) -> Vec<u8> {
        postern::spool::read_body(&self.spool().body_path(id)).unwrap()
    }

    /// A queued message's current envelope, as text.
    pub fn envelope(&self, id: &str) -> String {
        self.spool().envelope(id).unwrap().to_text()
    }

    /// Files under `QUEUE/sub`, its bucket directories included.
    pub fn files_in(&self, sub: &str) -> usize {
        spool_files(&self.queue().join(sub)).len()
    }

    /// posternctl on the daemon's socket (tests that break the config file
    /// on purpose must not lose the way to the daemon): success, stdout,
    /// stderr.
    pub fn ctl(&self, args: &[&str]) -> (bool, String, String) {
        let (out, stdout, stderr) =
            self.run_posternctl("-s", &self.queue().join("postern.sock"), args);
        (out.status.success(), stdout, stderr)
    }

    /// posternctl with `-f` this daemon's configuration (commands that
    /// read it, such as tls-check): exit code, stdout, stderr.
    pub fn posternctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let (out, stdout, stderr) = self.run_posternctl("-f", &self.config, args);
        (out.status.code(), stdout, stderr)
    }

    fn run_posternctl(
        &self,
        flag: &str,
        path: &Path,
        args: &[&str],
    ) -> (std::process::Output, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_posternctl"))
            .arg(flag)
            .arg(path)
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        );
        (out, stdout, stderr)
    }

    /// The test CA as PEM path, for clients that verify.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Wait for exit within `limit`; returns the exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "postern did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Postern {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_child(config: &Path) -> (Child, Arc<LogBuf>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["-d", "-v", "-f"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start postern");
    let log = Arc::new(LogBuf::default());
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lines.lock().unwrap();
            l.push(line);
            sink.cond.notify_all();
        }
    });
    (child, log)
}

/// A client-side TLS config trusting only `cert`.
pub fn client_tls(
    cert: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    None,
}

impl Read for Io {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(b),
            Io::Tls(s) => s.read(b),
            Io::None => unreachable!(),
        }
    }
}
impl Write for Io {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(b),
            Io::Tls(s) => s.write(b),
            Io::None => unreachable!(),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
            Io::None => unreachable!(),
        }
    }
}

/// A line-level SMTP client (maddy's tests/conn.go): after STARTTLS it
/// starts a new reader, so nothing read before the upgrade leaks into TLS.
pub struct Conn {
    io: Io,
    buf: Vec<u8>,
    cert: CertificateDer<'static>,
}

impl Conn {
    pub fn connect(addr: SocketAddr, cert: &CertificateDer<'static>) -> Conn {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        Self::from_tcp(s, cert)
    }

    /// A client on a socket connected already (from a chosen address).
    pub fn from_tcp(s: TcpStream, cert: &CertificateDer<'static>) -> Conn {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            io: Io::Plain(s),
            buf: Vec::new(),
            cert: cert.clone(),
        }
    }

    /// Connect, read the greeting and say EHLO: a plaintext session ready
    /// for MAIL or STARTTLS.
    pub fn open(addr: SocketAddr, cert: &CertificateDer<'static>) -> Conn {
        let mut c = Self::connect(addr, cert);
        c.expect("220");
        c.ehlo();
        c
    }

    /// Connect to an smtps port: handshake first.
    pub fn connect_tls(addr: SocketAddr, cert: &CertificateDer<'static>) -> Conn {
        let mut c = Self::connect(addr, cert);
        c.tls("mx.test").unwrap();
        c
    }

    pub fn tls(&mut self, name: &str) -> std::io::Result<()> {
        assert!(
            self.buf.is_empty(),
            "unread bytes before TLS: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::None) else {
            panic!("already TLS")
        };
        let cfg = client_tls(
            &self.cert,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        );
        let conn =
            rustls::ClientConnection::new(cfg, ServerName::try_from(name.to_string()).unwrap())
                .unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        self.io = Io::Tls(Box::new(s));
        Ok(())
    }

    pub fn tls_info(&self) -> Option<(rustls::ProtocolVersion, Vec<u8>)> {
        match &self.io {
            Io::Tls(s) => Some((
                s.conn.protocol_version()?,
                s.conn.peer_certificates()?.first()?.to_vec(),
            )),
            _ => None,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).unwrap();
        self.io.flush().unwrap();
    }

    pub fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes());
    }

    /// Read one whole (possibly multi-line) reply; None on EOF.
    pub fn reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.line()?;
            let done = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if done {
                return Some(lines.join("\n"));
            }
        }
    }

    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = self.buf.drain(..=i).collect();
                assert!(l.ends_with(b"\r\n"), "reply line without CRLF: {l:?}");
                return Some(String::from_utf8_lossy(&l[..l.len() - 2]).into_owned());
            }
            let mut b = [0u8; 4096];
            match self.io.read(&mut b) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&b[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
                // A signal to the test process (a child exiting) is not an
                // answer from the server: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Read a reply and check it starts with `prefix`; returns it.
    pub fn expect(&mut self, prefix: &str) -> String {
        let r = self
            .reply()
            .unwrap_or_else(|| panic!("connection closed, wanted {prefix:?}"));
        assert!(r.starts_with(prefix), "got {r:?}, want {prefix:?}");
        r
    }

    pub fn cmd(&mut self, line: &str, prefix: &str) -> String {
        self.send(line);
        self.expect(prefix)
    }

    /// True when the server has closed the connection.
    pub fn closed(&mut self) -> bool {
        self.reply().is_none()
    }

    pub fn ehlo(&mut self) -> String {
        self.cmd("EHLO client.test", "250")
    }

    pub fn starttls(&mut self) {
        self.cmd("STARTTLS", "220 2.0.0");
        self.tls("mx.test").unwrap();
    }

    /// Read the greeting, EHLO, STARTTLS, EHLO again: a session ready for
    /// AUTH or MAIL inside TLS.
    pub fn secure(mut self) -> Conn {
        self.expect("220");
        self.ehlo();
        self.starttls();
        self.ehlo();
        self
    }

    /// MAIL, RCPTs, DATA, the message (CRLF, dot-stuffed by the caller)
    /// and the final dot; the queue id from the 250.
    pub fn send_message(&mut self, from: &str, to: &[&str], body: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250");
        for t in to {
            self.cmd(&format!("RCPT TO:<{t}>"), "250");
        }
        self.cmd("DATA", "354");
        self.send_raw(body.as_bytes());
        let r = self.cmd(".", "250 2.0.0 Ok: queued as ");
        r.rsplit(' ').next().unwrap_or_default().to_string()
    }

    pub fn auth_alice(&mut self) {
        // base64("\0alice\0secret")
        self.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "235 2.7.0");
    }
}

/// Fail with a clear message when a peer program is missing.
pub fn need(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{program} is not installed: apt-get install -y {package} (.ci/run does this)"
    );
}

/// dnsmasq on a loopback port, authoritative for `.test`.
pub struct Dns {
    child: Child,
    pub port: u16,
}

/// The records every delivery test can use.
pub const TEST_ZONE: &[&str] = &[
    "--mx-host=example.test,mx1.example.test,10",
    "--host-record=mx1.example.test,127.0.0.2",
    "--mx-host=backup.test,dead.backup.test,10",
    "--mx-host=backup.test,mx1.example.test,20",
    "--host-record=dead.backup.test,127.0.0.5",
    "--mx-host=nullmx.test,.,0",
    "--host-record=implicit.test,127.0.0.2",
    "--mx-host=sender.test,mx.sender.test,10",
    "--host-record=mx.sender.test,127.0.0.1",
    // Outside local=/test/ and with no upstream: dnsmasq answers the A
    // record and REFUSED for AAAA, as broken nameservers do.
    "--mx-host=refused.test,mx.refused.example,10",
    "--address=/mx.refused.example/127.0.0.2",
];

impl Dns {
    pub fn start() -> Dns {
        need("dnsmasq", "dnsmasq-base");
        // Bounded: a few tries in case another test took the port first.
        for _ in 0..10 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("dnsmasq")
                .args([
                    "--no-daemon",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    "--no-resolv",
                    "--no-hosts",
                ])
                .args([
                    "--pid-file=",
                    "--user=root",
                    "--local=/test/",
                    "--log-facility=-",
                ])
                .arg(format!("--port={port}"))
                .args(TEST_ZONE)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start dnsmasq");
            std::thread::sleep(Duration::from_millis(200));
            if child.try_wait().unwrap().is_none() {
                return Dns { child, port };
            }
        }
        panic!("dnsmasq would not start");
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection to `to` from the local address `src` (127.0.0.1 is
/// exempt from per-address limits; tests of them use other loopback
/// addresses).
pub fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&format!("{src}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A TCP port on 127.0.0.1 that was free just now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run `cmd`; its standard output, after asserting that it exited 0 (the
/// failure names `what` and shows its standard error).
pub fn stdout_of(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `cond` every 50 ms for up to `limit`; panics with `what`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file below `dir` (the spool keeps messages in bucket directories).
pub fn spool_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    // Bounded by the tree: the spool is two levels deep.
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files in a Maildir's new/ (empty when the Maildir does not exist).
pub fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("new"))
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Send one message over plain SMTP and return its queue id.
pub fn submit(addr: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let cert = make_cert(&["unused.test"]);
    let mut c = Conn::open(addr, &cert.der);
    let id = c.send_message(from, to, body);
    c.cmd("QUIT", "221");
    id
}
