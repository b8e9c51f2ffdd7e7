//! postern.conf(5): read in two phases, positioned directives first, then
//! one immutable [`Config`] that the daemon shares as `Arc<Config>`.
//!
//! Every error reads `FILE:LINE: what is wrong` and nothing starts on a bad
//! file; `postern -n` runs exactly this code. Keys and certificates are
//! loaded here too, so a check catches an unreadable or too-open key.

pub mod lexer;
pub mod table;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lexer::{Line, Token};

use crate::smtp::server::TlsMode;
use crate::tls::pki::Pki;
use table::Table;

/// A configuration error with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the error is in.
    pub file: String,
    /// Line, 0 when it concerns the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
    /// Further errors found in the same run, in file order: a new
    /// administrator learns of every missing file at once.
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    /// An error at `file:line`.
    pub fn at(file: &str, line: usize, msg: String) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line,
            msg,
            more: Vec::new(),
        }
    }

    /// One error standing for all of `errors` (none empty), in line order.
    fn all(mut errors: Vec<ConfigError>) -> ConfigError {
        errors.sort_by_key(|e| e.line);
        let mut first = errors.remove(0);
        first.more = errors;
        first
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)?;
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)?;
        }
        for e in &self.more {
            write!(f, "\n{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One `listen on` socket.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Address and port.
    pub addr: SocketAddr,
    /// TLS policy.
    pub tls: TlsMode,
    /// `pki NAME` for this listener (the default certificate for SNI misses).
    pub pki: Option<String>,
    /// `auth <table>`: credentials table name.
    pub auth: Option<String>,
    /// `hostname NAME` override for greeting and Received.
    pub hostname: Option<String>,
    /// `ca FILE ask-cert | verify-cert`: client certificates.
    pub client_ca: Option<ListenerCa>,
    /// `proxy [from <table>]`: every connection starts with a PROXY
    /// protocol header, from the addresses in the table if one is named.
    pub proxy: Option<ProxyFrom>,
    /// Line of the directive.
    pub line: usize,
}

/// Who may send a listener's PROXY headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyFrom {
    /// Any peer (`proxy`).
    Any,
    /// The addresses and networks of this table (`proxy from <table>`).
    Table(String),
}

/// A listener's `ca FILE ask-cert | verify-cert`.
#[derive(Debug, Clone)]
pub struct ListenerCa {
    /// The CA file and its certificates.
    pub ca: CaFile,
    /// `verify-cert`: a certificate chaining to the CA is required.
    pub require: bool,
}

/// Outbound TLS policy for a destination (postern.conf(5), `tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, certificate not checked, plaintext fallback.
    May,
    /// STARTTLS mandatory, certificate not checked.
    Encrypt,
    /// STARTTLS mandatory, certificate must verify and name the MX.
    Verify,
    /// DANE (RFC 7672) where the MX host publishes secure TLSA records,
    /// `encrypt` where they are all unusable, `may` where there are none.
    /// The default for MX delivery.
    Dane,
    /// DANE required: a host without secure, usable TLSA gets no mail.
    DaneOnly,
}

impl TlsPolicy {
    /// Parse `none|may|encrypt|verify|dane|dane-only`.
    pub fn parse(s: &str) -> Option<TlsPolicy> {
        Some(match s {
            "none" => TlsPolicy::None,
            "may" => TlsPolicy::May,
            "encrypt" => TlsPolicy::Encrypt,
            "verify" => TlsPolicy::Verify,
            "dane" => TlsPolicy::Dane,
            "dane-only" => TlsPolicy::DaneOnly,
            _ => return None,
        })
    }

    /// The word postern.conf(5) spells it with.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
            TlsPolicy::Dane => "dane",
            TlsPolicy::DaneOnly => "dane-only",
        }
    }

    /// `dane` or `dane-only`.
    pub fn is_dane(self) -> bool {
        matches!(self, TlsPolicy::Dane | TlsPolicy::DaneOnly)
    }
}

/// What an `action` does with the recipients it takes.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// `maildir PATH [users <t>] [alias <t>]`.
    Maildir {
        /// Path with `%{user}`.
        path: String,
        /// Known local parts.
        users: Option<String>,
        /// Alias table.
        alias: Option<String>,
    },
    /// `relay [host URL] [auth <t>] [tls-policy <t>] [tls POLICY] [port N] [ca FILE] [mta-sts on|off]`.
    Relay(RelayAction),
}

/// A `relay` action, read and checked: delivery parses nothing again.
#[derive(Debug, Clone)]
pub struct RelayAction {
    /// Smarthost; MX delivery when absent.
    pub host: Option<Smarthost>,
    /// Credentials for smarthost AUTH.
    pub auth: Option<Secrets>,
    /// Per-domain TLS policies.
    pub tls_policy: Option<PolicyTable>,
    /// Default TLS policy.
    pub tls: TlsPolicy,
    /// Destination port (tests); 25 by default.
    pub port: Option<u16>,
    /// CA file for `verify`, with its certificates.
    pub ca: Option<CaFile>,
    /// `mta-sts on|off`: honour MTA-STS policies (RFC 8461) under `tls
    /// dane`; on by default.
    pub mta_sts: bool,
    /// `pki NAME`: the client certificate to present when asked.
    pub pki: Option<String>,
}

impl RelayAction {
    /// The TLS policy for `domain`: its `tls-policy` entry, else `tls`.
    pub fn policy_for(&self, domain: &str) -> TlsPolicy {
        self.tls_policy
            .as_ref()
            .and_then(|t| t.by_domain.get(&domain.to_ascii_lowercase()))
            .copied()
            .unwrap_or(self.tls)
    }
}

/// A `secrets` table for smarthost AUTH: `host user:password` entries.
#[derive(Clone, Default)]
pub struct Secrets {
    /// The table's name (for messages).
    pub table: String,
    /// By lower-cased host name.
    pub by_host: BTreeMap<String, Secret>,
}

/// One smarthost login.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// User name.
    pub user: String,
    /// Password.
    pub pass: String,
}

// Never print a password, whatever logs a configuration.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secrets <{}> for {:?}",
            self.table,
            self.by_host.keys().collect::<Vec<_>>()
        )
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret {{ user: {:?}, pass: <hidden> }}", self.user)
    }
}

