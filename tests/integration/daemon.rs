//! The daemon as an administrator meets it: config checks, limits,
//! signals, start-up recovery, SNI and IPv6.

use std::process::Command;
use std::time::Duration;

use crate::harness::{Conn, Postern, connect_from, make_cert, standard_config, write_mode};

fn check(conf: &str, setup: impl FnOnce(&std::path::Path)) -> (bool, String) {
    let (dir, _) = crate::harness::test_dir(&["mx.test"]);
    setup(dir.path());
    let path = dir.path().join("postern.conf");
    std::fs::write(&path, conf.replace("DIR", dir.path().to_str().unwrap())).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .arg("-n")
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        text.replace(dir.path().to_str().unwrap(), "DIR"),
    )
}

const GOOD: &str = "pki mx.test cert \"DIR/cert.pem\"\npki mx.test key \"DIR/key.pem\"\nqueue \"DIR/q\"\nlisten on 127.0.0.1 port 2525 tls\n";

#[test]
fn check_mode_accepts_good_config() {
    let (ok, text) = check(GOOD, |_| {});
    assert!(ok, "{text}");
    assert!(text.contains("configuration DIR/postern.conf OK"), "{text}");
}

#[test]
fn check_mode_names_file_and_line() {
    let cases = [
        (
            "bogus keyword\n",
            "DIR/postern.conf:1: unknown keyword 'bogus'",
        ),
        (
            "\nlisten on 127.0.0.1 port 99999\n",
            "DIR/postern.conf:2: listen on: bad port '99999'",
        ),
        (
            "listen on 127.0.0.1\nlimit sessions zero\n",
            "DIR/postern.conf:2: limit sessions: expected a positive number, got 'zero'",
        ),
        (
            "listen on 127.0.0.1\nlimit nosuch 1\n",
            "DIR/postern.conf:2: unknown limit 'nosuch'",
        ),
        (
            "listen on 127.0.0.1 tls\n",
            "DIR/postern.conf:1: listen on: tls, tls-require and smtps need 'pki NAME'",
        ),
        (
            "listen on 127.0.0.1 auth <nope>\n",
            "DIR/postern.conf:1: listen on: no table named 'nope'",
        ),
        (
            "listen on 127.0.0.1\nmatch from any for any action \"x\"\n",
            "DIR/postern.conf:2: match: no action named 'x'",
        ),
        (
            "queue \"unterminated\n",
            "DIR/postern.conf:1: unterminated quoted string",
        ),
        ("hostname x\n", "DIR/postern.conf: no 'listen on' directive"),
        (
            "listen on 127.0.0.1\ntable t file:DIR/missing\n",
            "DIR/postern.conf:2: table t: cannot read DIR/missing",
        ),
    ];
    for (conf, want) in cases {
        let (ok, text) = check(conf, |_| {});
        assert!(!ok, "accepted: {conf}");
        assert!(
            text.contains(want),
            "for {conf:?}\n got: {text}\nwant: {want}"
        );
    }
}

#[test]
fn group_readable_key_refused() {
    let (ok, text) = check(GOOD, |d| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("key.pem"), std::fs::Permissions::from_mode(0o640))
            .unwrap();
    });
    assert!(!ok);
    assert!(text.contains("DIR/postern.conf:1: key file DIR/key.pem is accessible by group or others (mode 640); run: chmod 600 DIR/key.pem"), "{text}");
}

#[test]
fn plaintext_password_refused() {
    let conf = format!(
        "{GOOD}table users file:DIR/plain\nlisten on 127.0.0.1 port 2587 tls-require auth <users>\n"
    );
    let (ok, text) = check(&conf, |d| {
        std::fs::write(d.join("plain"), "alice hunter2\n").unwrap()
    });
    assert!(!ok);
    assert!(text.contains("DIR/postern.conf:6: auth <users>: DIR/plain:1: the password of 'alice' is not a supported crypt(3) hash"), "{text}");
}

