//! postern(8): the daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;

use postern::config::Config;
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
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_target(false)
        .init();
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    init_logging(args.verbose);
    let cfg = match Config::load(&args.file) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("postern: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        println!("postern: configuration {} OK", args.file.display());
        return ExitCode::SUCCESS;
    }
    if !args.foreground {
        log::warn!("background operation is not implemented yet; running in the foreground");
    }
    match run(cfg, args.file) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("postern: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cfg: Arc<Config>, path: PathBuf) -> Result<(), String> {
    let spool = Spool::open(&cfg.queue).map_err(|e| format!("queue: {e}"))?;
    let report = spool.recover().map_err(|e| format!("queue: {e}"))?;
    log::info!(
        "queue {}: {} messages, removed {} temporary and {} orphan files, {} moved to corrupt/",
        cfg.queue.display(),
        report.messages,
        report.removed_tmp,
        report.removed_orphans,
        report.quarantined
    );
    let bound = listener::bind(&cfg)?;
    let notify = postern::delivery::start(cfg.clone(), spool.clone())?;
    let spool = spool.with_notify(notify);
    let server = Server::new(cfg, Some(path), bound, Arc::new(spool))?;
    server.run().map_err(|e| format!("event loop: {e}"))
}
