//! SMTP delivery to the destination's MX or a smarthost, with STARTTLS
//! negotiated per policy (postern.conf(5), `tls`), decided in one place,
//! [`super::tls_decision::decide`], and carried out here:
//!
//! - `none`: never STARTTLS.
//! - `may`: STARTTLS when offered, any certificate; a failed handshake is
//!   retried once in plaintext on a new connection (OpenSMTPD's
//!   `MTA_DOWNGRADE_PLAIN`: the top complaint against Stalwart is that it
//!   does not), a refused STARTTLS continues in plaintext.
//! - `encrypt`: no STARTTLS or a failed one → no mail on that connection;
//!   the next MX is tried, and the recipients defer.
//! - `verify`: as `encrypt`, and the chain must verify and name the MX.
//!
//! After STARTTLS the client says EHLO again and forgets the old
//! capabilities (RFC 3207 §4.2); bytes a server sends after its 220 are an
//! error, not commands to read inside TLS.

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use base64::Engine as _;

use super::tls_decision::{self, Event, Next, Why, decide};
use super::{Context, Item, Job, Outcome, RcptOutcome, Status, log_result};
use crate::config::{Delivery, TlsPolicy};
use crate::dns::Lookup;
use crate::net::stream::Stream;
use crate::net::watchdog;
use crate::smtp::response::{self, Capabilities, Response};
use crate::tls::client::ClientTls;

/// A destination host to try.
#[derive(Clone, Debug)]
struct Host {
    name: String,
    port: u16,
    /// smtps:// smarthost: TLS before the greeting.
    implicit_tls: bool,
}

/// Why an attempt on one address ended early.
enum Fail {
    /// Try the next address or MX; the text is the reason.
    Next(String),
    /// `may`: the handshake failed; retry this address in plaintext.
    Downgrade(String),
}

/// Results gathered so far, per (item, rcpt index).
struct Results {
    per_item: Vec<Vec<Option<RcptOutcome>>>,
    /// Some server greeted us (the destination is up).
    contact: bool,
    /// A server refused the connection or greeted with 421: the
    /// destination may be limiting how many connections we open.
    refused: bool,
}

impl Results {
    fn empty(job: &Job) -> Results {
        Results {
            per_item: job
                .items
                .iter()
                .map(|i| vec![None; i.rcpts.len()])
                .collect(),
            contact: false,
            refused: false,
        }
    }

    fn pending(&self, item: usize, pos: usize) -> bool {
        self.per_item[item][pos].is_none()
    }
    fn any_pending(&self) -> bool {
        self.per_item.iter().flatten().any(Option::is_none)
    }
}

/// A session kept open after a job, for the next job of the same route
/// (as Postfix's connection cache): RSET, then the next messages.
struct Live {
    s: Session,
    caps: Capabilities,
    /// Messages sent over it so far.
    sent: usize,
}

/// Deliver a relay job and then, for as long as `report` hands out more
/// jobs for the same route, the next ones over the same connection (up to
/// `limit connection-reuse` messages). `report` gets each job's outcomes
/// and whether the destination refused us (see [`super::Report`]).
pub fn deliver(ctx: &Context, job: Job, report: &mut super::Report<'_>) {
    let mut job = job;
    let mut live: Option<Live> = None;
    // Bounded: `report` hands out jobs only while the queue has them for
    // this route, and a connection carries at most connection-reuse
    // messages.
    loop {
        let (outcomes, refused, kept) = deliver_one(ctx, &job, live.take());
        // Only a thread that holds a working connection asks for more.
        let next = report(job.route.clone(), outcomes, refused, kept.is_some());
        match (next, kept) {
            (Some(next), Some(l)) if l.sent < ctx.cfg.limits.connection_reuse => {
                live = Some(l);
                job = next;
            }
            (next, kept) => {
                if let Some(mut l) = kept {
                    l.s.quit();
                }
                match next {
                    Some(next) => job = next,
                    None => return,
                }
            }
        }
    }
}

