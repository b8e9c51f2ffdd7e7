//! Operating postern: posternctl, background start and syslog, the privilege
//! drop, make install / uninstall, and the init scripts.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{
    Conn, Postern, as_root_too, need, standard_config, stdout_of, submit, test_dir, wait_until,
};

const WAIT: Duration = Duration::from_secs(20);
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

#[test]
fn posternctl_against_a_queue() {
    let p = Postern::start();
    let a = submit(
        p.plain(),
        "s@sender.test",
        &["alice@example.com"],
        "Subject: one\r\n\r\nx\r\n",
    );
    let b = submit(
        p.plain(),
        "s@sender.test",
        &["bob@example.com", "alice@example.com"],
        "Subject: two\r\n\r\ny\r\n",
    );
    // Local delivery in this setup always fails: wait for the first attempt.
    wait_until(WAIT, "attempts recorded", || {
        p.envelope(&b).matches("attempts=1").count() == 2
    });
    // -f finds the socket through the configuration's queue line.
    stdout_of(
        Command::new(env!("CARGO_BIN_EXE_posternctl"))
            .arg("-f")
            .arg(&p.config)
            .args(["show", "queue"]),
        "posternctl -f",
    );
    let (ok, out, err) = p.ctl(&["show", "queue"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("ID "), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with(&a)).count(),
        1,
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with(&b)).count(),
        2,
        "{out}"
    );
    let bob = out.lines().find(|l| l.contains("bob@example.com")).unwrap();
    assert!(
        bob.contains("<s@sender.test>")
            && bob.contains("deferred")
            && bob.contains("451 4.3.0 maildir delivery failed"),
        "{bob}"
    );
    // One message with its current envelope, then the message itself.
    let (ok, shown, err) = p.ctl(&["show", "message", &b]);
    assert!(ok, "{err}");
    let (env, msg) = shown.split_once(&format!("{b}.msg\n")).unwrap_or(("", ""));
    assert!(
        env.contains(&format!("id {b}\n"))
            && env.contains("from s@sender.test\n")
            && env.matches("state=pending attempts=1").count() == 2,
        "{shown}"
    );
    assert!(
        msg.starts_with("Received: from ") && msg.ends_with("Subject: two\r\n\r\ny\r\n"),
        "{shown}"
    );
    let (ok, _, err) = p.ctl(&["show", "message", "0000000000000000"]);
    assert!(
        !ok && err.contains("no message 0000000000000000 in the queue"),
        "{err}"
    );
    let (ok, stats, _) = p.ctl(&["show", "stats"]);
    assert!(ok);
    assert!(
        stats.contains("messages.in=2\n") && stats.contains("queue.messages=2\n"),
        "{stats}"
    );
    assert!(stats.contains("recipients.deferred="), "{stats}");
    let (ok, out, _) = p.ctl(&["schedule", "all"]);
    assert!(ok && out.contains("2 messages scheduled"), "{out}");
    wait_until(WAIT, "rescheduled attempt", || {
        p.envelope(&a).contains("attempts=2")
    });
    let (ok, out, _) = p.ctl(&["remove", &a]);
    assert!(ok && out.contains("1 messages removed"), "{out}");
    assert_eq!(p.queued_ids(), std::slice::from_ref(&b));
    let (ok, _, err) = p.ctl(&["remove", "NOSUCHID"]);
    assert!(
        !ok && err.contains("no message NOSUCHID in the queue"),
        "{err}"
    );
    let (ok, _, err) = p.ctl(&["frobnicate"]);
    assert!(!ok && err.contains("unknown command"), "{err}");
    let (ok, out, err) = p.ctl(&["reload"]);
    assert!(ok && out.contains("re-read"), "{out}{err}");
    let good = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, "bogus\n").unwrap();
    let (ok, _, err) = p.ctl(&["reload"]);
    assert!(
        !ok && err.contains("reload refused")
            && err.contains("postern.conf:1: unknown keyword 'bogus'"),
        "{err}"
    );
    std::fs::write(&p.config, good).unwrap();
    let (ok, out, _) = p.ctl(&["remove", "all"]);
    assert!(ok && out.contains("1 messages removed"), "{out}");
    assert!(p.queued_ids().is_empty());
}

#[test]
fn posternctl_without_a_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("p.conf");
    std::fs::write(
        &conf,
        format!("queue \"{}\"\nlisten on 127.0.0.1\n", dir.path().display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_posternctl"))
        .arg("-f")
        .arg(&conf)
        .args(["show", "queue"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot connect to {}/postern.sock",
            dir.path().display()
        )) && err.contains("is postern running?"),
        "{err}"
    );
}

