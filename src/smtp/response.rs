//! Replies as a client reads them (RFC 5321 §4.2): `DDD-text` lines up to a
//! `DDD text` line, with the same code on every line.
//!
//! Bounded against hostile servers: a line over [`MAX_LINE`] octets or a
//! reply over [`MAX_LINES`] lines is an error, not a memory sink.

/// Longest reply line accepted, CRLF included.
pub const MAX_LINE: usize = 2048;
/// Most lines in one reply.
pub const MAX_LINES: usize = 128;

/// A server's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Reply code.
    pub code: u16,
    /// Text of each line, without code and separator.
    pub lines: Vec<String>,
}

impl Response {
    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx.
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// The reply on one line, for logs and DSNs: `250 2.0.0 Ok`.
    pub fn one_line(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
}

/// A remote server's text made safe for every place it goes (logs,
/// `posternctl show queue`, DSNs): control characters (C0, DEL, C1; ESC
/// and bare CR among them) become `?`, as Postfix's printable() does, so
/// no server can move a terminal's cursor or split a line.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Try to parse one reply from the front of `buf`: `Ok(None)` when more
/// bytes are needed, otherwise the reply and how many bytes it used.
pub fn parse(buf: &[u8]) -> Result<Option<(Response, usize)>, String> {
    let mut pos = 0;
    let mut lines = Vec::new();
    let mut code = None;
    loop {
        let Some(lf) = buf[pos..].iter().position(|&b| b == b'\n') else {
            if buf.len() - pos > MAX_LINE {
                return Err(format!("reply line longer than {MAX_LINE} octets"));
            }
            return Ok(None);
        };
        let raw = &buf[pos..pos + lf + 1];
        if raw.len() > MAX_LINE {
            return Err(format!("reply line longer than {MAX_LINE} octets"));
        }
        pos += lf + 1;
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        let digits = text
            .get(..3)
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()));
        let Some(c) = digits
            .and_then(|d| d.parse::<u16>().ok())
            .filter(|c| (200..600).contains(c))
        else {
            return Err(format!(
                "malformed reply line: {:?}",
                text.chars().take(80).collect::<String>()
            ));
        };
        if code.is_some_and(|prev| prev != c) {
            return Err(format!(
                "reply lines with different codes ({} then {c})",
                code.unwrap_or(0)
            ));
        }
        code = Some(c);
        let sep = text.as_bytes().get(3).copied();
        lines.push(printable(text.get(4..).unwrap_or("")));
        match sep {
            Some(b'-') => {
                if lines.len() >= MAX_LINES {
                    return Err(format!("reply of more than {MAX_LINES} lines"));
                }
            }
            Some(b' ') | None => return Ok(Some((Response { code: c, lines }, pos))),
            Some(_) => return Err(format!("malformed reply line: {text:?}")),
        }
    }
}

/// What an EHLO reply offers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// STARTTLS.
    pub starttls: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// SIZE, with its limit (0: none given).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eight_bit: bool,
    /// AUTH mechanisms, upper-cased.
    pub auth: Vec<String>,
    /// REQUIRETLS (RFC 8689 §4.1).
    pub requiretls: bool,
}

impl Capabilities {
    /// Read the capability lines of an EHLO reply (the first line is the
    /// greeting and is skipped).
    pub fn from_ehlo(r: &Response) -> Capabilities {
        let mut c = Capabilities::default();
        for line in r.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => c.starttls = true,
                "PIPELINING" => c.pipelining = true,
                "8BITMIME" => c.eight_bit = true,
                "REQUIRETLS" => c.requiretls = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "AUTH" => c.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_leave_the_parser() {
        // MIME injection through bare CR, terminal escapes,
        // NUL, and the C1 CSI.
        let wire = b"550 5.1.1 no such user\r--B\rContent-Type: text/html\x1b[31mRED\x1b[0m\x00NUL\x07\xc2\x9b2J\r\n";
        let (r, _) = parse(wire).unwrap().unwrap();
        assert_eq!(
            r.one_line(),
            "550 5.1.1 no such user?--B?Content-Type: text/html?[31mRED?[0m?NUL??2J"
        );
        assert!(!r.one_line().chars().any(char::is_control));
    }

    #[test]
    fn single_and_multi_line() {
        let (r, n) = parse(b"220 mx ESMTP\r\nrest").unwrap().unwrap();
        assert_eq!(
            (r.code, r.lines.clone(), n),
            (220, vec!["mx ESMTP".to_string()], 14)
        );
        let ehlo = b"250-me\r\n250-8BITMIME\r\n250-SIZE 42\r\n250-STARTTLS\r\n250-PIPELINING\r\n250-REQUIRETLS\r\n250 AUTH PLAIN LOGIN\r\n";
        let (r, n) = parse(ehlo).unwrap().unwrap();
        assert_eq!(n, ehlo.len());
        let caps = Capabilities::from_ehlo(&r);
        assert_eq!(
            caps,
            Capabilities {
                starttls: true,
                pipelining: true,
                size: Some(42),
                eight_bit: true,
                auth: vec!["PLAIN".into(), "LOGIN".into()],
                requiretls: true,
            }
        );
        assert_eq!(
            r.one_line(),
            "250 me / 8BITMIME / SIZE 42 / STARTTLS / PIPELINING / REQUIRETLS / AUTH PLAIN LOGIN"
        );
    }

    #[test]
    fn needs_more() {
        assert_eq!(parse(b"250-a\r\n250 b").unwrap(), None);
        assert_eq!(parse(b"").unwrap(), None);
        // A bare code line ends the reply too.
        assert_eq!(parse(b"250\r\n").unwrap().unwrap().0.code, 250);
    }

    #[test]
    fn hostile_replies() {
        assert!(parse(b"hello\r\n").is_err());
        assert!(parse(b"999 x\r\n").is_err());
        assert!(parse(b"250-a\r\n451 b\r\n").is_err());
        assert!(parse(b"250x\r\n").is_err());
        assert!(parse(&vec![b'2'; MAX_LINE + 10]).is_err());
        let flood: Vec<u8> = (0..600).flat_map(|_| b"250-flood\r\n".to_vec()).collect();
        assert!(parse(&flood).unwrap_err().contains("more than"));
    }

    #[test]
    fn classes() {
        let r = |code| Response {
            code,
            lines: vec![],
        };
        assert!(
            r(250).is_ok()
                && r(354).is_intermediate()
                && r(451).is_transient()
                && r(550).is_permanent()
        );
    }
}
