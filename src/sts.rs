//! MTA-STS (RFC 8461): the `_mta-sts` TXT record, the policy file fetched
//! over HTTPS, and a cache of policies that survives restarts, so that an
//! attacker who strips the TXT record or blocks the HTTPS fetch after a
//! restart still meets the enforce policy last seen (§3.3, §5.1).
//!
//! The cache is `QUEUE/sts/DOMAIN`, one file per policy domain, written by
//! the daemon's user (new file, fsync, rename):
//!
//! ```text
//! postern-sts 1
//! id 20261202T000000
//! fetched 1796083200
//!
//! version: STSv1
//! mode: enforce
//! ...
//! ```

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::ClientConfig;

use crate::dns::{Lookup, Resolver};

/// RFC 8461 §3.2: max_age is at most one year.
const MAX_AGE_LIMIT: u64 = 31_557_600;
/// The policy body limit (RFC 8461 §3.3 suggests 64 KiB).
pub const BODY_LIMIT: usize = 64 * 1024;
/// After a failed fetch, the cached policy (or none) is used this long
/// before the next fetch is tried.
const FAILURE_BACKOFF: u64 = 300;
/// A policy in use is fetched again after this long (RFC 8461 §3.3
/// suggests daily), or at half its max_age if that is sooner.
const REFRESH: u64 = 86_400;

/// A policy's mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts, over validated TLS.
    Enforce,
    /// Report failures, deliver anyway.
    Testing,
    /// No policy.
    None,
}

impl Mode {
    /// As the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy file (RFC 8461 §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its mode.
    pub mode: Mode,
    /// MX patterns, lower-case, without a trailing dot.
    pub mx: Vec<String>,
    /// Seconds it may be cached.
    pub max_age: u64,
}

/// The `id` of the one `v=STSv1` record among `records` (RFC 8461 §3.1);
/// an error when there is none, more than one, or it is malformed.
pub fn txt_id(records: &[String]) -> Result<String, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=STSv1"))
        .collect();
    let record = match sts.as_slice() {
        [one] => one,
        [] => return Err("no v=STSv1 record".into()),
        _ => return Err(format!("{} v=STSv1 records (one is allowed)", sts.len())),
    };
    let mut id = None;
    for (i, field) in record.split(';').enumerate() {
        let field = field.trim();
        if field.is_empty() {
            continue;
        }
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("malformed field '{field}'"))?;
        match (i, k.trim(), v.trim()) {
            (0, "v", "STSv1") => {}
            (0, _, _) => return Err("the record must start with v=STSv1".into()),
            (_, "id", v)
                if (1..=32).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric()) =>
            {
                id = Some(v.to_string())
            }
            (_, "id", v) => return Err(format!("bad id '{v}' (1 to 32 letters and digits)")),
            // Other fields are ignored (RFC 8461 §3.1).
            _ => {}
        }
    }
    id.ok_or_else(|| "no id".into())
}

/// Parse a policy file (RFC 8461 §3.2): LF or CRLF lines, `key: value`;
/// unknown keys ignored; `version`, `mode` and `max_age` required, and at
/// least one `mx` unless the mode is `none`. `mx` values that are IP
/// addresses are dropped: a policy names hosts.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or_else(|| {
            format!(
                "line without ':': '{}'",
                line.chars().take(80).collect::<String>()
            )
        })?;
        let v = v.trim();
        match k.trim() {
            "version" => version = Some(v.to_string()),
            "mode" => {
                mode = Some(match v {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    _ => return Err(format!("unknown mode '{v}'")),
                })
            }
            "max_age" => {
                let n: u64 = v
                    .parse()
                    .ok()
                    .filter(|n| *n <= MAX_AGE_LIMIT && v.len() <= 10)
                    .ok_or_else(|| format!("bad max_age '{v}' (0 to {MAX_AGE_LIMIT} seconds)"))?;
                max_age = Some(n);
            }
            "mx" => {
                let p = v.trim_end_matches('.').to_ascii_lowercase();
                let host = p.strip_prefix("*.").unwrap_or(&p);
                if host.parse::<std::net::IpAddr>().is_ok() {
                    continue;
                }
                if host.is_empty()
                    || !host.contains('.') && p.starts_with("*.")
                    || !host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return Err(format!("bad mx pattern '{v}'"));
                }
                mx.push(p);
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version must be STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

impl Policy {
    /// Does `host` match one of the mx patterns (RFC 8461 §4.1: `*.` stands
    /// for exactly one label)?
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|p| match p.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => *p == host,
        })
    }
}

