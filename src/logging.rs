//! Logging: env_logger's filter and format on stderr, and/or RFC 3164
//! lines with the mail facility on the syslog socket, so postern's lines
//! land in the maillog administrators already read.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

use log::{Level, Log, Metadata, Record};

struct Syslog {
    sock: UnixDatagram,
    path: PathBuf,
}

struct Logger {
    env: env_logger::Logger,
    stderr: bool,
    syslog: Option<Mutex<Syslog>>,
}

/// LOG_MAIL.
const FACILITY_MAIL: u8 = 2;

fn severity(l: Level) -> u8 {
    match l {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        self.env.enabled(m)
    }
    fn log(&self, r: &Record) {
        if !self.env.matches(r) {
            return;
        }
        if self.stderr {
            self.env.log(r);
        }
        if let Some(s) = &self.syslog {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            // The pid is read per line: it changes when postern goes to
            // the background after the logger is set up.
            let line = format!(
                "<{}>postern[{}]: {}",
                FACILITY_MAIL * 8 + severity(r.level()),
                std::process::id(),
                r.args()
            );
            // A full or restarting syslog loses the line rather than
            // stalling a session.
            let _ = s.sock.send_to(line.as_bytes(), &s.path);
        }
    }
    fn flush(&self) {
        self.env.flush();
    }
}

/// Where log lines go.
pub struct Setup {
    /// `-v`.
    pub verbose: bool,
    /// Copy to stderr (`-d`).
    pub stderr: bool,
    /// Syslog socket, if any.
    pub syslog: Option<PathBuf>,
}

/// Install the logger. `RUST_LOG` overrides the level.
pub fn init(s: Setup) {
    let default = if s.verbose { "debug" } else { "info" };
    let env = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format_target(false)
        .build();
    let level = env.filter();
    let syslog = s.syslog.and_then(|path| match UnixDatagram::unbound() {
        Ok(sock) => Some(Mutex::new(Syslog { sock, path })),
        Err(e) => {
            eprintln!("postern: no syslog socket ({e}); logging to stderr");
            None
        }
    });
    let stderr = s.stderr || syslog.is_none();
    if log::set_boxed_logger(Box::new(Logger {
        env,
        stderr,
        syslog,
    }))
    .is_ok()
    {
        log::set_max_level(level);
    }
}
