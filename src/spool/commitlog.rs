//! The commit log of `limit queue-sync log` (postern(8) FILES).
//!
//! What makes a commit durable is its record in `log/`: the whole message
//! file, appended to the current segment, made durable by one fdatasync(2)
//! of the segment shared by every session committing at that moment (see
//! [`super::group`]). The record goes first, and only then is the message
//! file written into `mail/`, without an fsync; so a file that a crash cut
//! short always has its record, and is written again from it at start. A
//! finished message gets a `done` record before its file goes.
//!
//! A segment is written over, never grown: each is [`SEGMENT`] bytes,
//! written out (zeros, or an earlier segment's records) and fsynced before
//! its first record, so an append changes no block map and its fdatasync
//! is a data write and a cache flush without a journal commit (fdatasync(2):
//! metadata not needed to read the data back is not flushed).
//!
//! A record is `PLG1`, the segment's sequence number, its kind, the lengths
//! of id and payload, a checksum, the id and the payload. A segment is read
//! up to the first record that does not check or carries another sequence
//! number (one left from the segment's previous use): every record after
//! it was appended after it, and an acknowledgement waits for a flush that
//! began after its own append, so none of them was acknowledged.
//!
//! When a segment is full it is fdatasynced and the next one opened. A
//! thread retires the closed one: once every session that appended to it
//! has written or removed the files its records name (each holds a
//! [`Pending`] until then), one syncfs(2) of the spool's file system makes
//! them durable on their own, after which the segment is renamed
//! `idle-SEQ`, to be reused as a later segment (at most [`IDLE`] are kept).
//!
//! At start, before anything is accepted, every segment is read: files of
//! messages with a `done` record are removed, and a message whose file is
//! missing or does not verify is written again from its record; then one
//! syncfs, and those segments retire.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::group::Group;
use super::{Sum, at, syncfs};

/// Bytes in a segment: about 1,900 messages of 4 KiB, a second or two
/// of the fastest `make bench` row, so that a start writes little and
/// message files are made durable on their own soon after their commit.
#[cfg(not(test))]
pub const SEGMENT: u64 = 8 << 20;
#[cfg(test)]
pub const SEGMENT: u64 = 4 << 20;
/// A message file larger than this is not logged: it is fsynced on its
/// own, as under `queue-sync file`.
pub const RECORD_MAX: usize = 1 << 20;
/// Retired segments kept for reuse.
const IDLE: usize = 2;
const MAGIC: &[u8; 4] = b"PLG1";
/// Magic, sequence number, kind, id length, payload length, checksum.
const HEADER: usize = 4 + 8 + 1 + 1 + 4 + 8;
const ID_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The payload is a whole message file.
    Message,
    /// The message is finished; no payload.
    Done,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Message => b'M',
            Kind::Done => b'D',
        }
    }

    fn of(b: u8) -> Option<Kind> {
        match b {
            b'M' => Some(Kind::Message),
            b'D' => Some(Kind::Done),
            _ => None,
        }
    }
}

fn record_sum(seq: u64, kind: Kind, id: &[u8], payload: &[u8]) -> u64 {
    let mut s = Sum::new();
    s.update(&seq.to_le_bytes());
    s.update(&[kind.byte(), id.len() as u8]);
    s.update(&(payload.len() as u32).to_le_bytes());
    s.update(id);
    s.update(payload);
    s.finish()
}

/// Header and id of a record; the payload follows them.
fn head(seq: u64, kind: Kind, id: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER + id.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&seq.to_le_bytes());
    h.push(kind.byte());
    h.push(id.len() as u8);
    h.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    h.extend_from_slice(&record_sum(seq, kind, id.as_bytes(), payload).to_le_bytes());
    h.extend_from_slice(id.as_bytes());
    h
}

/// Queue ids are hex digits; anything else in a record is damage, and is
/// never used as a file name.
fn valid_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= ID_MAX && id.iter().all(u8::is_ascii_alphanumeric)
}

