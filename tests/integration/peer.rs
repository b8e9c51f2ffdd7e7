//! A receiving server played from a script, for what no real MTA will do
//! on demand: break a TLS handshake, refuse STARTTLS, answer slowly, or
//! run an arbitrary hostile function for one connection. It records every
//! command and message it receives, per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::JoinHandle;
use std::time::Duration;

/// A connection handled by hand: the writer and a reader on it.
pub type Hostile = fn(&mut TcpStream, &mut BufReader<TcpStream>);

/// How a scripted connection answers STARTTLS.
#[derive(Clone, Copy)]
pub enum StartTls {
    /// With this reply (a refusal such as `454 4.7.0 ...`).
    Reply(&'static str),
    /// 220, then garbage instead of a ServerHello, then close.
    NotTls,
}

/// One connection's behaviour.
#[derive(Clone, Copy)]
pub struct Script {
    /// Sent first.
    pub greeting: &'static str,
    /// The EHLO reply, lines joined by `\r\n`.
    pub ehlo: &'static str,
    /// What STARTTLS gets.
    pub starttls: StartTls,
    /// The reply to the end of a message.
    pub end: &'static str,
    /// Waited before the greeting and before every reply.
    pub pause: Duration,
}

impl Default for Script {
    fn default() -> Script {
        Script {
            greeting: "220 peer.test ESMTP",
            ehlo: "250-peer.test\r\n250 8BITMIME",
            starttls: StartTls::Reply("502 5.5.1 not offered"),
            end: "250 2.0.0 got it",
            pause: Duration::ZERO,
        }
    }
}

/// What one connection does.
pub enum Turn {
    /// Follow a script.
    Script(Script),
    /// Run a function.
    Raw(Hostile),
}

/// What one connection received.
#[derive(Debug, Default)]
pub struct Seen {
    /// Command lines, upper-cased, in order.
    pub commands: Vec<String>,
    /// Message bodies (as sent, dot-stuffed, without the final dot).
    pub bodies: Vec<String>,
}

/// A scripted server on `ip`, serving one connection per turn in order.
pub struct ScriptedPeer {
    pub port: u16,
    thread: JoinHandle<Vec<Seen>>,
}

impl ScriptedPeer {
    pub fn start(ip: &str, turns: Vec<Turn>) -> ScriptedPeer {
        let l = TcpListener::bind(format!("{ip}:0")).unwrap();
        let port = l.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let mut all = Vec::new();
            for turn in turns {
                let Ok((s, _)) = l.accept() else { break };
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                all.push(match turn {
                    Turn::Raw(f) => {
                        f(&mut w, &mut r);
                        Seen::default()
                    }
                    Turn::Script(script) => serve(&script, &mut w, &mut r),
                });
            }
            all
        });
        ScriptedPeer { port, thread }
    }

    /// Wait until every turn was served; what each connection received.
    pub fn join(self) -> Vec<Seen> {
        self.thread.join().unwrap()
    }
}

fn serve(script: &Script, w: &mut TcpStream, r: &mut BufReader<TcpStream>) -> Seen {
    let mut seen = Seen::default();
    let say = |w: &mut TcpStream, text: &str| {
        std::thread::sleep(script.pause);
        w.write_all(format!("{text}\r\n").as_bytes()).is_ok()
    };
    if !say(w, script.greeting) {
        return seen;
    }
    // Bounded: at most 100 commands per connection.
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let cmd = line.trim_end().to_ascii_uppercase();
        seen.commands.push(cmd.clone());
        let reply = match cmd.as_str() {
            c if c.starts_with("EHLO") => script.ehlo,
            "STARTTLS" => match script.starttls {
                StartTls::Reply(text) => text,
                StartTls::NotTls => {
                    let _ = say(w, "220 go ahead");
                    // The ClientHello, answered with something that is
                    // not a ServerHello: the handshake must fail.
                    let mut hello = [0u8; 512];
                    let _ = r.read(&mut hello);
                    let _ = w.write_all(b"this is not TLS\r\n\r\n");
                    break;
                }
            },
            "DATA" => {
                if !say(w, "354 go ahead") {
                    break;
                }
                let mut body = String::new();
                // Bounded by the client's message and the read timeout.
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).unwrap_or(0) == 0 {
                        return seen;
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    body.push_str(&l);
                }
                seen.bodies.push(body);
                script.end
            }
            "QUIT" => {
                let _ = say(w, "221 2.0.0 bye");
                break;
            }
            c if c.starts_with("MAIL")
                || c.starts_with("RCPT")
                || c.starts_with("RSET")
                || c.starts_with("HELO")
                || c == "NOOP" =>
            {
                "250 2.0.0 ok"
            }
            _ => "502 5.5.1 unknown command",
        };
        if !say(w, reply) {
            break;
        }
    }
    seen
}

/// Read one command line, upper-cased (for hostile functions).
pub fn read_cmd(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    let _ = r.read_line(&mut l);
    l.trim_end().to_ascii_uppercase()
}

/// A private Postfix sink (`../shared/peers/postfix.sh ... sink`, Maildir
/// delivery) on 127.0.0.1, stopped when dropped. Needs root and Postfix
/// (installed with debconf "No configuration", as .ci/run does).
pub struct PostfixSink {
    pub port: u16,
    base: std::path::PathBuf,
}

fn postfix_sh(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/peers/postfix.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .expect("run postfix.sh");
    assert!(
        out.status.success() || args[0] == "stop",
        "postfix.sh {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl PostfixSink {
    pub fn start() -> PostfixSink {
        use std::sync::atomic::{AtomicU16, Ordering};
        // postfix.sh takes ports 10000-10999; tests run in parallel.
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let port = (0..1000)
            .map(|_| {
                10000
                    + (std::process::id() as u16 % 500 + NEXT.fetch_add(1, Ordering::Relaxed))
                        % 1000
            })
            .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port in 10000-10999");
        // Its daemons run as `postfix`: the base must be reachable by it.
        let base = std::path::PathBuf::from(format!("/tmp/postern-tests/postfix-{port}"));
        std::fs::create_dir_all(&base).unwrap();
        for d in ["/tmp/postern-tests", base.to_str().unwrap()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        postfix_sh(&["start", base.to_str().unwrap(), &port.to_string(), "sink"]);
        PostfixSink { port, base }
    }

    /// Messages in the sink's Maildir.
    pub fn delivered(&self) -> usize {
        postfix_sh(&["delivered", self.base.to_str().unwrap()])
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("maillog")).unwrap_or_default()
    }

    /// (SMTP sessions served, most at once, of them with TLS), from the
    /// log's `connect from` / `disconnect from` lines.
    pub fn sessions(&self) -> (usize, usize, usize) {
        let log = self.log();
        let (mut total, mut now, mut most) = (0, 0usize, 0);
        for l in log.lines().filter(|l| l.contains("postfix/smtpd[")) {
            if l.contains(": connect from ") {
                total += 1;
                now += 1;
                most = most.max(now);
            } else if l.contains(": disconnect from ") {
                now = now.saturating_sub(1);
            }
        }
        let tls = log.matches("TLS connection established from").count();
        (total, most, tls)
    }
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        postfix_sh(&["stop", self.base.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
