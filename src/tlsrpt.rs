//! SMTP TLS reporting (RFC 8460): one result per outbound connection to a
//! domain that publishes `_smtp._tls` (success, or a failure with its
//! §4.3 result type), appended as a line to `QUEUE/tlsrpt/current.log`;
//! once a day (or on `posternctl tls-report send`) the lines become one
//! JSON report per domain and UTC day, gzip'd, and are sent to the
//! domain's `rua`: mailed (DKIM-signed, §3) or POSTed over HTTPS (§5.4).
//!
//! A line, tab-separated (tabs and line ends in fields become spaces):
//!
//! ```text
//! TIME DOMAIN POLICY-TYPE POLICY-STRINGS(|) MX-PATTERNS( ) RESULT SENDING-IP MX-HOST RECEIVING-IP DETAIL
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::dns::{Lookup, Resolver};
use crate::json;

/// Where a report goes (RFC 8460 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` an address.
    Mailto(String),
    /// `https:` a URL.
    Https(String),
}

impl std::fmt::Display for Rua {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rua::Mailto(a) => write!(f, "mailto:{a}"),
            Rua::Https(u) => f.write_str(u),
        }
    }
}

/// The `rua` list of the one `v=TLSRPTv1` record among `records`.
pub fn parse_txt(records: &[String]) -> Result<Vec<Rua>, String> {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    let record = match ours.as_slice() {
        [one] => one,
        [] => return Err("no v=TLSRPTv1 record".into()),
        _ => {
            return Err(format!(
                "{} v=TLSRPTv1 records (one is allowed)",
                ours.len()
            ));
        }
    };
    let mut out = Vec::new();
    for field in record.split(';').skip(1) {
        let Some((k, v)) = field.trim().split_once('=') else {
            continue;
        };
        if k.trim() != "rua" {
            continue;
        }
        for uri in v.split(',') {
            let uri = uri.trim();
            if let Some(addr) = uri.strip_prefix("mailto:") {
                // A size limit or other parameters after '!' or '?' are
                // not for us.
                let addr = addr.split(['?', '!']).next().unwrap_or("");
                if crate::smtp::address::parse_mailbox(addr).is_some_and(|m| !m.domain.is_empty()) {
                    out.push(Rua::Mailto(addr.to_string()));
                }
            } else if let Some(rest) = uri.strip_prefix("https://")
                && !rest.is_empty()
                && !uri.contains(char::is_whitespace)
            {
                out.push(Rua::Https(uri.to_string()));
            }
        }
    }
    if out.is_empty() {
        return Err("no usable rua".into());
    }
    Ok(out)
}

/// The policy a result was reached under (RFC 8460 §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    /// DANE.
    Tlsa,
    /// MTA-STS.
    Sts,
    /// Neither.
    NoPolicyFound,
}

impl PolicyType {
    /// As the report spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Tlsa => "tlsa",
            PolicyType::Sts => "sts",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }

    fn parse(s: &str) -> Option<PolicyType> {
        Some(match s {
            "tlsa" => PolicyType::Tlsa,
            "sts" => PolicyType::Sts,
            "no-policy-found" => PolicyType::NoPolicyFound,
            _ => return None,
        })
    }
}

/// One connection's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The policy domain: the recipient domain.
    pub domain: String,
    /// Under which policy.
    pub policy: PolicyType,
    /// The TLSA records or the STS policy's lines.
    pub strings: Vec<String>,
    /// The STS policy's mx patterns.
    pub mx: Vec<String>,
    /// None for a success.
    pub failure: Option<Failure>,
}

/// What failed (RFC 8460 §4.3, §4.4 failure-details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The result type, e.g. `starttls-not-supported`.
    pub result: &'static str,
    /// Our address on the connection.
    pub sending_ip: String,
    /// The MX host.
    pub mx_host: String,
    /// Its address, if one was connected to.
    pub receiving_ip: String,
    /// What happened, in our words.
    pub detail: String,
}

/// The result types a line may carry (RFC 8460 §4.3).
const RESULT_TYPES: &[&str] = &[
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// The result type of a failed handshake (RFC 8460 §4.3.2.2), from the
/// certificate error rustls gave.
pub fn certificate_result(e: &std::io::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            C::NotValidForName | C::NotValidForNameContext { .. } => "certificate-host-mismatch",
            C::Expired | C::ExpiredContext { .. } => "certificate-expired",
            C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => {
                "certificate-not-trusted"
            }
            _ => "validation-failure",
        },
        _ => "validation-failure",
    }
}

