//! One command line (CRLF already removed) → [`Command`].
//!
//! Verbs are case-insensitive (RFC 5321 §2.4). Arguments are checked here for
//! syntax only; whether a command is allowed now is the state machine's call.

use super::address::{Mailbox, is_domain, parse_path};
use super::reply::{self, Reply};

/// Body type from `BODY=` (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT` or none given.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// A parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `EHLO name`.
    Ehlo(String),
    /// `HELO name`.
    Helo(String),
    /// `MAIL FROM:<path>` with its parameters.
    Mail {
        /// None for the null sender `<>`.
        from: Option<Mailbox>,
        /// `SIZE=` if given.
        size: Option<u64>,
        /// `BODY=`.
        body: Body,
        /// `REQUIRETLS` (RFC 8689 §4.1).
        requiretls: bool,
    },
    /// `RCPT TO:<path>`.
    Rcpt(Mailbox),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY`.
    Vrfy,
    /// `EXPN`: never implemented, mailing lists are not disclosed.
    Expn,
    /// `HELP`.
    Help,
    /// `STARTTLS`; `true` when it came with parameters (a 501).
    StartTls {
        /// The client sent arguments, which RFC 3207 forbids.
        with_args: bool,
    },
    /// `AUTH mechanism [initial-response]`.
    Auth {
        /// Mechanism name, upper-cased.
        mechanism: String,
        /// Initial response, still base64 (`=` for empty).
        initial: Option<String>,
    },
}

impl Command {
    /// Commands a `tls-require` listener accepts before TLS (RFC 3207 §4;
    /// Postfix's `SMTPD_CMD_FLAG_PRE_TLS`).
    pub fn allowed_before_tls(&self) -> bool {
        matches!(
            self,
            Command::Ehlo(_)
                | Command::Helo(_)
                | Command::Noop
                | Command::Rset
                | Command::Help
                | Command::Quit
                | Command::StartTls { .. }
        )
    }

    /// Short name for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy => "VRFY",
            Command::Expn => "EXPN",
            Command::Help => "HELP",
            Command::StartTls { .. } => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }
}

/// Parse one command line. The error is the reply to send.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    // Non-UTF-8 bytes cannot form any verb or valid path; treat them as
    // unknown rather than guessing an encoding.
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(reply::UNKNOWN_COMMAND);
    };
    let (verb, args) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim_matches(' ')),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(reply::SYNTAX_PARAMS)
        }
    };
    match verb.as_str() {
        "EHLO" | "HELO" => {
            if !is_helo_name(args) {
                return Err(reply::SYNTAX_PARAMS);
            }
            Ok(if verb == "EHLO" {
                Command::Ehlo(args.to_string())
            } else {
                Command::Helo(args.to_string())
            })
        }
        "MAIL" => parse_mail(args),
        "RCPT" => parse_rcpt(args),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if !args.is_empty() => Ok(Command::Vrfy),
        "VRFY" => Err(reply::SYNTAX_PARAMS),
        "EXPN" => Ok(Command::Expn),
        "STARTTLS" => Ok(Command::StartTls {
            with_args: !args.is_empty(),
        }),
        "AUTH" => parse_auth(args),
        _ => Err(reply::UNKNOWN_COMMAND),
    }
}

fn is_helo_name(s: &str) -> bool {
    if s.is_empty() || s.contains(' ') {
        return false;
    }
    // Plain domains (clients that send a bare host name without dots are
    // common and harmless) and real address literals only: the name goes
    // into the Received header, where anything else could forge the trace
    // or carry control characters.
    is_domain(s) || crate::smtp::address::is_address_literal(s)
}

/// Strip `keyword:` (case-insensitive) with optional spaces after the colon.
fn strip_keyword<'a>(args: &'a str, kw: &str) -> Option<&'a str> {
    let head = args.get(..kw.len())?;
    if !head.eq_ignore_ascii_case(kw) {
        return None;
    }
    Some(args[kw.len()..].trim_start_matches(' '))
}

fn parse_mail(args: &str) -> Result<Command, Reply> {
    let Some(rest) = strip_keyword(args, "FROM:") else {
        return Err(reply::SYNTAX_PARAMS);
    };
    let Some((from, params)) = parse_path(rest) else {
        return Err(reply::BAD_SENDER);
    };
    if from.as_ref().is_some_and(|m| m.domain.is_empty()) {
        return Err(reply::BAD_SENDER);
    }
    let mut size = None;
    let mut body = Body::SevenBit;
    let mut requiretls = false;
    for p in params.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        match k.to_ascii_uppercase().as_str() {
            "SIZE" => size = Some(v.parse::<u64>().map_err(|_| reply::SYNTAX_PARAMS)?),
            "BODY" if v.eq_ignore_ascii_case("8BITMIME") => body = Body::EightBitMime,
            "BODY" if v.eq_ignore_ascii_case("7BIT") => body = Body::SevenBit,
            // RFC 4954 §5: AUTH= on MAIL is optional to honour; we ignore it.
            "AUTH" => {}
            "REQUIRETLS" if v.is_empty() && !p.contains('=') => requiretls = true,
            _ => return Err(reply::SYNTAX_PARAMS),
        }
    }
    Ok(Command::Mail {
        from,
        size,
        body,
        requiretls,
    })
}

fn parse_rcpt(args: &str) -> Result<Command, Reply> {
    let Some(rest) = strip_keyword(args, "TO:") else {
        return Err(reply::SYNTAX_PARAMS);
    };
    let Some((to, params)) = parse_path(rest) else {
        return Err(reply::BAD_RECIPIENT);
    };
    let Some(to) = to else {
        return Err(reply::BAD_RECIPIENT);
    };
    if !params.trim().is_empty() {
        return Err(reply::SYNTAX_PARAMS);
    }
    Ok(Command::Rcpt(to))
}

fn parse_auth(args: &str) -> Result<Command, Reply> {
    let mut it = args.split(' ').filter(|a| !a.is_empty());
    let Some(mechanism) = it.next() else {
        return Err(reply::SYNTAX_PARAMS);
    };
    let initial = it.next().map(str::to_string);
    if it.next().is_some() {
        return Err(reply::SYNTAX_PARAMS);
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse(b"noop anything at all"), Ok(Command::Noop));
    }

    #[test]
    fn helo_names_are_domains_or_real_address_literals() {
        // The name is copied into the Received header.
        for ok in [
            "client.example",
            "localhost",
            "[192.0.2.1]",
            "[IPv6:2001:db8::1]",
            "xn--bcher-kva.example",
        ] {
            assert!(parse(format!("EHLO {ok}").as_bytes()).is_ok(), "{ok}");
        }
        let long = format!("{}.example", "a.".repeat(130));
        for bad in [
            "[1.2.3.4])\tby\tmx.google.com\t(Postfix)\twith\tESMTPS\tid\tFAKE;\t(]",
            "[a\0b\x01\x1b[31m]",
            "[999.1.1.1]",
            "[IPv6:nonsense]",
            "[]",
            "host;evil",
            "(comment)",
            long.as_str(),
        ] {
            assert_eq!(
                parse(format!("HELO {bad}").as_bytes()),
                Err(reply::SYNTAX_PARAMS),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn mail_with_params() {
        let c = parse(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME").unwrap();
        let Command::Mail {
            from,
            size,
            body,
            requiretls,
        } = c
        else {
            panic!("not MAIL")
        };
        assert_eq!(from.unwrap().to_string(), "a@b.example");
        assert_eq!(size, Some(1000));
        assert_eq!(body, Body::EightBitMime);
        assert!(!requiretls);
        assert!(matches!(
            parse(b"MAIL FROM:<a@b.example> requiretls"),
            Ok(Command::Mail {
                requiretls: true,
                ..
            })
        ));
        // REQUIRETLS takes no value (RFC 8689 §4.1).
        assert_eq!(
            parse(b"MAIL FROM:<a@b.example> REQUIRETLS=yes"),
            Err(reply::SYNTAX_PARAMS)
        );
        assert!(matches!(
            parse(b"mail from: <>"),
            Ok(Command::Mail { from: None, .. })
        ));
    }

    #[test]
    fn bad_arguments() {
        assert_eq!(parse(b"MAIL FROM:a@b.example"), Err(reply::BAD_SENDER));
        assert_eq!(parse(b"MAIL TO:<a@b.example>"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(
            parse(b"MAIL FROM:<a@b.example> SIZE=x"),
            Err(reply::SYNTAX_PARAMS)
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.example> FOO=1"),
            Err(reply::SYNTAX_PARAMS)
        );
        assert_eq!(parse(b"MAIL FROM:<postmaster>"), Err(reply::BAD_SENDER));
        assert_eq!(parse(b"RCPT TO:<>"), Err(reply::BAD_RECIPIENT));
        assert_eq!(parse(b"RCPT TO:<bad@@x>"), Err(reply::BAD_RECIPIENT));
        assert_eq!(parse(b"RCPT FROM:<a@b.example>"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"EHLO"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"HELO two words"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"DATA now"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"RSET x"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"VRFY"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"AUTH"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse(b"AUTH PLAIN a b"), Err(reply::SYNTAX_PARAMS));
    }

    #[test]
    fn unknown_and_binary() {
        assert_eq!(parse(b"FOO"), Err(reply::UNKNOWN_COMMAND));
        assert_eq!(parse(b""), Err(reply::UNKNOWN_COMMAND));
        assert_eq!(parse(b"\xff\xfe"), Err(reply::UNKNOWN_COMMAND));
        assert_eq!(parse(b"EHLO\0x"), Err(reply::UNKNOWN_COMMAND));
    }

    #[test]
    fn starttls_and_auth() {
        assert_eq!(
            parse(b"STARTTLS"),
            Ok(Command::StartTls { with_args: false })
        );
        assert_eq!(
            parse(b"starttls now"),
            Ok(Command::StartTls { with_args: true })
        );
        assert_eq!(
            parse(b"auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            })
        );
    }

    #[test]
    fn pre_tls_table() {
        assert!(parse(b"EHLO x").unwrap().allowed_before_tls());
        assert!(parse(b"STARTTLS").unwrap().allowed_before_tls());
        assert!(!parse(b"MAIL FROM:<>").unwrap().allowed_before_tls());
        assert!(!parse(b"AUTH PLAIN").unwrap().allowed_before_tls());
        assert!(!parse(b"VRFY x").unwrap().allowed_before_tls());
        assert!(!parse(b"DATA").unwrap().allowed_before_tls());
    }
}
