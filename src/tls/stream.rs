//! One transport type for a session: plain TCP, upgraded in place to TLS.
//!
//! The upgrade moves the `TcpStream` out with `mem::replace` and wraps it in
//! `rustls::StreamOwned`; `Detached` exists only during that move. The
//! handshake runs explicitly to completion (`complete_io` while
//! handshaking) so a failure surfaces at a known point with its alert,
//! instead of as a confusing error on the first read.

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
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
    /// TLS as the client side (delivery).
    TlsClient(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// Only while upgrading; never observable from outside.
    Detached,
}

impl Stream {
    /// The certificates the client presented, inbound.
    pub fn client_chain(&self) -> Vec<CertificateDer<'static>> {
        match self {
            Stream::Tls(t) => t
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
            Stream::Tls(t) => Some(&t.sock),
            Stream::TlsClient(t) => Some(&t.sock),
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
        let mut info = handshake(&mut tls)?;
        info.sni = tls.conn.server_name().map(str::to_string);
        *self = Stream::Tls(Box::new(tls));
        Ok(info)
    }
}

/// Run a handshake to completion and describe its result. complete_io
/// sends any alert describing a failure before it returns the error.
fn handshake<C, D>(tls: &mut StreamOwned<C, TcpStream>) -> io::Result<TlsInfo>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(TlsInfo {
        version: tls
            .conn
            .protocol_version()
            .map(crate::tls::version_name)
            .unwrap_or_default(),
        cipher: tls
            .conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        sni: None,
        client_cert: None,
    })
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
        let info = handshake(&mut tls)?;
        let chain = tls
            .conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        *self = Stream::TlsClient(Box::new(tls));
        Ok(ClientTlsInfo { info, chain })
    }
}

impl Stream {
    /// End a TLS session properly (RFC 8446 §6.1): a peer that reads on
    /// after our last reply sees close_notify, not a truncation. Exim logs
    /// "TLS connection was non-properly terminated" otherwise. Plain TCP
    /// needs nothing.
    pub fn close_notify(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(t) => {
                t.conn.send_close_notify();
                t.flush()
            }
            Stream::TlsClient(t) => {
                t.conn.send_close_notify();
                t.flush()
            }
            Stream::Plain(_) | Stream::Detached => Ok(()),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
            Stream::TlsClient(t) => t.read(buf),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
            Stream::TlsClient(t) => t.write(buf),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
            Stream::TlsClient(t) => t.flush(),
            Stream::Detached => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}