fn field(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\t' || c.is_control() { ' ' } else { c })
        .collect()
}

impl Event {
    fn to_line(&self, time: u64) -> String {
        let strings: Vec<String> = self
            .strings
            .iter()
            .map(|s| field(s).replace('|', " "))
            .collect();
        let (result, sip, host, rip, detail) = match &self.failure {
            None => ("success", "", "", "", ""),
            Some(f) => (
                f.result,
                f.sending_ip.as_str(),
                f.mx_host.as_str(),
                f.receiving_ip.as_str(),
                f.detail.as_str(),
            ),
        };
        format!(
            "{time}\t{}\t{}\t{}\t{}\t{result}\t{}\t{}\t{}\t{}\n",
            field(&self.domain),
            self.policy.as_str(),
            strings.join("|"),
            field(&self.mx.join(" ")),
            field(sip),
            field(host),
            field(rip),
            field(detail)
        )
    }

    fn from_line(line: &str) -> Option<(u64, Event)> {
        let f: Vec<&str> = line.split('\t').collect();
        let [
            time,
            domain,
            policy,
            strings,
            mx,
            result,
            sip,
            host,
            rip,
            detail,
        ] = f.as_slice()
        else {
            return None;
        };
        let split = |s: &str, by: char| -> Vec<String> {
            s.split(by)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .collect()
        };
        let failure = match *result {
            "success" => None,
            r => Some(Failure {
                result: RESULT_TYPES.iter().find(|t| **t == r)?,
                sending_ip: sip.to_string(),
                mx_host: host.to_string(),
                receiving_ip: rip.to_string(),
                detail: detail.to_string(),
            }),
        };
        Some((
            time.parse().ok()?,
            Event {
                domain: domain.to_string(),
                policy: PolicyType::parse(policy)?,
                strings: split(strings, '|'),
                mx: split(mx, ' '),
                failure,
            },
        ))
    }
}

/// Records results for the domains that ask for reports.
pub struct Recorder {
    dir: PathBuf,
    /// Per domain: the UTC day its `_smtp._tls` record was looked up,
    /// and whether it asks for reports.
    asks: Mutex<HashMap<String, (u64, bool)>>,
    file: Mutex<()>,
}

impl Recorder {
    /// Record into `dir` (`QUEUE/tlsrpt`, created when first needed).
    pub fn new(dir: PathBuf) -> Recorder {
        Recorder {
            dir,
            asks: Mutex::new(HashMap::new()),
            file: Mutex::new(()),
        }
    }

    /// Does `domain` publish a usable `_smtp._tls` record? Asked once a
    /// day per domain; a failed lookup is asked again next time.
    fn asks(&self, resolver: &Resolver, domain: &str, now: u64) -> bool {
        let day = now / 86400;
        if let Some(&(d, yes)) = self
            .asks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            && d == day
        {
            return yes;
        }
        let yes = match resolver.txt(&format!("_smtp._tls.{domain}")) {
            Ok((Lookup::Found(records), _)) => parse_txt(&records).is_ok(),
            Ok((Lookup::NxDomain, _)) => false,
            Err(_) => return false,
        };
        self.asks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(domain.to_string(), (day, yes));
        yes
    }

    /// Record `ev` if its domain asks for reports.
    pub fn record(&self, resolver: &Resolver, ev: &Event, now: u64) {
        if !self.asks(resolver, &ev.domain, now) {
            return;
        }
        self.append(&ev.to_line(now));
    }

    /// Append `text` (whole lines) to `current.log`, one writer at a time.
    fn append(&self, text: &str) {
        let _one_writer = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.dir.join("current.log");
        let r = std::fs::create_dir_all(&self.dir).and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?
                .write_all(text.as_bytes())
        });
        if let Err(e) = r {
            log::warn!("TLS report data {}: {e}", path.display());
        }
    }

    /// Take the lines recorded so far: `current.log` is renamed (so new
    /// results go to a new file) and returned with its path, to be
    /// removed once the reports are queued.
    pub fn take(&self) -> std::io::Result<Option<(String, PathBuf)>> {
        let _one_writer = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let from = self.dir.join("current.log");
        let to = self
            .dir
            .join(format!("sending-{}.log", crate::time::unix_now()));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(Some((std::fs::read_to_string(&to)?, to)))
    }

    /// Append `lines` again (the daily run leaves today's for tomorrow).
    pub fn put_back(&self, lines: &[&str]) {
        if lines.is_empty() {
            return;
        }
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        self.append(&text);
    }

    /// The lines recorded so far, for `posternctl tls-report show`.
    pub fn pending(&self) -> String {
        std::fs::read_to_string(self.dir.join("current.log")).unwrap_or_default()
    }
}

