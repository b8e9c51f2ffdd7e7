//! The on-disk envelope: a small versioned text file, kept at the end of
//! `mail/X/ID.msg` and, once delivery changed it, in `mail/X/ID.env`.
//!
//! ```text
//! postern-envelope 1
//! id 0193A1F2C3D4E5F6
//! arrival 1764576000
//! from alice@example.com          (empty value for the null sender <>)
//! helo client.example
//! client 192.0.2.7
//! auth alice                      (only after AUTH)
//! tls TLSv1.3 TLS13_AES_128_GCM_SHA256   (only over TLS)
//! body 8bitmime                   (or 7bit)
//! size 1234
//! rcpt addr=bob@example.com action=local state=pending attempts=0 next=0 error=
//! ```
//!
//! One `rcpt` line per recipient, its fields `key=value` with `%XX` escapes
//! for space, `%`, `=` and control bytes, so any address survives. Unknown
//! keys are an error: a newer envelope is never half-read by an older
//! postern. Updates are written to a new file and renamed over the old one.

use std::fmt::Write as _;

/// Envelope format version written by this postern.
pub const VERSION: u32 = 1;

/// Delivery state of one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptState {
    /// Not delivered yet.
    Pending,
    /// Delivered (kept until every recipient is done).
    Sent,
    /// Failed permanently; a bounce was queued.
    Bounced,
}

impl RcptState {
    fn as_str(self) -> &'static str {
        match self {
            RcptState::Pending => "pending",
            RcptState::Sent => "sent",
            RcptState::Bounced => "bounced",
        }
    }
    fn parse(s: &str) -> Option<RcptState> {
        Some(match s {
            "pending" => RcptState::Pending,
            "sent" => RcptState::Sent,
            "bounced" => RcptState::Bounced,
            _ => return None,
        })
    }
}

/// One recipient with its delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvRcpt {
    /// Address as given at RCPT.
    pub addr: String,
    /// Action chosen at RCPT time.
    pub action: String,
    /// Delivery state.
    pub state: RcptState,
    /// Attempts made.
    pub attempts: u32,
    /// Unix time of the next attempt (0: as soon as possible).
    pub next_try: u64,
    /// Last error reply, for `posternctl show queue` and bounces.
    pub error: String,
}

impl EnvRcpt {
    /// A recipient not yet tried, routed to `action`.
    pub fn pending(addr: impl Into<String>, action: impl Into<String>) -> EnvRcpt {
        EnvRcpt {
            addr: addr.into(),
            action: action.into(),
            state: RcptState::Pending,
            attempts: 0,
            next_try: 0,
            error: String::new(),
        }
    }
}

/// A message's envelope.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Queue id.
    pub id: String,
    /// Unix time of arrival.
    pub arrival: u64,
    /// Sender; empty for `<>`.
    pub from: String,
    /// HELO/EHLO name.
    pub helo: String,
    /// Client address.
    pub client: String,
    /// Authenticated user.
    pub auth: Option<String>,
    /// TLS version and cipher.
    pub tls: Option<(String, String)>,
    /// Declared 8BITMIME.
    pub eight_bit: bool,
    /// Body size in bytes.
    pub size: u64,
    /// Recipients.
    pub rcpts: Vec<EnvRcpt>,
    /// What the sender asked of TLS on the way (RFC 8689).
    pub tls_required: TlsRequired,
}

/// What the sender asked of TLS for the rest of a message's way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsRequired {
    /// The destinations' policies.
    #[default]
    Policy,
    /// `MAIL FROM:<…> REQUIRETLS` (RFC 8689 §4): only authenticated TLS
    /// to servers that take REQUIRETLS too.
    Require,
    /// `TLS-Required: No` (RFC 8689 §5): TLS when offered, whatever the
    /// destination's DANE or MTA-STS policy says.
    Optional,
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c <= ' ' || c == '%' || c == '=' || c == '\x7f' {
            let _ = write!(out, "%{:02X}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A header-line value: no line breaks may reach the file.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

impl Envelope {
    /// The file's text.
    pub fn to_text(&self) -> String {
        let mut s = format!("postern-envelope {VERSION}\n");
        let _ = writeln!(s, "id {}", self.id);
        let _ = writeln!(s, "arrival {}", self.arrival);
        let _ = writeln!(s, "from {}", one_line(&self.from));
        let _ = writeln!(s, "helo {}", one_line(&self.helo));
        let _ = writeln!(s, "client {}", self.client);
        if let Some(a) = &self.auth {
            let _ = writeln!(s, "auth {}", one_line(a));
        }
        if let Some((v, c)) = &self.tls {
            let _ = writeln!(s, "tls {v} {c}");
        }
        let _ = writeln!(
            s,
            "body {}",
            if self.eight_bit { "8bitmime" } else { "7bit" }
        );
        let _ = writeln!(s, "size {}", self.size);
        // Only when set, so that envelopes of ordinary mail stay readable
        // by a postern older than the flags.
        match self.tls_required {
            TlsRequired::Policy => {}
            TlsRequired::Require => s.push_str("flags requiretls\n"),
            TlsRequired::Optional => s.push_str("flags tls-required-no\n"),
        }
        for r in &self.rcpts {
            let _ = writeln!(
                s,
                "rcpt addr={} action={} state={} attempts={} next={} error={}",
                escape(&r.addr),
                escape(&r.action),
                r.state.as_str(),
                r.attempts,
                r.next_try,
                escape(&r.error)
            );
        }
        s
    }

    /// Parse an envelope; the error says which line is wrong.
    pub fn parse(text: &str) -> Result<Envelope, String> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l == format!("postern-envelope {VERSION}") => {}
            Some((_, l)) => {
                return Err(format!(
                    "line 1: not a postern envelope of version {VERSION}: '{l}'"
                ));
            }
            None => return Err("empty envelope".into()),
        }
        let mut e = Envelope::default();
        for (i, line) in lines {
            let err = |what: &str| format!("line {}: {what}: '{line}'", i + 1);
            let (k, v) = line.split_once(' ').unwrap_or((line, ""));
            match k {
                "id" => e.id = v.to_string(),
                "arrival" => e.arrival = v.parse().map_err(|_| err("bad arrival time"))?,
                "from" => e.from = v.to_string(),
                "helo" => e.helo = v.to_string(),
                "client" => e.client = v.to_string(),
                "auth" => e.auth = Some(v.to_string()),
                "tls" => {
                    let (ver, c) = v.split_once(' ').ok_or_else(|| err("bad tls line"))?;
                    e.tls = Some((ver.to_string(), c.to_string()));
                }
                "body" => e.eight_bit = v == "8bitmime",
                "size" => e.size = v.parse().map_err(|_| err("bad size"))?,
                "flags" => {
                    e.tls_required = match v {
                        "requiretls" => TlsRequired::Require,
                        "tls-required-no" => TlsRequired::Optional,
                        _ => return Err(err("unknown flags")),
                    }
                }
                "rcpt" => e
                    .rcpts
                    .push(parse_rcpt(v).ok_or_else(|| err("bad recipient"))?),
                _ => return Err(err("unknown field")),
            }
        }
        if e.id.is_empty() || e.rcpts.is_empty() {
            return Err("envelope has no id or no recipients".into());
        }
        Ok(e)
    }
}

