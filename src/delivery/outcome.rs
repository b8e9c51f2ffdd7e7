//! What a delivery produced, as values: the status (RFC 5321 §4.2 code,
//! RFC 3463 enhanced code, text), what it means for the recipient
//! ([`Disposition`]), where the message went ([`Relay`]), over what TLS and
//! how the peer was authenticated. The log line, the counters, the
//! envelope and the DSN all read these; nothing parses a reply string
//! again. Our own failures get their codes from one table,
//! [`Fault::status`], as the inbound replies come from `smtp::reply`.

use std::fmt;
use std::net::SocketAddr;

use crate::smtp::response::Response;
use crate::tls::TlsInfo;

use super::tls_decision::{Level, Skip, Why};

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Enhanced {
    /// `4.4.1`-style text, if that is what `word` is (RFC 3463 §2: class
    /// 2, 4 or 5, then two numbers of at most three digits).
    pub fn parse(word: &str) -> Option<Enhanced> {
        let mut parts = word.split('.');
        let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if parts.next().is_some() || !digits(c, 1) || !digits(s, 3) || !digits(d, 3) {
            return None;
        }
        let class: u8 = c.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Enhanced(class, s.parse().ok()?, d.parse().ok()?))
    }
}

/// A status: the reply code, its enhanced code and the text after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Three-digit reply code.
    pub code: u16,
    /// Enhanced code (the class's `X.0.0` when a server gave none).
    pub enhanced: Enhanced,
    /// The rest, on one line, printable.
    pub text: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl Status {
    /// A status of our own.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Status {
        Status {
            code,
            enhanced,
            text: text.into(),
        }
    }

    /// A server's reply: its enhanced code when the first line carries one
    /// (RFC 2034 §3), otherwise its class's `X.0.0`.
    pub fn from_response(r: &Response) -> Status {
        Status::parse(&r.one_line())
    }

    /// Read back the one-line form (`451 4.4.1 text`), as stored in an
    /// envelope; text without a code reads as a temporary failure.
    pub fn parse(line: &str) -> Status {
        let (code, rest) = match line.split_once(' ') {
            Some((c, rest)) => (c, rest),
            None => (line, ""),
        };
        let Some(code) = code.parse::<u16>().ok().filter(|c| (200..600).contains(c)) else {
            return Status::new(451, Enhanced(4, 0, 0), line);
        };
        let class = (code / 100) as u8;
        let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
        match Enhanced::parse(word) {
            Some(e) if e.0 == class => Status::new(code, e, text),
            _ => Status::new(code, Enhanced(class, 0, 0), rest),
        }
    }

    /// The same status with `more` added to its text.
    pub fn with_note(mut self, more: &str) -> Status {
        self.text.push_str(more);
        self
    }
}

/// What a status means for the recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered.
    Sent,
    /// Try again later.
    Deferred,
    /// Failed for good: bounce.
    Bounced,
}

impl Disposition {
    /// The word in the log line's `status=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Sent => "sent",
            Disposition::Deferred => "deferred",
            Disposition::Bounced => "bounced",
        }
    }

    /// From a server's reply code: 2xx sent, 5xx bounced, else deferred.
    pub fn of(code: u16) -> Disposition {
        match code {
            200..=299 => Disposition::Sent,
            500..=599 => Disposition::Bounced,
            _ => Disposition::Deferred,
        }
    }
}

/// Where a recipient's message went (or was last tried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Relay {
    /// No server was reached.
    None,
    /// Local Maildir delivery.
    Maildir,
    /// An SMTP server.
    Host {
        /// Its name (MX, smarthost or address literal).
        name: String,
        /// The address connected to.
        addr: SocketAddr,
    },
}

impl fmt::Display for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Relay::None => f.write_str("none"),
            Relay::Maildir => f.write_str("maildir"),
            Relay::Host { name, addr } => write!(f, "{name}[{}]:{}", addr.ip(), addr.port()),
        }
    }
}

/// How the receiving server's identity was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    /// Not at all (no TLS, or a certificate nobody checked).
    No,
    /// Its certificate chains to a trusted CA and names the host.
    Ca,
    /// Its certificate matched the host's TLSA records (RFC 7672 §3).
    Dane,
    /// The domain's enforced MTA-STS policy lists the host, and its
    /// certificate chains to a trusted CA and names it (RFC 8461 §4).
    Sts,
}

impl PeerAuth {
    /// The word in the log line's `verified=`.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerAuth::No => "no",
            PeerAuth::Ca => "ca",
            PeerAuth::Dane => "dane",
            PeerAuth::Sts => "sts",
        }
    }
}

