//! postern(8): the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;

use postern::config::{Config, LogTarget};
use postern::net::listener::{self, Server};
use postern::spool::Spool;

/// postern: a mail transfer agent built around STARTTLS.
#[derive(FromArgs)]
struct Args {
    /// stay in the foreground and log to stderr
    #[argh(switch, short = 'd')]
    foreground: bool,
    /// check the configuration file and exit
    #[argh(switch, short = 'n')]
    check: bool,
    /// more logging: the SMTP dialogue (never passwords)
    #[argh(switch, short = 'v')]
    verbose: bool,
    /// configuration file (default /etc/postern/postern.conf)
    #[argh(
        option,
        short = 'f',
        default = "PathBuf::from(\"/etc/postern/postern.conf\")"
    )]
    file: PathBuf,
    /// pid file when running in the background (default /run/postern.pid)
    #[argh(option, short = 'p', default = "PathBuf::from(\"/run/postern.pid\")")]
    pid_file: PathBuf,
}

fn main() -> ExitCode {
    let mut args: Args = argh::from_env();
    // In the background the working directory is /, so a relative -f
    // would break `posternctl reload`.
    if let Ok(cwd) = std::env::current_dir() {
        args.file = cwd.join(&args.file);
    }
    let cfg = match Config::load(&args.file) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        let resolver = if cfg.resolvers.is_empty() {
            postern::dns::Resolver::from_system().ok()
        } else {
            Some(postern::dns::Resolver::with_servers(cfg.resolvers.clone()))
        };
        if let Some(w) = resolver.and_then(|r| postern::delivery::dane_warning(&cfg, &r)) {
            eprintln!("postern: warning: {w}");
        }
        println!("postern: configuration {} OK", args.file.display());
        return ExitCode::SUCCESS;
    }
    let syslog = match &cfg.log {
        LogTarget::Syslog(p) => Some(p.clone()),
        LogTarget::Default if !args.foreground => Some(PathBuf::from("/dev/log")),
        _ => None,
    };
    postern::logging::init(postern::logging::Setup {
        verbose: args.verbose,
        stderr: args.foreground,
        syslog,
    });
    match run(cfg, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Arc<Config>, args: &Args) -> Result<(), String> {
    // Until the event loop takes over, a SIGHUP (an eager init script's
    // reload) must not kill us and a SIGTERM must still stop us.
    let early_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let early_hup = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, early_stop.clone())
            .map_err(|e| format!("signals: {e}"))?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, early_hup)
        .map_err(|e| format!("signals: {e}"))?;
    let run_as = postern::sys::run_as(cfg.user.as_deref())?;
    postern::sys::prepare_queue(&cfg.queue, run_as.as_ref())?;
    // Privileged ports are bound, and keys and tables were read with the
    // configuration, before anything else.
    let bound = listener::bind(&cfg)?;
    let metrics = match cfg.metrics {
        Some(addr) => {
            Some(std::net::TcpListener::bind(addr).map_err(|e| format!("metrics on {addr}: {e}"))?)
        }
        None => None,
    };
    if !args.foreground {
        let pid_file = postern::sys::open_pid_file(&args.pid_file)?;
        postern::sys::daemonize()?;
        if let Some(keeper) = postern::sys::keep_pid_file(pid_file)? {
            // The root process keeps the pid file only: the ports are the
            // daemon's, free again the moment it exits (a restart binds
            // them at once).
            drop(bound);
            keeper.run();
        }
    }
    if let Some(who) = &run_as {
        postern::sys::drop_privileges(who)?;
    }
    // The spool is the run-as user's: it is opened and scanned only now,
    // so nothing in it is ever followed or unlinked as root.
    let mut durability = cfg.limits.queue_sync;
    if durability != postern::spool::Durability::File
        && let Err(why) = postern::spool::syncfs_reports_errors(durability)
    {
        // The default gives way on an old kernel; a setting does not.
        if cfg.limits.queue_sync_set {
            return Err(why);
        }
        log::warn!("{why}: using limit queue-sync file");
        durability = postern::spool::Durability::File;
    }
    let spool = Spool::open(&cfg.queue)
        .map_err(|e| format!("queue: {e}"))?
        .with_spares(cfg.limits.spare_files)
        .with_durability(durability)
        .with_min_free(cfg.limits.queue_minfree());
    let report = spool.recover().map_err(|e| format!("queue: {e}"))?;
    log::info!(
        "queue {} (queue-sync {}): {} messages ({} rewritten from the two-file layout), removed {} temporary and {} orphan files, {} moved to corrupt/, {} spare files",
        cfg.queue.display(),
        durability.name(),
        report.messages,
        report.converted,
        report.removed_tmp,
        report.removed_orphans,
        report.quarantined,
        report.spares
    );
    if durability == postern::spool::Durability::Log {
        log::info!(
            "queue: commit log read: {} message files written again from it, {} files of finished messages removed",
            report.replayed,
            report.replay_removed
        );
    }
    // Every thread starts after the drop, and no client byte is read before.
    let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
    let (reload_tx, reload_rx) = crossbeam_channel::unbounded();
    let own = bound.iter().filter_map(|l| l.local_addr().ok()).collect();
    let delivery = postern::delivery::start(cfg.clone(), spool.clone(), ctl_rx, own)?;
    let spool = spool.with_notify(delivery.notify);
    let server = Server::new(cfg.clone(), Some(args.file.clone()), bound, Arc::new(spool))?
        .with_delivery(delivery.reloader);
    if let Some(m) = metrics {
        postern::metrics::serve(m, ctl_tx.clone())?;
    }
    postern::control::serve(
        &postern::control::socket_path(&cfg.queue),
        ctl_tx,
        reload_tx,
        server.waker(),
    )?;
    let r = server
        .run(reload_rx, &early_stop)
        .map_err(|e| format!("event loop: {e}"));
    let _ = std::fs::remove_file(postern::control::socket_path(&cfg.queue));
    r
}
