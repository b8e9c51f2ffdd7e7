//! The spool: the only hand-off between receiving and delivering.
//!
//! Layout under `queue`:
//!
//! ```text
//! tmp/X/          messages being received; emptied at every start
//! mail/X/ID.body  committed message: Received header + body as received
//! mail/X/ID.env   its envelope (see [`envelope`]); present = committed
//! corrupt/        files that could not be read, kept for inspection
//! ```
//!
//! `X` is the id's last hex digit (16 buckets, see [`BUCKETS`]).
//!
//! Commit order (SPEC §4): body and envelope are written under `tmp/` and
//! each `fsync`ed, the body is renamed into `mail/`, then the envelope, and
//! `mail/` itself is `fsync`ed; only then does [`Incoming::commit`] return
//! and the client get its 250. A crash before the envelope rename leaves at
//! most an orphan `.body`, which the start-up scan removes: such a message
//! was never acknowledged. An [`Incoming`] dropped without commit removes its
//! temporary file, so a client that disconnects mid-DATA leaves nothing.

pub mod envelope;
mod group;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use envelope::Envelope;

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    mail: PathBuf,
    corrupt: PathBuf,
    notify: Option<crossbeam_channel::Sender<Envelope>>,
    /// One group commit per bucket of `mail/`.
    dirsync: std::sync::Arc<Vec<group::DirSync>>,
}

/// Bucket directories with removals not yet fsynced.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unsynced([bool; BUCKETS]);

impl Unsynced {
    /// Some fsync is owed.
    pub fn any(&self) -> bool {
        self.0.iter().any(|b| *b)
    }
}

/// Sub-directories of `tmp/` and `mail/`, by the id's last hex digit:
/// consecutive messages land in different directories, so sessions do not
/// queue on one directory's lock and ext4 spreads their inodes.
const BUCKETS: usize = 16;

fn bucket(id: &str) -> usize {
    id.chars().last().and_then(|c| c.to_digit(16)).unwrap_or(0) as usize % BUCKETS
}

fn bucket_name(b: usize) -> String {
    format!("{b:x}")
}

/// What the start-up scan found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Committed messages.
    pub messages: usize,
    /// Temporary files removed.
    pub removed_tmp: usize,
    /// Orphan bodies (crash mid-commit) removed.
    pub removed_orphans: usize,
    /// Files moved to `corrupt/`.
    pub quarantined: usize,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new queue id: 13 hex digits of microseconds since 1970, then 3 of a