#[test]
fn key_not_matching_certificate_refused() {
    let (ok, text) = check(GOOD, |d| {
        let other = make_cert(&["other.test"]);
        write_mode(&d.join("key.pem"), &other.key_pem, 0o600);
    });
    assert!(!ok);
    assert!(text.contains("does not fit certificate"), "{text}");
}

#[test]
fn sigterm_lets_open_session_finish() {
    let mut p = Postern::start();
    let mut c = Conn::open(p.plain(), &p.cert.der);
    p.signal("TERM");
    p.wait_log("postern stopping on signal", Duration::from_secs(5));
    // New connections are no longer accepted...
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::net::TcpStream::connect(p.plain()).is_err(),
        "still accepting after SIGTERM"
    );
    // ...but the open session completes its message.
    c.cmd("MAIL FROM:<a@sender.test>", "250");
    c.cmd("RCPT TO:<alice@example.com>", "250");
    c.cmd("DATA", "354");
    c.send_raw(b"last one\r\n");
    c.cmd(".", "250 2.0.0");
    c.cmd("QUIT", "221");
    let st = p.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
    assert_eq!(p.queued_ids().len(), 1);
}

#[test]
fn sessions_per_ip_limit() {
    let p = Postern::start_with(|d| standard_config(d) + "limit sessions-per-ip 2\n");
    let from = |p: &Postern| Conn::from_tcp(connect_from("127.0.0.2", p.plain()), &p.cert.der);
    let mut a = from(&p);
    a.expect("220");
    let mut b = from(&p);
    b.expect("220");
    let mut c = from(&p);
    c.expect("421 4.3.2 Service temporarily unavailable");
    assert!(c.closed());
    a.cmd("QUIT", "221");
    // The slot is released when the session ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut d = from(&p);
        if d.reply().is_some_and(|r| r.starts_with("220")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    b.cmd("NOOP", "250");
}

#[test]
fn idle_local_connections_never_lock_out_a_local_client() {
    // 50 idle connections from 127.0.0.1 used to leave a local client
    // with 421 (Postfix exempts $mynetworks).
    let p = Postern::start_with(|d| {
        standard_config(d).replace("limit workers 8", "limit workers 80")
            + "limit sessions-per-ip 5\nlimit sessions 100\n"
    });
    let idle: Vec<_> = (0..50)
        .map(|_| {
            let mut c = Conn::from_tcp(connect_from("127.0.0.1", p.plain()), &p.cert.der);
            c.expect("220");
            c
        })
        .collect();
    let mut c = Conn::from_tcp(connect_from("127.0.0.1", p.plain()), &p.cert.der);
    c.expect("220");
    c.cmd("QUIT", "221");
    drop(idle);
}

#[test]
fn saturated_pool_answers_421() {
    // One worker with a queue of one: the third client is refused by the
    // acceptor itself.
    let p =
        Postern::start_with(|d| standard_config(d).replace("limit workers 8", "limit workers 1"));
    let mut a = Conn::connect(p.plain(), &p.cert.der);
    a.expect("220");
    let _queued = Conn::connect(p.plain(), &p.cert.der);
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Conn::connect(p.plain(), &p.cert.der);
    c.expect("421 4.3.2");
    p.wait_log("reason=workers-busy", Duration::from_secs(5));
}

#[test]
fn startup_removes_leftovers_and_keeps_old_layout_mail() {
    let old = "0000000000003000";
    // Arrived now: an old arrival would bounce at once (bounce-after).
    let now = postern::time::unix_now();
    let p = Postern::start_with(|d| {
        let q = d.join("queue");
        std::fs::create_dir_all(q.join("tmp/0")).unwrap();
        std::fs::create_dir_all(q.join("mail/0")).unwrap();
        std::fs::write(q.join("tmp/0/0000000000001000.msg"), "half").unwrap();
        std::fs::write(q.join("mail/0/0000000000002000.body"), "orphan").unwrap();
        // A message queued by a postern of the two-file layout.
        std::fs::write(
            q.join(format!("mail/0/{old}.body")),
            "Subject: old\r\n\r\nkept\r\n",
        )
        .unwrap();
        std::fs::write(
            q.join(format!("mail/0/{old}.env")),
            format!(
                "postern-envelope 1\nid {old}\narrival {now}\nfrom a@sender.test\nhelo x\nclient 127.0.0.1\n\
                 body 7bit\nsize 24\nrcpt addr=alice@example.com action=local state=pending attempts=0 next=0 error=\n"
            ),
        )
        .unwrap();
        standard_config(d)
    });
    p.wait_log(
        "1 messages (1 rewritten from the two-file layout), removed 1 temporary and 1 orphan files",
        Duration::from_secs(5),
    );
    assert_eq!(p.files_in("tmp"), 0);
    assert_eq!(p.queued_ids(), [old]);
    assert_eq!(p.body(old), b"Subject: old\r\n\r\nkept\r\n");
    assert!(p.envelope(old).contains("rcpt addr=alice@example.com"));
}

#[test]
fn queue_sync_filesystem_delivers_and_quarantines_torn_files() {
    use postern::spool::envelope::{EnvRcpt, Envelope};
    use postern::spool::{Durability, Spool};
    let ids = std::sync::Mutex::new(Vec::new());
    let p = Postern::start_with(|d| {
        // Two messages queued under queue-sync filesystem; then one is torn
        // as a power loss can leave a file renamed before it was durable.
        let spool = Spool::open(&d.join("queue"))
            .unwrap()
            .with_durability(Durability::Filesystem);
        let mut env = Envelope {
            arrival: postern::time::unix_now(),
            from: "a@sender.test".into(),
            helo: "x".into(),
            client: "127.0.0.1".into(),
            rcpts: vec![EnvRcpt::pending("alice@example.com", "local")],
            ..Envelope::default()
        };
        for text in [
            "Subject: whole\r\n\r\nkept\r\n",
            "Subject: torn\r\n\r\nlost\r\n",
        ] {
            ids.lock()
                .unwrap()
                .push(spool.submit(text.as_bytes(), &mut env).unwrap());
        }
        let torn = spool.body_path(&ids.lock().unwrap()[1]);
        let mut bytes = std::fs::read(&torn).unwrap();
        bytes[..8].fill(0);
        std::fs::write(&torn, bytes).unwrap();
        standard_config(d).replace("/cert.pem/%{user}/Maildir", "/mail/%{user}/Maildir")
            + "limit queue-sync filesystem\n"
    });
    let ids = ids.into_inner().unwrap();
    let line = p.wait_log("is unusable", Duration::from_secs(5));
    assert!(
        line.contains(&ids[1]) && line.contains("do not match the checksum"),
        "{line}"
    );
    p.wait_log(
        "(queue-sync filesystem): 1 messages (0 rewritten from the two-file layout), removed 0 temporary and 0 orphan files, 1 moved to corrupt/, 0 spare files",
        Duration::from_secs(5),
    );
    assert!(p.queue().join(format!("corrupt/{}.msg", ids[1])).exists());
    // New mail goes through the shared syncfs commit and is delivered with
    // the whole one.
    let id = crate::harness::submit(
        p.plain(),
        "a@sender.test",
        &["alice@example.com"],
        "Subject: new\r\n\r\nsynced\r\n",
    );
    let maildir = p.dir.path().join("mail/alice/Maildir");
    crate::harness::wait_until(Duration::from_secs(10), "both delivered", || {
        crate::harness::maildir_files(&maildir).len() == 2
    });
    let texts: Vec<String> = crate::harness::maildir_files(&maildir)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    assert!(texts.iter().any(|t| t.contains("Subject: whole")));
    assert!(texts.iter().any(|t| t.contains("Subject: new")));
    p.wait_log(
        &format!("{id}: to=<alice@example.com>"),
        Duration::from_secs(5),
    );
}

#[test]
fn sni_picks_the_matching_pki() {
    let p = Postern::start_with(|d| {
        let other = make_cert(&["other.test"]);
        write_mode(&d.join("other.pem"), &other.cert_pem, 0o644);
        write_mode(&d.join("other.key"), &other.key_pem, 0o600);
        std::fs::write(d.join("other.der"), other.der.as_ref()).unwrap();
        standard_config(d)
            + &format!(
                "pki other.test cert \"{0}/other.pem\"\npki other.test key \"{0}/other.key\"\n",
                d.display()
            )
    });
    let other_der = rustls::pki_types::CertificateDer::from(
        std::fs::read(p.dir.path().join("other.der")).unwrap(),
    );
    let mut c = Conn::connect(p.tls(), &other_der);
    c.expect("220");
    c.cmd("STARTTLS", "220");
    c.tls("other.test").unwrap();
    assert_eq!(c.tls_info().unwrap().1, other_der.to_vec());
    c.ehlo();
    // Unknown names get the listener's own certificate.
    let mut d = Conn::connect(p.tls(), &p.cert.der);
    d.expect("220");
    d.cmd("STARTTLS", "220");
    d.tls("localhost").unwrap();
    assert_eq!(d.tls_info().unwrap().1, p.cert.der.to_vec());
}

#[test]
fn ipv6_loopback_listener() {
    let p = Postern::start_with(|d| standard_config(d) + "listen on ::1 port 0 tls pki mx.test\n");
    let v6 = p.addrs[4];
    assert!(v6.is_ipv6());
    let mut c = Conn::connect(v6, &p.cert.der);
    c.expect("220");
    let caps = c.ehlo();
    assert!(caps.contains("[::1]"), "{caps}");
    c.starttls();
    c.ehlo();
}

#[test]
fn sighup_reload_takes_new_certificate() {
    let p = Postern::start();
    let mut open = Conn::connect(p.tls(), &p.cert.der);
    open.expect("220");
    open.starttls();
    open.ehlo();
    let fresh = make_cert(&["mx.test"]);
    write_mode(&p.dir.path().join("cert.pem"), &fresh.cert_pem, 0o644);
    write_mode(&p.dir.path().join("key.pem"), &fresh.key_pem, 0o600);
    p.signal("HUP");
    p.wait_log("reload: configuration", Duration::from_secs(5));
    let mut c = Conn::connect(p.tls(), &fresh.der);
    c.expect("220");
    c.starttls();
    assert_eq!(c.tls_info().unwrap().1, fresh.der.to_vec());
    // The session opened before the reload carries on.
    open.cmd("MAIL FROM:<a@sender.test>", "250");
    open.cmd("RCPT TO:<alice@example.com>", "250");
    open.cmd("DATA", "354");
    open.cmd(".", "250 2.0.0");
    // A broken config is refused and the running one kept.
    std::fs::write(&p.config, "bogus\n").unwrap();
    p.signal("HUP");
    p.wait_log("reload refused", Duration::from_secs(5));
    let mut again = Conn::connect(p.tls(), &fresh.der);
    again.expect("220");
}

#[test]
fn sample_config_is_valid() {
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/postern.conf")).unwrap();
    let conf = sample
        .replace("/etc/postern/cert.pem", "DIR/cert.pem")
        .replace("/etc/postern/key.pem", "DIR/key.pem")
        .replace("/etc/postern/users", "DIR/users")
        .replace("/etc/postern/aliases", "DIR/aliases")
        .replace("/var/spool/postern", "DIR/q")
        // The sample names the _postern user, which a build machine lacks.
        .replace("user \"_postern\"", "");
    let (ok, text) = check(&conf, |d| {
        std::fs::write(d.join("aliases"), "abuse: alice\n").unwrap()
    });
    assert!(ok, "{text}");
}
