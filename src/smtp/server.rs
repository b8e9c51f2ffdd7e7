//! The inbound SMTP dialogue as a state machine that never touches a socket,
//! the clock or the disk.
//!
//! The driver pushes received bytes in with [`Session::feed`] and pulls
//! [`Action`]s out with [`Session::next_action`] until it gets
//! [`Action::NeedInput`]. Actions that need the outside world (spool, TLS,
//! a pause) stop the machine until the driver reports back
//! ([`Session::message_opened`], [`Session::queued`], [`Session::tls_started`]),
//! so replies keep their order under PIPELINING (RFC 2920) and nothing the
//! client sent after STARTTLS is ever read as if it came inside TLS
//! (RFC 3207 §4.2, CVE-2011-0411): the machine owns the input buffer and
//! empties it itself at the 220.
//!
//! Implements RFC 5321 §4.1 (commands and sequencing), RFC 3207 (STARTTLS),
//! RFC 4954 with RFC 4616 PLAIN and LOGIN, RFC 1870 SIZE, RFC 6152 8BITMIME,
//! RFC 2034 enhanced codes and RFC 3848 `with` keywords. Not here: which
//! recipients are allowed and whose password is right ([`Policy`]), and how
//! the message is stored (the driver).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::address::Mailbox;
use super::command::{self, Body, Command};
use super::reply::{self, Reply};
/// Part of the session's API: what the driver reports after a handshake.
pub use crate::tls::TlsInfo;

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4 allows 512;
/// AUTH responses need more).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Body bytes gathered before they are handed to the driver.
const BODY_CHUNK: usize = 64 * 1024;
/// A DATA line longer than this is passed on in pieces.
const MAX_DATA_PIECE: usize = 16 * 1024;

/// What a line ending in a bare LF means (`smtp bare-newline`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareNewline {
    /// Postfix 3.9's default: take it as CR LF, in commands and in DATA,
    /// but end DATA only at CR LF . CR LF, so that no smuggled message
    /// can start early.
    Normalize,
    /// Refuse it with 554 (DATA is read to its real end first).
    Reject,
}

/// How a listener treats TLS (postern.conf(5), `listen on`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS on this listener.
    Off,
    /// STARTTLS offered (`tls`).
    Optional,
    /// STARTTLS mandatory before mail or auth (`tls-require`).
    Required,
    /// Implicit TLS (`smtps`): the driver handshakes before the greeting.
    Implicit,
}

/// Decisions the session needs from configuration.
pub trait Policy: Send + Sync {
    /// Which action takes this recipient, or the refusal to send.
    fn check_rcpt(&self, client: &Client, rcpt: &Mailbox) -> Result<String, Reply>;
    /// Whether `user` / `password` are valid on this listener.
    fn check_auth(&self, user: &str, password: &[u8]) -> bool;
    /// Failed AUTH attempts from this client's address (across sessions)
    /// that still count.
    fn auth_failures(&self, _client: &Client) -> u32 {
        0
    }
    /// Count a failed AUTH attempt against this client's address.
    fn auth_failed(&self, _client: &Client) {}
}

/// Who is on the other end.
#[derive(Clone, Debug)]
pub struct Client {
    /// Peer address.
    pub addr: IpAddr,
    /// Authenticated user, if any.
    pub auth: Option<String>,
    /// The certificate it presented in the TLS handshake, if any.
    pub cert: Option<crate::tls::client_auth::ClientCert>,
}

