//! The spool: the only hand-off between receiving and delivering.
//!
//! Layout under `queue`:
//!
//! ```text
//! tmp/X/          messages being received; emptied at every start
//! mail/X/ID.msg   committed message; present = committed
//! mail/X/ID.env   later state of its envelope, once delivery changed it
//! free/           files of finished messages, kept to be rewritten
//! corrupt/        files that could not be read, kept for inspection
//! ```
//!
//! `X` is the id's last hex digit (16 buckets, see [`BUCKETS`]).
//!
//! A message is one file, so a commit costs one inode, one file fsync and
//! one rename:
//!
//! ```text
//! Received header + body as received       (bytes 0..N)
//! postern-envelope 1                        (the envelope, see [`envelope`])
//! ...
//! postern-body-length 00000000000000000N    (fixed width: found from the end)
//! ```
//!
//! The file is never written again after its commit. Delivery results go
//! to `ID.env` (new file, fsync, rename), which then supersedes the copy
//! inside `ID.msg`. Removal unlinks `ID.msg` before `ID.env`, so a crash in
//! between leaves only an `ID.env`, which the start-up scan removes.
//!
//! Commit order (postern(8) DURABILITY): the file is written under `tmp/`
//! and `fsync`ed, renamed into `mail/`, and `mail/X` itself is `fsync`ed (shared by
//! concurrent commits, see [`group`]); only then does [`Incoming::commit`]
//! return and the client get its 250. Under `limit queue-sync log` (the
//! default) a message of up to [`LOG_BODY`] is held in memory instead: its
//! file's contents are appended to the commit log first, then the file is
//! written straight into `mail/` without an fsync, and the log's shared
//! fdatasync stands in for all three (see [`commitlog`]). An [`Incoming`]
//! dropped without commit removes its temporary file, so a client that
//! disconnects mid-DATA leaves nothing. Spools of the earlier two-file
//! layout (`ID.body` + `ID.env`) are rewritten into this one by the
//! start-up scan.
//!
//! A finished message's file is not unlinked but renamed into `free/` (up
//! to [`SPARES`] files of at most [`SPARE_MAX`] bytes), and the next message
//! received is written over one of them and truncated before its fsync. A
//! relay that receives and delivers then creates and frees no inodes in
//! the spool at all: on ext4 without a journal every inode allocation scans
//! past the inodes freed in the last minutes, which made a new file cost
//! several times an fsync (see bench/RESULTS.md), and on any file system it
//! saves the inode and block allocation. A spare is only a name in `free/`:
//! it becomes a message by the same fsync and rename as a new file.

mod commitlog;
pub mod envelope;
mod group;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use envelope::Envelope;

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    // Shared, not owned: every message's Incoming holds a clone.
    root: std::sync::Arc<Path>,
    tmp: std::sync::Arc<Path>,
    mail: std::sync::Arc<Path>,
    corrupt: std::sync::Arc<Path>,
    notify: Option<crossbeam_channel::Sender<Envelope>>,
    free: std::sync::Arc<Path>,
    /// One group commit per bucket of `mail/`...
    dirsync: std::sync::Arc<Vec<group::Group>>,
    /// ...the bucket directories, held open for their fsyncs...
    mail_dirs: std::sync::Arc<Vec<File>>,
    /// ...or, with [`Durability::Filesystem`], one for the whole spool,
    /// whose syncfs(2) goes through `root_dir`.
    fs_group: std::sync::Arc<group::Group>,
    root_dir: std::sync::Arc<File>,
    durability: Durability,
    /// With [`Durability::Log`], once [`Spool::recover`] has read it.
    log: std::sync::Arc<std::sync::OnceLock<commitlog::Log>>,
    /// Names in `free/` that no message is being written to.
    spares: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// At most this many are kept (`limit spare-files`).
    spare_limit: usize,
    /// New messages are refused while less than this is free on the
    /// spool's file system (`limit queue-minfree`).
    min_free: u64,
    free_space: std::sync::Arc<std::sync::Mutex<FreeSpace>>,
}

/// The last statvfs(2) of the spool's file system, less what was committed
/// since: `begin` asks the kernel again only when that reading is older
/// than [`FreeSpace::FRESH`] or comes within [`FreeSpace::MARGIN`] times
/// the floor, so a message costs no statfs call while the disk is far
/// from full (postern.conf(5) `limit queue-minfree`).
#[derive(Debug, Default)]
struct FreeSpace {
    free: u64,
    at: Option<std::time::Instant>,
}

impl FreeSpace {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(1);
    const MARGIN: u64 = 4;

    /// The reading, if it may stand in for a new one against `floor`.
    fn usable(&self, floor: u64) -> Option<u64> {
        let fresh = self.at.is_some_and(|t| t.elapsed() < Self::FRESH);
        let far = floor
            .checked_mul(Self::MARGIN)
            .is_some_and(|near| self.free >= near);
        (fresh && far).then_some(self.free)
    }
}

/// How a commit becomes durable (`limit queue-sync`, postern(8) FILES).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// The message file is fsynced, renamed into `mail/X/`, and that
    /// directory fsynced (shared by the commits of the moment).
    #[default]
    File,
    /// The message file is written and renamed without an fsync, and one
    /// syncfs(2) of the spool's file system, shared by every commit of the
    /// moment, makes them all durable. For a spool with a file system of
    /// its own: the syncfs also writes whatever else is pending there.
    Filesystem,
    /// The message file is written and renamed without an fsync, and its
    /// whole contents appended to the commit log (`log/`), whose one
    /// fdatasync(2), shared by every commit of the moment, makes them all
    /// durable (see [`commitlog`]). Files larger than
    /// [`commitlog::RECORD_MAX`] are committed as under `File`.
    Log,
}

impl Durability {
    /// Every mode, for parsing and listing.
    pub const ALL: [Durability; 3] = [Durability::Log, Durability::File, Durability::Filesystem];

    /// Its word after `limit queue-sync`.
    pub fn name(self) -> &'static str {
        match self {
            Durability::File => "file",
            Durability::Filesystem => "filesystem",
            Durability::Log => "log",
        }
    }
}

/// syncfs(2) returns write-back errors only since Linux 5.8; before, a
/// failed write could pass unnoticed and a message be acknowledged that is
/// not on the disk, so `queue-sync filesystem` and `log` (whose segments
/// retire after a syncfs) refuse older kernels.
pub fn syncfs_reports_errors(d: Durability) -> Result<(), String> {
    let name = d.name();
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("limit queue-sync {name}: /proc/sys/kernel/osrelease: {e}"))?;
    kernel_at_least(release.trim(), (5, 8)).then_some(()).ok_or_else(|| {
        format!(
            "limit queue-sync {name} needs Linux 5.8 or later (syncfs(2) reports write errors only since then); this is {}",
            release.trim()
        )
    })
}

fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= want
}

/// At most this many spare files are kept in `free/` by default...
pub const SPARES: usize = 512;
/// ...each at most this large, so they hold at most 64 MiB of disk.
pub const SPARE_MAX: u64 = 128 * 1024;

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
    /// Leftovers of an interrupted removal or conversion removed.
    pub removed_orphans: usize,
    /// Messages of the two-file layout rewritten as one file.
    pub converted: usize,
    /// Spare files in `free/` kept for reuse.
    pub spares: usize,
    /// Message files written again from the commit log.
    pub replayed: usize,
    /// Files of finished messages removed by the commit log's records.
    pub replay_removed: usize,
    /// Files moved to `corrupt/`.
    pub quarantined: usize,
}

/// The last queue id handed out, as a number.
static LAST_ID: AtomicU64 = AtomicU64::new(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new queue id: 16 hex digits, 13 of microseconds since 1970 and 3 of a
/// process-wide counter, whose last digit spreads messages over the
/// buckets of `mail/`. Each id is above the one before it, whatever the
/// clock does, and above every id in `mail/` at start ([`Spool::recover`]),
/// so it never names a file that exists: no look before the file is made.
/// Ids sort by arrival and are safe as file names.
pub fn new_id() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xfff;
    let now = ((micros as u64) & 0xf_ffff_ffff_ffff) << 12 | n;
    let next = |last: u64| now.max(last.wrapping_add(1));
    let last = LAST_ID
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| Some(next(l)))
        .unwrap_or_else(|l| l);
    format!("{:016X}", next(last))
}