/// process-wide counter. Ids sort by arrival and are safe as file names.
pub fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfff;
    format!("{:013X}{n:03X}", micros & 0xf_ffff_ffff_ffff)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn mkdir(p: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Annotate an I/O error with the path it concerns.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Spool {
    /// Open (creating if needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let s = Spool {
            root: root.to_path_buf(),
            tmp: root.join("tmp"),
            mail: root.join("mail"),
            corrupt: root.join("corrupt"),
            notify: None,
            dirsync: std::sync::Arc::new((0..BUCKETS).map(|_| group::DirSync::default()).collect()),
        };
        fs::create_dir_all(root).map_err(|e| at(root, e))?;
        for d in [&s.tmp, &s.mail, &s.corrupt] {
            mkdir(d).map_err(|e| at(d, e))?;
        }
        for b in 0..BUCKETS {
            for d in [s.tmp.join(bucket_name(b)), s.mail.join(bucket_name(b))] {
                mkdir(&d).map_err(|e| at(&d, e))?;
            }
        }
        Ok(s)
    }

    /// Hand `tx` the envelope of every message committed from now on (the
    /// scheduler picks new mail up at once, without polling or re-reading).
    pub fn with_notify(mut self, tx: crossbeam_channel::Sender<Envelope>) -> Spool {
        self.notify = Some(tx);
        self
    }

    /// Rewrite a committed envelope atomically: new file, fsync, rename
    /// over the old one, fsync the directory.
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        let tmp = self.tmp_of(&env.id).join(format!("{}.env.update", env.id));
        let _ = fs::remove_file(&tmp);
        let done = write_synced(&tmp, env.to_text().as_bytes())
            .and_then(|_| fs::rename(&tmp, self.envelope_path(&env.id)).map_err(|e| at(&tmp, e)))
            .and_then(|_| {
                let dir = self.mail_of(&env.id);
                fsync_dir(&dir).map_err(|e| at(&dir, e))
            });
        if done.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        done
    }

    /// Remove finished messages and make the removal durable.
    pub fn remove(&self, ids: &[&str]) -> io::Result<()> {
        let mut owed = Unsynced::default();
        self.unlink(ids, &mut owed)?;
        self.sync_owed(&mut owed)
    }

    /// Remove finished messages, each envelope before its body (a crash in
    /// between leaves an orphan body, which the next start removes), and
    /// note in `owed` the directories whose fsync makes it durable.
    pub fn unlink(&self, ids: &[&str], owed: &mut Unsynced) -> io::Result<()> {
        for id in ids {
            owed.0[bucket(id)] = true;
            let env = self.envelope_path(id);
            match fs::remove_file(&env) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&env, e)),
                _ => {}
            }
            let body = self.body_path(id);
            match fs::remove_file(&body) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&body, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// fsync the directories `owed` names.
    pub fn sync_owed(&self, owed: &mut Unsynced) -> io::Result<()> {
        for b in 0..BUCKETS {
            if owed.0[b] {
                let dir = self.mail.join(bucket_name(b));
                fsync_dir(&dir).map_err(|e| at(&dir, e))?;
                owed.0[b] = false;
            }
        }
        Ok(())
    }

    fn mail_of(&self, id: &str) -> PathBuf {
        self.mail.join(bucket_name(bucket(id)))
    }

    fn tmp_of(&self, id: &str) -> PathBuf {
        self.tmp.join(bucket_name(bucket(id)))
    }

    /// Every file in the buckets of `dir`.
    fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            let d = dir.join(bucket_name(b));
            for e in fs::read_dir(&d).map_err(|e| at(&d, e))? {
                out.push(e?.path());
            }
        }
        Ok(out)
    }

    /// Queue a message made here (a bounce): body and envelope in one go.
    pub fn submit(&self, body: &[u8], env: &mut Envelope) -> io::Result<String> {
        let mut m = self.begin()?;
        env.id = m.id().to_string();
        env.size = body.len() as u64;
        m.write(body);
        let id = env.id.clone();
        m.commit(env)?;
        Ok(id)
    }

    /// The spool's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Start-up scan: empty `tmp/`, drop orphan bodies, quarantine
    /// envelopes that do not parse or lost their body.
    pub fn recover(&self) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        for p in Self::files_in(&self.tmp)? {
            fs::remove_file(&p).map_err(|e| at(&p, e))?;
            report.removed_tmp += 1;
        }
        let mut entries = Self::files_in(&self.mail)?;
        entries.sort();
        for p in entries {
            // Quarantine moves pairs, so a later entry may already be gone.
            if !p.exists() {
                continue;
            }
            let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            if let Some(id) = name.strip_suffix(".body") {
                if !self.envelope_path(id).exists() {
                    fs::remove_file(&p).map_err(|e| at(&p, e))?;
                    report.removed_orphans += 1;
                }
            } else if let Some(id) = name.strip_suffix(".env") {
                let problem = match fs::read_to_string(&p) {
                    Err(e) => Some(e.to_string()),
                    Ok(t) => Envelope::parse(&t).err(),
                }
                .or_else(|| {
                    (!self.body_path(id).exists()).then(|| "body file is missing".to_string())
                });
                match problem {
                    Some(why) => {
                        log::error!(
                            "spool: {} is unusable ({why}); moved to {}",
                            p.display(),
                            self.corrupt.display()
                        );
                        self.quarantine(id)?;
                        report.quarantined += 1;
                    }
                    None => report.messages += 1,
                }
            }
        }
        for b in 0..BUCKETS {
            let dir = self.mail.join(bucket_name(b));
            fsync_dir(&dir).map_err(|e| at(&dir, e))?;
        }
        Ok(report)
    }

    fn quarantine(&self, id: &str) -> io::Result<()> {
        for ext in ["env", "body"] {
            let from = self.mail_of(id).join(format!("{id}.{ext}"));
            if from.exists() {
                let to = self.corrupt.join(format!("{id}.{ext}"));
                fs::rename(&from, &to).map_err(|e| at(&from, e))?;
            }
        }
        Ok(())
    }

    /// Start receiving a message.
    pub fn begin(&self) -> io::Result<Incoming> {
        // A fresh id can only collide with a file from an earlier process in
        // the same microsecond; create_new makes that an error, so try again.
        let mut last = None;
        for _ in 0..8 {
            let id = new_id();
            let path = self.tmp_of(&id).join(format!("{id}.body"));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => {
                    return Ok(Incoming {
                        spool: self.clone(),
                        id,
                        body_path: path,
                        file: Some(BufWriter::with_capacity(64 * 1024, f)),
                        failed: None,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(at(&path, e)),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free queue id")))
    }

    /// Ids of committed messages, oldest first.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = Self::files_in(&self.mail)?
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(".env")
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Read a committed envelope.
    pub fn envelope(&self, id: &str) -> io::Result<Envelope> {
        let p = self.envelope_path(id);
        let text = fs::read_to_string(&p).map_err(|e| at(&p, e))?;
        Envelope::parse(&text).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", p.display()))
        })
    }

    /// Path of a committed body.
    pub fn body_path(&self, id: &str) -> PathBuf {
        self.mail_of(id).join(format!("{id}.body"))
    }

    /// Path of a committed envelope.
    pub fn envelope_path(&self, id: &str) -> PathBuf {
        self.mail_of(id).join(format!("{id}.env"))
    }
}

/// A message being received; dropped without [`Incoming::commit`], it
/// leaves nothing behind.
pub struct Incoming {
    spool: Spool,
    id: String,
    body_path: PathBuf,
    file: Option<BufWriter<File>>,
    failed: Option<io::Error>,
}

impl Incoming {
    /// Its queue id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Append body bytes. After the first failure further writes are
    /// skipped and [`Incoming::commit`] reports it.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if let Some(f) = self.file.as_mut()
            && let Err(e) = f.write_all(bytes)
        {
            self.failed = Some(at(&self.body_path, e));
        }
    }

    /// Make the message durable: only when this returns Ok may the client
    /// be told 250.
    pub fn commit(mut self, env: &Envelope) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let Some(f) = self.file.take() else {
            return Err(io::Error::other("message already committed"));
        };
        let f = f
            .into_inner()
            .map_err(|e| at(&self.body_path, e.into_error()))?;
        f.sync_all().map_err(|e| at(&self.body_path, e))?;
        drop(f);
        let env_tmp = self.spool.tmp_of(&self.id).join(format!("{}.env", self.id));
        let written = write_synced(&env_tmp, env.to_text().as_bytes());
        if let Err(e) = written {
            let _ = fs::remove_file(&env_tmp);
            return Err(e);
        }
        let body_final = self.spool.body_path(&self.id);
        let env_final = self.spool.envelope_path(&self.id);
        let renamed = fs::rename(&self.body_path, &body_final)
            .map_err(|e| at(&self.body_path, e))
            .and_then(|_| fs::rename(&env_tmp, &env_final).map_err(|e| at(&env_tmp, e)))
            .and_then(|_| self.spool.dirsync[bucket(&self.id)].sync(&self.spool.mail_of(&self.id)));
        if let Err(e) = renamed {
            // Undo whatever got into mail/: the client will be told 452, so
            // the message must not be delivered.
            let _ = fs::remove_file(&env_final);
            let _ = fs::remove_file(&body_final);
            let _ = fs::remove_file(&env_tmp);
            return Err(e);
        }
        self.body_path = PathBuf::new();
        if let Some(n) = &self.spool.notify {
            // The scheduler may be gone during shutdown; the message is
            // safe on disk and found by the next start's scan.
            let _ = n.send(env.clone());
        }
        Ok(())
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| at(path, e))?;
    f.write_all(bytes).map_err(|e| at(path, e))?;
    f.sync_all().map_err(|e| at(path, e))
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file = None;
        if !self.body_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.body_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::envelope::{EnvRcpt, RcptState};
    use super::*;

    fn env(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            arrival: 1,
            from: "a@b.example".into(),
            rcpts: vec![EnvRcpt {
                addr: "c@d.example".into(),
                action: "local".into(),
                state: RcptState::Pending,
                attempts: 0,
                next_try: 0,
                error: String::new(),
            }],
            ..Envelope::default()
        }
    }

    fn count(dir: &Path) -> usize {
        Spool::files_in(dir).unwrap().len()
    }

    #[test]
    fn commit_makes_both_files() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut m = s.begin().unwrap();
        let id = m.id().to_string();
        m.write(b"hello\r\n");
        m.commit(&env(&id)).unwrap();
        assert_eq!(fs::read(s.body_path(&id)).unwrap(), b"hello\r\n");
        assert_eq!(s.envelope(&id).unwrap(), env(&id));
        assert_eq!(count(&s.tmp), 0);
        assert_eq!(s.list().unwrap(), [id]);
    }

    #[test]
    fn dropped_message_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut m = s.begin().unwrap();
        m.write(b"partial");
        assert_eq!(count(&s.tmp), 1);
        drop(m);
        assert_eq!(count(&s.tmp), 0);
        assert_eq!(count(&s.mail), 0);
    }

    #[test]
    fn ids_are_unique_and_ordered() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(
            ids.iter()
                .all(|i| i.len() == 16 && i.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn recover_cleans_and_quarantines() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut m = s.begin().unwrap();
        let good = m.id().to_string();
        m.write(b"x");
        m.commit(&env(&good)).unwrap();
        fs::write(s.tmp_of("LEFTOVER").join("LEFTOVER.body"), b"x").unwrap();
        fs::write(s.mail_of("ORPHAN").join("ORPHAN.body"), b"x").unwrap();
        fs::write(s.mail_of("BAD").join("BAD.env"), b"garbage").unwrap();
        fs::write(s.mail_of("BAD").join("BAD.body"), b"x").unwrap();
        fs::write(
            s.mail_of("NOBODY").join("NOBODY.env"),
            env("NOBODY").to_text(),
        )
        .unwrap();
        let r = s.recover().unwrap();
        assert_eq!(
            r,
            ScanReport {
                messages: 1,
                removed_tmp: 1,
                removed_orphans: 1,
                quarantined: 2
            }
        );
        assert_eq!(s.list().unwrap(), [good]);
        assert!(s.corrupt.join("BAD.env").exists() && s.corrupt.join("BAD.body").exists());
    }
}