/// Settings a session takes from its listener.
#[derive(Clone, Debug)]
pub struct Params {
    /// Our name in the greeting, EHLO and Received.
    pub hostname: String,
    /// TLS policy of the listener.
    pub tls: TlsMode,
    /// A certificate is loaded, so STARTTLS can succeed.
    pub tls_available: bool,
    /// The listener has `auth <table>`.
    pub auth: bool,
    /// `limit max-message-size`.
    pub max_message_size: u64,
    /// `limit max-recipients`.
    pub max_recipients: usize,
    /// Errors before 421 (`limit max-errors`, 20 by default).
    pub max_errors: u32,
    /// Failed AUTH attempts before 421.
    pub max_auth_failures: u32,
    /// Pause before answering 535.
    pub auth_failure_delay: Duration,
    /// `limit auth-failures-per-ip`: recent failures from one address
    /// (across sessions) after which AUTH is refused with 421.
    pub auth_failures_per_ip: u32,
    /// `limit max-hops`: more `Received:` headers than this is a loop.
    pub max_hops: u32,
    /// `smtp bare-newline`.
    pub bare_newline: BareNewline,
    /// `limit junk-commands`: past this many NOOP, RSET, VRFY and HELP,
    /// each one also counts as an error (Postfix's
    /// `smtpd_junk_command_limit`), so an idle client cannot hold a
    /// session open by chatting.
    pub junk_commands: u32,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue this reply for sending (flush before blocking on a read).
    Reply(Reply),
    /// Flush, then run the server-side TLS handshake and call
    /// [`Session::tls_started`]. `discarded` plaintext bytes that followed
    /// the STARTTLS line were dropped.
    StartTls {
        /// Number of bytes thrown away.
        discarded: usize,
    },
    /// Open a spool transaction and call [`Session::message_opened`].
    BeginMessage,
    /// Append these bytes to the open message.
    Body(Vec<u8>),
    /// Make the message durable and call [`Session::queued`].
    Commit,
    /// Throw the open message away (refused after DATA).
    Abort,
    /// Wait this long before going on (after a failed AUTH).
    Sleep(Duration),
    /// Flush and close the connection.
    Close,
    /// Nothing more can happen until more bytes arrive.
    NeedInput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Connected, no EHLO/HELO yet.
    Connected,
    /// EHLO/HELO seen; no transaction.
    Greeted,
    /// MAIL accepted.
    Mail,
    /// At least one RCPT accepted.
    Rcpt,
    /// Waiting for the driver to open the spool transaction.
    Opening,
    /// Receiving the message body.
    Data,
    /// Body complete, waiting for [`Session::queued`].
    Committing,
    /// 220 sent, waiting for [`Session::tls_started`].
    Handshake,
    /// Waiting for an AUTH response line.
    AuthResponse(AuthStep),
    /// Closed: every further input is ignored.
    Closed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthStep {
    Plain,
    LoginUser,
    LoginPassword,
}

/// One accepted recipient and the action that takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The address as given.
    pub addr: Mailbox,
    /// Name of the `action` chosen at RCPT time.
    pub action: String,
}

/// The mail transaction the driver stores at [`Action::Commit`].
#[derive(Clone, Debug, Default)]
pub struct Transaction {
    /// MAIL FROM; None for `<>`.
    pub from: Option<Mailbox>,
    /// Accepted recipients.
    pub rcpts: Vec<Recipient>,
    /// Declared `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// Bytes of body after dot-unstuffing, Received header included.
    pub size: u64,
    /// `MAIL FROM:<…> REQUIRETLS` (RFC 8689 §4.1).
    pub requiretls: bool,
    /// The header section has `TLS-Required: No` (RFC 8689 §5).
    pub tls_optional: bool,
}

#[derive(Default)]
struct DataState {
    /// The last line ended in CRLF (or DATA just started), so a dot here is
    /// at the start of a line the RFC recognises.
    after_crlf: bool,
    /// The current line began in an earlier piece.
    mid_line: bool,
    /// The last piece ended in a CR whose LF (if any) is in the next one:
    /// a CRLF split between reads is a line end, any other byte after it
    /// makes it a bare CR (RFC 5321 §2.3.8), wherever the split falls.
    pending_cr: bool,
    /// Still in the header section (RFC 5322 §2.1): no empty line yet.
    in_header: bool,
    /// `Received:` fields seen in the header section.
    hops: u32,
    /// The last header line was `TLS-Required:` with its value still to
    /// come on a continuation line.
    tls_required_folded: bool,
    bare_newline: bool,
    too_big: bool,
}

/// One inbound SMTP session.
pub struct Session {
    params: Params,
    policy: Arc<dyn Policy>,
    client: Client,
    state: State,
    input: Vec<u8>,
    /// Start of the unconsumed part of `input`.
    pos: usize,
    /// Dropping an overlong command line until its LF.
    discarding_line: bool,
    helo: Option<(String, bool)>,
    tls: Option<TlsInfo>,
    tx: Transaction,
    data: DataState,
    body: Vec<u8>,
    queue_id: Option<String>,
    errors: u32,
    /// NOOP, RSET, VRFY and HELP so far (Postfix's junk commands).
    junk: u32,
    auth_failures: u32,
    login_user: String,
    out: VecDeque<Action>,
    log_id: String,
}

