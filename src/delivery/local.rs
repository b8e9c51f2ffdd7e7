//! Maildir delivery: `tmp/` → fsync → link into `new/` → fsync `new/`.
//!
//! The file is the spooled message (our Received header and the body as
//! received) with Unix line ends: the spool keeps SMTP's CR LF, but mail
//! readers on Unix (s-nail, mutt) expect LF in a Maildir, as Postfix's
//! virtual(8), Exim's appendfile and Dovecot's LDA write it. Aliases are
//! expanded before `%{user}`; a failure of any kind defers, so a full disk
//! never drops mail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::outcome::Enhanced;
use super::{Disposition, Item, Outcome, RcptOutcome, Relay, Status, log_result};
use crate::config::table::Table;
use crate::smtp::address::parse_mailbox;

/// Local part as `%{user}` sees it.
fn user_of(addr: &str) -> String {
    match parse_mailbox(addr) {
        Some(m) => crate::smtp::address::user_part(&m),
        None => addr.split('@').next().unwrap_or(addr).to_ascii_lowercase(),
    }
}

/// Expand aliases (recursively, loops and depth bounded) into final users.
/// An alias that names itself (`alice: alice, bob`) delivers to its own
/// mailbox, as aliases(5) has it; one whose expansion only ever comes back
/// to names already expanded is a loop and yields nothing, which
/// [`deliver`] bounces.
pub fn expand(user: &str, alias: Option<&Table>) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(user.to_string(), 0)];
    let mut seen = std::collections::HashSet::new();
    while let Some((u, depth)) = todo.pop() {
        if !seen.insert(u.clone()) {
            continue;
        }
        match alias.and_then(|t| t.get(&u)).filter(|_| depth < 8) {
            Some(targets) => {
                for t in targets.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let t = user_of(t);
                    if t == u {
                        out.push(t);
                    } else {
                        todo.push((t, depth + 1));
                    }
                }
            }
            None => out.push(u),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn mkdirs(maildir: &Path) -> io::Result<()> {
    for sub in ["", "tmp", "new", "cur"] {
        let d = maildir.join(sub);
        match fs::DirBuilder::new().mode(0o700).recursive(true).create(&d) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The host part of Maildir names, looked up once: it is the same for
/// every delivery.
fn host_part() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into())
            .replace(['/', ':'], "_")
    })
}

/// Copy `src` to `dst` with each CR LF written as LF. A CR not followed by
/// LF is kept; a CR LF split between two reads is still one line end.
fn copy_to_lf(src: &mut impl io::Read, dst: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024 + 1);
    let mut pending_cr = false;
    // Bounded by the input: each pass reads more of it or ends.
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut rest = &buf[..n];
        if std::mem::take(&mut pending_cr) && rest.first() != Some(&b'\n') {
            out.push(b'\r');
        }
        // Runs between CRs are copied whole, found with memchr as the
        // session finds line ends: a byte at a time was the copy's cost.
        // Bounded by `rest`, which each pass shortens.
        while let Some(i) = memchr::memchr(b'\r', rest) {
            out.extend_from_slice(&rest[..i]);
            match rest.get(i + 1) {
                // The CR of a CR LF is dropped; its LF goes with the next run.
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
                None => pending_cr = true,
            }
            rest = &rest[i + 1..];
        }
        out.extend_from_slice(rest);
        dst.write_all(&out)?;
        out.clear();
    }
    if pending_cr {
        dst.write_all(b"\r")?;
    }
    Ok(())
}

/// Deliver one copy into `maildir`; returns the file's final path.
///
/// The file name comes from the message, not the clock: `ARRIVAL.KEY.HOST`
/// with `key` naming the queue id and recipient. A retry after a crash
/// between this delivery and the recording of its result finds the name
/// taken in `new/` and does not deliver twice. (XXX: a copy the user already
/// moved to `cur/` in that window would be delivered again.)
pub fn write_maildir(maildir: &Path, body: &Path, arrival: u64, key: &str) -> io::Result<PathBuf> {
    mkdirs(maildir)?;
    let host = host_part();
    let name = format!("{arrival}.{key}.{host}");
    // Named after the copy too: a retry after a crash removes the stale one.
    let tmp = maildir.join("tmp").join(&name);
    let new = maildir.join("new").join(&name);
    let _ = fs::remove_file(&tmp);
    let copy = || -> io::Result<()> {
        let mut src = crate::spool::open_body(body)?;
        let mut dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        copy_to_lf(&mut src, &mut dst)?;
        dst.flush()?;
        dst.sync_all()?;
        // link, not rename: an existing copy is an error, never replaced.
        match fs::hard_link(&tmp, &new) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                log::info!(
                    "{}: already delivered earlier, not delivering again",
                    new.display()
                );
            }
            r => r?,
        }
        fs::remove_file(&tmp)?;
        File::open(maildir.join("new"))?.sync_all()
    };
    copy().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(new)
}