fn syslog_config(dir: &Path) -> String {
    standard_config(dir) + &format!("log syslog \"{}/log.sock\"\n", dir.display())
}

#[test]
fn background_start_pid_file_and_syslog() {
    let (dir, cert) = test_dir(&["mx.test"]);
    let d = dir.path();
    let conf = d.join("postern.conf");
    // One fixed listener, so the test knows where to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = syslog_config(d).replace(
        "listen on 127.0.0.1 port 0\n",
        &format!("listen on 127.0.0.1 port {port}\n"),
    );
    std::fs::write(&conf, as_root_too(text)).unwrap();
    let log = std::os::unix::net::UnixDatagram::bind(d.join("log.sock")).unwrap();
    log.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let pid_file = d.join("postern.pid");
    // A relative -f, as an administrator in /etc/postern types it: the
    // daemon runs in / and must still find it for a reload.
    let st = Command::new(env!("CARGO_BIN_EXE_postern"))
        .current_dir(d)
        .arg("-f")
        .arg("postern.conf")
        .arg("-p")
        .arg(&pid_file)
        .status()
        .unwrap();
    assert!(st.success(), "the foreground parent should exit 0");
    wait_until(WAIT, "pid file", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded: stop at the start-up line or after 50 datagrams.
    for _ in 0..50 {
        let n = log.recv(&mut buf).unwrap();
        let l = String::from_utf8_lossy(&buf[..n]).to_string();
        let done = l.contains("postern started");
        lines.push(l);
        if done {
            break;
        }
    }
    let started = lines.last().unwrap();
    assert!(
        started.starts_with(&format!("<22>postern[{pid}]: postern started")),
        "{lines:?}"
    );
    let mut c = Conn::connect(format!("127.0.0.1:{port}").parse().unwrap(), &cert.der);
    c.expect("220");
    c.cmd("QUIT", "221");
    // Only the daemon holds the port, not the root process keeping the
    // pid file: a restart can bind it the moment the daemon is gone.
    need("ss", "iproute2");
    let ss = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .unwrap();
    let holders = String::from_utf8_lossy(&ss.stdout).to_string();
    assert_eq!(
        holders.matches("pid=").count(),
        1,
        "listening sockets held by more than the daemon: {holders}"
    );
    assert!(holders.contains(&format!("pid={pid},")), "{holders}");
    let reload = Command::new(env!("CARGO_BIN_EXE_posternctl"))
        .arg("-s")
        .arg(d.join("queue/postern.sock"))
        .arg("reload")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&reload.stdout);
    assert!(
        reload.status.success() && !said.contains("refused"),
        "{said}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_until(WAIT, "daemon exit", || {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
    });
    // The root process that keeps it removes it once the daemon is gone.
    wait_until(WAIT, "pid file removed", || !pid_file.exists());
}

#[test]
fn refuses_root_without_a_user_directive() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("p.conf");
    std::fs::write(
        &conf,
        format!(
            "queue \"{}/q\"\nlisten on 127.0.0.1 port 0\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["-d", "-f"])
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("started as root without a 'user' directive"),
        "{err}"
    );
}

fn thread_uids(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        })
        .collect()
}

#[test]
fn drops_to_the_configured_user() {
    if !is_root() {
        eprintln!("skipped: needs root (CI runs as root)");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a 'nobody' user");
    let p = Postern::start_with(|d| {
        // nobody must reach its spool; the key stays root's, mode 600.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711)).unwrap();
        standard_config(d) + "user nobody\n"
    });
    let key = p.dir.path().join("key.pem");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&meta),
            meta.permissions().mode() & 0o777
        ),
        (0, 0o600)
    );
    p.wait_log("running as nobody", WAIT);
    // TLS works, so the key was read before the drop.
    let mut c = Conn::connect(p.tls(), &p.cert.der);
    c.expect("220");
    c.starttls();
    c.ehlo();
    let uid = nobody.uid.to_string();
    let uids = thread_uids(p.child.id());
    assert!(uids.len() > 3, "{uids:?}");
    for u in &uids {
        assert_eq!(
            u,
            &format!("{uid} {uid} {uid} {uid}"),
            "a thread kept another uid: {uids:?}"
        );
    }
    // The spool belongs to nobody now and mail still gets queued.
    let q = std::fs::metadata(p.queue().join("mail")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&q), nobody.uid.as_raw());
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "354");
    c.cmd(".", "250 2.0.0");
}

fn make(args: &[&str]) -> Output {
    Command::new("make")
        .arg("-C")
        .arg(ROOT)
        .args(args)
        .arg("PROFILE=debug")
        // Install what this test run built; rebuilding here would replace
        // binaries that other tests are running.
        .arg("CARGO=true")
        .arg(format!("TARGETDIR={}", target_dir().display()))
        .output()
        .unwrap()
}