/// Ids handed out from now on sort above `id`, a file an earlier process
/// left; names that are not ids change nothing.
fn ids_above(id: &str) {
    if id.len() == 16
        && let Ok(v) = u64::from_str_radix(id, 16)
    {
        LAST_ID.fetch_max(v, Ordering::Relaxed);
    }
}

/// Create a spool directory (mode 700), or accept one that is a real
/// directory: a symlink in its place is refused, never followed.
fn mkdir(p: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let m = fs::symlink_metadata(p)?;
            if m.is_dir() {
                Ok(())
            } else {
                Err(io::Error::other(
                    "is a symlink or not a directory; the spool's directories must be real ones",
                ))
            }
        }
        r => r,
    }
}

/// Open a spool file for reading without following a symlink planted in
/// its place, nor blocking on a FIFO.
fn open_nofollow(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags::NOFOLLOW | libc_flags::NONBLOCK)
        .open(p)
}

fn read_text(p: &Path) -> io::Result<String> {
    let mut s = String::new();
    open_nofollow(p)?.read_to_string(&mut s)?;
    Ok(s)
}

mod libc_flags {
    pub const NOFOLLOW: i32 = nix::fcntl::OFlag::O_NOFOLLOW.bits();
    pub const NONBLOCK: i32 = nix::fcntl::OFlag::O_NONBLOCK.bits();
}