/// A policy as fetched and cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The TXT record's id when it was fetched.
    pub id: String,
    /// When (Unix seconds).
    pub fetched: u64,
    /// The policy.
    pub policy: Policy,
    /// Its text, as served.
    pub text: String,
}

impl Cached {
    fn expired(&self, now: u64) -> bool {
        now >= self.fetched.saturating_add(self.policy.max_age)
    }

    fn stale(&self, now: u64) -> bool {
        now >= self
            .fetched
            .saturating_add((self.policy.max_age / 2).min(REFRESH))
    }

    fn to_file(&self) -> String {
        format!(
            "postern-sts 1\nid {}\nfetched {}\n\n{}",
            self.id, self.fetched, self.text
        )
    }

    fn from_file(text: &str) -> Result<Cached, String> {
        let rest = text
            .strip_prefix("postern-sts 1\n")
            .ok_or("not a postern STS cache file")?;
        let (head, policy) = rest.split_once("\n\n").ok_or("no policy in the file")?;
        let mut id = None;
        let mut fetched = None;
        for line in head.lines() {
            match line.split_once(' ') {
                Some(("id", v)) => id = Some(v.to_string()),
                Some(("fetched", v)) => fetched = v.parse().ok(),
                _ => return Err(format!("unknown line '{line}'")),
            }
        }
        Ok(Cached {
            id: id.ok_or("no id")?,
            fetched: fetched.ok_or("no fetched time")?,
            policy: parse_policy(policy)?,
            text: policy.to_string(),
        })
    }
}

/// How policies are fetched.
#[derive(Clone)]
pub struct Fetch {
    /// Validates the policy host (RFC 8461 §3.3: WebPKI).
    pub tls: Arc<ClientConfig>,
    /// 443, or `mta-sts port` (tests).
    pub port: u16,
    /// Connect and whole-exchange deadlines.
    pub deadlines: crate::https::Deadlines,
}

/// The policy cache, shared by delivery threads.
#[derive(Default)]
pub struct Cache {
    /// `QUEUE/sts`, or none for a cache that lives in memory only
    /// (`posternctl tls-check`, which may run as root).
    dir: Option<PathBuf>,
    mem: Mutex<HashMap<String, Option<Arc<Cached>>>>,
    /// One fetch per domain at a time: the others wait and use its result.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    failed: Mutex<HashMap<String, u64>>,
}

/// Domain names as file names: letters, digits, hyphens and dots only.
fn file_name(domain: &str) -> Option<&str> {
    let ok = !domain.is_empty()
        && !domain.starts_with('.')
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    ok.then_some(domain)
}

impl Cache {
    /// A cache kept in `dir` (created by the spool).
    pub fn on_disk(dir: PathBuf) -> Cache {
        Cache {
            dir: Some(dir),
            ..Cache::default()
        }
    }

    /// A cache in memory only.
    pub fn in_memory() -> Cache {
        Cache::default()
    }

