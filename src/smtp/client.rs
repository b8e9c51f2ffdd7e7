//! The client side of the SMTP dialogue, over any [`Wire`]: EHLO with the
//! HELO fallback (RFC 5321 §3.2), AUTH PLAIN (RFC 4954, RFC 4616), MAIL
//! and RCPT pipelined when offered (RFC 2920 §3.1), DATA with
//! dot-stuffing (RFC 5321 §4.5.2), RSET and QUIT. It decides nothing about
//! TLS or where to connect (`delivery::tls_decision`, `delivery::remote`);
//! the unit tests drive it against scripted servers.

use std::io::Read;

use base64::Engine as _;

use super::response::{Capabilities, Response};

/// Where commands go and replies come from. Errors are one line naming
/// the server and what happened.
pub trait Wire {
    /// Write all of `bytes` (one command, a pipelined batch, or a piece of
    /// the message).
    fn send(&mut self, bytes: &[u8]) -> Result<(), String>;
    /// The next complete reply.
    fn reply(&mut self) -> Result<Response, String>;
}

/// One command and its reply.
pub fn command(w: &mut dyn Wire, line: &str) -> Result<Response, String> {
    w.send(format!("{line}\r\n").as_bytes())?;
    w.reply()
}

/// How the server took our greeting.
#[derive(Debug)]
pub enum Hello {
    /// EHLO: what it offers.
    Ehlo(Capabilities),
    /// EHLO refused, HELO accepted: no extensions.
    Helo,
    /// Both refused: the reply to HELO.
    Refused(Response),
}

/// EHLO, and HELO if EHLO is refused (RFC 5321 §3.2).
pub fn hello(w: &mut dyn Wire, me: &str) -> Result<Hello, String> {
    let r = command(w, &format!("EHLO {me}"))?;
    if r.is_ok() {
        return Ok(Hello::Ehlo(Capabilities::from_ehlo(&r)));
    }
    let r = command(w, &format!("HELO {me}"))?;
    Ok(if r.is_ok() {
        Hello::Helo
    } else {
        Hello::Refused(r)
    })
}

/// AUTH PLAIN with the initial response (RFC 4954 §4, RFC 4616 §2): the
/// server's final reply.
pub fn auth_plain(w: &mut dyn Wire, user: &str, pass: &str) -> Result<Response, String> {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
    command(w, &format!("AUTH PLAIN {token}"))
}

/// The envelope of one message.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// Reverse path, empty for `<>`.
    pub from: &'a str,
    /// Body size, for SIZE= (RFC 1870) when offered.
    pub size: u64,
    /// BODY=8BITMIME (RFC 6152) when offered.
    pub eight_bit: bool,
    /// REQUIRETLS (RFC 8689 §4.2); the caller made sure it is offered.
    pub requiretls: bool,
    /// Forward paths.
    pub rcpts: &'a [&'a str],
}

/// The server's replies to one transaction.
#[derive(Debug)]
pub struct Replies {
    /// To MAIL.
    pub mail: Response,
    /// To each RCPT, in order (empty when MAIL was refused without
    /// pipelining, so no RCPT was sent).
    pub rcpts: Vec<Response>,
    /// To DATA, when some recipient was accepted.
    pub data: Option<Response>,
    /// To the final `.`, when DATA was accepted.
    pub end: Option<Response>,
    /// The connection can carry another transaction (false when the RSET
    /// after a refusal failed: the replies above still stand).
    pub reusable: bool,
}

impl Replies {
    /// The reply that decides recipient `i`: the first refusal on its way
    /// (MAIL, its RCPT, DATA) or the reply to the final `.`.
    pub fn for_rcpt(&self, i: usize) -> &Response {
        if !self.mail.is_ok() {
            return &self.mail;
        }
        match (self.rcpts.get(i), &self.data, &self.end) {
            (Some(r), _, _) if !r.is_ok() => r,
            (_, Some(d), _) if !d.is_intermediate() => d,
            (_, _, Some(e)) => e,
            // Unreachable for an accepted recipient; the MAIL reply is
            // the last thing known.
            (r, d, None) => d.as_ref().or(r).unwrap_or(&self.mail),
        }
    }
}