/// The records of segment `seq`, in order, up to the first that does not
/// check.
pub fn records(buf: &[u8], seq: u64) -> Vec<(Kind, &str, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0usize;
    // Bounded: every pass moves `off` forward by at least HEADER.
    while let Some(h) = buf.get(off..off + HEADER) {
        let word = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a[..r.len()].copy_from_slice(&h[r]);
            u64::from_le_bytes(a)
        };
        if &h[..4] != MAGIC || word(4..12) != seq {
            break;
        }
        let Some(kind) = Kind::of(h[12]) else { break };
        let (id_len, len, sum) = (h[13] as usize, word(14..18) as usize, word(18..26));
        let start = off + HEADER;
        let (Some(id), Some(payload)) = (
            buf.get(start..start + id_len),
            buf.get(start + id_len..start + id_len + len),
        ) else {
            break;
        };
        if !valid_id(id) || record_sum(seq, kind, id, payload) != sum {
            break;
        }
        // valid_id admits ASCII only.
        let Ok(id) = std::str::from_utf8(id) else {
            break;
        };
        out.push((kind, id, payload));
        off = start + id_len + len;
    }
    out
}

/// `log/SEQ.log`, sixteen hex digits: names sort by sequence.
fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

/// What `log/` holds at start.
#[derive(Debug, Default)]
pub struct Found {
    /// Segments, oldest first.
    pub segments: Vec<(u64, PathBuf)>,
    /// Retired segments ready for reuse.
    pub idle: Vec<PathBuf>,
    /// The highest sequence number any segment here was written under,
    /// in use or retired: the next segment's is higher, so that records a
    /// reused segment still holds can never pass for its new ones.
    pub last: u64,
}

/// List `log/` (created if missing). Files that are neither are reported
/// and left alone.
pub fn find(dir: &Path) -> io::Result<Found> {
    super::mkdir(dir).map_err(|e| at(dir, e))?;
    let mut found = Found::default();
    for e in fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let e = e.map_err(|e| at(dir, e))?;
        let p = e.path();
        let m = fs::symlink_metadata(&p).map_err(|e| at(&p, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let hex = |s: &str| {
            (s.len() == 16)
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let seq = name.strip_suffix(".log").and_then(hex);
        let retired = name.strip_prefix("idle-").and_then(hex);
        found.last = found.last.max(seq.or(retired).unwrap_or(0));
        match seq {
            _ if !m.is_file() => {
                log::warn!("spool: {} is not a log segment; left alone", p.display())
            }
            Some(seq) => found.segments.push((seq, p)),
            None if name.starts_with("idle-") && m.len() == SEGMENT => found.idle.push(p),
            None if name.starts_with("idle-") => super::remove(&p)?,
            None => log::warn!("spool: {} is not a log segment; left alone", p.display()),
        }
    }
    found.segments.sort();
    for p in found.idle.split_off(found.idle.len().min(IDLE)) {
        super::remove(&p)?;
    }
    Ok(found)
}

/// Read a segment whole (it is at most [`SEGMENT`] bytes).
pub fn read(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = super::open_nofollow(p).map_err(|e| at(p, e))?;
    let mut buf = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&mut f, SEGMENT), &mut buf).map_err(|e| at(p, e))?;
    Ok(buf)
}

/// A new segment, zero-filled and fsynced.
fn create(p: &Path) -> io::Result<File> {
    let made = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(super::libc_flags::NOFOLLOW)
            .open(p)?;
        let zeros = vec![0u8; 1 << 20];
        for i in 0..SEGMENT / zeros.len() as u64 {
            f.write_all_at(&zeros, i * zeros.len() as u64)?;
        }
        f.sync_all()?;
        Ok(f)
    })();
    if made.is_err() {
        let _ = fs::remove_file(p);
    }
    made.map_err(|e| at(p, e))
}

fn open_rw(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(super::libc_flags::NOFOLLOW)
        .open(p)
        .map_err(|e| at(p, e))
}

