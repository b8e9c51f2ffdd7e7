//! The one outbound TLS decision: what a connection to one host must do
//! about TLS, and what follows from each thing the server does, for the
//! policies of postern.conf(5) (`none`, `may`, `encrypt`, `verify`; as
//! Postfix's smtp_tls_security_level), DANE (RFC 7672: `dane`,
//! `dane-only`) and implicit TLS (RFC 8314). No I/O: `remote.rs` looks
//! things up and carries the decisions out.
//!
//! Two steps: [`level`] turns the configured policy and what DNSSEC says
//! about the host into the [`Level`] applied to it (or takes the host out
//! of the running); [`decide`] then answers each event of the dialogue.

use crate::config::TlsPolicy;

/// The TLS level applied to one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, any certificate, one plaintext retry.
    May,
    /// STARTTLS required, any certificate.
    Encrypt,
    /// STARTTLS required, the certificate must chain to a trusted CA and
    /// name the host.
    Verify,
    /// STARTTLS required, the certificate must match the host's TLSA
    /// records (RFC 7672 §3).
    Dane,
    /// STARTTLS required, the certificate must chain to a trusted CA and
    /// name the MX host, which the domain's MTA-STS policy lists (RFC 8461
    /// §4).
    Sts,
}

impl Level {
    /// The word in the log line's `policy=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::May => "may",
            Level::Encrypt => "encrypt",
            Level::Verify => "verify",
            Level::Dane => "dane",
            Level::Sts => "sts",
        }
    }
}

/// What a TLSA lookup for the host found (RFC 7672 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsaFound {
    /// Not looked up: the policy is not DANE, or the host's address
    /// answer was not DNSSEC-secure (then TLSA is never asked for).
    NotAsked,
    /// SERVFAIL (a bogus answer among them), REFUSED, a timeout.
    Failed,
    /// NXDOMAIN, NODATA or an insecure answer.
    None,
    /// Secure records, none usable for SMTP.
    Unusable,
    /// Secure records, some usable.
    Usable,
}

/// What DNSSEC says about one MX host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dnssec {
    /// The domain's MX answer was secure (or there was no MX lookup).
    pub mx_secure: bool,
    /// The host's address answer was secure.
    pub addr_secure: bool,
    /// Its TLSA records.
    pub tlsa: TlsaFound,
}

/// What the domain's MTA-STS policy (RFC 8461) says about one MX host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sts {
    /// No policy (none published, `mode: none`, `mta-sts off`, or the
    /// configured policy is not `dane`).
    None,
    /// `mode: testing`: failures are reported, mail goes anyway.
    Testing,
    /// `mode: enforce`; whether the host matches one of its `mx` patterns.
    Enforce {
        /// The host is listed.
        listed: bool,
    },
}

/// Why DANE or MTA-STS takes a host out of the running (each defers:
/// RFC 7672 §2.2, RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The TLSA lookup failed: "no TLSA" cannot be told from an attack.
    LookupFailed,
    /// `dane-only`, and the host's address answer is not secure.
    InsecureAddress,
    /// `dane-only`, and the domain's MX answer is not secure.
    InsecureMx,
    /// `dane-only`, and there are no TLSA records.
    NoRecords,
    /// `dane-only`, and every TLSA record is unusable.
    Unusable,
    /// An enforced MTA-STS policy does not list the host.
    NotInStsPolicy,
}

/// Is a TLSA lookup to be made for a host under `policy`? Only under
/// DANE, and only after a secure address answer: insecure zones' broken
/// nameservers stall on TLSA queries (RFC 7672 §2.2).
pub fn wants_tlsa(policy: TlsPolicy, addr_secure: bool) -> bool {
    policy.is_dane() && addr_secure
}

