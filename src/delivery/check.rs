//! `posternctl tls-check DOMAIN`: what delivery to DOMAIN would do about
//! TLS, found by the delivery code itself (the rules, the plan, the DNSSEC
//! facts, the TLS decision and the handshake) over probe connections that
//! end with QUIT before MAIL. posternctl(8) documents the output and the
//! exit codes.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::outcome::{PeerAuth, Relay};
use super::remote::{self, Fail, Host, HostTls, Plan, Results};
use super::tls_decision::{self, Level, TlsaFound};
use super::{Context, Job, Route};
use crate::config::Delivery;
use crate::json::string as js;
use crate::tls::dane::Verdict;
use crate::tls::x509::{self, Summary};

/// What a probe connection to one address came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Mail would go here, authenticated as said, over TLS or not.
    Delivers {
        /// How the server was authenticated.
        auth: PeerAuth,
        /// `TLSv1.3/TLS13_…`, or none for plaintext.
        tls: Option<String>,
    },
    /// `may`: the handshake failed, delivery would retry in plaintext.
    Downgrade(String),
    /// No mail here: the status the recipients would get.
    Fails(String),
}

/// One probe connection.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Where.
    pub addr: SocketAddr,
    /// What happened.
    pub outcome: Outcome,
    /// The certificates the server sent (from a second, unauthenticated
    /// handshake when the first one failed).
    pub chain: Vec<Summary>,
    /// The DANE verifier's finding.
    pub dane: Option<String>,
    /// Whether the chain verifies against the CA store for the host name.
    pub ca_verifies: bool,
}

/// One MX host.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// Its name and port.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
    /// The address answer was DNSSEC-validated.
    pub addr_secure: bool,
    /// `usable`, `unusable`, `none`, `error`, `not looked up`.
    pub tlsa: &'static str,
    /// The usable TLSA records.
    pub records: Vec<String>,
    /// The level applied, when the host is not skipped.
    pub level: Option<Level>,
    /// Why the host gets no mail before any connection, if so.
    pub skipped: Option<String>,
    /// Whether the domain's MTA-STS policy lists it (when there is one).
    pub sts_listed: Option<bool>,
    /// Probe connections, in delivery order, up to the first that would
    /// take mail.
    pub probes: Vec<Probe>,
}

/// The whole check.
#[derive(Debug, Clone)]
pub struct Report {
    /// The domain checked.
    pub domain: String,
    /// The action the rules chose.
    pub action: String,
    /// Its TLS policy for the domain.
    pub policy: String,
    /// The resolvers, and whether their AD bit is believed.
    pub resolver: String,
    /// Any resolver's AD bit is believed.
    pub dnssec: bool,
    /// The MX answer was DNSSEC-validated.
    pub mx_secure: bool,
    /// The MTA-STS policy that applies: `id …, mode …, mx …, max_age …`.
    pub sts: Option<String>,
    /// Where the domain wants TLS reports (RFC 8460 §3), or why not.
    pub tlsrpt: Result<Vec<String>, String>,
    /// Per host, in delivery order.
    pub hosts: Vec<HostReport>,
    /// What postern would do.
    pub verdict: String,
    /// 0 authenticated, 1 unauthenticated, 2 would defer or bounce.
    pub exit: u8,
}