struct Current {
    seq: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where the next record goes.
    off: u64,
    /// Sessions still writing or removing files this segment recorded.
    writers: Arc<AtomicUsize>,
}

/// Held from a record's append until the file it names is written (or
/// removed): the segment is not retired before.
#[must_use = "the segment may retire once this is dropped"]
pub struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Release);
    }
}

/// A closed segment on its way to retirement.
struct Closed {
    seq: u64,
    path: PathBuf,
    writers: Arc<AtomicUsize>,
}

/// The open log of a running spool.
pub struct Log {
    dir: PathBuf,
    dir_file: File,
    cur: Mutex<Current>,
    group: Group,
    idle: Arc<Mutex<Vec<PathBuf>>>,
    /// Closed segments, for the retirer.
    retire: crossbeam_channel::Sender<Closed>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Log({})", self.dir.display())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Log {
    /// Retire what start-up read (`found`, after its records were applied
    /// to the spool at `root`) and open the next segment.
    pub fn start(dir: &Path, found: Found, root: &File, root_path: &Path) -> io::Result<Log> {
        let dir_file = File::open(dir).map_err(|e| at(dir, e))?;
        // What the records were applied to, durable before they go.
        syncfs(root, root_path)?;
        let next = found.last + 1;
        let idle = Arc::new(Mutex::new(found.idle));
        for (seq, p) in &found.segments {
            recycle(dir, *seq, p, &idle)?;
        }
        let path = segment_path(dir, next);
        let file = take_idle(&idle, &path)?;
        // One fsync for the renames above: until it returns nothing is
        // appended, and a start cut short before it finds the old
        // segments, or idle ones whose names keep `next` above them.
        dir_file.sync_all().map_err(|e| at(dir, e))?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let retirer = Retirer {
            dir: dir.to_path_buf(),
            dir_file: dir_file.try_clone().map_err(|e| at(dir, e))?,
            root: root.try_clone().map_err(|e| at(root_path, e))?,
            root_path: root_path.to_path_buf(),
            idle: idle.clone(),
        };
        std::thread::Builder::new()
            .name("spool-log".into())
            .spawn(move || retirer.run(rx))
            .map_err(|e| at(dir, e))?;
        Ok(Log {
            dir: dir.to_path_buf(),
            dir_file,
            cur: Mutex::new(Current {
                seq: next,
                path,
                file: Arc::new(file),
                off: 0,
                writers: Default::default(),
            }),
            group: Group::default(),
            idle,
            retire: tx,
        })
    }

    /// Append records (not yet durable: see [`Log::sync`]). Hold what it
    /// returns until the files the records name are written or removed.
    pub fn append(&self, recs: &[(Kind, &str, &[u8])]) -> io::Result<Pending> {
        let need: u64 = recs
            .iter()
            .map(|(_, id, p)| (HEADER + id.len() + p.len()) as u64)
            .sum();
        if need > SEGMENT
            || recs
                .iter()
                .any(|(_, id, p)| !valid_id(id.as_bytes()) || p.len() > RECORD_MAX)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "commit log: record too large or id not a queue id",
            ));
        }
        let mut cur = lock(&self.cur);
        if cur.off + need > SEGMENT {
            self.rotate(&mut cur)?;
        }
        let written = match recs {
            [(kind, id, payload)] => write_two_at(
                &cur.file,
                &head(cur.seq, *kind, id, payload),
                payload,
                cur.off,
            ),
            _ => {
                let mut all = Vec::with_capacity(need as usize);
                for (kind, id, payload) in recs {
                    all.extend_from_slice(&head(cur.seq, *kind, id, payload));
                    all.extend_from_slice(payload);
                }
                cur.file.write_all_at(&all, cur.off)
            }
        };
        written.map_err(|e| at(&cur.path, e))?;
        cur.off += need;
        cur.writers.fetch_add(1, Ordering::Relaxed);
        Ok(Pending(cur.writers.clone()))
    }

    /// Return once everything appended before this call is durable.
    pub fn sync(&self) -> io::Result<()> {
        self.group.sync(|| {
            let (file, path) = {
                let cur = lock(&self.cur);
                (cur.file.clone(), cur.path.clone())
            };
            file.sync_data().map_err(|e| at(&path, e))
        })
    }

    /// Close the full segment and open the next.
    fn rotate(&self, cur: &mut Current) -> io::Result<()> {
        // Its records not yet flushed belong to sessions whose flush will
        // be of the next segment.
        cur.file.sync_data().map_err(|e| at(&cur.path, e))?;
        let path = segment_path(&self.dir, cur.seq + 1);
        let file = take_idle(&self.idle, &path)?;
        // The name must be durable before a record in it is acknowledged.
        self.dir_file.sync_all().map_err(|e| at(&self.dir, e))?;
        let old = std::mem::replace(
            cur,
            Current {
                seq: cur.seq + 1,
                path,
                file: Arc::new(file),
                off: 0,
                writers: Default::default(),
            },
        );
        // The retirer is gone only when the log is.
        let _ = self.retire.send(Closed {
            seq: old.seq,
            path: old.path,
            writers: old.writers,
        });
        Ok(())
    }
}