/// A `tls-policy` table: `domain none|may|encrypt|verify` entries.
#[derive(Debug, Clone, Default)]
pub struct PolicyTable {
    /// The table's name (for messages).
    pub table: String,
    /// By lower-cased domain.
    pub by_domain: BTreeMap<String, TlsPolicy>,
}

/// A CA file and the certificates read from it.
#[derive(Debug, Clone)]
pub struct CaFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its certificates (read when the configuration is).
    pub certs: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// How a smarthost URL's scheme says to speak to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `smtp://`: port 25, STARTTLS per the action's policy.
    Smtp,
    /// `smtp+tls://`: port 587, STARTTLS required.
    SmtpTls,
    /// `smtps://`: port 465, TLS before the greeting (RFC 8314).
    Smtps,
}

impl Scheme {
    /// The port a URL without one means.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Smtp => 25,
            Scheme::SmtpTls => 587,
            Scheme::Smtps => 465,
        }
    }
}

/// A smarthost URL: `smtp://`, `smtp+tls://` or `smtps://`, a host name
/// or address (`[v6]` in brackets), and an optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Smarthost {
    /// `smtp`, `smtp+tls` or `smtps`.
    pub scheme: Scheme,
    /// Host name or address, without brackets.
    pub host: String,
    /// The port given, if any.
    pub port: Option<u16>,
}

impl Smarthost {
    /// Parse `url`; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Smarthost, String> {
        let (scheme, rest) = url
            .split_once("://")
            .and_then(|(s, rest)| {
                let scheme = match s {
                    "smtp" => Scheme::Smtp,
                    "smtp+tls" => Scheme::SmtpTls,
                    "smtps" => Scheme::Smtps,
                    _ => return None,
                };
                Some((scheme, rest))
            })
            .ok_or_else(|| {
                format!("relay host must be smtp://, smtp+tls:// or smtps://, got '{url}'")
            })?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("relay host '{url}': no ']' after the IPv6 address"))?;
                if h.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("relay host '{url}': '{h}' is not an IPv6 address"));
                }
                (h, after.strip_prefix(':'))
            }
            None => match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            },
        };
        if host.is_empty() {
            return Err(format!("relay host '{url}' names no host"));
        }
        if host.parse::<std::net::IpAddr>().is_err()
            && !rest.starts_with('[')
            && !crate::smtp::address::is_domain(host)
        {
            return Err(format!(
                "relay host '{url}': '{host}' is not a host name or address"
            ));
        }
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .ok_or_else(|| format!("relay host '{url}': bad port '{p}'"))?,
            ),
        };
        Ok(Smarthost {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

/// `from` criterion of a `match` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    /// `from any`.
    Any,
    /// `from local`: loopback clients.
    Local,
    /// `from src <table>`: addresses and CIDRs.
    Src(String),
}

/// `for` criterion of a `match` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum For {
    /// `for any`.
    Any,
    /// `for local`: our `hostname`, `localhost` and bare `postmaster`.
    Local,
    /// `for domain "d"`.
    Domain(String),
    /// `for domain <table>`.
    DomainTable(String),
}

/// One `match` rule; the first that matches a recipient picks its action.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `match auth`: only authenticated sessions.
    pub auth: bool,
    /// `match cert [<table>]`: only clients with a certificate.
    pub cert: Option<CertRule>,
    /// Client criterion.
    pub from: From,
    /// Recipient criterion.
    pub rcpt: For,
    /// Action name.
    pub action: String,
    /// Line of the directive.
    pub line: usize,
}

/// Which client certificates a `match cert` rule takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRule {
    /// `match cert`: one that chains to the listener's `ca`.
    Verified,
    /// `match cert <table>`: one whose SHA-256 fingerprint the table lists.
    Listed(String),
}

/// `limit ...` values, each declared once with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `max-message-size` in bytes.
    pub max_message_size: u64,
    /// `max-recipients` per message.
    pub max_recipients: usize,
    /// `sessions`: concurrent inbound sessions.
    pub sessions: usize,
    /// `sessions-per-ip`.
    pub sessions_per_ip: usize,
    /// `workers`: session threads.
    pub workers: usize,
    /// `delivery-workers`.
    pub delivery_workers: usize,
    /// `spare-files`: finished message files kept for reuse (0: none).
    pub spare_files: usize,
    /// `command-timeout`: idle time allowed between client lines.
    pub command_timeout: Duration,
    /// `max-errors`: bad commands before 421.
    pub max_errors: u32,
    /// `auth-failures`: failed AUTH before 421.
    pub auth_failures: u32,
    /// `auth-delay`: pause before 535.
    pub auth_delay: Duration,
    /// `shutdown-timeout`: how long SIGTERM waits for sessions.
    pub shutdown_timeout: Duration,
    /// `connect-timeout`: outbound TCP connect.
    pub connect_timeout: Duration,
    /// `delivery-timeout`: outbound wait for any one reply (RFC 5321 §4.5.3.2).
    pub delivery_timeout: Duration,
    /// `retry-interval`: the first retry delay; later ones are 5, 15, 30
    /// and 60 times as long.
    pub retry_interval: Duration,
    /// `max-hops`: `Received:` headers allowed (Postfix `hopcount_limit`).
    pub max_hops: u32,
    /// `delivery-lifetime`: one outbound connection at most this long.
    pub delivery_lifetime: Duration,
    /// `session-lifetime`: one inbound session at most this long.
    pub session_lifetime: Duration,
    /// `junk-commands`: NOOP, RSET, HELP, VRFY before each counts as an error.
    pub junk_commands: u32,
    /// `ipv6-prefix`: IPv6 clients are counted per network of this length
    /// for `sessions-per-ip` and AUTH failures.
    pub ipv6_prefix: u8,
    /// `auth-failures-per-ip`: recent AUTH failures from one address
    /// before AUTH is refused.
    pub auth_failures_per_ip: u32,
    /// `auth-lockout`: how long a failed AUTH counts against its address.
    pub auth_lockout: Duration,
    /// `destination-concurrency`: connections at once to one destination.
    pub destination_concurrency: usize,
    /// `connection-reuse`: messages one outbound connection carries.
    pub connection_reuse: usize,
    /// `sessions-per-ip-exempt <table>`: networks not held to
    /// `sessions-per-ip` (loopback never is).
    pub sessions_per_ip_exempt: Option<String>,
    /// `queue-sync`: how a commit is made durable.
    pub queue_sync: crate::spool::Durability,
    /// `queue-sync` was set, not left at its default (which falls back to
    /// `file` where the kernel is too old for `log`).
    pub queue_sync_set: bool,
    /// `queue-minfree`: free space the spool's file system keeps; `auto`
    /// (None) is 1.5 × max-message-size, as Postfix's queue_minfree check.
    pub queue_minfree: Option<u64>,
}

