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
    /// `schedule ID|all`.
    Schedule(String),
    /// `remove ID|all`.
    Remove(String),
}

/// A request and where to send the answer.
pub struct Message {
    /// What is asked.
    pub req: Request,
    /// Answer text (starting `ok` or `error:`).
    pub reply: Sender<String>,
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
        ["schedule", id] => Parsed::Queue(Request::Schedule(id.to_string())),
        ["remove", id] => Parsed::Queue(Request::Remove(id.to_string())),
        ["reload"] => Parsed::Reload,
        _ => {
            return Err(format!(
                "unknown command '{line}' (show queue, show stats, schedule ID|all, remove ID|all, reload)"
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
    let (tx, rx) = crossbeam_channel::bounded(1);
    match parse(line.trim()) {
        Err(e) => return format!("error: {e}\n"),
        Ok(Parsed::Queue(req)) => {
            if sched.send(Message { req, reply: tx }).is_err() {
                return "error: the scheduler is not running\n".into();
            }
        }
        Ok(Parsed::Reload) => {
            if reload.send(tx).is_err() || waker.wake().is_err() {
                return "error: the acceptor is not running\n".into();
            }
        }
    }
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| "error: no answer from the daemon within 30s\n".into())
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
            matches!(parse("remove 0123"), Ok(Parsed::Queue(Request::Remove(a))) if a == "0123")
        );
        assert!(matches!(parse("reload"), Ok(Parsed::Reload)));
        assert!(parse("show").unwrap_err().contains("unknown command"));
        assert!(parse("remove").is_err());
    }
}