/// Write `a` then `b` at `off` in one system call where it can.
fn write_two_at(f: &File, a: &[u8], b: &[u8], off: u64) -> io::Result<()> {
    let slices = [io::IoSlice::new(a), io::IoSlice::new(b)];
    let n = nix::sys::uio::pwritev(f, &slices, off as i64).map_err(io::Error::from)?;
    // A short write (a signal) goes on byte-wise.
    if n < a.len() {
        f.write_all_at(&a[n..], off + n as u64)?;
        f.write_all_at(b, off + a.len() as u64)
    } else {
        f.write_all_at(&b[n - a.len()..], off + n as u64)
    }
}

/// An idle segment renamed `path`, or a new one made there.
fn take_idle(idle: &Mutex<Vec<PathBuf>>, path: &Path) -> io::Result<File> {
    let reuse = lock(idle).pop();
    match reuse {
        Some(p) => match fs::rename(&p, path) {
            Ok(()) => open_rw(path),
            Err(e) => {
                log::warn!("spool: cannot reuse {}: {e}", p.display());
                create(path)
            }
        },
        None => create(path),
    }
}

/// Keep a retired segment for reuse, or delete it when enough are kept.
fn recycle(dir: &Path, seq: u64, p: &Path, idle: &Mutex<Vec<PathBuf>>) -> io::Result<()> {
    let mut idle = lock(idle);
    let full = fs::metadata(p).is_ok_and(|m| m.len() == SEGMENT);
    if idle.len() < IDLE && full {
        let to = dir.join(format!("idle-{seq:016x}"));
        fs::rename(p, &to).map_err(|e| at(p, e))?;
        idle.push(to);
        Ok(())
    } else {
        super::remove(p)
    }
}

struct Retirer {
    dir: PathBuf,
    dir_file: File,
    root: File,
    root_path: PathBuf,
    idle: Arc<Mutex<Vec<PathBuf>>>,
}

impl Retirer {
    /// Retire each closed segment sent, in order, until the log is
    /// dropped, and keep a segment ready for the next rotation (only once
    /// one happened: a spool that receives little never needs it).
    fn run(self, rx: crossbeam_channel::Receiver<Closed>) {
        for closed in rx {
            wait_for_writers(&closed);
            if let Err(e) = self.retire(closed.seq, &closed.path) {
                log::error!(
                    "spool: commit log: cannot retire {}: {e}; it stays, and is read again at the next start",
                    closed.path.display()
                );
            }
            if lock(&self.idle).is_empty() {
                static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = self
                    .dir
                    .join(format!("idle-new-{:x}-{n}", crate::time::unix_now()));
                match create(&p) {
                    Ok(_) => lock(&self.idle).push(p),
                    Err(e) => log::warn!("spool: commit log: cannot prepare a segment: {e}"),
                }
            }
        }
    }

