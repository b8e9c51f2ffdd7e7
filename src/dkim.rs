//! A DKIM signer (RFC 6376) for the mail postern writes itself: TLS
//! reports, which receivers must ignore unless they carry a valid DKIM
//! signature of the reporting domain (RFC 8460 §3). rsa-sha256 with
//! relaxed/relaxed canonicalisation (§3.4.2, §3.4.4), no `l=` tag.

use std::path::Path;

use aws_lc_rs::{digest, rand, signature};
use base64::Engine as _;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

/// A signing key with its domain and selector.
pub struct Signer {
    key: signature::RsaKeyPair,
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer {{ d={}, s={} }}", self.domain, self.selector)
    }
}

impl Signer {
    /// Read an RSA key (PEM, PKCS#8 or PKCS#1) for `domain`'s `selector`;
    /// the error names the file and what is wrong.
    pub fn from_file(path: &Path, domain: &str, selector: &str) -> Result<Signer, String> {
        crate::tls::pki::check_key_mode(path)?;
        let der = PrivateKeyDer::from_pem_file(path)
            .map_err(|e| format!("DKIM key {}: {e}", path.display()))?;
        let key = match &der {
            PrivateKeyDer::Pkcs8(k) => signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => signature::RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => {
                return Err(format!(
                    "DKIM key {}: not an RSA key (rsa-sha256 is what every verifier supports)",
                    path.display()
                ));
            }
        }
        .map_err(|e| format!("DKIM key {}: {e}", path.display()))?;
        Ok(Signer {
            key,
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
        })
    }

    /// The `DKIM-Signature:` header line (with its CRLF) for a message
    /// of `headers` (each `Name: value`, unfolded) and `body` (CRLF
    /// lines), signing the headers named in `signed` at time `now`.
    pub fn sign(
        &self,
        headers: &[(&str, &str)],
        body: &[u8],
        signed: &[&str],
        now: u64,
    ) -> Result<String, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let bh = b64.encode(digest::digest(&digest::SHA256, &relaxed_body(body)));
        // Each name once, for its last occurrence (RFC 6376 §5.4.2).
        let present: Vec<&str> = signed
            .iter()
            .copied()
            .filter(|n| headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n)))
            .collect();
        let value = format!(
            "v=1; a=rsa-sha256; c=relaxed/relaxed; d={}; s={}; t={now}; h={}; bh={bh}; b=",
            self.domain,
            self.selector,
            present.join(":").to_ascii_lowercase()
        );
        let mut data = String::new();
        for name in &present {
            if let Some((h, v)) = headers
                .iter()
                .rev()
                .find(|(h, _)| h.eq_ignore_ascii_case(name))
            {
                data.push_str(&relaxed_header(h, v));
                data.push_str("\r\n");
            }
        }
        // The signature header itself, b= empty, without its CRLF (§3.7).
        data.push_str(&relaxed_header("DKIM-Signature", &value));
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &rand::SystemRandom::new(),
                data.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "DKIM signing failed".to_string())?;
        Ok(format!("DKIM-Signature: {value}{}\r\n", b64.encode(&sig)))
    }
}

/// Relaxed header canonicalisation (RFC 6376 §3.4.2).
pub fn relaxed_header(name: &str, value: &str) -> String {
    let value = value.replace("\r\n", "");
    let mut out = String::with_capacity(name.len() + value.len() + 1);
    out.push_str(&name.trim().to_ascii_lowercase());
    out.push(':');
    out.push_str(&squeeze(value.trim_matches([' ', '\t'])));
    out
}

/// Runs of spaces and tabs as one space (a trailing run too; the callers
/// trim what they must).
fn squeeze(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c == ' ' || c == '\t' {
            space = true;
        } else {
            if space {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    if space {
        out.push(' ');
    }
    out
}

/// Relaxed body canonicalisation (RFC 6376 §3.4.4).
pub fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(body);
    let mut lines: Vec<String> = text
        .split("\r\n")
        .map(|l| squeeze(l).trim_end_matches(' ').to_string())
        .collect();
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6376 §3.4.6's example.
    #[test]
    fn canonicalisation_as_in_rfc_6376() {
        assert_eq!(relaxed_header("A", " X"), "a:X");
        assert_eq!(relaxed_header("B ", " Y\t\r\n\tZ  "), "b:Y Z");
        assert_eq!(relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
        assert_eq!(relaxed_body(b""), b"");
        assert_eq!(relaxed_body(b"\r\n\r\n"), b"");
        assert_eq!(relaxed_body(b"no end"), b"no end\r\n");
    }

    #[test]
    fn signs_so_that_the_public_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
        // rcgen cannot make RSA keys with aws-lc-rs; use openssl when present.
        let path = dir.path().join("k.pem");
        let made = match key {
            Ok(k) => {
                std::fs::write(&path, k.serialize_pem()).unwrap();
                true
            }
            Err(_) => std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                ])
                .arg(&path)
                .output()
                .is_ok_and(|o| o.status.success()),
        };
        assert!(made, "no RSA key generator (rcgen or openssl)");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let open = Signer::from_file(&path, "example.org", "sel").unwrap_err();
        assert!(open.contains("chmod 600"), "{open}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Signer::from_file(&path, "Example.ORG", "sel").unwrap();
        let headers = [
            ("From", "a@example.org"),
            ("Subject", "x  y"),
            ("X-Not", "z"),
        ];
        let body = b"hello \r\nworld\r\n\r\n";
        let h = s
            .sign(&headers, body, &["from", "subject", "date"], 1000)
            .unwrap();
        assert!(h.starts_with("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel; t=1000; h=from:subject; bh="), "{h}");
        let value = h.trim_start_matches("DKIM-Signature: ").trim_end();
        let (unsigned, b) = value.rsplit_once("b=").unwrap();
        let data = format!(
            "from:a@example.org\r\nsubject:x y\r\n{}",
            relaxed_header("DKIM-Signature", &format!("{unsigned}b="))
        );
        let sig = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
        let der = PrivateKeyDer::from_pem_file(&path).unwrap();
        let pair = match der {
            PrivateKeyDer::Pkcs8(k) => {
                signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).unwrap()
            }
            _ => panic!("expected PKCS#8"),
        };
        use aws_lc_rs::signature::KeyPair as _;
        let public = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            pair.public_key().as_ref(),
        );
        public.verify(data.as_bytes(), &sig).unwrap();
        let bh = base64::engine::general_purpose::STANDARD
            .encode(digest::digest(&digest::SHA256, b"hello\r\nworld\r\n"));
        assert!(h.contains(&format!("bh={bh};")), "{h}");
    }
}
