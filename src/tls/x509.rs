//! Just enough X.509 (RFC 5280 §4.1) to show an administrator a
//! certificate: subject, issuer, expiry and the SHA2-256 of its
//! SubjectPublicKeyInfo. Nothing here decides trust; rustls-webpki does.

use super::dane::{hex, sha256};

/// What `posternctl tls-check` prints for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `CN=mx.example.org, O=Example` (the attributes we can name).
    pub subject: String,
    /// Likewise.
    pub issuer: String,
    /// `2027-03-01 12:00:00 UTC`.
    pub not_after: String,
    /// SHA2-256 of the SubjectPublicKeyInfo, hex: a `3 1 1` record's data.
    pub spki_sha256: String,
}

/// One DER element: tag, contents, and the rest after it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The whole element (header included) and the rest.
fn whole(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, _, rest) = element(der)?;
    Some((&der[..der.len() - rest.len()], rest))
}

fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    // 2.5.4.x: id-at (RFC 5280 Appendix A.1).
    match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x0a] => Some("O"),
        [0x55, 0x04, 0x0b] => Some("OU"),
        _ => None,
    }
}

/// A Name as `CN=…, O=…`, attributes in certificate order.
fn name(der: &[u8]) -> Option<String> {
    let (_, mut rdns, _) = element(der)?;
    let mut parts = Vec::new();
    // Bounded by the input: each pass consumes at least two bytes.
    while !rdns.is_empty() {
        let (_, set, rest) = element(rdns)?;
        rdns = rest;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, rest) = element(atvs)?;
            atvs = rest;
            let (_, oid, value) = element(atv)?;
            let (_, text, _) = element(value)?;
            if let Some(n) = attribute_name(oid) {
                let text: String = String::from_utf8_lossy(text)
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                parts.push(format!("{n}={text}"));
            }
        }
    }
    Some(if parts.is_empty() {
        "(no name)".into()
    } else {
        parts.join(", ")
    })
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSSZ`.
fn time(der: &[u8]) -> Option<String> {
    let (tag, t, _) = element(der)?;
    let t = std::str::from_utf8(t).ok()?;
    let full = match tag {
        0x17 if t.len() == 13 => {
            // RFC 5280 §4.1.2.5.1: YY < 50 is 20YY.
            let yy: u32 = t[..2].parse().ok()?;
            format!("{}{t}", if yy < 50 { "20" } else { "19" })
        }
        0x18 if t.len() == 15 => t.to_string(),
        _ => return None,
    };
    if !full[..14].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    ))
}

/// Summarise a DER certificate; `None` when it does not parse.
pub fn summary(cert: &[u8]) -> Option<Summary> {
    let (_, cert, _) = element(cert)?;
    let (_, tbs, _) = element(cert)?;
    let mut rest = tbs;
    // [0] EXPLICIT version, when present.
    if rest.first() == Some(&0xa0) {
        rest = element(rest)?.2;
    }
    let (_, _, rest) = element(rest)?; // serialNumber
    let (_, _, rest) = element(rest)?; // signature
    let (issuer, rest) = whole(rest)?;
    let (_, validity, rest) = element(rest)?;
    let (subject, rest) = whole(rest)?;
    let (spki, _) = whole(rest)?;
    let (_, after) = whole(validity)?;
    Some(Summary {
        subject: name(subject)?,
        issuer: name(issuer)?,
        not_after: time(after)?,
        spki_sha256: hex(&sha256(spki)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData, date_time_ymd};

    #[test]
    fn summarises_what_rcgen_made() {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["mx.example.test".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "mx.example.test");
        p.distinguished_name
            .push(DnType::OrganizationName, "Example");
        p.not_after = date_time_ymd(2031, 7, 9);
        let cert = p.self_signed(&key).unwrap();
        let s = summary(cert.der()).unwrap();
        assert_eq!(s.subject, "CN=mx.example.test, O=Example");
        assert_eq!(s.issuer, s.subject);
        assert_eq!(s.not_after, "2031-07-09 00:00:00 UTC");
        assert_eq!(s.spki_sha256, hex(&sha256(&key.subject_public_key_info())));
        // Truncated or garbage input is None, never a panic.
        let der = cert.der().as_ref();
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert_eq!(summary(&der[..cut]), None, "cut at {cut}");
        }
        assert_eq!(summary(b"\x30\x84\xff\xff\xff\xff"), None);
    }
}