/// Check `domain` with the configuration in `ctx`; an error (exit 3) when
/// the domain is not relayed over SMTP or cannot be checked.
pub fn check(ctx: &Context, domain: &str) -> Result<Report, String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let rcpt = crate::smtp::address::parse_mailbox(&format!("postmaster@{domain}"))
        .ok_or_else(|| format!("'{domain}' is not a domain"))?;
    let action = crate::rules::route(&ctx.cfg, crate::rules::Origin::MailSystem, &rcpt)
        .map_err(|r| format!("the rules route no mail to {domain}: {r}"))?;
    let relay = match ctx.cfg.actions.get(&action) {
        Some(Delivery::Relay(r)) => r,
        _ => {
            return Err(format!(
                "mail to {domain} goes to action '{action}', which delivers locally"
            ));
        }
    };
    if relay.host.is_some() {
        return Err(format!(
            "mail to {domain} goes to action '{action}', which sends everything to a smarthost"
        ));
    }
    let route = Route {
        action: action.clone(),
        domain: domain.clone(),
        tls: Default::default(),
    };
    let mut report = Report {
        domain: domain.clone(),
        action,
        policy: relay.policy_for(&domain).as_str().to_string(),
        resolver: ctx.resolver.describe(),
        dnssec: ctx.resolver.trusts_ad(),
        mx_secure: false,
        sts: None,
        tlsrpt: Err("not looked up".into()),
        hosts: Vec::new(),
        verdict: String::new(),
        exit: 2,
    };
    let plan = match remote::plan(ctx, relay, &route) {
        Ok(p) => p,
        Err(fault) => {
            let verb = match fault.disposition() {
                super::Disposition::Bounced => "would bounce",
                _ => "would defer",
            };
            report.verdict = format!("{verb}: {}", fault.status());
            return Ok(report);
        }
    };
    report.mx_secure = plan.mx_secure;
    report.tlsrpt = match ctx.resolver.txt(&format!("_smtp._tls.{domain}")) {
        Ok((crate::dns::Lookup::Found(records), _)) => crate::tlsrpt::parse_txt(&records)
            .map(|rua| rua.iter().map(ToString::to_string).collect()),
        Ok((crate::dns::Lookup::NxDomain, _)) => Err("no _smtp._tls record".into()),
        Err(e) => Err(format!("lookup failed: {e}")),
    };
    report.sts = plan.sts.as_ref().map(|c| {
        format!(
            "id {}, mode {}, mx {}, max_age {}",
            c.id,
            c.policy.mode.as_str(),
            c.policy.mx.join(" "),
            c.policy.max_age
        )
    });
    let mut first_failure = None;
    for host in &plan.hosts {
        let h = check_host(ctx, &plan, &route, host);
        let delivered = h.probes.iter().find_map(|p| match &p.outcome {
            Outcome::Delivers { auth, tls } => Some((*auth, tls.is_some())),
            Outcome::Downgrade(_) => Some((PeerAuth::No, false)),
            Outcome::Fails(_) => None,
        });
        if report.verdict.is_empty() {
            match delivered {
                Some((auth, tls)) => {
                    let how = match (auth, tls) {
                        (PeerAuth::Dane, _) => "with DANE authentication",
                        (PeerAuth::Sts, _) => {
                            "with MTA-STS authentication (a CA-verified certificate for a host the enforced policy lists)"
                        }
                        (PeerAuth::Ca, _) => "with a certificate verified against the CA store",
                        (PeerAuth::No, true) => "over TLS without authentication",
                        (PeerAuth::No, false) => "in plaintext",
                    };
                    report.verdict = format!("would deliver to {} {how}", h.name);
                    report.exit = if auth == PeerAuth::No { 1 } else { 0 };
                }
                None => {
                    let why = h.skipped.clone().or_else(|| {
                        h.probes.iter().rev().find_map(|p| match &p.outcome {
                            Outcome::Fails(s) => Some(s.clone()),
                            _ => None,
                        })
                    });
                    first_failure.get_or_insert(format!(
                        "{}: {}",
                        h.name,
                        why.unwrap_or_else(|| "no address".into())
                    ));
                }
            }
        }
        report.hosts.push(h);
    }
    if report.verdict.is_empty() {
        report.verdict = format!(
            "would defer: {}",
            first_failure.unwrap_or_else(|| "no usable MX host".into())
        );
    }
    Ok(report)
}

fn check_host(ctx: &Context, plan: &Plan<'_>, route: &Route, host: &Host) -> HostReport {
    let mut h = HostReport {
        name: host.name.clone(),
        port: host.port,
        addrs: Vec::new(),
        addr_secure: false,
        tlsa: "not looked up",
        records: Vec::new(),
        level: None,
        skipped: None,
        sts_listed: plan.sts.as_ref().map(|c| c.policy.mx_matches(&host.name)),
        probes: Vec::new(),
    };
    let prepared = match remote::prepare_host(ctx, plan, route, host) {
        Ok(p) => p,
        Err(fault) => {
            h.skipped = Some(fault.status().to_string());
            return h;
        }
    };
    h.addrs = prepared.addrs.clone();
    h.addr_secure = prepared.secure;
    let tls = match prepared.tls {
        Ok(t) => t,
        Err(fault) => {
            h.tlsa = match fault {
                super::Fault::Skipped {
                    why: tls_decision::Skip::LookupFailed,
                    ..
                } => "error",
                _ => h.tlsa,
            };
            h.skipped = Some(fault.status().to_string());
            return h;
        }
    };
    h.tlsa = match tls.found {
        TlsaFound::NotAsked => "not looked up",
        TlsaFound::Failed => "error",
        TlsaFound::None => "none",
        TlsaFound::Unusable => "unusable",
        TlsaFound::Usable => "usable",
    };
    h.records = tls.tlsa.iter().map(ToString::to_string).collect();
    h.level = Some(tls.level);
    for ip in prepared.addrs {
        let addr = SocketAddr::new(ip, host.port);
        let p = probe(ctx, plan, host, addr, &tls);
        let stop = !matches!(p.outcome, Outcome::Fails(_));
        h.probes.push(p);
        if stop {
            break;
        }
    }
    h
}