impl Limits {
    /// Bytes that must stay free on the spool's file system before a new
    /// message is accepted (0: no floor).
    pub fn queue_minfree(&self) -> u64 {
        self.queue_minfree.unwrap_or(
            self.max_message_size
                .saturating_add(self.max_message_size / 2),
        )
    }
}

/// The `limit` keywords, their kind and default, in one table.
pub const LIMITS: &[(&str, &str, &str)] = &[
    ("max-message-size", "size", "35M"),
    ("max-recipients", "count", "100"),
    ("sessions", "count", "500"),
    ("sessions-per-ip", "count", "20"),
    ("workers", "count", "500"),
    ("delivery-workers", "count", "16"),
    ("spare-files", "count", "512"),
    ("queue-sync", "log|file|filesystem", "log"),
    ("command-timeout", "duration", "300s"),
    ("max-errors", "count", "20"),
    ("auth-failures", "count", "3"),
    ("auth-delay", "duration", "2s"),
    ("shutdown-timeout", "duration", "30s"),
    ("connect-timeout", "duration", "30s"),
    ("delivery-timeout", "duration", "300s"),
    ("retry-interval", "duration", "1m"),
    ("max-hops", "count", "50"),
    ("delivery-lifetime", "duration", "30m"),
    ("session-lifetime", "duration", "1h"),
    ("junk-commands", "count", "100"),
    ("ipv6-prefix", "count", "64"),
    ("auth-failures-per-ip", "count", "10"),
    ("auth-lockout", "duration", "15m"),
    ("queue-minfree", "size", "auto"),
    ("sessions-per-ip-exempt", "table", "none"),
    ("destination-concurrency", "count", "20"),
    ("connection-reuse", "count", "100"),
];

/// Every top-level keyword, for the man-page completeness test.
pub const KEYWORDS: &[&str] = &[
    "hostname",
    "queue",
    "user",
    "pki",
    "table",
    "listen",
    "action",
    "match",
    "limit",
    "bounce-after",
    "resolver",
    "log",
    "smtp",
    "mta-sts",
    "tls-report",
    "metrics",
];

/// `tls-report from ADDRESS dkim-key FILE selector NAME [org NAME]`.
#[derive(Debug, Clone)]
pub struct TlsReport {
    /// From: and `contact-info`; its domain signs (DKIM `d=`).
    pub from: String,
    /// The DKIM signer, its key read and checked with the configuration.
    pub signer: std::sync::Arc<crate::dkim::Signer>,
    /// `organization-name` (default: the host name).
    pub org: String,
}

/// `log stderr` / `log syslog [SOCKET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// stderr with `-d`, syslog in the background.
    Default,
    /// Always stderr.
    Stderr,
    /// The syslog socket (default /dev/log).
    Syslog(PathBuf),
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// File it was read from.
    pub file: PathBuf,
    /// Our host name.
    pub hostname: String,
    /// Spool directory.
    pub queue: PathBuf,
    /// User to run as after binding (its drop is done at start-up).
    pub user: Option<String>,
    /// Certificates by `pki` name.
    pub pki: BTreeMap<String, Arc<Pki>>,
    /// Tables by name.
    pub tables: BTreeMap<String, Table>,
    /// Listeners.
    pub listeners: Vec<Listener>,
    /// Actions by name.
    pub actions: BTreeMap<String, Delivery>,
    /// Rules in order.
    pub rules: Vec<Rule>,
    /// Limits.
    pub limits: Limits,
    /// `bounce-after`.
    pub bounce_after: Duration,
    /// `resolver`: DNS servers to use instead of /etc/resolv.conf.
    pub resolvers: Vec<crate::dns::Server>,
    /// `mta-sts port`: where MTA-STS policies are fetched (443; tests).
    pub mta_sts_port: u16,
    /// `tls-report`: send TLS reports (RFC 8460).
    pub tls_report: Option<TlsReport>,
    /// `metrics on ADDR port N`: the Prometheus endpoint.
    pub metrics: Option<SocketAddr>,
    /// `log`.
    pub log: LogTarget,
    /// `smtp bare-newline`.
    pub bare_newline: crate::smtp::server::BareNewline,
}

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::at(&name, 0, format!("cannot read configuration: {e}")))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&name, &text, base)
    }

    /// Validate configuration text; relative paths are taken from `base`.
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, ConfigError> {
        Parser {
            file,
            base,
            cfg: Config::empty(file),
            pki_files: BTreeMap::new(),
            user_line: 0,
            exempt_line: 0,
            action_lines: BTreeMap::new(),
            failed: Default::default(),
        }
        .run(text)
    }

    fn empty(file: &str) -> Config {
        Config {
            file: PathBuf::from(file),
            hostname: String::new(),
            queue: PathBuf::from("/var/spool/postern"),
            user: None,
            pki: BTreeMap::new(),
            tables: BTreeMap::new(),
            listeners: Vec::new(),
            actions: BTreeMap::new(),
            rules: Vec::new(),
            limits: default_limits(),
            bounce_after: Duration::from_secs(4 * 86400),
            resolvers: Vec::new(),
            mta_sts_port: 443,
            tls_report: None,
            metrics: None,
            log: LogTarget::Default,
            bare_newline: crate::smtp::server::BareNewline::Normalize,
        }
    }
}

