//! Config parsing and validation, and the man page's completeness.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse("t.conf", text, Path::new("/base"))
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn defaults_parse() {
    for (name, _, default) in LIMITS {
        let mut l = default_limits();
        assert_eq!(
            set_limit(&mut l, name, default),
            Ok(()),
            "{name} default {default}"
        );
    }
    let l = default_limits();
    assert_eq!(l.max_message_size, 35 << 20);
    assert_eq!(l.command_timeout, Duration::from_secs(300));
    assert_eq!(l.max_errors, 20);
    assert_eq!(l.sessions_per_ip, 20);
    assert_eq!(l.spare_files, 512);
}

#[test]
fn zero_is_a_setting_only_where_it_means_something() {
    let mut l = default_limits();
    assert_eq!(set_limit(&mut l, "spare-files", "0"), Ok(()));
    assert_eq!(l.spare_files, 0);
    assert_eq!(l.queue_sync, crate::spool::Durability::Log);
    assert!(!l.queue_sync_set);
    assert_eq!(set_limit(&mut l, "queue-sync", "file"), Ok(()));
    assert_eq!(l.queue_sync, crate::spool::Durability::File);
    assert!(l.queue_sync_set);
    assert_eq!(set_limit(&mut l, "queue-sync", "filesystem"), Ok(()));
    assert_eq!(l.queue_sync, crate::spool::Durability::Filesystem);
    assert_eq!(set_limit(&mut l, "queue-sync", "log"), Ok(()));
    assert_eq!(l.queue_sync, crate::spool::Durability::Log);
    assert!(
        set_limit(&mut l, "queue-sync", "fsync")
            .unwrap_err()
            .contains("expected log, file or filesystem, got 'fsync'")
    );
    assert_eq!(set_limit(&mut l, "delivery-workers", "0"), Ok(()));
    assert_eq!(l.delivery_workers, 0);
    assert!(
        set_limit(&mut l, "workers", "0")
            .unwrap_err()
            .contains("expected a positive number")
    );
    assert!(set_limit(&mut l, "spare-files", "-1").is_err());
    // queue-minfree: 0 turns the floor off; auto follows max-message-size.
    set_limit(&mut l, "max-message-size", "10M").unwrap();
    set_limit(&mut l, "queue-minfree", "auto").unwrap();
    assert_eq!(l.queue_minfree(), 15 << 20);
    set_limit(&mut l, "queue-minfree", "0").unwrap();
    assert_eq!(l.queue_minfree(), 0);
    set_limit(&mut l, "queue-minfree", "1G").unwrap();
    assert_eq!(l.queue_minfree(), 1 << 30);
    assert!(set_limit(&mut l, "queue-minfree", "lots").is_err());
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("35M"), Some(35 << 20));
    assert_eq!(parse_size("512k"), Some(512 << 10));
    assert_eq!(parse_size("100"), Some(100));
    assert_eq!(parse_size("0"), None);
    assert_eq!(parse_size("M"), None);
    assert_eq!(parse_size("99999999999G"), None);
    assert_eq!(parse_duration("100ms"), Some(Duration::from_millis(100)));
    assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
    assert_eq!(parse_duration("4d"), Some(Duration::from_secs(4 * 86400)));
    assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("1w"), None);
    assert_eq!(parse_duration(""), None);
}

#[test]
fn listeners() {
    let c = parse(
        "listen on localhost port 2525\nlisten on ::\nlisten on 0.0.0.0 hostname smtp.test\n",
    )
    .unwrap();
    let addrs: Vec<String> = c.listeners.iter().map(|l| l.addr.to_string()).collect();
    assert_eq!(
        addrs,
        ["127.0.0.1:2525", "[::1]:2525", "[::]:25", "0.0.0.0:25"].map(String::from)
    );
    assert_eq!(c.listeners[3].hostname.as_deref(), Some("smtp.test"));
    assert!(err("listen on 127.0.0.1 tls smtps\n").contains("only one of"));
    assert!(err("listen on example.com\n").contains("'example.com' is not an IP address"));
    assert!(err("listen at 127.0.0.1\n").contains("expected 'on'"));
    assert!(err("listen on 127.0.0.1 auth users\n").contains("expected <table> after auth"));
}

