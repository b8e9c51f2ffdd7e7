//! Tables: `file:PATH` or inline `{ a, b }` / `{ k = v, ... }`.
//!
//! One table type serves every use (lists of domains, local users, AUTH
//! credentials, aliases, networks, TLS policies); what its values must look
//! like is checked where a directive uses it, so errors name the directive.
//! Keys are compared case-insensitively, as mail administrators expect of
//! domains and local parts.
//!
//! File format: one entry a line, `#` comments; `key value...`, or
//! `key: value, value` (aliases(5) style), or a key alone.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use crate::config::lexer::Token;

/// A table: lower-cased key → (value, line in its file; 0 for inline).
#[derive(Debug, Clone, Default)]
pub struct Table {
    entries: BTreeMap<String, (String, usize)>,
    source: Option<String>,
}

impl Table {
    /// Parse the tokens after `{`, up to the closing `}`.
    pub fn inline(tokens: &[Token]) -> Result<Table, String> {
        let mut t = Table::default();
        let mut items = Vec::new();
        let mut cur: Vec<&str> = Vec::new();
        let mut closed = false;
        for tok in tokens {
            match tok {
                Token::Comma => items.push(std::mem::take(&mut cur)),
                Token::Close => {
                    closed = true;
                    break;
                }
                t => cur.push(
                    t.text()
                        .ok_or_else(|| format!("unexpected '{t}' in table"))?,
                ),
            }
        }
        if !closed {
            return Err("missing '}'".into());
        }
        items.push(cur);
        for item in items.into_iter().filter(|i| !i.is_empty()) {
            match item.as_slice() {
                [k] => t.insert(k, "", 0),
                [k, "=", v] => t.insert(k, v, 0),
                other => {
                    return Err(format!(
                        "bad table entry '{}' (use 'key' or 'key = value')",
                        other.join(" ")
                    ));
                }
            }
        }
        Ok(t)
    }

    /// Read a table file.
    pub fn from_file(path: &Path) -> Result<Table, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut t = Table {
            source: Some(path.display().to_string()),
            ..Table::default()
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (k, v) = match line.split_once(|c: char| c.is_whitespace() || c == ':') {
                Some((k, v)) => (k, v.trim_start_matches(':').trim()),
                None => (line, ""),
            };
            t.insert(k, v, i + 1);
        }
        Ok(t)
    }

    fn insert(&mut self, k: &str, v: &str, line: usize) {
        self.entries
            .insert(k.to_ascii_lowercase(), (v.to_string(), line));
    }

    /// Value for `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .get(&key.to_ascii_lowercase())
            .map(|(v, _)| v.as_str())
    }

    /// True when `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(&key.to_ascii_lowercase())
    }

    /// Every key (lower-cased).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    fn where_(&self, line: usize) -> String {
        match &self.source {
            Some(f) => format!("{f}:{line}"),
            None => "inline entry".to_string(),
        }
    }

    /// Check every value is a crypt(3) hash we can verify (postern.conf(5)
    /// TABLES: plaintext passwords are refused when the table loads).
    pub fn check_credentials(&self) -> Result<(), String> {
        for (user, (hash, line)) in &self.entries {
            if !crate::passwd::is_supported_hash(hash) {
                return Err(format!(
                    "{}: the password of '{user}' is not a supported crypt(3) hash \
                     ($6$, $5$, $2b$, $y$ or $argon2id$; plaintext is refused)",
                    self.where_(*line)
                ));
            }
        }
        Ok(())
    }

    /// Every value read with `parse`, by (lower-cased) key; the error
    /// names the first entry `parse` refuses.
    pub fn parse_values<T>(
        &self,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<BTreeMap<String, T>, String> {
        self.entries
            .iter()
            .map(|(k, (v, line))| match parse(v) {
                Some(t) => Ok((k.clone(), t)),
                // The value is not echoed: in a secrets table it is a password.
                None => Err(format!("{}: '{k}' has a bad {what}", self.where_(*line))),
            })
            .collect()
    }

    /// Check every key is an address or CIDR network.
    pub fn check_networks(&self) -> Result<(), String> {
        for (k, (_, line)) in &self.entries {
            if parse_net(k).is_none() {
                return Err(format!(
                    "{}: '{k}' is not an address or CIDR network",
                    self.where_(*line)
                ));
            }
        }
        Ok(())
    }

    /// True when `ip` is one of the table's addresses or networks.
    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.entries
            .keys()
            .filter_map(|k| parse_net(k))
            .any(|(net, bits)| in_net(ip, net, bits))
    }
}

/// IPv4-mapped IPv6 clients are matched as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_net(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::lexer::lex;

    fn inline(s: &str) -> Result<Table, String> {
        let l = lex("t", s).unwrap();
        Table::inline(&l[0].tokens[1..])
    }

    #[test]
    fn inline_lists_and_maps() {
        let t = inline("{ Example.com, b.example }").unwrap();
        assert!(t.contains("example.COM"));
        assert!(!t.contains("c.example"));
        let t = inline("{ abuse = root, postmaster = alice }").unwrap();
        assert_eq!(t.get("POSTMASTER"), Some("alice"));
        assert!(inline("{ a b }").unwrap_err().contains("bad table entry"));
        let l = lex("t", "{ a, b").unwrap_err();
        assert!(l.to_string().contains("unterminated"), "{l}");
    }

    #[test]
    fn file_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "# c\nalice $6$x$y\nabuse: alice, bob\nlonely\n").unwrap();
        let t = Table::from_file(&p).unwrap();
        assert_eq!(t.get("alice"), Some("$6$x$y"));
        assert_eq!(t.get("abuse"), Some("alice, bob"));
        assert_eq!(t.get("lonely"), Some(""));
        assert!(
            Table::from_file(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot read")
        );
    }

    #[test]
    fn credentials_refuse_plaintext_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("users");
        std::fs::write(
            &p,
            "alice $2b$12$abcdefghijklmnopqrstuuq0123456789012345678901234567890\nbob secret\n",
        )
        .unwrap();
        let e = Table::from_file(&p)
            .unwrap()
            .check_credentials()
            .unwrap_err();
        assert!(e.contains(&format!("{}:2", p.display())), "{e}");
        assert!(e.contains("'bob'"), "{e}");
    }

    #[test]
    fn networks() {
        let t = inline("{ 127.0.0.0/8, 192.0.2.1, ::1, 2001:db8::/32 }").unwrap();
        t.check_networks().unwrap();
        assert!(t.contains_ip("127.1.2.3".parse().unwrap()));
        assert!(t.contains_ip("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.contains_ip("192.0.2.1".parse().unwrap()));
        assert!(!t.contains_ip("192.0.2.2".parse().unwrap()));
        assert!(t.contains_ip("2001:db8::5".parse().unwrap()));
        assert!(!t.contains_ip("2001:db9::5".parse().unwrap()));
        assert!(inline("{ 10.0.0.0/33 }").unwrap().check_networks().is_err());
        assert!(inline("{ example.com }").unwrap().check_networks().is_err());
        let all = inline("{ 0.0.0.0/0 }").unwrap();
        assert!(all.contains_ip("198.51.100.7".parse().unwrap()));
    }
}