/// Annotate an I/O error with the path it concerns.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Spool {
    /// Open (creating if needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| at(parent, e))?;
        }
        mkdir(root).map_err(|e| at(root, e))?;
        let (tmp, mail) = (root.join("tmp"), root.join("mail"));
        let mut mail_dirs = Vec::with_capacity(BUCKETS);
        for d in [&tmp, &mail] {
            mkdir(d).map_err(|e| at(d, e))?;
        }
        for b in 0..BUCKETS {
            for d in [tmp.join(bucket_name(b)), mail.join(bucket_name(b))] {
                mkdir(&d).map_err(|e| at(&d, e))?;
            }
            let d = mail.join(bucket_name(b));
            mail_dirs.push(File::open(&d).map_err(|e| at(&d, e))?);
        }
        let s = Spool {
            root: root.into(),
            tmp: tmp.into(),
            mail: mail.into(),
            corrupt: root.join("corrupt").into(),
            free: root.join("free").into(),
            notify: None,
            dirsync: std::sync::Arc::new((0..BUCKETS).map(|_| group::Group::default()).collect()),
            mail_dirs: std::sync::Arc::new(mail_dirs),
            fs_group: Default::default(),
            root_dir: std::sync::Arc::new(File::open(root).map_err(|e| at(root, e))?),
            durability: Durability::File,
            log: Default::default(),
            spares: Default::default(),
            spare_limit: SPARES,
            min_free: 0,
            free_space: Default::default(),
        };
        // sts/: the MTA-STS policy cache (crate::sts); tlsrpt/: TLS
        // results for reports (crate::tlsrpt).
        let (sts, tlsrpt) = (root.join("sts"), root.join("tlsrpt"));
        for d in [&*s.corrupt, &*s.free, &sts, &tlsrpt] {
            mkdir(d).map_err(|e| at(d, e))?;
        }
        Ok(s)
    }

    /// Hand `tx` the envelope of every message committed from now on (the
    /// scheduler picks new mail up at once, without polling or re-reading).
    pub fn with_notify(mut self, tx: crossbeam_channel::Sender<Envelope>) -> Spool {
        self.notify = Some(tx);
        self
    }

    /// Keep at most `n` spare files (0: delete finished message files).
    /// Set before [`Spool::recover`], which deletes spares above the limit.
    pub fn with_spares(mut self, n: usize) -> Spool {
        self.spare_limit = n;
        self
    }

    /// Make commits durable as `d` says. Set before [`Spool::recover`],
    /// which checks every file's sum under [`Durability::Filesystem`].
    pub fn with_durability(mut self, d: Durability) -> Spool {
        self.durability = d;
        self
    }

    /// fsync bucket directory `b` of `mail/`, through its open descriptor.
    fn sync_bucket(&self, b: usize) -> io::Result<()> {
        self.mail_dirs[b]
            .sync_all()
            .map_err(|e| at(&self.mail.join(bucket_name(b)), e))
    }

    /// Run `flush`, or wait for a flush run by another commit, so that
    /// everything renamed before this call is durable.
    fn flush_bucket(&self, b: usize) -> io::Result<()> {
        match self.durability {
            // Under Log only files too large for the log come here.
            Durability::File | Durability::Log => self.dirsync[b].sync(|| self.sync_bucket(b)),
            Durability::Filesystem => self.fs_group.sync(|| syncfs(&self.root_dir, &self.root)),
        }
    }

    /// Rewrite a committed envelope atomically: new file, fsync, rename
    /// over the old one, fsync the directory.
    pub fn update(&self, env: &Envelope) -> io::Result<()> {
        let tmp = self.tmp_of(&env.id).join(format!("{}.env.update", env.id));
        let _ = fs::remove_file(&tmp);
        let done = write_synced(&tmp, env.to_text().as_bytes())
            .and_then(|_| fs::rename(&tmp, self.envelope_path(&env.id)).map_err(|e| at(&tmp, e)))
            .and_then(|_| self.sync_bucket(bucket(&env.id)));
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

    /// Remove finished messages, each message file before its envelope
    /// update (a crash in between leaves an orphan `.env`, which the next
    /// start removes), and note in `owed` the directories whose fsync makes
    /// it durable.
    pub fn unlink(&self, ids: &[&str], owed: &mut Unsynced) -> io::Result<()> {
        // Under queue-sync log the records go first: a message whose file
        // is gone but whose record is not would be written back at start.
        // Held until the files are gone: their segment retires only then.
        let mut pending = Vec::new();
        if let Some(log) = self.log.get() {
            let recs: Vec<_> = ids
                .iter()
                .map(|id| (commitlog::Kind::Done, *id, &[][..]))
                .collect();
            for part in recs.chunks(1024) {
                pending.push(log.append(part)?);
            }
        }
        for id in ids {
            owed.0[bucket(id)] = true;
            let msg = self.body_path(id);
            if !self.keep_spare(id, &msg) {
                match fs::remove_file(&msg) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&msg, e)),
                    _ => {}
                }
            }
            let env = self.envelope_path(id);
            match fs::remove_file(&env) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at(&env, e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Move a finished message file into `free/` if there is room for it;
    /// false: it is still in `mail/`, to be unlinked.
    fn keep_spare(&self, id: &str, msg: &Path) -> bool {
        // The lock is not held across the stat and the rename: sessions
        // taking spares would wait on the disk.
        let room = self.spares.lock().unwrap_or_else(|p| p.into_inner()).len() < self.spare_limit;
        if !room || !fs::metadata(msg).is_ok_and(|m| m.len() <= SPARE_MAX) {
            return false;
        }
        // Ids are unique, so the name is free; were it not, rename would
        // replace an idle spare, which is harmless.
        let spare = self.free.join(id);
        if fs::rename(msg, &spare).is_err() {
            return false;
        }
        // Filled meanwhile by returned spares: this one is deleted there.
        self.return_spare(&spare);
        true
    }

    /// Take a spare file to write a message over, if one is kept.
    fn take_spare(&self) -> Option<(PathBuf, File)> {
        // Bounded by SPARES: each pass drops one name.
        loop {
            let name = self
                .spares
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()?;
            let p = self.free.join(&name);
            // Gone (an operator cleaned free/) or unusable: forget it.
            if let Ok(f) = OpenOptions::new().write(true).open(&p) {
                return Some((p, f));
            }
        }
    }

    /// Keep `p` (in `free/`) as a spare, or delete it when there are enough.
    fn return_spare(&self, p: &Path) {
        if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            if spares.len() < self.spare_limit {
                spares.push(name.to_string());
                return;
            }
        }
        let _ = fs::remove_file(p);
    }

    /// List `free/` at start. A spare that is also linked elsewhere (a
    /// crash within a rename on a file system that does not make renames
    /// atomic) might be a message: it loses its `free/` name, never its
    /// contents.
    fn load_spares(&self) -> io::Result<usize> {
        use std::os::unix::fs::MetadataExt;
        let mut keep = Vec::new();
        for e in fs::read_dir(&self.free).map_err(|e| at(&self.free, e))? {
            let e = e.map_err(|e| at(&self.free, e))?;
            let p = e.path();
            let m = fs::symlink_metadata(&p).map_err(|e| at(&p, e))?;
            let name = e.file_name().into_string().ok();
            match name {
                Some(n)
                    if m.is_file()
                        && m.nlink() == 1
                        && m.len() <= SPARE_MAX
                        && keep.len() < self.spare_limit =>
                {
                    keep.push(n)
                }
                _ if m.is_file() => remove(&p)?,
                _ => log::warn!("spool: {} is not a spare file; left alone", p.display()),
            }
        }
        let n = keep.len();
        *self.spares.lock().unwrap_or_else(|p| p.into_inner()) = keep;
        Ok(n)
    }

    /// fsync the directories `owed` names (under queue-sync log: make the
    /// `done` records durable; the removals follow with the segment's
    /// retirement).
    pub fn sync_owed(&self, owed: &mut Unsynced) -> io::Result<()> {
        if let Some(log) = self.log.get() {
            if owed.any() {
                log.sync()?;
                *owed = Unsynced::default();
            }
            return Ok(());
        }
        for b in 0..BUCKETS {
            if owed.0[b] {
                self.sync_bucket(b)?;
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

    /// Every regular file in the buckets of `dir`. Anything else there
    /// (a symlink, a FIFO, a directory) is no spool file: it is reported
    /// and left alone, never followed or opened.
    fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for b in 0..BUCKETS {
            let d = dir.join(bucket_name(b));
            mkdir(&d).map_err(|e| at(&d, e))?;
            for e in fs::read_dir(&d).map_err(|e| at(&d, e))? {
                let e = e.map_err(|e| at(&d, e))?;
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    out.push(e.path());
                } else {
                    log::warn!(
                        "spool: {} is not a regular file; left alone",
                        e.path().display()
                    );
                }
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

    /// Start-up scan: empty `tmp/`, drop the leftovers of interrupted
    /// removals, rewrite two-file messages, quarantine what does not parse.
    pub fn recover(&self) -> io::Result<ScanReport> {
        let mut report = ScanReport::default();
        for p in Self::files_in(&self.tmp)? {
            fs::remove_file(&p).map_err(|e| at(&p, e))?;
            report.removed_tmp += 1;
        }
        let log = (self.durability == Durability::Log && self.log.get().is_none())
            .then(|| self.replay(&mut report))
            .transpose()?;
        let mut entries = Self::files_in(&self.mail)?;
        // ID.body sorts before ID.env before ID.msg: a conversion is done
        // before the files it replaces are looked at.
        entries.sort();
        for p in entries {
            // Conversion and quarantine move several files of one id.
            if !p.exists() {
                continue;
            }
            let Some(name) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let (id, kind) = name.rsplit_once('.').unwrap_or((name.as_str(), ""));
            ids_above(id);
            let has_msg = self.body_path(id).exists();
            let problem = match kind {
                // Files under queue-sync filesystem were renamed before they
                // were durable: after a power loss one that was never
                // acknowledged may be short or hold stale blocks.
                // The same under queue-sync log for a file whose record was
                // not flushed: it was never acknowledged.
                "msg" if self.durability != Durability::File => verify(&p)
                    .and_then(|_| self.envelope(id).map(drop))
                    .err()
                    .map(|e| e.to_string()),
                "msg" => self.envelope(id).err().map(|e| e.to_string()),
                // A conversion that crashed after its rename: the message
                // file has everything.
                "body" if has_msg => {
                    remove(&p)?;
                    report.removed_orphans += 1;
                    None
                }
                "body" if self.envelope_path(id).exists() => match self.convert(id) {
                    Ok(()) => {
                        report.converted += 1;
                        report.messages += 1;
                        None
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidData => Some(e.to_string()),
                    Err(e) => return Err(e),
                },
                // A body whose envelope never got written (a crash of the
                // two-file layout mid-commit) or an envelope update whose
                // message is gone (a crash mid-removal): never acknowledged,
                // or finished.
                "body" | "env" if !has_msg => {
                    remove(&p)?;
                    report.removed_orphans += 1;
                    None
                }
                "env" => None,
                _ => {
                    log::warn!("spool: {} is not a spool file; left alone", p.display());
                    None
                }
            };
            match problem {
                Some(why) => {
                    log::error!(
                        "spool: {id} is unusable ({why}); moved to {}",
                        self.corrupt.display()
                    );
                    self.quarantine(id)?;
                    report.quarantined += 1;
                }
                None if kind == "msg" => report.messages += 1,
                None => {}
            }
        }
        for b in 0..BUCKETS {
            self.sync_bucket(b)?;
        }
        report.spares = self.load_spares()?;
        if let Some(found) = log {
            let dir = self.root.join("log");
            let log = commitlog::Log::start(&dir, found, &self.root_dir, &self.root)?;
            // Unset: checked above.
            let _ = self.log.set(log);
        }
        Ok(report)
    }

    /// Apply the commit log's records, before the scan: remove the files
    /// of finished messages, and write again those of the others that are
    /// missing or do not verify (renamed before a power loss, never made
    /// durable but acknowledged on the strength of their record).
    fn replay(&self, report: &mut ScanReport) -> io::Result<commitlog::Found> {
        use commitlog::Kind;
        let found = commitlog::find(&self.root.join("log"))?;
        // Two passes, each reading one segment at a time: the first learns
        // which messages are finished, the second writes back the others,
        // so memory holds one segment, not the whole log.
        let mut done = std::collections::HashSet::new();
        // The segment holding each message's record.
        let mut held = std::collections::HashMap::new();
        for (i, (seq, p)) in found.segments.iter().enumerate() {
            let buf = commitlog::read(p)?;
            for (kind, id, _) in commitlog::records(&buf, *seq) {
                if kind == Kind::Done {
                    done.insert(id.to_string());
                } else {
                    held.insert(id.to_string(), i);
                }
            }
        }
        for id in &done {
            for p in [self.body_path(id), self.envelope_path(id)] {
                match fs::remove_file(&p) {
                    Ok(()) => report.replay_removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(at(&p, e)),
                }
            }
        }
        let live: std::collections::HashSet<usize> = held
            .iter()
            .filter(|(id, _)| !done.contains(*id))
            .map(|(_, i)| *i)
            .collect();
        for (i, (seq, p)) in found.segments.iter().enumerate() {
            if !live.contains(&i) {
                continue;
            }
            let buf = commitlog::read(p)?;
            for (kind, id, payload) in commitlog::records(&buf, *seq) {
                if kind != Kind::Message || done.contains(id) || held.get(id) != Some(&i) {
                    continue;
                }
                let fin = self.body_path(id);
                // Compared byte for byte, not by its sum: a spare whose new
                // contents were lost holds a whole earlier message.
                let whole = fs::symlink_metadata(&fin)
                    .is_ok_and(|m| m.is_file() && m.len() == payload.len() as u64)
                    && open_nofollow(&fin)
                        .and_then(|mut f| {
                            let mut b = Vec::with_capacity(payload.len());
                            f.read_to_end(&mut b).map(|_| b)
                        })
                        .is_ok_and(|b| b == payload);
                if whole {
                    continue;
                }
                let tmp = self.tmp_of(id).join(format!("{id}.msg"));
                let _ = fs::remove_file(&tmp);
                // Not synced: Log::start's syncfs covers every file written here.
                write_new(&tmp, payload)?;
                fs::rename(&tmp, &fin).map_err(|e| at(&tmp, e))?;
                log::warn!("spool: {id}: message file written again from the commit log");
                report.replayed += 1;
            }
        }
        Ok(found)
    }

    /// Rewrite a message of the two-file layout as one file: the new file
    /// is durable under its final name before the old ones go.
    fn convert(&self, id: &str) -> io::Result<()> {
        let old_env = self.envelope_path(id);
        let text = read_text(&old_env).map_err(|e| at(&old_env, e))?;
        let env = Envelope::parse(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {e}", old_env.display()),
            )
        })?;
        let old_body = self.mail_of(id).join(format!("{id}.body"));
        let mut m = self.begin_as(id)?;
        let mut src = open_nofollow(&old_body).map_err(|e| at(&old_body, e))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = src.read(&mut buf).map_err(|e| at(&old_body, e))?;
            if n == 0 {
                break;
            }
            m.write(&buf[..n]);
        }
        m.commit(&env)?;
        remove(&old_env)?;
        remove(&old_body)?;
        log::info!("spool: {id} rewritten from the two-file layout");
        Ok(())
    }

    fn quarantine(&self, id: &str) -> io::Result<()> {
        for ext in ["msg", "env", "body"] {
            let from = self.mail_of(id).join(format!("{id}.{ext}"));
            if from.exists() {
                let to = self.corrupt.join(format!("{id}.{ext}"));
                fs::rename(&from, &to).map_err(|e| at(&from, e))?;
            }
        }
        Ok(())
    }

    /// Refuse new messages while less than `bytes` are free on the spool's
    /// file system, so that a flood cannot fill a disk others share and
    /// messages already accepted keep room to be delivered and bounced.
    pub fn with_min_free(mut self, bytes: u64) -> Spool {
        self.min_free = bytes;
        self
    }

    /// Start receiving a message.
    pub fn begin(&self) -> io::Result<Incoming> {
        if self.min_free > 0 {
            let free = self.free_bytes()?;
            if free < self.min_free {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "{}: {free} bytes free, below limit queue-minfree {}",
                        self.root.display(),
                        self.min_free
                    ),
                ));
            }
        }
        self.begin_as(&new_id())
    }

    /// Bytes free on the spool's file system, from the last reading
    /// where [`FreeSpace::usable`] allows.
    fn free_bytes(&self) -> io::Result<u64> {
        let mut last = self.free_space.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(free) = last.usable(self.min_free) {
            return Ok(free);
        }
        let st = nix::sys::statvfs::statvfs(&*self.root).map_err(io::Error::from)?;
        *last = FreeSpace {
            free: st.blocks_available().saturating_mul(st.fragment_size()),
            at: Some(std::time::Instant::now()),
        };
        Ok(last.free)
    }

    /// Count `bytes` committed against the last free-space reading.
    fn used(&self, bytes: u64) {
        if self.min_free > 0 {
            let mut last = self.free_space.lock().unwrap_or_else(|p| p.into_inner());
            last.free = last.free.saturating_sub(bytes);
        }
    }

    fn begin_as(&self, id: &str) -> io::Result<Incoming> {
        // The log exists only under Durability::Log, set up by recover()
        // after every id in mail/ was seen (new_id). There a message is
        // held in memory and its file made at commit, straight in mail/.
        let logged = self.log.get().is_some();
        let (path, f, spare) = if logged {
            (PathBuf::new(), None, false)
        } else {
            let (p, f, spare) = self.open_new(id)?;
            (p, Some(f), spare)
        };
        Ok(Incoming {
            spool: self.clone(),
            id: id.to_string(),
            body_path: path,
            file: f,
            buf: take_buffer(),
            len: 0,
            sum: Sum::new(),
            spare,
            logged,
            failed: None,
        })
    }

    /// A file to write message `id` into before its rename into `mail/`:
    /// a spare, or a new file in `tmp/`; true if a spare.
    fn open_new(&self, id: &str) -> io::Result<(PathBuf, File, bool)> {
        if let Some((p, f)) = self.take_spare() {
            return Ok((p, f, true));
        }
        let p = self.tmp_of(id).join(format!("{id}.msg"));
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| at(&p, e))?;
        Ok((p, f, false))
    }

    /// Ids of committed messages, oldest first.
    pub fn list(&self) -> io::Result<Vec<String>> {
        let mut ids: Vec<String> = Self::files_in(&self.mail)?
            .iter()
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_suffix(".msg")
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Read a committed envelope: its latest update, or else the copy
    /// inside the message file.
    pub fn envelope(&self, id: &str) -> io::Result<Envelope> {
        let p = self.envelope_path(id);
        let (text, p) = match read_text(&p) {
            Ok(t) => (t, p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let p = self.body_path(id);
                (trailer(&p)?, p)
            }
            Err(e) => return Err(at(&p, e)),
        };
        let env = Envelope::parse(&text).map_err(|e| invalid(&p, &e))?;
        if env.id != id {
            return Err(invalid(&p, &format!("envelope is for {}", env.id)));
        }
        Ok(env)
    }

    /// Path of a committed message file (its body is [`open_body`]).
    pub fn body_path(&self, id: &str) -> PathBuf {
        self.mail_of(id).join(format!("{id}.msg"))
    }

    /// Path of a committed message's envelope update.
    pub fn envelope_path(&self, id: &str) -> PathBuf {
        self.mail_of(id).join(format!("{id}.env"))
    }
}

