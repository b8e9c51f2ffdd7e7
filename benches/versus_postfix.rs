//! `make bench` (versus Postfix): the same 2,000 queued 4 KiB messages
//! delivered over STARTTLS into one Postfix sink (discard transport; it
//! still fsyncs each queue file before its 250), once by postern and once
//! by a Postfix relay, with the relay's messages held until the clock
//! starts (`../shared/peers/postfix.sh`). Postfix runs with its defaults:
//! one TLS session per message, as Debian ships it; then again with
//! `smtp_tls_connection_reuse = yes` (tlsproxy), for the record.
//!
//! Skips, saying why, where Postfix or the peer script is missing. Ports
//! 10000-10999 on 127.0.0.1 (the script's range); bounded in time.

mod common;

use common::postfix::{self, master_pid, postfix_sh, tree_cpu_ms};
use common::{run_ok, set_result_line, wait_port, write};

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern::spool::Spool;

const N: usize = 2000;
const LIMIT: Duration = Duration::from_secs(600);
const ROW: &str = "(j) outbound vs Postfix";

fn skip(why: &str) {
    println!("versus postfix: skipped: {why}");
    set_result_line(ROW, &format!("{ROW}: skipped ({why})."));
}

fn body() -> String {
    let line = format!("{}\r\n", "x".repeat(78));
    let mut body = String::from(
        "Received: from bench ([127.0.0.1])\r\n\tby snd.bench with ESMTP id X;\r\n\tTue, 1 Dec 2026 00:00:00 +0000\r\nSubject: bench\r\n\r\n",
    );
    while body.len() < 4096 {
        body.push_str(&line);
    }
    body
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    // idle + iowait
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How busy the machine was between two readings, in percent.
fn busy_since(start: (u64, u64)) -> f64 {
    let now = cpu_jiffies();
    let (b, t) = (now.0 - start.0, now.1 - start.1);
    if t == 0 {
        0.0
    } else {
        100.0 * b as f64 / t as f64
    }
}

/// Messages still queued in a Postfix instance.
fn postfix_queue(base: &Path) -> usize {
    postfix_sh(&[], &["queue", &base.display().to_string()])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(usize::MAX)
}

/// Submit `n` messages to the relay over plain SMTP, 100 per connection
/// (not timed: they are held until released).
fn submit(port: u16, n: usize, body: &str) -> Result<(), String> {
    let mut sent = 0;
    // Bounded: n / 100 connections.
    while sent < n {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let reply = |r: &mut BufReader<TcpStream>, want: char| -> Result<(), String> {
            // A reply: lines until one with a space after the code.
            for _ in 0..100 {
                let mut l = String::new();
                if r.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
                    return Err("relay closed the connection".into());
                }
                if l.len() >= 4 && l.as_bytes()[3] == b' ' {
                    return if l.starts_with(want) {
                        Ok(())
                    } else {
                        Err(format!("relay said {}", l.trim_end()))
                    };
                }
            }
            Err("endless reply".into())
        };
        reply(&mut r, '2')?;
        w.write_all(b"EHLO snd.bench\r\n")
            .map_err(|e| e.to_string())?;
        reply(&mut r, '2')?;
        for _ in 0..100.min(n - sent) {
            w.write_all(b"MAIL FROM:<load@snd.bench>\r\nRCPT TO:<user@bench.test>\r\nDATA\r\n")
                .map_err(|e| e.to_string())?;
            reply(&mut r, '2')?;
            reply(&mut r, '2')?;
            reply(&mut r, '3')?;
            w.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
            w.write_all(b".\r\n").map_err(|e| e.to_string())?;
            reply(&mut r, '2')?;
            sent += 1;
        }
        let _ = w.write_all(b"QUIT\r\n");
    }
    Ok(())
}

/// One timed delivery of the N messages.
struct Phase {
    /// Messages per second.
    rate: f64,
    /// How busy the whole machine was, percent of all cores.
    busy: f64,
    /// CPU milliseconds per message of the delivering MTA.
    sender: f64,
    /// CPU milliseconds per message of the sink.
    sink: f64,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} msgs/s ({:.2} ms CPU/msg; the sink {:.2} ms; machine {:.0}% busy)",
            self.rate, self.sender, self.sink, self.busy
        )
    }
}

/// Time `deliver` (which returns when all N are delivered, or an error),
/// measuring the sender's process tree and the sink's.
fn timed(
    sender: impl Fn() -> u32,
    sink: u32,
    deliver: impl FnOnce() -> Result<(), String>,
) -> Result<Phase, String> {
    let cpu = cpu_jiffies();
    let sink0 = tree_cpu_ms(sink);
    let sender0 = tree_cpu_ms(sender());
    let t0 = Instant::now();
    deliver()?;
    let elapsed = t0.elapsed().as_secs_f64();
    let busy = busy_since(cpu);
    let n = N as f64;
    Ok(Phase {
        rate: n / elapsed,
        busy,
        sender: (tree_cpu_ms(sender()) - sender0) / n,
        sink: (tree_cpu_ms(sink) - sink0) / n,
    })
}

