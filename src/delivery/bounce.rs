//! Delivery status notifications (RFC 3464): a `multipart/report;
//! report-type=delivery-status` from `<>` to the original sender, with a
//! human-readable part, the machine-readable status and the original
//! message's headers (`text/rfc822-headers`, so no body is sent back).

use std::io::{BufRead, BufReader};
use std::path::Path;

/// One failed recipient.
pub struct Failure<'a> {
    /// The address.
    pub rcpt: &'a str,
    /// The reply that failed it (`550 5.1.1 ...`).
    pub reply: &'a str,
    /// The host that gave it, or `none`.
    pub relay: &'a str,
}

/// RFC 3463 status from a reply: its enhanced code when it has one,
/// otherwise the class alone.
pub fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    match words.next() {
        Some(esc)
            if esc.split('.').count() == 3 && esc.split('.').all(|p| p.parse::<u16>().is_ok()) =>
        {
            esc.to_string()
        }
        _ if code.starts_with('4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// The headers of the original message, read from its spool body.
fn original_headers(body: &Path) -> String {
    let Ok(f) = crate::spool::open_body(body) else {
        return String::new();
    };
    let mut out = String::new();
    // Bounded: headers end at the first empty line, and we stop at 64 KiB.
    for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if line.is_empty() || out.len() > 64 * 1024 {
            break;
        }
        out.push_str(line);
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
        m.push_str(&format!(
            "<{}>: host {} said: {}\r\n",
            f.rcpt, f.relay, f.reply
        ));
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
        m.push_str(&format!("Status: {}\r\n", status_of(f.reply)));
        if f.relay != "none" && f.relay != "maildir" {
            let host = f.relay.split('[').next().unwrap_or(f.relay);
            m.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        let reply: String = f
            .reply
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
    fn status_codes() {
        assert_eq!(status_of("550 5.1.1 no such user"), "5.1.1");
        assert_eq!(status_of("554 no enhanced code"), "5.0.0");
        assert_eq!(status_of("451 later"), "4.0.0");
        assert_eq!(status_of(""), "5.0.0");
    }

    #[test]
    fn report_structure() {
        let d = tempfile::tempdir().unwrap();
        let body = crate::spool::sample_message(
            d.path(),
            b"Received: x\r\nSubject: hi\r\n\r\nsecret body\r\n",
        );
        let f = [Failure {
            rcpt: "bob@example.org",
            reply: "550 5.1.1 unknown",
            relay: "mx.example.org[192.0.2.1]:25",
        }];
        let m =
            String::from_utf8(build("mx.test", "ID1", "alice@example.com", 0, &f, &body)).unwrap();
        assert!(m.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(m.contains("Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.example.org\r\n"));
        assert!(m.contains("Subject: hi\r\n"));
        assert!(!m.contains("secret body"));
        assert!(m.lines().all(|l| l.len() < 1000));
    }
}