/// A committed message file holding `body`, in a spool under `dir`: for
/// the tests of what reads message files.
#[cfg(test)]
pub(crate) fn sample_message(dir: &Path, body: &[u8]) -> PathBuf {
    let s = Spool::open(dir).unwrap();
    let mut env = Envelope {
        from: "a@b.example".into(),
        rcpts: vec![envelope::EnvRcpt::pending("c@d.example", "local")],
        ..Envelope::default()
    };
    let id = s.submit(body, &mut env).unwrap();
    s.body_path(&id)
}

fn remove(p: &Path) -> io::Result<()> {
    fs::remove_file(p).map_err(|e| at(p, e))
}

fn invalid(p: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {why}", p.display()),
    )
}

/// The last line of a message file, fixed width so that it is found with
/// one read from the end: `postern-body-length N sum H`, where `H` is the
/// [`Sum`] of everything before the line. Files written before the sum was
/// added end at `N`; they are read as before, without a check.
const FOOTER_KEY: &str = "postern-body-length ";
const OLD_FOOTER_LEN: u64 = FOOTER_KEY.len() as u64 + 20 + 1;
const SUM_KEY: &str = " sum ";
const FOOTER_LEN: u64 = OLD_FOOTER_LEN + SUM_KEY.len() as u64 + 16;

fn footer(body_len: u64, sum: u64) -> String {
    format!("{FOOTER_KEY}{body_len:020}{SUM_KEY}{sum:016x}\n")
}

/// A 64-bit checksum of a message file's contents, so that the start-up
/// scan can tell a whole file from one that a power loss left short, zeroed
/// or holding stale blocks (`limit queue-sync filesystem` writes files
/// without fsyncing each). It detects damage, not tampering: whoever can
/// write the spool can write a matching sum.
#[derive(Clone, Copy)]
struct Sum {
    h: u64,
    len: u64,
    tail: [u8; 8],
    held: usize,
}

impl Sum {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn new() -> Sum {
        Sum {
            h: Self::K,
            len: 0,
            tail: [0; 8],
            held: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(23) ^ w).wrapping_mul(Self::K);
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.held > 0 {
            let take = (8 - self.held).min(bytes.len());
            self.tail[self.held..self.held + take].copy_from_slice(&bytes[..take]);
            self.held += take;
            bytes = &bytes[take..];
            if self.held < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.tail));
            self.held = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            // chunks_exact(8) yields 8-byte slices.
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.word(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.held = rest.len();
    }

