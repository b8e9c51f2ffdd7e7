//! What root does at start-up never follows a path the unprivileged user
//! controls: the spool, the pid file, the spool root's mode and the control
//! socket. These start the real daemon as
//! root with `user nobody`, so they run only as root (CI runs as root).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn nobody() -> nix::unistd::User {
    nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a 'nobody' user")
}

/// Run `script` with sh as nobody, as the unprivileged user would.
fn as_nobody(script: &str) {
    let u = nobody();
    stdout_of(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .uid(u.uid.as_raw())
            .gid(u.gid.as_raw()),
        &format!("as nobody: {script}"),
    );
}

/// A root-only decoy: its content, owner and mode must never change.
struct Decoy {
    path: PathBuf,
    content: Vec<u8>,
}

impl Decoy {
    fn new(path: PathBuf, content: &[u8]) -> Decoy {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write_mode(&path, std::str::from_utf8(content).unwrap(), 0o600);
        Decoy {
            path,
            content: content.to_vec(),
        }
    }

    fn check(&self) {
        let m = std::fs::symlink_metadata(&self.path)
            .unwrap_or_else(|e| panic!("decoy {} is gone: {e}", self.path.display()));
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o600),
            "decoy {} changed owner or mode",
            self.path.display()
        );
        assert_eq!(
            std::fs::read(&self.path).unwrap(),
            self.content,
            "decoy {} changed",
            self.path.display()
        );
    }
}

/// Run postern in the foreground until it logs that it started (then
/// SIGTERM it) or exits; returns its stderr and whether it started.
fn run_once(conf: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["-d", "-v", "-f"])
        .arg(conf)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let started = l.contains("postern started");
            all.push_str(&l);
            all.push('\n');
            if started {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
        }
        all
    });
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("postern neither started nor exited within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = reader.join().unwrap();
    let _ = status;
    (log.contains("postern started"), log)
}

/// As root: a test dir and a config running as nobody; None (the test is
/// skipped, saying so) otherwise.
fn as_root_with_nobody() -> Option<(tempfile::TempDir, PathBuf)> {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return None;
    }
    let (dir, _cert) = test_dir(&["mx.test"]);
    let conf = nobody_config(dir.path());
    Some((dir, conf))
}

fn nobody_config(d: &Path) -> PathBuf {
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = d.join("postern.conf");
    std::fs::write(&conf, standard_config(d) + "user nobody\nlog stderr\n").unwrap();
    conf
}

#[test]
fn root_never_follows_links_planted_in_the_spool() {
    let Some((dir, conf)) = as_root_with_nobody() else {
        return;
    };
    let d = dir.path();
    let (started, log) = run_once(&conf);
    assert!(started, "{log}");
    let q = d.join("queue");
    let qm = std::fs::metadata(&q).unwrap();
    assert_eq!(qm.mode() & 0o777, 0o700, "queue root mode");
    assert_eq!(qm.uid(), nobody().uid.as_raw());

    // Root's files, in a directory nobody cannot enter.
    let v = d.join("root-only");
    std::fs::create_dir(&v).unwrap();
    std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o700)).unwrap();
    let decoys = [
        Decoy::new(v.join("del/a.conf"), b"precious config\n"),
        Decoy::new(v.join("rootsecret"), b"TOP SECRET\n"),
        Decoy::new(v.join("mailbucket/important.msg"), b"important\n"),
        Decoy::new(v.join("mailbucket/data.env"), b"data\n"),
        Decoy::new(v.join("freedir/big.img"), &vec![b'x'; 200_000]),
        Decoy::new(v.join("chown-target"), b"shadow\n"),
    ];
    let id = "000000000000000A";
    let v = v.display();
    let q = q.display();
    // Every top-level directory, then every bucket, then every file: each
    // start must refuse the links (naming them) or leave them alone.
    for (plant, refused) in [
        (
            format!("mv {q}/tmp {q}/tmp.orig && ln -s {v}/del {q}/tmp"),
            Some("tmp"),
        ),
        (
            format!(
                "rm {q}/tmp && mv {q}/tmp.orig {q}/tmp && mv {q}/corrupt {q}/corrupt.orig && ln -s {v}/del {q}/corrupt"
            ),
            Some("corrupt"),
        ),
        (
            format!(
                "rm {q}/corrupt && mv {q}/corrupt.orig {q}/corrupt && mv {q}/free {q}/free.orig && ln -s {v}/freedir {q}/free"
            ),
            Some("free"),
        ),
        (
            format!(
                "rm {q}/free && mv {q}/free.orig {q}/free && mv {q}/mail {q}/mail.orig && ln -s {v}/mailbucket {q}/mail"
            ),
            Some("mail"),
        ),
        (
            format!(
                "rm {q}/mail && mv {q}/mail.orig {q}/mail && mv {q}/tmp/3 {q}/tmp/3.orig && ln -s {v}/del {q}/tmp/3"
            ),
            Some("tmp/3"),
        ),
        (
            format!(
                "rm {q}/tmp/3 && mv {q}/tmp/3.orig {q}/tmp/3 && mv {q}/mail/7 {q}/mail/7.orig && ln -s {v}/mailbucket {q}/mail/7"
            ),
            Some("mail/7"),
        ),
        (
            format!(
                "rm {q}/mail/7 && mv {q}/mail/7.orig {q}/mail/7 && \
                 printf 'postern-envelope 1\\nid {id}\\narrival 1796160000\\nfrom a@sender.test\\nhelo x\\nclient 127.0.0.1\\nbody 7bit\\nsize 10\\nrcpt addr=alice@example.com action=local state=pending attempts=0 next=0 error=\\n' > {q}/mail/a/{id}.env && \
                 ln -s {v}/rootsecret {q}/mail/a/{id}.body && \
                 ln -s {v}/chown-target {q}/mail/0/0000000000000010.msg && \
                 ln -s {v}/del/a.conf {q}/tmp/0/x.msg && \
                 ln -s {v}/freedir/big.img {q}/free/spare && \
                 ln -s {v}/chown-target {q}/corrupt/c && mkfifo {q}/mail/1/0000000000000001.msg"
            ),
            None,
        ),
    ] {
        as_nobody(&plant);
        let (started, log) = run_once(&conf);
        match refused {
            Some(name) => {
                assert!(!started, "started over a symlinked {name}:\n{log}");
                assert!(
                    log.contains(&format!("{q}/{name} is a symlink or not a directory")),
                    "{log}"
                );
            }
            None => {
                assert!(started, "{log}");
                assert!(log.contains("is not a regular file; left alone"), "{log}");
            }
        }
        for decoy in &decoys {
            decoy.check();
        }
    }
    // Nothing of the secret reached a message or a mailbox.
    let grep = Command::new("grep")
        .args(["-r", "-l", "TOP SECRET"])
        .arg(format!("{q}"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );
}

