//! `make stress`: the slow hardening runs (ignored by `cargo test`).
//!
//! - crash safety: `kill -9` at random moments under STARTTLS load, 20
//!   times; every acknowledged message delivered exactly once;
//! - power loss: a loop-mounted ext4 shut down without flushing under
//!   load, in each queue-sync mode; every acknowledged message delivered
//!   exactly once after the remount;
//! - a full disk: 452 4.3.1, nothing half-written, recovery;
//! - testssl.sh against the STARTTLS port.
//!
//! Each prints its figures; loopback only, bounded in count and time.

#[path = "../integration/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Conn, Postern, maildir_files, need, standard_config, wait_until};

/// xorshift: the kill times need not be cryptographic, only varied.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        Rng(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn fixed_port_config(dir: &Path, port: u16) -> String {
    // Local delivery that works, on a fixed STARTTLS port that survives restarts.
    standard_config(dir)
        .replace(
            "listen on 127.0.0.1 port 0 tls pki mx.test\n",
            &format!("listen on 127.0.0.1 port {port} tls pki mx.test\n"),
        )
        .replace("/cert.pem/%{user}/Maildir", "/mail/%{user}/Maildir")
        + "limit retry-interval 1s\n"
}

/// One STARTTLS transaction; Some(message id) when it got its 250.
fn send_one(
    addr: SocketAddr,
    cert: &rustls::pki_types::CertificateDer<'static>,
    mid: &str,
) -> Option<()> {
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    drop(s);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut c = Conn::open(addr, cert);
        c.starttls();
        c.ehlo();
        c.cmd("MAIL FROM:<load@sender.test>", "250");
        c.cmd("RCPT TO:<alice@example.com>", "250");
        c.cmd("DATA", "354");
        c.send_raw(
            format!(
                "Message-ID: <{mid}>\r\nSubject: crash\r\n\r\n{}\r\n",
                "x".repeat(2000)
            )
            .as_bytes(),
        );
        c.cmd(".", "250 2.0.0");
    }));
    result.ok()
}

#[test]
#[ignore]
fn crash_safety_under_load() {
    let spares = crash_run("file");
    assert!(spares > 0, "no finished message was kept for reuse");
}

#[test]
#[ignore]
fn crash_safety_under_load_with_queue_sync_filesystem() {
    let spares = crash_run("filesystem");
    assert!(spares > 0, "no finished message was kept for reuse");
}

#[test]
#[ignore]
fn crash_safety_under_load_with_queue_sync_log() {
    let spares = crash_run("log");
    assert!(spares > 0, "no finished message was kept for reuse");
}