    fn finish(mut self) -> u64 {
        let mut last = [0u8; 8];
        last[..self.held].copy_from_slice(&self.tail[..self.held]);
        self.word(u64::from_le_bytes(last));
        self.word(self.len);
        // splitmix64's finaliser: every input bit reaches every output bit.
        let mut z = self.h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Where a message file's parts end, from its last line.
struct Layout {
    /// Bytes of Received header and body.
    body: u64,
    /// Where the last line starts: the envelope is `body..footer`.
    footer: u64,
    /// The recorded [`Sum`] of `0..footer`; None in older files.
    sum: Option<u64>,
}

fn layout(f: &File, p: &Path) -> io::Result<Layout> {
    let len = f.metadata().map_err(|e| at(p, e))?.len();
    if len < OLD_FOOTER_LEN {
        return Err(invalid(p, "too short to be a postern message file"));
    }
    let n = len.min(FOOTER_LEN);
    let mut last = [0u8; FOOTER_LEN as usize];
    let last = &mut last[..n as usize];
    f.read_exact_at(last, len - n).map_err(|e| at(p, e))?;
    let parse = |line: &[u8]| -> Option<(u64, Option<u64>)> {
        let l = std::str::from_utf8(line).ok()?.strip_prefix(FOOTER_KEY)?;
        let l = l.strip_suffix('\n')?;
        match l.split_once(SUM_KEY) {
            Some((body, sum)) if sum.len() == 16 => {
                Some((body.parse().ok()?, Some(u64::from_str_radix(sum, 16).ok()?)))
            }
            Some(_) => None,
            None => Some((l.parse().ok()?, None)),
        }
    };
    let found = if n == FOOTER_LEN {
        parse(last).map(|(b, s)| (b, s, FOOTER_LEN))
    } else {
        None
    };
    let (body, sum, footer_len) = found
        .or_else(|| {
            let old = &last[(n - OLD_FOOTER_LEN) as usize..];
            parse(old)
                .filter(|(_, s)| s.is_none())
                .map(|(b, s)| (b, s, OLD_FOOTER_LEN))
        })
        .filter(|&(b, _, fl)| b <= len - fl)
        .ok_or_else(|| invalid(p, "no postern-body-length line at the end"))?;
    Ok(Layout {
        body,
        footer: len - footer_len,
        sum,
    })
}

/// Check a message file against the sum in its last line (files without
/// one pass): an error names a file that is not what was written.
pub fn verify(p: &Path) -> io::Result<()> {
    let f = open_nofollow(p).map_err(|e| at(p, e))?;
    let l = layout(&f, p)?;
    let Some(want) = l.sum else {
        return Ok(());
    };
    let mut sum = Sum::new();
    let mut r = (&f).take(l.footer);
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded by the file's length.
    loop {
        let n = r.read(&mut buf).map_err(|e| at(p, e))?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
    }
    if sum.len != l.footer || sum.finish() != want {
        return Err(invalid(
            p,
            "its contents do not match the checksum in its last line (written but not made durable before a crash, or damaged since)",
        ));
    }
    Ok(())
}

/// The envelope text inside a message file.
fn trailer(p: &Path) -> io::Result<String> {
    let f = open_nofollow(p).map_err(|e| at(p, e))?;
    let Layout { body, footer, .. } = layout(&f, p)?;
    let n = footer - body;
    // Thousands of recipients fit in a few MiB; more is damage.
    if n > 64 << 20 {
        return Err(invalid(p, "envelope is larger than 64 MiB"));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact_at(&mut text, body).map_err(|e| at(p, e))?;
    String::from_utf8(text).map_err(|_| invalid(p, "envelope is not UTF-8"))
}

/// Open a committed message file for reading its body (Received header and
/// body as received, without the envelope after it).
pub fn open_body(p: &Path) -> io::Result<io::Take<File>> {
    let f = open_nofollow(p).map_err(|e| at(p, e))?;
    let body = layout(&f, p)?.body;
    Ok(f.take(body))
}

/// The whole body of a committed message file (see [`open_body`]).
pub fn read_body(p: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_body(p)?.read_to_end(&mut out).map_err(|e| at(p, e))?;
    Ok(out)
}

/// An incoming message reaches its file in writes of this size...
const WRITE_BUF: usize = 64 * 1024;
/// ...or, under queue-sync log, is held whole up to this size, to be
/// written to its file and the log at commit.
const LOG_BODY: usize = SPARE_MAX as usize;

/// Write buffers of finished messages, for the next ones. One that grew
/// past a logged body and an envelope is let go.
static BUFFERS: crate::buffers::Pool = crate::buffers::Pool::new(64, LOG_BODY + WRITE_BUF);

fn take_buffer() -> Vec<u8> {
    BUFFERS
        .take()
        .unwrap_or_else(|| Vec::with_capacity(WRITE_BUF))
}

fn return_buffer(mut b: Vec<u8>) {
    b.clear();
    BUFFERS.give(b);
}

/// A message being received; dropped without [`Incoming::commit`], it
/// leaves nothing behind.
pub struct Incoming {
    spool: Spool,
    id: String,
    /// Where `file` is (in `tmp/` or `free/`); empty while there is none.
    body_path: PathBuf,
    /// None while the message is held whole in `buf` for the log.
    file: Option<File>,
    /// Bytes not yet written to `file`.
    buf: Vec<u8>,
    /// Body bytes written so far.
    len: u64,
    /// Their checksum, to which the envelope is added at commit.
    sum: Sum,
    /// Written over a spare file in `free/`, whose old tail must go.
    spare: bool,
    /// Held whole in `buf` for the commit log: no file yet, and at most
    /// [`LOG_BODY`] bytes.
    logged: bool,
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
        if self.logged {
            if self.buf.len() + bytes.len() <= LOG_BODY {
                self.buf.extend_from_slice(bytes);
                self.len += bytes.len() as u64;
                self.sum.update(bytes);
                return;
            }
            // Too large for the log: written out, and fsynced at commit.
            self.logged = false;
        }
        let written = self.open().and_then(|mut f| {
            let buf = &mut self.buf;
            let r = if buf.len() + bytes.len() <= WRITE_BUF {
                buf.extend_from_slice(bytes);
                Ok(())
            } else {
                f.write_all(buf).and_then(|_| {
                    buf.clear();
                    if bytes.len() >= WRITE_BUF {
                        f.write_all(bytes)
                    } else {
                        buf.extend_from_slice(bytes);
                        Ok(())
                    }
                })
            };
            self.file = Some(f);
            r.map_err(|e| at(&self.body_path, e))
        });
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                self.sum.update(bytes);
            }
            Err(e) => self.failed = Some(e),
        }
    }

    /// The message's file, opened now if it has none yet.
    fn open(&mut self) -> io::Result<File> {
        match self.file.take() {
            Some(f) => Ok(f),
            None => {
                let (p, f, spare) = self.spool.open_new(&self.id)?;
                (self.body_path, self.spare) = (p, spare);
                Ok(f)
            }
        }
    }

    /// Make the message durable: only when this returns Ok may the client
    /// be told 250.
    pub fn commit(mut self, env: &Envelope) -> io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let text = env.to_text();
        let mut sum = self.sum;
        sum.update(text.as_bytes());
        let last = footer(self.len, sum.finish());
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.extend_from_slice(last.as_bytes());
        let total = self.len + (text.len() + last.len()) as u64;
        self.spool.used(total);
        let started = std::time::Instant::now();
        let log = self.spool.log.clone();
        let log = log
            .get()
            .filter(|_| self.logged && self.buf.len() <= commitlog::RECORD_MAX);
        let committed = match log {
            Some(log) => self.commit_logged(log, total),
            None => self.commit_file(total),
        };
        crate::stats::SPOOL_FSYNC.observe(started.elapsed());
        committed?;
        self.body_path = PathBuf::new();
        crate::stats::SPOOL_COMMITS.inc();
        if let Some(n) = &self.spool.notify {
            // The scheduler may be gone during shutdown; the message is
            // safe on disk and found by the next start's scan.
            let _ = n.send(env.clone());
        }
        Ok(())
    }

    /// Write the file out, fsync it (unless the file system's syncfs
    /// stands in), rename it into `mail/` and flush that.
    fn commit_file(&mut self, total: u64) -> io::Result<()> {
        let mut f = self.open()?;
        self.write_out(&mut f, total)?;
        if self.spool.durability != Durability::Filesystem {
            f.sync_all().map_err(|e| at(&self.body_path, e))?;
        }
        drop(f);
        let fin = self.spool.body_path(&self.id);
        fs::rename(&self.body_path, &fin).map_err(|e| at(&self.body_path, e))?;
        let flushed = self.spool.flush_bucket(bucket(&self.id));
        if flushed.is_err() {
            // The client will be told 452, so the message must not be
            // delivered.
            let _ = fs::remove_file(&fin);
        }
        flushed
    }

    /// Write what is still held to `f`, whose message is `total` bytes
    /// long; over a spare, cut off the old file's tail.
    fn write_out(&mut self, f: &mut File, total: u64) -> io::Result<()> {
        f.write_all(&self.buf).map_err(|e| at(&self.body_path, e))?;
        if self.spare {
            f.set_len(total).map_err(|e| {
                // A spare that cannot be cut is dropped, not reused again.
                self.spare = false;
                at(&self.body_path, e)
            })?;
        }
        Ok(())
    }

    /// Append the message's record, then write its file into `mail/`
    /// (postern(8) DURABILITY): a file a crash cuts short always has a
    /// record to be written again from.
    fn commit_logged(&mut self, log: &commitlog::Log, total: u64) -> io::Result<()> {
        let fin = self.spool.body_path(&self.id);
        let pending = log.append(&[(commitlog::Kind::Message, &self.id, &self.buf)])?;
        let written = match self.spool.take_spare() {
            Some((p, mut f)) => {
                (self.body_path, self.spare) = (p, true);
                self.write_out(&mut f, total).and_then(|_| {
                    fs::rename(&self.body_path, &fin).map_err(|e| at(&self.body_path, e))
                })
            }
            None => write_new(&fin, &self.buf).map(drop),
        };
        drop(pending);
        let synced = match written {
            // Only this process makes files in mail/, under ids above all
            // it found there (new_id): this one is not ours to remove.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(e),
            r => r.and_then(|_| log.sync()),
        };
        if synced.is_err() {
            // Told 452: a record that reaches the disk anyway must not
            // bring it back at start.
            let done = log.append(&[(commitlog::Kind::Done, &self.id, &[])]);
            let _ = fs::remove_file(&fin);
            drop(done);
        }
        synced
    }
}