/// One recipient's result.
#[derive(Clone, Debug)]
pub struct RcptOutcome {
    /// Index into the envelope's recipients.
    pub idx: usize,
    /// What it means.
    pub disposition: Disposition,
    /// The server's reply or our own.
    pub status: Status,
    /// Where it went.
    pub relay: Relay,
    /// The TLS session it went over.
    pub tls: Option<TlsInfo>,
    /// How the server was authenticated.
    pub auth: PeerAuth,
    /// The TLS level applied to the server (none when no server was
    /// reached).
    pub level: Option<Level>,
}

impl RcptOutcome {
    /// A result no server gave (DNS, configuration, the local disk).
    pub fn ours(idx: usize, disposition: Disposition, status: Status, relay: Relay) -> RcptOutcome {
        RcptOutcome {
            idx,
            disposition,
            status,
            relay,
            tls: None,
            auth: PeerAuth::No,
            level: None,
        }
    }
}

/// Why we, not the server, ended a delivery attempt. [`Fault::status`] is
/// the one place outbound codes are chosen.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Every MX host was tried (or none was usable).
    NoUsableMx,
    /// An MX host's name has no address.
    NoAddress {
        /// The MX host.
        host: String,
    },
    /// An address lookup failed (SERVFAIL, timeout).
    AddressLookup {
        /// The name looked up.
        host: String,
        /// The resolver's words.
        error: String,
    },
    /// The MX lookup failed.
    MxLookup {
        /// The domain.
        domain: String,
        /// The resolver's words.
        error: String,
    },
    /// NXDOMAIN (RFC 5321 §5.1).
    NoSuchDomain {
        /// The domain.
        domain: String,
    },
    /// The domain publishes a null MX (RFC 7505 §3).
    NullMx {
        /// The domain.
        domain: String,
    },
    /// The destination is one of our own listeners.
    LoopsBack {
        /// The recipient domain.
        domain: String,
        /// The host and address that are ours.
        relay: Relay,
    },
    /// The route's action is missing or not what the job needs.
    Config {
        /// What is wrong.
        what: String,
    },
    /// The connection could not be made.
    Connect {
        /// Where to.
        relay: Relay,
        /// The system's words.
        error: String,
    },
    /// The connection broke, timed out or carried nonsense mid-dialogue.
    Lost {
        /// What happened, naming the server.
        detail: String,
    },
    /// The server's greeting was not 220.
    Greeting {
        /// Where.
        relay: Relay,
        /// Its reply.
        reply: Status,
    },
    /// Neither EHLO nor HELO was accepted.
    HeloRefused {
        /// Where.
        relay: Relay,
        /// The reply to HELO.
        reply: String,
    },
    /// The TLS decision gave the host up.
    Tls {
        /// Where.
        relay: Relay,
        /// Why.
        why: Why,
        /// The server's reply, the handshake error or the number of
        /// bytes sent after the 220.
        detail: String,
    },
    /// DANE or MTA-STS took an MX host out of the running before
    /// connecting.
    Skipped {
        /// The MX host.
        host: String,
        /// The port (part of the TLSA name).
        port: u16,
        /// The recipient domain (for an insecure MX).
        domain: String,
        /// Why.
        why: Skip,
        /// The resolver's words for a failed lookup.
        detail: String,
    },
    /// A REQUIRETLS message (RFC 8689 §4.2) cannot go to this host.
    RequireTls {
        /// The host.
        host: String,
        /// Why.
        why: RequireTlsFault,
    },
    /// A smarthost to log in to, and why we would not or could not.
    Auth {
        /// Where.
        relay: Relay,
        /// Why.
        why: AuthFault,
    },
}

/// Why a REQUIRETLS message cannot go to a host.
#[derive(Clone, Debug)]
pub enum RequireTlsFault {
    /// Its TLS would not be authenticated (no DANE, MTA-STS or `verify`).
    NotAuthenticated {
        /// The level that applies to it instead.
        level: &'static str,
    },
    /// Authenticated, but it does not offer REQUIRETLS.
    NotSupported {
        /// Where.
        relay: Relay,
    },
}

/// Why smarthost AUTH (RFC 4954) did not happen or failed.
#[derive(Clone, Debug)]
pub enum AuthFault {
    /// The secrets table has no entry for the host.
    NoSecret {
        /// The table's name.
        table: String,
    },
    /// The session is not encrypted.
    NoTls,
    /// The certificate was not verified (`tls verify` is the default).
    NotVerified,
    /// The server offers no AUTH PLAIN.
    NoPlain,
    /// The server refused the credentials.
    Refused {
        /// Its reply.
        reply: String,
    },
}

