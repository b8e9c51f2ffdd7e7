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
    let builder = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        Some(a) => builder.with_client_cert_verifier(a.verifier()),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(resolver));
    // Resumption saves a full handshake per reconnecting client.
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // One TLS 1.3 ticket is enough for an MTA that reconnects; the default
    // two cost an extra encryption and record per handshake.
    cfg.send_tls13_tickets = 1;
    Ok(Arc::new(cfg))
}