#[test]
fn spool_of_another_user_or_writable_by_others_is_refused() {
    let Some((dir, conf)) = as_root_with_nobody() else {
        return;
    };
    let d = dir.path();
    let q = d.join("queue");
    std::fs::create_dir(&q).unwrap();
    std::os::unix::fs::chown(&q, Some(1), Some(1)).unwrap();
    let (started, log) = run_once(&conf);
    assert!(!started);
    assert!(
        log.contains("is owned by uid 1, not by the user postern runs as"),
        "{log}"
    );
    std::os::unix::fs::chown(&q, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (started, log) = run_once(&conf);
    assert!(!started);
    assert!(
        log.contains("is writable by group or others (mode 777)"),
        "{log}"
    );
    // A root-owned, readable root is handed over and made 700.
    std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (started, log) = run_once(&conf);
    assert!(started, "{log}");
    let m = std::fs::metadata(&q).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (nobody().uid.as_raw(), 0o700));
}

fn background(conf: &Path, pid_file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("-f")
        .arg(conf)
        .arg("-p")
        .arg(pid_file)
        .output()
        .unwrap()
}

#[test]
fn pid_file_is_roots_never_followed_and_removed_at_exit() {
    let Some((dir, conf)) = as_root_with_nobody() else {
        return;
    };
    let d = dir.path();
    let v = d.join("root-only");
    std::fs::create_dir(&v).unwrap();
    let target = Decoy::new(v.join("pid-target"), b"precious root config\n");
    // A pid directory the unprivileged user can write to.
    let piddir = d.join("piddir");
    std::fs::create_dir(&piddir).unwrap();
    std::os::unix::fs::chown(
        &piddir,
        Some(nobody().uid.as_raw()),
        Some(nobody().gid.as_raw()),
    )
    .unwrap();
    let pid_file = piddir.join("postern.pid");
    as_nobody(&format!(
        "ln -s {} {}",
        target.path.display(),
        pid_file.display()
    ));
    let out = background(&conf, &pid_file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a symlink; refusing to write through it"),
        "{err}"
    );
    target.check();
    // A hard link to a root file in its place is refused as well.
    std::fs::remove_file(&pid_file).unwrap();
    std::fs::hard_link(&target.path, &pid_file).unwrap();
    let out = background(&conf, &pid_file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a regular file with one link"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target.check();
    std::fs::remove_file(&pid_file).unwrap();

    // In a root directory: written as root, 644, kept root's, removed at exit.
    let pid_file = d.join("postern.pid");
    let out = background(&conf, &pid_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(WAIT, "pid file", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let m = std::fs::metadata(&pid_file).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o644));
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The pid is the daemon's, running as nobody.
    wait_until(WAIT, "daemon drops to nobody", || {
        std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.contains(&nobody().uid.to_string()))
        })
    });
    // Its control socket was created 600 and refuses other users.
    let sock = d.join("queue/postern.sock");
    wait_until(WAIT, "control socket", || sock.exists());
    assert_eq!(
        std::fs::symlink_metadata(&sock).unwrap().mode() & 0o777,
        0o600
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_until(WAIT, "pid file removed at exit", || !pid_file.exists());
}

#[test]
fn control_socket_refuses_other_users() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    // The daemon runs as root here; a client running as nobody is refused
    // even with the socket's mode opened up.
    let p = Postern::start_with(|d| {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        standard_config(d)
    });
    let sock = p.queue().join("postern.sock");
    wait_until(WAIT, "control socket", || sock.exists());
    std::fs::set_permissions(p.queue(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let u = nobody();
    let out = Command::new(env!("CARGO_BIN_EXE_posternctl"))
        .arg("-s")
        .arg(&sock)
        .args(["show", "stats"])
        .uid(u.uid.as_raw())
        .gid(u.gid.as_raw())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("permission denied"), "{all}");
    assert!(!all.contains("sessions"), "{all}");
}