impl Fault {
    /// The status this fault is reported with.
    pub fn status(&self) -> Status {
        let s = |code, enhanced, text: String| Status::new(code, enhanced, text);
        match self {
            Fault::NoUsableMx => s(451, Enhanced(4, 4, 0), "no usable MX host".into()),
            Fault::NoAddress { host } => s(
                451,
                Enhanced(4, 4, 4),
                format!("MX host {host} has no address"),
            ),
            Fault::AddressLookup { host, error } => s(
                451,
                Enhanced(4, 4, 3),
                format!("DNS lookup of {host} failed: {error}"),
            ),
            Fault::MxLookup { domain, error } => s(
                451,
                Enhanced(4, 4, 3),
                format!("MX lookup for {domain} failed: {error}"),
            ),
            Fault::NoSuchDomain { domain } => s(
                550,
                Enhanced(5, 1, 2),
                format!("domain {domain} does not exist"),
            ),
            Fault::NullMx { domain } => s(
                556,
                Enhanced(5, 1, 10),
                format!("domain {domain} does not accept mail (null MX, RFC 7505)"),
            ),
            Fault::LoopsBack { domain, relay } => s(
                554,
                Enhanced(5, 4, 6),
                format!("mail for {domain} loops back to myself ({relay} is one of our listeners)"),
            ),
            Fault::Config { what } => s(451, Enhanced(4, 3, 0), what.clone()),
            Fault::Connect { relay, error } => s(
                451,
                Enhanced(4, 4, 1),
                format!("connect to {relay}: {error}"),
            ),
            Fault::Lost { detail } => s(451, Enhanced(4, 4, 2), detail.clone()),
            Fault::Greeting { relay, reply } => reply
                .clone()
                .with_note(&format!(" (greeting from {relay})")),
            Fault::HeloRefused { relay, reply } => s(
                451,
                Enhanced(4, 4, 0),
                format!("{relay} refused EHLO and HELO: {reply}"),
            ),
            Fault::Tls { relay, why, detail } => match why {
                Why::NotOffered => s(
                    451,
                    Enhanced(4, 7, 5),
                    format!("TLS is required, but {relay} did not offer STARTTLS"),
                ),
                Why::Refused => s(
                    451,
                    Enhanced(4, 7, 5),
                    format!("TLS is required, but {relay} refused STARTTLS: {detail}"),
                ),
                Why::BytesAfter220 => s(
                    451,
                    Enhanced(4, 7, 0),
                    format!(
                        "{relay} sent {detail} bytes after its 220 to STARTTLS; refusing to read them inside TLS"
                    ),
                ),
                Why::HandshakeFailed => s(
                    451,
                    Enhanced(4, 7, 5),
                    format!("TLS handshake with {relay} failed: {detail}"),
                ),
            },
            Fault::Skipped {
                host,
                port,
                domain,
                why,
                detail,
            } => s(
                451,
                Enhanced(4, 7, 5),
                match why {
                    Skip::LookupFailed => {
                        format!("TLSA lookup error for {host}:{port}: {detail}")
                    }
                    Skip::InsecureAddress => {
                        format!("tls dane-only: the address of {host} is not DNSSEC-signed")
                    }
                    Skip::InsecureMx => {
                        format!("tls dane-only: the MX records of {domain} are not DNSSEC-signed")
                    }
                    Skip::NoRecords => {
                        format!("tls dane-only: no TLSA records found for {host}:{port}")
                    }
                    Skip::Unusable => {
                        format!("tls dane-only: the TLSA records of {host}:{port} are unusable")
                    }
                    Skip::NotInStsPolicy => format!(
                        "MTA-STS: the enforced policy of {domain} does not list MX host {host}"
                    ),
                },
            ),
            Fault::RequireTls { host, why } => match why {
                RequireTlsFault::NotAuthenticated { level } => s(
                    550,
                    Enhanced(5, 7, 10),
                    format!(
                        "REQUIRETLS: TLS to {host} would not be authenticated (policy {level}; DANE, MTA-STS or tls verify is needed)"
                    ),
                ),
                RequireTlsFault::NotSupported { relay } => s(
                    550,
                    Enhanced(5, 7, 30),
                    format!("REQUIRETLS support required, but {relay} does not offer it"),
                ),
            },
            Fault::Auth { relay, why } => {
                let text = match why {
                    AuthFault::NoSecret { table } => {
                        let host = match relay {
                            Relay::Host { name, .. } => name.as_str(),
                            _ => "the relay",
                        };
                        format!("no secret for {host} in table <{table}>")
                    }
                    AuthFault::NoTls => {
                        format!("refusing to send credentials to {relay} without TLS")
                    }
                    AuthFault::NotVerified => format!(
                        "refusing to send credentials to {relay}: its certificate was not verified"
                    ),
                    AuthFault::NoPlain => format!("{relay} offers no AUTH PLAIN"),
                    AuthFault::Refused { reply } => {
                        format!("{relay} refused our credentials: {reply}")
                    }
                };
                s(451, Enhanced(4, 7, 0), text)
            }
        }
    }

