//! A small blocking stub resolver for delivery threads: hickory-proto for
//! the wire format, std sockets for the I/O (hickory-resolver has had no
//! synchronous API since 0.25).
//!
//! UDP first, TCP when the answer is truncated; timeouts and attempts from
//! `/etc/resolv.conf`, or the `resolver ADDR[:PORT]` directive. Search lists
//! and CNAME chasing are the recursive resolver's job: an MTA asks for fully
//! qualified names and takes the records of the type it asked for.
//! NXDOMAIN is told apart from SERVFAIL and timeouts, because the first
//! bounces and the others defer.
//!
//! DNSSEC: queries set the AD bit (RFC 6840 §5.7), and an answer counts as
//! secure only when the server that gave it is trusted to validate: a
//! loopback address, or one the administrator marks `trust-ad` (the rule of
//! glibc's and OpenBSD's resolv.conf option of that name). TLSA records
//! (RFC 6698) are looked up for DANE (RFC 7672), and a failed TLSA lookup is
//! never taken for "no TLSA".

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// A DNS server and whether its AD bit is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    /// Where it answers.
    pub addr: SocketAddr,
    /// It validates DNSSEC and the path to it is trusted: loopback, or
    /// `trust-ad` in postern.conf(5).
    pub trust_ad: bool,
}

impl Server {
    /// A server whose AD bit is believed only on loopback.
    pub fn new(addr: SocketAddr) -> Server {
        Server {
            addr,
            trust_ad: addr.ip().to_canonical().is_loopback(),
        }
    }
}

/// A TLSA record (RFC 6698 §2.1), as its four fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 2 DANE-TA, 3 DANE-EE (0 and 1 are not for SMTP,
    /// RFC 7672 §3.1.3).
    pub usage: u8,
    /// 0: the whole certificate, 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the data itself, 1: SHA2-256, 2: SHA2-512.
    pub matching: u8,
    /// Certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Usable for SMTP (RFC 7672 §3.1): usage 2 or 3, selector 0 or 1,
    /// matching 0, 1 or 2 with a digest of the right length.
    pub fn usable(&self) -> bool {
        matches!(self.usage, 2 | 3)
            && matches!(self.selector, 0 | 1)
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }
}

impl std::fmt::Display for Tlsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        self.data.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// What a TLSA lookup means for DANE (RFC 7672 §2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsaAnswer {
    /// Secure records, at least one usable: these.
    Usable(Vec<Tlsa>),
    /// Secure records, none usable: TLS without authentication.
    Unusable,
    /// No secure records (NXDOMAIN, NODATA, or an insecure answer): no DANE.
    None,
}

/// The addresses of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// What was found.
    pub found: Lookup<IpAddr>,
    /// Every answer was DNSSEC-secure (CNAMEs included).
    pub secure: bool,
    /// The name the address records were found under, when a CNAME
    /// led there: the TLSA base domain to try first (RFC 7672 §2.2.3).
    pub cname: Option<String>,
}

/// An answer and whether it is DNSSEC-secure for us.
struct Answer {
    msg: Message,
    secure: bool,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Records of the type asked for (possibly none: NODATA).
    Found(Vec<T>),
    /// The name does not exist.
    NxDomain,
}

/// A DNS failure that should defer, not bounce.
#[derive(Debug)]
pub struct TempFail(pub String);

impl std::fmt::Display for TempFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The resolver.
#[derive(Debug, Clone)]
pub struct Resolver {
    servers: Vec<Server>,
    timeout: Duration,
    attempts: usize,
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    // The kernel's generator through aws-lc (getrandom(2)): no file to
    // open per query, and it works in a bare chroot.
    match aws_lc_rs::rand::fill(&mut b) {
        Ok(()) => u16::from_ne_bytes(b),
        // Should the generator fail, fall back to the clock: the answer
        // check still matches id, type and question.
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u16)
            .unwrap_or(0),
    }
}

