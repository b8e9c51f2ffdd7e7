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

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;

use super::outcome::{AuthFault, Disposition, Fault, PeerAuth, Relay, RequireTlsFault, Status};
use super::tls_decision::{self, Dnssec, Event, Level, Next, Skip, TlsaFound, Why, decide};
use super::{Context, Item, Job, Outcome, RcptOutcome, Route, log_result};
use crate::config::{RelayAction, Scheme, TlsPolicy};
use crate::dns::{Lookup, Tlsa, TlsaAnswer};
use crate::smtp::client::{self, Hello, Wire};
use crate::smtp::response::{self, Capabilities, Response};
use crate::spool::envelope::TlsRequired;
use crate::tls::TlsInfo;
use crate::tls::client::ClientTls;
use crate::tls::dane::{DaneVerifier, Verdict};
use crate::tls::stream::Stream;
use crate::watchdog;

/// A destination host to try.
#[derive(Clone, Debug)]
pub(super) struct Host {
    pub(super) name: String,
    pub(super) port: u16,
    /// smtps:// smarthost: TLS before the greeting.
    pub(super) implicit_tls: bool,
}

/// Why an attempt on one address ended early.
pub(super) enum Fail {
    /// Try the next address or MX.
    Next(Fault),
    /// `may`: the handshake failed; retry this address in plaintext
    /// (`detail` says what failed, for the log).
    Downgrade { fault: Fault, detail: String },
}

/// Results gathered so far, per (item, rcpt index).
pub(super) struct Results {
    per_item: Vec<Vec<Option<RcptOutcome>>>,
    /// Some server greeted us (the destination is up).
    contact: bool,
    /// A server refused the connection or greeted with 421: the
    /// destination may be limiting how many connections we open.
    refused: bool,
}

