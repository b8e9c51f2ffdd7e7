//! `pki NAME cert FILE` / `pki NAME key FILE`: PEM loading with
//! rustls-pki-types' `PemObject`, and the key-permission check.
//!
//! A private key readable or writable by group or others is refused, as
//! OpenSMTPD does: the message names the file and the `chmod 600` fix.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A loaded certificate chain and key.
#[derive(Debug)]
pub struct Pki {
    /// The `pki` name, also the SNI name it answers to.
    pub name: String,
    /// Certificate file.
    pub cert_path: PathBuf,
    /// Key file.
    pub key_path: PathBuf,
    /// Chain and signing key, ready for rustls.
    pub key: Arc<CertifiedKey>,
}

/// Refuse a key file with any group or other permission bit.
pub fn check_key_mode(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "key file {} is accessible by group or others (mode {mode:03o}); run: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

impl Pki {
    /// Load and check one pki.
    pub fn load(name: &str, cert: &Path, key: &Path) -> Result<Pki, String> {
        check_key_mode(key)?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| {
                format!(
                    "pki {name}: cannot read certificate {}: {e}",
                    cert.display()
                )
            })?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("pki {name}: bad PEM in certificate {}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!(
                "pki {name}: no certificate found in {}",
                cert.display()
            ));
        }
        let der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            format!(
                "pki {name}: cannot read a private key from {}: {e}",
                key.display()
            )
        })?;
        let certified = CertifiedKey::from_der(chain, der, &super::provider()).map_err(|e| {
            format!(
                "pki {name}: key {} does not fit certificate {}: {e}",
                key.display(),
                cert.display()
            )
        })?;
        Ok(Pki {
            name: name.to_string(),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            key: Arc::new(certified),
        })
    }
}