/// A command line as `-v` logs it: AUTH credentials hidden, bytes escaped.
fn loggable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut words = text.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(mech), Some(_)) if verb.eq_ignore_ascii_case("AUTH") => {
            format!("{verb} {mech} (hidden)")
        }
        _ => text.escape_debug().to_string(),
    }
}

/// What the dialogue log shows of a command line: never a credential.
/// A client that pipelined its AUTH responses after a refused AUTH sends
/// base64 lines that are no command; an unrecognised line therefore shows
/// only its first word when a space follows it (base64 has none) and its
/// length (Postfix logs no content either).
fn dialogue_log(line: &[u8], recognised: bool) -> String {
    if recognised {
        return loggable(line);
    }
    match line.iter().position(|&b| b == b' ') {
        Some(sp) if sp <= 16 => format!(
            "{} ... (unrecognised, {} octets)",
            loggable(&line[..sp]),
            line.len()
        ),
        _ => format!("(unrecognised, {} octets)", line.len()),
    }
}

impl Session {
    /// A session for a client that just connected (for `smtps`, after the
    /// handshake: pass its [`TlsInfo`]).
    pub fn new(
        params: Params,
        policy: Arc<dyn Policy>,
        addr: IpAddr,
        tls: Option<TlsInfo>,
    ) -> Session {
        let mut s = Session {
            params,
            policy,
            client: Client {
                addr,
                auth: None,
                cert: tls.as_ref().and_then(|t| t.client_cert.clone()),
            },
            state: State::Connected,
            input: Vec::new(),
            pos: 0,
            discarding_line: false,
            helo: None,
            tls,
            tx: Transaction::default(),
            data: DataState::default(),
            body: Vec::new(),
            queue_id: None,
            errors: 0,
            junk: 0,
            auth_failures: 0,
            login_user: String::new(),
            out: VecDeque::new(),
            log_id: String::new(),
        };
        let greeting = Reply::dynamic(220, "", &[format!("{} ESMTP postern", s.params.hostname)]);
        s.reply(greeting);
        s
    }

    /// A tag for this session's `-v` dialogue log lines.
    pub fn set_log_id(&mut self, id: &str) {
        self.log_id = id.to_string();
    }

