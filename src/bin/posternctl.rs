//! posternctl(8): talk to a running postern over its control socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use argh::FromArgs;

/// posternctl: show and manage postern's queue, reload its configuration.
#[derive(FromArgs)]
struct Args {
    /// configuration file, to find the queue (default /etc/postern/postern.conf)
    #[argh(
        option,
        short = 'f',
        default = "PathBuf::from(\"/etc/postern/postern.conf\")"
    )]
    file: PathBuf,
    /// control socket (default QUEUE/postern.sock)
    #[argh(option, short = 's')]
    socket: Option<PathBuf>,
    /// tls-check: print JSON instead of text
    #[argh(switch)]
    json: bool,
    /// show queue | show stats | show message ID | schedule ID|all | remove ID|all | reload | tls-check DOMAIN
    #[argh(positional, greedy)]
    command: Vec<String>,
}

/// `tls-check DOMAIN`: run in this process with the daemon's configuration
/// and delivery code (posternctl(8) gives the exit codes).
fn tls_check(file: &std::path::Path, domain: &str, json: bool) -> ExitCode {
    let cfg = match postern::config::Config::load(file) {
        Ok(c) => std::sync::Arc::new(c),
        Err(e) => {
            eprintln!("posternctl: {e}");
            return ExitCode::from(3);
        }
    };
    let own = cfg.listeners.iter().map(|l| l.addr).collect();
    let ctx = match postern::delivery::Context::new(cfg, own) {
        Ok(c) => c.without_spool(),
        Err(e) => {
            eprintln!("posternctl: {e}");
            return ExitCode::from(3);
        }
    };
    match postern::delivery::check::check(&ctx, domain) {
        Ok(r) => {
            print!("{}", if json { r.json() } else { r.text() });
            ExitCode::from(r.exit)
        }
        Err(e) => {
            eprintln!("posternctl: tls-check: {e}");
            ExitCode::from(3)
        }
    }
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let command = args.command.join(" ");
    if command.is_empty() {
        eprintln!(
            "posternctl: no command (show queue, show stats, show message ID, schedule ID|all, remove ID|all, reload, tls-check DOMAIN)"
        );
        return ExitCode::from(2);
    }
    if let [verb, rest @ ..] = args.command.as_slice()
        && verb == "tls-check"
    {
        // argh's greedy positional takes a --json given after the verb.
        let json = args.json || rest.iter().any(|a| a == "--json");
        let rest: Vec<&String> = rest.iter().filter(|a| *a != "--json").collect();
        return match rest.as_slice() {
            [domain] => tls_check(&args.file, domain, json),
            _ => {
                eprintln!("posternctl: usage: tls-check [--json] DOMAIN");
                ExitCode::from(3)
            }
        };
    }
    let socket = match args.socket {
        Some(s) => s,
        None => match postern::config::queue_dir(&args.file) {
            Ok(q) => postern::control::socket_path(&q),
            Err(e) => {
                eprintln!("posternctl: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let mut conn = match UnixStream::connect(&socket) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "posternctl: cannot connect to {}: {e}; is postern running?",
                socket.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    if let Err(e) = conn.write_all(format!("{command}\n").as_bytes()) {
        eprintln!("posternctl: {}: {e}", socket.display());
        return ExitCode::FAILURE;
    }
    let mut answer = String::new();
    if let Err(e) = conn.read_to_string(&mut answer) {
        eprintln!("posternctl: {}: {e}", socket.display());
        return ExitCode::FAILURE;
    }
    match answer.split_once('\n') {
        Some(("ok", rest)) => {
            print!("{rest}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "posternctl: {}",
                answer.trim_end().trim_start_matches("error: ")
            );
            ExitCode::FAILURE
        }
    }
}