/// Per (domain, day): per policy: counts.
type Tally = BTreeMap<(String, u64), BTreeMap<PolicyKey, Counts>>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PolicyKey {
    policy: &'static str,
    strings: Vec<String>,
    mx: Vec<String>,
}

#[derive(Debug, Default)]
struct Counts {
    ok: u64,
    failed: u64,
    /// (result, sending ip, mx host, receiving ip) → (count, a detail)
    details: BTreeMap<(String, String, String, String), (u64, String)>,
}

fn tally(lines: &str) -> Tally {
    let mut t = Tally::new();
    for (time, ev) in lines.lines().filter_map(Event::from_line) {
        let key = PolicyKey {
            policy: ev.policy.as_str(),
            strings: ev.strings,
            mx: ev.mx,
        };
        let c = t
            .entry((ev.domain, time / 86400))
            .or_default()
            .entry(key)
            .or_default();
        match ev.failure {
            None => c.ok += 1,
            Some(f) => {
                c.failed += 1;
                let d = c
                    .details
                    .entry((
                        f.result.to_string(),
                        f.sending_ip,
                        f.mx_host,
                        f.receiving_ip,
                    ))
                    .or_insert((0, f.detail));
                d.0 += 1;
            }
        }
    }
    t
}

/// `posternctl tls-report show`: per domain, day and policy, successes
/// and failures by result type.
pub fn summary(lines: &str) -> String {
    let mut out = String::new();
    for ((domain, day), policies) in tally(lines) {
        for (k, c) in policies {
            out.push_str(&format!(
                "{} {domain} {}: {} successful, {} failed",
                &crate::time::rfc3339(day * 86400)[..10],
                k.policy,
                c.ok,
                c.failed
            ));
            let mut by_type: BTreeMap<&str, u64> = BTreeMap::new();
            for ((r, ..), (n, _)) in &c.details {
                *by_type.entry(r).or_default() += n;
            }
            for (r, n) in by_type {
                out.push_str(&format!(", {r} {n}"));
            }
            out.push('\n');
        }
    }
    out
}

/// Who reports.
#[derive(Debug, Clone)]
pub struct Reporter {
    /// `organization-name`.
    pub org: String,
    /// `contact-info`, and the From of mailed reports.
    pub contact: String,
    /// The submitting host (`TLS-Report-Submitter`, report ids).
    pub submitter: String,
}

/// A report for one domain and day.
#[derive(Debug, Clone)]
pub struct Report {
    /// The policy domain.
    pub domain: String,
    /// The period's first and last second.
    pub start: u64,
    /// Last second.
    pub end: u64,
    /// `report-id`.
    pub id: String,
    /// The JSON.
    pub json: String,
}

/// The reports for `lines` (RFC 8460 §4): one per domain and UTC day;
/// `now` ends a day that has not ended yet.
pub fn build(lines: &str, who: &Reporter, now: u64) -> Vec<Report> {
    let mut out = Vec::new();
    for ((domain, day), policies) in tally(lines) {
        let start = day * 86400;
        let end = (start + 86399).min(now.max(start));
        let id = format!(
            "{}.{domain}.{}@{}",
            crate::time::rfc3339(start),
            random_hex(),
            who.submitter
        );
        let policies: Vec<String> = policies
            .into_iter()
            .map(|(k, c)| {
                let details: Vec<String> = c
                    .details
                    .into_iter()
                    .map(|((result, sip, host, rip), (n, detail))| {
                        format!(
                            "{{\"result-type\":{},\"sending-mta-ip\":{},\"receiving-mx-hostname\":{},\"receiving-ip\":{},\"failed-session-count\":{n},\"additional-information\":{}}}",
                            json::string(&result),
                            json::string(&sip),
                            json::string(&host),
                            json::string(&rip),
                            json::string(&detail)
                        )
                    })
                    .collect();
                format!(
                    "{{\"policy\":{{\"policy-type\":{},\"policy-string\":{},\"policy-domain\":{},\"mx-host\":{}}},\"summary\":{{\"total-successful-session-count\":{},\"total-failure-session-count\":{}}},\"failure-details\":[{}]}}",
                    json::string(k.policy),
                    json::strings(k.strings.iter().map(String::as_str)),
                    json::string(&domain),
                    json::strings(k.mx.iter().map(String::as_str)),
                    c.ok,
                    c.failed,
                    details.join(",")
                )
            })
            .collect();
        let json = format!(
            "{{\"organization-name\":{},\"date-range\":{{\"start-datetime\":{},\"end-datetime\":{}}},\"contact-info\":{},\"report-id\":{},\"policies\":[{}]}}",
            json::string(&who.org),
            json::string(&crate::time::rfc3339(start)),
            json::string(&crate::time::rfc3339(end)),
            json::string(&who.contact),
            json::string(&id),
            policies.join(",")
        );
        out.push(Report {
            domain,
            start,
            end,
            id,
            json,
        });
    }
    out
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    crate::tls::dane::hex(&b)
}

