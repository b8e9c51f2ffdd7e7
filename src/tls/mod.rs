//! TLS for both directions: certificates from PEM files ([`pki`]) and the
//! server configuration with SNI ([`server`]).

pub mod client;
pub mod client_auth;
pub mod dane;
pub mod pki;
pub mod server;
pub mod stream;
pub mod x509;

use std::sync::Arc;

/// What a finished handshake negotiated (either side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// IANA-style suite name, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher: String,
    /// Server name the client asked for, if any.
    pub sni: Option<String>,
    /// The certificate the client presented (inbound, `ca … ask-cert` or
    /// `verify-cert` listeners).
    pub client_cert: Option<client_auth::ClientCert>,
}

/// `TLSv1.3/TLS13_AES_128_GCM_SHA256`, as the logs write it.
impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.version, self.cipher)
    }
}

/// The crypto provider every config is built with (aws-lc-rs).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// `TLSv1.2` / `TLSv1.3`, as logs and Received headers spell it.
pub fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        other => format!("{other:?}"),
    }
}

/// Why a handshake failed, in the words an administrator needs: rustls's
/// error names say what the client lacked, not what it offered.
pub fn failure_reason(e: &std::io::Error) -> String {
    use rustls::{Error, PeerIncompatible as P};
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                "the client closed the connection during the handshake".into()
            }
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                "the client stopped answering during the handshake".into()
            }
            _ => e.to_string(),
        };
    };
    match tls {
        Error::PeerIncompatible(
            P::SignatureAlgorithmsExtensionRequired | P::Tls12NotOffered | P::Tls12NotOfferedOrEnabled,
        ) => "the client offered only TLS 1.1 or older; postern needs TLS 1.2 or 1.3".into(),
        Error::PeerIncompatible(P::NoCipherSuitesInCommon) => {
            "no cipher suite in common: the client offered no ECDHE suite with AES-GCM or ChaCha20-Poly1305".into()
        }
        Error::PeerIncompatible(P::NoKxGroupsInCommon | P::NamedGroupsExtensionRequired) => {
            "no key exchange group in common: the client offered none of X25519, P-256, P-384".into()
        }
        Error::PeerIncompatible(P::NoSignatureSchemesInCommon) => {
            "no signature scheme in common for our certificate's key".into()
        }
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => {
            "the client did not speak TLS (plaintext after STARTTLS, or not a TLS client)".into()
        }
        Error::AlertReceived(a) => format!(
            "the client ended the handshake with the alert {a:?} (it may not trust our certificate or name)"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[test]
fn handshake_failures_in_words() {
    let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    assert!(
        failure_reason(&io(
            rustls::PeerIncompatible::SignatureAlgorithmsExtensionRequired.into()
        ))
        .contains("TLS 1.1 or older")
    );
    assert!(
        failure_reason(&io(rustls::PeerIncompatible::NoCipherSuitesInCommon.into()))
            .contains("no cipher suite in common")
    );
    assert!(
        failure_reason(&std::io::ErrorKind::UnexpectedEof.into()).contains("closed the connection")
    );
}