impl Results {
    pub(super) fn empty(job: &Job) -> Results {
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
    s: Connection,
    caps: Capabilities,
    /// Messages sent over it so far.
    sent: usize,
}

/// Deliver a relay job and then, for as long as `report` hands out more
/// jobs for the same route (and so the same `action`), the next ones over
/// the same connection (up to `limit connection-reuse` messages). `report`
/// gets each job's outcomes and whether the destination refused us (see
/// [`super::Report`]).
pub fn deliver(ctx: &Context, action: &RelayAction, job: Job, report: &mut super::Report<'_>) {
    let mut job = job;
    let mut live: Option<Live> = None;
    // Bounded: `report` hands out jobs only while the queue has them for
    // this route, and a connection carries at most connection-reuse
    // messages.
    loop {
        let (outcomes, refused, kept) = deliver_one(ctx, action, &job, live.take());
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
fn deliver_one(
    ctx: &Context,
    action: &RelayAction,
    job: &Job,
    live: Option<Live>,
) -> (Vec<Outcome>, bool, Option<Live>) {
    let mut res = Results::empty(job);
    if let Some(mut l) = live {
        if client::rset(&mut l.s)
            && send_all(&mut l.s, &l.caps, job, &mut res).is_ok()
            && !res.any_pending()
        {
            l.sent += job.items.len();
            return (finish(job, res, &Fault::NoUsableMx), false, Some(l));
        }
        // Results recorded so far stand; the rest goes over a new connection.
        l.s.quit();
    }
    deliver_fresh(ctx, action, job, res)
}

fn deliver_fresh(
    ctx: &Context,
    action: &RelayAction,
    job: &Job,
    mut res: Results,
) -> (Vec<Outcome>, bool, Option<Live>) {
    let plan = match plan(ctx, action, &job.route) {
        Ok(p) => p,
        Err(fault) => return (finish(job, res, &fault), false, None),
    };
    if let (Some(e), Some(rec)) = (&plan.sts_error, reporting(ctx, job)) {
        let policy = (crate::tlsrpt::PolicyType::Sts, Vec::new(), Vec::new());
        let failure = crate::tlsrpt::Failure {
            result: "sts-policy-fetch-error",
            sending_ip: String::new(),
            mx_host: String::new(),
            receiving_ip: String::new(),
            detail: e.clone(),
        };
        record(ctx, rec, job, policy, Some(failure));
    }
    let mut kept = None;
    let mut last = Fault::NoUsableMx;
    // A temporary failure on some host, which outweighs a REQUIRETLS
    // refusal by another (RFC 8689 §4.2: DNS and TLSA errors defer).
    let mut temporary: Option<Fault> = None;
    let mut note = |f: Fault, last: &mut Fault| {
        match &f {
            Fault::Tls { why, .. } => match why {
                Why::NotOffered => crate::stats::POLICY_NOT_OFFERED.inc(),
                Why::Refused => crate::stats::POLICY_REFUSED.inc(),
                Why::HandshakeFailed => crate::stats::POLICY_HANDSHAKE.inc(),
                Why::BytesAfter220 => crate::stats::POLICY_BYTES_AFTER_220.inc(),
            },
            Fault::Skipped { .. } => crate::stats::POLICY_SKIPPED.inc(),
            Fault::RequireTls { .. } => crate::stats::POLICY_REQUIRETLS.inc(),
            _ => {}
        }
        if f.disposition() == Disposition::Deferred && temporary.is_none() {
            temporary = Some(f.clone());
        }
        *last = f;
    };
    'hosts: for host in &plan.hosts {
        let (addrs, tls) = match prepare_host(ctx, &plan, &job.route, host) {
            Ok(Prepared {
                addrs,
                tls: Ok(tls),
                ..
            }) => (addrs, tls),
            Ok(Prepared {
                tls: Err(fault), ..
            }) => {
                report_skip(ctx, job, &plan, host, &fault);
                note(fault, &mut last);
                continue;
            }
            Err(fault) => {
                note(fault, &mut last);
                continue;
            }
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, host.port);
            let relay = Relay::Host {
                name: host.name.clone(),
                addr,
            };
            if ctx.is_self(addr) {
                // Deferred, not bounced: a fixed MX record or configuration
                // then delivers it; it bounces after bounce-after otherwise.
                last = Fault::LoopsBack {
                    domain: job.route.domain.clone(),
                    relay,
                };
                continue;
            }
            let mut plaintext = false;
            // At most two passes: the normal one and a `may` downgrade.
            for _ in 0..2 {
                match attempt(
                    ctx, action, job, &mut res, host, addr, &plan, &tls, plaintext,
                ) {
                    Ok(live) => kept = Some(live),
                    Err(Fail::Next(fault)) => note(fault, &mut last),
                    Err(Fail::Downgrade { detail, .. }) if !plaintext => {
                        crate::stats::DOWNGRADES.inc();
                        log::warn!(
                            "{relay}: TLS handshake failed ({detail}); retrying once without TLS (policy may)"
                        );
                        plaintext = true;
                        continue;
                    }
                    Err(Fail::Downgrade { fault, .. }) => note(fault, &mut last),
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
    if let (Fault::RequireTls { .. }, Some(t)) = (&last, temporary) {
        last = t;
    }
    (finish(job, res, &last), refused, kept)
}

/// The same fault, logged, for every recipient of a job.
pub(super) fn fail_all(job: &Job, fault: &Fault) -> Vec<Outcome> {
    finish(job, Results::empty(job), fault)
}

/// Give every recipient still pending `fault`'s status, log, and report.
fn finish(job: &Job, mut res: Results, fault: &Fault) -> Vec<Outcome> {
    let (disposition, status) = (fault.disposition(), fault.status());
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
                        let r = RcptOutcome::ours(*idx, disposition, status.clone(), Relay::None);
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

/// Where a job goes and how TLS is decided there.
pub(super) struct Plan<'a> {
    pub(super) hosts: Vec<Host>,
    pub(super) policy: TlsPolicy,
    /// The MX answer was DNSSEC-secure.
    pub(super) mx_secure: bool,
    /// The domain's MTA-STS policy, when one applies (RFC 8461 §5).
    pub(super) sts: Option<Arc<crate::sts::Cached>>,
    /// Why fetching it failed, if it did.
    pub(super) sts_error: Option<String>,
    pub(super) tls: &'a ClientTls,
}

/// How TLS is done with one host: the level, and for DANE the records
/// and the names a DANE-TA certificate may carry.
pub(super) struct HostTls {
    pub(super) level: Level,
    /// What the TLSA lookup found.
    pub(super) found: TlsaFound,
    /// The usable records.
    pub(super) tlsa: Vec<Tlsa>,
    /// The TLSA base domain (also the SNI name) first, then the MX host.
    pub(super) names: Vec<String>,
}

/// A host's addresses and how TLS is done with it.
pub(super) struct Prepared {
    pub(super) addrs: Vec<IpAddr>,
    /// The address answer was DNSSEC-secure.
    pub(super) secure: bool,
    /// The TLS level, or the fault that skips the host.
    pub(super) tls: Result<HostTls, Fault>,
}

/// Look up a host's addresses and, under DANE, its TLSA records; the
/// fault when it has no address.
pub(super) fn prepare_host(
    ctx: &Context,
    plan: &Plan<'_>,
    route: &Route,
    host: &Host,
) -> Result<Prepared, Fault> {
    let (addrs, secure, cname) = match host.name.parse::<IpAddr>() {
        Ok(ip) => (vec![ip], false, None),
        Err(_) => match ctx.resolver.addrs_secure(&host.name) {
            Ok(a) => match a.found {
                Lookup::Found(ips) if !ips.is_empty() => (ips, a.secure, a.cname),
                _ => {
                    return Err(Fault::NoAddress {
                        host: host.name.clone(),
                    });
                }
            },
            Err(e) => {
                return Err(Fault::AddressLookup {
                    host: host.name.clone(),
                    error: e.to_string(),
                });
            }
        },
    };
    let tls = host_tls(ctx, plan, route, host, secure, cname);
    Ok(Prepared { addrs, secure, tls })
}

/// The TLSA records for a host (RFC 7672 §2.2.3): under the name its
/// address records were found under (after a CNAME) first, then its own.
/// Returns the answer and the name it was found under.
fn lookup_tlsa(
    ctx: &Context,
    port: u16,
    host: &str,
    cname: Option<String>,
) -> Result<(TlsaAnswer, String), crate::dns::TempFail> {
    if let Some(c) = cname {
        let found = ctx.resolver.tlsa(port, &c)?;
        if found != TlsaAnswer::None {
            return Ok((found, c));
        }
    }
    Ok((ctx.resolver.tlsa(port, host)?, host.to_string()))
}

/// The TLS level for `host` under the plan's policy, looking TLSA records
/// up when DANE asks for them; or the fault that skips the host.
fn host_tls(
    ctx: &Context,
    plan: &Plan<'_>,
    route: &Route,
    host: &Host,
    addr_secure: bool,
    cname: Option<String>,
) -> Result<HostTls, Fault> {
    let mut tlsa = Vec::new();
    let mut names = vec![host.name.clone()];
    let mut detail = String::new();
    let found = if tls_decision::wants_tlsa(plan.policy, addr_secure) {
        match lookup_tlsa(ctx, host.port, &host.name, cname) {
            Ok((TlsaAnswer::Usable(t), base)) => {
                crate::stats::TLSA_USABLE.inc();
                tlsa = t;
                if base != host.name {
                    names.insert(0, base);
                }
                TlsaFound::Usable
            }
            Ok((TlsaAnswer::Unusable, _)) => {
                crate::stats::TLSA_UNUSABLE.inc();
                TlsaFound::Unusable
            }
            Ok((TlsaAnswer::None, _)) => {
                crate::stats::TLSA_NONE.inc();
                TlsaFound::None
            }
            Err(e) => {
                crate::stats::TLSA_FAILED.inc();
                detail = e.to_string();
                TlsaFound::Failed
            }
        }
    } else {
        TlsaFound::NotAsked
    };
    let dns = Dnssec {
        mx_secure: plan.mx_secure,
        addr_secure,
        tlsa: found,
    };
    let sts = match plan.sts.as_deref().map(|c| &c.policy) {
        Some(p) if p.mode == crate::sts::Mode::Enforce => tls_decision::Sts::Enforce {
            listed: p.mx_matches(&host.name),
        },
        Some(p) if p.mode == crate::sts::Mode::Testing => tls_decision::Sts::Testing,
        _ => tls_decision::Sts::None,
    };
    match tls_decision::level(plan.policy, dns, sts) {
        // REQUIRETLS (RFC 8689 §4.2): only to a server authenticated by
        // DANE, MTA-STS or an explicit `verify`.
        Ok(level)
            if route.tls == TlsRequired::Require
                && !matches!(level, Level::Dane | Level::Sts | Level::Verify) =>
        {
            Err(Fault::RequireTls {
                host: host.name.clone(),
                why: RequireTlsFault::NotAuthenticated {
                    level: level.as_str(),
                },
            })
        }
        Ok(level) => Ok(HostTls {
            level,
            found,
            tlsa,
            names,
        }),
        Err(why) => {
            if why == Skip::LookupFailed {
                log::warn!(
                    "{}:{}: TLSA lookup failed ({detail}); skipping this host, never sending without DANE",
                    host.name,
                    host.port
                );
            }
            Err(Fault::Skipped {
                host: host.name.clone(),
                port: host.port,
                domain: route.domain.clone(),
                why,
                detail,
            })
        }
    }
}

/// Hosts to try, the TLS policy and the TLS configs; or the fault that
/// answers every recipient (DNS says the domain cannot take mail).
pub(super) fn plan<'a>(
    ctx: &'a Context,
    action: &RelayAction,
    route: &Route,
) -> Result<Plan<'a>, Fault> {
    let tls = ctx.tls.get(&route.action).ok_or(Fault::Config {
        what: format!("no TLS setup for action '{}'", route.action),
    })?;
    if let Some(smart) = &action.host {
        let policy = match (smart.scheme, action.tls) {
            // smtp+tls:// means STARTTLS is required.
            (Scheme::SmtpTls, TlsPolicy::None | TlsPolicy::May) => TlsPolicy::Encrypt,
            (_, p) => p,
        };
        let host = Host {
            name: smart.host.clone(),
            port: smart
                .port
                .or(action.port)
                .unwrap_or(smart.scheme.default_port()),
            implicit_tls: smart.scheme == Scheme::Smtps,
        };
        return Ok(Plan {
            hosts: vec![host],
            policy,
            mx_secure: false,
            sts: None,
            sts_error: None,
            tls,
        });
    }
    let domain = &route.domain;
    // TLS-Required: No (RFC 8689 §5): STARTTLS when offered, whatever
    // the destination's DANE or MTA-STS policy says.
    let policy = match route.tls {
        TlsRequired::Optional => TlsPolicy::May,
        _ => action.policy_for(domain),
    };
    let port = action.port.unwrap_or(25);
    let host = |name: String| Host {
        name,
        port,
        implicit_tls: false,
    };
    // Address literals go straight to the address (RFC 5321 §5.1).
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return Ok(Plan {
            hosts: vec![host(lit.trim_start_matches("ipv6:").to_string())],
            policy,
            mx_secure: false,
            sts: None,
            sts_error: None,
            tls,
        });
    }
    // MTA-STS under `dane` (the default), unless the action says
    // `mta-sts off`; a policy in mode none is no policy.
    let sts = if policy == TlsPolicy::Dane && action.mta_sts {
        let fetch = ctx.web(tls);
        let (p, e) = ctx
            .sts
            .policy(&ctx.resolver, &fetch, domain, crate::time::unix_now());
        (p.filter(|c| c.policy.mode != crate::sts::Mode::None), e)
    } else {
        (None, None)
    };
    let (sts, sts_error) = sts;
    let plan = |hosts, mx_secure| {
        Ok(Plan {
            hosts,
            policy,
            mx_secure,
            sts: sts.clone(),
            sts_error: sts_error.clone(),
            tls,
        })
    };
    match ctx.resolver.mx_secure(domain) {
        Ok((Lookup::NxDomain, _)) => Err(Fault::NoSuchDomain {
            domain: domain.clone(),
        }),
        Ok((Lookup::Found(mx), _)) if mx.len() == 1 && (mx[0].1 == "." || mx[0].1.is_empty()) => {
            Err(Fault::NullMx {
                domain: domain.clone(),
            })
        }
        // No MX: the domain itself (RFC 5321 §5.1; RFC 7672 §2.2.2).
        Ok((Lookup::Found(mx), secure)) if mx.is_empty() => {
            plan(vec![host(domain.clone())], secure)
        }
        Ok((Lookup::Found(mx), secure)) => plan(
            mx.into_iter()
                .filter(|(_, h)| h != ".")
                .map(|(_, h)| host(h.trim_end_matches('.').to_string()))
                .collect(),
            secure,
        ),
        Err(e) => Err(Fault::MxLookup {
            domain: domain.clone(),
            error: e.to_string(),
        }),
    }
}

/// One SMTP connection.
pub(super) struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    relay: Relay,
    pub(super) tls: Option<TlsInfo>,
    /// The certificates the server sent.
    pub(super) chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub(super) auth: PeerAuth,
    /// What the DANE verifier found, under `dane`.
    pub(super) dane: Option<Verdict>,
    /// A failed handshake's RFC 8460 §4.3 result type.
    handshake_failure: Option<&'static str>,
    level: Level,
    /// Each reply and each write within `limit delivery-timeout`, the
    /// connection within `limit delivery-lifetime`, however a server
    /// drips its bytes.
    guard: Option<watchdog::Guard>,
    step: std::time::Duration,
}

impl Wire for Connection {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.arm();
        let r = self
            .stream
            .write_all(bytes)
            .and_then(|_| self.stream.flush());
        r.map_err(|e| self.io_error(&e))
    }

