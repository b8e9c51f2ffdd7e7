//! `match` rules: which action takes a recipient, decided at RCPT time.
//!
//! Rules are tried in order and the first match wins; a recipient no rule
//! matches is refused with 554 5.7.1, so postern is never an open relay by
//! default. A `maildir` action with `users <table>` also refuses local parts
//! it does not know (550 5.1.1) instead of bouncing later.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{CertRule, Config, Delivery, For, From};
use crate::smtp::address::{Mailbox, safe_user, user_part};
use crate::smtp::reply::{self, Reply};
use crate::smtp::server::{Client, Policy};
use crate::tls::client_auth::ClientCert;

/// The policy of one listener: the config's rules and its `auth` table.
pub struct ListenerPolicy {
    cfg: Arc<Config>,
    auth_table: Option<String>,
}

impl ListenerPolicy {
    /// Policy for a listener with the given `auth <table>`.
    pub fn new(cfg: Arc<Config>, auth_table: Option<String>) -> ListenerPolicy {
        ListenerPolicy { cfg, auth_table }
    }

    fn client_key(&self, client: &Client) -> IpAddr {
        crate::net::client_key(client.addr, self.cfg.limits.ipv6_prefix)
    }
}

/// Clients not held to per-address limits (`limit sessions-per-ip`, the
/// AUTH lock-out): local programs (127.0.0.1 and ::1, where they connect
/// from; a webmail opens many sessions and authenticates many users) and
/// the networks of `limit sessions-per-ip-exempt`, as Postfix exempts
/// `$mynetworks` from the limits of its anvil(8).
pub fn per_ip_exempt(cfg: &Config, ip: std::net::IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip == std::net::Ipv4Addr::LOCALHOST
        || ip == std::net::Ipv6Addr::LOCALHOST
        || cfg
            .limits
            .sessions_per_ip_exempt
            .as_ref()
            .and_then(|t| cfg.tables.get(t))
            .is_some_and(|t| t.contains_ip(ip))
}

fn is_local_client(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.is_loopback())
            .unwrap_or(v6.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// Where mail being routed comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin<'a> {
    /// An SMTP client.
    Client {
        /// Its address.
        addr: IpAddr,
        /// It authenticated (AUTH).
        authenticated: bool,
        /// The certificate it presented.
        cert: Option<&'a ClientCert>,
    },
    /// postern itself (bounces): routed as mail from an authenticated
    /// client on 127.0.0.1 (postern(8) says so).
    MailSystem,
}

impl Origin<'_> {
    /// Does the client's certificate satisfy `rule` (RFC 5280 chain to the
    /// listener's `ca`, or a fingerprint in the table)? The mail system
    /// itself has none.
    fn cert_ok(self, cfg: &Config, rule: &CertRule) -> bool {
        let Origin::Client { cert: Some(c), .. } = self else {
            return false;
        };
        match rule {
            CertRule::Verified => c.verified,
            CertRule::Listed(t) => cfg.tables.get(t).is_some_and(|t| {
                t.keys()
                    .any(|k| crate::tls::client_auth::normalize_fingerprint(k) == c.sha256)
            }),
        }
    }

    fn addr(self) -> IpAddr {
        match self {
            Origin::Client { addr, .. } => addr,
            Origin::MailSystem => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }

    fn authenticated(self) -> bool {
        match self {
            Origin::Client { authenticated, .. } => authenticated,
            Origin::MailSystem => true,
        }
    }
}

impl Policy for ListenerPolicy {
    fn check_rcpt(&self, client: &Client, rcpt: &Mailbox) -> Result<String, Reply> {
        let origin = Origin::Client {
            addr: client.addr,
            authenticated: client.auth.is_some(),
            cert: client.cert.as_ref(),
        };
        route(&self.cfg, origin, rcpt)
    }