    /// Bytes received from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state != State::Closed {
            // Consumed lines are dropped here, once per read, rather than
            // one memmove per line.
            if self.pos > 0 {
                self.input.drain(..self.pos);
                self.pos = 0;
            }
            self.input.extend_from_slice(bytes);
        }
    }

    /// Input not consumed yet.
    /// No partial command or line is waiting for more input.
    pub fn idle(&self) -> bool {
        self.pending().is_empty()
    }

    fn pending(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// Consume `n` bytes of pending input.
    fn take_pending(&mut self, n: usize) -> Vec<u8> {
        let v = self.input[self.pos..self.pos + n].to_vec();
        self.pos += n;
        v
    }

    fn clear_input(&mut self) {
        self.input.clear();
        self.pos = 0;
    }

    /// The next thing the driver must do.
    pub fn next_action(&mut self) -> Action {
        loop {
            if let Some(a) = self.out.pop_front() {
                return a;
            }
            match self.state {
                State::Closed | State::Opening | State::Committing | State::Handshake => {
                    return Action::NeedInput;
                }
                State::Data => {
                    if !self.step_data() {
                        return Action::NeedInput;
                    }
                }
                _ => {
                    if !self.step_command() {
                        return Action::NeedInput;
                    }
                }
            }
        }
    }

    /// The transaction being committed.
    pub fn transaction(&self) -> &Transaction {
        &self.tx
    }

    /// The client, with its authenticated name.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// HELO/EHLO name, if given.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|(n, _)| n.as_str())
    }

    /// TLS state of the session.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// Answer to [`Action::BeginMessage`]: the spool's id for the message and
    /// the arrival date (RFC 5322 form), or the failure.
    pub fn message_opened(&mut self, opened: Result<(String, String), ()>) {
        if self.state != State::Opening {
            return;
        }
        match opened {
            Ok((id, date)) => {
                self.state = State::Data;
                self.data = DataState {
                    after_crlf: true,
                    in_header: true,
                    ..DataState::default()
                };
                self.body = self.received_header(&id, &date).into_bytes();
                self.tx.size = self.body.len() as u64;
                self.queue_id = Some(id);
                self.reply(reply::START_DATA);
            }
            Err(()) => {
                self.state = State::Rcpt;
                self.reply(reply::STORAGE_FAILED);
            }
        }
    }

    /// Answer to [`Action::Commit`].
    pub fn queued(&mut self, result: Result<(), ()>) {
        if self.state != State::Committing {
            return;
        }
        let id = self.queue_id.take().unwrap_or_default();
        self.reset_transaction();
        self.state = State::Greeted;
        match result {
            Ok(()) => self.reply(Reply::queued(&id)),
            Err(()) => self.reply(reply::STORAGE_FAILED),
        }
    }

    /// The handshake after STARTTLS succeeded: back to just-connected, with
    /// EHLO, sender, recipients and auth forgotten (RFC 3207 §4.2).
    pub fn tls_started(&mut self, info: TlsInfo) {
        if self.state != State::Handshake {
            return;
        }
        self.client.cert = info.client_cert.clone();
        self.tls = Some(info);
        self.helo = None;
        self.client.auth = None;
        self.reset_transaction();
        self.clear_input();
        self.state = State::Connected;
    }

    /// The client said nothing for the command timeout.
    pub fn timed_out(&mut self) {
        if self.state != State::Closed {
            self.close_with(reply::TIMEOUT);
        }
    }

    /// The daemon is stopping.
    pub fn shutdown(&mut self) {
        if self.state != State::Closed {
            self.close_with(reply::SHUTTING_DOWN);
        }
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed && self.out.is_empty()
    }

    /// The message is currently being received.
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data | State::Opening | State::Committing)
    }

    fn reply(&mut self, r: Reply) {
        self.out.push_back(Action::Reply(r));
    }

    fn close_with(&mut self, r: Reply) {
        if matches!(self.state, State::Data | State::Committing) {
            self.out.push_back(Action::Abort);
        }
        self.reply(r);
        self.out.push_back(Action::Close);
        self.state = State::Closed;
        self.clear_input();
    }

    /// Reply with an error that counts towards `max_errors`.
    fn error(&mut self, r: Reply) {
        self.reply(r);
        self.errors += 1;
        if self.errors >= self.params.max_errors {
            self.close_with(reply::TOO_MANY_ERRORS);
        }
    }

    fn reset_transaction(&mut self) {
        self.tx = Transaction::default();
        self.body = Vec::new();
        self.queue_id = None;
    }

    /// Take one command line from the input; false when none is complete.
    fn step_command(&mut self) -> bool {
        let Some(lf) = memchr::memchr(b'\n', self.pending()) else {
            if self.pending().len() > MAX_COMMAND_LINE {
                self.discarding_line = true;
                self.clear_input();
            }
            return false;
        };
        let line = self.take_pending(lf + 1);
        let in_auth = matches!(self.state, State::AuthResponse(_));
        let body = &line[..line.len() - 1];
        // A command ending in a bare LF is taken as ending in CR LF when
        // normalizing; a CR anywhere but before the LF is always refused.
        let normalize = self.params.bare_newline == BareNewline::Normalize;
        let cr_ok = match body.strip_suffix(b"\r") {
            Some(b) => !b.contains(&b'\r'),
            None => normalize && !body.contains(&b'\r'),
        };
        let refusal = if std::mem::take(&mut self.discarding_line) || line.len() > MAX_COMMAND_LINE
        {
            Some(reply::LINE_TOO_LONG)
        } else if !cr_ok {
            Some(reply::BARE_NEWLINE)
        } else {
            None
        };
        if let Some(r) = refusal {
            // A bad line ends an AUTH exchange: otherwise the client's
            // next commands would be taken as its credentials (L5).
            if in_auth {
                self.state = State::Greeted;
                log::debug!("{} < (AUTH response hidden; exchange ended)", self.log_id);
            }
            self.error(r);
            return true;
        }
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if let State::AuthResponse(step) = self.state {
            log::debug!("{} < (AUTH response hidden)", self.log_id);
            self.auth_response(step, body);
            return true;
        }
        let parsed = command::parse(body);
        log::debug!("{} < {}", self.log_id, dialogue_log(body, parsed.is_ok()));
        match parsed {
            Ok(cmd) => self.command(cmd),
            Err(r) => self.error(r),
        }
        true
    }

    fn command(&mut self, cmd: Command) {
        if self.params.tls == TlsMode::Required && self.tls.is_none() && !cmd.allowed_before_tls() {
            return self.error(reply::MUST_STARTTLS_FIRST);
        }
        if matches!(
            cmd,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Help
        ) {
            self.junk = self.junk.saturating_add(1);
            if self.junk > self.params.junk_commands {
                self.errors += 1;
                if self.errors >= self.params.max_errors {
                    return self.close_with(reply::TOO_MANY_ERRORS);
                }
            }
        }
        match cmd {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail {
                from,
                size,
                body,
                requiretls,
            } => self.mail(from, size, body, requiretls),
            Command::Rcpt(to) => self.rcpt(to),
            Command::Data => self.data_cmd(),
            Command::Rset => {
                self.reset_transaction();
                if self.state != State::Connected {
                    self.state = State::Greeted;
                }
                self.reply(reply::OK);
            }
            Command::Noop => self.reply(reply::OK),
            Command::Quit => self.close_with(reply::BYE),
            Command::Vrfy => self.reply(reply::CANNOT_VRFY),
            Command::Expn => self.error(reply::NOT_IMPLEMENTED),
            Command::Help => self.reply(reply::HELP),
            Command::StartTls { with_args } => self.starttls(with_args),
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial),
        }
    }

    fn starttls_offered(&self) -> bool {
        self.tls.is_none()
            && self.params.tls_available
            && matches!(self.params.tls, TlsMode::Optional | TlsMode::Required)
    }

    fn ehlo(&mut self, name: String, extended: bool) {
        self.reset_transaction();
        let host = &self.params.hostname;
        let r = if extended {
            let mut lines = vec![
                format!("{host} Hello {name} [{}]", self.client.addr),
                "PIPELINING".to_string(),
                format!("SIZE {}", self.params.max_message_size),
                "8BITMIME".to_string(),
                "ENHANCEDSTATUSCODES".to_string(),
            ];
            if self.starttls_offered() {
                crate::stats::STARTTLS_OFFERED.inc();
                lines.push("STARTTLS".to_string());
            }
            if self.params.auth && self.tls.is_some() && self.client.auth.is_none() {
                lines.push("AUTH PLAIN LOGIN".to_string());
            }
            // RFC 8689 §4.1: only where it can be honoured, inside TLS.
            if self.tls.is_some() {
                lines.push("REQUIRETLS".to_string());
            }
            lines.push("HELP".to_string());
            Reply::dynamic(250, "", &lines)
        } else {
            Reply::dynamic(250, "", std::slice::from_ref(host))
        };
        self.helo = Some((name, extended));
        self.state = State::Greeted;
        self.reply(r);
    }

    fn mail(&mut self, from: Option<Mailbox>, size: Option<u64>, body: Body, requiretls: bool) {
        match self.state {
            State::Connected => return self.error(reply::HELO_FIRST),
            State::Greeted => {}
            _ => return self.error(reply::BAD_SEQUENCE),
        }
        if size.is_some_and(|s| s > self.params.max_message_size) {
            return self.error(reply::TOO_BIG);
        }
        if requiretls && self.tls.is_none() {
            return self.error(reply::REQUIRETLS_NEEDS_TLS);
        }
        self.tx = Transaction {
            from,
            eight_bit: body == Body::EightBitMime,
            requiretls,
            ..Transaction::default()
        };
        self.state = State::Mail;
        self.reply(reply::SENDER_OK);
    }

    fn rcpt(&mut self, to: Mailbox) {
        if !matches!(self.state, State::Mail | State::Rcpt) {
            return self.error(reply::BAD_SEQUENCE);
        }
        if self.tx.rcpts.len() >= self.params.max_recipients {
            return self.reply(reply::TOO_MANY_RECIPIENTS);
        }
        match self.policy.check_rcpt(&self.client, &to) {
            Ok(action) => {
                self.tx.rcpts.push(Recipient { addr: to, action });
                self.state = State::Rcpt;
                self.reply(reply::RECIPIENT_OK);
            }
            Err(r) => {
                // Postfix's "NOQUEUE: reject: RCPT", at the default level.
                log::info!(
                    "{} smtp reject address={} reply=\"{} {} {}\" from=<{}> to=<{}> helo=<{}>",
                    self.log_id,
                    self.client.addr,
                    r.code,
                    r.esc,
                    r.text,
                    self.tx
                        .from
                        .as_ref()
                        .map(|f| f.to_string())
                        .unwrap_or_default(),
                    crate::smtp::response::printable(&to.to_string()),
                    self.helo_name().unwrap_or("")
                );
                self.error(r)
            }
        }
    }

    fn data_cmd(&mut self) {
        match self.state {
            State::Rcpt => {
                self.state = State::Opening;
                self.out.push_back(Action::BeginMessage);
            }
            State::Connected => self.error(reply::HELO_FIRST),
            _ => self.error(reply::BAD_SEQUENCE),
        }
    }

    fn starttls(&mut self, with_args: bool) {
        if with_args {
            return self.error(reply::STARTTLS_NO_PARAMS);
        }
        if self.tls.is_some() {
            return self.error(reply::TLS_ALREADY_ACTIVE);
        }
        match self.params.tls {
            TlsMode::Off | TlsMode::Implicit => return self.error(reply::NOT_IMPLEMENTED),
            TlsMode::Optional | TlsMode::Required if !self.params.tls_available => {
                return self.reply(reply::TLS_NOT_AVAILABLE);
            }
            _ => {}
        }
        self.reply(reply::READY_TO_START_TLS);
        let discarded = self.pending().len();
        self.clear_input();
        self.state = State::Handshake;
        self.out.push_back(Action::StartTls { discarded });
    }

    fn auth(&mut self, mechanism: String, initial: Option<String>) {
        if !self.params.auth {
            return self.error(reply::NOT_IMPLEMENTED);
        }
        if self.tls.is_none() {
            return self.error(reply::ENCRYPTION_REQUIRED);
        }
        if self.state != State::Greeted || self.client.auth.is_some() {
            return self.error(reply::BAD_SEQUENCE);
        }
        let earlier = self.policy.auth_failures(&self.client);
        if earlier >= self.params.auth_failures_per_ip {
            log::warn!(
                "{} AUTH refused: {earlier} recent failures from {} (limit auth-failures-per-ip)",
                self.log_id,
                self.client.addr
            );
            return self.close_with(reply::AUTH_LOCKED_OUT);
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", None) => {
                self.state = State::AuthResponse(AuthStep::Plain);
                self.reply(Reply::dynamic(334, "", &[String::new()]));
            }
            ("PLAIN", Some(ir)) => self.auth_response(AuthStep::Plain, ir.as_bytes()),
            ("LOGIN", None) => {
                self.state = State::AuthResponse(AuthStep::LoginUser);
                self.reply(Reply::dynamic(334, "", &["VXNlcm5hbWU6".to_string()]));
            }
            ("LOGIN", Some(ir)) => self.auth_response(AuthStep::LoginUser, ir.as_bytes()),
            _ => self.error(reply::UNKNOWN_MECHANISM),
        }
    }

    fn auth_response(&mut self, step: AuthStep, line: &[u8]) {
        self.state = State::Greeted;
        if line == b"*" {
            return self.error(reply::AUTH_CANCELLED);
        }
        // RFC 4954 §4: "=" is an empty initial response.
        let decoded = if line == b"=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(line)
        };
        let Ok(decoded) = decoded else {
            return self.error(reply::CANNOT_DECODE);
        };
        match step {
            AuthStep::Plain => {
                let mut parts = decoded.split(|&b| b == 0);
                let (Some(authz), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.error(reply::CANNOT_DECODE);
                };
                if !authz.is_empty() && authz != user {
                    return self.auth_failed(&String::from_utf8_lossy(user));
                }
                let user = String::from_utf8_lossy(user).into_owned();
                let pass = pass.to_vec();
                self.auth_check(user, &pass);
            }
            AuthStep::LoginUser => {
                self.login_user = String::from_utf8_lossy(&decoded).into_owned();
                self.state = State::AuthResponse(AuthStep::LoginPassword);
                self.reply(Reply::dynamic(334, "", &["UGFzc3dvcmQ6".to_string()]));
            }
            AuthStep::LoginPassword => {
                let user = std::mem::take(&mut self.login_user);
                self.auth_check(user, &decoded);
            }
        }
    }

    fn auth_check(&mut self, user: String, pass: &[u8]) {
        if !user.is_empty() && self.policy.check_auth(&user, pass) {
            crate::stats::AUTH_OK.inc();
            self.client.auth = Some(user);
            self.reply(reply::AUTH_OK);
        } else {
            crate::stats::AUTH_FAILED.inc();
            self.auth_failed(&user);
        }
    }

    /// One line per failed AUTH at the default level, never the password,
    /// for the administrator and fail2ban (etc/fail2ban/postern.conf).
    fn auth_failed(&mut self, user: &str) {
        let user: String = crate::smtp::response::printable(user)
            .chars()
            .take(64)
            .collect();
        log::info!(
            "{} smtp auth-failed address={} user=<{user}>",
            self.log_id,
            self.client.addr
        );
        self.auth_failures += 1;
        // Slower with every failure the address has had lately, whichever
        // session it came from: auth-delay, twice that, ... up to 10 times.
        let earlier = self.policy.auth_failures(&self.client);
        self.policy.auth_failed(&self.client);
        self.out.push_back(Action::Sleep(
            self.params.auth_failure_delay * earlier.saturating_add(1).min(10),
        ));
        if self.auth_failures >= self.params.max_auth_failures {
            self.reply(reply::AUTH_INVALID);
            return self.close_with(reply::TOO_MANY_AUTH_FAILURES);
        }
        self.error(reply::AUTH_INVALID);
    }

    /// Consume one body line (or piece of a long one); false when the input
    /// holds nothing usable yet.
    fn step_data(&mut self) -> bool {
        let pending = self.pending();
        let (len, complete) = match memchr::memchr(b'\n', pending) {
            Some(lf) => (lf + 1, true),
            None if pending.len() > MAX_DATA_PIECE => (pending.len(), false),
            None => return false,
        };
        let start = self.pos;
        self.pos += len;
        // The piece is read where it lies, not copied out line by line:
        // `input` is lent to data_piece, which only reads it, and is back
        // before end_of_data, which may clear it.
        let input = std::mem::take(&mut self.input);
        let last = self.data_piece(&input[start..start + len], complete);
        self.input = input;
        if last {
            self.end_of_data();
        }
        true
    }

    /// One line of the message, or a piece of a long one (`complete` when
    /// it ends in LF); true when it is the dot that ends the data.
    fn data_piece(&mut self, piece: &[u8], complete: bool) -> bool {
        let line_start = !self.data.mid_line;
        let pending_cr = std::mem::take(&mut self.data.pending_cr);
        self.data.mid_line = !complete;
        let mut content: &[u8] = piece;
        let mut normalized = None;
        if complete {
            // The line's CRLF, whole in this piece or split across two.
            let ends_crlf = piece.ends_with(b"\r\n") || (pending_cr && piece == b"\n");
            if pending_cr && piece != b"\n" {
                self.data.bare_newline = true;
            }
            if line_start && self.data.after_crlf && piece == b".\r\n" {
                return true;
            }
            if !ends_crlf {
                match self.params.bare_newline {
                    // Stored as CR LF; a dot line after it is content, not
                    // the end (after_crlf stays false below).
                    BareNewline::Normalize if !pending_cr => {
                        let mut line = piece[..piece.len() - 1].to_vec();
                        line.extend_from_slice(b"\r\n");
                        normalized = Some(line);
                    }
                    _ => self.data.bare_newline = true,
                }
            }
            let strip = if piece.ends_with(b"\r\n") { 2 } else { 1 };
            if memchr::memchr(b'\r', &piece[..piece.len() - strip]).is_some() {
                self.data.bare_newline = true;
            }
            self.data.after_crlf = ends_crlf;
        } else {
            // No LF in this piece: a CR before its end is bare, one at its
            // end waits for the next piece.
            if pending_cr {
                self.data.bare_newline = true;
            }
            let (rest, cr_last) = match piece.strip_suffix(b"\r") {
                Some(rest) => (rest, true),
                None => (piece, false),
            };
            if memchr::memchr(b'\r', rest).is_some() {
                self.data.bare_newline = true;
            }
            self.data.pending_cr = cr_last;
            self.data.after_crlf = false;
        }
        if let Some(line) = &normalized {
            content = line;
        }
        if line_start && content.first() == Some(&b'.') {
            content = &content[1..];
        }
        if line_start && self.data.in_header {
            let folded = std::mem::take(&mut self.data.tls_required_folded);
            if content == b"\r\n" || content == b"\n" {
                self.data.in_header = false;
            } else if content.len() >= 9 && content[..9].eq_ignore_ascii_case(b"received:") {
                self.data.hops = self.data.hops.saturating_add(1);
            } else if content.len() >= 13 && content[..13].eq_ignore_ascii_case(b"tls-required:") {
                match tls_required_no(&content[13..]) {
                    Some(no) => self.tx.tls_optional |= no,
                    None => self.data.tls_required_folded = true,
                }
            } else if folded && matches!(content.first(), Some(b' ' | b'\t')) {
                self.tx.tls_optional |= tls_required_no(content) == Some(true);
            }
        }
        self.append_body(content);
        false
    }

    fn append_body(&mut self, content: &[u8]) {
        if self.data.too_big || self.data.bare_newline {
            return;
        }
        self.tx.size += content.len() as u64;
        if self.tx.size > self.params.max_message_size {
            self.data.too_big = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(content);
        if self.body.len() >= BODY_CHUNK {
            let chunk = std::mem::replace(&mut self.body, Vec::with_capacity(BODY_CHUNK));
            self.out.push_back(Action::Body(chunk));
        }
    }

    fn end_of_data(&mut self) {
        let refusal = if self.data.bare_newline {
            Some(reply::BARE_NEWLINE)
        } else if self.data.too_big {
            Some(reply::TOO_BIG)
        } else if self.data.hops > self.params.max_hops {
            log::warn!(
                "{} refused: {} Received: headers, over limit max-hops {} (a mail loop?)",
                self.log_id,
                self.data.hops,
                self.params.max_hops
            );
            Some(reply::TOO_MANY_HOPS)
        } else {
            None
        };
        if let Some(r) = refusal {
            crate::stats::MESSAGES_REFUSED.inc();
            self.out.push_back(Action::Abort);
            self.reset_transaction();
            self.state = State::Greeted;
            return self.error(r);
        }
        let rest = std::mem::take(&mut self.body);
        if !rest.is_empty() {
            self.out.push_back(Action::Body(rest));
        }
        self.state = State::Committing;
        self.out.push_back(Action::Commit);
    }

    fn received_header(&self, id: &str, date: &str) -> String {
        let helo = self.helo_name().unwrap_or("unknown");
        let with = match (&self.helo, &self.tls, &self.client.auth) {
            (_, Some(_), Some(_)) => "ESMTPSA",
            (_, Some(_), None) => "ESMTPS",
            (_, None, Some(_)) => "ESMTPA",
            (Some((_, false)), None, None) => "SMTP",
            _ => "ESMTP",
        };
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (postern) with {with} id {id}",
            self.client.addr, self.params.hostname
        );
        if let Some(t) = &self.tls {
            h.push_str(&format!(
                "\r\n\t(version={} cipher={})",
                t.version, t.cipher
            ));
            if let Some(c) = &t.client_cert {
                h.push_str(&format!(
                    "\r\n\t(client-cert subject=\"{}\"\r\n\t sha256={} verified={})",
                    c.subject,
                    c.sha256,
                    if c.verified { "yes" } else { "no" }
                ));
            }
        }
        if let [only] = self.tx.rcpts.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", only.addr));
        }
        h.push_str(&format!(";\r\n\t{date}\r\n"));
        h
    }
}

