//! The one outbound TLS decision: what a connection to one host must do
//! about TLS, and what follows from each thing the server does, for the
//! policies of postern.conf(5) (`none`, `may`, `encrypt`, `verify`; as
//! Postfix's smtp_tls_security_level) and implicit TLS (RFC 8314). No I/O:
//! `remote.rs` carries the decisions out and words the reasons. DANE and
//! MTA-STS add their facts to [`Host`].

use crate::config::TlsPolicy;

/// What is known about the host being connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// The destination's policy.
    pub policy: TlsPolicy,
    /// smtps: TLS before the greeting.
    pub implicit: bool,
    /// This is the one plaintext retry `may` allows after a failed
    /// handshake on this address (ignored under any other policy).
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
        /// It completed (and, under `verify`, the chain verified for the
        /// host's name).
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
    /// Handshake before the greeting (smtps); `verify` checks the chain
    /// and the host's name.
    ImplicitTls {
        /// Check the certificate.
        verify: bool,
    },
    /// Send STARTTLS, then handshake; `verify` as above.
    StartTls {
        /// Check the certificate.
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
    use TlsPolicy::{Encrypt, May, None, Verify};
    let verify = host.policy == Verify;
    let required = matches!(host.policy, Encrypt | Verify);
    // `none`, and the plaintext retry of `may`, never try TLS.
    let tls_wanted = match host.policy {
        None => false,
        May => !host.plaintext_retry,
        Encrypt | Verify => true,
    };
    let give_up = |why| {
        if host.policy == May && !host.implicit {
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
    use TlsPolicy::{Encrypt, May, None, Verify};

    const POLICIES: [TlsPolicy; 4] = [None, May, Encrypt, Verify];

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
        let rows: &[(TlsPolicy, Event, Next)] = &[
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
        ];
        for &(policy, event, want) in rows {
            let host = Host {
                policy,
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
                policy,
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
        for policy in POLICIES {
            let host = Host {
                policy,
                implicit: true,
                plaintext_retry: false,
            };
            assert_eq!(
                decide(host, Event::Connected),
                Next::ImplicitTls {
                    verify: policy == Verify
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
    fn no_event_ever_sends_mail_in_plaintext_under_encrypt_or_verify() {
        // Whatever the server does (and even if asked for a plaintext
        // retry), a required policy never continues without TLS, and
        // never downgrades.
        for policy in [Encrypt, Verify] {
            for (implicit, plaintext_retry) in [(false, false), (true, false), (false, true)] {
                for event in every_event() {
                    let next = decide(
                        Host {
                            policy,
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
}