/// One job: over the kept session if there is one and it still works, or
/// over a new connection to the route's hosts. Returns the outcomes,
/// whether the destination refused every connection, and the session to
/// keep (when every message was handed over on it).
fn deliver_one(ctx: &Context, job: &Job, live: Option<Live>) -> (Vec<Outcome>, bool, Option<Live>) {
    let mut res = Results::empty(job);
    if let Some(mut l) = live {
        let reset = l.s.cmd("RSET").is_ok_and(|r| r.is_ok());
        if reset && send_all(&mut l.s, &l.caps, job, &mut res).is_ok() && !res.any_pending() {
            l.sent += job.items.len();
            return (finish(job, res, Status::Deferred, ""), false, Some(l));
        }
        // Results recorded so far stand; the rest goes over a new connection.
        l.s.quit();
    }
    deliver_fresh(ctx, job, res)
}

fn deliver_fresh(ctx: &Context, job: &Job, mut res: Results) -> (Vec<Outcome>, bool, Option<Live>) {
    let (hosts, policy, tls) = match plan(ctx, job) {
        Ok(p) => p,
        Err((status, reply)) => {
            return (finish(job, res, status, &reply), false, None);
        }
    };
    let mut kept = None;
    let mut last = "451 4.4.0 no usable MX host".to_string();
    'hosts: for host in &hosts {
        let addrs = match host.name.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match ctx.resolver.addrs(&host.name) {
                Ok(Lookup::Found(a)) if !a.is_empty() => a,
                Ok(_) => {
                    last = format!("451 4.4.4 MX host {} has no address", host.name);
                    continue;
                }
                Err(e) => {
                    last = format!("451 4.4.3 DNS lookup of {} failed: {e}", host.name);
                    continue;
                }
            },
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, host.port);
            if ctx.is_self(addr) {
                // Deferred, not bounced: a fixed MX record or configuration
                // then delivers it; it bounces after bounce-after otherwise.
                last = format!(
                    "554 5.4.6 mail for {} loops back to myself ({}[{}]:{} is one of our listeners)",
                    job.route.domain,
                    host.name,
                    addr.ip(),
                    addr.port()
                );
                continue;
            }
            let mut plaintext = false;
            // At most two passes: the normal one and a `may` downgrade.
            for _ in 0..2 {
                match attempt(ctx, job, &mut res, host, addr, policy, tls, plaintext) {
                    Ok(live) => kept = Some(live),
                    Err(Fail::Next(why)) => last = why,
                    Err(Fail::Downgrade(why)) if !plaintext => {
                        log::warn!(
                            "{}[{}]:{}: TLS handshake failed ({why}); retrying once without TLS (policy may)",
                            host.name,
                            addr.ip(),
                            addr.port()
                        );
                        plaintext = true;
                        continue;
                    }
                    Err(Fail::Downgrade(why)) => last = why,
                }
                break;
            }
            if !res.any_pending() {
                break 'hosts;
            }
        }
    }
    let refused = res.refused && !res.contact;
    let kept = kept.filter(|_| !res.any_pending());
    (finish(job, res, Status::Deferred, &last), refused, kept)
}

/// The same answer, logged, for every recipient of a job.
pub(super) fn fail_all(job: &Job, status: Status, reply: &str) -> Vec<Outcome> {
    finish(job, Results::empty(job), status, reply)
}

/// Fill every pending recipient with `status`/`reply`, log, and report.
fn finish(job: &Job, mut res: Results, status: Status, reply: &str) -> Vec<Outcome> {
    job.items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let results = item
                .rcpts
                .iter()
                .enumerate()
                .map(|(pos, (idx, addr))| match res.per_item[i][pos].take() {
                    Some(r) => r,
                    None => {
                        let r = RcptOutcome {
                            idx: *idx,
                            status,
                            reply: reply.to_string(),
                            relay: "none".into(),
                            tls: "none".into(),
                            verified: false,
                        };
                        log_result(item, addr, &r);
                        r
                    }
                })
                .collect();
            Outcome {
                id: item.id.clone(),
                results,
            }
        })
        .collect()
}

type Plan<'a> = (Vec<Host>, TlsPolicy, &'a ClientTls);

