//! One transport type for a session: plain TCP, upgraded in place to TLS.
//!
//! The upgrade moves the `TcpStream` out with `mem::replace` and wraps it in
//! `rustls::StreamOwned`; `Detached` exists only during that move. The
//! handshake runs explicitly to completion so a failure surfaces at a known
//! point with its alert, instead of as a confusing error on the first read.
//!
//! Reads and writes drive the connection and its socket directly rather
//! than through `StreamOwned`'s own `Read` and `Write`, which send whatever
//! TLS data is queued in a write of its own before each read and each
//! write. Here queued records wait for the next write: the server's TLS 1.3
//! session ticket (RFC 8446 §4.6.1) leaves with the first reply, and
//! close_notify with the last, each one system call and one TCP segment
//! fewer per session. Records come from the socket through a read-ahead
//! buffer ([`ReadAhead`]).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use super::TlsInfo;

/// A session's transport.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS as the server side.
    Tls(Box<Tls<ServerConnection>>),
    /// TLS as the client side (delivery).
    TlsClient(Box<Tls<ClientConnection>>),
    /// Only while upgrading; never observable from outside.
    Detached,
}

/// The upgraded socket, and what was read from it ahead of rustls.
#[derive(Debug)]
pub struct Tls<C> {
    stream: StreamOwned<C, TcpStream>,
    ahead: ReadAhead,
}

impl<C> Tls<C> {
    fn new(stream: StreamOwned<C, TcpStream>) -> Box<Self> {
        Box::new(Tls {
            stream,
            ahead: ReadAhead::default(),
        })
    }
}

/// Bytes read from a TLS socket that rustls has not taken yet. rustls asks
/// for at most 4 KiB per read (its deframer's `READ_SIZE`), so a 4 KiB
/// message with its framing would cost two read(2)s and a 100 KiB one 25;
/// through this buffer one read(2) takes up to [`crate::buffers::READ`].
/// Taken from the pool at the first read after the handshake, given back
/// when the session ends.
#[derive(Default)]
struct ReadAhead {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            crate::buffers::READS.give(std::mem::take(&mut self.buf));
        }
    }
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadAhead({} bytes)", self.end - self.start)
    }
}

/// The socket as rustls reads it: from the read-ahead buffer, refilled by
/// one read(2) when empty. Never reads the socket while bytes are buffered,
/// so it blocks only when rustls has taken everything that arrived.
struct Reading<'a> {
    sock: &'a mut TcpStream,
    ahead: &'a mut ReadAhead,
}

impl Read for Reading<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let a = &mut *self.ahead;
        if out.is_empty() {
            return Ok(0);
        }
        if a.start == a.end {
            if a.buf.is_empty() {
                a.buf = crate::buffers::read_buffer();
            }
            let n = self.sock.read(&mut a.buf)?;
            (a.start, a.end) = (0, n);
        }
        let n = out.len().min(a.end - a.start);
        out[..n].copy_from_slice(&a.buf[a.start..a.start + n]);
        a.start += n;
        Ok(n)
    }
}

impl Stream {
    /// The certificates the client presented, inbound.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        match self {
            Stream::Tls(t) => t
                .stream
                .conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(t) => Some(&t.stream.sock),
            Stream::TlsClient(t) => Some(&t.stream.sock),
            Stream::Detached => None,
        }
    }

    /// Take the plain socket out for an upgrade.
    fn take_plain(&mut self) -> io::Result<TcpStream> {
        match std::mem::replace(self, Stream::Detached) {
            Stream::Plain(tcp) => Ok(tcp),
            other => {
                *self = other;
                debug_assert!(false, "upgrade of a stream that is not plain");
                Err(io::Error::other(
                    "TLS upgrade of a stream that is not plain TCP",
                ))
            }
        }
    }

    /// Run the server side of a TLS handshake on this connection.
    pub fn upgrade_server(&mut self, cfg: Arc<ServerConfig>) -> io::Result<TlsInfo> {
        let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, self.take_plain()?);
        server_handshake(&mut tls)?;
        let mut info = describe(&tls.conn);
        info.sni = tls.conn.server_name().map(str::to_string);
        *self = Stream::Tls(Tls::new(tls));
        Ok(info)
    }
}

