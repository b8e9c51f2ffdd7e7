//! Runs one inbound session on a worker thread: blocking reads and writes
//! around the [`Session`] state machine.
//!
//! Replies pile up in `out` and are written only before a read that could
//! block (Postfix's double-buffered stream), so pipelined commands get their
//! replies in one write. The body streams into the spool transaction in
//! 64 KiB pieces, so memory per session stays bounded whatever the message
//! size.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::Endpoint;
use crate::smtp::reply;
use crate::smtp::server::{Action, Session, TlsMode};
use crate::spool::envelope::{EnvRcpt, Envelope, TlsRequired};
use crate::spool::{Incoming, Spool};
use crate::tls::TlsInfo;
use crate::tls::stream::Stream;
use crate::watchdog;

static SESSION_IDS: AtomicU64 = AtomicU64::new(1);

fn tls_log(t: Option<&TlsInfo>) -> String {
    match t {
        Some(t) => format!(
            "tls={t}{}{}",
            t.sni
                .as_ref()
                .map(|s| format!(" sni={s}"))
                .unwrap_or_default(),
            t.client_cert
                .as_ref()
                .map(|c| format!(
                    " client-cert=sha256:{} verified={} subject=\"{}\"",
                    c.sha256,
                    if c.verified { "yes" } else { "no" },
                    c.subject
                ))
                .unwrap_or_default()
        ),
        None => "tls=none".to_string(),
    }
}

/// Why a session ended, for its last log line.
enum End {
    Closed,
    Eof,
    Error(io::Error),
    Handshake(io::Error),
}

/// How long a load balancer may take to send its PROXY header (Postfix's
/// smtpd_upstream_proxy_timeout).
const PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// On a `proxy` listener: the client the PROXY header names (the proxy
/// itself for its health checks), or why the session is refused.
fn proxied_client(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    ep: &Endpoint,
) -> Result<SocketAddr, String> {
    if let Some(crate::config::ProxyFrom::Table(t)) = &ep.listener.proxy {
        let listed = ep
            .cfg
            .tables
            .get(t)
            .is_some_and(|tb| tb.contains_ip(peer.ip()));
        if !listed {
            return Err(format!(
                "a connection from {} on a proxy listener, which is not in <{t}>: add the load balancer to <{t}>, or connect through it",
                peer.ip()
            ));
        }
    }
    match super::proxy::read(tcp, PROXY_TIMEOUT) {
        Ok(super::proxy::Header::Proxied { client, .. }) => Ok(client),
        Ok(super::proxy::Header::Local) => Ok(peer),
        Err(e) => Err(format!(
            "{e}; this listener says 'proxy': every connection must come through the load balancer with send-proxy or send-proxy-v2"
        )),
    }
}

/// On a `proxy` listener: the client behind the balancer `lb`, counted
/// under its own address for `limit sessions-per-ip`; or None, after a
/// 421 and a log line saying why.
fn admit_proxied(
    tcp: &mut TcpStream,
    lb: SocketAddr,
    ep: &Endpoint,
    slot: &mut super::listener::Slot,
    sid: &str,
) -> Option<SocketAddr> {
    let (refusal, why) = match proxied_client(tcp, lb, ep) {
        Err(why) => (
            reply::PROXY_REQUIRED,
            format!("address={lb} reason=proxy error=\"{why}\""),
        ),
        Ok(client) => {
            let lim = &ep.cfg.limits;
            let key = super::client_key(client.ip(), lim.ipv6_prefix);
            let exempt = crate::rules::per_ip_exempt(&ep.cfg, client.ip());
            if slot.claim(key, lim.sessions_per_ip, exempt) {
                return Some(client);
            }
            (
                reply::BUSY,
                format!("address={client} proxy={lb} reason=limit-sessions-per-ip"),
            )
        }
    };
    crate::stats::SESSIONS_REFUSED.inc();
    log::warn!("{sid} smtp refused {why}");
    super::listener::refuse(tcp, &refusal);
    None
}