/// Hosts to try, the TLS policy and the TLS configs; or a final answer for
/// every recipient (DNS says the domain cannot take mail).
fn plan<'a>(ctx: &'a Context, job: &Job) -> Result<Plan<'a>, (Status, String)> {
    let Some(Delivery::Relay {
        host,
        tls_policy,
        tls,
        port,
        ..
    }) = ctx.cfg.actions.get(&job.route.action)
    else {
        return Err((Status::Deferred, "451 4.3.0 action is not a relay".into()));
    };
    let client = ctx.tls.get(&job.route.action).ok_or((
        Status::Deferred,
        "451 4.3.0 no TLS setup for this action".to_string(),
    ))?;
    let mut policy = *tls;
    if let Some(url) = host {
        // Checked when the configuration was read.
        let smart = crate::config::Smarthost::parse(url)
            .map_err(|e| (Status::Deferred, format!("451 4.3.0 {e}")))?;
        let (scheme, name, p) = (smart.scheme.as_str(), smart.host.clone(), smart.port);
        let implicit_tls = scheme == "smtps";
        if scheme == "smtp+tls" && matches!(policy, TlsPolicy::None | TlsPolicy::May) {
            policy = TlsPolicy::Encrypt;
        }
        let default_port = match scheme {
            "smtps" => 465,
            "smtp+tls" => 587,
            _ => 25,
        };
        return Ok((
            vec![Host {
                name,
                port: p.or(*port).unwrap_or(default_port),
                implicit_tls,
            }],
            policy,
            client,
        ));
    }
    let domain = &job.route.domain;
    if let Some(p) = tls_policy
        .as_ref()
        .and_then(|t| ctx.cfg.tables.get(t))
        .and_then(|t| t.get(domain))
        .and_then(TlsPolicy::parse)
    {
        policy = p;
    }
    let port = port.unwrap_or(25);
    let host = |name: String| Host {
        name,
        port,
        implicit_tls: false,
    };
    // Address literals go straight to the address (RFC 5321 §5.1).
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return Ok((
            vec![host(lit.trim_start_matches("ipv6:").to_string())],
            policy,
            client,
        ));
    }
    match ctx.resolver.mx(domain) {
        Ok(Lookup::NxDomain) => Err((
            Status::Bounced,
            format!("550 5.1.2 domain {domain} does not exist"),
        )),
        Ok(Lookup::Found(mx)) if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) => Err((
            Status::Bounced,
            format!("556 5.1.10 domain {domain} does not accept mail (null MX, RFC 7505)"),
        )),
        Ok(Lookup::Found(mx)) if mx.is_empty() => Ok((vec![host(domain.clone())], policy, client)),
        Ok(Lookup::Found(mx)) => Ok((
            mx.into_iter()
                .filter(|(_, h)| h != ".")
                .map(|(_, h)| host(h.trim_end_matches('.').to_string()))
                .collect(),
            policy,
            client,
        )),
        Err(e) => Err((
            Status::Deferred,
            format!("451 4.4.3 MX lookup for {domain} failed: {e}"),
        )),
    }
}

/// One SMTP connection.
struct Session {
    stream: Stream,
    buf: Vec<u8>,
    relay: String,
    tls: String,
    verified: bool,
    /// Each reply and each write within `limit delivery-timeout`, the
    /// connection within `limit delivery-lifetime`, however a server
    /// drips its bytes.
    guard: Option<watchdog::Guard>,
    step: std::time::Duration,
}

impl Session {
    fn arm(&self) {
        if let Some(g) = &self.guard {
            g.arm(self.step);
        }
    }

    fn io_error(&self, e: &io::Error) -> String {
        if self.guard.as_ref().is_some_and(watchdog::Guard::fired) {
            format!(
                "{}: timed out (limit delivery-timeout {}s per reply, delivery-lifetime per connection)",
                self.relay,
                self.step.as_secs()
            )
        } else {
            format!("{}: {}", self.relay, io_text(e))
        }
    }

    fn read(&mut self) -> Result<Response, String> {
        let mut chunk = [0u8; 4096];
        self.arm();
        // Bounded by the watchdog's deadline and response::MAX_LINES/MAX_LINE.
        loop {
            match response::parse(&self.buf) {
                Ok(Some((r, used))) => {
                    self.buf.drain(..used);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("{}: {e}", self.relay)),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) if self.guard.as_ref().is_some_and(watchdog::Guard::fired) => {
                    return Err(self.io_error(&io::ErrorKind::TimedOut.into()));
                }
                Ok(0) => return Err(format!("{}: connection closed by the server", self.relay)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(&e)),
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.arm();
        let r = self
            .stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush());
        r.map_err(|e| self.io_error(&e))
    }