    fn check_auth(&self, user: &str, password: &[u8]) -> bool {
        let Some(table) = self
            .auth_table
            .as_ref()
            .and_then(|t| self.cfg.tables.get(t))
        else {
            return false;
        };
        match table.get(user) {
            Some(h) => crate::passwd::verify(password, h),
            // An unknown user costs the same hash as a known one (of the
            // table's own scheme and cost), so timing does not tell which
            // users exist.
            None => {
                if let Some(h) = table.keys().next().and_then(|k| table.get(k)) {
                    let _ = crate::passwd::verify(b"\0postern: no such user", h);
                }
                false
            }
        }
    }

    fn auth_failures(&self, client: &Client) -> u32 {
        if per_ip_exempt(&self.cfg, client.addr) {
            return 0;
        }
        crate::net::throttle::auth_failures(self.client_key(client), self.cfg.limits.auth_lockout)
    }

    fn auth_failed(&self, client: &Client) {
        if !per_ip_exempt(&self.cfg, client.addr) {
            crate::net::throttle::auth_failed(
                self.client_key(client),
                self.cfg.limits.auth_lockout,
            );
        }
    }
}

/// Which action takes `rcpt` from `origin`: the first matching rule, or
/// the refusal to send.
pub fn route(cfg: &Config, origin: Origin, rcpt: &Mailbox) -> Result<String, Reply> {
    let domain = if rcpt.domain.is_empty() {
        cfg.hostname.to_ascii_lowercase()
    } else {
        rcpt.domain_lc()
    };
    let is_local_domain = domain == cfg.hostname.to_ascii_lowercase() || domain == "localhost";
    let rule = cfg.rules.iter().find(|r| {
        let from_ok = match &r.from {
            From::Any => true,
            From::Local => is_local_client(origin.addr()),
            From::Src(t) => cfg
                .tables
                .get(t)
                .is_some_and(|t| t.contains_ip(origin.addr())),
        };
        let for_ok = match &r.rcpt {
            For::Any => true,
            For::Local => is_local_domain,
            For::Domain(d) => &domain == d,
            For::DomainTable(t) => cfg.tables.get(t).is_some_and(|t| t.contains(&domain)),
        };
        (!r.auth || origin.authenticated())
            && r.cert.as_ref().is_none_or(|c| origin.cert_ok(cfg, c))
            && from_ok
            && for_ok
    });
    let Some(rule) = rule else {
        return Err(reply::RELAY_DENIED);
    };
    if let Some(Delivery::Maildir { users, alias, .. }) = cfg.actions.get(&rule.action) {
        let user = user_part(rcpt);
        if !safe_user(&user) {
            return Err(reply::BAD_RECIPIENT);
        }
        if let Some(users) = users {
            let full = format!("{user}@{domain}");
            let known = |t: Option<&String>| {
                t.and_then(|t| cfg.tables.get(t))
                    .is_some_and(|t| t.contains(&user) || t.contains(&full))
            };
            if !known(Some(users)) && !known(alias.as_ref()) {
                return Err(reply::USER_UNKNOWN);
            }
        }
    }
    Ok(rule.action.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::parse_mailbox;

    const CONF: &str = r#"
hostname mx.example.com
listen on 127.0.0.1 port 2525
table domains { example.com, example.org }
table locals { postmaster, alice, bob }
table aliases { abuse = alice }
table nets { 192.0.2.0/24 }
action "local" maildir "/var/mail/%{user}" users <locals> alias <aliases>
action "open" maildir "/var/mail/%{user}"
action "out" relay
match from any for domain <domains> action "local"
match from any for domain "anyone.example" action "open"
match auth from any for any action "out"
match from src <nets> for any action "out"
match from local for local action "open"
"#;

    #[test]
    fn an_unknown_user_costs_the_same_hash() {
        // The scheme and cost of a real entry, so the time
        // to answer does not tell whether the user exists.
        const ALICE: &str = "$6$rounds=5000$saltsaltsaltsalt$ph0yGsyjzqdeFaon7.gJZo8eAG5/rj9/JdzOu1Rl7dKzBYg3xgvl7T2VQ2Rt81bc5AXkdA54r0p8QvC1omD6R1";
        let conf = format!("{CONF}table users {{ alice = \"{ALICE}\" }}\n");
        let cfg = Config::parse("t.conf", &conf, std::path::Path::new("/")).unwrap();
        let p = ListenerPolicy::new(Arc::new(cfg), Some("users".into()));
        let hashed = |user: &str| {
            crate::passwd::HASHED.with(|c| c.take());
            assert!(!p.check_auth(user, b"wrong"));
            crate::passwd::HASHED.with(|c| c.take())
        };
        assert_eq!(hashed("alice"), [ALICE]);
        assert_eq!(hashed("mallory"), [ALICE]);
    }

    #[test]
    fn user_part_folds_ascii_only() {
        // Tables fold ASCII; so must %{user}.
        let m = parse_mailbox("\u{212A}IM@example.com").unwrap();
        assert_eq!(user_part(&m), "\u{212A}im");
        assert_eq!(user_part(&parse_mailbox("KIM@example.com").unwrap()), "kim");
    }

    #[test]
    fn bounces_route_as_an_authenticated_local_client() {
        let cfg = Config::parse("t.conf", CONF, std::path::Path::new("/")).unwrap();
        let via = |rcpt: &str| {
            route(&cfg, Origin::MailSystem, &parse_mailbox(rcpt).unwrap()).map_err(|r| r.code)
        };
        assert_eq!(via("alice@example.com").as_deref(), Ok("local"));
        // Remote senders get their bounce through the `auth` relay rule.
        assert_eq!(via("someone@far.example").as_deref(), Ok("out"));
        // An unknown local user is refused as for any client.
        assert_eq!(via("nobody@example.com").map_err(|c| c / 100), Err(5));
        // A client that is not authenticated, not local, not listed: refused.
        let stranger = Origin::Client {
            addr: "198.51.100.1".parse().unwrap(),
            authenticated: false,
            cert: None,
        };
        let m = parse_mailbox("someone@far.example").unwrap();
        assert!(route(&cfg, stranger, &m).is_err());
    }

    /// `match cert <table>` by fingerprint (any case, colons or not),
    /// `match cert` by verification; no certificate falls through.
    #[test]
    fn certificates_relay_when_the_rules_say_so() {
        let fp = "ab".repeat(32);
        let listed = "AB:".repeat(31) + "AB";
        let conf = format!(
            "hostname mx.example.com\nlisten on 127.0.0.1 port 2525\ntable certs {{ {listed} }}\n\
             action \"local\" maildir \"/var/mail/%{{user}}\"\naction \"out\" relay\naction \"hub\" relay\n\
             match from any for domain \"example.com\" action \"local\"\n\
             match cert <certs> from any for any action \"out\"\n\
             match cert from any for domain \"branch.example\" action \"hub\"\n"
        );
        let cfg = Config::parse("t.conf", &conf, std::path::Path::new("/")).unwrap();
        let cert = |sha256: &str, verified| ClientCert {
            sha256: sha256.into(),
            subject: "CN=x".into(),
            verified,
        };
        let (known, other, other_ok) = (
            cert(&fp, false),
            cert(&"cd".repeat(32), false),
            cert(&"cd".repeat(32), true),
        );
        let via = |c: Option<&ClientCert>, rcpt: &str| {
            let origin = Origin::Client {
                addr: "198.51.100.1".parse().unwrap(),
                authenticated: false,
                cert: c,
            };
            route(&cfg, origin, &parse_mailbox(rcpt).unwrap()).map_err(|r| r.code)
        };
        assert_eq!(via(Some(&known), "x@far.example"), Ok("out".into()));
        assert_eq!(via(Some(&other), "x@far.example"), Err(554));
        assert_eq!(via(Some(&other_ok), "x@far.example"), Err(554));
        assert_eq!(via(Some(&other_ok), "x@branch.example"), Ok("hub".into()));
        assert_eq!(via(Some(&other), "x@branch.example"), Err(554));
        assert_eq!(via(None, "x@far.example"), Err(554));
        // The local domain still takes mail without a certificate.
        assert_eq!(via(None, "alice@example.com"), Ok("local".into()));
        // The mail system has no certificate.
        assert_eq!(
            route(
                &cfg,
                Origin::MailSystem,
                &parse_mailbox("x@far.example").unwrap()
            )
            .map_err(|r| r.code),
            Err(554)
        );
    }

    fn policy() -> ListenerPolicy {
        let cfg = Config::parse("t.conf", CONF, std::path::Path::new("/")).unwrap();
        ListenerPolicy::new(Arc::new(cfg), None)
    }

    fn check(ip: &str, auth: bool, rcpt: &str) -> Result<String, Reply> {
        let client = Client {
            addr: ip.parse().unwrap(),
            auth: auth.then(|| "alice".to_string()),
            cert: None,
        };
        policy().check_rcpt(&client, &parse_mailbox(rcpt).unwrap())
    }

    #[test]
    fn local_domains_and_users() {
        assert_eq!(
            check("203.0.113.9", false, "alice@example.com"),
            Ok("local".into())
        );
        assert_eq!(
            check("203.0.113.9", false, "ALICE@Example.ORG"),
            Ok("local".into())
        );
        assert_eq!(
            check("203.0.113.9", false, "abuse@example.com"),
            Ok("local".into())
        );
        assert_eq!(
            check("203.0.113.9", false, "carol@example.com"),
            Err(reply::USER_UNKNOWN)
        );
        assert_eq!(
            check("203.0.113.9", false, "\"Bob\"@example.com"),
            Ok("local".into())
        );
    }

    #[test]
    fn no_open_relay() {
        assert_eq!(
            check("203.0.113.9", false, "x@elsewhere.example"),
            Err(reply::RELAY_DENIED)
        );
        assert_eq!(
            check("203.0.113.9", true, "x@elsewhere.example"),
            Ok("out".into())
        );
        assert_eq!(
            check("192.0.2.77", false, "x@elsewhere.example"),
            Ok("out".into())
        );
    }

    #[test]
    fn first_match_wins_and_for_local() {
        // An authenticated client sending to a local domain still gets local delivery.
        assert_eq!(
            check("203.0.113.9", true, "bob@example.com"),
            Ok("local".into())
        );
        assert_eq!(
            check("127.0.0.1", false, "root@mx.example.com"),
            Ok("open".into())
        );
        assert_eq!(check("127.0.0.1", false, "postmaster"), Ok("open".into()));
        assert_eq!(
            check("203.0.113.9", false, "root@mx.example.com"),
            Err(reply::RELAY_DENIED)
        );
    }

    #[test]
    fn unsafe_user_parts_refused() {
        assert_eq!(
            check("203.0.113.9", false, "\".hidden\"@anyone.example"),
            Err(reply::BAD_RECIPIENT)
        );
        assert_eq!(
            check("203.0.113.9", false, "\"a/b\"@anyone.example"),
            Err(reply::BAD_RECIPIENT)
        );
        assert_eq!(
            check("203.0.113.9", false, "fine@anyone.example"),
            Ok("open".into())
        );
    }
}

#[cfg(test)]
#[test]
fn local_clients_and_listed_networks_are_exempt() {
    let cfg = Config::parse(
        "t.conf",
        "listen on 127.0.0.1\ntable trusted { 192.0.2.0/24, 2001:db8::/32 }\nlimit sessions-per-ip-exempt <trusted>\n",
        std::path::Path::new("/"),
    )
    .unwrap();
    let exempt = |a: &str| per_ip_exempt(&cfg, a.parse().unwrap());
    assert!(exempt("127.0.0.1") && exempt("::1") && exempt("::ffff:127.0.0.1"));
    assert!(exempt("192.0.2.77") && exempt("2001:db8::5"));
    assert!(!exempt("127.0.0.2") && !exempt("198.51.100.1"));
    let plain =
        Config::parse("t.conf", "listen on 127.0.0.1\n", std::path::Path::new("/")).unwrap();
    assert!(!per_ip_exempt(&plain, "192.0.2.77".parse().unwrap()));
    assert!(
        Config::parse(
            "t.conf",
            "listen on 127.0.0.1\nlimit sessions-per-ip-exempt <nope>\n",
            std::path::Path::new("/")
        )
        .unwrap_err()
        .to_string()
        .contains("t.conf:2: limit sessions-per-ip-exempt: no table named 'nope'")
    );
}