    fn reply(&mut self) -> Result<Response, String> {
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
}

/// The connection broke, timed out or spoke nonsense.
fn lost(detail: String) -> Fail {
    Fail::Next(Fault::Lost { detail })
}

impl Connection {
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

    /// Our address and the server's.
    fn tcp_addrs(&self) -> Option<(SocketAddr, SocketAddr)> {
        let t = self.stream.tcp()?;
        Some((t.local_addr().ok()?, t.peer_addr().ok()?))
    }

    /// End the session politely: QUIT (so the server logs a clean end,
    /// not "lost connection"), then TLS close_notify. Errors are moot.
    pub(super) fn quit(&mut self) {
        client::quit(self);
        let _ = self.stream.close_with(b"");
    }

    fn hello(&mut self, me: &str) -> Result<Capabilities, Fail> {
        match client::hello(self, me).map_err(lost)? {
            Hello::Ehlo(caps) => Ok(caps),
            Hello::Helo => Ok(Capabilities::default()),
            Hello::Refused(r) => Err(Fail::Next(Fault::HeloRefused {
                relay: self.relay.clone(),
                reply: r.one_line(),
            })),
        }
    }

    /// From the connection to a session ready for MAIL: implicit TLS,
    /// the greeting, EHLO, and STARTTLS as `facts` decide. A session given
    /// up after the greeting (no STARTTLS under `encrypt`, …) still ends
    /// with QUIT.
    pub(super) fn open_session(
        &mut self,
        ctx: &Context,
        facts: tls_decision::Host,
        tls: (&ClientTls, &HostTls),
        name: &str,
        res: &mut Results,
    ) -> Result<Capabilities, Fail> {
        if let Next::ImplicitTls { verify } = decide(facts, Event::Connected) {
            self.handshake(facts, tls, verify, name)?;
        }
        let greeting = self.reply().map_err(lost)?;
        if !greeting.is_ok() {
            // 421 at the greeting: "too many connections", typically.
            res.refused |= greeting.code == 421;
            return Err(Fail::Next(Fault::Greeting {
                relay: self.relay.clone(),
                reply: Status::from_response(&greeting),
            }));
        }
        res.contact = true;
        let caps = self.hello(&ctx.hostname)?;
        self.negotiate_tls(caps, facts, tls, name, &ctx.hostname)
            .inspect_err(|_| self.quit())
    }