    /// End the session politely: QUIT (so the server logs a clean end,
    /// not "lost connection"), then TLS close_notify. Errors are moot.
    fn quit(&mut self) {
        let _ = self.cmd("QUIT");
        let _ = self.stream.close_notify();
    }

    fn cmd(&mut self, line: &str) -> Result<Response, String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.read()
    }

    fn ehlo(&mut self, me: &str) -> Result<Capabilities, String> {
        let r = self.cmd(&format!("EHLO {me}"))?;
        if r.is_ok() {
            return Ok(Capabilities::from_ehlo(&r));
        }
        let r = self.cmd(&format!("HELO {me}"))?;
        if r.is_ok() {
            Ok(Capabilities::default())
        } else {
            Err(format!(
                "451 4.4.0 {} refused EHLO and HELO: {}",
                self.relay,
                r.one_line()
            ))
        }
    }

    /// Carry out [`tls_decision::decide`] from the EHLO reply on: STARTTLS,
    /// the handshake, EHLO again; or plaintext; or give the host up.
    fn negotiate_tls(
        &mut self,
        caps: Capabilities,
        host: tls_decision::Host,
        tls: &ClientTls,
        name: &str,
        me: &str,
    ) -> Result<Capabilities, Fail> {
        let verify = match decide(
            host,
            Event::Ehlo {
                starttls: caps.starttls,
            },
        ) {
            Next::Plaintext | Next::Secured => return Ok(caps),
            Next::StartTls { verify } => verify,
            other => return Err(self.give_up(other, "")),
        };
        let r = self
            .cmd("STARTTLS")
            .map_err(|e| Fail::Next(format!("451 4.4.2 {e}")))?;
        match decide(host, Event::StartTlsReply { ok: r.is_ok() }) {
            Next::Secured => {}
            Next::Plaintext => {
                log::info!(
                    "{}: STARTTLS refused ({}); continuing without TLS",
                    self.relay,
                    r.one_line()
                );
                return Ok(caps);
            }
            other => return Err(self.give_up(other, &r.one_line())),
        }
        if !self.buf.is_empty() {
            return Err(self.give_up(decide(host, Event::BytesAfter220), ""));
        }
        self.handshake(host, tls, verify, name)?;
        self.ehlo(me).map_err(Fail::Next)
    }

    /// A TLS handshake as [`tls_decision::decide`] asked for it.
    fn handshake(
        &mut self,
        host: tls_decision::Host,
        tls: &ClientTls,
        verify: bool,
        name: &str,
    ) -> Result<(), Fail> {
        let cfg = if verify {
            tls.verified.clone()
        } else {
            tls.opportunistic.clone()
        };
        self.arm();
        match self.stream.upgrade_client(cfg, name) {
            Ok(info) => {
                self.verified = verify || tls.chain_verifies(&info.chain, name);
                self.tls = format!("{}/{}", info.info.version, info.info.cipher);
                Ok(())
            }
            Err(e) => Err(self.give_up(decide(host, Event::Handshake { ok: false }), &io_text(&e))),
        }
    }

    /// Word a decision to give up on this host (`detail`: the server's
    /// reply or the handshake error).
    fn give_up(&self, next: Next, detail: &str) -> Fail {
        let relay = &self.relay;
        let text = |why| match why {
            Why::NotOffered => {
                format!("451 4.7.5 TLS is required, but {relay} did not offer STARTTLS")
            }
            Why::Refused => {
                format!("451 4.7.5 TLS is required, but {relay} refused STARTTLS: {detail}")
            }
            Why::BytesAfter220 => format!(
                "451 4.7.0 {relay} sent {} bytes after its 220 to STARTTLS; refusing to read them inside TLS",
                self.buf.len()
            ),
            Why::HandshakeFailed => {
                format!("451 4.7.5 TLS handshake with {relay} failed: {detail}")
            }
        };
        match next {
            // The downgrade's log line says what failed in its own words.
            Next::Downgrade(Why::HandshakeFailed) => Fail::Downgrade(detail.to_string()),
            Next::Downgrade(why) => Fail::Downgrade(text(why)),
            Next::NextHost(why) => Fail::Next(text(why)),
            other => Fail::Next(format!("451 4.3.0 {relay}: unexpected TLS step {other:?}")),
        }
    }
}

fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    ctx: &Context,
    job: &Job,
    res: &mut Results,
    host: &Host,
    addr: SocketAddr,
    policy: TlsPolicy,
    tls: &ClientTls,
    plaintext: bool,
) -> Result<Live, Fail> {
    let lim = &ctx.cfg.limits;
    let relay = format!("{}[{}]:{}", host.name, addr.ip(), addr.port());
    let tcp = TcpStream::connect_timeout(&addr, lim.connect_timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            res.refused = true;
        }
        Fail::Next(format!("451 4.4.1 connect to {relay}: {}", io_text(&e)))
    })?;
    let setup = tcp
        .set_nodelay(true)
        .and_then(|_| tcp.set_read_timeout(Some(lim.delivery_timeout)))
        .and_then(|_| tcp.set_write_timeout(Some(lim.delivery_timeout)));
    setup.map_err(|e| Fail::Next(format!("451 4.4.1 {relay}: {e}")))?;
    let guard = watchdog::watch(&tcp, lim.delivery_lifetime)
        .map_err(|e| Fail::Next(format!("451 4.4.1 {relay}: {e}")))?;
    let mut s = Session {
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
        relay: relay.clone(),
        tls: "none".into(),
        verified: false,
        guard: Some(guard),
        step: lim.delivery_timeout,
    };
    let next = |e: String| Fail::Next(format!("451 4.4.2 {e}"));
    let facts = tls_decision::Host {
        policy,
        implicit: host.implicit_tls,
        plaintext_retry: plaintext,
    };
    if let Next::ImplicitTls { verify } = decide(facts, Event::Connected) {
        s.handshake(facts, tls, verify, &host.name)?;
    }
    let greeting = s.read().map_err(next)?;
    if !greeting.is_ok() {
        // 421 at the greeting: "too many connections", typically.
        res.refused |= greeting.code == 421;
        return Err(Fail::Next(format!(
            "{} (greeting from {relay})",
            greeting.one_line()
        )));
    }
    res.contact = true;
    let caps = s.ehlo(&ctx.hostname).map_err(Fail::Next)?;
    // A session given up here (no STARTTLS under encrypt, credentials
    // refused) still ends with QUIT.
    let caps = s
        .negotiate_tls(caps, facts, tls, &host.name, &ctx.hostname)
        .inspect_err(|_| s.quit())?;
    smarthost_auth(ctx, job, &mut s, &caps, &host.name).inspect_err(|_| s.quit())?;
    send_all(&mut s, &caps, job, res)?;
    let sent = job.items.len();
    Ok(Live { s, caps, sent })
}

/// MAIL, RCPT, DATA for every item with recipients still pending.
fn send_all(
    s: &mut Session,
    caps: &Capabilities,
    job: &Job,
    res: &mut Results,
) -> Result<(), Fail> {
    for (i, item) in job.items.iter().enumerate() {
        if !(0..item.rcpts.len()).any(|p| res.pending(i, p)) {
            continue;
        }
        send_item(s, caps, item, i, res).map_err(|e| Fail::Next(format!("451 4.4.2 {e}")))?;
    }
    Ok(())
}

fn smarthost_auth(
    ctx: &Context,
    job: &Job,
    s: &mut Session,
    caps: &Capabilities,
    host: &str,
) -> Result<(), Fail> {
    let Some(Delivery::Relay {
        auth: Some(table), ..
    }) = ctx.cfg.actions.get(&job.route.action)
    else {
        return Ok(());
    };
    let Some(secret) = ctx.cfg.tables.get(table).and_then(|t| t.get(host)) else {
        return Err(Fail::Next(format!(
            "451 4.7.0 no secret for {host} in table <{table}>"
        )));
    };
    if s.tls == "none" {
        return Err(Fail::Next(format!(
            "451 4.7.0 refusing to send credentials to {} without TLS",
            s.relay
        )));
    }
    let opted_out = matches!(
        ctx.cfg.actions.get(&job.route.action),
        Some(Delivery::Relay {
            tls: TlsPolicy::Encrypt,
            ..
        })
    );
    if !s.verified && !opted_out {
        return Err(Fail::Next(format!(
            "451 4.7.0 refusing to send credentials to {}: its certificate was not verified",
            s.relay
        )));
    }
    if !caps.auth.iter().any(|m| m == "PLAIN") {
        return Err(Fail::Next(format!(
            "451 4.7.0 {} offers no AUTH PLAIN",
            s.relay
        )));
    }
    let (user, pass) = secret.split_once(':').unwrap_or((secret, ""));
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    let r = s
        .cmd(&format!("AUTH PLAIN {token}"))
        .map_err(|e| Fail::Next(format!("451 4.4.2 {e}")))?;
    if !r.is_ok() {
        return Err(Fail::Next(format!(
            "451 4.7.0 {} refused our credentials: {}",
            s.relay,
            r.one_line()
        )));
    }
    Ok(())
}