    fn retire(&self, seq: u64, closed: &Path) -> io::Result<()> {
        // Every file and removal the segment recorded is done (see
        // wait_for_writers), so this syncfs makes them durable without it.
        syncfs(&self.root, &self.root_path)?;
        recycle(&self.dir, seq, closed, &self.idle)?;
        self.dir_file.sync_all().map_err(|e| at(&self.dir, e))
    }
}

/// Return once no session holds a [`Pending`] of `closed`. Sessions hold
/// one for a file write or a few unlinks, so this is almost always at
/// once; a disk that stalls them stalls this too, and retiring earlier
/// could drop the only durable copy of an acknowledged message.
fn wait_for_writers(closed: &Closed) {
    let started = std::time::Instant::now();
    let mut warned = false;
    while closed.writers.load(Ordering::Acquire) > 0 {
        if !warned && started.elapsed() > std::time::Duration::from_secs(10) {
            log::warn!(
                "spool: commit log: {} waits for sessions still writing the files it recorded",
                closed.path.display()
            );
            warned = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, kind: Kind, id: &str, payload: &[u8]) -> Vec<u8> {
        let mut v = head(seq, kind, id, payload);
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn records_stop_at_the_first_that_does_not_check() {
        let a = rec(7, Kind::Message, "00A1", b"message one");
        let b = rec(7, Kind::Done, "00A1", b"");
        let c = rec(7, Kind::Message, "00A2", b"message two");
        let whole = [a.clone(), b.clone(), c.clone()].concat();
        let ids = |buf: &[u8], seq| {
            records(buf, seq)
                .into_iter()
                .map(|(k, id, p)| (k, id.to_string(), p.len()))
                .collect::<Vec<_>>()
        };
        let all = vec![
            (Kind::Message, "00A1".to_string(), 11),
            (Kind::Done, "00A1".to_string(), 0),
            (Kind::Message, "00A2".to_string(), 11),
        ];
        let mut torn = whole.clone();
        let last = torn.len() - 1;
        torn[last] ^= 1;
        let mut bad_id = [a.clone(), rec(7, Kind::Done, "../x", b"")].concat();
        bad_id.extend_from_slice(&c);
        let mut bad_kind = b.clone();
        bad_kind[12] = b'X';
        let mut zeros = a.clone();
        zeros.extend_from_slice(&[0u8; 64]);
        for (name, buf, seq, want) in [
            ("whole", whole.clone(), 7, all.clone()),
            ("another segment's", whole.clone(), 8, vec![]),
            ("torn last", torn, 7, all[..2].to_vec()),
            (
                "cut short",
                whole[..whole.len() - 3].to_vec(),
                7,
                all[..2].to_vec(),
            ),
            (
                "header cut",
                whole[..a.len() + 10].to_vec(),
                7,
                all[..1].to_vec(),
            ),
            ("zeros after", zeros, 7, all[..1].to_vec()),
            ("id not a queue id", bad_id, 7, all[..1].to_vec()),
            (
                "unknown kind",
                [a.clone(), bad_kind, c.clone()].concat(),
                7,
                all[..1].to_vec(),
            ),
            ("empty", vec![], 7, vec![]),
        ] {
            assert_eq!(ids(&buf, seq), want, "{name}");
        }
    }

    #[test]
    fn start_keeps_at_most_two_idle_segments_and_only_whole_ones() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        super::super::mkdir(&dir).unwrap();
        for name in ["idle-1", "idle-2", "idle-3", "idle-4"] {
            File::create(dir.join(name))
                .unwrap()
                .set_len(SEGMENT)
                .unwrap();
        }
        File::create(dir.join("idle-short"))
            .unwrap()
            .set_len(100)
            .unwrap();
        fs::write(dir.join("notes.txt"), b"an operator's").unwrap();
        fs::write(dir.join("0000000000000007.log"), b"").unwrap();
        let found = find(&dir).unwrap();
        assert_eq!(found.idle.len(), IDLE);
        assert_eq!(found.segments, [(7, dir.join("0000000000000007.log"))]);
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        // Two idle ones, the segment, and the file that is no segment.
        assert_eq!(left.len(), 4, "{left:?}");
        assert!(
            left.contains(&"notes.txt".to_string()) && !left.contains(&"idle-short".to_string())
        );
    }

    #[test]
    fn a_new_segment_is_numbered_above_every_retired_one() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        super::super::mkdir(&dir).unwrap();
        // A segment retired as number 9 and no segment in use (a crash
        // after start-up retired them all): its stale records must not
        // match the number of the segment it becomes.
        let idle = dir.join(format!("idle-{:016x}", 9));
        let f = File::create(&idle).unwrap();
        f.set_len(SEGMENT).unwrap();
        f.write_all_at(&rec(9, Kind::Message, "00A1", b"old mail"), 0)
            .unwrap();
        let found = find(&dir).unwrap();
        assert_eq!((found.segments.len(), found.last), (0, 9));
        let root = File::open(d.path()).unwrap();
        let log = Log::start(&dir, found, &root, d.path()).unwrap();
        let (seq, path) = {
            let cur = lock(&log.cur);
            (cur.seq, cur.path.clone())
        };
        assert_eq!(seq, 10);
        assert!(records(&read(&path).unwrap(), seq).is_empty());
    }

    #[test]
    fn a_segment_retires_only_once_its_files_are_written() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let root = File::open(d.path()).unwrap();
        let log = Log::start(&dir, find(&dir).unwrap(), &root, d.path()).unwrap();
        let first = lock(&log.cur).seq;
        // A session between its record and its file...
        let held = log.append(&[(Kind::Message, "0001", b"x")]).unwrap();
        // ...while others fill the segment.
        let payload = vec![b'y'; RECORD_MAX - 100];
        for i in 0..(SEGMENT as usize / payload.len() + 1) {
            drop(
                log.append(&[(Kind::Message, &format!("{i:04X}"), &payload)])
                    .unwrap(),
            );
        }
        assert!(lock(&log.cur).seq > first);
        let open = |seq| find(&dir).unwrap().segments.iter().any(|(s, _)| *s == seq);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            open(first),
            "segment {first} retired before its file was written"
        );
        drop(held);
        // Bounded: the retirer polls every millisecond.
        for _ in 0..100 {
            if !open(first) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!open(first), "segment {first} not retired");
    }

    #[test]
    fn appends_survive_rotation_and_segments_are_reused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("log");
        let found = find(&dir).unwrap();
        let root = File::open(d.path()).unwrap();
        let log = Log::start(&dir, found, &root, d.path()).unwrap();
        // Enough 1 MiB records to fill three segments.
        let payload = vec![b'x'; RECORD_MAX - 100];
        let n = (3 * SEGMENT as usize) / payload.len() + 1;
        for i in 0..n {
            drop(
                log.append(&[(Kind::Message, &format!("{i:04X}"), &payload)])
                    .unwrap(),
            );
            log.sync().unwrap();
        }
        let seq = lock(&log.cur).seq;
        assert!(seq >= 4, "three rotations, at segment {seq}");
        drop(log);
        // Wait for the retirer (bounded): closed segments become idle ones.
        let mut found = find(&dir).unwrap();
        for _ in 0..100 {
            if found.segments.len() == 1 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            found = find(&dir).unwrap();
        }
        assert_eq!(found.segments.len(), 1, "{found:?}");
        assert!(
            !found.idle.is_empty() && found.idle.len() <= IDLE,
            "{found:?}"
        );
        let (last, p) = &found.segments[0];
        assert_eq!(*last, seq);
        let buf = read(p).unwrap();
        let recs = records(&buf, seq);
        assert!(!recs.is_empty());
        assert!(
            recs.iter()
                .all(|(k, _, p)| *k == Kind::Message && p.len() == payload.len())
        );
        // A reused segment's old records carry its old number: none is read
        // as the new one's.
        for idle in &found.idle {
            let buf = read(idle).unwrap();
            assert!(records(&buf, seq + 1).is_empty());
        }
    }
}
