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

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

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
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: usize,
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u16::from_ne_bytes(b),
        // Without /dev/urandom (a bare chroot) fall back to the clock: the
        // answer check still matches id, type and question.
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u16)
            .unwrap_or(0),
    }
}

impl Resolver {
    /// Resolver with explicit servers (the `resolver` directive).
    pub fn with_servers(servers: Vec<SocketAddr>) -> Resolver {
        Resolver {
            servers,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }

    /// Resolver from `/etc/resolv.conf`.
    pub fn from_system() -> io::Result<Resolver> {
        let text = std::fs::read("/etc/resolv.conf")?;
        let c = resolv_conf::Config::parse(text)
            .map_err(|e| io::Error::other(format!("/etc/resolv.conf: {e}")))?;
        let servers: Vec<SocketAddr> = c
            .nameservers
            .iter()
            .map(|ns| SocketAddr::new(ns.into(), 53))
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

    fn query(&self, name: &str, rtype: RecordType) -> Result<Message, TempFail> {
        let mut qname =
            Name::from_utf8(name).map_err(|e| TempFail(format!("bad name {name}: {e}")))?;
        qname.set_fqdn(true);
        let mut last = String::from("no nameservers");
        for _ in 0..self.attempts {
            for &server in &self.servers {
                let mut q = Message::new(random_u16(), MessageType::Query, OpCode::Query);
                q.metadata.recursion_desired = true;
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
                        ResponseCode::NoError | ResponseCode::NXDomain => return Ok(r),
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
        let r = self.query(domain, RecordType::MX)?;
        if r.metadata.response_code == ResponseCode::NXDomain {
            return Ok(Lookup::NxDomain);
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
        Ok(Lookup::Found(v))
    }

    /// A and AAAA addresses of a host (IPv6 first, as most MTAs try).
    /// A failed lookup of one family (REFUSED, SERVFAIL, a timeout: broken
    /// nameservers often fail AAAA only) does not stop delivery over the
    /// other, as in Postfix; only when no address could be found and a
    /// lookup failed is that a temporary failure.
    pub fn addrs(&self, host: &str) -> Result<Lookup<IpAddr>, TempFail> {
        let mut out = Vec::new();
        let mut nx = 0;
        let mut failed = None;
        for rtype in [RecordType::AAAA, RecordType::A] {
            let r = match self.query(host, rtype) {
                Ok(r) => r,
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            };
            if r.metadata.response_code == ResponseCode::NXDomain {
                nx += 1;
                continue;
            }
            out.extend(r.answers.iter().filter_map(|rr| match &rr.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            }));
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                log::info!("DNS: {e}; using the other address family of {host}");
                Ok(Lookup::Found(out))
            }
            None if nx == 2 => Ok(Lookup::NxDomain),
            None => Ok(Lookup::Found(out)),
        }
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
