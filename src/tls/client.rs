//! Outbound `ClientConfig`s, one per TLS policy (postern.conf(5), `tls`).
//!
//! `may` and `encrypt` encrypt without requiring a valid certificate, as
//! Postfix's levels of the same names do: an MX certificate is rarely
//! issued for the MX name and refusing it would only push mail to
//! plaintext. The handshake signature is still checked. Whether the chain
//! would have verified is worked out after the handshake, for the log
//! line's `verified=`. `verify` requires a chain to the system store (or the
//! action's `ca FILE`) naming the MX host.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Accepts any certificate but still checks the handshake signature
/// (opportunistic TLS; also `make bench` toward Postfix's test certificate).
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client configs for one relay action.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// For `may` and `encrypt`.
    pub opportunistic: Arc<ClientConfig>,
    /// For `verify`.
    pub verified: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
    /// The action's `pki`, presented when a server asks for a client
    /// certificate.
    pub client_key: Option<Arc<rustls::sign::CertifiedKey>>,
}

/// A client config builder finished with `key` as the client certificate
/// (sent only when the server asks), or without one.
pub fn with_client_key(
    b: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>,
    key: Option<&Arc<rustls::sign::CertifiedKey>>,
) -> ClientConfig {
    match key {
        Some(k) => {
            b.with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(k.clone())))
        }
        None => b.with_no_client_auth(),
    }
}

/// The system CA store, loaded once at start-up.
pub fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        log::warn!("CA store: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        log::warn!("CA store: {ignored} certificates could not be used ({added} loaded)");
    }
    roots
}

/// The certificates of a CA file; the error names the file and what is
/// wrong with it.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM in CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in CA file {}", path.display()));
    }
    // The same check the verifier makes, so a certificate it would
    // refuse fails the configuration check.
    let mut roots = RootCertStore::empty();
    for c in &certs {
        roots
            .add(c.clone())
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
    }
    Ok(certs)
}

impl ClientTls {
    /// Build the configs; `ca` (an action's own CA file, read by the
    /// configuration) is added to `roots`.
    pub fn new(
        mut roots: RootCertStore,
        ca: Option<&crate::config::CaFile>,
        client_key: Option<Arc<rustls::sign::CertifiedKey>>,
    ) -> Result<ClientTls, String> {
        if let Some(ca) = ca {
            for c in &ca.certs {
                roots
                    .add(c.clone())
                    .map_err(|e| format!("CA file {}: {e}", ca.path.display()))?;
            }
        }
        let provider = super::provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("certificate verifier: {e}"))?;
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let verified = with_client_key(
            ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .with_webpki_verifier(verifier.clone()),
            client_key.as_ref(),
        );
        let opportunistic = with_client_key(
            ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
            client_key.as_ref(),
        );
        Ok(ClientTls {
            opportunistic: Arc::new(opportunistic),
            verified: Arc::new(verified),
            verifier,
            client_key,
        })
    }

    /// Would this chain pass `verify` for `host`? (for `verified=` in logs)
    pub fn chain_verifies(&self, chain: &[CertificateDer<'_>], host: &str) -> bool {
        let (Some(ee), Ok(name)) = (chain.first(), ServerName::try_from(host.to_string())) else {
            return false;
        };
        self.verifier
            .verify_server_cert(ee, &chain[1..], &name, &[], UnixTime::now())
            .is_ok()
    }
}
