//! Process-level operations: background start, pid file, giving up root.
//!
//! Order at start-up (see `main.rs`): read the configuration (keys and
//! tables included), bind, open the spool, go to the background, write the
//! pid file, then [`drop_privileges`], and only then start any thread or
//! read a client byte.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, User};

/// The identity to run as.
pub struct RunAs {
    /// The user.
    pub user: User,
}

/// Decide whom to run as. As root, a `user` directive is required; `user
/// root` keeps root, explicitly. As anyone else, `user` must be that user or
/// absent (a non-root process cannot switch).
pub fn run_as(configured: Option<&str>) -> Result<Option<RunAs>, String> {
    let me = Uid::effective();
    match (me.is_root(), configured) {
        (true, None) => Err(
            "started as root without a 'user' directive: sessions would run as root. \
             Add 'user _postern' (or 'user root' to run as root on purpose)"
                .into(),
        ),
        (true, Some("root")) => {
            log::warn!("running as root, as 'user root' asks");
            Ok(None)
        }
        (true, Some(name)) => match User::from_name(name) {
            Ok(Some(user)) => Ok(Some(RunAs { user })),
            Ok(None) => Err(format!("user: no such user '{name}'")),
            Err(e) => Err(format!("user {name}: {e}")),
        },
        (false, Some(name)) => match User::from_uid(me) {
            Ok(Some(u)) if u.name == name => Ok(None),
            _ => Err(format!("'user {name}' needs postern to be started as root")),
        },
        (false, None) => Ok(None),
    }
}

/// Directories of the spool postern makes itself: the only entries root
/// ever looks at or hands over, one `openat` each, never following a link.
const SPOOL_DIRS: [&str; 6] = ["tmp", "mail", "corrupt", "free", "sts", "tlsrpt"];
const SPOOL_BUCKETS: [&str; 2] = ["tmp", "mail"];

fn nofollow_dir() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Prepare the queue directory while still root, touching nothing inside
/// it but the fixed directories postern creates: create it (mode 700) if
/// missing, refuse it if it is a symlink, writable by others, or owned by
/// someone other than root or the run-as user, and hand root-owned ones
/// to that user with `fchown` on a descriptor opened `O_NOFOLLOW`. Files
/// are never touched: the start-up scan runs after the drop, as the user
/// who owns them.
pub fn prepare_queue(root: &Path, who: Option<&RunAs>) -> Result<(), String> {
    let owner = who.map(|w| w.user.uid).unwrap_or_else(Uid::effective);
    let group = who.map(|w| w.user.gid);
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("queue {}: {e}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(format!("queue {}: {e}", root.display()));
        }
        _ => {}
    }
    let fd = nix::fcntl::open(root, nofollow_dir(), Mode::empty())
        .map_err(|e| spool_refusal(root, e))?;
    hand_over(&fd, root, owner, group, true)?;
    for name in SPOOL_DIRS {
        let path = root.join(name);
        let sub = match nix::fcntl::openat(&fd, name, nofollow_dir(), Mode::empty()) {
            Ok(sub) => sub,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(spool_refusal(&path, e)),
        };
        hand_over(&sub, &path, owner, group, false)?;
        if !SPOOL_BUCKETS.contains(&name) {
            continue;
        }
        for b in 0..16 {
            let bucket = format!("{b:x}");
            let bpath = path.join(&bucket);
            match nix::fcntl::openat(&sub, bucket.as_str(), nofollow_dir(), Mode::empty()) {
                Ok(bfd) => hand_over(&bfd, &bpath, owner, group, false)?,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(spool_refusal(&bpath, e)),
            }
        }
    }
    Ok(())
}

fn spool_refusal(path: &Path, e: Errno) -> String {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => format!(
            "queue: {} is a symlink or not a directory; refusing to use it (the spool's \
             directories must be real directories: move it away and restart)",
            path.display()
        ),
        e => format!("queue {}: {e}", path.display()),
    }
}

/// Check one spool directory's owner and mode through its descriptor and
/// give it to the run-as user if root owns it.
fn hand_over(
    fd: &OwnedFd,
    path: &Path,
    owner: Uid,
    group: Option<Gid>,
    is_root: bool,
) -> Result<(), String> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| format!("queue {}: {e}", path.display()))?;
    let uid = Uid::from_raw(st.st_uid);
    if uid != owner && !uid.is_root() {
        return Err(format!(
            "queue: {} is owned by uid {uid}, not by the user postern runs as (uid {owner}) \
             or root; refusing to use it (chown -R it to that user, or fix 'queue')",
            path.display()
        ));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(format!(
            "queue: {} is writable by group or others (mode {:o}); refusing to use it \
             (chmod 700 it)",
            path.display(),
            st.st_mode & 0o7777
        ));
    }
    if is_root && st.st_mode & 0o077 != 0 {
        nix::sys::stat::fchmod(fd, Mode::from_bits_truncate(0o700))
            .map_err(|e| format!("queue {}: chmod 700: {e}", path.display()))?;
        log::warn!(
            "queue {}: was mode {:o}; made it 700",
            path.display(),
            st.st_mode & 0o7777
        );
    }
    if uid != owner {
        nix::unistd::fchown(fd, Some(owner), group)
            .map_err(|e| format!("queue {}: chown: {e}", path.display()))?;
    }
    Ok(())
}

