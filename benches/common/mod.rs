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

/// Fields of /proc/PID/stat after the command name, numeric ones only
/// (the state letter dropped): ppid is [0], utime [10], stime [11],
/// cutime [12], cstime [13].
pub fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        st.rsplit(')')
            .next()?
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect(),
    )
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