/// A temporary directory holding `ca.pem`, a self-signed certificate, and
/// its key.
fn ca_dir() -> (tempfile::TempDir, rcgen::KeyPair) {
    let base = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertificateParams::new(vec!["ca.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(base.path().join("ca.pem"), ca.pem()).unwrap();
    (base, key)
}

#[test]
fn actions_and_rules() {
    // A real CA file, named relative to the configuration's directory.
    let (base, _) = ca_dir();
    let c = Config::parse(
        "t.conf",
        "listen on 127.0.0.1\ntable d { a.example }\ntable n { 10.0.0.0/8 }\n\
         action \"loc\" maildir \"/m/%{user}\"\naction out relay host smtp+tls://relay.example:587 tls verify port 2525 ca \"ca.pem\"\n\
         match auth from src <n> for domain <d> action \"loc\"\nmatch from local for domain \"B.example\" action out\n",
        base.path(),
    )
    .unwrap();
    assert!(c.rules[0].auth);
    assert_eq!(c.rules[0].from, From::Src("n".into()));
    assert_eq!(c.rules[1].rcpt, For::Domain("b.example".into()));
    let Some(Delivery::Relay(r)) = c.actions.get("out") else {
        panic!("relay")
    };
    let host = r.host.as_ref().expect("smarthost");
    assert_eq!(
        (host.scheme, host.host.as_str(), host.port),
        (Scheme::SmtpTls, "relay.example", Some(587))
    );
    assert_eq!((r.tls, r.port), (TlsPolicy::Verify, Some(2525)));
    let ca = r.ca.as_ref().expect("ca");
    assert_eq!(ca.path, base.path().join("ca.pem"));
    assert!(
        !ca.certs.is_empty(),
        "the CA file is read with the configuration"
    );
    assert!(
        err("listen on 127.0.0.1\naction a maildir \"rel/path\"\n")
            .contains("t.conf:2: action a: maildir path must be absolute")
    );
    assert!(
        err("listen on 127.0.0.1\naction a relay host http://x\n")
            .contains("relay host must be smtp://")
    );
    assert!(
        err("listen on 127.0.0.1\naction a relay tls maybe\n")
            .contains("tls must be none, may, encrypt, verify, dane or dane-only")
    );
    assert!(
        err("listen on 127.0.0.1\naction a relay\naction a relay\n")
            .contains("t.conf:3: action a is defined twice")
    );
    assert!(
        err("listen on 127.0.0.1\naction a relay\nmatch from src <x> for any action a\n")
            .contains("t.conf:3: match: no table named 'x'")
    );
    assert!(
        err("listen on 127.0.0.1\naction a maildir \"/m\" users <x>\n")
            .contains("action a: no table named 'x'")
    );
    assert!(
        err("listen on 127.0.0.1\naction a relay\nmatch from there for any action a\n")
            .contains("t.conf:3: match: expected")
    );
    assert!(err("listen on 127.0.0.1\ntable n { nonsense }\naction a relay\nmatch from src <n> for any action a\n").contains("'nonsense' is not an address"));
    // Credentials only to a verified relay unless opted out.
    assert!(
        err("listen on 127.0.0.1\ntable s { h = \"u:p\" }\naction a relay host smtp://h auth <s> tls none\n")
            .contains("t.conf:3: action a: 'auth' with 'tls none' would send the password in the clear")
    );
    for (given, want) in [
        ("", TlsPolicy::Verify),
        ("tls may", TlsPolicy::Verify),
        ("tls encrypt", TlsPolicy::Encrypt),
    ] {
        let c = parse(&format!(
            "listen on 127.0.0.1\ntable s {{ h = \"u:p\" }}\naction a relay host smtp+tls://h auth <s> {given}\n"
        ))
        .unwrap();
        let Some(Delivery::Relay(r)) = c.actions.get("a") else {
            panic!("not a relay")
        };
        assert_eq!(r.tls, want, "{given}");
        let secret = r.auth.as_ref().and_then(|s| s.by_host.get("h"));
        assert_eq!(
            secret.map(|s| (s.user.as_str(), s.pass.as_str())),
            Some(("u", "p"))
        );
        assert!(
            !format!("{r:?}").contains("\"p\""),
            "the password never shows: {r:?}"
        );
    }
}

#[test]
fn metrics_endpoint() {
    let c = parse("listen on 127.0.0.1\nmetrics on 127.0.0.1 port 9125\n").unwrap();
    assert_eq!(c.metrics, Some("127.0.0.1:9125".parse().unwrap()));
    assert!(
        err("listen on 127.0.0.1\nmetrics on localhost port 9125\n")
            .contains("t.conf:2: metrics on: 'localhost' is not an IP address")
    );
    assert!(err("listen on 127.0.0.1\nmetrics on 127.0.0.1 port x\n").contains("bad port 'x'"));
}

#[test]
fn proxy_listeners() {
    let c = parse(
        "table lbs { 10.0.0.0/24 }\nlisten on 127.0.0.1 proxy\nlisten on 127.0.0.1 port 26 proxy from <lbs>\n",
    )
    .unwrap();
    assert_eq!(c.listeners[0].proxy, Some(ProxyFrom::Any));
    assert_eq!(c.listeners[1].proxy, Some(ProxyFrom::Table("lbs".into())));
    assert!(
        err("listen on 127.0.0.1 proxy from <none>\n")
            .contains("t.conf:1: listen on: proxy from: no table named 'none'")
    );
    assert!(
        err("table lbs { mx.example }\nlisten on 127.0.0.1 proxy from <lbs>\n")
            .contains("listen on: proxy from <lbs>:")
    );
}

/// `ca FILE ask-cert|verify-cert` on TLS listeners, `match cert [<t>]`,
/// and fingerprint tables checked when read.
#[test]
fn client_certificates() {
    let (base, key) = ca_dir();
    std::fs::write(base.path().join("key.pem"), key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        base.path().join("key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let pki = "pki p cert \"ca.pem\"\npki p key \"key.pem\"\n";
    let fp = "AB:".repeat(31) + "AB";
    let text = format!(
        "{pki}listen on 127.0.0.1 tls pki p ca \"ca.pem\" ask-cert\nlisten on 127.0.0.1 port 2525 tls-require pki p ca \"ca.pem\" verify-cert\n\
         table certs {{ {fp} }}\naction out relay\n\
         match cert <certs> from any for any action out\nmatch auth cert from any for any action out\n"
    );
    let c = Config::parse("t.conf", &text, base.path()).unwrap();
    let cas: Vec<Option<bool>> = c
        .listeners
        .iter()
        .map(|l| l.client_ca.as_ref().map(|ca| ca.require))
        .collect();
    assert_eq!(cas, vec![Some(false), Some(true)]);
    assert_eq!(c.rules[0].cert, Some(CertRule::Listed("certs".into())));
    assert_eq!(
        (c.rules[1].auth, c.rules[1].cert.clone()),
        (true, Some(CertRule::Verified))
    );
    let bad = |text: &str| {
        Config::parse("t.conf", text, base.path())
            .unwrap_err()
            .to_string()
    };
    assert!(
        bad("listen on 127.0.0.1 ca \"ca.pem\" ask-cert\n").contains(
            "client certificates (ca FILE ask-cert|verify-cert) need tls, tls-require or smtps"
        )
    );
    assert!(
        bad(&format!(
            "{pki}listen on 127.0.0.1 tls pki p ca \"ca.pem\" maybe\n"
        ))
        .contains("ca FILE must be followed by ask-cert or verify-cert, got 'maybe'")
    );
    assert!(
        bad(&format!(
            "{pki}listen on 127.0.0.1 tls pki p ca \"none.pem\" ask-cert\n"
        ))
        .contains("none.pem")
    );
    assert!(
        bad("listen on 127.0.0.1\ntable certs { nothex }\naction out relay\nmatch cert <certs> from any for any action out\n")
            .contains("match cert <certs>: 'nothex' is not a SHA-256 certificate fingerprint")
    );
}

/// DANE is the default for MX delivery, never for a smarthost; the
/// tls-policy table takes the same words.
#[test]
fn tls_policy_defaults_and_dane_words() {
    let relay = |text: &str| {
        let c = parse(&format!("listen on 127.0.0.1\n{text}")).unwrap();
        let Some(Delivery::Relay(r)) = c.actions.get("a") else {
            panic!("not a relay")
        };
        r.clone()
    };
    for (given, want) in [
        ("action a relay\n", TlsPolicy::Dane),
        ("action a relay tls dane-only\n", TlsPolicy::DaneOnly),
        ("action a relay tls may\n", TlsPolicy::May),
        ("action a relay tls verify\n", TlsPolicy::Verify),
        ("action a relay host smtp://h\n", TlsPolicy::May),
    ] {
        assert_eq!(relay(given).tls, want, "{given}");
    }
    let r = relay(
        "table p { bank.example = dane-only, broken.example = may, x.example = dane }\n\
         action a relay tls-policy <p>\n",
    );
    assert_eq!(r.policy_for("BANK.example"), TlsPolicy::DaneOnly);
    assert_eq!(r.policy_for("broken.example"), TlsPolicy::May);
    assert_eq!(r.policy_for("x.example"), TlsPolicy::Dane);
    assert_eq!(r.policy_for("other.example"), TlsPolicy::Dane);
    assert!(
        err("listen on 127.0.0.1\naction a relay host smtp://h tls dane\n")
            .contains("t.conf:2: action a: tls dane applies to MX delivery only; for a smarthost ('host') use tls verify")
    );
    assert!(relay("action a relay\n").mta_sts);
    assert!(!relay("action a relay mta-sts off\n").mta_sts);
    assert!(
        err("listen on 127.0.0.1\naction a relay mta-sts maybe\n")
            .contains("t.conf:2: action a: mta-sts must be on or off, got 'maybe'")
    );
    assert_eq!(parse("listen on 127.0.0.1\n").unwrap().mta_sts_port, 443);
    assert_eq!(
        parse("listen on 127.0.0.1\nmta-sts port 8443\n")
            .unwrap()
            .mta_sts_port,
        8443
    );
    assert!(
        err("listen on 127.0.0.1\nmta-sts port 0\n")
            .contains("t.conf:2: mta-sts port: bad port '0'")
    );
    assert!(
        err("listen on 127.0.0.1\naction a relay tls daneish\n")
            .contains("tls must be none, may, encrypt, verify, dane or dane-only, got 'daneish'")
    );
}

#[test]
fn globals() {
    let c = parse("hostname mx.example\nqueue spool\nbounce-after 2d\nlisten on 127.0.0.1\nlimit max-message-size 1M\n").unwrap();
    assert_eq!(c.hostname, "mx.example");
    assert_eq!(c.queue, Path::new("/base/spool"));
    assert_eq!(c.bounce_after, Duration::from_secs(2 * 86400));
    assert_eq!(c.limits.max_message_size, 1 << 20);
    assert!(
        err("hostname bad_host!\nlisten on 127.0.0.1\n")
            .contains("t.conf:1: hostname: 'bad_host!' is not a valid host name")
    );
    assert!(err("hostname a b\nlisten on 127.0.0.1\n").contains("t.conf:1: unexpected 'b'"));
    assert!(
        err("user nosuchuser-postern\nlisten on 127.0.0.1\n")
            .contains("t.conf:1: user: no such user")
    );
    assert!(
        err("pki x cert \"/c\"\nlisten on 127.0.0.1\n")
            .contains("t.conf:1: pki x: both 'cert' and 'key' are needed")
    );
    assert!(err("pki x chain \"/c\"\n").contains("expected 'cert' or 'key'"));
    assert!(err("table t { a }\ntable t { b }\n").contains("t.conf:2: table t is defined twice"));
}

#[test]
fn every_keyword_and_limit_is_in_the_man_page() {
    let man = include_str!("../../man/postern.conf.5");
    for kw in KEYWORDS {
        assert!(
            man.contains(&format!("Ic {kw}")),
            "postern.conf.5 does not document '{kw}'"
        );
    }
    for (name, _, _) in LIMITS {
        assert!(
            man.contains(&format!("Ic limit {name}")),
            "postern.conf.5 does not document 'limit {name}'"
        );
    }
}

#[test]
fn every_independent_error_in_one_run_in_file_order() {
    // The installed sample took four runs to learn of four
    // problems, reported out of order.
    let e = err("user nosuchuser-postern\n\
         pki mx cert \"/nonexistent/cert.pem\"\n\
         pki mx key \"/nonexistent/key.pem\"\n\
         table users file:/nonexistent/users\n\
         table aliases file:/nonexistent/aliases\n\
         listen on 127.0.0.1 tls pki mx auth <users>\n\
         action \"local\" maildir \"/m/%{user}\" alias <aliases>\n\
         action \"out\" relay host smtp+tls://relay.example:99999 ca \"/nonexistent/ca.pem\"\n\
         match from any for local action \"local\"\n");
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 5, "{e}");
    for (i, want) in [
        "t.conf:1: user: no such user 'nosuchuser-postern'",
        "t.conf:2:",
        "t.conf:4: table users: cannot read /nonexistent/users",
        "t.conf:5: table aliases: cannot read /nonexistent/aliases",
        "t.conf:8: action out: relay host 'smtp+tls://relay.example:99999': bad port '99999'",
    ]
    .iter()
    .enumerate()
    {
        assert!(lines.iter().any(|l| l.starts_with(want)), "{want}: {e}");
        let _ = i;
    }
    // No cascade: the listener's <users> and the action's <aliases> failed
    // on their own lines and are not reported missing again.
    assert!(!e.contains("no table named"), "{e}");
    let sorted = {
        let mut v: Vec<usize> = lines
            .iter()
            .map(|l| l.split(':').nth(1).unwrap().parse().unwrap())
            .collect();
        let orig = v.clone();
        v.sort();
        v == orig
    };
    assert!(sorted, "not in file order: {e}");
}

#[test]
fn smarthost_urls_and_ca_files_are_checked() {
    for (url, want) in [
        ("smtp://:25", "names no host"),
        ("smtp://relay.example:0", "bad port '0'"),
        ("smtp://relay.example:x", "bad port 'x'"),
        ("smtps://[2001:db8::1", "no ']'"),
        ("smtp://[nonsense]:25", "is not an IPv6 address"),
        ("smtp://bad_host!:25", "is not a host name or address"),
        ("http://relay.example", "must be smtp://"),
    ] {
        assert!(
            err(&format!("listen on 127.0.0.1\naction a relay host {url}\n")).contains(want),
            "{url}"
        );
    }
    for (url, host, port) in [
        ("smtp://relay.example", "relay.example", None),
        (
            "smtp+tls://relay.example:2525/",
            "relay.example",
            Some(2525),
        ),
        ("smtps://[2001:db8::1]:465", "2001:db8::1", Some(465)),
        ("smtp://192.0.2.1", "192.0.2.1", None),
    ] {
        let s = Smarthost::parse(url).unwrap();
        assert_eq!((s.host.as_str(), s.port), (host, port), "{url}");
    }
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(
        err(&format!(
            "listen on 127.0.0.1\naction a relay tls verify ca \"{}\"\n",
            empty.display()
        ))
        .contains("t.conf:2: action a: no certificate in CA file")
    );
}

#[test]
fn resolvers_are_trusted_on_loopback_or_when_marked() {
    let c = parse(
        "listen on 127.0.0.1\nresolver 192.0.2.53 trust-ad\nresolver 127.0.0.1:5353\n\
         resolver 192.0.2.54\nresolver [::1]:53\n",
    )
    .unwrap();
    let trust: Vec<(String, bool)> = c
        .resolvers
        .iter()
        .map(|s| (s.addr.to_string(), s.trust_ad))
        .collect();
    assert_eq!(
        trust,
        [
            ("192.0.2.53:53".to_string(), true),
            ("127.0.0.1:5353".to_string(), true),
            ("192.0.2.54:53".to_string(), false),
            ("[::1]:53".to_string(), true),
        ]
    );
    assert!(err("listen on 127.0.0.1\nresolver 192.0.2.53 trust-it\n").contains("t.conf:2:"));
}