/// Connect as delivery would, up to the point where MAIL would be sent.
fn probe(ctx: &Context, plan: &Plan<'_>, host: &Host, addr: SocketAddr, tls: &HostTls) -> Probe {
    let relay = Relay::Host {
        name: host.name.clone(),
        addr,
    };
    let mut p = Probe {
        addr,
        outcome: Outcome::Fails(String::new()),
        chain: Vec::new(),
        dane: None,
        ca_verifies: false,
    };
    if ctx.is_self(addr) {
        p.outcome = Outcome::Fails(format!("{relay} is one of our own listeners"));
        return p;
    }
    let (result, chain, dane) = match open(ctx, plan, host, relay.clone(), tls) {
        Ok((mut s, opened)) => {
            let found = (std::mem::take(&mut s.chain), s.dane.take());
            let r = opened.map(|()| Outcome::Delivers {
                auth: s.auth,
                tls: s.tls.as_ref().map(ToString::to_string),
            });
            if r.is_ok() {
                s.quit();
            }
            (r, found.0, found.1)
        }
        Err(e) => (Err(e), Vec::new(), None),
    };
    p.outcome = match result {
        Ok(o) => o,
        Err(Fail::Next(fault)) => Outcome::Fails(fault.status().to_string()),
        Err(Fail::Downgrade { detail, .. }) => Outcome::Downgrade(detail),
    };
    p.dane = dane.map(|v| match v {
        Verdict::Matched(t) => format!("matched {t}"),
        Verdict::Failed(why) => why,
    });
    // A failed handshake left no chain: fetch it without checking, to show.
    let chain = if chain.is_empty() && tls.level != Level::None {
        fetch_chain(ctx, plan, host, relay, tls)
    } else {
        chain
    };
    p.ca_verifies = plan.tls.chain_verifies(&chain, &host.name);
    p.chain = chain
        .iter()
        .map(|c| {
            x509::summary(c).unwrap_or(Summary {
                subject: "(unparsable certificate)".into(),
                issuer: String::new(),
                not_after: String::new(),
                spki_sha256: String::new(),
            })
        })
        .collect();
    p
}

/// The server's certificates from an unauthenticated handshake.
fn fetch_chain(
    ctx: &Context,
    plan: &Plan<'_>,
    host: &Host,
    relay: Relay,
    tls: &HostTls,
) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    let look = HostTls {
        level: Level::Encrypt,
        found: tls.found,
        tlsa: Vec::new(),
        names: tls.names.clone(),
    };
    match open(ctx, plan, host, relay, &look) {
        Ok((mut s, opened)) => {
            if opened.is_ok() {
                s.quit();
            }
            std::mem::take(&mut s.chain)
        }
        Err(_) => Vec::new(),
    }
}

/// Connect to `relay` and open a session at `tls`'s level as delivery
/// does (no plaintext retry): the connection and how opening it went, or
/// why there was no connection.
fn open(
    ctx: &Context,
    plan: &Plan<'_>,
    host: &Host,
    relay: Relay,
    tls: &HostTls,
) -> Result<(remote::Connection, Result<(), Fail>), Fail> {
    let facts = tls_decision::Host {
        level: tls.level,
        implicit: host.implicit_tls,
        plaintext_retry: false,
    };
    let job = Job {
        route: Route::default(),
        items: Vec::new(),
    };
    let mut res = Results::empty(&job);
    let mut s = remote::connect(ctx, relay, tls.level, &mut res)?;
    let opened = s
        .open_session(ctx, facts, (plan.tls, tls), &host.name, &mut res)
        .map(|_| ());
    Ok((s, opened))
}