fn default_limits() -> Limits {
    let mut l = Limits {
        max_message_size: 0,
        max_recipients: 0,
        sessions: 0,
        sessions_per_ip: 0,
        workers: 0,
        delivery_workers: 0,
        spare_files: 0,
        command_timeout: Duration::ZERO,
        max_errors: 0,
        auth_failures: 0,
        auth_delay: Duration::ZERO,
        shutdown_timeout: Duration::ZERO,
        connect_timeout: Duration::ZERO,
        delivery_timeout: Duration::ZERO,
        retry_interval: Duration::ZERO,
        max_hops: 0,
        delivery_lifetime: Duration::ZERO,
        session_lifetime: Duration::ZERO,
        junk_commands: 0,
        ipv6_prefix: 0,
        auth_failures_per_ip: 0,
        auth_lockout: Duration::ZERO,
        queue_minfree: None,
        queue_sync: crate::spool::Durability::Log,
        queue_sync_set: false,
        sessions_per_ip_exempt: None,
        destination_concurrency: 0,
        connection_reuse: 0,
    };
    for (name, _, default) in LIMITS {
        // The table's defaults are constants; a typo there is caught by the
        // unit test `defaults_parse`, so ignoring the Err here is safe.
        let _ = set_limit(&mut l, name, default);
    }
    // Only the config file sets it.
    l.queue_sync_set = false;
    l
}

fn set_limit(l: &mut Limits, name: &str, value: &str) -> Result<(), String> {
    let count = || -> Result<usize, String> {
        match value.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "limit {name}: expected a positive number, got '{value}'"
            )),
        }
    };
    // Counts kept as u32 (error and hop counters) saturate there.
    let count32 = || count().map(|n| n.min(u32::MAX as usize) as u32);
    let dur = || {
        parse_duration(value)
            .ok_or_else(|| format!("limit {name}: bad duration '{value}' (use e.g. 30s, 5m, 1h)"))
    };
    match name {
        "max-message-size" => {
            l.max_message_size = parse_size(value)
                .ok_or_else(|| format!("limit {name}: bad size '{value}' (use e.g. 35M)"))?
        }
        "max-recipients" => l.max_recipients = count()?,
        "sessions" => l.sessions = count()?,
        "sessions-per-ip" => l.sessions_per_ip = count()?,
        "workers" => l.workers = count()?,
        // 0 holds the queue: mail is accepted and kept, nothing is sent.
        "delivery-workers" if value == "0" => l.delivery_workers = 0,
        "delivery-workers" => l.delivery_workers = count()?,
        "spare-files" if value == "0" => l.spare_files = 0,
        "spare-files" => l.spare_files = count()?,
        "queue-sync" => {
            l.queue_sync_set = true;
            l.queue_sync = crate::spool::Durability::ALL
                .into_iter()
                .find(|d| d.name() == value)
                .ok_or_else(|| {
                    format!("limit {name}: expected log, file or filesystem, got '{value}'")
                })?
        }
        "command-timeout" => l.command_timeout = dur()?,
        "max-errors" => l.max_errors = count32()?,
        "auth-failures" => l.auth_failures = count32()?,
        "auth-delay" => l.auth_delay = dur()?,
        "shutdown-timeout" => l.shutdown_timeout = dur()?,
        "connect-timeout" => l.connect_timeout = dur()?,
        "delivery-timeout" => l.delivery_timeout = dur()?,
        "retry-interval" => l.retry_interval = dur()?,
        "max-hops" => l.max_hops = count32()?,
        "delivery-lifetime" => l.delivery_lifetime = dur()?,
        "session-lifetime" => l.session_lifetime = dur()?,
        "junk-commands" => l.junk_commands = count32()?,
        "auth-failures-per-ip" => l.auth_failures_per_ip = count32()?,
        "auth-lockout" => l.auth_lockout = dur()?,
        "destination-concurrency" => l.destination_concurrency = count()?,
        "connection-reuse" => l.connection_reuse = count()?,
        "sessions-per-ip-exempt" if value == "none" => l.sessions_per_ip_exempt = None,
        "sessions-per-ip-exempt" => l.sessions_per_ip_exempt = Some(value.to_string()),
        "queue-minfree" if value == "auto" => l.queue_minfree = None,
        "queue-minfree" if value == "0" => l.queue_minfree = Some(0),
        "queue-minfree" => {
            l.queue_minfree = Some(parse_size(value).ok_or_else(|| {
                format!("limit {name}: bad size '{value}' (use e.g. 100M, 0 for none, or auto)")
            })?)
        }
        "ipv6-prefix" => {
            l.ipv6_prefix = match count()? {
                n @ 1..=128 => n as u8,
                _ => return Err(format!("limit {name}: expected 1 to 128, got '{value}'")),
            }
        }
        _ => {
            let known: Vec<&str> = LIMITS.iter().map(|l| l.0).collect();
            return Err(format!(
                "unknown limit '{name}' (known: {})",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

/// `35M`, `512K`, `1G` or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(mult)
        .filter(|&n| n > 0)
}

/// `100ms`, `30s`, `5m`, `1h`, `4d` or seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().ok()?;
    Some(match &s[split..] {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86400)?),
        _ => return None,
    })
}

/// The `queue` directory of a configuration file, found without loading
/// keys or tables (posternctl runs without access to them).
pub fn queue_dir(path: &Path) -> Result<PathBuf, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::at(&name, 0, format!("cannot read configuration: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut queue = PathBuf::from("/var/spool/postern");
    for l in lexer::lex(&name, &text)? {
        if let [Token::Word(kw), v] = l.tokens.as_slice()
            && kw == "queue"
            && let Some(q) = v.text()
        {
            let q = Path::new(q);
            queue = if q.is_absolute() {
                q.to_path_buf()
            } else {
                base.join(q)
            };
        }
    }
    Ok(queue)
}

struct Parser<'a> {
    file: &'a str,
    base: &'a Path,
    cfg: Config,
    /// pki name → (cert path, key path, line).
    pki_files: BTreeMap<String, (Option<PathBuf>, Option<PathBuf>, usize)>,
    user_line: usize,
    exempt_line: usize,
    /// Line of each `action`, for errors found after the parse.
    action_lines: BTreeMap<String, usize>,
    /// Names whose defining line had an error.
    failed: std::collections::BTreeSet<String>,
}

/// Cursor over one directive's tokens.
struct Args<'t> {
    tokens: &'t [Token],
    pos: usize,
}