    /// Carry out [`tls_decision::decide`] from the EHLO reply on: STARTTLS,
    /// the handshake, EHLO again; or plaintext; or give the host up.
    fn negotiate_tls(
        &mut self,
        caps: Capabilities,
        host: tls_decision::Host,
        tls: (&ClientTls, &HostTls),
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
        let r = client::command(self, "STARTTLS").map_err(lost)?;
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
            let n = self.buf.len().to_string();
            return Err(self.give_up(decide(host, Event::BytesAfter220), &n));
        }
        self.handshake(host, tls, verify, name)?;
        self.hello(me)
    }

    /// A TLS handshake as [`tls_decision::decide`] asked for it: under
    /// `dane` with a verifier made for this connection from the host's
    /// TLSA records, sending the TLSA base domain as SNI (RFC 7672 §8.1).
    fn handshake(
        &mut self,
        host: tls_decision::Host,
        (tls, ht): (&ClientTls, &HostTls),
        verify: bool,
        name: &str,
    ) -> Result<(), Fail> {
        let mut dane = None;
        let (cfg, sni) = if verify && host.level == Level::Dane {
            let v = DaneVerifier::new(
                &ht.tlsa,
                &ht.names.iter().map(String::as_str).collect::<Vec<_>>(),
                crate::tls::provider(),
            );
            let cfg = v
                .client_config(tls.client_key.as_ref())
                .map_err(|what| Fail::Next(Fault::Config { what }))?;
            dane = Some(v);
            (cfg, ht.names.first().map_or(name, String::as_str))
        } else if verify {
            (tls.verified.clone(), name)
        } else {
            (tls.opportunistic.clone(), name)
        };
        self.arm();
        let r = self.stream.upgrade_client(cfg, sni);
        let verdict = dane.as_ref().and_then(|v| v.verdict());
        match r {
            Ok(info) => {
                self.chain = info.chain.clone();
                self.dane = verdict.clone();
                if let Some(Verdict::Matched(t)) = &verdict {
                    crate::stats::DANE_AUTHENTICATED.inc();
                    log::info!("{}: DANE: the certificate matched TLSA {t}", self.relay);
                    self.auth = PeerAuth::Dane;
                } else if host.level == Level::Sts {
                    self.auth = PeerAuth::Sts;
                } else if verify || tls.chain_verifies(&info.chain, name) {
                    self.auth = PeerAuth::Ca;
                }
                self.tls = Some(info.info);
                Ok(())
            }
            Err(e) => {
                self.dane = verdict.clone();
                self.handshake_failure = Some(match &verdict {
                    Some(Verdict::Failed(_)) => "validation-failure",
                    _ => crate::tlsrpt::certificate_result(&e),
                });
                let detail = match verdict {
                    Some(Verdict::Failed(why)) => {
                        crate::stats::DANE_MISMATCHED.inc();
                        log::warn!("{}: DANE: {why}", self.relay);
                        format!("DANE: {why}")
                    }
                    _ => io_text(&e),
                };
                Err(self.give_up(decide(host, Event::Handshake { ok: false }), &detail))
            }
        }
    }