fn outcome(s: &Session, idx: usize, r: &Response) -> RcptOutcome {
    RcptOutcome {
        idx,
        status: Status::from_code(r.code),
        reply: r.one_line(),
        relay: s.relay.clone(),
        tls: s.tls.clone(),
        verified: s.verified,
    }
}

/// MAIL, RCPTs (pipelined when offered), DATA for one message. An error
/// return means the connection is unusable; results recorded so far stand.
fn send_item(
    s: &mut Session,
    caps: &Capabilities,
    item: &Item,
    i: usize,
    res: &mut Results,
) -> Result<(), String> {
    let mut mail = format!("MAIL FROM:<{}>", item.from);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", item.size));
    }
    if caps.eight_bit && item.eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    let pending: Vec<usize> = (0..item.rcpts.len())
        .filter(|&p| res.pending(i, p))
        .collect();
    let rcpt_lines: Vec<String> = pending
        .iter()
        .map(|&p| format!("RCPT TO:<{}>", item.rcpts[p].1))
        .collect();
    let (mail_reply, rcpt_replies) = if caps.pipelining {
        let mut batch = format!("{mail}\r\n");
        for l in &rcpt_lines {
            batch.push_str(l);
            batch.push_str("\r\n");
        }
        s.send(batch.as_bytes())?;
        let m = s.read()?;
        let mut rs = Vec::new();
        for _ in &rcpt_lines {
            rs.push(s.read()?);
        }
        (m, rs)
    } else {
        let m = s.cmd(&mail)?;
        let mut rs = Vec::new();
        if m.is_ok() {
            for l in &rcpt_lines {
                rs.push(s.cmd(l)?);
            }
        }
        (m, rs)
    };
    let record = |res: &mut Results, p: usize, r: RcptOutcome| {
        log_result(item, &item.rcpts[p].1, &r);
        res.per_item[i][p] = Some(r);
    };
    if !mail_reply.is_ok() {
        for &p in &pending {
            record(res, p, outcome(s, item.rcpts[p].0, &mail_reply));
        }
        if !rcpt_replies.is_empty() || !caps.pipelining {
            let _ = s.cmd("RSET");
        }
        return Ok(());
    }
    let mut accepted = Vec::new();
    for (&p, r) in pending.iter().zip(&rcpt_replies) {
        if r.is_ok() {
            accepted.push(p);
        } else {
            record(res, p, outcome(s, item.rcpts[p].0, r));
        }
    }
    if accepted.is_empty() {
        s.cmd("RSET")?;
        return Ok(());
    }
    let data = s.cmd("DATA")?;
    if !data.is_intermediate() {
        for &p in &accepted {
            record(res, p, outcome(s, item.rcpts[p].0, &data));
        }
        return Ok(());
    }
    send_body(s, item)?;
    let end = s.read()?;
    for &p in &accepted {
        record(res, p, outcome(s, item.rcpts[p].0, &end));
    }
    Ok(())
}

/// Stream the spooled body with dot-stuffing and the final `.`.
fn send_body(s: &mut Session, item: &Item) -> Result<(), String> {
    let f = crate::spool::open_body(&item.body).map_err(|e| e.to_string())?;
    let mut r = BufReader::with_capacity(64 * 1024, f);
    let mut out = Vec::with_capacity(64 * 1024 + 2);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut at_line_start = true;
    loop {
        let n = r
            .read(&mut chunk)
            .map_err(|e| format!("{}: {e}", item.body.display()))?;
        if n == 0 {
            break;
        }
        for &b in &chunk[..n] {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        s.send(&out)?;
        out.clear();
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    s.send(&out)
}
