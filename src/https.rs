//! A minimal HTTPS/1.1 client for what an MTA fetches and posts: MTA-STS
//! policies (RFC 8461 §3.3) and TLS reports (RFC 8460 §5.4). It resolves with postern's own resolver, validates the
//! server against the roots it is given, follows no redirect (a 3xx is an
//! error, as §3.3 requires), uses no proxy and no cache, caps the body, and
//! bounds the whole exchange with the delivery watchdog. One request per
//! connection (`Connection: close`); bodies by Content-Length, chunked
//! transfer coding or end of stream (RFC 9112 §6.3).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::dns::{Lookup, Resolver};
use crate::tls::stream::Stream;
use crate::watchdog;

/// Status lines and headers together may not exceed this.
const MAX_HEAD: usize = 16 * 1024;

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The Content-Type header, if any.
    pub content_type: Option<String>,
    /// The body, transfer coding removed.
    pub body: Vec<u8>,
}

/// How long each step may take.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// To connect to one address.
    pub connect: Duration,
    /// For the whole exchange on one connection.
    pub total: Duration,
}

/// GET `https://host:port/path`, reading at most `limit` body bytes. The
/// error names the URL and what failed.
pub fn get(
    resolver: &Resolver,
    tls: Arc<ClientConfig>,
    host: &str,
    port: u16,
    path: &str,
    limit: usize,
    deadlines: Deadlines,
) -> Result<Response, String> {
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: postern\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    send(
        resolver,
        tls,
        host,
        port,
        path,
        head.into_bytes(),
        limit,
        deadlines,
    )
}

/// POST `body` as `content_type` to `url` (`https://host[:port]/path`);
/// the answer's body is read up to `limit` bytes.
pub fn post(
    resolver: &Resolver,
    tls: Arc<ClientConfig>,
    url: &str,
    content_type: &str,
    body: &[u8],
    limit: usize,
    deadlines: Deadlines,
) -> Result<Response, String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url}: not an https URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    // Host names only: report addresses are names (RFC 8460 §3).
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port '{p}'"))?,
        ),
        None => (authority, 443),
    };
    if host.is_empty() || host.contains(['@', '[', ']']) {
        return Err(format!("{url}: bad host"));
    }
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: postern\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    send(resolver, tls, host, port, path, request, limit, deadlines)
}

#[allow(clippy::too_many_arguments)]
fn send(
    resolver: &Resolver,
    tls: Arc<ClientConfig>,
    host: &str,
    port: u16,
    path: &str,
    request: Vec<u8>,
    limit: usize,
    deadlines: Deadlines,
) -> Result<Response, String> {
    let url = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let addrs = match resolver.addrs(host) {
        Ok(Lookup::Found(a)) if !a.is_empty() => a,
        Ok(_) => return Err(format!("{url}: {host} has no address")),
        Err(e) => return Err(format!("{url}: DNS: {e}")),
    };
    let mut last = String::new();
    for ip in addrs {
        let addr = SocketAddr::new(ip, port);
        match exchange(addr, tls.clone(), host, &request, limit, deadlines) {
            Ok(r) => return Ok(r),
            Err(e) => last = format!("{url} ({addr}): {e}"),
        }
    }
    Err(last)
}