    /// A decision to give up on this host (`detail`: the server's reply,
    /// the handshake error, or how many bytes followed the 220).
    fn give_up(&self, next: Next, detail: &str) -> Fail {
        let fault = |why: Why| Fault::Tls {
            relay: self.relay.clone(),
            why,
            detail: detail.to_string(),
        };
        match next {
            Next::Downgrade(why) => Fail::Downgrade {
                fault: fault(why),
                detail: match why {
                    // The downgrade's log line says what failed in its own words.
                    Why::HandshakeFailed => detail.to_string(),
                    _ => fault(why).status().text,
                },
            },
            Next::NextHost(why) => Fail::Next(fault(why)),
            other => Fail::Next(Fault::Config {
                what: format!("{}: unexpected TLS step {other:?}", self.relay),
            }),
        }
    }
}

fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        _ => e.to_string(),
    }
}

/// A TCP connection to `relay`'s address, with its deadlines armed.
/// `res` learns whether the destination refused us.
pub(super) fn connect(
    ctx: &Context,
    relay: Relay,
    level: Level,
    res: &mut Results,
) -> Result<Connection, Fail> {
    let lim = &ctx.cfg.limits;
    let Relay::Host { addr, .. } = relay else {
        return Err(Fail::Next(Fault::Config {
            what: format!("cannot connect to {relay}"),
        }));
    };
    let connect_fault = |e: &io::Error| {
        Fail::Next(Fault::Connect {
            relay: relay.clone(),
            error: io_text(e),
        })
    };
    let tcp = TcpStream::connect_timeout(&addr, lim.connect_timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            res.refused = true;
        }
        connect_fault(&e)
    })?;
    let setup = tcp
        .set_nodelay(true)
        .and_then(|_| tcp.set_read_timeout(Some(lim.delivery_timeout)))
        .and_then(|_| tcp.set_write_timeout(Some(lim.delivery_timeout)));
    setup.map_err(|e| connect_fault(&e))?;
    let guard = watchdog::watch(&tcp, lim.delivery_lifetime).map_err(|e| connect_fault(&e))?;
    Ok(Connection {
        stream: Stream::Plain(tcp),
        buf: Vec::new(),
        relay,
        tls: None,
        chain: Vec::new(),
        auth: PeerAuth::No,
        dane: None,
        handshake_failure: None,
        level,
        guard: Some(guard),
        step: lim.delivery_timeout,
    })
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    ctx: &Context,
    action: &RelayAction,
    job: &Job,
    res: &mut Results,
    host: &Host,
    addr: SocketAddr,
    plan: &Plan<'_>,
    host_tls: &HostTls,
    plaintext: bool,
) -> Result<Live, Fail> {
    let relay = Relay::Host {
        name: host.name.clone(),
        addr,
    };
    let mut s = connect(ctx, relay, host_tls.level, res)?;
    let facts = tls_decision::Host {
        level: host_tls.level,
        implicit: host.implicit_tls,
        plaintext_retry: plaintext,
    };
    let tls = (plan.tls, host_tls);
    let opened = s.open_session(ctx, facts, tls, &host.name, res);
    if !plaintext {
        report_session(ctx, job, plan, host, host_tls, &s, &opened);
    }
    let caps = opened?;
    if job.route.tls == TlsRequired::Require && !caps.requiretls {
        s.quit();
        return Err(Fail::Next(Fault::RequireTls {
            host: host.name.clone(),
            why: RequireTlsFault::NotSupported {
                relay: s.relay.clone(),
            },
        }));
    }
    smarthost_auth(action, &mut s, &caps, &host.name).inspect_err(|_| s.quit())?;
    send_all(&mut s, &caps, job, res)?;
    let sent = job.items.len();
    Ok(Live { s, caps, sent })
}

