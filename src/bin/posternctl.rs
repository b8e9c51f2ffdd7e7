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
    /// show queue | show stats | schedule ID|all | remove ID|all | reload
    #[argh(positional, greedy)]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let args: Args = argh::from_env();
    let command = args.command.join(" ");
    if command.is_empty() {
        eprintln!(
            "posternctl: no command (show queue, show stats, schedule ID|all, remove ID|all, reload)"
        );
        return ExitCode::from(2);
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
