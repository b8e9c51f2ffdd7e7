//! TLS for both directions: certificates from PEM files ([`pki`]) and the
//! server configuration with SNI ([`server`]).

pub mod client;
pub mod pki;
pub mod server;

use std::sync::Arc;

/// The crypto provider every config is built with (aws-lc-rs: DEPS.md §1).
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