/// One transaction for every item with recipients still pending.
fn send_all(
    s: &mut Connection,
    caps: &Capabilities,
    job: &Job,
    res: &mut Results,
) -> Result<(), Fail> {
    for (i, item) in job.items.iter().enumerate() {
        if (0..item.rcpts.len()).any(|p| res.pending(i, p)) {
            send_item(s, caps, item, i, res).map_err(lost)?;
        }
    }
    Ok(())
}

/// AUTH PLAIN to a smarthost, only over TLS and (unless the action says
/// `tls encrypt`) to a verified certificate (RFC 4954 §4).
fn smarthost_auth(
    action: &RelayAction,
    s: &mut Connection,
    caps: &Capabilities,
    host: &str,
) -> Result<(), Fail> {
    let Some(secrets) = &action.auth else {
        return Ok(());
    };
    let fail = |s: &Connection, why| {
        Fail::Next(Fault::Auth {
            relay: s.relay.clone(),
            why,
        })
    };
    let Some(secret) = secrets.by_host.get(&host.to_ascii_lowercase()) else {
        let table = secrets.table.clone();
        return Err(fail(s, AuthFault::NoSecret { table }));
    };
    if s.tls.is_none() {
        return Err(fail(s, AuthFault::NoTls));
    }
    if s.auth == PeerAuth::No && action.tls != TlsPolicy::Encrypt {
        return Err(fail(s, AuthFault::NotVerified));
    }
    if !caps.auth.iter().any(|m| m == "PLAIN") {
        return Err(fail(s, AuthFault::NoPlain));
    }
    let r = client::auth_plain(s, &secret.user, &secret.pass).map_err(lost)?;
    if !r.is_ok() {
        let reply = r.one_line();
        return Err(fail(s, AuthFault::Refused { reply }));
    }
    Ok(())
}