/// Run one session to its end.
pub fn run(
    mut tcp: TcpStream,
    lb: SocketAddr,
    ep: &Endpoint,
    spool: &Spool,
    slot: &mut super::listener::Slot,
) {
    let sid = format!("{:08x}", SESSION_IDS.fetch_add(1, Ordering::Relaxed));
    let started = Instant::now();
    let (peer, via) = if ep.listener.proxy.is_some() {
        match admit_proxied(&mut tcp, lb, ep, slot, &sid) {
            Some(client) => (client, format!(" proxy={lb}")),
            None => return,
        }
    } else {
        (lb, String::new())
    };
    let timeout = Some(ep.cfg.limits.command_timeout);
    // TCP_NODELAY: without it the reply after a TLS 1.3 handshake waits for
    // the client's delayed ACK (40 ms per connection).
    let setup = tcp
        .set_nodelay(true)
        .and_then(|_| tcp.set_read_timeout(timeout))
        .and_then(|_| tcp.set_write_timeout(timeout));
    let guard = setup.and_then(|_| watchdog::watch(&tcp, ep.cfg.limits.session_lifetime));
    let guard = match guard {
        Ok(g) => g,
        Err(e) => {
            log::warn!("{sid} smtp error address={peer} reason=socket-setup error=\"{e}\"");
            return;
        }
    };
    crate::stats::SESSIONS_TOTAL.inc();
    crate::stats::SESSIONS_ACTIVE.inc();
    log::info!(
        "{sid} smtp connected address={peer}{via} listener={}",
        ep.listener.addr
    );
    let mut d = Driver {
        sid: &sid,
        stream: Stream::Plain(tcp),
        out: Vec::with_capacity(1024),
        incoming: None,
        spool,
        ep,
        guard,
    };
    let (end, summary) = d.session(peer);
    let (reason, detail) = match &end {
        // The watchdog shut the socket: a command took longer than
        // command-timeout to arrive whole, or the session outlived
        // session-lifetime.
        _ if d.guard.fired() => ("timeout", String::new()),
        End::Closed => ("closed", String::new()),
        End::Eof => ("disconnect", String::new()),
        End::Error(e)
            if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
        {
            ("timeout", String::new())
        }
        End::Error(e) => ("error", format!(" error=\"{e}\"")),
        End::Handshake(e) => ("tls-handshake-failed", format!(" error=\"{e}\"")),
    };
    crate::stats::SESSIONS_ACTIVE.dec();
    if d.incoming.take().is_some() {
        log::info!("{sid} smtp message-aborted reason={reason}: nothing was queued");
    }
    log::info!(
        "{sid} smtp disconnected address={peer} reason={reason}{detail} {summary} duration={:.3}s",
        started.elapsed().as_secs_f64()
    );
}

struct Driver<'a> {
    sid: &'a str,
    stream: Stream,
    out: Vec<u8>,
    incoming: Option<Incoming>,
    spool: &'a Spool,
    ep: &'a Endpoint,
    guard: watchdog::Guard,
}