/// The target dir this test binary was built in (…/target/debug/deps/x).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn files_under(root: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                out.push((p.strip_prefix(root).unwrap().display().to_string(), mode));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn make_install_and_uninstall() {
    need("make", "make");
    let dest = tempfile::tempdir().unwrap();
    let destdir = format!("DESTDIR={}", dest.path().display());
    let out = make(&["install", &destdir, "PREFIX=/usr"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let files = files_under(dest.path());
    let want: Vec<(String, u32)> = [
        ("etc/init.d/postern", 0o755),
        ("etc/postern/postern.conf", 0o644),
        ("usr/lib/systemd/system/postern.service", 0o644),
        ("usr/sbin/postern", 0o755),
        ("usr/sbin/posternctl", 0o755),
        ("usr/share/man/man5/postern.conf.5", 0o644),
        ("usr/share/man/man8/postern.8", 0o644),
        ("usr/share/man/man8/posternctl.8", 0o644),
    ]
    .iter()
    .map(|(p, m)| (p.to_string(), *m))
    .collect();
    assert_eq!(files, want);
    let unit = std::fs::read_to_string(dest.path().join("usr/lib/systemd/system/postern.service"))
        .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/sbin/postern -d -f /etc/postern/postern.conf"),
        "{unit}"
    );
    // A second install keeps the administrator's configuration.
    std::fs::write(dest.path().join("etc/postern/postern.conf"), "# mine\n").unwrap();
    assert!(make(&["install", &destdir, "PREFIX=/usr"]).status.success());
    assert_eq!(
        std::fs::read_to_string(dest.path().join("etc/postern/postern.conf")).unwrap(),
        "# mine\n"
    );
    assert!(dest.path().join("etc/postern/postern.conf.sample").exists());
    let out = make(&["uninstall", &destdir, "PREFIX=/usr"]);
    assert!(out.status.success());
    assert_eq!(
        files_under(dest.path()),
        [("etc/postern/postern.conf".to_string(), 0o644)]
    );
}

#[test]
fn systemd_unit_verifies() {
    let ok = Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify wants the binaries to exist: point the unit at the built ones.
    let dir = tempfile::tempdir().unwrap();
    let bin = target_dir().join("debug/postern");
    let unit = std::fs::read_to_string(format!("{ROOT}/etc/postern.service"))
        .unwrap()
        .replace("/usr/local/sbin/postern", bin.to_str().unwrap());
    let path = dir.path().join("postern.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // Only complaints about our unit count; the host's own units are not ours.
    // Documentation= pages are not installed where the test runs.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("postern.service") && !l.contains("Command 'man "))
        .collect();
    assert!(ours.is_empty(), "{text}");
}

#[test]
fn sysv_script_passes_shellcheck_and_runs() {
    need("shellcheck", "shellcheck");
    need("start-stop-daemon", "dpkg");
    let script = format!("{ROOT}/etc/init.d/postern");
    let sc = Command::new("shellcheck").arg(&script).output().unwrap();
    assert!(
        sc.status.success(),
        "{}",
        String::from_utf8_lossy(&sc.stdout)
    );
    let (dir, _) = test_dir(&["mx.test"]);
    let d = dir.path();
    let conf = d.join("postern.conf");
    std::fs::write(&conf, as_root_too(standard_config(d))).unwrap();
    let pid = d.join("postern.pid");
    let defaults = d.join("default");
    std::fs::write(
        &defaults,
        format!(
            "DAEMON={}\nCONFIG={}\nPIDFILE={}\n",
            target_dir().join("debug/postern").display(),
            conf.display(),
            pid.display()
        ),
    )
    .unwrap();
    let run = |action: &str| {
        let o = Command::new("sh")
            .arg(&script)
            .arg(action)
            .env("POSTERN_DEFAULTS", &defaults)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (code, out) = run("start");
    assert_eq!(code, Some(0), "{out}");
    wait_until(WAIT, "pid file", || {
        std::fs::read_to_string(&pid).is_ok_and(|s| s.ends_with('\n'))
    });
    let (code, out) = run("status");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("postern is running (pid "), "{out}");
    let (code, out) = run("reload");
    assert_eq!(code, Some(0), "{out}");
    // A broken config stops reload before it reaches the daemon.
    let good = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, "bogus\n").unwrap();
    let (code, out) = run("reload");
    assert_ne!(code, Some(0));
    assert!(out.contains("unknown keyword 'bogus'"), "{out}");
    std::fs::write(&conf, good).unwrap();
    let (code, out) = run("stop");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run("status");
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("not running"), "{out}");
}