impl Resolver {
    /// Resolver with explicit servers (the `resolver` directive).
    pub fn with_servers(servers: Vec<Server>) -> Resolver {
        Resolver {
            servers,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }

    /// Is any server's AD bit believed (can DANE ever apply)?
    pub fn trusts_ad(&self) -> bool {
        self.servers.iter().any(|s| s.trust_ad)
    }

    /// The servers, for messages: `127.0.0.1:53 (trusted), …`.
    pub fn describe(&self) -> String {
        if self.servers.is_empty() {
            return "no nameserver".into();
        }
        let each: Vec<String> = self
            .servers
            .iter()
            .map(|s| {
                let trust = if s.trust_ad {
                    "AD trusted"
                } else {
                    "AD not trusted"
                };
                format!("{} {trust}", s.addr)
            })
            .collect();
        each.join(", ")
    }

    /// Resolver from `/etc/resolv.conf`.
    pub fn from_system() -> io::Result<Resolver> {
        let text = std::fs::read("/etc/resolv.conf")?;
        let c = resolv_conf::Config::parse(text)
            .map_err(|e| io::Error::other(format!("/etc/resolv.conf: {e}")))?;
        let servers: Vec<Server> = c
            .nameservers
            .iter()
            .map(|ns| Server::new(SocketAddr::new(ns.into(), 53)))
            .collect();
        if servers.is_empty() {
            return Err(io::Error::other("/etc/resolv.conf names no nameserver"));
        }
        Ok(Resolver {
            servers,
            timeout: Duration::from_secs(c.timeout.max(1) as u64),
            attempts: (c.attempts as usize).max(1),
        })
    }

    fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, TempFail> {
        let mut qname =
            Name::from_utf8(name).map_err(|e| TempFail(format!("bad name {name}: {e}")))?;
        qname.set_fqdn(true);
        let mut last = String::from("no nameservers");
        for _ in 0..self.attempts {
            for &Server {
                addr: server,
                trust_ad,
            } in &self.servers
            {
                let mut q = Message::new(random_u16(), MessageType::Query, OpCode::Query);
                q.metadata.recursion_desired = true;
                // Ask for the AD bit without DO (RFC 6840 §5.7): the
                // validating server says whether it validated, and sends
                // no signatures we would not check.
                q.metadata.authentic_data = true;
                q.add_query(Query::query(qname.clone(), rtype));
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                q.set_edns(edns);
                let r = self.udp(server, &q).and_then(|r| {
                    if r.metadata.truncation {
                        self.tcp(server, &q)
                    } else {
                        Ok(r)
                    }
                });
                match r {
                    Ok(r) => match r.metadata.response_code {
                        ResponseCode::NoError | ResponseCode::NXDomain => {
                            let secure = trust_ad && r.metadata.authentic_data;
                            return Ok(Answer { msg: r, secure });
                        }
                        rc => last = format!("{server} answered {rc} for {name} {rtype}"),
                    },
                    Err(e) => last = format!("{server}: {e} for {name} {rtype}"),
                }
            }
        }
        Err(TempFail(last))
    }

    /// MX records, sorted by preference, with equal preferences shuffled.
    pub fn mx(&self, domain: &str) -> Result<Lookup<(u16, String)>, TempFail> {
        self.mx_secure(domain).map(|(l, _)| l)
    }

    /// As [`Resolver::mx`], and whether the answer was secure.
    pub fn mx_secure(&self, domain: &str) -> Result<(Lookup<(u16, String)>, bool), TempFail> {
        let Answer { msg: r, secure } = self.query(domain, RecordType::MX)?;
        if r.metadata.response_code == ResponseCode::NXDomain {
            return Ok((Lookup::NxDomain, secure));
        }
        let mut v: Vec<(u16, String)> = r
            .answers
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        shuffle(&mut v);
        v.sort_by_key(|(pref, _)| *pref);
        Ok((Lookup::Found(v), secure))
    }

    /// A and AAAA addresses of a host (IPv6 first, as most MTAs try).
    /// A failed lookup of one family (REFUSED, SERVFAIL, a timeout: broken
    /// nameservers often fail AAAA only) does not stop delivery over the
    /// other, as in Postfix; only when no address could be found and a
    /// lookup failed is that a temporary failure.
    pub fn addrs(&self, host: &str) -> Result<Lookup<IpAddr>, TempFail> {
        self.addrs_secure(host).map(|a| a.found)
    }

    /// As [`Resolver::addrs`], with whether every answer was secure and
    /// the name the address records were found under.
    pub fn addrs_secure(&self, host: &str) -> Result<Addresses, TempFail> {
        let mut out = Vec::new();
        let mut nx = 0;
        let mut failed = None;
        let mut secure = true;
        let mut owner = None;
        for rtype in [RecordType::AAAA, RecordType::A] {
            let r = match self.query(host, rtype) {
                Ok(r) => r,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            secure &= r.secure;
            let r = r.msg;
            if r.metadata.response_code == ResponseCode::NXDomain {
                nx += 1;
                continue;
            }
            for rr in &r.answers {
                let ip = match &rr.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => continue,
                };
                out.push(ip);
                let name = rr.name.to_ascii();
                let name = name.trim_end_matches('.');
                if owner.is_none() && !name.eq_ignore_ascii_case(host.trim_end_matches('.')) {
                    owner = Some(name.to_ascii_lowercase());
                }
            }
        }
        let (found, secure) = match failed {
            Some(e) if out.is_empty() => return Err(e),
            Some(e) => {
                log::info!("DNS: {e}; using the other address family of {host}");
                // One family's answer is unknown: not secure as a whole.
                (Lookup::Found(out), false)
            }
            None if nx == 2 => (Lookup::NxDomain, secure),
            None => (Lookup::Found(out), secure),
        };
        Ok(Addresses {
            found,
            secure,
            cname: owner,
        })
    }

    /// The TXT records of `name`, each record's strings joined (RFC 7208
    /// §3.3 and RFC 8461 §3.1 read them so), and whether the answer was
    /// secure. Records that are not UTF-8 are dropped.
    pub fn txt(&self, name: &str) -> Result<(Lookup<String>, bool), TempFail> {
        let Answer { msg: r, secure } = self.query(name, RecordType::TXT)?;
        if r.metadata.response_code == ResponseCode::NXDomain {
            return Ok((Lookup::NxDomain, secure));
        }
        let v = r
            .answers
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::TXT(t) => {
                    let bytes: Vec<u8> =
                        t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                    String::from_utf8(bytes).ok()
                }
                _ => None,
            })
            .collect();
        Ok((Lookup::Found(v), secure))
    }

    /// The TLSA records of `_PORT._tcp.HOST` (RFC 7672 §2.2). SERVFAIL (a
    /// bogus answer among them), REFUSED or a timeout is an error, which
    /// defers the host, never "no TLSA". Only ask when the host's address
    /// answer was secure: insecure zones' broken nameservers stall here.
    pub fn tlsa(&self, port: u16, host: &str) -> Result<TlsaAnswer, TempFail> {
        let name = format!("_{port}._tcp.{}", host.trim_end_matches('.'));
        let r = self.query(&name, RecordType::TLSA)?;
        if !r.secure || r.msg.metadata.response_code == ResponseCode::NXDomain {
            return Ok(TlsaAnswer::None);
        }
        let all: Vec<Tlsa> = r
            .msg
            .answers
            .iter()
            .filter_map(|rr| match &rr.data {
                RData::TLSA(t) => Some(Tlsa {
                    usage: t.cert_usage.into(),
                    selector: t.selector.into(),
                    matching: t.matching.into(),
                    data: t.cert_data.clone(),
                }),
                _ => None,
            })
            .collect();
        if all.is_empty() {
            return Ok(TlsaAnswer::None);
        }
        let usable: Vec<Tlsa> = all.into_iter().filter(Tlsa::usable).collect();
        Ok(if usable.is_empty() {
            TlsaAnswer::Unusable
        } else {
            TlsaAnswer::Usable(usable)
        })
    }

    fn check(q: &Message, r: Message) -> io::Result<Message> {
        if r.metadata.id != q.metadata.id
            || r.metadata.message_type != MessageType::Response
            || r.queries != q.queries
        {
            return Err(io::Error::other("mismatched response"));
        }
        Ok(r)
    }

    fn udp(&self, server: SocketAddr, q: &Message) -> io::Result<Message> {
        let sock = UdpSocket::bind(if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })?;
        // connect(): the kernel drops datagrams from anyone else.
        sock.connect(server)?;
        sock.send(&q.to_vec().map_err(|e| io::Error::other(e.to_string()))?)?;
        let deadline = Instant::now() + self.timeout;
        let mut buf = vec![0u8; 65535];
        // Bounded by the deadline: each pass waits at most what is left.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            sock.set_read_timeout(Some(left))?;
            let n = sock.recv(&mut buf)?;
            if let Ok(r) = Message::from_vec(&buf[..n])
                && let Ok(r) = Self::check(q, r)
            {
                return Ok(r);
            }
        }
    }

    fn tcp(&self, server: SocketAddr, q: &Message) -> io::Result<Message> {
        let mut s = TcpStream::connect_timeout(&server, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        let body = q.to_vec().map_err(|e| io::Error::other(e.to_string()))?;
        let len = u16::try_from(body.len()).map_err(|_| io::Error::other("query too long"))?;
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        s.write_all(&out)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf)?;
        Self::check(
            q,
            Message::from_vec(&buf).map_err(|e| io::Error::other(e.to_string()))?,
        )
    }
}

