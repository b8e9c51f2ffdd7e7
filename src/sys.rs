//! Process-level operations: background start, pid file, giving up root.
//!
//! Order at start-up (see `main.rs`): read the configuration (keys and
//! tables included), bind, open the spool, go to the background, write the
//! pid file, then [`drop_privileges`], and only then start any thread or
//! read a client byte.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

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

/// Hand the spool (and pid file) to the run-as user, so it can work there
/// after the drop.
pub fn chown_tree(path: &Path, who: &RunAs) -> Result<(), String> {
    let (uid, gid) = (Some(who.user.uid), Some(who.user.gid));
    let set = |p: &Path| {
        nix::unistd::chown(p, uid, gid).map_err(|e| format!("chown {}: {e}", p.display()))
    };
    set(path)?;
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            // The spool is two levels deep; symlinks are not followed.
            if p.is_symlink() {
                continue;
            }
            chown_tree(&p, who)?;
        }
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

/// Write our pid (mode 644).
pub fn write_pid_file(path: &Path) -> Result<(), String> {
    let mut f =
        std::fs::File::create(path).map_err(|e| format!("pid file {}: {e}", path.display()))?;
    writeln!(f, "{}", std::process::id())
        .map_err(|e| format!("pid file {}: {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    Ok(())
}