fn outcome(s: &Connection, idx: usize, r: &Response) -> RcptOutcome {
    RcptOutcome {
        idx,
        disposition: Disposition::of(r.code),
        status: Status::from_response(r),
        relay: s.relay.clone(),
        tls: s.tls.clone(),
        auth: s.auth,
        level: Some(s.level),
    }
}

/// One message to its pending recipients. An error return means the
/// connection is unusable; results recorded so far stand.
fn send_item(
    s: &mut Connection,
    caps: &Capabilities,
    item: &Item,
    i: usize,
    res: &mut Results,
) -> Result<(), String> {
    let pending: Vec<usize> = (0..item.rcpts.len())
        .filter(|&p| res.pending(i, p))
        .collect();
    let rcpts: Vec<&str> = pending.iter().map(|&p| item.rcpts[p].1.as_str()).collect();
    let env = client::Envelope {
        from: &item.from,
        size: item.size,
        eight_bit: item.eight_bit,
        requiretls: item.requiretls,
        rcpts: &rcpts,
    };
    let mut body =
        crate::spool::open_body(&item.body).map_err(|e| format!("{}: {e}", item.body.display()))?;
    let replies = client::send_message(s, caps, &env, &mut body)?;
    for (k, &p) in pending.iter().enumerate() {
        let r = outcome(s, item.rcpts[p].0, replies.for_rcpt(k));
        log_result(item, &item.rcpts[p].1, &r);
        res.per_item[i][p] = Some(r);
    }
    if !replies.reusable {
        return Err(format!(
            "{}: RSET after a refused transaction failed",
            s.relay
        ));
    }
    Ok(())
}

/// A TLS report for this job? Not when every message in it is a TLS
/// report itself (RFC 8460 §5.3.1: a report's own delivery is not
/// counted), nor without `tls-report`.
fn reporting<'a>(ctx: &'a Context, job: &Job) -> Option<&'a crate::tlsrpt::Recorder> {
    let rec = ctx.tlsrpt.as_deref()?;
    let from = &ctx.cfg.tls_report.as_ref()?.from;
    let all_reports = job.items.iter().all(|i| i.from.eq_ignore_ascii_case(from));
    (!all_reports).then_some(rec)
}