/// setgroups, setgid, setuid; then check root cannot be regained.
pub fn drop_privileges(who: &RunAs) -> Result<(), String> {
    let u = &who.user;
    let name = std::ffi::CString::new(u.name.clone()).map_err(|_| "bad user name".to_string())?;
    nix::unistd::initgroups(&name, u.gid)
        .or_else(|_| nix::unistd::setgroups(&[u.gid]))
        .map_err(|e| format!("setgroups for {}: {e}", u.name))?;
    nix::unistd::setgid(u.gid).map_err(|e| format!("setgid {}: {e}", u.gid))?;
    nix::unistd::setuid(u.uid).map_err(|e| format!("setuid {}: {e}", u.uid))?;
    let regained_uid = !u.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok();
    let regained_gid = u.gid.as_raw() != 0 && nix::unistd::setgid(Gid::from_raw(0)).is_ok();
    if regained_uid || regained_gid {
        return Err("root privileges could be regained after the drop; refusing to run".into());
    }
    if Uid::effective() != u.uid || Uid::current() != u.uid || Gid::effective() != u.gid {
        return Err(format!("privilege drop to {} did not take", u.name));
    }
    log::info!("running as {} (uid {}, gid {})", u.name, u.uid, u.gid);
    Ok(())
}

/// Go to the background: fork, new session, stdio on /dev/null.
pub fn daemonize() -> Result<(), String> {
    nix::unistd::daemon(false, false).map_err(|e| format!("cannot go to the background: {e}"))
}

/// Open the pid file as root, before going to the background so that a
/// refusal reaches the terminal: never through a link planted in its
/// place, and only a regular, singly linked file that root owns (the pid
/// directory may be writable by others). It stays root's, mode 644; see
/// [`keep_pid_file`] for what is written and when it is removed.
pub fn open_pid_file(path: &Path) -> Result<PidFile, String> {
    let err = |e: &dyn std::fmt::Display| format!("pid file {}: {e}", path.display());
    let dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => d,
        None => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| err(&"names no file"))?
        .to_os_string();
    let dirfd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(&e))?;
    let fd = nix::fcntl::openat(
        &dirfd,
        name.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| match e {
        Errno::ELOOP => err(&"is a symlink; refusing to write through it"),
        e => err(&e),
    })?;
    let st = nix::sys::stat::fstat(&fd).map_err(|e| err(&e))?;
    if st.st_mode & libc_mode::S_IFMT != libc_mode::S_IFREG
        || st.st_nlink != 1
        || st.st_uid != Uid::effective().as_raw()
    {
        return Err(err(
            &"is not a regular file with one link that we own; refusing to write it",
        ));
    }
    Ok(PidFile {
        path: path.to_path_buf(),
        file: std::fs::File::from(fd),
        dirfd,
        name,
        ino: st.st_ino,
        dev: st.st_dev,
    })
}

/// A pid file opened by [`open_pid_file`].
pub struct PidFile {
    path: std::path::PathBuf,
    file: std::fs::File,
    dirfd: OwnedFd,
    name: std::ffi::OsString,
    ino: u64,
    dev: u64,
}

impl PidFile {
    fn write(&mut self, pid: i32) -> Result<(), String> {
        let f = &mut self.file;
        f.set_len(0)
            .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(0o644)))
            .and_then(|_| writeln!(f, "{pid}"))
            .map_err(|e| format!("pid file {}: {e}", self.path.display()))
    }

    /// Remove it, through the directory opened when it was written, and
    /// only if the name still holds the file we wrote.
    pub fn remove(&self) {
        let same = nix::sys::stat::fstatat(
            &self.dirfd,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok_and(|st| st.st_ino == self.ino && st.st_dev == self.dev);
        if same {
            let _ = nix::unistd::unlinkat(
                &self.dirfd,
                self.name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

mod libc_mode {
    pub const S_IFMT: u32 = nix::sys::stat::SFlag::S_IFMT.bits();
    pub const S_IFREG: u32 = nix::sys::stat::SFlag::S_IFREG.bits();
}

/// In the background, split in two: the child goes on to drop privileges
/// and serve (this returns None there); the parent gets a [`Keeper`],
/// which must first let go of everything else it holds (the listening
/// sockets, so that a restart can bind them the moment the daemon is
/// gone) and then [`Keeper::run`].
pub fn keep_pid_file(pid: PidFile) -> Result<Option<Keeper>, String> {
    use nix::unistd::{ForkResult, fork};
    // SAFETY: no thread has been started yet (see the start-up order at
    // the top of this file), so the child inherits a consistent process.
    #[allow(unsafe_code)]
    let forked = unsafe { fork() };
    match forked {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => Ok(None),
        Ok(ForkResult::Parent { child }) => Ok(Some(Keeper { pid, child })),
    }
}

/// The root process left in the background: it holds nothing but the
/// pid file (the daemon's pid), passes TERM, INT and HUP on to the daemon,
/// and removes the pid file once the daemon has exited, as the
/// unprivileged daemon could not (its directory is root's).
pub struct Keeper {
    pid: PidFile,
    child: nix::unistd::Pid,
}

impl Keeper {
    /// Keep the pid file until the daemon exits, then exit with its status.
    pub fn run(self) -> ! {
        use nix::sys::signal::{Signal, kill};
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let Keeper { mut pid, child } = self;
        if let Err(e) = pid.write(child.as_raw()) {
            log::error!("{e}");
            let _ = kill(child, Signal::SIGTERM);
            let _ = waitpid(child, None);
            std::process::exit(1);
        }
        let flags: Vec<(Signal, std::sync::Arc<std::sync::atomic::AtomicBool>)> =
            [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP]
                .into_iter()
                .map(|s| {
                    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let _ = signal_hook::flag::register(s as i32, flag.clone());
                    (s, flag)
                })
                .collect();
        // Bounded by the daemon's life: it is polled 10 times a second.
        let code = loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => break code,
                Ok(WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => break 1,
                _ => {}
            }
            for (sig, flag) in &flags {
                if flag.swap(false, std::sync::atomic::Ordering::Relaxed) {
                    let _ = kill(child, *sig);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        pid.remove();
        std::process::exit(code);
    }
}