/// Run the server side of a handshake to completion.
///
/// Not `complete_io`, which also writes what the finished handshake left
/// queued. In TLS 1.3 that is only the session ticket, which the client does
/// not wait for, so it stays queued for the first reply. In TLS 1.2 it is
/// the server's Finished, which the client does wait for, so it goes now.
fn server_handshake(tls: &mut StreamOwned<ServerConnection, TcpStream>) -> io::Result<()> {
    let (conn, sock) = (&mut tls.conn, &mut tls.sock);
    // Bounded: every pass sends a flight or reads from the socket, which
    // fails after the read timeout; the handshake has a few flights.
    while conn.is_handshaking() {
        drain(conn, sock)?;
        let eof = match conn.read_tls(sock) {
            Ok(n) => n == 0,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // An alert the client sent before closing says more than the close.
        process(conn, sock)?;
        if eof && conn.is_handshaking() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    if conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        drain(conn, sock)?;
    }
    Ok(())
}

/// Run the client side of a handshake to completion. `complete_io` also
/// sends the client's Finished, which the server waits for, and any alert
/// describing a failure before it returns the error.
fn client_handshake(tls: &mut StreamOwned<ClientConnection, TcpStream>) -> io::Result<()> {
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(())
}

/// What a finished handshake negotiated.
fn describe<D: rustls::SideData>(conn: &rustls::ConnectionCommon<D>) -> TlsInfo {
    TlsInfo {
        version: conn
            .protocol_version()
            .map(crate::tls::version_name)
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        sni: None,
        client_cert: None,
    }
}

/// Process the records read so far. On a protocol error the alert that
/// describes it is sent, if the socket takes it, before the error returns.
fn process<D: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
) -> io::Result<()> {
    conn.process_new_packets().map(|_| ()).map_err(|e| {
        let _ = conn.write_tls(sock);
        io::Error::new(io::ErrorKind::InvalidData, e)
    })
}

