//! DANE certificate matching for SMTP (RFC 7672 §3, RFC 7671 §5): a rustls
//! verifier built per connection from the MX host's secure, usable TLSA
//! records.
//!
//! - DANE-EE (`3 x x`): the server's own certificate or key matches a
//!   record. Nothing else is checked: not the name, not the dates
//!   (RFC 7671 §5.1, RFC 7672 §3.1.1).
//! - DANE-TA (`2 x x`): a certificate the server sent in its chain matches
//!   a record; it becomes the only trust anchor, the leaf must chain to it
//!   and be within its dates, and it must name the TLSA base domain or the
//!   MX host (RFC 7671 §5.2, RFC 7672 §3.1.2 and §3.2.2).
//!
//! Digest agility (RFC 7671 §9): for each usage and selector, when a
//! SHA2-512 record is published the SHA2-256 ones are not used.
//!
//! The handshake signature is checked as for any other server.

use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
};

use crate::dns::Tlsa;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA2-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

/// Does `t` match a certificate (`cert`: its DER; `spki`: its
/// SubjectPublicKeyInfo DER)? RFC 6698 §2.1.2–2.1.3.
pub fn matches(t: &Tlsa, cert: &[u8], spki: &[u8]) -> bool {
    let content = match t.selector {
        0 => cert,
        1 => spki,
        _ => return false,
    };
    match t.matching {
        0 => content == t.data.as_slice(),
        1 => digest::digest(&digest::SHA256, content).as_ref() == t.data.as_slice(),
        2 => digest::digest(&digest::SHA512, content).as_ref() == t.data.as_slice(),
        _ => false,
    }
}

/// The records to match with, after digest agility (RFC 7671 §9): for each
/// (usage, selector), SHA2-512 records push out SHA2-256 ones. Unusable
/// records are dropped.
pub fn select(records: &[Tlsa]) -> Vec<Tlsa> {
    let has_512 = |u, s| {
        records
            .iter()
            .any(|t| t.usable() && t.usage == u && t.selector == s && t.matching == 2)
    };
    records
        .iter()
        .filter(|t| t.usable() && !(t.matching == 1 && has_512(t.usage, t.selector)))
        .cloned()
        .collect()
}

/// What the verifier found, for the log line and the deferral reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This record matched.
    Matched(Tlsa),
    /// Nothing matched: why, with the records tried and the digests of
    /// what the server presented.
    Failed(String),
}

/// A verifier for one connection's TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    /// Reference identifiers for DANE-TA: the TLSA base domain and the MX
    /// host name (RFC 7672 §3.2.2).
    names: Vec<ServerName<'static>>,
    provider: Arc<CryptoProvider>,
    verdict: Mutex<Option<Verdict>>,
}

impl DaneVerifier {
    /// A verifier for `records` (unusable ones are dropped), checking
    /// DANE-TA leaves against `names`.
    pub fn new(
        records: &[Tlsa],
        names: &[&str],
        provider: Arc<CryptoProvider>,
    ) -> Arc<DaneVerifier> {
        let names = names
            .iter()
            .filter_map(|n| ServerName::try_from(n.trim_end_matches('.').to_string()).ok())
            .collect();
        Arc::new(DaneVerifier {
            records: select(records),
            names,
            provider,
            verdict: Mutex::new(None),
        })
    }

    /// What the last handshake's certificate check found.
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict.lock().ok().and_then(|v| v.clone())
    }

    fn record(&self, v: Verdict) {
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(v);
        }
    }

    /// A client config that checks the server with this verifier and
    /// presents `client_key` when the server asks for a certificate.
    pub fn client_config(
        self: &Arc<Self>,
        client_key: Option<&Arc<rustls::sign::CertifiedKey>>,
    ) -> Result<Arc<ClientConfig>, String> {
        let versions: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        let b = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(self.clone());
        Ok(Arc::new(super::client::with_client_key(b, client_key)))
    }

    /// The check itself; `Ok` names the record that matched.
    fn check(
        &self,
        ee: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<Tlsa, String> {
        let leaf = ParsedCertificate::try_from(ee)
            .map_err(|e| format!("cannot parse the server's certificate: {e}"))?;
        let leaf_spki = leaf.subject_public_key_info();
        if let Some(t) = self
            .records
            .iter()
            .find(|t| t.usage == 3 && matches(t, ee.as_ref(), leaf_spki.as_ref()))
        {
            return Ok(t.clone());
        }
        let mut ta_error = None;
        for (i, c) in intermediates.iter().enumerate() {
            let spki = ParsedCertificate::try_from(c)
                .map(|p| p.subject_public_key_info().as_ref().to_vec())
                .unwrap_or_default();
            let Some(t) = self
                .records
                .iter()
                .find(|t| t.usage == 2 && matches(t, c.as_ref(), &spki))
            else {
                continue;
            };
            let mut roots = RootCertStore::empty();
            if let Err(e) = roots.add(c.clone()) {
                ta_error = Some(format!(
                    "{t} matched a certificate unusable as an anchor: {e}"
                ));
                continue;
            }
            let algs = self.provider.signature_verification_algorithms.all;
            match verify_server_cert_signed_by_trust_anchor(
                &leaf,
                &roots,
                &intermediates[..i],
                now,
                algs,
            ) {
                Err(e) => ta_error = Some(format!("{t} matched, but the chain to it fails: {e}")),
                Ok(())
                    if self
                        .names
                        .iter()
                        .any(|n| verify_server_name(&leaf, n).is_ok()) =>
                {
                    return Ok(t.clone());
                }
                Ok(()) => {
                    let names: Vec<String> = self.names.iter().map(|n| n.to_str().into()).collect();
                    ta_error = Some(format!(
                        "{t} matched, but the certificate names none of {}",
                        names.join(", ")
                    ));
                }
            }
        }
        let tried: Vec<String> = self.records.iter().map(Tlsa::to_string).collect();
        let presented = format!(
            "3 1 1 {} / 3 0 1 {}",
            hex(&sha256(leaf_spki.as_ref())),
            hex(&sha256(ee.as_ref()))
        );
        Err(match ta_error {
            Some(e) => format!("{e} (the server's certificate is {presented})"),
            None => format!(
                "no TLSA record matched (tried {}; the server's certificate is {presented})",
                tried.join(", ")
            ),
        })
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        match self.check(end_entity, intermediates, now) {
            Ok(t) => {
                self.record(Verdict::Matched(t));
                Ok(ServerCertVerified::assertion())
            }
            Err(why) => {
                self.record(Verdict::Failed(why));
                Err(Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[path = "dane_tests.rs"]
mod tests;
