//! Shared by the `make bench` programs.

// Each program uses its own part of this.
#![allow(dead_code)]

pub mod postfix;

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postern::spool::envelope::{EnvRcpt, Envelope};

/// The envelope of a message from `from` to one pending recipient `to`,
/// routed to `action`, arrived now.
pub fn envelope(from: &str, to: &str, action: &str) -> Envelope {
    Envelope {
        arrival: postern::time::unix_now(),
        from: from.into(),
        helo: "bench".into(),
        client: "127.0.0.1".into(),
        rcpts: vec![EnvRcpt::pending(to, action)],
        ..Envelope::default()
    }
}

/// Replace the line of bench/RESULTS.md (written by the load bench) that
/// starts with `prefix`, so each program fills in its own figure.
pub fn set_result_line(prefix: &str, line: &str) {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let Ok(md) = std::fs::read_to_string(&results) else {
        return;
    };
    let md: Vec<&str> = md
        .lines()
        .map(|l| if l.starts_with(prefix) { line } else { l })
        .collect();
    let _ = std::fs::write(&results, md.join("\n") + "\n");
}

/// Messages still queued in a spool's `mail` directory (files in its
/// bucket directories).
pub fn queued(mail: &Path) -> usize {
    std::fs::read_dir(mail)
        .map(|r| {
            r.flatten()
                .map(|b| std::fs::read_dir(b.path()).map(|f| f.count()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Write `text` to `path` with `mode`.
pub fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A loopback port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait (up to 20 s) until something listens on `addr`.
pub fn wait_port(addr: impl ToSocketAddrs + std::fmt::Debug + Copy) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr:?} never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A self-signed ECDSA P-256 certificate for `name`, written to
/// `dir/cert.pem` and `dir/key.pem` (mode 600).
pub fn self_signed(dir: &Path, name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    write(&dir.join("cert.pem"), &cert.pem(), 0o644);
    write(&dir.join("key.pem"), &key.serialize_pem(), 0o600);
    (cert, key)
}

/// Where a bench keeps its spools: a fresh ext4 file system (mkfs.ext4's
/// defaults: a journal, data=ordered, as most spools run) on a loop device,
/// made for this run and removed after it, so that every run starts from
/// the same state. On the machine's own file system, inode allocation
/// right after a bench deleted tens of thousands of files (ext4 without a
/// journal skips recently freed inodes, one by one) cost several times the
/// commit itself, and one run's clean-up slowed the next. Needs root and a
/// loop device; otherwise a temporary directory, and [`Scratch::what`] says so.
pub struct Scratch {
    dir: tempfile::TempDir,
    mounted: Option<std::path::PathBuf>,
    what: String,
}

impl Scratch {
    pub fn new(size: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().with_extension("img");
        let mnt = dir.path().join("fs");
        let ok = nix::unistd::Uid::effective().is_root()
            && std::fs::create_dir(&mnt).is_ok()
            && run("truncate", &["-s", size, &image.display().to_string()])
            && run("mkfs.ext4", &["-q", "-F", &image.display().to_string()])
            && run(
                "mount",
                &[
                    "-o",
                    "loop",
                    &image.display().to_string(),
                    &mnt.display().to_string(),
                ],
            );
        // Mounted, the loop device keeps it until the unmount frees both.
        let _ = std::fs::remove_file(&image);
        if ok {
            // Postfix's daemons run as `postfix` and must reach their base.
            let _ = run("chmod", &["755", &mnt.display().to_string()]);
            let _ = run("chmod", &["755", &dir.path().display().to_string()]);
            Scratch {
                dir,
                mounted: Some(mnt),
                what: format!(
                    "a fresh {size} ext4 file system on a loop device (mkfs.ext4 defaults: journal, data=ordered)"
                ),
            }
        } else {
            let fs = Command::new("findmnt")
                .args(["-n", "-o", "FSTYPE,OPTIONS", "-T"])
                .arg(dir.path())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            Scratch {
                dir,
                mounted: None,
                what: format!("the machine's own file system ({fs}; no loop device or not root)"),
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.mounted.as_deref().unwrap_or(self.dir.path())
    }

    /// What the spools are on, for RESULTS.md.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(m) = &self.mounted {
            // The image file goes with the last reference to the loop device.
            let _ = run("umount", &[&m.display().to_string()]);
        }
    }
}

/// What the benches read of /proc/PID/stat (proc(5)), in clock ticks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    pub utime: u64,
    pub stime: u64,
    /// Reaped children's user and system time.
    pub cutime: u64,
    pub cstime: u64,
}

impl ProcStat {
    /// Own user and system time.
    pub fn own(&self) -> u64 {
        self.utime + self.stime
    }
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&st)
}

/// Fields are taken by position (proc(5) numbers them from 1; the command
/// name, field 2, may hold spaces, so counting starts after its `)`).
/// Some fields are negative (tpgid is -1 for a process without a
/// controlling terminal, which every daemon is): skipping what does not
/// parse as unsigned shifted utime onto cmajflt and counted stime as
/// utime.
pub fn parse_proc_stat(st: &str) -> Option<ProcStat> {
    let f: Vec<&str> = st.rsplit_once(')')?.1.split_whitespace().collect();
    // f[0] is field 3 (state).
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(ProcStat {
        ppid: field(4)? as u32,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// Panic unless /proc/PID/stat is read as proc(5) says: a daemon's line
/// (tpgid -1, a command name with a space and a parenthesis), and this
/// process's user time growing while it spins. The CPU columns rest on it.
pub fn check_proc_stat() {
    let line = "1234 (smtpd -n) x) S 42 1234 1234 0 -1 4194560 900 0 3 0 171 62 5 7 20 0 1 0 99";
    assert_eq!(
        parse_proc_stat(line),
        Some(ProcStat {
            ppid: 42,
            utime: 171,
            stime: 62,
            cutime: 5,
            cstime: 7
        })
    );
    let me = std::process::id();
    let before = proc_stat(me).unwrap_or_default();
    let t = std::time::Instant::now();
    let mut x = 0u64;
    // Bounded: 300 ms of arithmetic.
    while t.elapsed() < std::time::Duration::from_millis(300) {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    let after = proc_stat(me).unwrap_or_default();
    assert!(
        after.utime.saturating_sub(before.utime) >= 15,
        "/proc/{me}/stat: 300 ms spinning added {} ticks of user time, not about 30",
        after.utime.saturating_sub(before.utime)
    );
}

/// Run `program` with `args`, its output discarded; an error unless it
/// exits 0.
pub fn run_ok(program: &str, args: &[&str]) -> Result<(), String> {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} {} failed", args.join(" ")))
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    run_ok(program, args).is_ok()
}
