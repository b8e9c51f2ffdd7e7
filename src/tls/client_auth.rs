//! Client certificates on a listener (`ca FILE ask-cert | verify-cert`,
//! postern.conf(5)).
//!
//! `ask-cert` asks for a certificate and never fails the handshake over
//! it: rustls aborts the handshake when a client verifier rejects a
//! certificate, even an optional one, and a peer MTA that sends a
//! self-signed certificate must still get TLS. Whether the certificate
//! chains to the `ca` is decided after the handshake, for the rules.
//! `verify-cert` requires a certificate that chains to the `ca` and fails
//! the handshake otherwise.
//!
//! A certificate counts as verified when it chains to the `ca` for client
//! authentication, or for server authentication: peer MTAs present their
//! server certificates as client certificates, and public CAs no longer
//! issue the clientAuth key usage, so a serverAuth-only certificate
//! identifies a mail server as well as it identifies it to its clients.

use std::sync::Arc;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};

use super::dane::{hex, sha256};

/// A client certificate as the session, the rules and the logs see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// SHA2-256 of the certificate (DER), lower-case hex without colons.
    pub sha256: String,
    /// Its subject (`CN=…, O=…`), printable, without quotes or
    /// parentheses.
    pub subject: String,
    /// It chains to the listener's `ca`.
    pub verified: bool,
}

impl ClientCert {
    /// The leaf of `chain`, summarised; `verified` as found by the caller.
    pub fn of(chain: &[CertificateDer<'_>], verified: bool) -> Option<ClientCert> {
        let leaf = chain.first()?;
        let subject = super::x509::summary(leaf)
            .map(|s| s.subject)
            .unwrap_or_else(|| "(unparsable)".into());
        let subject: String = subject
            .chars()
            .take(200)
            .map(|c| {
                if c.is_ascii_graphic() && !matches!(c, '"' | '(' | ')' | '\\') || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        Some(ClientCert {
            sha256: hex(&sha256(leaf.as_ref())),
            subject,
            verified,
        })
    }
}

/// A fingerprint as a table may write it (`AB:CD:…`, any case), in the
/// form [`ClientCert::sha256`] has.
pub fn normalize_fingerprint(s: &str) -> String {
    let s = s.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    s.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A listener's client-certificate settings.
#[derive(Debug)]
pub struct ClientAuth {
    roots: Arc<RootCertStore>,
    hints: Vec<DistinguishedName>,
    client_usage: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
    /// `verify-cert`: the handshake fails without a verified certificate.
    pub require: bool,
}

impl ClientAuth {
    /// For the CA certificates of a listener's `ca FILE`.
    pub fn new(ca: &[CertificateDer<'static>], require: bool) -> Result<ClientAuth, String> {
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c.clone()).map_err(|e| e.to_string())?;
        }
        let roots = Arc::new(roots);
        let provider = super::provider();
        let client_usage =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| e.to_string())?;
        Ok(ClientAuth {
            hints: roots.subjects(),
            roots,
            client_usage,
            provider,
            require,
        })
    }

    /// Does `chain` (leaf first) chain to the `ca`, for client or server
    /// authentication?
    pub fn verifies(&self, chain: &[CertificateDer<'_>], now: UnixTime) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        if self
            .client_usage
            .verify_client_cert(leaf, rest, now)
            .is_ok()
        {
            return true;
        }
        let Ok(parsed) = ParsedCertificate::try_from(leaf) else {
            return false;
        };
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            rest,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .is_ok()
    }

    /// The verifier a listener's `ServerConfig` uses.
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(Verifier(self.clone()))
    }
}

#[derive(Debug)]
struct Verifier(Arc<ClientAuth>);

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        self.0.require
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.hints
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        if !self.0.require || self.0.verifies(&chain, now) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(Error::InvalidCertificate(CertificateError::UnknownIssuer))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair,
    };

    fn ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "Client CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn leaf(
        by: Option<&CertifiedIssuer<'static, KeyPair>>,
        eku: &[ExtendedKeyUsagePurpose],
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["laptop.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "laptop \"one\"");
        p.extended_key_usages = eku.to_vec();
        match by {
            Some(ca) => p.signed_by(&key, ca).unwrap().der().clone(),
            None => p.self_signed(&key).unwrap().der().clone(),
        }
    }

    #[test]
    fn client_and_server_usage_verify_others_do_not() {
        let ca = ca();
        let auth = ClientAuth::new(std::slice::from_ref(ca.der()), false).unwrap();
        let now = UnixTime::now();
        use ExtendedKeyUsagePurpose::{ClientAuth as C, CodeSigning, ServerAuth as S};
        for (eku, want) in [
            (vec![C], true),
            (vec![S], true),
            (vec![], true),
            (vec![CodeSigning], false),
        ] {
            let cert = leaf(Some(&ca), &eku);
            assert_eq!(auth.verifies(&[cert], now), want, "{eku:?}");
        }
        assert!(!auth.verifies(&[leaf(None, &[C])], now), "self-signed");
        assert!(!auth.verifies(&[], now));
    }

    #[test]
    fn ask_cert_never_fails_the_handshake_verify_cert_does() {
        let ca = ca();
        let stranger = leaf(None, &[]);
        let ask = Arc::new(ClientAuth::new(std::slice::from_ref(ca.der()), false).unwrap());
        let verify = Arc::new(ClientAuth::new(std::slice::from_ref(ca.der()), true).unwrap());
        let now = UnixTime::now();
        assert!(
            ask.verifier()
                .verify_client_cert(&stranger, &[], now)
                .is_ok()
        );
        assert!(!ask.verifier().client_auth_mandatory());
        assert!(
            verify
                .verifier()
                .verify_client_cert(&stranger, &[], now)
                .is_err()
        );
        assert!(verify.verifier().client_auth_mandatory());
        let good = leaf(Some(&ca), &[]);
        assert!(
            verify
                .verifier()
                .verify_client_cert(&good, &[], now)
                .is_ok()
        );
        assert_eq!(ask.verifier().root_hint_subjects().len(), 1);
    }

    #[test]
    fn fingerprints_and_subjects() {
        let c = leaf(None, &[]);
        let cc = ClientCert::of(std::slice::from_ref(&c), false).unwrap();
        assert_eq!(cc.sha256, hex(&sha256(c.as_ref())));
        assert_eq!(cc.subject, "CN=laptop ?one?");
        let colons: Vec<String> = cc
            .sha256
            .as_bytes()
            .chunks(2)
            .map(|p| String::from_utf8_lossy(p).to_uppercase())
            .collect();
        assert_eq!(normalize_fingerprint(&colons.join(":")), cc.sha256);
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", cc.sha256)),
            cc.sha256
        );
        assert_eq!(ClientCert::of(&[], true), None);
    }
}