/// 20 kill -9s under load with `limit queue-sync SYNC`: nothing
/// acknowledged is lost, nothing delivered twice. Returns the spare files
/// left in `free/`.
fn crash_run(sync: &str) -> usize {
    let port = harness::free_port();
    let mut p =
        Postern::start_with(|d| fixed_port_config(d, port) + &format!("limit queue-sync {sync}\n"));
    p.wait_log(&format!("(queue-sync {sync})"), Duration::from_secs(5));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let load = Load::start(addr, &p.cert.der);
    let mut rng = Rng::new();
    const KILLS: usize = 20;
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
        p.kill9_and_restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    let (sent, acked) = load.stop();
    let maildir = p.dir.path().join("mail/alice/Maildir");
    wait_until(Duration::from_secs(120), "the queue to drain", || {
        p.files_in("mail") == 0
    });
    let delivered = delivered(&maildir);
    let (lost, dups) = tally(&acked, &delivered);
    let unacked_delivered = delivered.keys().filter(|m| !acked.contains(*m)).count();
    // Finished messages' files were kept as spares and written over by
    // later messages all along, kills included.
    let spares = p.files_in("free");
    let tmp_left = p.files_in("tmp")
        + std::fs::read_dir(maildir.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
    // A kill -9 leaves the page cache whole: nothing is torn, so nothing
    // may be quarantined (under log, a file cut short mid-write is written
    // again from its record, appended before it).
    let quarantined = p.files_in("corrupt");
    println!(
        "crash-safety (queue-sync {sync}): kills={KILLS} sent={sent} acknowledged={} delivered={} lost={} duplicated={} delivered-without-ack={unacked_delivered} tmp-left={tmp_left} spares={spares} quarantined={quarantined}",
        acked.len(),
        delivered.len(),
        lost.len(),
        dups.len()
    );
    assert!(acked.len() > 50, "too little load to mean anything");
    assert!(lost.is_empty(), "acknowledged but not delivered: {lost:?}");
    assert!(dups.is_empty(), "delivered twice: {dups:?}");
    assert_eq!(tmp_left, 0);
    assert_eq!(quarantined, 0, "a kill -9 left a torn message file");
    spares
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;

/// Four STARTTLS clients sending one message per connection until
/// stopped, each message with its own Message-ID.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeSet<String>>>,
    sent: Arc<Mutex<usize>>,
    clients: Vec<std::thread::JoinHandle<()>>,
    hook: Option<PanicHook>,
}

impl Load {
    fn start(addr: SocketAddr, cert: &rustls::pki_types::CertificateDer<'static>) -> Load {
        // Clients see connections die at every kill; their panics are
        // expected and caught, so keep them off the terminal.
        let hook = Some(std::panic::take_hook());
        std::panic::set_hook(Box::new(|_| {}));
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let sent = Arc::new(Mutex::new(0usize));
        let clients = (0..4)
            .map(|t| {
                let (stop, acked, sent, cert) =
                    (stop.clone(), acked.clone(), sent.clone(), cert.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    // Bounded by the stop flag, set after the kill loop.
                    while !stop.load(Ordering::Relaxed) && n < 100_000 {
                        n += 1;
                        let mid = format!("{t}.{n}@load.test");
                        *sent.lock().unwrap() += 1;
                        if send_one(addr, &cert, &mid).is_some() {
                            acked.lock().unwrap().insert(mid);
                        } else {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            sent,
            clients,
            hook,
        }
    }

    /// Messages sent, and those acknowledged with 250.
    fn stop(mut self) -> (usize, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients.drain(..) {
            c.join().unwrap();
        }
        if let Some(hook) = self.hook.take() {
            std::panic::set_hook(hook);
        }
        let sent = *self.sent.lock().unwrap();
        (sent, std::mem::take(&mut *self.acked.lock().unwrap()))
    }
}

/// Message-IDs in a Maildir, with how often each was delivered.
fn delivered(maildir: &Path) -> BTreeMap<String, usize> {
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for f in maildir_files(maildir) {
        let text = std::fs::read_to_string(&f).unwrap();
        let mid = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: <"))
            .unwrap()
            .trim_end_matches('>')
            .to_string();
        *delivered.entry(mid).or_default() += 1;
    }
    delivered
}

/// The acknowledged messages missing from `delivered`, and those in it
/// more than once.
type Tally<'a> = (Vec<&'a String>, Vec<(&'a String, &'a usize)>);

fn tally<'a>(acked: &'a BTreeSet<String>, delivered: &'a BTreeMap<String, usize>) -> Tally<'a> {
    let lost = acked
        .iter()
        .filter(|m| !delivered.contains_key(*m))
        .collect();
    let dups = delivered.iter().filter(|(_, n)| **n > 1).collect();
    (lost, dups)
}

#[test]
#[ignore]
fn power_loss_keeps_every_acknowledged_message() {
    for sync in ["log", "file", "filesystem"] {
        power_loss_run(sync);
    }
}

/// A power loss under load, simulated on a loop-mounted ext4 by the
/// file system shutdown ioctl without a log flush (EXT4_IOC_SHUTDOWN,
/// EXT4_GOING_FLAGS_NOLOGFLUSH; xfs_io(8) `shutdown`): what was not flushed
/// never reaches the disk. Then unmount, mount (the journal replays) and
/// start again: every acknowledged message is delivered once.
fn power_loss_run(sync: &str) {
    let root = tempfile::tempdir().unwrap();
    let (image, fs) = (root.path().join("image"), root.path().join("fs"));
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::File::create(&image)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();
    let mount = || {
        Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&fs)
            .status()
            .is_ok_and(|s| s.success())
    };
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&image)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        made && mount(),
        "making and mounting a loop ext4 failed: this test needs root and mkfs.ext4 (CI runs as root)"
    );
    let guard = Unmount(fs.clone());
    let port = harness::free_port();
    let mut p = Postern::start_with(|d| {
        fixed_port_config(d, port).replace(
            &format!("queue \"{}/queue\"", d.display()),
            &format!("queue \"{}/queue\"", fs.display()),
        ) + &format!("limit queue-sync {sync}\n")
            // Held while the load runs, so that the power loss finds
            // every message still queued.
            + "limit delivery-workers 0\n"
    });
    p.wait_log(&format!("(queue-sync {sync})"), Duration::from_secs(5));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let load = Load::start(addr, &p.cert.der);
    std::thread::sleep(Duration::from_millis(2000 + Rng::new().below(1000)));
    let shutdown = Command::new("python3")
        .args([
            "-c",
            "import fcntl, os, struct, sys\n\
             fd = os.open(sys.argv[1], os.O_RDONLY)\n\
             fcntl.ioctl(fd, 0x8004587D, struct.pack('I', 2))",
        ])
        .arg(&fs)
        .status()
        .is_ok_and(|s| s.success());
    assert!(shutdown, "the shutdown ioctl failed on {}", fs.display());
    // Whatever was acknowledged after this could not have been flushed:
    // commits fail from here on.
    std::thread::sleep(Duration::from_millis(300));
    let (sent, acked) = load.stop();
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let unmounted = Command::new("umount")
        .arg(&fs)
        .status()
        .is_ok_and(|s| s.success());
    assert!(unmounted && mount(), "remounting {} failed", fs.display());
    let conf = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, conf.replace("limit delivery-workers 0\n", "")).unwrap();
    p.kill9_and_restart();
    let maildir = p.dir.path().join("mail/alice/Maildir");
    wait_until(Duration::from_secs(120), "the queue to drain", || {
        harness::spool_files(&fs.join("queue/mail")).is_empty()
    });
    let delivered = delivered(&maildir);
    let (lost, twice) = tally(&acked, &delivered);
    let replayed = p
        .log_text()
        .lines()
        .find(|l| l.contains("commit log read"))
        .map(|l| {
            l.split("commit log read: ")
                .nth(1)
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|| "no commit log".into());
    println!(
        "power-loss (queue-sync {sync}): sent={sent} acknowledged={} delivered={} lost={} delivered-twice={}; {replayed}",
        acked.len(),
        delivered.len(),
        lost.len(),
        twice.len()
    );
    drop(p);
    drop(guard);
    assert!(acked.len() > 20, "too little load to mean anything");
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
}

fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
#[ignore]
fn full_disk_answers_452_and_recovers() {
    let root = tempfile::tempdir().unwrap();
    let fs = root.path().join("fs");
    assert!(
        // Room for the commit log's 8 MiB segment (the default queue-sync
        // log) beside the messages that fill the rest.
        mount_tmpfs(&fs, "16m"),
        "mounting a tmpfs failed: this test needs root (CI runs as root)"
    );
    let _guard = Unmount(fs.clone());
    let p = Postern::start_with(|d| {
        standard_config(d)
            .replace(
                &format!("queue \"{}/queue\"", d.display()),
                &format!("queue \"{}/queue\"", fs.display()),
            )
            .replace(
                &format!("{}/cert.pem/%{{user}}/Maildir", d.display()),
                &format!("{}/mail/%{{user}}/Maildir", fs.display()),
            )
            // The real ENOSPC path, not the free-space floor before it.
            + "limit max-message-size 1M\nlimit retry-interval 1s\nlimit queue-minfree 0\n"
    });
    let queue = fs.join("queue");
    // Leave about 1 MiB free, and hold 300 KiB back ("room") for the maildir case below.
    let ballast = fs.join("ballast");
    let room = fs.join("room");
    let mut free = nix::sys::statvfs::statvfs(&fs).unwrap();
    let avail = free.blocks_available() as u64 * free.fragment_size() as u64;
    std::fs::write(&room, vec![0u8; 300 << 10]).unwrap();
    std::fs::write(
        &ballast,
        vec![0u8; (avail - (1 << 20) - (300 << 10)) as usize],
    )
    .unwrap();
    let body = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "y".repeat(998)).repeat(200)
    );
    let mut accepted = 0;
    let mut refused = None;
    // Bounded: 1 MiB fills within a few 200 KiB messages.
    for _ in 0..40 {
        let mut c = Conn::open(p.plain(), &p.cert.der);
        c.cmd("MAIL FROM:<a@sender.test>", "250");
        c.cmd("RCPT TO:<alice@example.com>", "250");
        c.cmd("DATA", "354");
        c.send_raw(body.as_bytes());
        c.send(".");
        let r = c.reply().unwrap();
        if r.starts_with("452 4.3.1") {
            refused = Some(r);
            c.cmd("NOOP", "250");
            break;
        }
        assert!(r.starts_with("250 2.0.0"), "{r}");
        accepted += 1;
    }
    let refused = refused.expect("the disk never filled");
    // Nothing half-written: tmp/ is empty and every message file is whole.
    assert_eq!(harness::spool_files(&queue.join("tmp")).len(), 0);
    let spool = postern::spool::Spool::open(&queue).unwrap();
    for id in spool.list().unwrap() {
        match spool.envelope(&id) {
            // Delivered since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{id} was left half-written: {e}"),
            Ok(_) => {}
        }
    }
    // Maildir delivery on a full disk defers, never drops. Whether a message was still queued when
    // the disk filled above depends on timing (the maildir copies may have taken the last page), so
    // make the case: fill the disk to its last page, then free room for one message in the spool
    // but not for its maildir copy as well (about 50 pages each out of 75).
    let filler = fs.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let page = [0u8; 4096];
        // Bounded: less than 1 MiB was free.
        for _ in 0..1024 {
            if f.write_all(&page).is_err() {
                break;
            }
        }
    }
    std::fs::remove_file(&room).unwrap();
    let stuck = harness::submit(p.plain(), "a@sender.test", &["alice@example.com"], &body);
    let line = p.wait_log(&format!("{stuck}: to="), Duration::from_secs(20));
    assert!(line.contains("maildir delivery failed"), "{line}");
    assert!(
        spool.envelope(&stuck).is_ok(),
        "{stuck} left the queue although its maildir delivery failed"
    );
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&ballast).unwrap();
    free = nix::sys::statvfs::statvfs(&fs).unwrap();
    assert!(free.blocks_available() > 0);
    let id = harness::submit(
        p.plain(),
        "a@sender.test",
        &["alice@example.com"],
        "Subject: after\r\n\r\nroom again\r\n",
    );
    let maildir = fs.join("mail/alice/Maildir");
    wait_until(Duration::from_secs(30), "every message delivered", || {
        maildir_files(&maildir).len() == accepted + 2
    });
    println!(
        "full-disk: accepted={accepted} then \"{refused}\"; {stuck} waited out a full disk; after freeing space {id} accepted; all {} delivered",
        accepted + 2
    );
}

