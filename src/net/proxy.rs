//! The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1
//! and 2) that a load balancer sends before anything else, giving the real
//! client's address. Read exactly, never a byte more: after the header an
//! smtps client's ClientHello follows at once, and a byte read too far
//! would be lost to the TLS stream.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A v1 line is at most this long, CRLF included.
const V1_MAX: usize = 107;
/// The v2 signature.
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v2 address block and TLVs we take (as Postfix's
/// HAPROXY_HEADER_MAX_LEN, less the 16-byte fixed part).
const V2_MAX_LEN: usize = 520;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied TCP connection from `client`.
    Proxied {
        /// The real client.
        client: SocketAddr,
        /// The address it connected to.
        server: SocketAddr,
    },
    /// The proxy's own connection (v2 LOCAL, v1 UNKNOWN, an unspecified
    /// family): its health checks.
    Local,
}

/// Parse a header at the start of `buf`: `Ok(None)` when more bytes are
/// needed, else the header and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return parse_v1(buf);
    }
    if V2_SIG.starts_with(&buf[..buf.len().min(12)]) {
        return parse_v2(buf);
    }
    Err("no PROXY header (the connection began with something else)".into())
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(format!("PROXY v1 line longer than {V1_MAX} bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "PROXY v1 line is not text")?;
    let words: Vec<&str> = line.split(' ').collect();
    let bad = || format!("malformed PROXY v1 line '{}'", line.escape_default());
    let header = match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Header::Local,
        ["PROXY", fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let ip = |s: &str| -> Result<IpAddr, String> {
                let ip: IpAddr = s.parse().map_err(|_| bad())?;
                match (*fam, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(bad()),
                }
            };
            let port = |s: &str| -> Result<u16, String> {
                // No leading zeros, no sign (proxy-protocol.txt 2.1).
                if s.is_empty() || (s.len() > 1 && s.starts_with('0')) {
                    return Err(bad());
                }
                s.parse().map_err(|_| bad())
            };
            Header::Proxied {
                client: SocketAddr::new(ip(src)?, port(sport)?),
                server: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(bad()),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, String> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(format!("PROXY v2 header of version {}", ver_cmd >> 4));
    }
    if len > V2_MAX_LEN {
        return Err(format!(
            "PROXY v2 header of {len} bytes (at most {V2_MAX_LEN})"
        ));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let header = match (ver_cmd & 0x0f, fam) {
        (0, _) => Header::Local,
        (1, 0x00) => Header::Local,
        (1, 0x11) if len >= 12 => {
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Header::Proxied {
                client: SocketAddr::new(ip(0), port(8)),
                server: SocketAddr::new(ip(4), port(10)),
            }
        }
        (1, 0x21) if len >= 36 => {
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                // ::ffff:a.b.c.d is the IPv4 client it stands for.
                IpAddr::V6(Ipv6Addr::from(a)).to_canonical()
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Header::Proxied {
                client: SocketAddr::new(ip(0), port(32)),
                server: SocketAddr::new(ip(16), port(34)),
            }
        }
        (1, 0x11 | 0x21) => return Err("PROXY v2 address block too short".into()),
        (1, f) => {
            return Err(format!(
                "PROXY v2 family {f:#04x} (only TCP over IPv4 or IPv6)"
            ));
        }
        (c, _) => return Err(format!("PROXY v2 command {c}")),
    };
    Ok(Some((header, 16 + len)))
}

/// Read one header from `s` within `timeout`, consuming exactly its bytes
/// (peeked first, then read).
pub fn read(s: &mut TcpStream, timeout: Duration) -> Result<Header, String> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 16 + V2_MAX_LEN];
    let mut seen = 0;
    // Bounded by the deadline; each pass waits for more bytes or sleeps.
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no complete PROXY header within {}s",
                timeout.as_secs()
            ));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = match s.peek(&mut buf) {
            Ok(0) => return Err("the connection closed before a PROXY header".into()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no complete PROXY header within {}s",
                    timeout.as_secs()
                ));
            }
            Err(e) => return Err(e.to_string()),
        };
        match parse(&buf[..n])? {
            Some((h, used)) => {
                let mut sink = vec![0u8; used];
                s.read_exact(&mut sink).map_err(|e| e.to_string())?;
                return Ok(h);
            }
            None if n == buf.len() => return Err("PROXY header too long".into()),
            None => {
                // peek returns at once while the bytes so far stay the
                // same; wait a little for the rest.
                if n == seen {
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen = n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIG.to_vec();
        b.push(0x20 | cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn headers_as_a_table() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let v4 = [127, 0, 0, 3, 127, 0, 0, 1, 0xd5, 0xee, 0x00, 0x19];
        let mut v6 = [0u8; 36];
        v6[10] = 0xff;
        v6[11] = 0xff;
        v6[12..16].copy_from_slice(&[192, 0, 2, 1]);
        v6[31] = 1;
        v6[32..34].copy_from_slice(&1234u16.to_be_bytes());
        v6[34..36].copy_from_slice(&25u16.to_be_bytes());
        let mut tlv = v4.to_vec();
        tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        let cases: Vec<(Vec<u8>, Header, usize)> = vec![
            (
                b"PROXY TCP4 127.0.0.3 127.0.0.1 50784 25\r\nEHLO x\r\n".to_vec(),
                Header::Proxied {
                    client: sa("127.0.0.3:50784"),
                    server: sa("127.0.0.1:25"),
                },
                41,
            ),
            (
                b"PROXY TCP6 2001:db8::1 ::1 1 465\r\n".to_vec(),
                Header::Proxied {
                    client: sa("[2001:db8::1]:1"),
                    server: sa("[::1]:465"),
                },
                34,
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), Header::Local, 15),
            (
                b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n".to_vec(),
                Header::Local,
                31,
            ),
            (
                v2(1, 0x11, &v4),
                Header::Proxied {
                    client: sa("127.0.0.3:54766"),
                    server: sa("127.0.0.1:25"),
                },
                28,
            ),
            (
                v2(1, 0x21, &v6),
                Header::Proxied {
                    client: sa("192.0.2.1:1234"),
                    server: sa("[::1]:25"),
                },
                52,
            ),
            (v2(0, 0x00, &[]), Header::Local, 16),
            (v2(1, 0x00, &[]), Header::Local, 16),
            (
                v2(1, 0x11, &tlv),
                Header::Proxied {
                    client: sa("127.0.0.3:54766"),
                    server: sa("127.0.0.1:25"),
                },
                32,
            ),
        ];
        for (bytes, want, used) in cases {
            assert_eq!(parse(&bytes), Ok(Some((want, used))), "{bytes:?}");
            // Every strict prefix is incomplete, never an error.
            for cut in 0..used {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{bytes:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"EHLO client.test\r\n".to_vec(), "no PROXY header"),
            (b"\x16\x03\x01\x02\x00".to_vec(), "no PROXY header"),
            (b"PROXY TCP4 127.0.0.1\r\n".to_vec(), "malformed"),
            (b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(), "malformed"),
            (b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n".to_vec(), "malformed"),
            (
                b"PROXY TCP4 1.2.3.4 1.2.3.4 70000 2\r\n".to_vec(),
                "malformed",
            ),
            (b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n".to_vec(), "malformed"),
            (long.into_bytes(), "longer than 107"),
            (v2(1, 0x12, &[0; 12]), "family 0x12"),
            (v2(1, 0x11, &[0; 4]), "too short"),
            (v2(2, 0x11, &[0; 12]), "command 2"),
            (v2(1, 0x11, &[0; 600]), "600 bytes"),
            (
                {
                    let mut b = v2(1, 0x11, &[0; 12]);
                    b[12] = 0x11;
                    b
                },
                "version 1",
            ),
        ];
        for (bytes, want) in cases {
            let got = parse(&bytes);
            assert!(
                matches!(&got, Err(e) if e.contains(want)),
                "{bytes:?}: {got:?}"
            );
        }
    }

    /// Over a socket: the header and only the header is consumed, however
    /// it arrives, and silence times out.
    #[test]
    fn reads_exactly_the_header() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            for b in b"PROXY TCP4 127.0.0.3 127.0.0.1 5 25\r\n\x16\x03" {
                c.write_all(&[*b]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            c
        });
        let (mut s, _) = l.accept().unwrap();
        let h = read(&mut s, Duration::from_secs(5)).unwrap();
        assert!(matches!(h, Header::Proxied { client, .. } if client.port() == 5));
        let _c = t.join().unwrap();
        let mut next = [0u8; 2];
        s.read_exact(&mut next).unwrap();
        assert_eq!(&next, b"\x16\x03", "the bytes after the header are left");
        // Nothing at all: a timeout, not a hang.
        let quiet = TcpStream::connect(addr).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let e = read(&mut s, Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("no complete PROXY header"), "{e}");
        drop(quiet);
    }
}
