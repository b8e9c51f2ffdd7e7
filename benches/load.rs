//! `make bench`: a closed-loop SMTP load generator against a real postern,
//! and the machine's own ceilings, written to `bench/RESULTS.md`.
//!
//! Every connection makes a full TLS 1.3 handshake (no resumption; row (k)
//! resumes, as real senders do), ECDSA P-256, 4 KiB messages unless a row
//! says otherwise; every 250 is flushed to disk first (postern(8) DURABILITY).
//! The queue is held (`limit delivery-workers 0`) so the inbound figures
//! are inbound only. Each row runs again, in the same run, against a
//! private Postfix that holds what it receives (`../shared/peers/postfix.sh`,
//! where Postfix is installed and the bench runs as root), and the table
//! gives both servers' rate and CPU per message side by side. Loopback
//! only; every run is bounded in time.

mod common;

use common::{free_port, postfix, wait_port, write};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern::tls::client::AnyCertificate;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const RUN: Duration = Duration::from_secs(5);

struct Daemon {
    child: Child,
    plain: SocketAddr,
    tls: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// postern with the bench config; `rules` go before the catch-all relay
/// rule, `limits` after the default limits.
///
/// Each daemon gets a queue of its own, left in place until the bench ends:
/// deleting tens of thousands of files between rows would make the next
/// row's file creations scan past them (ext4 without a journal), and the
/// bench would measure its own clean-up.
fn start(dir: &Path, rules: &str, limits: &str) -> Daemon {
    start_traced(dir, rules, limits, None)
}

/// As [`start`]; with `trace`, under `strace -f -c -o TRACE` (row m).
fn start_traced(dir: &Path, rules: &str, limits: &str, trace: Option<&Path>) -> Daemon {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let (pp, tp) = (free_port(), free_port());
    let d = dir.display();
    let mut conf = format!(
        "hostname mx.bench\nqueue \"{d}/queue{n}\"\npki mx.bench cert \"{d}/cert.pem\"\npki mx.bench key \"{d}/key.pem\"\n\
         listen on 127.0.0.1 port {pp}\nlisten on 127.0.0.1 port {tp} tls\n\
         {rules}action \"out\" relay\nmatch from any for any action \"out\"\n\
         limit delivery-workers 0\nlimit workers 600\nlimit sessions 600\nlimit sessions-per-ip 600\n\
         limit max-recipients 1000\n{limits}"
    );
    if nix::unistd::Uid::effective().is_root() {
        conf.push_str("user root\n");
    }
    write(&dir.join("postern.conf"), &conf, 0o644);
    let mut cmd = match trace {
        Some(out) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-c", "-o"])
                .arg(out)
                .arg(env!("CARGO_BIN_EXE_postern"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_postern")),
    };
    let child = cmd
        .args(["-d", "-f"])
        .arg(dir.join("postern.conf"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        plain: format!("127.0.0.1:{pp}").parse().unwrap(),
        tls: format!("127.0.0.1:{tp}").parse().unwrap(),
    };
    wait_port(d.plain);
    wait_port(d.tls);
    d
}

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    /// Only during the upgrade.
    Moving,
}

impl Io {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Io::Plain(s) => s,
            Io::Tls(s) => s.as_mut(),
            Io::Moving => unreachable!("used during the TLS upgrade"),
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

struct Client {
    io: Io,
    buf: Vec<u8>,
}

impl Client {
    /// Read one reply; its code.
    fn reply(&mut self) -> Option<u16> {
        let mut chunk = [0u8; 4096];
        // Bounded by the socket timeout.
        loop {
            if let Ok(Some((r, n))) = postern::smtp::response::parse(&self.buf) {
                self.buf.drain(..n);
                return Some(r.code);
            }
            let n = self.io.io().read(&mut chunk).ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
    fn send(&mut self, b: &[u8]) -> Option<()> {
        self.io.io().write_all(b).ok()?;
        self.io.io().flush().ok()
    }
}

fn client_tls(cert: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    client_tls_with(cert, false)
}

/// As [`client_tls`], with TLS session resumption as real senders use it
/// (rustls's in-memory session cache, shared by every client thread).
fn client_tls_with(cert: &CertificateDer<'static>, resume: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Full handshakes only, as in the anchor measurements, unless asked.
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(c)
}

fn connect(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Option<Client> {
    let s = TcpStream::connect(addr).ok()?;
    s.set_nodelay(true).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut c = Client {
        io: Io::Plain(s),
        buf: Vec::new(),
    };
    (c.reply()? == 220).then_some(())?;
    c.send(b"EHLO load.bench\r\n")?;
    (c.reply()? == 250).then_some(())?;
    if let Some(cfg) = tls {
        c.send(b"STARTTLS\r\n")?;
        (c.reply()? == 220).then_some(())?;
        let Io::Plain(tcp) = std::mem::replace(&mut c.io, Io::Moving) else {
            return None;
        };
        let conn =
            rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("mx.bench").ok()?)
                .ok()?;
        let mut t = rustls::StreamOwned::new(conn, tcp);
        while t.conn.is_handshaking() {
            t.conn.complete_io(&mut t.sock).ok()?;
        }
        c.io = Io::Tls(Box::new(t));
        c.send(b"EHLO load.bench\r\n")?;
        (c.reply()? == 250).then_some(())?;
    }
    Some(c)
}

/// One message: MAIL, RCPT and DATA pipelined, then the body; the latency
/// from the first byte to the final 250.
fn message(c: &mut Client, body: &[u8]) -> Option<Duration> {
    let t0 = Instant::now();
    c.send(b"MAIL FROM:<load@bench.test>\r\nRCPT TO:<sink@far.test>\r\nDATA\r\n")?;
    for want in [250, 250, 354] {
        (c.reply()? == want).then_some(())?;
    }
    c.send(body)?;
    (c.reply()? == 250).then_some(t0.elapsed())
}

struct Figure {
    name: String,
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// The server's CPU (user + system) per message.
    cpu_per_msg: Duration,
    /// The load generator's own (this process's) CPU per message: it
    /// shares the machine with the server.
    load_cpu_per_msg: Duration,
    /// The whole machine over the row: busy share of all cores, and the
    /// share the hypervisor took (steal).
    busy: f64,
    steal: f64,
    /// The same load against Postfix, in the same run.
    postfix: Option<Box<Figure>>,
}

impl Figure {
    /// Rate, p50, p99, CPU per message and share of the commit ceiling, as
    /// printed on the terminal and in RESULTS.md.
    fn cells(&self, ceiling: f64) -> [String; 5] {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        [
            format!("{:.0}", self.rate),
            ms(self.p50),
            ms(self.p99),
            format!("{:.2} ms", self.cpu_per_msg.as_secs_f64() * 1000.0),
            format!("{:.0}%", self.rate * 100.0 / ceiling),
        ]
    }

    /// The load generator's CPU per message and how busy the machine was.
    fn machine_cells(&self) -> [String; 2] {
        [
            format!("{:.2} ms", self.load_cpu_per_msg.as_secs_f64() * 1000.0),
            format!(
                "{:.0}% ({:.0}% steal)",
                self.busy * 100.0,
                self.steal * 100.0
            ),
        ]
    }

    /// Postfix's rate and CPU per message, and postern's rate over
    /// Postfix's and Postfix's CPU over postern's; dashes without Postfix.
    fn versus(&self) -> [String; 4] {
        match &self.postfix {
            Some(pf) => [
                format!("{:.0}", pf.rate),
                format!("{:.2} ms", pf.cpu_per_msg.as_secs_f64() * 1000.0),
                format!("{:.1}x", self.rate / pf.rate.max(0.001)),
                format!(
                    "{:.1}x",
                    pf.cpu_per_msg.as_secs_f64() / self.cpu_per_msg.as_secs_f64().max(1e-9)
                ),
            ],
            None => ["-".into(), "-".into(), "-".into(), "-".into()],
        }
    }
}

/// The client configuration toward Postfix: as [`client_tls_with`], with
/// postern's opportunistic verifier in place of the root store, since
/// postfix.sh's certificate is self-signed with CA:TRUE, which WebPKI
/// refuses as a server's own. Client-side work only: it is in neither
/// server's CPU figure.
fn postfix_tls(resume: bool) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    if !resume {
        c.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(c)
}

/// A private Postfix (`postfix.sh`, relay mode) that accepts everything
/// from loopback and holds it, as postern's bench configuration holds its
/// queue: both sides receive, fsync and answer 250, and deliver nothing.
/// `in_flow_delay = 0`, so Postfix does not pace its clients.
struct Postfix {
    base: std::path::PathBuf,
    addr: SocketAddr,
    master: u32,
}

impl Postfix {
    fn start(parent: &Path) -> Result<Postfix, String> {
        if let Some(why) = postfix::unavailable() {
            return Err(why);
        }
        let base = postfix::base_in(parent, "postern-load");
        let port = postfix::port_from(10300);
        let b = base.join("hold");
        postfix::postfix_sh(
            &[("HOLD", "1"), ("IN_FLOW_DELAY", "0"), ("PROCS", "300")],
            &[
                "start",
                &b.display().to_string(),
                &port.to_string(),
                "relay",
                // Never used: every message is held.
                "127.0.0.1:10999",
            ],
        )?;
        Ok(Postfix {
            master: postfix::master_pid(&b),
            base,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        })
    }

    /// CPU used so far by the master and every process under it.
    fn cpu(&self) -> Duration {
        Duration::from_secs_f64(postfix::tree_cpu_ms(self.master) / 1000.0)
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let b = self.base.join("hold");
        let _ = postfix::postfix_sh(&[], &["stop", &b.display().to_string()]);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// CPU time a process has used so far.
fn process_cpu(pid: u32) -> Duration {
    // utime + stime, in clock ticks of 10 ms on Linux.
    let ticks = common::proc_stat(pid).unwrap_or_default().own();
    Duration::from_millis(ticks * 10)
}

/// Jiffies of all cores since boot (/proc/stat, proc(5)): busy (neither
/// idle nor waiting for I/O), stolen by the hypervisor, and all.
fn machine_jiffies() -> [u64; 3] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal; guest time is
    // already inside user.
    let total: u64 = (0..8).map(at).sum();
    [total - at(3) - at(4) - at(7), at(7), total]
}

fn body(size: usize) -> Vec<u8> {
    let mut b = b"Subject: load\r\n\r\n".to_vec();
    let line = format!("{}\r\n", "z".repeat(76));
    while b.len() < size {
        b.extend_from_slice(line.as_bytes());
    }
    b.extend_from_slice(b".\r\n");
    b
}

fn load(
    name: &str,
    cpu_time: &dyn Fn() -> Duration,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    clients: usize,
    per_conn: usize,
    size: usize,
) -> Figure {
    let cpu0 = cpu_time();
    let me = std::process::id();
    let (load0, machine0) = (process_cpu(me), machine_jiffies());
    let stop = Arc::new(AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let body = Arc::new(body(size));
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, lat, body, tls) = (stop.clone(), lat.clone(), body.clone(), tls.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                // Bounded by the stop flag (RUN) and a hard count.
                'conns: while !stop.load(Ordering::Relaxed) && mine.len() < 10_000_000 {
                    let Some(mut c) = connect(addr, tls.as_ref()) else {
                        continue;
                    };
                    for _ in 0..per_conn {
                        match message(&mut c, &body) {
                            Some(d) => mine.push(d),
                            None => continue 'conns,
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    let _ = c.send(b"QUIT\r\n");
                }
                lat.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = t0.elapsed();
    let mut l = lat.lock().unwrap().clone();
    l.sort();
    let pick = |q: f64| {
        l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let cpu = cpu_time().saturating_sub(cpu0);
    let load_cpu = process_cpu(me).saturating_sub(load0);
    let machine1 = machine_jiffies();
    let [busy, steal, total] =
        std::array::from_fn(|i| machine1[i].saturating_sub(machine0[i]) as f64);
    let n = l.len().max(1) as u32;
    Figure {
        name: name.to_string(),
        rate: l.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
        cpu_per_msg: cpu / n,
        load_cpu_per_msg: load_cpu / n,
        busy: busy / total.max(1.0),
        steal: steal / total.max(1.0),
        postfix: None,
    }
}

/// `clients` sessions over STARTTLS, each sending `per` messages and
/// QUIT, all at once; the messages acknowledged.
fn fixed(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>, clients: usize, per: usize) -> usize {
    let body = Arc::new(body(4096));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (cfg, body) = (cfg.clone(), body.clone());
            std::thread::spawn(move || {
                let Some(mut c) = connect(addr, Some(&cfg)) else {
                    return 0;
                };
                let sent = (0..per)
                    .take_while(|_| message(&mut c, &body).is_some())
                    .count();
                let _ = c.send(b"QUIT\r\n");
                let _ = c.reply();
                sent
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap_or(0)).sum()
}

/// Calls per system call in an `strace -c` summary.
fn strace_counts(summary: &str) -> std::collections::BTreeMap<String, u64> {
    summary
        .lines()
        .filter_map(|l| {
            // % time, seconds, usecs/call, calls, [errors,] syscall
            let t: Vec<&str> = l.split_whitespace().collect();
            t.first()?.parse::<f64>().ok()?;
            Some((t.last()?.to_string(), t.get(3)?.parse().ok()?))
        })
        .collect()
}

/// Row (m): the system calls of one message, counted by `strace -f -c`
/// over 10 STARTTLS sessions of 100 messages each, less the same 10
/// sessions sending none (so start-up and the sessions' own calls are not
/// counted); the calls with at least 0.05 per message, most first, and
/// "total".
fn syscalls_per_message(
    dir: &Path,
    cfg: &Arc<rustls::ClientConfig>,
    limits: &str,
) -> Result<Vec<(String, f64)>, String> {
    const PER: usize = 100;
    const CLIENTS: usize = 10;
    let run = |per: usize| -> Result<std::collections::BTreeMap<String, u64>, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let out = dir.join(format!("strace{}", N.fetch_add(1, Ordering::Relaxed)));
        let mut d = start_traced(dir, "", limits, Some(&out));
        let sent = fixed(d.tls, cfg, CLIENTS, per);
        // strace writes its summary when postern, its child, has exited.
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.child.id()))
            .unwrap_or_default();
        let postern: i32 = kids
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("no postern under strace")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(postern),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| format!("SIGTERM postern: {e}"))?;
        let t0 = Instant::now();
        while d.child.try_wait().ok().flatten().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                return Err("postern under strace did not stop within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if sent != CLIENTS * per {
            return Err(format!("{sent} of {} messages acknowledged", CLIENTS * per));
        }
        let summary =
            std::fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(strace_counts(&summary))
    };
    let (idle, busy) = (run(0)?, run(PER)?);
    let n = (CLIENTS * PER) as f64;
    let mut per: Vec<(String, f64)> = busy
        .iter()
        .map(|(name, &c)| {
            let less = idle.get(name).copied().unwrap_or(0);
            (name.clone(), c.saturating_sub(less) as f64 / n)
        })
        .filter(|(name, c)| *c >= 0.05 || name == "total")
        .collect();
    per.sort_by(|a, b| {
        (a.0 == "total")
            .cmp(&(b.0 == "total"))
            .then(b.1.total_cmp(&a.1))
    });
    Ok(per)
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 500 TLS sessions that stay idle after EHLO; postern's RSS then.
fn idle_sessions(d: &Daemon, cfg: &Arc<rustls::ClientConfig>) -> (usize, u64, u64) {
    let mut held = Vec::new();
    for _ in 0..500 {
        if let Some(c) = connect(d.tls, Some(cfg)) {
            held.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = rss_kib(d.child.id());
    (held.len(), rss, hwm)
}

/// The disk's durable-commit ceiling: write 4 KiB, fsync, rename, fsync
/// the directory, as the spool does for one file.
fn fsync_ceiling(dir: &Path, threads: usize) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let _ = std::fs::create_dir_all(dir);
    let t0 = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, count, dir) = (stop.clone(), count.clone(), dir.to_path_buf());
            std::thread::spawn(move || {
                let data = vec![b'x'; 4096];
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let tmp = dir.join(format!("{t}.{i}.tmp"));
                    let fin = dir.join(format!("{t}.{i}"));
                    let mut f = std::fs::File::create(&tmp).unwrap();
                    f.write_all(&data).unwrap();
                    f.sync_all().unwrap();
                    std::fs::rename(&tmp, &fin).unwrap();
                    std::fs::File::open(&dir).unwrap().sync_all().unwrap();
                    // Kept, as a held queue keeps its messages: a removal
                    // here would make every later creation in the same
                    // block group slower on a no-journal ext4, and the
                    // ceiling would measure that instead of a commit.
                    i += 1;
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

/// Server-side TLS 1.3 full handshakes per second on one core, in memory.
fn handshake_ceiling(cert: &CertificateDer<'static>, key: &PrivateKeyDer<'static>) -> f64 {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.clone_key())
        .unwrap();
    server.send_tls13_tickets = 0;
    let server = Arc::new(server);
    let client = client_tls(cert);
    let mut server_time = Duration::ZERO;
    let mut n = 0u32;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let mut c = rustls::ClientConnection::new(
            client.clone(),
            ServerName::try_from("mx.bench").unwrap(),
        )
        .unwrap();
        let mut s = rustls::ServerConnection::new(server.clone()).unwrap();
        // Bounded: a TLS 1.3 handshake takes a few flights.
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            let st = Instant::now();
            s.read_tls(&mut &buf[..]).unwrap();
            s.process_new_packets().unwrap();
            let mut back = Vec::new();
            s.write_tls(&mut back).unwrap();
            server_time += st.elapsed();
            c.read_tls(&mut &back[..]).unwrap();
            c.process_new_packets().unwrap();
        }
        n += 1;
    }
    n as f64 / server_time.as_secs_f64()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} memory")
}

/// KiB of freed memory this (virtual) machine has handed back to its
/// hypervisor since it started, where the kernel does free page reporting
/// and says how much.
fn reported_kib() -> Option<u64> {
    std::fs::read_to_string("/sys/module/page_reporting/parameters/reported_kib")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn main() {
    common::check_proc_stat();
    let scratch = common::Scratch::new("16G");
    let d = scratch.path();
    println!("spools on {}", scratch.what());
    let (cert, key) = common::self_signed(d, "mx.bench");
    let der = cert.der().clone();
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let cfg = client_tls(&der);
    let resuming = client_tls_with(&der, true);

    let fsync1 = fsync_ceiling(&d.join("fsync1"), 1);
    let fsync16 = fsync_ceiling(&d.join("fsync16"), 16);
    let hs = handshake_ceiling(&der, &key_der);
    println!(
        "ceiling: durable commits {fsync1:.0}/s (1 thread), {fsync16:.0}/s (16 threads); server TLS 1.3 handshakes {hs:.0}/s (1 core)"
    );

    let daemon = start(d, "", "");
    // Rows (l): the same spool committing with one shared syncfs(2) per
    // batch instead of one fsync per file (postern(8) DURABILITY).
    let grouped = start(d, "", "limit queue-sync filesystem\n");
    // Rows (n): one fsync per message file, as before the commit log
    // became the default (postern(8) DURABILITY).
    let per_file = start(d, "", "limit queue-sync file\n");
    let postfix = Postfix::start(d);
    if let Err(why) = &postfix {
        println!("Postfix rows skipped: {why}");
    }
    let mut figures = Vec::new();
    for (name, tls, clients, per, size) in [
        ("(a) STARTTLS, 1 msg/conn, 1 client", true, 1, 1, 4096),
        (
            "(k) STARTTLS with session resumption, 1 msg/conn, 16 clients",
            true,
            16,
            1,
            4096,
        ),
        ("(a) STARTTLS, 1 msg/conn, 16 clients", true, 16, 1, 4096),
        ("(a) STARTTLS, 1 msg/conn, 128 clients", true, 128, 1, 4096),
        (
            "(b) STARTTLS, 100 msgs/conn, 16 clients",
            true,
            16,
            100,
            4096,
        ),
        (
            "(c) plaintext, 100 msgs/conn, 16 clients",
            false,
            16,
            100,
            4096,
        ),
        (
            "(d) 100 KiB, STARTTLS, 100 msgs/conn, 16 clients",
            true,
            16,
            100,
            100 * 1024,
        ),
        (
            "(l) STARTTLS, 1 msg/conn, 16 clients, queue-sync filesystem",
            true,
            16,
            1,
            4096,
        ),
        (
            "(l) STARTTLS, 100 msgs/conn, 16 clients, queue-sync filesystem",
            true,
            16,
            100,
            4096,
        ),
        (
            "(l) plaintext, 100 msgs/conn, 16 clients, queue-sync filesystem",
            false,
            16,
            100,
            4096,
        ),
        (
            "(n) STARTTLS, 1 msg/conn, 16 clients, queue-sync file",
            true,
            16,
            1,
            4096,
        ),
        (
            "(n) STARTTLS, 100 msgs/conn, 16 clients, queue-sync file",
            true,
            16,
            100,
            4096,
        ),
        (
            "(n) plaintext, 100 msgs/conn, 16 clients, queue-sync file",
            false,
            16,
            100,
            4096,
        ),
    ] {
        // BENCH_ONLY=text runs only the rows whose name has it, to profile one.
        if std::env::var("BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
            continue;
        }
        let daemon = if name.contains("queue-sync filesystem") {
            &grouped
        } else if name.contains("queue-sync file") {
            &per_file
        } else {
            &daemon
        };
        let addr = if tls { daemon.tls } else { daemon.plain };
        let client = if name.contains("resumption") {
            &resuming
        } else {
            &cfg
        };
        let pid = daemon.child.id();
        let mut f = load(
            name,
            &|| process_cpu(pid),
            addr,
            tls.then(|| client.clone()),
            clients,
            per,
            size,
        );
        let [rate, p50, p99, cpu, share] = f.cells(fsync16);
        let [load_cpu, busy] = f.machine_cells();
        println!(
            "{}: {rate} msgs/s, p50 {p50}, p99 {p99}, postern CPU {cpu}/msg ({share} of the 16-thread commit ceiling); \
             load generator CPU {load_cpu}/msg, machine {busy} busy",
            f.name
        );
        if let Ok(pf) = &postfix {
            let theirs = load(
                name,
                &|| pf.cpu(),
                pf.addr,
                tls.then(|| postfix_tls(name.contains("resumption"))),
                clients,
                per,
                size,
            );
            let [load_cpu, busy] = theirs.machine_cells();
            f.postfix = Some(Box::new(theirs));
            let [rate, cpu, faster, less] = f.versus();
            println!(
                "    Postfix: {rate} msgs/s, CPU {cpu}/msg: postern {faster} the rate at {less} less CPU per message; \
                 load generator CPU {load_cpu}/msg, machine {busy} busy"
            );
        }
        figures.push(f);
    }
    drop(daemon);
    drop(grouped);
    let postfix_note = match &postfix {
        Ok(_) => "The Postfix columns: the same load in the same run against a private Postfix \
                  (`../shared/peers/postfix.sh`, relay mode holding every message, `in_flow_delay = 0`, \
                  its CPU summed over the master and every process under it)."
            .to_string(),
        Err(why) => format!("Postfix columns skipped: {why}."),
    };
    drop(postfix);

    // A relay: the same load while 4 delivery threads write each message to
    // a Maildir and free its spool file, which the next message reuses.
    let daemon = start(
        d,
        &format!(
            "action \"local\" maildir \"{}/mail/%{{user}}\"\nmatch from any for domain \"far.test\" action \"local\"\n",
            d.display()
        ),
        "limit delivery-workers 4\n",
    );
    let name = "(h) relay: STARTTLS, 100 msgs/conn, 16 clients, delivered to Maildir meanwhile";
    let pid = daemon.child.id();
    let f = load(
        name,
        &|| process_cpu(pid),
        daemon.tls,
        Some(cfg.clone()),
        16,
        100,
        4096,
    );
    let delivered = std::fs::read_dir(d.join("mail/sink/new"))
        .map(|r| r.count())
        .unwrap_or(0);
    let [rate, p50, p99, cpu, share] = f.cells(fsync16);
    let relay = format!(
        "{}: {rate} msgs/s accepted, p50 {p50}, p99 {p99}, postern CPU {cpu}/msg ({share} of the 16-thread commit ceiling); \
         {delivered} delivered to the Maildir during the {}s ({:.0}/s)",
        f.name,
        RUN.as_secs(),
        delivered as f64 / RUN.as_secs_f64()
    );
    println!("{relay}");
    drop(daemon);

    // Row (m): what a message costs in system calls, in each commit mode.
    let syscalls: Vec<String> = if common::run_ok("strace", &["-V"]).is_err() {
        vec!["(m) system calls per message: skipped, strace is not installed".into()]
    } else {
        [
            ("log", ""),
            ("file", "limit queue-sync file\n"),
            ("filesystem", "limit queue-sync filesystem\n"),
        ]
            .iter()
            .map(|(mode, limits)| {
                let what = match syscalls_per_message(d, &cfg, limits) {
                    Ok(calls) => calls
                        .iter()
                        .map(|(name, c)| format!("{name} {c:.2}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Err(e) => format!("failed: {e}"),
                };
                format!(
                    "(m) system calls per message, queue-sync {mode} (`strace -f -c` over 10 STARTTLS sessions \
                     of 100 4 KiB messages, less the same sessions without messages): {what}"
                )
            })
            .collect()
    };
    for l in &syscalls {
        println!("{l}");
    }

    let daemon = start(d, "", "");
    let (held, rss, hwm) = idle_sessions(&daemon, &cfg);
    println!(
        "(e) {held} idle TLS sessions: postern RSS {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(daemon);

    let syscall_lines = syscalls.join(".\n\n");
    let now = postern::time::rfc5322(postern::time::unix_now());
    // A page handed back is faulted in again by the host when the guest
    // next uses it: a new file's page cache is written into such pages,
    // which perf shows as a slow copy in write(2).
    let reporting = match reported_kib() {
        Some(kib) => format!(
            "; a virtual machine that hands freed memory back to its hypervisor (free page \
             reporting: {} GiB since it started), so a page the kernel gives out anew, such as \
             a new file's page cache, is first faulted in on the host",
            kib >> 20
        ),
        None => String::new(),
    };
    let mut md = format!(
        "# postern benchmark results\n\nMade by `make bench` on {now}.\n\nMachine: {}{reporting}.\n\n\
         Closed-loop clients on loopback, full TLS 1.3 handshakes (no resumption, except row k), ECDSA P-256, \
         4 KiB messages unless the row says otherwise; every 250 flushed to disk first: by the commit log's fdatasync (the default, queue-sync log), or as the row's queue-sync says (file: an fsync per message file; filesystem: a shared syncfs). {}s per row. Spools (both servers') on {}. \
         {postfix_note}\n\n\
         | workload | msgs/s | p50 | p99 | postern CPU/msg | of commit ceiling | load generator CPU/msg | machine busy | Postfix msgs/s | Postfix CPU/msg | postern rate / Postfix rate | Postfix CPU / postern CPU |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        machine(),
        RUN.as_secs(),
        scratch.what()
    );
    for f in &figures {
        let [rate, p50, p99, cpu, share] = f.cells(fsync16);
        let [prate, pcpu, faster, less] = f.versus();
        let [load_cpu, busy] = f.machine_cells();
        md.push_str(&format!(
            "| {} | {rate} | {p50} | {p99} | {cpu} | {share} | {load_cpu} | {busy} | {prate} | {pcpu} | {faster} | {less} |\n",
            f.name
        ));
    }
    md.push_str(&format!(
        "\n(e) {held} idle TLS sessions: RSS {:.1} MiB, peak {:.1} MiB.\n\n\
         (f) outbound: see the `delivery:` line of `make bench`.\n\n\
         (j) outbound vs Postfix: see the `versus postfix:` line of `make bench`.\n\n\
         {relay}.\n\n\
         (i) spool steady state: see the `spool` line of `make bench`.\n\n\
         {syscall_lines}.\n\n\
         (g) ceilings: {fsync1:.0} durable commits/s from 1 thread, {fsync16:.0}/s from 16 threads \
         (write 4 KiB + fsync + rename + directory fsync); {hs:.0} server-side TLS 1.3 handshakes/s on one core.\n",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    ));
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let _ = std::fs::create_dir_all(out.parent().unwrap());
    std::fs::write(&out, md).unwrap();
    println!("written to {}", out.display());
}