/// Release the relay's held messages and wait until its queue is empty.
fn release(base: &Path) -> Result<(), String> {
    let t0 = Instant::now();
    postfix_sh(&[], &["release", &base.display().to_string()])?;
    while postfix_queue(base) > 0 {
        if t0.elapsed() > LIMIT {
            return Err(format!(
                "the Postfix relay did not empty its queue in {LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Wait until the relay holds `n` messages.
fn wait_held(base: &Path, n: usize) -> Result<(), String> {
    let t0 = Instant::now();
    while postfix_queue(base) < n {
        if t0.elapsed() > LIMIT {
            return Err(format!("only {} of {n} messages held", postfix_queue(base)));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn postern_phase(d: &Path, sink: u16, sink_pid: u32) -> Result<Phase, String> {
    std::fs::create_dir_all(d.join("s")).map_err(|e| e.to_string())?;
    let mut conf = format!(
        "hostname snd.bench\nqueue \"{d}/s/q\"\nlisten on 127.0.0.1 port 0\n\
         action \"out\" relay host smtp://127.0.0.1:{sink} tls encrypt\n\
         match from local for any action \"out\"\n",
        d = d.display()
    );
    if nix::unistd::Uid::effective().is_root() {
        conf.push_str("user root\n");
    }
    write(&d.join("s/postern.conf"), &conf, 0o644);
    let spool = Spool::open(&d.join("s/q")).map_err(|e| e.to_string())?;
    let body = body();
    for _ in 0..N {
        let mut env = common::envelope("load@snd.bench", "user@bench.test", "out");
        spool
            .submit(body.as_bytes(), &mut env)
            .map_err(|e| e.to_string())?;
    }
    nix::unistd::sync();
    std::thread::sleep(Duration::from_secs(2));
    let mail = d.join("s/q/mail");
    let left = || common::queued(&mail);
    let child = std::cell::RefCell::new(None::<Child>);
    let pid = || child.borrow().as_ref().map_or(0, Child::id);
    let phase = timed(pid, sink_pid, || {
        let s = Command::new(env!("CARGO_BIN_EXE_postern"))
            .args(["-d", "-f"])
            .arg(d.join("s/postern.conf"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        *child.borrow_mut() = Some(s);
        let t0 = Instant::now();
        while left() > 0 && t0.elapsed() < LIMIT {
            std::thread::sleep(Duration::from_millis(10));
        }
        match left() {
            0 => Ok(()),
            n => Err(format!(
                "postern left {n} messages undelivered after {LIMIT:?}"
            )),
        }
    });
    if let Some(mut s) = child.borrow_mut().take() {
        let _ = s.kill();
        let _ = s.wait();
    }
    phase
}

fn main() {
    if let Some(why) = postfix::unavailable() {
        return skip(&why);
    }
    let base = postfix::base("postern-vs-postfix");
    let (sink_base, relay_base) = (base.join("sink"), base.join("relay"));
    let sink = postfix::port_from(10200);
    let relay = postfix::port_from(sink + 1);
    let result = run(&base, &sink_base, &relay_base, sink, relay);
    for b in [&relay_base, &sink_base] {
        let _ = postfix_sh(&[], &["stop", &b.display().to_string()]);
    }
    let _ = std::fs::remove_dir_all(&base);
    match result {
        Ok(line) => {
            println!("versus postfix: {line}");
            set_result_line(ROW, &format!("{ROW}: {line}"));
        }
        Err(e) => {
            println!("versus postfix: failed: {e}");
            set_result_line(ROW, &format!("{ROW}: failed ({e})."));
            std::process::exit(1);
        }
    }
}

fn run(
    base: &Path,
    sink_base: &Path,
    relay_base: &Path,
    sink: u16,
    relay: u16,
) -> Result<String, String> {
    let (sb, rb) = (
        sink_base.display().to_string(),
        relay_base.display().to_string(),
    );
    postfix_sh(
        &[("DELIVERY", "discard"), ("IN_FLOW_DELAY", "0")],
        &["start", &sb, &sink.to_string(), "sink"],
    )?;
    wait_port(("127.0.0.1", sink));
    let sink_pid = master_pid(sink_base);
    // postern first, on its own.
    let ours = postern_phase(&base.join("postern"), sink, sink_pid)?;
    println!("versus postfix: postern {ours}");
    // The Postfix relay: the same messages, held, then released.
    postfix_sh(
        &[("IN_FLOW_DELAY", "0")],
        &[
            "start",
            &rb,
            &relay.to_string(),
            "relay",
            &format!("127.0.0.1:{sink}"),
        ],
    )?;
    wait_port(("127.0.0.1", relay));
    let body = body();
    // N messages held by the relay, then released and timed.
    let relay_phase = || -> Result<Phase, String> {
        submit(relay, N, &body)?;
        wait_held(relay_base, N)?;
        nix::unistd::sync();
        std::thread::sleep(Duration::from_secs(2));
        timed(|| master_pid(relay_base), sink_pid, || release(relay_base))
    };
    let theirs = relay_phase()?;
    println!("versus postfix: Postfix {theirs}");
    // Again with Postfix's TLS connection reuse, which goes through
    // tlsproxy(8): commented out in Debian's master.cf.
    std::fs::OpenOptions::new()
        .append(true)
        .open(relay_base.join("etc/master.cf"))
        .and_then(|mut f| f.write_all(b"tlsproxy unix - - n - 0 tlsproxy\n"))
        .map_err(|e| format!("enabling tlsproxy in the relay's master.cf: {e}"))?;
    let etc = format!("{rb}/etc");
    run_ok(
        "postconf",
        &["-c", &etc, "-e", "smtp_tls_connection_reuse = yes"],
    )?;
    run_ok("postfix", &["-c", &etc, "reload"])?;
    let reused = relay_phase()?;
    println!("versus postfix: Postfix with TLS connection reuse {reused}");
    Ok(format!(
        "{N} queued 4 KiB messages over STARTTLS into one Postfix sink (discard): \
         postern {ours}; Postfix relay with its defaults, one TLS session per message, {theirs}: \
         postern {:.1}x the rate at {:.1}x less CPU per message; Postfix with \
         smtp_tls_connection_reuse {reused}: {:.1}x the rate, {:.1}x less CPU.",
        ours.rate / theirs.rate,
        theirs.sender / ours.sender,
        ours.rate / reused.rate,
        reused.sender / ours.sender
    ))
}