/// One transaction: MAIL, the RCPTs (in one batch with MAIL when the
/// server offers PIPELINING), DATA, the dot-stuffed `body`, and the final
/// `.`. A refused transaction is reset (RSET) so the connection can carry
/// the next one. An error means the connection broke before every
/// recipient had its answer.
pub fn send_message(
    w: &mut dyn Wire,
    caps: &Capabilities,
    env: &Envelope<'_>,
    body: &mut dyn Read,
) -> Result<Replies, String> {
    let mut mail = format!("MAIL FROM:<{}>", env.from);
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", env.size));
    }
    if caps.eight_bit && env.eight_bit {
        mail.push_str(" BODY=8BITMIME");
    }
    if env.requiretls {
        mail.push_str(" REQUIRETLS");
    }
    let rcpt_lines = env.rcpts.iter().map(|r| format!("RCPT TO:<{r}>\r\n"));
    let (mail, rcpts) = if caps.pipelining {
        // RFC 2920 §3.1: MAIL and RCPT may go in one batch; the replies
        // come back in order.
        let mut batch = format!("{mail}\r\n");
        batch.extend(rcpt_lines);
        w.send(batch.as_bytes())?;
        let m = w.reply()?;
        let rs = env
            .rcpts
            .iter()
            .map(|_| w.reply())
            .collect::<Result<Vec<_>, _>>()?;
        (m, rs)
    } else {
        let m = command(w, &mail)?;
        let mut rs = Vec::new();
        if m.is_ok() {
            for l in rcpt_lines {
                w.send(l.as_bytes())?;
                rs.push(w.reply()?);
            }
        }
        (m, rs)
    };
    let mut replies = Replies {
        mail,
        rcpts,
        data: None,
        end: None,
        reusable: true,
    };
    if !replies.mail.is_ok() || !replies.rcpts.iter().any(Response::is_ok) {
        replies.reusable = rset(w);
        return Ok(replies);
    }
    let data = command(w, "DATA")?;
    if !data.is_intermediate() {
        replies.data = Some(data);
        replies.reusable = rset(w);
        return Ok(replies);
    }
    replies.data = Some(data);
    send_body(w, body)?;
    replies.end = Some(w.reply()?);
    Ok(replies)
}

/// Stream `body` with dot-stuffing and the final `.` line; a body that
/// does not end with CRLF gets one.
fn send_body(w: &mut dyn Wire, body: &mut dyn Read) -> Result<(), String> {
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(64 * 1024 + 64);
    let mut stuffer = DotStuffer::default();
    // Bounded by the body's length.
    loop {
        let n = match body.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the spooled message: {e}")),
        };
        stuffer.push(&chunk[..n], &mut out);
        w.send(&out)?;
        out.clear();
    }
    stuffer.finish(&mut out);
    w.send(&out)
}

/// Dot-stuffing across pieces (RFC 5321 §4.5.2): a line that starts with
/// `.` gets another in front, wherever the pieces were cut.
#[derive(Debug)]
pub struct DotStuffer {
    at_line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
        }
    }
}

impl DotStuffer {
    /// Append `piece`, stuffed, to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        for &b in piece {
            if self.at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            self.at_line_start = b == b'\n';
        }
    }

    /// Append the end of data: CRLF if the last line was open, then `.`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// RSET, true when the server took it (the connection can carry another
/// transaction).
pub fn rset(w: &mut dyn Wire) -> bool {
    command(w, "RSET").is_ok_and(|r| r.is_ok())
}

/// QUIT, so the server logs a clean end; its reply does not matter.
pub fn quit(w: &mut dyn Wire) {
    let _ = command(w, "QUIT");
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
