//! Private Postfix instances for the benches, through
//! `../shared/peers/postfix.sh`, and the CPU their process trees use.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::proc_stat;

pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/postfix.sh")
}

/// Why Postfix cannot run here, or None.
pub fn unavailable() -> Option<String> {
    if !script().exists() {
        return Some("../shared/peers/postfix.sh not found".into());
    }
    if Command::new("postfix").arg("-h").output().is_err()
        && !Path::new("/usr/sbin/postfix").exists()
    {
        return Some(
            "Postfix is not installed (Debian: debconf postfix/main_mailer_type = No configuration, then apt-get install postfix)".into(),
        );
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Some("running Postfix instances needs root".into());
    }
    None
}

/// A fresh directory for instances, under /tmp/bench (the script's
/// default place); Postfix's daemons run as `postfix`, so it must be
/// reachable by them.
pub fn base(name: &str) -> PathBuf {
    base_in(Path::new("/tmp/bench"), name)
}

/// As [`base`], under `parent` (which Postfix's daemons must be able to
/// reach).
pub fn base_in(parent: &Path, name: &str) -> PathBuf {
    let base = parent.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&base);
    let _ = Command::new("chmod").arg("755").arg(parent).status();
    let _ = Command::new("chmod").arg("755").arg(&base).status();
    base
}

/// Run postfix.sh with `args`; its output, or why it failed.
pub fn postfix_sh(env: &[(&str, &str)], args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|e| format!("postfix.sh: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "postfix.sh {}: {}{}",
            args.join(" "),
            text,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A port in the script's range that nothing listens on.
pub fn port_from(from: u16) -> u16 {
    (from..11000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 10000-10999")
}

/// CPU milliseconds used by `root` and everything under it: the live
/// descendants' own time, and the root's own and reaped children's time
/// (so a process that ends between two readings still counts). Clock
/// ticks are 10 ms on Linux.
pub fn tree_cpu_ms(root: u32) -> f64 {
    if root == 0 {
        return 0.0;
    }
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
            && let Some(f) = proc_stat(pid)
        {
            parent.insert(pid, (f.ppid, f));
        }
    }
    let under = |mut p: u32| {
        // Bounded: a parent chain is at most as long as the process list.
        for _ in 0..parent.len() {
            match parent.get(&p) {
                Some((pp, _)) if *pp == root => return true,
                Some((pp, _)) if *pp > 1 => p = *pp,
                _ => return false,
            }
        }
        false
    };
    let mut ticks = 0;
    for (pid, (_, f)) in &parent {
        if *pid == root {
            ticks += f.own() + f.cutime + f.cstime;
        } else if under(*pid) {
            ticks += f.own();
        }
    }
    ticks as f64 * 10.0
}

/// A Postfix instance's master process.
pub fn master_pid(base: &Path) -> u32 {
    std::fs::read_to_string(base.join("queue/pid/master.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}
