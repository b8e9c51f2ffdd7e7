//! `make bench` (delivery): time for one postern to deliver N queued 4 KiB
//! messages to a second postern over STARTTLS, connections reused.
//!
//! The messages are written straight into the sender's spool before it
//! starts, so the figure is pure delivery: scheduler, SMTP client, TLS and
//! the receiver's durable commits. Loopback only; bounded in time.

mod common;

use common::{free_port, wait_port, write};

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern::spool::Spool;

const N: usize = 2000;
const LIMIT: Duration = Duration::from_secs(300);

fn postern(conf: &Path) -> Child {
    // As root (CI, this machine), postern wants to be told to stay root.
    if nix::unistd::Uid::effective().is_root() {
        let mut text = std::fs::read_to_string(conf).unwrap();
        if !text.contains("\nuser ") {
            text.push_str("user root\n");
            std::fs::write(conf, text).unwrap();
        }
    }
    Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["-d", "-f"])
        .arg(conf)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postern")
}

fn main() {
    let dir = common::Scratch::new("4G");
    let d = dir.path();
    common::self_signed(d, "rcv.bench");
    let port = free_port();
    std::fs::create_dir_all(d.join("r")).unwrap();
    std::fs::create_dir_all(d.join("s")).unwrap();
    write(
        &d.join("r/postern.conf"),
        &format!(
            "hostname rcv.bench\nqueue \"{d}/r/q\"\npki rcv.bench cert \"{d}/cert.pem\"\npki rcv.bench key \"{d}/key.pem\"\n\
             listen on 127.0.0.1 port {port} tls\naction \"local\" maildir \"{d}/r/mail/%{{user}}\"\n\
             match from any for domain \"bench.test\" action \"local\"\nlimit workers 64\nlimit delivery-workers 0\n",
            d = d.display()
        ),
        0o644,
    );
    write(
        &d.join("s/postern.conf"),
        &format!(
            "hostname snd.bench\nqueue \"{d}/s/q\"\nlisten on 127.0.0.1 port 0\n\
             action \"out\" relay host smtp://127.0.0.1:{port} tls encrypt\n\
             match from local for any action \"out\"\nlimit delivery-workers 16\n",
            d = d.display()
        ),
        0o644,
    );
    // N messages of 4 KiB in the sender's spool, as a session would leave them.
    let spool = Spool::open(&d.join("s/q")).unwrap();
    let line = format!("{}\r\n", "x".repeat(78));
    let mut body = String::from(
        "Received: from bench ([127.0.0.1])\r\n\tby snd.bench (postern) with ESMTP id X;\r\n\tTue, 1 Dec 2026 00:00:00 +0000\r\nSubject: bench\r\n\r\n",
    );
    while body.len() < 4096 {
        body.push_str(&line);
    }
    for _ in 0..N {
        let mut env = common::envelope("load@snd.bench", "user@bench.test", "out");
        spool.submit(body.as_bytes(), &mut env).unwrap();
    }
    // Let the disk finish writing the spool back before the clock starts,
    // so the figure is delivery, not the set-up's write-back.
    nix::unistd::sync();
    std::thread::sleep(Duration::from_secs(2));
    let mut r = postern(&d.join("r/postern.conf"));
    wait_port(&format!("127.0.0.1:{port}"));
    let t0 = Instant::now();
    let mut s = postern(&d.join("s/postern.conf"));
    let mail = d.join("s/q/mail");
    let left = || common::queued(&mail);
    while left() > 0 && t0.elapsed() < LIMIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    let elapsed = t0.elapsed();
    let remaining = left();
    let _ = s.kill();
    let _ = r.kill();
    let _ = (s.wait(), r.wait());
    let delivered = N - remaining;
    println!(
        "delivery: {delivered}/{N} queued 4 KiB messages delivered postern -> postern over STARTTLS in {:.2}s = {:.0} msgs/s",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        remaining, 0,
        "not all messages were delivered within {LIMIT:?}"
    );
    // Fill in the (f) row of the results `make bench` just wrote.
    common::set_result_line(
        "(f) outbound",
        &format!(
            "(f) outbound: {N} queued 4 KiB messages delivered to a second postern over STARTTLS \
             (16 delivery threads, up to 20 messages per connection) in {:.2}s = {:.0} msgs/s.",
            elapsed.as_secs_f64(),
            N as f64 / elapsed.as_secs_f64()
        ),
    );
}
