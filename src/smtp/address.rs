//! RFC 5321 §4.1.2 paths: `<local@domain>`, `<>`, address literals and
//! quoted local parts.
//!
//! Written by hand because the address crates on crates.io drop quoting or
//! refuse address literals. Source routes (`<@a,@b:user@c>`) are accepted and
//! ignored, as RFC 5321 §4.1.2 asks. UTF-8 in local parts and domains is let
//! through (RFC 6531) so that such mail is refused by policy, not by syntax.

/// A mailbox: local part and domain, as the client wrote them (quoting kept).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// Local part, with any quotes the client used.
    pub local: String,
    /// Domain or address literal (`[192.0.2.1]`); empty for `<postmaster>`.
    pub domain: String,
}

impl Mailbox {
    /// Domain lower-cased, for rule matching.
    pub fn domain_lc(&self) -> String {
        self.domain.to_ascii_lowercase()
    }
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// Longest path RFC 5321 §4.5.3.1.3 allows, brackets included.
const MAX_PATH: usize = 256;

/// Parse `<...>` at the start of `s`; returns the mailbox (None for `<>`) and
/// the rest of the line after `>`.
pub fn parse_path(s: &str) -> Option<(Option<Mailbox>, &str)> {
    let s = s.strip_prefix('<')?;
    let end = find_close(s)?;
    let (inner, rest) = (&s[..end], &s[end + 1..]);
    if inner.len() + 2 > MAX_PATH {
        return None;
    }
    if inner.is_empty() {
        return Some((None, rest));
    }
    let inner = strip_source_route(inner)?;
    Some((Some(parse_mailbox(inner)?), rest))
}

/// Index of the `>` closing the path, skipping quoted strings.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn strip_source_route(s: &str) -> Option<&str> {
    if !s.starts_with('@') {
        return Some(s);
    }
    let colon = s.find(':')?;
    for hop in s[..colon].split(',') {
        if !is_domain(hop.strip_prefix('@')?) {
            return None;
        }
    }
    Some(&s[colon + 1..])
}

/// Parse `local@domain`, or a bare `postmaster` (RFC 5321 §4.1.1.3).
pub fn parse_mailbox(s: &str) -> Option<Mailbox> {
    if s.eq_ignore_ascii_case("postmaster") {
        return Some(Mailbox {
            local: s.to_string(),
            domain: String::new(),
        });
    }
    let at = split_at(s)?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.len() > 64 || !(is_dot_string(local) || is_quoted_string(local)) {
        return None;
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return None;
    }
    Some(Mailbox {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

/// Position of the `@` between local part and domain: the last one outside quotes.
fn split_at(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut quoted = false;
    let mut at = None;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'@' if !quoted => at = Some(i),
            _ => {}
        }
        i += 1;
    }
    at
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.chars().all(is_atext))
}

fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(' '..='~') => {}
                _ => return false,
            },
            '"' => return false,
            ' '..='~' => {}
            c if !c.is_ascii() => {}
            _ => return false,
        }
    }
    true
}

/// RFC 5321 Domain: dot-separated labels of letters, digits and inner hyphens.
pub fn is_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// An RFC 5321 §4.1.3 IPv4 or `IPv6:` address literal, brackets included.
pub fn is_address_literal(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner.strip_prefix("IPv6:") {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    inner.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Whether a `%{user}` value is safe as a path component: no `/`, no
/// leading `.` (which could climb out of the Maildir root), not empty.
pub fn safe_user(user: &str) -> bool {
    !user.is_empty() && !user.contains('/') && !user.starts_with('.')
}

/// The local part as `%{user}` would see it: unquoted and lower-cased.
pub fn user_part(m: &Mailbox) -> String {
    let l = m
        .local
        .strip_prefix('"')
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or(&m.local);
    // ASCII only, as tables fold case: Unicode rules would send the
    // Kelvin sign's "\u{212A}im" to kim.
    l.replace('\\', "").to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Option<Mailbox> {
        parse_path(s).and_then(|(m, _)| m)
    }

    #[test]
    fn plain_addresses() {
        let m = mb("<alice@example.com>").unwrap();
        assert_eq!(
            (m.local.as_str(), m.domain.as_str()),
            ("alice", "example.com")
        );
        assert_eq!(
            mb("<a.b+c@sub.example.org>").unwrap().to_string(),
            "a.b+c@sub.example.org"
        );
    }

    #[test]
    fn null_path_and_rest() {
        let (m, rest) = parse_path("<> SIZE=10").unwrap();
        assert!(m.is_none());
        assert_eq!(rest, " SIZE=10");
    }

    #[test]
    fn literals_and_quotes_survive() {
        assert_eq!(mb("<user@[192.0.2.1]>").unwrap().domain, "[192.0.2.1]");
        assert_eq!(mb("<user@[IPv6:::1]>").unwrap().domain, "[IPv6:::1]");
        let q = mb("<\"quoted local\"@x.example>").unwrap();
        assert_eq!(q.local, "\"quoted local\"");
        assert_eq!(mb("<\"a>b\"@x.example>").unwrap().local, "\"a>b\"");
    }

    #[test]
    fn postmaster_without_domain() {
        let m = mb("<Postmaster>").unwrap();
        assert_eq!(m.domain, "");
    }

    #[test]
    fn source_route_ignored() {
        assert_eq!(
            mb("<@a.example,@b.example:u@c.example>").unwrap().domain,
            "c.example"
        );
    }

    #[test]
    fn rejects_bad_paths() {
        for bad in [
            "alice@example.com",
            "<alice@example.com",
            "<alice>",
            "<@example.com>",
            "<alice@>",
            "<alice@-bad-.example>",
            "<alice@exa mple.com>",
            "<a..b@example.com>",
            "<.a@example.com>",
            "<user@[300.1.1.1]>",
            "<\"unterminated@x.example>",
        ] {
            assert!(mb(bad).is_none(), "accepted {bad}");
        }
        let long = format!("<{}@example.com>", "a".repeat(65));
        assert!(mb(&long).is_none());
        let long_domain = format!("<a@{}.example>", "b".repeat(260));
        assert!(mb(&long_domain).is_none());
    }
}
