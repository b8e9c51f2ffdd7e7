//! Every reply postern's SMTP server can send, in one table.
//!
//! Code elsewhere names a reply and never formats digits. Texts are
//! generic: detail about why goes to the log, not to the client (maddy's rule).
//! RFC 3463 enhanced codes follow every reply because ENHANCEDSTATUSCODES is
//! always advertised; the greeting and EHLO/HELO lines are the exceptions RFC
//! 2034 §3 allows.

use std::borrow::Cow;
use std::fmt::Write as _;

/// One SMTP reply: code, enhanced status code and text, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Three-digit reply code.
    pub code: u16,
    /// RFC 3463 enhanced status code, empty where none is sent.
    pub esc: &'static str,
    /// Text; each `\n` starts another line of a multi-line reply.
    pub text: Cow<'static, str>,
}

macro_rules! replies {
    ($($(#[$m:meta])* $name:ident = $code:literal, $esc:literal, $text:literal;)*) => {
        $(
            $(#[$m])*
            pub const $name: Reply = Reply::fixed($code, $esc, $text);
        )*
        /// Every fixed reply, for tests that check a reply came from this table.
        pub const ALL: &[&Reply] = &[$(&$name),*];
    };
}

replies! {
    /// 221 after QUIT.
    BYE = 221, "2.0.0", "Bye";
    /// 220 before the TLS handshake.
    READY_TO_START_TLS = 220, "2.0.0", "Ready to start TLS";
    /// 250 for RSET, NOOP and accepted MAIL/RCPT.
    OK = 250, "2.0.0", "Ok";
    /// 250 for MAIL.
    SENDER_OK = 250, "2.1.0", "Ok";
    /// 250 for RCPT.
    RECIPIENT_OK = 250, "2.1.5", "Ok";
    /// 235 after AUTH.
    AUTH_OK = 235, "2.7.0", "Authentication successful";
    /// 252 for VRFY: we never disclose users.
    CANNOT_VRFY = 252, "2.1.5", "Cannot VRFY user, but will accept message";
    /// 214 for HELP.
    HELP = 214, "2.0.0", "postern: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH; see postern(8)";
    /// 354 after DATA.
    START_DATA = 354, "", "End data with <CR><LF>.<CR><LF>";
    /// 421 from the acceptor when the pool or a connection limit is full.
    BUSY = 421, "4.3.2", "Service temporarily unavailable, try again later";
    /// 421 on idle timeout.
    TIMEOUT = 421, "4.4.2", "Timeout, closing connection";
    /// 421 after too many bad commands.
    TOO_MANY_ERRORS = 421, "4.7.0", "Too many errors, closing connection";
    /// 421 after too many failed AUTH attempts.
    TOO_MANY_AUTH_FAILURES = 421, "4.7.0", "Too many authentication failures, closing connection";
    /// 421 to AUTH from an address with too many recent failures.
    AUTH_LOCKED_OUT = 421, "4.7.0", "Too many authentication failures from your address, try again later";
    /// 421 when the daemon is shutting down.
    SHUTTING_DOWN = 421, "4.3.2", "Service shutting down, closing connection";
    /// 452 when the spool cannot take the message.
    STORAGE_FAILED = 452, "4.3.1", "Insufficient system storage";
    /// 452 for one recipient more than `limit max-recipients`.
    TOO_MANY_RECIPIENTS = 452, "4.5.3", "Too many recipients";
    /// 454 for STARTTLS without a usable certificate.
    TLS_NOT_AVAILABLE = 454, "4.7.0", "TLS not available due to temporary reason";
    /// 500 for an unknown verb.
    UNKNOWN_COMMAND = 500, "5.5.2", "Command not recognized";
    /// 500 for a command line over 4096 octets.
    LINE_TOO_LONG = 500, "5.5.2", "Line too long";
    /// 501 for a known command with bad arguments.
    SYNTAX_PARAMS = 501, "5.5.4", "Syntax error in parameters";
    /// 501 for STARTTLS with arguments.
    STARTTLS_NO_PARAMS = 501, "5.5.4", "Syntax error (no parameters allowed)";
    /// 501 for MAIL FROM with an invalid path.
    BAD_SENDER = 501, "5.1.7", "Invalid sender address";
    /// 501 for RCPT TO with an invalid path.
    BAD_RECIPIENT = 501, "5.1.3", "Invalid recipient address";
    /// 501 for an AUTH response that is not base64.
    CANNOT_DECODE = 501, "5.5.2", "Cannot decode response";
    /// 501 when the client cancels AUTH with `*`.
    AUTH_CANCELLED = 501, "5.7.0", "Authentication cancelled";
    /// 502 for AUTH on a listener without `auth`.
    NOT_IMPLEMENTED = 502, "5.5.1", "Command not implemented";
    /// 503 for MAIL before EHLO/HELO.
    HELO_FIRST = 503, "5.5.1", "Send EHLO/HELO first";
    /// 503 for commands out of order.
    BAD_SEQUENCE = 503, "5.5.1", "Bad sequence of commands";
    /// 503 for STARTTLS inside TLS.
    TLS_ALREADY_ACTIVE = 503, "5.5.1", "TLS already active";
    /// 504 for an AUTH mechanism we do not offer.
    UNKNOWN_MECHANISM = 504, "5.5.4", "Unrecognized authentication type";
    /// 530 on a `tls-require` listener before TLS.
    MUST_STARTTLS_FIRST = 530, "5.7.0", "Must issue a STARTTLS command first";
    /// 530 for `MAIL FROM:<…> REQUIRETLS` outside TLS (RFC 8689 §4.1:
    /// the parameter is only valid inside TLS).
    REQUIRETLS_NEEDS_TLS = 530, "5.7.10", "REQUIRETLS needs a TLS session";
    /// 421 on a `proxy` listener without a good PROXY header.
    PROXY_REQUIRED = 421, "4.7.0", "A PROXY protocol header from a trusted load balancer is required here";
    /// 535 for wrong credentials.
    AUTH_INVALID = 535, "5.7.8", "Authentication credentials invalid";
    /// 538 for AUTH before TLS on an auth listener.
    ENCRYPTION_REQUIRED = 538, "5.7.11", "Encryption required for requested authentication mechanism";
    /// 550 for an unknown local user.
    USER_UNKNOWN = 550, "5.1.1", "Recipient address rejected: user unknown";
    /// 552 for a message over `limit max-message-size`.
    TOO_BIG = 552, "5.3.4", "Message size exceeds fixed limit";
    /// 554 for a recipient no rule allows.
    RELAY_DENIED = 554, "5.7.1", "Relay access denied";
    /// 554 for bare LF or CR (SMTP smuggling defence).
    BARE_NEWLINE = 554, "5.5.2", "Bare LF/CR not allowed";
    /// 554 at end of DATA: more `Received:` headers than `limit max-hops`
    /// (RFC 5321 §6.3), a mail loop.
    TOO_MANY_HOPS = 554, "5.4.6", "Too many hops";
}

impl Reply {
    /// A single-line reply from the table.
    pub const fn fixed(code: u16, esc: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            esc,
            text: Cow::Borrowed(text),
        }
    }

    /// A reply whose text is made at run time (greeting, EHLO, queue id);
    /// several lines make a multi-line reply.
    pub fn dynamic(code: u16, esc: &'static str, lines: &[String]) -> Reply {
        Reply {
            code,
            esc,
            text: Cow::Owned(lines.join("\n")),
        }
    }

    /// `250 2.0.0 Ok: queued as ID`.
    pub fn queued(id: &str) -> Reply {
        Reply::dynamic(250, "2.0.0", &[format!("Ok: queued as {id}")])
    }

    /// True for 2xx and 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Append the wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut s = String::new();
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let _ = write!(s, "{}{}", self.code, sep);
            if !self.esc.is_empty() {
                s.push_str(self.esc);
                s.push(' ');
            }
            s.push_str(line);
            s.push_str("\r\n");
        }
        out.extend_from_slice(s.as_bytes());
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::new();
        self.write_to(&mut v);
        f.write_str(String::from_utf8_lossy(&v).trim_end())
    }
}
