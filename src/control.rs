//! The control socket `QUEUE/postern.sock` (mode 600, the daemon's user)
//! and its one-line protocol, used by posternctl(8).
//!
//! A client sends one command line and reads the answer until the daemon
//! closes. The first answer line is `ok` or `error: why`. Queue commands
//! are answered by the scheduler (the queue's only owner), `reload` by the
//! acceptor.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

/// A queue request for the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `show queue`.
    ShowQueue,
    /// `show stats`.
    ShowStats,
    /// `show message ID`.
    ShowMessage(String),
    /// `schedule ID|all`.
    Schedule(String),
    /// `remove ID|all`.
    Remove(String),
    /// `tls-report show|send`.
    TlsReport {
        /// Send now (else show).
        send: bool,
    },
}

/// A request and where to send the answer.
pub struct Message {
    /// What is asked.
    pub req: Request,
    /// The scheduler's answer, or what was wrong with the request.
    pub reply: Sender<Result<Answer, String>>,
}

/// What the scheduler answers: data, formatted here.
#[derive(Debug)]
pub enum Answer {
    /// One row per recipient of every queued message.
    Queue(Vec<QueueRow>),
    /// The counters, and the queue's size and oldest message.
    Stats(crate::stats::Queue),
    /// How many messages were scheduled for now.
    Scheduled(usize),
    /// How many messages were removed.
    Removed(usize),
    /// Text to print as it is.
    Text(String),
    /// `show message`: the envelope's current text and the message file,
    /// read here, on the control thread, not on the scheduler's.
    Message {
        /// The envelope as the scheduler holds it.
        envelope: String,
        /// The committed message file.
        path: PathBuf,
    },
}

/// One recipient in the queue.
#[derive(Debug)]
pub struct QueueRow {
    /// Queue id.
    pub id: String,
    /// Seconds since arrival.
    pub age: u64,
    /// Envelope sender (empty for `<>`).
    pub from: String,
    /// The recipient.
    pub rcpt: String,
    /// `active`, `deferred`, `queued`, `sent` or `bounced`.
    pub state: &'static str,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The last failure, as stored.
    pub error: String,
}

/// The text posternctl prints for an answer.
fn render(answer: Result<Answer, String>) -> String {
    match answer {
        Err(e) => format!("error: {e}\n"),
        Ok(Answer::Queue(rows)) => {
            let mut out = String::from("ok\n");
            out.push_str(&format!(
                "{:<16}  {:>6}  {:<28}  {:<28}  {:<8}  {:>3}  {}\n",
                "ID", "AGE", "SENDER", "RECIPIENT", "STATE", "TRY", "LAST ERROR"
            ));
            for r in rows {
                out.push_str(&format!(
                    "{:<16}  {:>6}  {:<28}  {:<28}  {:<8}  {:>3}  {}\n",
                    r.id,
                    age(r.age),
                    format!("<{}>", r.from),
                    r.rcpt,
                    r.state,
                    r.attempts,
                    // Already printable when read; an envelope from an
                    // older postern may not be.
                    crate::smtp::response::printable(&r.error)
                ));
            }
            out
        }
        Ok(Answer::Stats(q)) => format!("ok\n{}", crate::stats::report(q)),
        Ok(Answer::Scheduled(n)) => format!("ok\n{n} messages scheduled\n"),
        Ok(Answer::Removed(n)) => format!("ok\n{n} messages removed\n"),
        Ok(Answer::Text(t)) => format!("ok\n{t}"),
        Ok(Answer::Message { envelope, path }) => match crate::spool::read_body(&path) {
            Ok(body) => format!(
                "ok\n{envelope}{}\n{}",
                path.display(),
                String::from_utf8_lossy(&body)
            ),
            Err(e) => format!("error: {e}\n"),
        },
    }
}

/// `42s`, `7m`, `3h`, `2d`.
fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// The socket's path for a queue directory.
pub fn socket_path(queue: &Path) -> PathBuf {
    queue.join("postern.sock")
}

#[derive(Debug)]
enum Parsed {
    Queue(Request),
    Reload,
}