/// The level applied to a host under `policy`, given what DNSSEC and the
/// domain's MTA-STS policy say (the table of postern.conf(5), `tls`).
/// DANE wins over MTA-STS wherever secure TLSA records exist (RFC 8461
/// §2).
pub fn level(policy: TlsPolicy, dns: Dnssec, sts: Sts) -> Result<Level, Skip> {
    use TlsaFound as T;
    match policy {
        TlsPolicy::None => Ok(Level::None),
        TlsPolicy::May => Ok(Level::May),
        TlsPolicy::Encrypt => Ok(Level::Encrypt),
        TlsPolicy::Verify => Ok(Level::Verify),
        TlsPolicy::Dane => match (dns.tlsa, sts) {
            (T::Failed, _) => Err(Skip::LookupFailed),
            (T::NotAsked | T::None, Sts::Enforce { listed: true }) => Ok(Level::Sts),
            (T::NotAsked | T::None, Sts::Enforce { listed: false }) => Err(Skip::NotInStsPolicy),
            (T::NotAsked | T::None, Sts::None | Sts::Testing) => Ok(Level::May),
            // Authentication is impossible, but the records say TLS is
            // supported: no plaintext (RFC 7672 §2.2).
            (T::Unusable, _) => Ok(Level::Encrypt),
            // An insecure MX whose host has secure TLSA records still
            // gets DANE (RFC 7672 §2.2.1).
            (T::Usable, _) => Ok(Level::Dane),
        },
        TlsPolicy::DaneOnly => match dns.tlsa {
            T::Failed => Err(Skip::LookupFailed),
            T::NotAsked => Err(Skip::InsecureAddress),
            T::None => Err(Skip::NoRecords),
            T::Unusable => Err(Skip::Unusable),
            T::Usable if !dns.mx_secure => Err(Skip::InsecureMx),
            T::Usable => Ok(Level::Dane),
        },
    }
}

/// What is known about the host being connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// The level applied to it.
    pub level: Level,
    /// smtps: TLS before the greeting.
    pub implicit: bool,
    /// This is the one plaintext retry `may` allows after a failed
    /// handshake on this address (ignored at any other level).
    pub plaintext_retry: bool,
}

/// What the server did, in the order it can happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The connection is open (for smtps: before anything is read).
    Connected,
    /// The EHLO reply: whether it offered STARTTLS.
    Ehlo {
        /// STARTTLS offered.
        starttls: bool,
    },
    /// The reply to STARTTLS: 2xx or not.
    StartTlsReply {
        /// 220.
        ok: bool,
    },
    /// Bytes arrived after the 220 to STARTTLS, before our handshake
    /// (RFC 3207 §5: they must not be read inside TLS).
    BytesAfter220,
    /// The handshake ended.
    Handshake {
        /// It completed (and, under `verify` or `dane`, the certificate
        /// was authenticated).
        ok: bool,
    },
}

/// Why a host is given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// TLS is required and STARTTLS was not offered.
    NotOffered,
    /// TLS is required and STARTTLS was refused.
    Refused,
    /// The server sent bytes after its 220.
    BytesAfter220,
    /// The handshake failed.
    HandshakeFailed,
}

/// What the connection code does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the greeting and say EHLO, without TLS so far.
    Greet,
    /// Handshake before the greeting (smtps).
    ImplicitTls {
        /// Authenticate the certificate (by CA under `verify`, by TLSA
        /// under `dane`).
        verify: bool,
    },
    /// Send STARTTLS, then handshake.
    StartTls {
        /// As for [`Next::ImplicitTls`].
        verify: bool,
    },
    /// Carry on in plaintext.
    Plaintext,
    /// Carry on inside TLS (say EHLO again, forgetting what was offered
    /// before: RFC 3207 §4.2).
    Secured,
    /// Close, and try this address once more without TLS (`may`, as
    /// OpenSMTPD's MTA_DOWNGRADE_PLAIN).
    Downgrade(Why),
    /// Close without sending mail; try the next address or MX, or defer.
    NextHost(Why),
}