    fn load(&self, domain: &str) -> Option<Arc<Cached>> {
        let mut mem = self.mem.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = mem.get(domain) {
            return c.clone();
        }
        let found = self.dir.as_ref().and_then(|d| {
            let path = d.join(file_name(domain)?);
            let text = std::fs::read_to_string(&path).ok()?;
            match Cached::from_file(&text) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    log::warn!("MTA-STS cache {}: {e}; ignoring it", path.display());
                    None
                }
            }
        });
        mem.insert(domain.to_string(), found.clone());
        found
    }

    fn store(&self, domain: &str, c: Cached) -> Arc<Cached> {
        let c = Arc::new(c);
        if let (Some(dir), Some(name)) = (&self.dir, file_name(domain)) {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            let written = std::fs::File::create(&tmp)
                .and_then(|mut f| {
                    f.write_all(c.to_file().as_bytes())?;
                    f.sync_all()
                })
                .and_then(|_| std::fs::rename(&tmp, &path));
            if let Err(e) = written {
                log::warn!(
                    "MTA-STS cache {}: {e}; the policy is kept in memory only",
                    path.display()
                );
            }
        }
        self.mem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), Some(c.clone()));
        c
    }

    /// The domains with a policy file in the cache.
    pub fn cached_domains(&self) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| file_name(n).is_some())
            .collect()
    }

    /// The policy to apply to mail for `domain` (RFC 8461 §5.1): a fresh
    /// one when the TXT id changed or the cached one is due for a refresh,
    /// else the cached one while it has not expired, else none (mode
    /// `none` is left to the caller); and why a fetch failed, if one did
    /// (for TLS reports).
    pub fn policy(
        &self,
        resolver: &Resolver,
        fetch: &Fetch,
        domain: &str,
        now: u64,
    ) -> (Option<Arc<Cached>>, Option<String>) {
        let mut error = None;
        let p = self.lookup(resolver, fetch, domain, now, &mut error);
        (p, error)
    }

    fn lookup(
        &self,
        resolver: &Resolver,
        fetch: &Fetch,
        domain: &str,
        now: u64,
        error: &mut Option<String>,
    ) -> Option<Arc<Cached>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(domain.clone())
            .or_default()
            .clone();
        let _one_fetch = lock.lock().unwrap_or_else(|p| p.into_inner());
        let cached = self.load(&domain).filter(|c| !c.expired(now));
        let id = match resolver.txt(&format!("_mta-sts.{domain}")) {
            Ok((Lookup::Found(records), _)) => txt_id(&records),
            Ok((Lookup::NxDomain, _)) => Err("no such name".to_string()),
            Err(e) => Err(format!("lookup failed: {e}")),
        };
        let id = match id {
            Ok(id) => id,
            Err(e) => {
                match &cached {
                    Some(c) => log::info!(
                        "MTA-STS {domain}: _mta-sts TXT: {e}; using the cached policy (id {})",
                        c.id
                    ),
                    None => log::debug!("MTA-STS {domain}: _mta-sts TXT: {e}; no policy"),
                }
                return cached;
            }
        };
        if let Some(c) = &cached
            && c.id == id
            && !c.stale(now)
        {
            return cached;
        }
        let failed_at = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&domain)
            .copied();
        if failed_at.is_some_and(|t| now < t + FAILURE_BACKOFF) {
            return cached;
        }
        let host = format!("mta-sts.{domain}");
        let got = crate::https::get(
            resolver,
            fetch.tls.clone(),
            &host,
            fetch.port,
            "/.well-known/mta-sts.txt",
            BODY_LIMIT,
            fetch.deadlines,
        )
        .and_then(|r| match r.status {
            200 => String::from_utf8(r.body).map_err(|_| "the policy is not UTF-8".into()),
            // RFC 8461 §3.3: redirects are not followed.
            s => Err(format!("HTTP status {s}")),
        })
        .and_then(|text| parse_policy(&text).map(|p| (p, text)));
        match got {
            Ok((policy, text)) => {
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&domain);
                log::info!(
                    "MTA-STS {domain}: policy id {id} fetched: mode {}, mx {}, max_age {}",
                    policy.mode.as_str(),
                    policy.mx.join(" "),
                    policy.max_age
                );
                Some(self.store(
                    &domain,
                    Cached {
                        id,
                        fetched: now,
                        policy,
                        text,
                    },
                ))
            }
            Err(e) => {
                *error = Some(e.clone());
                self.failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(domain.clone(), now);
                match &cached {
                    Some(c) => log::warn!(
                        "MTA-STS {domain}: fetching the policy failed ({e}); using the cached one (id {}, mode {})",
                        c.id,
                        c.policy.mode.as_str()
                    ),
                    None => log::warn!(
                        "MTA-STS {domain}: fetching the policy failed ({e}); no policy applies"
                    ),
                }
                cached
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records_as_a_table() {
        let one = |s: &str| vec![s.to_string()];
        assert_eq!(
            txt_id(&one("v=STSv1; id=20160831085700Z;")),
            Ok("20160831085700Z".into())
        );
        assert_eq!(txt_id(&one("v=STSv1;id=abc")), Ok("abc".into()));
        assert_eq!(
            txt_id(&["v=spf1 -all".into(), "v=STSv1; id=x1; ext=ignored".into()]),
            Ok("x1".into())
        );
        for (records, want) in [
            (vec![], "no v=STSv1 record"),
            (one("v=spf1 -all"), "no v=STSv1 record"),
            (
                vec!["v=STSv1; id=a".into(), "v=STSv1; id=b".into()],
                "2 v=STSv1 records",
            ),
            (one("v=STSv1"), "no id"),
            (one("v=STSv1; id=bad-id"), "bad id"),
            (one(&format!("v=STSv1; id={}", "a".repeat(33))), "bad id"),
            (one("v=STSv1; junk"), "malformed field"),
        ] {
            let got = txt_id(&records);
            assert!(
                matches!(&got, Err(e) if e.contains(want)),
                "{records:?}: {got:?}"
            );
        }
    }

    #[test]
    fn policies_as_a_table() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: 192.0.2.1\r\nmx: Backup.Example.ORG.\r\nmax_age: 604800\r\nextension: ignored\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(
            p.mx,
            vec!["mail.example.com", "*.example.net", "backup.example.org"]
        );
        assert_eq!(p.max_age, 604800);
        let lf =
            parse_policy("version: STSv1\nmode: testing\nmx: a.example\nmax_age: 86400\n").unwrap();
        assert_eq!(lf.mode, Mode::Testing);
        assert_eq!(
            parse_policy("version: STSv1\nmode: none\nmax_age: 1\n")
                .unwrap()
                .mode,
            Mode::None
        );
        for (text, want) in [
            (
                "mode: enforce\nmx: a.example\nmax_age: 1\n",
                "version must be STSv1",
            ),
            (
                "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                "version must be STSv1",
            ),
            ("version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
            (
                "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
                "unknown mode",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\n",
                "no max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
                "bad max_age",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
                "bad max_age",
            ),
            ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
            (
                "version: STSv1\nmode: enforce\nmx: 192.0.2.1\nmax_age: 1\n",
                "no mx",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a_b.example\nmax_age: 1\n",
                "bad mx pattern",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: *.com\nmax_age: 1\n",
                "bad mx pattern",
            ),
            ("version: STSv1\ngarbage\n", "line without ':'"),
        ] {
            let got = parse_policy(text);
            assert!(
                matches!(&got, Err(e) if e.contains(want)),
                "{text:?}: {got:?}"
            );
        }
    }

    #[test]
    fn mx_patterns_match_one_label_only() {
        let p = Policy {
            mode: Mode::Enforce,
            mx: vec!["mail.example.com".into(), "*.example.net".into()],
            max_age: 1,
        };
        for (host, want) in [
            ("mail.example.com", true),
            ("MAIL.Example.com.", true),
            ("other.example.com", false),
            ("mx1.example.net", true),
            ("example.net", false),
            ("a.b.example.net", false),
            (".example.net", false),
        ] {
            assert_eq!(p.mx_matches(host), want, "{host}");
        }
    }

    #[test]
    fn cache_files_round_trip_and_expire() {
        let text = "version: STSv1\nmode: enforce\nmx: mx.example\nmax_age: 1000\n";
        let c = Cached {
            id: "abc".into(),
            fetched: 5000,
            policy: parse_policy(text).unwrap(),
            text: text.into(),
        };
        assert_eq!(Cached::from_file(&c.to_file()), Ok(c.clone()));
        assert!(!c.expired(5999) && c.expired(6000));
        assert!(!c.stale(5499) && c.stale(5500));
        assert!(Cached::from_file("junk").is_err());
        assert!(Cached::from_file("postern-sts 1\nid a\nfetched 1\n\nversion: STSv9\n").is_err());
        assert_eq!(file_name("example.com"), Some("example.com"));
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::on_disk(dir.path().to_path_buf());
        cache.store("a.example", c.clone());
        cache.store("b.example", c.clone());
        std::fs::write(dir.path().join(".c.example.tmp"), "x").unwrap();
        let mut listed = cache.cached_domains();
        listed.sort();
        assert_eq!(listed, vec!["a.example", "b.example"]);
        // A new cache (a restart) reads the policy back from disk.
        let again = Cache::on_disk(dir.path().to_path_buf());
        assert_eq!(again.load("a.example").as_deref(), Some(&c));
        assert!(Cache::in_memory().cached_domains().is_empty());
        for bad in ["", ".hidden", "a/b", "../x", "UPPER.example"] {
            assert_eq!(file_name(bad), None, "{bad}");
        }
    }
}