/// CRC-32 (ISO 3309, as gzip uses: RFC 1952 §8).
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a gzip member (RFC 1952) of stored deflate blocks (RFC 1951
/// §3.2.4): reports are a few KiB, and every gunzip reads it.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// The report as a message (RFC 8460 §5.3), DKIM-signed by `signer`.
pub fn message(
    r: &Report,
    who: &Reporter,
    to: &str,
    signer: &crate::dkim::Signer,
    now: u64,
) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let boundary = format!("tlsrpt-{}", random_hex());
    let file = format!(
        "{}!{}!{}!{}.json.gz",
        who.submitter, r.domain, r.start, r.end
    );
    let gz = b64.encode(gzip(r.json.as_bytes()));
    let wrapped: Vec<&str> = gz
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    let body = format!(
        "This is a multipart message in MIME format.\r\n\r\n--{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n\
         This is an aggregate TLS report from {} for {}.\r\n\r\n--{boundary}\r\n\
         Content-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{file}\"\r\n\r\n{}\r\n--{boundary}--\r\n",
        who.submitter,
        r.domain,
        wrapped.join("\r\n")
    );
    let subject = format!(
        "Report Domain: {} Submitter: {} Report-ID: <{}>",
        r.domain, who.submitter, r.id
    );
    let date = crate::time::rfc5322(now);
    let msgid = format!("<{}.{}@{}>", now, random_hex(), who.submitter);
    let ctype = format!("multipart/report; report-type=\"tlsrpt\"; boundary=\"{boundary}\"");
    let headers: Vec<(&str, &str)> = vec![
        ("From", &who.contact),
        ("To", to),
        ("Subject", &subject),
        ("Date", &date),
        ("Message-ID", &msgid),
        ("TLS-Report-Domain", &r.domain),
        ("TLS-Report-Submitter", &who.submitter),
        ("Auto-Submitted", "auto-generated"),
        // RFC 8460 §5.3.1: a report must get through where TLS fails.
        ("TLS-Required", "No"),
        ("MIME-Version", "1.0"),
        ("Content-Type", &ctype),
    ];
    let sig = signer.sign(
        &headers,
        body.as_bytes(),
        &[
            "from",
            "to",
            "subject",
            "date",
            "message-id",
            "tls-report-domain",
            "tls-report-submitter",
            "mime-version",
            "content-type",
        ],
        now,
    )?;
    let mut out = sig.into_bytes();
    for (h, v) in headers {
        out.extend_from_slice(format!("{h}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records_as_a_table() {
        let one = |s: &str| vec![s.to_string()];
        assert_eq!(
            parse_txt(&one(
                "v=TLSRPTv1; rua=mailto:reports@example.com,https://r.example.com/v1"
            )),
            Ok(vec![
                Rua::Mailto("reports@example.com".into()),
                Rua::Https("https://r.example.com/v1".into())
            ])
        );
        assert_eq!(
            parse_txt(&one("v=TLSRPTv1;rua=mailto:a@example.com!10m")),
            Ok(vec![Rua::Mailto("a@example.com".into())])
        );
        for (records, want) in [
            (vec![], "no v=TLSRPTv1 record"),
            (one("v=STSv1; id=1"), "no v=TLSRPTv1 record"),
            (
                vec![
                    "v=TLSRPTv1; rua=mailto:a@x.example".into(),
                    "v=TLSRPTv1; rua=mailto:b@x.example".into(),
                ],
                "2 v=TLSRPTv1",
            ),
            (
                one("v=TLSRPTv1; rua=http://insecure.example/"),
                "no usable rua",
            ),
            (
                one("v=TLSRPTv1; rua=mailto:not-an-address"),
                "no usable rua",
            ),
            (one("v=TLSRPTv1"), "no usable rua"),
        ] {
            let got = parse_txt(&records);
            assert!(
                matches!(&got, Err(e) if e.contains(want)),
                "{records:?}: {got:?}"
            );
        }
    }

    fn events() -> Vec<(u64, Event)> {
        let sts = |failure| Event {
            domain: "example.com".into(),
            policy: PolicyType::Sts,
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx: vec!["mx.example.com".into()],
            failure,
        };
        let fail = Failure {
            result: "certificate-expired",
            sending_ip: "192.0.2.1".into(),
            mx_host: "mx.example.com".into(),
            receiving_ip: "192.0.2.9".into(),
            detail: "tab\there".into(),
        };
        let day = 20_000 * 86400;
        vec![
            (day + 10, sts(None)),
            (day + 20, sts(None)),
            (day + 30, sts(Some(fail.clone()))),
            (day + 40, sts(Some(fail))),
            (
                day + 86400 + 5,
                Event {
                    domain: "example.com".into(),
                    policy: PolicyType::NoPolicyFound,
                    strings: vec![],
                    mx: vec![],
                    failure: None,
                },
            ),
        ]
    }

    #[test]
    fn lines_round_trip_and_tally_per_domain_and_day() {
        let lines: String = events().iter().map(|(t, e)| e.to_line(*t)).collect();
        let back: Vec<(u64, Event)> = lines.lines().filter_map(Event::from_line).collect();
        assert_eq!(back.len(), 5);
        assert_eq!(back[0], events()[0]);
        assert_eq!(back[2].1.failure.as_ref().unwrap().detail, "tab here");
        assert!(Event::from_line("junk").is_none());
        assert!(Event::from_line("1\td\tsts\t\t\tnot-a-type\t\t\t\t").is_none());
        let who = Reporter {
            org: "Example Org".into(),
            contact: "tlsrpt@sender.example".into(),
            submitter: "mx.sender.example".into(),
        };
        let reports = build(&lines, &who, 20_001 * 86400 + 100);
        assert_eq!(reports.len(), 2);
        let r = &reports[0];
        assert_eq!((r.start, r.end), (20_000 * 86400, 20_000 * 86400 + 86399));
        // The shape RFC 8460 §4.4 gives, checked field by field.
        let want = format!(
            "{{\"organization-name\":\"Example Org\",\"date-range\":{{\"start-datetime\":\"2024-10-04T00:00:00Z\",\"end-datetime\":\"2024-10-04T23:59:59Z\"}},\"contact-info\":\"tlsrpt@sender.example\",\"report-id\":\"{}\",\"policies\":[{{\"policy\":{{\"policy-type\":\"sts\",\"policy-string\":[\"version: STSv1\",\"mode: enforce\"],\"policy-domain\":\"example.com\",\"mx-host\":[\"mx.example.com\"]}},\"summary\":{{\"total-successful-session-count\":2,\"total-failure-session-count\":2}},\"failure-details\":[{{\"result-type\":\"certificate-expired\",\"sending-mta-ip\":\"192.0.2.1\",\"receiving-mx-hostname\":\"mx.example.com\",\"receiving-ip\":\"192.0.2.9\",\"failed-session-count\":2,\"additional-information\":\"tab here\"}}]}}]}}",
            r.id
        );
        assert_eq!(r.json, want);
        // The day not over yet ends now.
        assert_eq!(reports[1].end, 20_001 * 86400 + 100);
        assert!(
            reports[1]
                .json
                .contains("\"policy-type\":\"no-policy-found\"")
        );
        assert_eq!(
            summary(&lines),
            "2024-10-04 example.com sts: 2 successful, 2 failed, certificate-expired 2\n\
             2024-10-05 example.com no-policy-found: 1 successful, 0 failed\n"
        );
    }

    #[test]
    fn gzip_framing() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let z = gzip(b"hello");
        assert_eq!(&z[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(&z[10..15], &[1, 5, 0, 0xfa, 0xff]);
        assert_eq!(&z[15..20], b"hello");
        assert_eq!(z.len(), 10 + 5 + 5 + 8);
        // Two blocks past 64 KiB: only the last is final.
        let big = vec![b'x'; 70_000];
        let z = gzip(&big);
        assert_eq!(z[10], 0);
        assert_eq!(z[10 + 5 + 65535], 1);
    }
}
