//! Delivery status notifications (RFC 3464): a `multipart/report;
//! report-type=delivery-status` from `<>` to the original sender, with a
//! human-readable part, the machine-readable status and the original
//! message's headers (`text/rfc822-headers`, so no body is sent back).

use std::io::{BufRead, BufReader, Read as _};
use std::path::Path;

use super::outcome::{Relay, Status};
use crate::spool::envelope::{EnvRcpt, Envelope};

/// One failed recipient.
pub struct Failure<'a> {
    /// The address.
    pub rcpt: &'a str,
    /// The status that failed it.
    pub status: &'a Status,
    /// The host that gave it.
    pub relay: &'a Relay,
}

/// The envelope of a bounce: from `<>`, to the original sender, routed
/// to `action`, as if submitted by this host (`hostname`) now.
pub fn envelope(hostname: &str, to: &str, action: String) -> Envelope {
    Envelope {
        arrival: crate::time::unix_now(),
        helo: hostname.to_string(),
        client: "127.0.0.1".into(),
        rcpts: vec![EnvRcpt::pending(to.to_string(), action)],
        ..Envelope::default()
    }
}

/// At most this much of the original header is copied into a DSN.
const HEADERS_MAX: usize = 64 * 1024;
/// Longest line copied (RFC 5322 §2.1.1); longer ones are cut there.
const LINE_MAX: usize = 998;

/// At most this much of the original is read to find its header.
const READ_MAX: u64 = 4 << 20;

/// Read one line into `line`, keeping at most `keep` octets of it (the
/// rest is read past, not stored); false at the end of input.
fn read_line_capped(r: &mut impl BufRead, line: &mut Vec<u8>, keep: usize) -> bool {
    line.clear();
    let mut any = false;
    // Bounded by the input: each pass consumes what fill_buf returned.
    loop {
        let Ok(buf) = r.fill_buf() else { return any };
        if buf.is_empty() {
            return any;
        }
        any = true;
        let (n, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = keep.saturating_sub(line.len());
        line.extend_from_slice(&buf[..n.min(room)]);
        r.consume(n);
        if done {
            return true;
        }
    }
}

/// The headers of the original message, read from its spool body: whole
/// lines, each cut at [`LINE_MAX`] octets, at most [`HEADERS_MAX`] in all,
/// and never more than [`READ_MAX`] read.
fn original_headers(body: &Path) -> String {
    let Ok(f) = crate::spool::open_body(body) else {
        return String::new();
    };
    let mut r = BufReader::new(f.take(READ_MAX));
    let mut out = String::new();
    let mut line = Vec::new();
    // Bounded by the take(): each pass reads at least one byte or ends.
    while read_line_capped(&mut r, &mut line, LINE_MAX + 2) {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(&text[..text.len().min(LINE_MAX)]);
        let text = text.trim_end_matches('\u{fffd}');
        if out.len() + text.len() + 2 > HEADERS_MAX {
            break;
        }
        out.push_str(text);
        out.push_str("\r\n");
    }
    out
}

/// Build the DSN message text.
pub fn build(
    hostname: &str,
    id: &str,
    sender: &str,
    arrival: u64,
    failures: &[Failure],
    body: &Path,
) -> Vec<u8> {
    let now = crate::time::unix_now();
    let boundary = format!("{id}.{now}/{hostname}");
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{sender}>\r\n"));
    m.push_str("Subject: Undelivered Mail Returned to Sender\r\n");
    m.push_str(&format!("Date: {}\r\n", crate::time::rfc5322(now)));
    m.push_str(&format!("Message-ID: <{id}.{now}.bounce@{hostname}>\r\n"));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ));
    m.push_str(&format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         The mail system's replies are below.\r\n\r\n"
    ));
    for f in failures {
        // This part is us-ascii; the reply was made printable when it
        // was read, and anything else becomes `?` here.
        let reply: String = f
            .status
            .to_string()
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        m.push_str(&format!("<{}>: host {} said: {reply}\r\n", f.rcpt, f.relay));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    m.push_str(&format!("X-Postern-Queue-ID: {id}\r\n"));
    m.push_str(&format!(
        "Arrival-Date: {}\r\n",
        crate::time::rfc5322(arrival)
    ));
    for f in failures {
        m.push_str(&format!("\r\nFinal-Recipient: rfc822; {}\r\n", f.rcpt));
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", f.status.enhanced));
        if let Relay::Host { name, .. } = f.relay {
            m.push_str(&format!("Remote-MTA: dns; {name}\r\n"));
        }
        let reply: String = f
            .status
            .to_string()
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        m.push_str(&format!("Diagnostic-Code: smtp; {reply}\r\n"));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    m.push_str(&original_headers(body));
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_structure() {
        let d = tempfile::tempdir().unwrap();
        let body = crate::spool::sample_message(
            d.path(),
            b"Received: x\r\nSubject: hi\r\n\r\nsecret body\r\n",
        );
        let (status, relay) = (
            Status::parse("550 5.1.1 unknown"),
            Relay::Host {
                name: "mx.example.org".into(),
                addr: "192.0.2.1:25".parse().unwrap(),
            },
        );
        let f = [Failure {
            rcpt: "bob@example.org",
            status: &status,
            relay: &relay,
        }];
        let m =
            String::from_utf8(build("mx.test", "ID1", "alice@example.com", 0, &f, &body)).unwrap();
        assert!(m.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(m.contains("Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\n"));
        assert!(m.contains("Subject: hi\r\n"));
        assert!(!m.contains("secret body"));
        assert!(m.lines().all(|l| l.len() < 1000));
    }

    #[test]
    fn copied_headers_are_bounded() {
        // A 900 KB header line, then many ordinary ones.
        let d = tempfile::tempdir().unwrap();
        let mut text = format!("Subject: first\r\nX-Long: {}\r\n", "B".repeat(900_000));
        for i in 0..5000 {
            text.push_str(&format!("X-Filler-{i}: {}\r\n", "c".repeat(40)));
        }
        text.push_str("\r\nbody\r\n");
        let body = crate::spool::sample_message(d.path(), text.as_bytes());
        let status = Status::parse("550 5.1.1 unknown \u{1b}[2J");
        let f = [Failure {
            rcpt: "bob@example.org",
            status: &status,
            relay: &Relay::None,
        }];
        let m = String::from_utf8(build("mx.test", "ID1", "a@example.com", 0, &f, &body)).unwrap();
        assert!(m.len() < 70_000, "DSN of {} bytes", m.len());
        assert!(m.lines().all(|l| l.len() <= 998), "a line over 998 octets");
        assert!(m.contains("Subject: first\r\n"));
        assert!(m.contains(&format!("X-Long: {}\r\n", "B".repeat(990))));
        assert!(!m.contains('\u{1b}'));
    }
}