/// The value of a `TLS-Required:` field (RFC 8689 §5): `Some(true)` for
/// `No` (any case, spaces around it), `Some(false)` for anything else,
/// `None` when the value is empty (it follows on a continuation line).
fn tls_required_no(value: &[u8]) -> Option<bool> {
    let v = value.trim_ascii();
    if v.is_empty() {
        return None;
    }
    Some(v.eq_ignore_ascii_case(b"no"))
}

#[cfg(test)]
#[test]
fn dialogue_log_hides_credentials() {
    assert_eq!(
        loggable(b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="),
        "AUTH PLAIN (hidden)"
    );
    assert_eq!(loggable(b"auth login YWxpY2U="), "auth login (hidden)");
    assert_eq!(loggable(b"AUTH LOGIN"), "AUTH LOGIN");
    assert_eq!(loggable(b"MAIL FROM:<a@b>\x01"), "MAIL FROM:<a@b>\\u{1}");
    assert_eq!(
        dialogue_log(b"TEVBS0VELVBBU1NXT1JELTE=", false),
        "(unrecognised, 24 octets)"
    );
    assert_eq!(
        dialogue_log(b"XYZZY magic words", false),
        "XYZZY ... (unrecognised, 17 octets)"
    );
    assert_eq!(dialogue_log(b"NOOP", true), "NOOP");
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "server_props.rs"]
mod props;