impl Report {
    /// The text posternctl prints.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let yes = |b: bool| if b { "DNSSEC-secure" } else { "insecure" };
        let _ = writeln!(
            o,
            "domain {}: action \"{}\", tls {}",
            self.domain, self.action, self.policy
        );
        let _ = writeln!(o, "resolver: {}", self.resolver);
        if !self.dnssec {
            let _ = writeln!(
                o,
                "  no resolver is trusted to validate DNSSEC: DANE cannot apply (postern.conf(5), resolver)"
            );
        }
        if !self.hosts.is_empty() {
            let _ = writeln!(o, "MX answer: {}", yes(self.mx_secure));
            let sts = self.sts.as_deref().unwrap_or("none");
            let _ = writeln!(o, "MTA-STS policy: {sts}");
            let rpt = match &self.tlsrpt {
                Ok(rua) => rua.join(" "),
                Err(e) => format!("none ({e})"),
            };
            let _ = writeln!(o, "TLS-RPT: {rpt}");
        }
        for h in &self.hosts {
            let _ = writeln!(o, "host {} port {}", h.name, h.port);
            if !h.addrs.is_empty() {
                let addrs: Vec<String> = h.addrs.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    o,
                    "  addresses: {} ({})",
                    addrs.join(" "),
                    yes(h.addr_secure)
                );
            }
            let _ = writeln!(o, "  TLSA: {}", h.tlsa);
            for r in &h.records {
                let _ = writeln!(o, "    {r}");
            }
            if let Some(listed) = h.sts_listed {
                let how = if listed { "listed" } else { "not listed" };
                let _ = writeln!(o, "  MTA-STS: {how} in the policy");
            }
            if let Some(l) = h.level {
                let _ = writeln!(o, "  policy: {}", l.as_str());
            }
            if let Some(s) = &h.skipped {
                let _ = writeln!(o, "  skipped: {s}");
            }
            for p in &h.probes {
                let _ = writeln!(o, "  {}: {}", p.addr, p.outcome.text());
                for (i, c) in p.chain.iter().enumerate() {
                    let _ = writeln!(
                        o,
                        "    cert {i}: subject {}; issuer {}; expires {}; SPKI SHA-256 {}",
                        c.subject, c.issuer, c.not_after, c.spki_sha256
                    );
                }
                if let Some(d) = &p.dane {
                    let _ = writeln!(o, "    DANE: {d}");
                }
                if !p.chain.is_empty() {
                    let v = if p.ca_verifies {
                        "verifies"
                    } else {
                        "does not verify"
                    };
                    let _ = writeln!(o, "    CA store: {v} for {}", h.name);
                }
            }
        }
        let _ = writeln!(o, "verdict: {}", self.verdict);
        o
    }

    /// The same as JSON (one object).
    pub fn json(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(HostReport::json).collect();
        format!(
            "{{\"domain\":{},\"action\":{},\"policy\":{},\"resolver\":{},\"dnssec\":{},\"mx_secure\":{},\"sts\":{},\"tlsrpt\":{},\"hosts\":[{}],\"verdict\":{},\"exit\":{}}}\n",
            js(&self.domain),
            js(&self.action),
            js(&self.policy),
            js(&self.resolver),
            self.dnssec,
            self.mx_secure,
            self.sts.as_deref().map_or("null".into(), js),
            match &self.tlsrpt {
                Ok(rua) => crate::json::strings(rua.iter().map(String::as_str)),
                Err(_) => "null".into(),
            },
            hosts.join(","),
            js(&self.verdict),
            self.exit
        )
    }
}

impl Outcome {
    fn text(&self) -> String {
        match self {
            Outcome::Delivers { auth, tls: Some(t) } => {
                format!("STARTTLS {t}, verified={}: would deliver", auth.as_str())
            }
            Outcome::Delivers { tls: None, .. } => "plaintext: would deliver".into(),
            Outcome::Downgrade(why) => {
                format!("TLS handshake failed ({why}): would retry in plaintext (policy may)")
            }
            Outcome::Fails(why) => format!("no mail: {why}"),
        }
    }
}

impl HostReport {
    fn json(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(|a| js(&a.to_string())).collect();
        let records: Vec<String> = self.records.iter().map(|r| js(r)).collect();
        let probes: Vec<String> = self
            .probes
            .iter()
            .map(|p| {
                let chain: Vec<String> = p
                    .chain
                    .iter()
                    .map(|c| {
                        format!(
                            "{{\"subject\":{},\"issuer\":{},\"not_after\":{},\"spki_sha256\":{}}}",
                            js(&c.subject),
                            js(&c.issuer),
                            js(&c.not_after),
                            js(&c.spki_sha256)
                        )
                    })
                    .collect();
                let (result, tls, verified) = match &p.outcome {
                    Outcome::Delivers { auth, tls } => ("deliver", tls.clone(), auth.as_str()),
                    Outcome::Downgrade(_) => ("downgrade", None, "no"),
                    Outcome::Fails(_) => ("fail", None, "no"),
                };
                format!(
                    "{{\"address\":{},\"result\":{},\"detail\":{},\"tls\":{},\"verified\":{},\"dane\":{},\"ca_verifies\":{},\"chain\":[{}]}}",
                    js(&p.addr.to_string()),
                    js(result),
                    js(&p.outcome.text()),
                    tls.as_deref().map_or("null".into(), js),
                    js(verified),
                    p.dane.as_deref().map_or("null".into(), js),
                    p.ca_verifies,
                    chain.join(",")
                )
            })
            .collect();
        format!(
            "{{\"name\":{},\"port\":{},\"addresses\":[{}],\"address_secure\":{},\"tlsa\":{},\"records\":[{}],\"sts_listed\":{},\"policy\":{},\"skipped\":{},\"probes\":[{}]}}",
            js(&self.name),
            self.port,
            addrs.join(","),
            self.addr_secure,
            js(self.tlsa),
            records.join(","),
            self.sts_listed.map_or("null".into(), |b| b.to_string()),
            self.level.map_or("null".into(), |l| js(l.as_str())),
            self.skipped.as_deref().map_or("null".into(), js),
            probes.join(",")
        )
    }
}