/// A new file (mode 600) holding `bytes`, not synced.
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<File> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| at(path, e))?;
    f.write_all(bytes).map_err(|e| at(path, e))?;
    Ok(f)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_new(path, bytes)?.sync_all().map_err(|e| at(path, e))
}

/// syncfs(2) of the file system holding `dir` (opened as `f`).
fn syncfs(f: &File, dir: &Path) -> io::Result<()> {
    nix::unistd::syncfs(f).map_err(|e| at(dir, io::Error::from(e)))
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file = None;
        return_buffer(std::mem::take(&mut self.buf));
        if self.body_path.as_os_str().is_empty() {
            return;
        }
        if self.spare && self.failed.is_none() {
            // Whatever was written stays in free/, which nothing reads.
            self.spool.return_spare(&self.body_path);
        } else {
            let _ = fs::remove_file(&self.body_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::envelope::EnvRcpt;
    use super::*;

    fn env(id: &str) -> Envelope {
        Envelope {
            id: id.into(),
            arrival: 1,
            from: "a@b.example".into(),
            rcpts: vec![EnvRcpt::pending("c@d.example", "local")],
            ..Envelope::default()
        }
    }

    fn count(dir: &Path) -> usize {
        Spool::files_in(dir).unwrap().len()
    }

    fn body_of(s: &Spool, id: &str) -> Vec<u8> {
        read_body(&s.body_path(id)).unwrap()
    }

    #[test]
    fn free_space_readings_stand_in_only_while_fresh_and_far_from_the_floor() {
        let now = std::time::Instant::now();
        let old = now.checked_sub(FreeSpace::FRESH * 2);
        for (free, at, floor, want) in [
            (1000, Some(now), 100, Some(1000)),
            (400, Some(now), 100, Some(400)),
            (399, Some(now), 100, None),
            (1000, old, 100, None),
            (1000, None, 100, None),
            (u64::MAX, Some(now), u64::MAX, None),
        ] {
            assert_eq!(
                FreeSpace { free, at }.usable(floor),
                want,
                "{free} {at:?} {floor}"
            );
        }
        // Committed bytes count against the reading: once they bring it
        // near the floor, the kernel is asked again.
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap().with_min_free(100);
        let real = s.free_bytes().unwrap();
        assert!(
            real > 1 << 20,
            "the test's file system has {real} bytes free"
        );
        *s.free_space.lock().unwrap() = FreeSpace {
            free: 1000,
            at: Some(now),
        };
        assert_eq!(s.free_bytes().unwrap(), 1000);
        let mut m = s.begin().unwrap();
        let id = m.id().to_string();
        m.write(&[b'x'; 700]);
        m.commit(&env(&id)).unwrap();
        let left = s.free_space.lock().unwrap().free;
        assert!(left < 300, "1000 less the committed file left {left}");
        assert!(s.free_bytes().unwrap() > 1 << 20, "read again");
        // A floor above what is free refuses every message, however fresh
        // the last reading.
        let s = s.with_min_free(u64::MAX);
        for _ in 0..3 {
            let e = s.begin().err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
        }
    }

    #[test]
    fn bodies_survive_every_write_size_around_the_buffer() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let w = WRITE_BUF;
        for sizes in [
            vec![w],
            vec![w + 1],
            vec![1, w - 1, 1],
            vec![w - 1, 2, w, 3 * w + 7],
            vec![10, w - 10, w - 10, 20, 1],
        ] {
            let mut m = s.begin().unwrap();
            let id = m.id().to_string();
            let mut want = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let piece: Vec<u8> = (0..*n).map(|k| b'a' + ((i + k) % 26) as u8).collect();
                m.write(&piece);
                want.extend_from_slice(&piece);
            }
            m.commit(&env(&id)).unwrap();
            assert!(body_of(&s, &id) == want, "pieces {sizes:?}");
            verify(&s.body_path(&id)).unwrap();
        }
    }

    #[test]
    fn commit_makes_one_file() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut m = s.begin().unwrap();
        let id = m.id().to_string();
        m.write(b"hello\r\n");
        m.write(b"world\r\n");
        m.commit(&env(&id)).unwrap();
        assert_eq!(body_of(&s, &id), b"hello\r\nworld\r\n");
        assert_eq!(s.envelope(&id).unwrap(), env(&id));
        let file = fs::read_to_string(s.body_path(&id)).unwrap();
        let text = env(&id).to_text();
        let mut sum = Sum::new();
        sum.update(format!("hello\r\nworld\r\n{text}").as_bytes());
        assert!(
            file.ends_with(&format!(
                "\r\npostern-envelope 1\nid {id}\n{}postern-body-length 00000000000000000014 sum {:016x}\n",
                &text[format!("postern-envelope 1\nid {id}\n").len()..],
                sum.finish()
            )),
            "{file}"
        );
        verify(&s.body_path(&id)).unwrap();
        assert_eq!(count(&s.tmp), 0);
        assert_eq!(count(&s.mail), 1);
        assert_eq!(s.list().unwrap(), [id]);
    }

    #[test]
    fn sums_do_not_depend_on_how_the_bytes_arrive() {
        let data: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
        let whole = {
            let mut s = Sum::new();
            s.update(&data);
            s.finish()
        };
        for cut in 0..data.len() {
            for cut2 in cut..data.len() {
                let mut s = Sum::new();
                s.update(&data[..cut]);
                s.update(&data[cut..cut2]);
                s.update(&data[cut2..]);
                assert_eq!(s.finish(), whole, "split at {cut} and {cut2}");
            }
        }
        // Damage of the kinds a power loss leaves changes it.
        let sum = |d: &[u8]| {
            let mut s = Sum::new();
            s.update(d);
            s.finish()
        };
        let mut zeroed = data.clone();
        zeroed[40..48].fill(0);
        let mut swapped = data.clone();
        swapped.swap(3, 70);
        for other in [
            &data[..99],
            &zeroed[..],
            &swapped[..],
            &[data.clone(), vec![0]].concat(),
        ] {
            assert_ne!(sum(other), whole);
        }
    }

    #[test]
    fn log_durability_writes_back_what_a_power_loss_took_and_forgets_finished_mail() {
        let d = tempfile::tempdir().unwrap();
        let open = || {
            let s = Spool::open(d.path())
                .unwrap()
                .with_durability(Durability::Log);
            let r = s.recover().unwrap();
            (s, r)
        };
        let (s, _) = open();
        // Held in memory until the commit: no file at all before, so a
        // session that goes away leaves nothing.
        let mut m = s.begin().unwrap();
        m.write(b"Subject: never\r\n");
        assert_eq!(count(&s.tmp) + count(&s.mail), 0);
        drop(m);
        let big = vec![b'x'; LOG_BODY + 1];
        let bodies: Vec<Vec<u8>> = vec![
            b"Subject: 0\r\n\r\nzero\r\n".to_vec(),
            b"Subject: 1\r\n\r\none\r\n".to_vec(),
            b"Subject: 2\r\n\r\ntwo\r\n".to_vec(),
            big.clone(),
        ];
        let ids: Vec<String> = bodies
            .iter()
            .map(|b| s.submit(b, &mut env("")).unwrap())
            .collect();
        let segment = |s: &Spool| {
            let cur = commitlog::find(&s.root.join("log")).unwrap().segments;
            assert_eq!(cur.len(), 1, "{cur:?}");
            let buf = commitlog::read(&cur[0].1).unwrap();
            commitlog::records(&buf, cur[0].0)
                .into_iter()
                .map(|(k, id, p)| (k, id.to_string(), p.len()))
                .collect::<Vec<_>>()
        };
        // The three small ones are logged whole; the large one is fsynced
        // as under queue-sync file, and not logged.
        let recs = segment(&s);
        assert_eq!(recs.len(), 3, "{recs:?}");
        for (r, id) in recs.iter().zip(&ids) {
            let len = fs::metadata(s.body_path(id)).unwrap().len() as usize;
            assert_eq!(r, &(commitlog::Kind::Message, id.clone(), len));
        }
        // Finished: a done record goes before the file.
        s.remove(&[&ids[0]]).unwrap();
        assert_eq!(segment(&s).last().unwrap().0, commitlog::Kind::Done);
        // What a power loss can leave: a logged file missing, another torn,
        // and the removal of a finished one undone.
        fs::remove_file(s.body_path(&ids[1])).unwrap();
        let p = s.body_path(&ids[2]);
        let mut torn = fs::read(&p).unwrap();
        torn[2..10].fill(0);
        fs::write(&p, torn).unwrap();
        fs::write(s.body_path(&ids[0]), b"the old file").unwrap();
        // What a kill -9 can leave: the record appended, its file cut short
        // (the record goes first: see commit_logged).
        let cut = s
            .submit(b"Subject: 7\r\n\r\nseven\r\n", &mut env(""))
            .unwrap();
        let whole = fs::read(s.body_path(&cut)).unwrap();
        fs::write(s.body_path(&cut), &whole[..whole.len() / 2]).unwrap();
        // And a file written over a spare whose new contents were lost: a
        // whole earlier message of the same length, which verifies.
        let earlier = s
            .submit(b"Subject: 9\r\n\r\nnine\r\n", &mut env(""))
            .unwrap();
        let replaced = s
            .submit(b"Subject: 8\r\n\r\nouch\r\n", &mut env(""))
            .unwrap();
        let old = fs::read(s.body_path(&earlier)).unwrap();
        assert_eq!(
            old.len() as u64,
            fs::metadata(s.body_path(&replaced)).unwrap().len()
        );
        fs::write(s.body_path(&replaced), &old).unwrap();
        verify(&s.body_path(&replaced)).unwrap();
        drop(s);
        let (s, r) = open();
        assert_eq!((r.replayed, r.replay_removed, r.quarantined), (4, 1, 0));
        assert_eq!(fs::read(s.body_path(&cut)).unwrap(), whole);
        assert_eq!(body_of(&s, &replaced), b"Subject: 8\r\n\r\nouch\r\n");
        assert_eq!(s.envelope(&replaced).unwrap().id, replaced);
        let mut want = ids[1..].to_vec();
        want.extend([cut, earlier, replaced]);
        assert_eq!(s.list().unwrap(), want);
        for (id, body) in ids.iter().zip(&bodies).skip(1) {
            assert_eq!(&body_of(&s, id), body);
            assert_eq!(s.envelope(id).unwrap().id, *id);
        }
        // The records were applied and their segment retired: the new one
        // starts empty, and a second start changes nothing.
        assert!(segment(&s).is_empty());
        drop(s);
        let (s, r) = open();
        assert_eq!((r.messages, r.replayed, r.replay_removed), (6, 0, 0));
        // A file in mail/ whose record never reached the disk was
        // never acknowledged: torn, it is quarantined as under filesystem.
        let fresh = s.submit(b"Subject: new\r\n\r\n", &mut env("")).unwrap();
        let log_dir = s.root.join("log");
        drop(s);
        for (seq, p) in commitlog::find(&log_dir).unwrap().segments {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            assert!(seq > 0);
            f.write_all_at(&[0u8; 64], 0).unwrap();
        }
        let p = Spool::open(d.path()).unwrap().body_path(&fresh);
        let mut torn = fs::read(&p).unwrap();
        torn[0] ^= 1;
        fs::write(&p, torn).unwrap();
        let (_, r) = open();
        assert_eq!((r.messages, r.replayed, r.quarantined), (6, 0, 1));
    }

    #[test]
    fn filesystem_durability_commits_checks_and_quarantines_torn_files() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path())
            .unwrap()
            .with_durability(Durability::Filesystem);
        let ids: Vec<String> = (0..3)
            .map(|i| {
                s.submit(
                    format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes(),
                    &mut env(""),
                )
                .unwrap()
            })
            .collect();
        for id in &ids {
            verify(&s.body_path(id)).unwrap();
        }
        // What a power loss can leave of a file renamed before it was
        // durable: a block of zeros, or another file's stale block.
        let p = s.body_path(&ids[1]);
        let mut torn = fs::read(&p).unwrap();
        torn[2..10].fill(0);
        fs::write(&p, torn).unwrap();
        let e = verify(&p).unwrap_err().to_string();
        assert!(e.contains("do not match the checksum"), "{e}");
        let r = s.recover().unwrap();
        assert_eq!((r.messages, r.quarantined), (2, 1));
        assert_eq!(s.list().unwrap(), [ids[0].clone(), ids[2].clone()]);
        assert!(
            d.path()
                .join("corrupt")
                .join(format!("{}.msg", ids[1]))
                .exists()
        );
        // A message written over a spare whose new contents did not reach
        // the disk before a power loss: the old file under the new name
        // (its envelope names the old id), or new text over an old tail
        // (the last line and its sum are the old file's).
        s.remove(&[&ids[0]]).unwrap();
        assert_eq!(fs::read_dir(&s.free).unwrap().count(), 1);
        let old = fs::read(s.body_path(&ids[2])).unwrap();
        let fresh = s
            .submit(b"Subject: new\r\n\r\nnew\r\n", &mut env(""))
            .unwrap();
        let p = s.body_path(&fresh);
        fs::write(&p, &old).unwrap();
        let e = s.envelope(&fresh).unwrap_err().to_string();
        assert!(e.contains(&format!("envelope is for {}", ids[2])), "{e}");
        let mut mixed = old.clone();
        mixed[..8].copy_from_slice(b"Subject:");
        mixed[8..20].copy_from_slice(b" new\r\n\r\nnew\r");
        fs::write(&p, &mixed).unwrap();
        assert!(verify(&p).is_err());
        let r = s.recover().unwrap();
        assert_eq!((r.messages, r.quarantined), (1, 1));
    }

    #[test]
    fn kernel_releases_compare() {
        for (release, ok) in [
            ("6.18.44-fc-v1045", true),
            ("5.8.0", true),
            ("5.10.0-28-amd64", true),
            ("5.7.19", false),
            ("4.19.0-6-amd64", false),
            ("", false),
        ] {
            assert_eq!(kernel_at_least(release, (5, 8)), ok, "{release}");
        }
    }

    #[test]
    fn files_without_a_sum_are_still_read() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path())
            .unwrap()
            .with_durability(Durability::Filesystem);
        let id = s.submit(b"x\r\n", &mut env("")).unwrap();
        let p = s.body_path(&id);
        let mut old = fs::read(&p).unwrap();
        // An older postern's last line: the same without " sum H".
        let cut = old.len() - (FOOTER_LEN - OLD_FOOTER_LEN) as usize - 1;
        old.truncate(cut);
        old.push(b'\n');
        fs::write(&p, &old).unwrap();
        assert!(old.ends_with(b"postern-body-length 00000000000000000003\n"));
        verify(&p).unwrap();
        assert_eq!(body_of(&s, &id), b"x\r\n");
        assert_eq!(s.envelope(&id).unwrap().rcpts, env("").rcpts);
        assert_eq!(s.recover().unwrap().messages, 1);
    }

    #[test]
    fn update_supersedes_and_removal_takes_both() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut e = env("");
        let id = s.submit(b"x\r\n", &mut e).unwrap();
        e.rcpts[0].attempts = 3;
        s.update(&e).unwrap();
        assert_eq!(s.envelope(&id).unwrap().rcpts[0].attempts, 3);
        // The message file itself is never rewritten.
        assert_eq!(body_of(&s, &id), b"x\r\n");
        assert!(
            fs::read_to_string(s.body_path(&id))
                .unwrap()
                .contains("attempts=0")
        );
        s.remove(&[&id]).unwrap();
        assert_eq!(count(&s.mail), 0);
        assert!(s.envelope(&id).is_err());
    }

    #[test]
    fn damaged_message_files_are_named_errors() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let id = s.submit(b"x\r\n", &mut env("")).unwrap();
        let p = s.body_path(&id);
        let good = fs::read(&p).unwrap();
        for (bad, why) in [
            (b"short".to_vec(), "too short"),
            (good[..good.len() - 1].to_vec(), "no postern-body-length"),
            (
                {
                    let at = good.len() - FOOTER_LEN as usize + FOOTER_KEY.len();
                    [&good[..at], b"99999999999999999999", &good[at + 20..]].concat()
                },
                "no postern-body-length",
            ),
            (
                String::from_utf8(good.clone())
                    .unwrap()
                    .replace(&format!("id {id}"), "id 0000000000000000")
                    .into_bytes(),
                "envelope is for 0000000000000000",
            ),
        ] {
            fs::write(&p, bad).unwrap();
            let e = s.envelope(&id).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&id), "{e}");
        }
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
        assert_eq!(sorted, ids, "each id above the one before");
        // The last digit picks the bucket of mail/: every one gets used.
        let buckets: std::collections::HashSet<_> =
            ids.iter().filter_map(|i| i.chars().last()).collect();
        assert_eq!(buckets.len(), 16, "{buckets:?}");
        assert!(
            ids.iter()
                .all(|i| i.len() == 16 && i.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn new_ids_sort_above_every_file_found_at_start() {
        // An earlier process's file from an hour ahead (a clock stepped
        // back since): a new message must not be written over it.
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let now = u64::from_str_radix(&new_id(), 16).unwrap();
        let id = format!("{:016X}", now + (3_600_000_000 << 12));
        let mut m = s.begin_as(&id).unwrap();
        m.write(b"x\r\n");
        let mut e = env(&id);
        e.size = 3;
        m.commit(&e).unwrap();
        let s = Spool::open(d.path()).unwrap();
        s.recover().unwrap();
        let fresh = s.submit(b"y\r\n", &mut env("")).unwrap();
        assert!(fresh > id, "{fresh} after {id}");
        assert_eq!(body_of(&s, &id), b"x\r\n");
        assert_eq!(body_of(&s, &fresh), b"y\r\n");
    }

    fn ino(p: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(p).unwrap().ino()
    }

    #[test]
    fn finished_files_are_rewritten_for_new_mail() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let big = vec![b'#'; 20_000];
        let old = s.submit(&big, &mut env("")).unwrap();
        let inode = ino(&s.body_path(&old));
        s.remove(&[&old]).unwrap();
        assert_eq!(count(&s.mail), 0);
        assert_eq!(fs::read_dir(&s.free).unwrap().count(), 1);
        // The next message goes into the same inode, cut to its own size.
        let new = s.submit(b"short\r\n", &mut env("")).unwrap();
        assert_eq!(ino(&s.body_path(&new)), inode);
        assert_eq!(body_of(&s, &new), b"short\r\n");
        let mut want = env(&new);
        want.size = 7;
        assert_eq!(s.envelope(&new).unwrap(), want);
        assert!(!fs::read(s.body_path(&new)).unwrap().contains(&b'#'));
        assert_eq!(fs::read_dir(&s.free).unwrap().count(), 0);
        // With no spare left, a new file is made.
        let third = s.submit(b"x\r\n", &mut env("")).unwrap();
        assert_ne!(ino(&s.body_path(&third)), inode);
    }

    #[test]
    fn spares_are_bounded_in_number_and_size() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let huge = s
            .submit(&vec![b'z'; SPARE_MAX as usize + 1], &mut env(""))
            .unwrap();
        s.remove(&[&huge]).unwrap();
        assert_eq!(fs::read_dir(&s.free).unwrap().count(), 0);
        let small = s.submit(b"x\r\n", &mut env("")).unwrap();
        s.spares
            .lock()
            .unwrap()
            .extend((0..SPARES).map(|i| format!("F{i}")));
        let off = Spool::open(&d.path().join("off")).unwrap().with_spares(0);
        let id = off.submit(b"x\r\n", &mut env("")).unwrap();
        off.remove(&[&id]).unwrap();
        assert_eq!(fs::read_dir(&off.free).unwrap().count(), 0);
        s.remove(&[&small]).unwrap();
        assert_eq!(fs::read_dir(&s.free).unwrap().count(), 0);
        assert_eq!(count(&s.mail), 0);
    }

    #[test]
    fn an_abandoned_spare_goes_back_to_free() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let id = s.submit(b"x\r\n", &mut env("")).unwrap();
        s.remove(&[&id]).unwrap();
        let mut m = s.begin().unwrap();
        m.write(b"half a message");
        drop(m);
        assert_eq!(s.spares.lock().unwrap().len(), 1);
        assert_eq!(count(&s.tmp) + count(&s.mail), 0);
        let id = s.submit(b"whole\r\n", &mut env("")).unwrap();
        assert_eq!(body_of(&s, &id), b"whole\r\n");
    }

    #[test]
    fn start_keeps_only_safe_spares() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        fs::write(s.free.join("A"), b"old").unwrap();
        fs::write(s.free.join("BIG"), vec![0u8; SPARE_MAX as usize + 1]).unwrap();
        // Also linked as a message: its free/ name goes, the message stays.
        let id = s.submit(b"x\r\n", &mut env("")).unwrap();
        fs::hard_link(s.body_path(&id), s.free.join("TWICE")).unwrap();
        let r = s.recover().unwrap();
        assert_eq!((r.messages, r.spares), (1, 1));
        let left: Vec<_> = fs::read_dir(&s.free)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["A"]);
        assert_eq!(body_of(&s, &id), b"x\r\n");
    }

    #[test]
    fn recover_cleans_converts_and_quarantines() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let good = s.submit(b"x\r\n", &mut env("")).unwrap();
        fs::write(s.tmp_of("LEFTOVER").join("LEFTOVER.msg"), b"x").unwrap();
        // Two-file layout: a committed pair, and an orphan body.
        let old = "0000000000000AB1";
        fs::write(s.mail_of(old).join(format!("{old}.body")), b"old\r\n").unwrap();
        fs::write(
            s.mail_of(old).join(format!("{old}.env")),
            env(old).to_text(),
        )
        .unwrap();
        fs::write(s.mail_of("ORPHAN").join("ORPHAN.body"), b"x").unwrap();
        // An interrupted removal leaves an update without its message.
        fs::write(s.mail_of("GONE").join("GONE.env"), env("GONE").to_text()).unwrap();
        fs::write(s.mail_of("BAD").join("BAD.msg"), b"garbage").unwrap();
        fs::write(s.mail_of("BADOLD").join("BADOLD.env"), b"garbage").unwrap();
        fs::write(s.mail_of("BADOLD").join("BADOLD.body"), b"x").unwrap();
        let r = s.recover().unwrap();
        assert_eq!(
            r,
            ScanReport {
                messages: 2,
                removed_tmp: 1,
                removed_orphans: 2,
                converted: 1,
                quarantined: 2,
                spares: 0,
                ..ScanReport::default()
            }
        );
        let mut want = vec![good, old.to_string()];
        want.sort();
        assert_eq!(s.list().unwrap(), want);
        assert_eq!(body_of(&s, old), b"old\r\n");
        assert_eq!(s.envelope(old).unwrap(), env(old));
        assert_eq!(count(&s.mail), 2);
        assert!(s.corrupt.join("BAD.msg").exists());
        assert!(s.corrupt.join("BADOLD.env").exists() && s.corrupt.join("BADOLD.body").exists());
        // A second scan finds a clean spool.
        assert_eq!(
            s.recover().unwrap(),
            ScanReport {
                messages: 2,
                ..Default::default()
            }
        );
    }
}