/// Fisher–Yates with /dev/urandom, so equal-preference MXes share load.
fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = random_u16() as usize % (i + 1);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_tlsa_records_as_a_table() {
        // (usage, selector, matching, data length, usable) per RFC 7672 §3.1.
        let cases = [
            (3, 1, 1, 32, true),
            (3, 0, 2, 64, true),
            (2, 1, 1, 32, true),
            (3, 1, 0, 91, true),
            (3, 1, 1, 31, false),
            (3, 1, 2, 32, false),
            (3, 1, 0, 0, false),
            (1, 1, 1, 32, false),
            (0, 0, 1, 32, false),
            (4, 1, 1, 32, false),
            (3, 2, 1, 32, false),
            (3, 1, 3, 32, false),
        ];
        for (usage, selector, matching, len, want) in cases {
            let t = Tlsa {
                usage,
                selector,
                matching,
                data: vec![0xab; len],
            };
            assert_eq!(t.usable(), want, "{usage} {selector} {matching} len {len}");
        }
        let t = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0, 0x0f, 0xff],
        };
        assert_eq!(t.to_string(), "3 1 1 000fff");
    }

    #[test]
    fn ad_is_believed_only_from_loopback_by_default() {
        for (addr, trusted) in [
            ("127.0.0.1:53", true),
            ("127.0.0.53:53", true),
            ("[::1]:53", true),
            ("[::ffff:127.0.0.1]:53", true),
            ("192.0.2.53:53", false),
            ("[2001:db8::53]:53", false),
        ] {
            assert_eq!(
                Server::new(addr.parse().unwrap()).trust_ad,
                trusted,
                "{addr}"
            );
        }
    }
}