fn parse(line: &str) -> Result<Parsed, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(match words.as_slice() {
        ["show", "queue"] => Parsed::Queue(Request::ShowQueue),
        ["show", "stats"] => Parsed::Queue(Request::ShowStats),
        ["show", "message", id] => Parsed::Queue(Request::ShowMessage(id.to_string())),
        ["schedule", id] => Parsed::Queue(Request::Schedule(id.to_string())),
        ["remove", id] => Parsed::Queue(Request::Remove(id.to_string())),
        ["reload"] => Parsed::Reload,
        ["tls-report", "show"] => Parsed::Queue(Request::TlsReport { send: false }),
        ["tls-report", "send"] => Parsed::Queue(Request::TlsReport { send: true }),
        _ => {
            return Err(format!(
                "unknown command '{line}' (show queue, show stats, show message ID, schedule ID|all, remove ID|all, reload, tls-report show|send)"
            ));
        }
    })
}

/// Bind the socket (replacing a stale one) and answer requests on a thread.
pub fn serve(
    path: &Path,
    sched: Sender<Message>,
    reload: Sender<Sender<String>>,
    waker: Arc<mio::Waker>,
) -> Result<(), String> {
    if UnixStream::connect(path).is_ok() {
        return Err(format!(
            "{} is in use: is another postern running on this queue?",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    // The socket is created with its final mode: no moment in which others
    // could connect (the daemon keeps umask 077 from here on, as Postfix's
    // master does; everything it creates has an explicit mode anyway).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let listener =
        UnixListener::bind(path).map_err(|e| format!("control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("control socket {}: {e}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let answer = handle(&conn, &sched, &reload, &waker);
                let mut conn = conn;
                let _ = conn.write_all(answer.as_bytes());
            }
        })
        .map_err(|e| format!("control thread: {e}"))?;
    Ok(())
}

fn handle(
    conn: &UnixStream,
    sched: &Sender<Message>,
    reload: &Sender<Sender<String>>,
    waker: &mio::Waker,
) -> String {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    // One line of at most 1 KiB.
    if BufReader::new(conn.take_ref(1024))
        .read_line(&mut line)
        .is_err()
    {
        return "error: no command received\n".into();
    }
    // Only root and the daemon's own user may steer it, whatever the
    // socket's mode says (a connection survives a chmod). Checked after
    // the read, so that the refused client reads the answer.
    match nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(c) if c.uid() == 0 || c.uid() == nix::unistd::Uid::effective().as_raw() => {}
        Ok(c) => {
            log::warn!("control: refused a client running as uid {}", c.uid());
            return "error: permission denied (only root and postern's own user)\n".into();
        }
        Err(e) => return format!("error: cannot identify the client: {e}\n"),
    }
    let late = || "error: no answer from the daemon within 30s\n".to_string();
    match parse(line.trim()) {
        Err(e) => format!("error: {e}\n"),
        Ok(Parsed::Queue(req)) => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if sched.send(Message { req, reply: tx }).is_err() {
                return "error: the scheduler is not running\n".into();
            }
            rx.recv_timeout(Duration::from_secs(30))
                .map_or_else(|_| late(), render)
        }
        Ok(Parsed::Reload) => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if reload.send(tx).is_err() || waker.wake().is_err() {
                return "error: the acceptor is not running\n".into();
            }
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| late())
        }
    }
}

trait TakeRef {
    fn take_ref(&self, n: u64) -> std::io::Take<&UnixStream>;
}

impl TakeRef for UnixStream {
    fn take_ref(&self, n: u64) -> std::io::Take<&UnixStream> {
        std::io::Read::take(self, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert!(matches!(
            parse("show queue"),
            Ok(Parsed::Queue(Request::ShowQueue))
        ));
        assert!(matches!(
            parse(" show  stats "),
            Ok(Parsed::Queue(Request::ShowStats))
        ));
        assert!(
            matches!(parse("schedule all"), Ok(Parsed::Queue(Request::Schedule(a))) if a == "all")
        );
        assert!(
            matches!(parse("show message 661A2453F0D05005"), Ok(Parsed::Queue(Request::ShowMessage(a))) if a == "661A2453F0D05005")
        );
        assert!(
            matches!(parse("remove 0123"), Ok(Parsed::Queue(Request::Remove(a))) if a == "0123")
        );
        assert!(matches!(parse("reload"), Ok(Parsed::Reload)));
        assert!(parse("show").unwrap_err().contains("unknown command"));
        assert!(parse("remove").is_err());
    }
}