impl Driver<'_> {
    /// Send the replies piled up. With none, nothing is sent: TLS records
    /// queued without a reply (the session ticket) wait for the next one.
    fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.guard.arm(self.ep.cfg.limits.command_timeout);
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    fn handshake(&mut self, peer: SocketAddr) -> Result<TlsInfo, End> {
        let Some(cfg) = self.ep.tls.clone() else {
            return Err(End::Handshake(io::Error::other(
                "no certificate for this listener",
            )));
        };
        self.guard.arm(self.ep.cfg.limits.command_timeout);
        match self.stream.upgrade_server(cfg) {
            Ok(mut info) => {
                match info.version.as_str() {
                    "TLSv1.2" => crate::stats::TLS_V12.inc(),
                    _ => crate::stats::TLS_V13.inc(),
                }
                if let Some(auth) = &self.ep.client_auth {
                    let chain = self.stream.client_chain();
                    let verified = auth.verifies(&chain, rustls::pki_types::UnixTime::now());
                    info.client_cert = crate::tls::client_auth::ClientCert::of(&chain, verified);
                }
                crate::stats::SESSIONS_TLS.inc();
                log::info!(
                    "{} smtp tls address={peer} {}",
                    self.sid,
                    tls_log(Some(&info))
                );
                Ok(info)
            }
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) {
                    crate::stats::TLS_CLIENT_GAVE_UP.inc();
                } else {
                    crate::stats::TLS_HANDSHAKE_ERRORS.inc();
                }
                log::warn!(
                    "{} smtp tls-failed address={peer} reason=\"{}\" error=\"{e}\"",
                    self.sid,
                    crate::tls::failure_reason(&e)
                );
                Err(End::Handshake(e))
            }
        }
    }

    /// Run the session; returns how it ended and, for the log, its TLS
    /// state and authenticated user.
    fn session(&mut self, peer: SocketAddr) -> (End, String) {
        let mut tls = None;
        if self.ep.listener.tls == TlsMode::Implicit {
            match self.handshake(peer) {
                Ok(info) => tls = Some(info),
                Err(e) => return (e, tls_log(None)),
            }
        }
        let mut s = Session::new(
            self.ep.params.clone(),
            self.ep.policy.clone(),
            peer.ip(),
            tls,
        );
        s.set_log_id(self.sid);
        let end = self.drive(&mut s, peer);
        let auth = s
            .client()
            .auth
            .as_ref()
            .map(|a| format!(" auth={a}"))
            .unwrap_or_default();
        (end, format!("{}{auth}", tls_log(s.tls())))
    }

    fn drive(&mut self, s: &mut Session, peer: SocketAddr) -> End {
        let mut buf = crate::buffers::read_buffer();
        let end = self.drive_with(s, peer, &mut buf);
        crate::buffers::READS.give(buf);
        end
    }

    fn drive_with(&mut self, s: &mut Session, peer: SocketAddr, buf: &mut [u8]) -> End {
        // Bounded by the socket timeouts and the session's own error
        // limits: every pass either consumes input or blocks on a read.
        loop {
            match s.next_action() {
                Action::Reply(r) => {
                    log::debug!("{} > {r}", self.sid);
                    r.write_to(&mut self.out);
                }
                Action::StartTls { discarded } => {
                    if let Err(e) = self.flush() {
                        return End::Error(e);
                    }
                    if discarded > 0 {
                        log::warn!(
                            "{} smtp starttls-injection address={peer} discarded={discarded} bytes sent after STARTTLS",
                            self.sid
                        );
                    }
                    match self.handshake(peer) {
                        Ok(info) => s.tls_started(info),
                        Err(e) => return e,
                    }
                }
                Action::BeginMessage => match self.spool.begin() {
                    Ok(m) => {
                        let id = m.id().to_string();
                        self.incoming = Some(m);
                        s.message_opened(Ok((id, crate::time::rfc5322(crate::time::unix_now()))));
                    }
                    Err(e) => {
                        log::error!("{} spool error=\"{e}\": answering 452", self.sid);
                        s.message_opened(Err(()));
                    }
                },
                Action::Body(bytes) => {
                    if let Some(m) = self.incoming.as_mut() {
                        m.write(&bytes);
                    }
                }
                Action::Commit => {
                    let result = self.commit(s, peer);
                    s.queued(result);
                }
                Action::Abort => self.incoming = None,
                Action::Sleep(d) => {
                    if let Err(e) = self.flush() {
                        return End::Error(e);
                    }
                    std::thread::sleep(d);
                }
                Action::Close => {
                    self.guard.arm(self.ep.cfg.limits.command_timeout);
                    let last = std::mem::take(&mut self.out);
                    let _ = self.stream.close_with(&last);
                    if let Some(t) = self.stream.tcp() {
                        let _ = t.shutdown(std::net::Shutdown::Both);
                    }
                    return End::Closed;
                }
                Action::NeedInput => {
                    if let Err(e) = self.flush() {
                        return End::Error(e);
                    }
                    // A command (or DATA line) must arrive whole within
                    // command-timeout of its first byte being awaited,
                    // however the client drips it: the clock restarts only
                    // once a whole one was taken.
                    if s.idle() {
                        self.guard.arm(self.ep.cfg.limits.command_timeout);
                    }
                    match self.stream.read(buf) {
                        // The watchdog shut the reading side: say why
                        // (421) on the side still open, then close.
                        Ok(0) | Err(_) if self.guard.fired() => {
                            if s.is_closed() {
                                return End::Closed;
                            }
                            s.timed_out();
                        }
                        Ok(0) => return End::Eof,
                        Ok(n) => s.feed(&buf[..n]),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            s.timed_out();
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return End::Error(e),
                    }
                }
            }
        }
    }

    fn commit(&mut self, s: &Session, peer: SocketAddr) -> Result<(), ()> {
        let Some(m) = self.incoming.take() else {
            return Err(());
        };
        let tx = s.transaction();
        let env = Envelope {
            id: m.id().to_string(),
            arrival: crate::time::unix_now(),
            from: tx.from.as_ref().map(|f| f.to_string()).unwrap_or_default(),
            helo: s.helo_name().unwrap_or("").to_string(),
            client: peer.ip().to_string(),
            auth: s.client().auth.clone(),
            tls: s.tls().map(|t| (t.version.clone(), t.cipher.clone())),
            eight_bit: tx.eight_bit,
            size: tx.size,
            // REQUIRETLS wins over TLS-Required: No (RFC 8689 §5).
            tls_required: if tx.requiretls {
                TlsRequired::Require
            } else if tx.tls_optional {
                TlsRequired::Optional
            } else {
                TlsRequired::Policy
            },
            rcpts: tx
                .rcpts
                .iter()
                .map(|r| EnvRcpt::pending(r.addr.to_string(), r.action.clone()))
                .collect(),
        };
        let id = env.id.clone();
        match m.commit(&env) {
            Ok(()) => {
                crate::stats::MESSAGES_IN.inc();
                crate::stats::BYTES_IN.add(env.size);
                if env.tls.is_some() {
                    crate::stats::MESSAGES_IN_TLS.inc();
                }
                log::info!(
                    "{id}: from=<{}> size={} nrcpt={} client={} {}{}{} session={}",
                    env.from,
                    env.size,
                    env.rcpts.len(),
                    env.client,
                    tls_log(s.tls()),
                    env.auth
                        .as_ref()
                        .map(|a| format!(" auth={a}"))
                        .unwrap_or_default(),
                    match env.tls_required {
                        TlsRequired::Policy => "",
                        TlsRequired::Require => " requiretls=yes",
                        TlsRequired::Optional => " tls-required=no",
                    },
                    self.sid
                );
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "{} spool commit of {id} failed error=\"{e}\": answering 452",
                    self.sid
                );
                Err(())
            }
        }
    }
}