/// Send every queued TLS record; `write_tls` hands them to one writev(2).
fn drain<D: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
) -> io::Result<()> {
    // Bounded: each pass sends at least one byte or returns.
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Read plaintext, reading records from the socket until some arrives, the
/// peer closes, or the read times out. Queued records are not sent first
/// (see the module comment); nothing the peer waits for is ever queued
/// when a read begins.
fn read_plain<C, D>(t: &mut Tls<C>, buf: &mut [u8]) -> io::Result<usize>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    let (conn, sock) = (&mut *t.stream.conn, &mut t.stream.sock);
    // Bounded: every pass returns or takes bytes from the read-ahead or
    // the socket, which fails after the read timeout and returns 0 once at
    // its end, after which the reader answers Ok(0) or UnexpectedEof,
    // never WouldBlock.
    loop {
        match conn.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
        let mut from = Reading {
            sock,
            ahead: &mut t.ahead,
        };
        match conn.read_tls(&mut from) {
            Ok(_) => process(conn, sock)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Encrypt `buf` (as much as the connection's buffer takes) and send it
/// with whatever was queued before it.
fn write_plain<D: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut TcpStream,
    buf: &[u8],
) -> io::Result<usize> {
    let n = conn.writer().write(buf)?;
    drain(conn, sock)?;
    Ok(n)
}

/// The client side of a finished handshake.
#[derive(Debug)]
pub struct ClientTlsInfo {
    /// Version and cipher (no SNI on this side).
    pub info: TlsInfo,
    /// The server's certificate chain, for the `verified=` check.
    pub chain: Vec<CertificateDer<'static>>,
}

impl Stream {
    /// Run the client side of a TLS handshake, asking for `host` by SNI. On
    /// failure the connection is gone: a plaintext retry needs a new one.
    pub fn upgrade_client(
        &mut self,
        cfg: Arc<ClientConfig>,
        host: &str,
    ) -> io::Result<ClientTlsInfo> {
        let name = ServerName::try_from(host.trim_end_matches('.').to_string())
            .map_err(|e| io::Error::other(format!("bad TLS server name {host}: {e}")))?;
        let conn = ClientConnection::new(cfg, name).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, self.take_plain()?);
        client_handshake(&mut tls)?;
        let info = describe(&tls.conn);
        let chain = tls
            .conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        *self = Stream::TlsClient(Tls::new(tls));
        Ok(ClientTlsInfo { info, chain })
    }
}

impl Stream {
    /// Send `last` (the final reply or command) and end a TLS session
    /// properly (RFC 8446 §6.1), both in one write: a peer that reads on
    /// after it sees close_notify, not a truncation. Exim logs "TLS
    /// connection was non-properly terminated" otherwise. Plain TCP gets
    /// `last` alone.
    pub fn close_with(&mut self, last: &[u8]) -> io::Result<()> {
        fn tls<D: rustls::SideData>(
            conn: &mut rustls::ConnectionCommon<D>,
            sock: &mut TcpStream,
            last: &[u8],
        ) -> io::Result<()> {
            conn.writer().write_all(last)?;
            conn.send_close_notify();
            drain(conn, sock)
        }
        match self {
            Stream::Plain(s) => s.write_all(last),
            Stream::Tls(t) => tls(&mut t.stream.conn, &mut t.stream.sock, last),
            Stream::TlsClient(t) => tls(&mut t.stream.conn, &mut t.stream.sock, last),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => read_plain(t, buf),
            Stream::TlsClient(t) => read_plain(t, buf),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => write_plain(&mut t.stream.conn, &mut t.stream.sock, buf),
            Stream::TlsClient(t) => write_plain(&mut t.stream.conn, &mut t.stream.sock, buf),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => drain(&mut t.stream.conn, &mut t.stream.sock),
            Stream::TlsClient(t) => drain(&mut t.stream.conn, &mut t.stream.sock),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    /// For a fresh self-signed certificate: the listener's config as the
    /// daemon builds it, and the opportunistic delivery config (which
    /// wants some root, and takes any certificate).
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["mx.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let pki = super::super::pki::Pki {
            name: "mx.test".into(),
            cert_path: Default::default(),
            key_path: Default::default(),
            key: Arc::new(
                rustls::sign::CertifiedKey::from_der(
                    vec![cert.der().clone()],
                    der,
                    &super::super::provider(),
                )
                .unwrap(),
            ),
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        (
            super::super::server::config(&pki, std::iter::empty(), None).unwrap(),
            super::super::client::ClientTls::new(roots, None, None)
                .unwrap()
                .opportunistic,
        )
    }

    #[test]
    fn records_arrive_whole_through_the_read_ahead_and_the_last_write_closes() {
        // 100 KiB in writes of an odd size, so records straddle every
        // read-ahead refill; read back in small pieces.
        let body: Vec<u8> = (0..100 * 1024).map(|i| (i % 251) as u8).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = body.clone();
        let (server_cfg, client_cfg) = configs();
        let client = std::thread::spawn(move || {
            let tcp = TcpStream::connect(addr).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let conn = ClientConnection::new(client_cfg, "mx.test".try_into().unwrap()).unwrap();
            let mut t = StreamOwned::new(conn, tcp);
            for chunk in sent.chunks(7001) {
                t.write_all(chunk).unwrap();
            }
            t.flush().unwrap();
            let mut answer = Vec::new();
            // Ok(0) only after close_notify; a bare TCP close is an error.
            t.read_to_end(&mut answer).map(|_| answer)
        });
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = Stream::Plain(tcp);
        let info = s.upgrade_server(server_cfg).unwrap();
        assert_eq!(info.version, "TLSv1.3");
        let Stream::Tls(t) = &s else {
            panic!("not upgraded")
        };
        assert!(t.stream.conn.wants_write(), "the ticket waits for a reply");
        let mut got = Vec::new();
        let mut piece = [0u8; 1000];
        while got.len() < body.len() {
            let n = s.read(&mut piece).unwrap();
            assert!(n > 0, "closed after {} bytes", got.len());
            got.extend_from_slice(&piece[..n]);
        }
        assert!(got == body, "the bytes differ");
        s.close_with(b"221 bye\r\n").unwrap();
        assert_eq!(client.join().unwrap().unwrap(), b"221 bye\r\n");
    }
}