/// The policy a host was dealt with under, and its strings and patterns.
fn report_policy(
    plan: &Plan<'_>,
    tlsa: Option<&[Tlsa]>,
) -> (crate::tlsrpt::PolicyType, Vec<String>, Vec<String>) {
    use crate::tlsrpt::PolicyType;
    match (tlsa, &plan.sts) {
        (Some(t), _) => (
            PolicyType::Tlsa,
            t.iter().map(ToString::to_string).collect(),
            Vec::new(),
        ),
        (None, Some(c)) => (
            PolicyType::Sts,
            c.text
                .lines()
                .map(|l| l.trim_end().to_string())
                .filter(|l| !l.is_empty())
                .collect(),
            c.policy.mx.clone(),
        ),
        (None, None) => (PolicyType::NoPolicyFound, Vec::new(), Vec::new()),
    }
}

/// Record one connection's TLS result (RFC 8460 §4.3): a success when
/// TLS was set up as the level asked, a failure when TLS was missing or
/// failed; nothing for failures that are not TLS's (connect, greeting).
fn report_session(
    ctx: &Context,
    job: &Job,
    plan: &Plan<'_>,
    host: &Host,
    ht: &HostTls,
    s: &Connection,
    opened: &Result<Capabilities, Fail>,
) {
    let Some(rec) = reporting(ctx, job) else {
        return;
    };
    if ht.level == Level::None {
        return;
    }
    let (result, detail) = match (opened, &s.tls) {
        (Ok(_), Some(_)) => ("", String::new()),
        (Ok(_), None) => ("starttls-not-supported", "STARTTLS not offered".to_string()),
        (Err(Fail::Next(f) | Fail::Downgrade { fault: f, .. }), _) => match f {
            Fault::Tls { why, .. } => (
                match why {
                    Why::NotOffered | Why::Refused => "starttls-not-supported",
                    Why::BytesAfter220 => "validation-failure",
                    Why::HandshakeFailed => s.handshake_failure.unwrap_or("validation-failure"),
                },
                f.status().text,
            ),
            _ => return,
        },
    };
    let tlsa =
        matches!(ht.found, TlsaFound::Usable | TlsaFound::Unusable).then_some(ht.tlsa.as_slice());
    let (sending_ip, receiving_ip) = match s.tcp_addrs() {
        Some((l, r)) => (l.ip().to_string(), r.ip().to_string()),
        None => (String::new(), String::new()),
    };
    let failure = (!result.is_empty()).then(|| crate::tlsrpt::Failure {
        result,
        sending_ip,
        mx_host: host.name.clone(),
        receiving_ip,
        detail,
    });
    record(ctx, rec, job, report_policy(plan, tlsa), failure);
}

/// Record one TLS result for the job's domain: under `policy` (its type,
/// strings and MX patterns), a success or `failure`.
fn record(
    ctx: &Context,
    rec: &crate::tlsrpt::Recorder,
    job: &Job,
    (policy, strings, mx): (crate::tlsrpt::PolicyType, Vec<String>, Vec<String>),
    failure: Option<crate::tlsrpt::Failure>,
) {
    let ev = crate::tlsrpt::Event {
        domain: job.route.domain.clone(),
        policy,
        strings,
        mx,
        failure,
    };
    rec.record(&ctx.resolver, &ev, crate::time::unix_now());
}

/// Record a host DANE or MTA-STS took out of the running as a failure.
fn report_skip(ctx: &Context, job: &Job, plan: &Plan<'_>, host: &Host, fault: &Fault) {
    let Some(rec) = reporting(ctx, job) else {
        return;
    };
    let Fault::Skipped { why, .. } = fault else {
        return;
    };
    let (result, tlsa): (&'static str, Option<&[Tlsa]>) = match why {
        Skip::LookupFailed => ("dnssec-invalid", Some(&[])),
        Skip::InsecureAddress | Skip::InsecureMx | Skip::NoRecords => ("dane-required", Some(&[])),
        Skip::Unusable => ("tlsa-invalid", Some(&[])),
        Skip::NotInStsPolicy => ("validation-failure", None),
    };
    let failure = crate::tlsrpt::Failure {
        result,
        sending_ip: String::new(),
        mx_host: host.name.clone(),
        receiving_ip: String::new(),
        detail: fault.status().text,
    };
    record(ctx, rec, job, report_policy(plan, tlsa), Some(failure));
}