fn parse_rcpt(v: &str) -> Option<EnvRcpt> {
    let mut r = EnvRcpt::pending("", "");
    for field in v.split(' ') {
        let (k, val) = field.split_once('=')?;
        let val = unescape(val)?;
        match k {
            "addr" => r.addr = val,
            "action" => r.action = val,
            "state" => r.state = RcptState::parse(&val)?,
            "attempts" => r.attempts = val.parse().ok()?,
            "next" => r.next_try = val.parse().ok()?,
            "error" => r.error = val,
            _ => return None,
        }
    }
    (!r.addr.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            id: "0193A1F2C3D4E5F6".into(),
            arrival: 1764576000,
            from: String::new(),
            helo: "client.example".into(),
            client: "192.0.2.7".into(),
            auth: Some("alice".into()),
            tls: Some(("TLSv1.3".into(), "TLS13_AES_128_GCM_SHA256".into())),
            eight_bit: true,
            size: 42,
            rcpts: vec![
                EnvRcpt {
                    addr: "\"odd = name%\"@example.com".into(),
                    action: "my local".into(),
                    state: RcptState::Pending,
                    attempts: 2,
                    next_try: 1764579600,
                    error: "451 4.3.0 try later".into(),
                },
                EnvRcpt {
                    addr: "bücher@example.de".into(),
                    action: "out".into(),
                    state: RcptState::Sent,
                    attempts: 1,
                    next_try: 0,
                    error: String::new(),
                },
            ],
            tls_required: TlsRequired::Policy,
        }
    }

    /// The flags line appears only when a flag is set, and reads back.
    #[test]
    fn tls_flags_round_trip() {
        let plain = sample().to_text();
        assert!(!plain.contains("flags"), "{plain}");
        for (flag, line) in [
            (TlsRequired::Require, "flags requiretls\n"),
            (TlsRequired::Optional, "flags tls-required-no\n"),
        ] {
            let e = Envelope {
                tls_required: flag,
                ..sample()
            };
            let text = e.to_text();
            assert!(text.contains(line), "{text}");
            assert_eq!(Envelope::parse(&text).unwrap(), e);
        }
        let bad = plain.replace("size 42\n", "size 42\nflags nonsense\n");
        assert!(Envelope::parse(&bad).unwrap_err().contains("unknown flags"));
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let text = e.to_text();
        assert!(
            text.starts_with("postern-envelope 1\nid 0193A1F2C3D4E5F6\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "rcpt addr=\"odd%20%3D%20name%25\"@example.com action=my%20local state=pending"
            ),
            "{text}"
        );
        assert_eq!(Envelope::parse(&text).unwrap(), e);
    }

    #[test]
    fn refuses_damaged_files() {
        assert!(Envelope::parse("").is_err());
        assert!(
            Envelope::parse("postern-envelope 9\n")
                .unwrap_err()
                .contains("version 1")
        );
        let text = sample().to_text().replace("size 42", "size forty");
        assert!(Envelope::parse(&text).unwrap_err().contains("bad size"));
        let text = sample().to_text().replace("state=sent", "state=lost");
        assert!(
            Envelope::parse(&text)
                .unwrap_err()
                .contains("bad recipient")
        );
        let text = sample().to_text() + "colour blue\n";
        assert!(
            Envelope::parse(&text)
                .unwrap_err()
                .contains("unknown field")
        );
        let no_rcpt: String = sample()
            .to_text()
            .lines()
            .filter(|l| !l.starts_with("rcpt"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(Envelope::parse(&no_rcpt).is_err());
    }

    #[test]
    fn header_values_cannot_break_lines() {
        let mut e = sample();
        e.helo = "evil\nrcpt addr=x@y".into();
        let back = Envelope::parse(&e.to_text()).unwrap();
        assert_eq!(back.rcpts.len(), 2);
    }
}