/// Deliver every recipient of `item` with the maildir `template`.
pub fn deliver(item: &Item, template: &str, alias: Option<&Table>) -> Outcome {
    let mut results = Vec::new();
    for (idx, addr) in &item.rcpts {
        let mut errors = Vec::new();
        let mut paths = Vec::new();
        let key = format!("Q{}R{idx}", item.id);
        let users = expand(&user_of(addr), alias);
        if users.is_empty() {
            // Never "sent" to nobody.
            let r = RcptOutcome::ours(
                *idx,
                Disposition::Bounced,
                Status::new(
                    550,
                    Enhanced(5, 4, 6),
                    format!("alias loop: {} expands only to itself", user_of(addr)),
                ),
                Relay::Maildir,
            );
            log_result(item, addr, &r);
            results.push(r);
            continue;
        }
        for user in users {
            // Re-checked here, not only at RCPT: aliases can produce names.
            if !crate::smtp::address::safe_user(&user) {
                errors.push(format!("refusing unsafe user name '{user}'"));
                continue;
            }
            let dir = PathBuf::from(template.replace("%{user}", &user));
            match write_maildir(&dir, &item.body, item.arrival, &key) {
                Ok(p) => paths.push(p.display().to_string()),
                Err(e) => errors.push(format!("{}: {e}", dir.display())),
            }
        }
        // With several alias targets a partial failure defers all; the retry
        // finds the copies that succeeded already in new/ and skips them.
        let (disposition, status) = if errors.is_empty() {
            (
                Disposition::Sent,
                Status::new(
                    250,
                    Enhanced(2, 0, 0),
                    format!("delivered to maildir {}", paths.join(", ")),
                ),
            )
        } else {
            (
                Disposition::Deferred,
                Status::new(
                    451,
                    Enhanced(4, 3, 0),
                    format!("maildir delivery failed: {}", errors.join("; ")),
                ),
            )
        };
        let r = RcptOutcome::ours(*idx, disposition, status, Relay::Maildir);
        log_result(item, addr, &r);
        results.push(r);
    }
    Outcome {
        id: item.id.clone(),
        results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::lexer::lex;

    #[test]
    fn alias_expansion() {
        let l = lex(
            "t",
            "{ abuse = alice, team = \"bob, abuse\", loop = loop2, loop2 = loop, \
             me = \"me, bob\", self = self }",
        )
        .unwrap();
        let t = Table::inline(&l[0].tokens[1..]).unwrap();
        assert_eq!(expand("alice", Some(&t)), ["alice"]);
        assert_eq!(expand("abuse", Some(&t)), ["alice"]);
        assert_eq!(expand("team", Some(&t)), ["alice", "bob"]);
        assert!(expand("loop", Some(&t)).is_empty());
        assert_eq!(expand("me", Some(&t)), ["bob", "me"]);
        assert_eq!(expand("self", Some(&t)), ["self"]);
        assert_eq!(expand("x", None), ["x"]);
    }

    #[test]
    fn crlf_becomes_lf_wherever_reads_split_it() {
        let text = b"a\r\nb\rc\r\n\r\nd\r\r\ne\r";
        for chunk in 1..text.len() {
            struct Chunks<'a>(&'a [u8], usize);
            impl io::Read for Chunks<'_> {
                fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                    let n = self.0.len().min(self.1).min(b.len());
                    b[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut out = Vec::new();
            copy_to_lf(&mut Chunks(text, chunk), &mut out).unwrap();
            assert_eq!(out, b"a\nb\rc\n\nd\r\ne\r", "reads of {chunk}");
        }
    }

    #[test]
    fn maildir_copy_is_exact() {
        let d = tempfile::tempdir().unwrap();
        let text = b"Received: x\r\n\r\nhello\r\nbare\rcr\r\n";
        let body = crate::spool::sample_message(&d.path().join("q"), text);
        let p = write_maildir(&d.path().join("Maildir"), &body, 1, "QABCR0").unwrap();
        assert!(p.starts_with(d.path().join("Maildir/new")));
        assert!(
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("1.QABCR0.")
        );
        assert_eq!(fs::read(&p).unwrap(), b"Received: x\n\nhello\nbare\rcr\n");
        assert_eq!(
            fs::read_dir(d.path().join("Maildir/tmp")).unwrap().count(),
            0
        );
        assert!(d.path().join("Maildir/cur").is_dir());
        // The same delivery again (a retry after a crash) adds nothing.
        let again = write_maildir(&d.path().join("Maildir"), &body, 1, "QABCR0").unwrap();
        assert_eq!(again, p);
        assert_eq!(
            fs::read_dir(d.path().join("Maildir/new")).unwrap().count(),
            1
        );
        assert_eq!(
            fs::read_dir(d.path().join("Maildir/tmp")).unwrap().count(),
            0
        );
    }
}