/// The decision for `event` on `host`.
pub fn decide(host: Host, event: Event) -> Next {
    let verify = matches!(host.level, Level::Verify | Level::Dane | Level::Sts);
    let required = matches!(
        host.level,
        Level::Encrypt | Level::Verify | Level::Dane | Level::Sts
    );
    // `none`, and the plaintext retry of `may`, never try TLS.
    let tls_wanted = match host.level {
        Level::None => false,
        Level::May => !host.plaintext_retry,
        Level::Encrypt | Level::Verify | Level::Dane | Level::Sts => true,
    };
    let give_up = |why| {
        if host.level == Level::May && !host.implicit {
            Next::Downgrade(why)
        } else {
            Next::NextHost(why)
        }
    };
    match event {
        Event::Connected if host.implicit => Next::ImplicitTls { verify },
        Event::Connected => Next::Greet,
        // smtps is TLS from the start; its EHLO says nothing about it.
        Event::Ehlo { .. } if host.implicit => Next::Secured,
        Event::Ehlo { .. } if !tls_wanted => Next::Plaintext,
        Event::Ehlo { starttls: true } => Next::StartTls { verify },
        Event::Ehlo { starttls: false } if required => Next::NextHost(Why::NotOffered),
        Event::Ehlo { starttls: false } => Next::Plaintext,
        Event::StartTlsReply { ok: true } => Next::Secured,
        Event::StartTlsReply { ok: false } if required => Next::NextHost(Why::Refused),
        Event::StartTlsReply { ok: false } => Next::Plaintext,
        Event::BytesAfter220 => give_up(Why::BytesAfter220),
        Event::Handshake { ok: true } => Next::Secured,
        Event::Handshake { ok: false } => give_up(Why::HandshakeFailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Level::{Dane, Encrypt, May, None, Sts as StsLevel, Verify};

    const LEVELS: [Level; 6] = [None, May, Encrypt, Verify, Dane, StsLevel];

    fn every_event() -> Vec<Event> {
        vec![
            Event::Connected,
            Event::Ehlo { starttls: true },
            Event::Ehlo { starttls: false },
            Event::StartTlsReply { ok: true },
            Event::StartTlsReply { ok: false },
            Event::BytesAfter220,
            Event::Handshake { ok: true },
            Event::Handshake { ok: false },
        ]
    }

    /// The whole table for STARTTLS hosts, row by row: policy, event →
    /// decision (the plaintext retry is the next table).
    #[test]
    fn starttls_table() {
        use Event::*;
        use Next::*;
        let rows: &[(Level, Event, Next)] = &[
            (None, Connected, Greet),
            (None, Ehlo { starttls: true }, Plaintext),
            (None, Ehlo { starttls: false }, Plaintext),
            (May, Connected, Greet),
            (May, Ehlo { starttls: true }, StartTls { verify: false }),
            (May, Ehlo { starttls: false }, Plaintext),
            (May, StartTlsReply { ok: true }, Secured),
            (May, StartTlsReply { ok: false }, Plaintext),
            (May, BytesAfter220, Downgrade(Why::BytesAfter220)),
            (May, Handshake { ok: true }, Secured),
            (
                May,
                Handshake { ok: false },
                Downgrade(Why::HandshakeFailed),
            ),
            (Encrypt, Connected, Greet),
            (Encrypt, Ehlo { starttls: true }, StartTls { verify: false }),
            (Encrypt, Ehlo { starttls: false }, NextHost(Why::NotOffered)),
            (Encrypt, StartTlsReply { ok: true }, Secured),
            (Encrypt, StartTlsReply { ok: false }, NextHost(Why::Refused)),
            (Encrypt, BytesAfter220, NextHost(Why::BytesAfter220)),
            (Encrypt, Handshake { ok: true }, Secured),
            (
                Encrypt,
                Handshake { ok: false },
                NextHost(Why::HandshakeFailed),
            ),
            (Verify, Connected, Greet),
            (Verify, Ehlo { starttls: true }, StartTls { verify: true }),
            (Verify, Ehlo { starttls: false }, NextHost(Why::NotOffered)),
            (Verify, StartTlsReply { ok: true }, Secured),
            (Verify, StartTlsReply { ok: false }, NextHost(Why::Refused)),
            (Verify, BytesAfter220, NextHost(Why::BytesAfter220)),
            (Verify, Handshake { ok: true }, Secured),
            (
                Verify,
                Handshake { ok: false },
                NextHost(Why::HandshakeFailed),
            ),
            (Dane, Connected, Greet),
            (Dane, Ehlo { starttls: true }, StartTls { verify: true }),
            (Dane, Ehlo { starttls: false }, NextHost(Why::NotOffered)),
            (Dane, StartTlsReply { ok: true }, Secured),
            (Dane, StartTlsReply { ok: false }, NextHost(Why::Refused)),
            (Dane, BytesAfter220, NextHost(Why::BytesAfter220)),
            (Dane, Handshake { ok: true }, Secured),
            (
                Dane,
                Handshake { ok: false },
                NextHost(Why::HandshakeFailed),
            ),
        ];
        for &(policy, event, want) in rows {
            let host = Host {
                level: policy,
                implicit: false,
                plaintext_retry: false,
            };
            assert_eq!(decide(host, event), want, "{policy:?} {event:?}");
        }
    }

    #[test]
    fn the_plaintext_retry_never_tries_tls() {
        for policy in [None, May] {
            let host = Host {
                level: policy,
                implicit: false,
                plaintext_retry: true,
            };
            for starttls in [true, false] {
                assert_eq!(
                    decide(host, Event::Ehlo { starttls }),
                    Next::Plaintext,
                    "{policy:?}"
                );
            }
        }
    }

    #[test]
    fn implicit_tls_never_downgrades() {
        for policy in LEVELS {
            let host = Host {
                level: policy,
                implicit: true,
                plaintext_retry: false,
            };
            assert_eq!(
                decide(host, Event::Connected),
                Next::ImplicitTls {
                    verify: matches!(policy, Verify | Dane | StsLevel)
                }
            );
            assert_eq!(decide(host, Event::Ehlo { starttls: false }), Next::Secured);
            assert_eq!(
                decide(host, Event::Handshake { ok: false }),
                Next::NextHost(Why::HandshakeFailed),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn no_event_ever_sends_mail_in_plaintext_under_encrypt_verify_or_dane() {
        // Whatever the server does (and even if asked for a plaintext
        // retry), a required level never continues without TLS, and
        // never downgrades.
        for policy in [Encrypt, Verify, Dane, StsLevel] {
            for (implicit, plaintext_retry) in [(false, false), (true, false), (false, true)] {
                for event in every_event() {
                    let next = decide(
                        Host {
                            level: policy,
                            implicit,
                            plaintext_retry,
                        },
                        event,
                    );
                    assert!(
                        !matches!(next, Next::Plaintext | Next::Downgrade(_)),
                        "{policy:?} implicit={implicit} {event:?} → {next:?}"
                    );
                }
            }
        }
    }

    /// `dane` and `dane-only` against every DNSSEC situation (RFC 7672
    /// §2.2; Postfix's dane_init() makes the same choices), and the other
    /// policies ignoring DNSSEC altogether.
    #[test]
    fn level_table() {
        use TlsaFound as T;
        let dns = |mx_secure, tlsa| Dnssec {
            mx_secure,
            addr_secure: tlsa != T::NotAsked,
            tlsa,
        };
        let rows: &[(TlsPolicy, bool, TlsaFound, Result<Level, Skip>)] = &[
            (TlsPolicy::Dane, true, T::NotAsked, Ok(May)),
            (TlsPolicy::Dane, true, T::Failed, Err(Skip::LookupFailed)),
            (TlsPolicy::Dane, true, T::None, Ok(May)),
            (TlsPolicy::Dane, true, T::Unusable, Ok(Encrypt)),
            (TlsPolicy::Dane, true, T::Usable, Ok(Dane)),
            (TlsPolicy::Dane, false, T::Usable, Ok(Dane)),
            (TlsPolicy::Dane, false, T::Failed, Err(Skip::LookupFailed)),
            (
                TlsPolicy::DaneOnly,
                true,
                T::NotAsked,
                Err(Skip::InsecureAddress),
            ),
            (
                TlsPolicy::DaneOnly,
                true,
                T::Failed,
                Err(Skip::LookupFailed),
            ),
            (TlsPolicy::DaneOnly, true, T::None, Err(Skip::NoRecords)),
            (TlsPolicy::DaneOnly, true, T::Unusable, Err(Skip::Unusable)),
            (TlsPolicy::DaneOnly, true, T::Usable, Ok(Dane)),
            (TlsPolicy::DaneOnly, false, T::Usable, Err(Skip::InsecureMx)),
        ];
        for &(policy, mx_secure, tlsa, want) in rows {
            assert_eq!(
                level(policy, dns(mx_secure, tlsa), Sts::None),
                want,
                "{policy:?} mx_secure={mx_secure} {tlsa:?}"
            );
        }
        let fixed = [
            (TlsPolicy::None, None),
            (TlsPolicy::May, May),
            (TlsPolicy::Encrypt, Encrypt),
            (TlsPolicy::Verify, Verify),
        ];
        for (policy, want) in fixed {
            for tlsa in [T::NotAsked, T::Failed, T::None, T::Unusable, T::Usable] {
                for sts in [Sts::None, Sts::Testing, Sts::Enforce { listed: false }] {
                    assert_eq!(
                        level(policy, dns(true, tlsa), sts),
                        Ok(want),
                        "{policy:?} {tlsa:?} {sts:?}"
                    );
                }
            }
        }
    }

    /// MTA-STS under `dane` where DANE does not apply; DANE wins wherever
    /// secure TLSA records exist (RFC 8461 §2); `dane-only` never looks
    /// at MTA-STS.
    #[test]
    fn sts_table() {
        use TlsaFound as T;
        let enforce = |listed| Sts::Enforce { listed };
        let rows: &[(TlsPolicy, TlsaFound, Sts, Result<Level, Skip>)] = &[
            (TlsPolicy::Dane, T::NotAsked, enforce(true), Ok(StsLevel)),
            (TlsPolicy::Dane, T::None, enforce(true), Ok(StsLevel)),
            (
                TlsPolicy::Dane,
                T::NotAsked,
                enforce(false),
                Err(Skip::NotInStsPolicy),
            ),
            (
                TlsPolicy::Dane,
                T::None,
                enforce(false),
                Err(Skip::NotInStsPolicy),
            ),
            (TlsPolicy::Dane, T::None, Sts::Testing, Ok(May)),
            (TlsPolicy::Dane, T::Usable, enforce(false), Ok(Dane)),
            (TlsPolicy::Dane, T::Usable, enforce(true), Ok(Dane)),
            (TlsPolicy::Dane, T::Unusable, enforce(false), Ok(Encrypt)),
            (
                TlsPolicy::Dane,
                T::Failed,
                enforce(true),
                Err(Skip::LookupFailed),
            ),
            (
                TlsPolicy::DaneOnly,
                T::None,
                enforce(true),
                Err(Skip::NoRecords),
            ),
            (TlsPolicy::DaneOnly, T::Usable, enforce(false), Ok(Dane)),
        ];
        for &(policy, tlsa, sts, want) in rows {
            let dns = Dnssec {
                mx_secure: true,
                addr_secure: tlsa != T::NotAsked,
                tlsa,
            };
            assert_eq!(level(policy, dns, sts), want, "{policy:?} {tlsa:?} {sts:?}");
        }
    }

    #[test]
    fn tlsa_is_asked_for_only_under_dane_after_a_secure_address() {
        for policy in [
            TlsPolicy::None,
            TlsPolicy::May,
            TlsPolicy::Encrypt,
            TlsPolicy::Verify,
            TlsPolicy::Dane,
            TlsPolicy::DaneOnly,
        ] {
            assert!(!wants_tlsa(policy, false), "{policy:?}");
            assert_eq!(wants_tlsa(policy, true), policy.is_dane(), "{policy:?}");
        }
    }
}