    /// What the fault means for the recipients: a domain that cannot take
    /// mail bounces at once; everything else waits for a retry (a loop to
    /// ourselves too, so that a fixed MX record delivers it).
    pub fn disposition(&self) -> Disposition {
        match self {
            // RFC 8689 §4.2: a REQUIRETLS message that no host can take
            // is returned (after every host was tried: remote.rs prefers
            // a temporary failure of another host).
            Fault::NoSuchDomain { .. } | Fault::NullMx { .. } | Fault::RequireTls { .. } => {
                Disposition::Bounced
            }
            _ => Disposition::Deferred,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_back_what_it_writes_and_what_servers_send() {
        let cases: &[(&str, u16, &str, &str)] = &[
            ("250 2.0.0 Ok: queued", 250, "2.0.0", "Ok: queued"),
            ("550 5.1.1 no such user", 550, "5.1.1", "no such user"),
            ("554 no enhanced code", 554, "5.0.0", "no enhanced code"),
            ("451 later", 451, "4.0.0", "later"),
            // A class that contradicts the code is text, not a code.
            ("550 4.1.1 odd", 550, "5.0.0", "4.1.1 odd"),
            ("550 5.1.1000 too long", 550, "5.0.0", "5.1.1000 too long"),
            ("250", 250, "2.0.0", ""),
            ("", 451, "4.0.0", ""),
            ("connection lost", 451, "4.0.0", "connection lost"),
            (
                "999 9.9.9 no such code",
                451,
                "4.0.0",
                "999 9.9.9 no such code",
            ),
        ];
        for &(line, code, enhanced, text) in cases {
            let s = Status::parse(line);
            assert_eq!(
                (s.code, s.enhanced.to_string().as_str(), s.text.as_str()),
                (code, enhanced, text),
                "{line:?}"
            );
            assert_eq!(Status::parse(&s.to_string()), s, "{line:?} round trip");
        }
    }

    #[test]
    fn every_fault_has_a_code_of_its_class_and_names_its_subject() {
        let relay = Relay::Host {
            name: "mx.example".into(),
            addr: "127.0.0.2:25".parse().unwrap(),
        };
        let faults = [
            Fault::NoUsableMx,
            Fault::NoAddress {
                host: "mx.example".into(),
            },
            Fault::AddressLookup {
                host: "mx.example".into(),
                error: "SERVFAIL".into(),
            },
            Fault::MxLookup {
                domain: "example".into(),
                error: "timed out".into(),
            },
            Fault::NoSuchDomain {
                domain: "example".into(),
            },
            Fault::NullMx {
                domain: "example".into(),
            },
            Fault::LoopsBack {
                domain: "example".into(),
                relay: relay.clone(),
            },
            Fault::Config {
                what: "no action".into(),
            },
            Fault::Connect {
                relay: relay.clone(),
                error: "refused".into(),
            },
            Fault::Lost {
                detail: "mx.example: closed".into(),
            },
            Fault::Greeting {
                relay: relay.clone(),
                reply: Status::parse("421 4.7.0 busy"),
            },
            Fault::HeloRefused {
                relay: relay.clone(),
                reply: "500 no".into(),
            },
            Fault::Tls {
                relay: relay.clone(),
                why: Why::HandshakeFailed,
                detail: "alert".into(),
            },
            Fault::Auth {
                relay: relay.clone(),
                why: AuthFault::NoPlain,
            },
            Fault::Skipped {
                host: "mx.example".into(),
                port: 25,
                domain: "example".into(),
                why: Skip::LookupFailed,
                detail: "SERVFAIL".into(),
            },
            Fault::Skipped {
                host: "mx.example".into(),
                port: 25,
                domain: "example".into(),
                why: Skip::InsecureMx,
                detail: String::new(),
            },
        ];
        for f in &faults {
            let s = f.status();
            assert_eq!(s.enhanced.0 as u16, s.code / 100, "{f:?}: {s}");
            assert!(
                s.text.contains("example") || s.text.contains("no action") || s.text.contains("MX"),
                "{f:?}: {s}"
            );
            let permanent = matches!(f, Fault::NoSuchDomain { .. } | Fault::NullMx { .. });
            assert_eq!(f.disposition() == Disposition::Bounced, permanent, "{f:?}");
        }
        assert_eq!(
            faults[6].status().to_string(),
            "554 5.4.6 mail for example loops back to myself (mx.example[127.0.0.2]:25 is one of our listeners)"
        );
        assert_eq!(
            faults[10].status().to_string(),
            "421 4.7.0 busy (greeting from mx.example[127.0.0.2]:25)"
        );
        // DANE never bounces (RFC 7672 §2.2): a lookup error defers.
        assert_eq!(
            faults[14].status().to_string(),
            "451 4.7.5 TLSA lookup error for mx.example:25: SERVFAIL"
        );
    }
}