#[test]
#[ignore]
fn testssl_finds_nothing() {
    need("testssl", "testssl.sh");
    let p = Postern::start();
    let target = format!("127.0.0.1:{}", p.tls().port());
    let t0 = Instant::now();
    let out = Command::new("testssl")
        .args([
            "--starttls",
            "smtp",
            "--protocols",
            "--std",
            "--vulnerable",
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "batch",
        ])
        .args(["--openssl-timeout", "5", &target])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let summary: Vec<&str> = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            [
                "SSLv2",
                "SSLv3",
                "TLS 1 ",
                "TLS 1.1",
                "TLS 1.2",
                "TLS 1.3",
                "NULL",
                "Anonymous",
                "Export",
                "LOW:",
                "Triple DES",
                "Obsoleted",
                "Strong",
            ]
            .iter()
            .any(|k| t.starts_with(k))
                || l.contains("VULNERABLE")
                || l.contains("not vulnerable")
        })
        .collect();
    println!(
        "testssl ({:.0}s):\n{}",
        t0.elapsed().as_secs_f64(),
        summary.join("\n")
    );
    for proto in ["SSLv2", "SSLv3", "TLS 1 ", "TLS 1.1"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(proto))
            .unwrap_or("");
        assert!(line.contains("not offered"), "{proto}: {line}\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("TLS 1.3") && l.contains("offered")),
        "{text}"
    );
    let vulnerable: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("VULNERABLE") && !l.contains("not vulnerable"))
        .collect();
    assert!(vulnerable.is_empty(), "{vulnerable:?}");
    for weak in [
        "NULL ciphers",
        "Anonymous NULL",
        "Export ciphers",
        "LOW:",
        "Triple DES",
    ] {
        if let Some(l) = text.lines().find(|l| l.contains(weak)) {
            assert!(l.contains("not offered"), "{l}");
        }
    }
}