fn exchange(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    host: &str,
    request: &[u8],
    limit: usize,
    deadlines: Deadlines,
) -> Result<Response, String> {
    let tcp = TcpStream::connect_timeout(&addr, deadlines.connect).map_err(|e| e.to_string())?;
    let guard = watchdog::watch(&tcp, deadlines.total).map_err(|e| e.to_string())?;
    let timed_out = |e: io::Error| {
        if guard.fired() {
            format!("timed out after {}s", deadlines.total.as_secs())
        } else {
            e.to_string()
        }
    };
    tcp.set_read_timeout(Some(deadlines.total))
        .and_then(|_| tcp.set_write_timeout(Some(deadlines.total)))
        .map_err(|e| e.to_string())?;
    let mut s = Stream::Plain(tcp);
    s.upgrade_client(tls, host)
        .map_err(|e| format!("TLS: {}", timed_out(e)))?;
    s.write_all(request)
        .and_then(|_| s.flush())
        .map_err(timed_out)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    // Bounded by the watchdog's deadline and by the size cap below.
    loop {
        if let Some(r) = parse(&buf, limit, false)? {
            let _ = s.close_with(b"");
            return Ok(r);
        }
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            // A server that closes without close_notify: the end of the
            // body is then what the framing says (RFC 9112 §6.3).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(timed_out(e)),
        };
        if n == 0 {
            return parse(&buf, limit, true)?
                .ok_or_else(|| "the server closed the connection early".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD + limit + 1024 {
            return Err(format!("response larger than {limit} bytes"));
        }
    }
}

/// Parse a response read so far: `Ok(None)` while incomplete (`eof`:
/// nothing more will come).
pub fn parse(buf: &[u8], limit: usize, eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err("response headers too long".into());
        }
        return if eof {
            Err("no complete response header".into())
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response header is not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.splitn(3, ' ');
    let (version, code) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(format!("bad status line '{}'", printable(status_line)));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line '{}'", printable(status_line)))?;
    let mut length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line '{}'", printable(line)));
        };
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| format!("bad Content-Length '{}'", printable(value)))?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length headers".into());
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                chunked = value
                    .to_ascii_lowercase()
                    .split(',')
                    .any(|t| t.trim() == "chunked");
                if !chunked {
                    return Err(format!(
                        "unsupported Transfer-Encoding '{}'",
                        printable(value)
                    ));
                }
            }
            "content-type" => content_type = Some(printable(value)),
            _ => {}
        }
    }
    let body = &buf[end + 4..];
    let done = |body: Vec<u8>| {
        if body.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        Ok(Some(Response {
            status,
            content_type: content_type.clone(),
            body,
        }))
    };
    if chunked {
        // RFC 9112 §6.3: chunked wins over any Content-Length.
        return match dechunk(body, limit)? {
            Some(b) => done(b),
            None if eof => Err("the chunked body ended early".into()),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if n > limit => Err(format!("body of {n} bytes is larger than {limit}")),
        Some(n) if body.len() >= n => done(body[..n].to_vec()),
        Some(_) if eof => Err("the body ended before its Content-Length".into()),
        Some(_) => Ok(None),
        None if eof => done(body.to_vec()),
        None if body.len() > limit => Err(format!("body larger than {limit} bytes")),
        None => Ok(None),
    }
}

/// Decode a chunked body: `Ok(None)` while incomplete.
fn dechunk(mut b: &[u8], limit: usize) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    // Bounded: each pass consumes a chunk header or returns.
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size '{}'", printable(size_text)))?;
        b = &b[eol + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            return Ok(find(b, b"\r\n").map(|_| out));
        }
        if out.len() + size > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        if &b[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> Response {
        parse(raw.as_bytes(), 100, true).unwrap().unwrap()
    }

    #[test]
    fn responses_as_a_table() {
        let r = ok("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(
            (r.status, r.content_type.as_deref(), &r.body[..]),
            (200, Some("text/plain"), &b"hello"[..])
        );
        let r = ok(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
        );
        assert_eq!(r.body, b"hello");
        let r = ok("HTTP/1.0 404 Not Found\r\n\r\ngone");
        assert_eq!((r.status, &r.body[..]), (404, &b"gone"[..]));
        let r =
            ok("HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 301);
        // Complete before the end of the stream when the framing says so.
        let done = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            100,
            false,
        )
        .unwrap();
        assert_eq!(done.map(|r| r.body), Some(b"ok".to_vec()));
        for partial in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            "HTTP/1.1 200 OK\r\nContent-Le",
            "HTTP/1.1 200 OK\r\n\r\nbody until close",
        ] {
            assert_eq!(
                parse(partial.as_bytes(), 100, false),
                Ok(None),
                "{partial:?}"
            );
        }
    }

    #[test]
    fn bad_and_oversized_responses_are_errors() {
        let cases = [
            ("SMTP/1.1 200 OK\r\n\r\n", "bad status line"),
            ("HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
            ("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "conflicting",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
                "larger than 100",
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                "ended before",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",
                "larger than 100",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
                "not followed by CRLF",
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "ended early",
            ),
            ("HTTP/1.1 200 OK", "no complete response header"),
        ];
        for (raw, want) in cases {
            let got = parse(raw.as_bytes(), 100, true);
            assert!(
                matches!(&got, Err(e) if e.contains(want)),
                "{raw:?}: {got:?}"
            );
        }
        let body = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(101));
        assert!(parse(body.as_bytes(), 100, false).is_err());
        let head = format!("HTTP/1.1 200 OK\r\nX: {}", "y".repeat(MAX_HEAD));
        assert!(parse(head.as_bytes(), 100, false).is_err());
    }
}