impl<'t> Args<'t> {
    fn next(&mut self) -> Option<&'t Token> {
        let t = self.tokens.get(self.pos);
        self.pos += 1;
        t
    }
    fn peek(&self) -> Option<&'t Token> {
        self.tokens.get(self.pos)
    }
    fn word(&mut self, what: &str) -> Result<&'t str, String> {
        match self.next() {
            Some(t) => t
                .text()
                .ok_or_else(|| format!("expected {what}, got '{t}'")),
            None => Err(format!("missing {what}")),
        }
    }
    fn table(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token::TableRef(n)) => Ok(n.clone()),
            Some(t) => Err(format!("expected <table> after {what}, got '{t}'")),
            None => Err(format!("missing <table> after {what}")),
        }
    }
    fn keyword(&mut self, kw: &str) -> Result<(), String> {
        match self.next() {
            Some(Token::Word(w)) if w == kw => Ok(()),
            Some(t) => Err(format!("expected '{kw}', got '{t}'")),
            None => Err(format!("expected '{kw}'")),
        }
    }
    fn end(&mut self) -> Result<(), String> {
        match self.next() {
            None => Ok(()),
            Some(t) => Err(format!("unexpected '{t}'")),
        }
    }
}

impl Parser<'_> {
    fn run(mut self, text: &str) -> Result<Config, ConfigError> {
        let lines = lexer::lex(self.file, text)?;
        let mut errors = Vec::new();
        for l in &lines {
            if let Err(msg) = self.directive(l) {
                // What the line would have defined is not reported missing
                // again where it is used.
                if let [Token::Word(kw), Token::Word(name), ..] = l.tokens.as_slice()
                    && ["table", "action", "pki"].contains(&kw.as_str())
                {
                    self.failed.insert(name.clone());
                }
                errors.push(ConfigError::at(self.file, l.line, msg));
            }
        }
        match self.finish() {
            Ok(cfg) if errors.is_empty() => Ok(cfg),
            Ok(_) => Err(ConfigError::all(errors)),
            Err(more) => {
                errors.extend(more);
                Err(ConfigError::all(errors))
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn directive(&mut self, l: &Line) -> Result<(), String> {
        let mut a = Args {
            tokens: &l.tokens,
            pos: 0,
        };
        let kw = a.word("a keyword")?;
        match kw {
            "hostname" => {
                let h = a.word("host name")?;
                if !crate::smtp::address::is_domain(h) {
                    return Err(format!("hostname: '{h}' is not a valid host name"));
                }
                self.cfg.hostname = h.to_string();
            }
            "queue" => self.cfg.queue = self.path(a.word("queue directory")?),
            "user" => {
                self.cfg.user = Some(a.word("user name")?.to_string());
                self.user_line = l.line;
            }
            "pki" => {
                let name = a.word("pki name")?.to_string();
                let which = a.word("'cert' or 'key'")?;
                let file = self.path(a.word("file name")?);
                let e = self
                    .pki_files
                    .entry(name.clone())
                    .or_insert((None, None, l.line));
                match which {
                    "cert" => e.0 = Some(file),
                    "key" => e.1 = Some(file),
                    w => return Err(format!("pki {name}: expected 'cert' or 'key', got '{w}'")),
                }
            }
            "table" => {
                let name = a.word("table name")?.to_string();
                if self.cfg.tables.contains_key(&name) {
                    return Err(format!("table {name} is defined twice"));
                }
                let t = match a.next() {
                    Some(Token::Open) => Table::inline(&l.tokens[a.pos..])
                        .map_err(|e| format!("table {name}: {e}"))?,
                    Some(t) => match t.text().and_then(|s| s.strip_prefix("file:")) {
                        Some(p) => {
                            let p = self.path(p);
                            Table::from_file(&p).map_err(|e| format!("table {name}: {e}"))?
                        }
                        None => {
                            return Err(format!(
                                "table {name}: expected file:PATH or {{ ... }}, got '{t}'"
                            ));
                        }
                    },
                    None => return Err(format!("table {name}: expected file:PATH or {{ ... }}")),
                };
                self.cfg.tables.insert(name, t);
                return Ok(());
            }
            "listen" => self.listen(&mut a, l.line)?,
            "action" => {
                self.action(&mut a)?;
                if let Some(Token::Word(name)) = l.tokens.get(1) {
                    self.action_lines.insert(name.clone(), l.line);
                }
            }
            "match" => self.rule(&mut a, l.line)?,
            "limit" => {
                let name = a.word("limit name")?;
                if name == "sessions-per-ip-exempt" {
                    let t = a.table("limit sessions-per-ip-exempt")?;
                    set_limit(&mut self.cfg.limits, name, &t)?;
                    self.exempt_line = l.line;
                } else {
                    let value = a.word("limit value")?;
                    set_limit(&mut self.cfg.limits, name, value)?;
                }
            }
            "smtp" => match a.word("'bare-newline'")? {
                "bare-newline" => {
                    self.cfg.bare_newline = match a.word("'normalize' or 'reject'")? {
                        "normalize" => crate::smtp::server::BareNewline::Normalize,
                        "reject" => crate::smtp::server::BareNewline::Reject,
                        w => {
                            return Err(format!(
                                "smtp bare-newline: expected 'normalize' or 'reject', got '{w}'"
                            ));
                        }
                    }
                }
                w => return Err(format!("smtp: expected 'bare-newline', got '{w}'")),
            },
            "bounce-after" => {
                let v = a.word("duration")?;
                self.cfg.bounce_after =
                    parse_duration(v).ok_or_else(|| format!("bounce-after: bad duration '{v}'"))?;
            }
            "log" => {
                self.cfg.log = match a.word("'stderr' or 'syslog'")? {
                    "stderr" => LogTarget::Stderr,
                    "syslog" => LogTarget::Syslog(match a.next() {
                        Some(t) => self.path(t.text().ok_or_else(|| {
                            format!("log syslog: expected a socket path, got '{t}'")
                        })?),
                        None => PathBuf::from("/dev/log"),
                    }),
                    w => return Err(format!("log: expected 'stderr' or 'syslog', got '{w}'")),
                };
            }
            "metrics" => {
                a.keyword("on")?;
                let ip = a.word("address")?;
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| format!("metrics on: '{ip}' is not an IP address"))?;
                a.keyword("port")?;
                let p = a.word("port number")?;
                let port: u16 = p
                    .parse()
                    .map_err(|_| format!("metrics on: bad port '{p}'"))?;
                self.cfg.metrics = Some(SocketAddr::new(ip, port));
            }
            "tls-report" => {
                let (mut from, mut key, mut selector, mut org) = (None, None, None, None);
                while let Some(t) = a.next() {
                    match t.text() {
                        Some("from") => from = Some(a.word("address")?.to_string()),
                        Some("dkim-key") => key = Some(self.path(a.word("key file")?)),
                        Some("selector") => selector = Some(a.word("selector")?.to_string()),
                        Some("org") => org = Some(a.word("organization name")?.to_string()),
                        _ => return Err(format!("tls-report: unexpected '{t}'")),
                    }
                }
                let from = from.ok_or("tls-report: 'from ADDRESS' is required")?;
                let domain = crate::smtp::address::parse_mailbox(&from)
                    .filter(|m| !m.domain.is_empty())
                    .map(|m| m.domain)
                    .ok_or_else(|| format!("tls-report: from '{from}' is not an address"))?;
                let key = key.ok_or(
                    "tls-report: 'dkim-key FILE' is required (RFC 8460 §3: unsigned reports are ignored)",
                )?;
                let selector = selector.ok_or("tls-report: 'selector NAME' is required")?;
                let signer = crate::dkim::Signer::from_file(&key, &domain, &selector)
                    .map_err(|e| format!("tls-report: {e}"))?;
                self.cfg.tls_report = Some(TlsReport {
                    from,
                    signer: std::sync::Arc::new(signer),
                    org: org.unwrap_or_default(),
                });
            }
            "mta-sts" => {
                a.keyword("port")?;
                let v = a.word("port")?;
                self.cfg.mta_sts_port = v
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("mta-sts port: bad port '{v}'"))?;
            }
            "resolver" => {
                let v = a.word("resolver address")?;
                let addr = v
                    .parse::<SocketAddr>()
                    .or_else(|_| v.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        format!(
                            "resolver: '{v}' is not an address or address:port ([v6]:port for IPv6)"
                        )
                    })?;
                let mut server = crate::dns::Server::new(addr);
                if a.peek().and_then(Token::text) == Some("trust-ad") {
                    a.next();
                    server.trust_ad = true;
                }
                self.cfg.resolvers.push(server);
            }
            other => return Err(format!("unknown keyword '{other}'")),
        }
        a.end()
    }

    fn listen(&mut self, a: &mut Args, line: usize) -> Result<(), String> {
        a.keyword("on")?;
        let host = a.word("address")?;
        let ips: Vec<IpAddr> =
            match host {
                "localhost" => vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
                h => vec![h.parse().map_err(|_| {
                    format!("listen on: '{h}' is not an IP address (or 'localhost')")
                })?],
            };
        let mut port = None;
        let mut tls = TlsMode::Off;
        let mut pki = None;
        let mut auth = None;
        let mut hostname = None;
        let mut client_ca = None;
        let mut proxy = None;
        while let Some(t) = a.next() {
            match t.text() {
                Some("proxy") => {
                    proxy = Some(if a.peek().and_then(Token::text) == Some("from") {
                        a.next();
                        ProxyFrom::Table(a.table("proxy from")?)
                    } else {
                        ProxyFrom::Any
                    });
                }
                Some("ca") => {
                    let path = self.path(a.word("CA file")?);
                    let require = match a.word("'ask-cert' or 'verify-cert'")? {
                        "ask-cert" => false,
                        "verify-cert" => true,
                        w => {
                            return Err(format!(
                                "listen on: ca FILE must be followed by ask-cert or verify-cert, got '{w}'"
                            ));
                        }
                    };
                    let certs = crate::tls::client::read_ca(&path)
                        .map_err(|e| format!("listen on: {e}"))?;
                    client_ca = Some(ListenerCa {
                        ca: CaFile { path, certs },
                        require,
                    });
                }
                Some("port") => {
                    let p = a.word("port number")?;
                    port = Some(
                        p.parse::<u16>()
                            .map_err(|_| format!("listen on: bad port '{p}'"))?,
                    );
                }
                Some(m @ ("tls" | "tls-require" | "smtps")) => {
                    if tls != TlsMode::Off {
                        return Err("listen on: give only one of tls, tls-require, smtps".into());
                    }
                    tls = match m {
                        "tls" => TlsMode::Optional,
                        "tls-require" => TlsMode::Required,
                        _ => TlsMode::Implicit,
                    };
                }
                Some("pki") => pki = Some(a.word("pki name")?.to_string()),
                Some("auth") => auth = Some(a.table("auth")?),
                Some("hostname") => hostname = Some(a.word("host name")?.to_string()),
                _ => return Err(format!("listen on: unexpected '{t}'")),
            }
        }
        let port = port.unwrap_or(if tls == TlsMode::Implicit { 465 } else { 25 });
        if client_ca.is_some() && tls == TlsMode::Off {
            return Err(
                "listen on: client certificates (ca FILE ask-cert|verify-cert) need tls, tls-require or smtps"
                    .into(),
            );
        }
        for ip in ips {
            self.cfg.listeners.push(Listener {
                addr: SocketAddr::new(ip, port),
                tls,
                pki: pki.clone(),
                auth: auth.clone(),
                hostname: hostname.clone(),
                client_ca: client_ca.clone(),
                proxy: proxy.clone(),
                line,
            });
        }
        Ok(())
    }

    fn action(&mut self, a: &mut Args) -> Result<(), String> {
        let name = a.word("action name")?.to_string();
        if self.cfg.actions.contains_key(&name) {
            return Err(format!("action {name} is defined twice"));
        }
        let d = match a.word("'maildir' or 'relay'")? {
            "maildir" => {
                let path = a.word("maildir path")?.to_string();
                if !path.starts_with('/') {
                    return Err(format!("action {name}: maildir path must be absolute"));
                }
                let (mut users, mut alias) = (None, None);
                while let Some(t) = a.next() {
                    match t.text() {
                        Some("users") => users = Some(a.table("users")?),
                        Some("alias") => alias = Some(a.table("alias")?),
                        _ => return Err(format!("action {name}: unexpected '{t}'")),
                    }
                }
                Delivery::Maildir { path, users, alias }
            }
            "relay" => {
                let (mut host, mut auth, mut tls_policy, mut tls, mut port, mut ca) =
                    (None, None, None, None, None, None);
                let mut mta_sts = true;
                let mut pki = None;
                while let Some(t) = a.next() {
                    match t.text() {
                        Some("host") => {
                            let h = a.word("relay URL")?;
                            host = Some(
                                Smarthost::parse(h).map_err(|e| format!("action {name}: {e}"))?,
                            );
                        }
                        // Filled from the tables once every table is read.
                        Some("auth") => {
                            auth = Some(Secrets {
                                table: a.table("auth")?,
                                ..Secrets::default()
                            })
                        }
                        Some("tls-policy") => {
                            tls_policy = Some(PolicyTable {
                                table: a.table("tls-policy")?,
                                ..PolicyTable::default()
                            })
                        }
                        Some("tls") => {
                            let p = a.word("TLS policy")?;
                            tls = Some(TlsPolicy::parse(p)
                                .ok_or_else(|| format!("action {name}: tls must be none, may, encrypt, verify, dane or dane-only, got '{p}'"))?);
                        }
                        Some("port") => {
                            let p = a.word("port")?;
                            port = Some(
                                p.parse()
                                    .map_err(|_| format!("action {name}: bad port '{p}'"))?,
                            );
                        }
                        Some("pki") => pki = Some(a.word("pki name")?.to_string()),
                        Some("mta-sts") => {
                            mta_sts = match a.word("'on' or 'off'")? {
                                "on" => true,
                                "off" => false,
                                w => {
                                    return Err(format!(
                                        "action {name}: mta-sts must be on or off, got '{w}'"
                                    ));
                                }
                            }
                        }
                        Some("ca") => {
                            ca = Some(CaFile {
                                path: self.path(a.word("CA file")?),
                                certs: Vec::new(),
                            })
                        }
                        _ => return Err(format!("action {name}: unexpected '{t}'")),
                    }
                }
                // Credentials go only to a server whose certificate was
                // verified, unless `tls encrypt` says otherwise on purpose.
                let tls = match (auth.is_some(), tls) {
                    (true, Some(TlsPolicy::None)) => {
                        return Err(format!(
                            "action {name}: 'auth' with 'tls none' would send the password in the clear"
                        ));
                    }
                    (true, None | Some(TlsPolicy::May)) => TlsPolicy::Verify,
                    (_, Some(t)) => t,
                    // DANE is fail-safe as a default: without secure TLSA
                    // records (or a validating resolver) it is `may`.
                    (false, None) if host.is_none() => TlsPolicy::Dane,
                    (false, None) => TlsPolicy::May,
                };
                // RFC 7672 §2.2: DANE authenticates MX hosts; a smarthost
                // is not one (as in Postfix, whose DANE needs an MX lookup).
                if host.is_some() && tls.is_dane() {
                    return Err(format!(
                        "action {name}: tls {} applies to MX delivery only; for a smarthost ('host') use tls verify",
                        tls.as_str()
                    ));
                }
                Delivery::Relay(RelayAction {
                    host,
                    auth,
                    tls_policy,
                    tls,
                    port,
                    ca,
                    mta_sts,
                    pki,
                })
            }
            w => {
                return Err(format!(
                    "action {name}: expected 'maildir' or 'relay', got '{w}'"
                ));
            }
        };
        self.cfg.actions.insert(name, d);
        Ok(())
    }

    fn rule(&mut self, a: &mut Args, line: usize) -> Result<(), String> {
        let mut auth = false;
        if a.peek().and_then(Token::text) == Some("auth") {
            a.next();
            auth = true;
        }
        let mut cert = None;
        if a.peek().and_then(Token::text) == Some("cert") {
            a.next();
            cert = Some(match a.peek() {
                Some(Token::TableRef(_)) => CertRule::Listed(a.table("cert")?),
                _ => CertRule::Verified,
            });
        }
        a.keyword("from")?;
        let from = match a.word("'any', 'local' or 'src'")? {
            "any" => From::Any,
            "local" => From::Local,
            "src" => From::Src(a.table("src")?),
            w => {
                return Err(format!(
                    "match: expected 'from any', 'from local' or 'from src <table>', got '{w}'"
                ));
            }
        };
        a.keyword("for")?;
        let rcpt = match a.word("'any', 'local' or 'domain'")? {
            "any" => For::Any,
            "local" => For::Local,
            "domain" => match a.next() {
                Some(Token::TableRef(t)) => For::DomainTable(t.clone()),
                Some(t) => match t.text() {
                    Some(d) => For::Domain(d.to_ascii_lowercase()),
                    None => return Err(format!("match: expected a domain, got '{t}'")),
                },
                None => return Err("match: missing domain".into()),
            },
            w => {
                return Err(format!(
                    "match: expected 'for any', 'for local' or 'for domain', got '{w}'"
                ));
            }
        };
        a.keyword("action")?;
        let action = a.word("action name")?.to_string();
        self.cfg.rules.push(Rule {
            auth,
            cert,
            from,
            rcpt,
            action,
            line,
        });
        Ok(())
    }

    /// Cross-checks once every line is read; every independent error is
    /// collected.
    fn finish(mut self) -> Result<Config, Vec<ConfigError>> {
        let file = self.file;
        let err = |line: usize, msg: String| ConfigError::at(file, line, msg);
        let mut errors = Vec::new();
        // A name whose own line failed was reported there.
        let failed = std::mem::take(&mut self.failed);
        let missing = |name: &String| !failed.contains(name);
        if self.cfg.hostname.is_empty() {
            self.cfg.hostname = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| crate::smtp::address::is_domain(h))
                .unwrap_or_else(|| "localhost".to_string());
        }
        for (name, (cert, key, line)) in std::mem::take(&mut self.pki_files) {
            let (Some(cert), Some(key)) = (cert, key) else {
                errors.push(err(
                    line,
                    format!("pki {name}: both 'cert' and 'key' are needed"),
                ));
                continue;
            };
            match Pki::load(&name, &cert, &key) {
                Ok(pki) => {
                    self.cfg.pki.insert(name, Arc::new(pki));
                }
                Err(e) => {
                    errors.push(err(line, e));
                    self.failed.insert(name);
                }
            }
        }
        if self.cfg.listeners.is_empty() {
            errors.push(err(
                0,
                "no 'listen on' directive: postern would accept nothing".into(),
            ));
        }
        let only_pki = if self.cfg.pki.len() == 1 && self.failed.is_empty() {
            self.cfg.pki.keys().next().cloned()
        } else {
            None
        };
        for l in &mut self.cfg.listeners {
            match &l.pki {
                Some(p) if !self.cfg.pki.contains_key(p) && !self.failed.contains(p) => {
                    errors.push(err(l.line, format!("listen on: no pki named '{p}'")));
                }
                None if l.tls != TlsMode::Off => match &only_pki {
                    Some(p) => l.pki = Some(p.clone()),
                    None if !self.failed.is_empty() => {}
                    None => errors.push(err(
                        l.line,
                        "listen on: tls, tls-require and smtps need 'pki NAME'".into(),
                    )),
                },
                _ => {}
            }
            if let Some(t) = &l.auth {
                match self.cfg.tables.get(t) {
                    None if missing(t) => {
                        errors.push(err(l.line, format!("listen on: no table named '{t}'")))
                    }
                    None => {}
                    Some(table) => {
                        if let Err(e) = table.check_credentials() {
                            errors.push(err(l.line, format!("auth <{t}>: {e}")));
                        }
                        if l.tls == TlsMode::Off {
                            log::warn!(
                                "{file}:{}: auth on a listener without TLS: AUTH will always be refused (538)",
                                l.line
                            );
                        }
                    }
                }
            }
        }
        let tables = &self.cfg.tables;
        for (name, d) in self.cfg.actions.iter_mut() {
            let line = self.action_lines.get(name).copied().unwrap_or(0);
            let used: Vec<&String> = match d {
                Delivery::Maildir { users, alias, .. } => {
                    users.iter().chain(alias.iter()).collect()
                }
                Delivery::Relay(r) => r
                    .auth
                    .iter()
                    .map(|s| &s.table)
                    .chain(r.tls_policy.iter().map(|p| &p.table))
                    .collect(),
            };
            for t in used {
                if !tables.contains_key(t) && missing(t) {
                    errors.push(err(line, format!("action {name}: no table named '{t}'")));
                }
            }
            let Delivery::Relay(r) = d else { continue };
            if let Some(p) = &r.pki
                && !self.cfg.pki.contains_key(p)
            {
                errors.push(err(line, format!("action {name}: no pki named '{p}'")));
            }
            if let Some(p) = &mut r.tls_policy
                && let Some(table) = tables.get(&p.table)
            {
                match table.parse_values("TLS policy", TlsPolicy::parse) {
                    Err(e) => errors.push(err(
                        line,
                        format!(
                            "action {name}: tls-policy <{}>: {e} (use none, may, encrypt, verify, dane or dane-only)",
                            p.table
                        ),
                    )),
                    Ok(m) => p.by_domain = m,
                }
            }
            if let Some(sec) = &mut r.auth
                && let Some(table) = tables.get(&sec.table)
            {
                let secret = |v: &str| {
                    v.split_once(':')
                        .filter(|(u, _)| !u.is_empty())
                        .map(|(user, pass)| Secret {
                            user: user.to_string(),
                            pass: pass.to_string(),
                        })
                };
                match table.parse_values("secret", secret) {
                    Err(e) => errors.push(err(
                        line,
                        format!(
                            "action {name}: auth <{}>: {e} (use 'host user:password')",
                            sec.table
                        ),
                    )),
                    Ok(m) => sec.by_host = m,
                }
            }
            // Read now, so that `postern -n` sees a missing or broken file.
            if let Some(ca) = &mut r.ca {
                match crate::tls::client::read_ca(&ca.path) {
                    Ok(certs) => ca.certs = certs,
                    Err(e) => errors.push(err(line, format!("action {name}: {e}"))),
                }
            }
        }
        for r in &self.cfg.rules {
            if !self.cfg.actions.contains_key(&r.action) && missing(&r.action) {
                errors.push(err(
                    r.line,
                    format!("match: no action named '{}'", r.action),
                ));
            }
            let tables = [
                match &r.from {
                    From::Src(t) => Some(t),
                    _ => None,
                },
                match &r.rcpt {
                    For::DomainTable(t) => Some(t),
                    _ => None,
                },
                match &r.cert {
                    Some(CertRule::Listed(t)) => Some(t),
                    _ => None,
                },
            ];
            for t in tables.into_iter().flatten() {
                if !self.cfg.tables.contains_key(t) && missing(t) {
                    errors.push(err(r.line, format!("match: no table named '{t}'")));
                }
            }
            if let From::Src(t) = &r.from
                && let Some(table) = self.cfg.tables.get(t)
                && let Err(e) = table.check_networks()
            {
                errors.push(err(r.line, format!("from src <{t}>: {e}")));
            }
            if let Some(CertRule::Listed(t)) = &r.cert
                && let Some(table) = self.cfg.tables.get(t)
            {
                for k in table.keys() {
                    let fp = crate::tls::client_auth::normalize_fingerprint(k);
                    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
                        errors.push(err(
                            r.line,
                            format!(
                                "match cert <{t}>: '{k}' is not a SHA-256 certificate fingerprint (64 hex digits, colons allowed: openssl x509 -noout -fingerprint -sha256)"
                            ),
                        ));
                    }
                }
            }
        }
        for l in &self.cfg.listeners {
            let Some(ProxyFrom::Table(t)) = &l.proxy else {
                continue;
            };
            match self.cfg.tables.get(t) {
                None if missing(t) => errors.push(err(
                    l.line,
                    format!("listen on: proxy from: no table named '{t}'"),
                )),
                None => {}
                Some(table) => {
                    if let Err(e) = table.check_networks() {
                        errors.push(err(l.line, format!("listen on: proxy from <{t}>: {e}")));
                    }
                }
            }
        }
        if let Some(t) = &self.cfg.limits.sessions_per_ip_exempt {
            match self.cfg.tables.get(t) {
                None if missing(t) => errors.push(err(
                    self.exempt_line,
                    format!("limit sessions-per-ip-exempt: no table named '{t}'"),
                )),
                None => {}
                Some(table) => {
                    if let Err(e) = table.check_networks() {
                        errors.push(err(
                            self.exempt_line,
                            format!("limit sessions-per-ip-exempt <{t}>: {e}"),
                        ));
                    }
                }
            }
        }
        if let Some(u) = &self.cfg.user
            && !matches!(nix::unistd::User::from_name(u), Ok(Some(_)))
        {
            errors.push(err(
                self.user_line,
                format!("user: no such user '{u}' in the password database"),
            ));
        }
        if errors.is_empty() {
            Ok(self.cfg)
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
