//! The DANE matcher against certificate chains made here (rcgen): every
//! usage, selector and matching type, digest agility, and the DANE-TA
//! cases a verifier gets wrong (anchor not sent, wrong name, expired leaf,
//! a foreign leaf that copies the real anchor into its chain).

use super::*;
use aws_lc_rs::digest::{SHA256, SHA512, digest};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, PublicKeyData,
    date_time_ymd,
};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    spki: Vec<u8>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let spki = key.subject_public_key_info();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ca {
        issuer: CertifiedIssuer::self_signed(p, key).unwrap(),
        spki,
    }
}

struct Leaf {
    der: CertificateDer<'static>,
    spki: Vec<u8>,
}

fn leaf(name: &str, by: &Ca, expired: bool) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
    if expired {
        p.not_before = date_time_ymd(2019, 1, 1);
        p.not_after = date_time_ymd(2020, 1, 1);
    }
    let cert = p.signed_by(&key, &by.issuer).unwrap();
    Leaf {
        der: cert.der().clone(),
        spki: key.subject_public_key_info(),
    }
}

fn rec(usage: u8, selector: u8, matching: u8, content: &[u8]) -> Tlsa {
    let data = match matching {
        0 => content.to_vec(),
        1 => digest(&SHA256, content).as_ref().to_vec(),
        _ => digest(&SHA512, content).as_ref().to_vec(),
    };
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

fn wrong(usage: u8, selector: u8, matching: u8) -> Tlsa {
    rec(usage, selector, matching, b"some other key")
}

fn verify(records: &[Tlsa], chain: &[CertificateDer<'static>]) -> Result<(), Verdict> {
    let v = DaneVerifier::new(
        records,
        &["mx1.secure.test", "secure.test"],
        crate::tls::provider(),
    );
    let name = ServerName::try_from("mx1.secure.test").unwrap();
    let r = v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now());
    match (r, v.verdict()) {
        (Ok(_), Some(Verdict::Matched(_))) => Ok(()),
        (Err(_), Some(v @ Verdict::Failed(_))) => Err(v),
        (r, v) => panic!("result {r:?} with verdict {v:?}"),
    }
}

#[test]
fn every_usage_selector_and_matching_type() {
    let root = ca("Test Root");
    let good = leaf("mx1.secure.test", &root, false);
    let root_der = root.issuer.der().clone();
    let chain = vec![good.der.clone(), root_der.clone()];
    // (records, should match)
    let cases: Vec<(&str, Vec<Tlsa>, bool)> = vec![
        ("3 0 0", vec![rec(3, 0, 0, &good.der)], true),
        ("3 0 1", vec![rec(3, 0, 1, &good.der)], true),
        ("3 0 2", vec![rec(3, 0, 2, &good.der)], true),
        ("3 1 0", vec![rec(3, 1, 0, &good.spki)], true),
        ("3 1 1", vec![rec(3, 1, 1, &good.spki)], true),
        ("3 1 2", vec![rec(3, 1, 2, &good.spki)], true),
        ("2 0 0", vec![rec(2, 0, 0, &root_der)], true),
        ("2 0 1", vec![rec(2, 0, 1, &root_der)], true),
        ("2 0 2", vec![rec(2, 0, 2, &root_der)], true),
        ("2 1 0", vec![rec(2, 1, 0, &root.spki)], true),
        ("2 1 1", vec![rec(2, 1, 1, &root.spki)], true),
        ("2 1 2", vec![rec(2, 1, 2, &root.spki)], true),
        ("3 1 1 wrong", vec![wrong(3, 1, 1)], false),
        ("2 1 1 wrong", vec![wrong(2, 1, 1)], false),
        // The leaf's key under a TA usage, the root's under an EE usage.
        ("2 1 1 of the leaf", vec![rec(2, 1, 1, &good.spki)], false),
        ("3 1 1 of the root", vec![rec(3, 1, 1, &root.spki)], false),
        // PKIX usages are unusable for SMTP (RFC 7672 §3.1.3), even when
        // they would match.
        ("1 1 1", vec![rec(1, 1, 1, &good.spki)], false),
        ("0 1 1", vec![rec(0, 1, 1, &root.spki)], false),
        // One matching record among wrong ones is enough.
        (
            "wrong + 3 1 1",
            vec![wrong(3, 1, 1), wrong(2, 0, 1), rec(3, 1, 1, &good.spki)],
            true,
        ),
        // The leaf was re-keyed but the TA record still matches: that
        // authenticates (a verifier that demands an EE match whenever EE
        // records exist gets this wrong).
        (
            "stale 3 1 1 + 2 1 1",
            vec![wrong(3, 1, 1), rec(2, 1, 1, &root.spki)],
            true,
        ),
    ];
    for (what, records, want) in cases {
        let got = verify(&records, &chain);
        assert_eq!(got.is_ok(), want, "{what}: {got:?}");
    }
}

#[test]
fn digest_agility_prefers_sha512() {
    let root = ca("Test Root");
    let good = leaf("mx1.secure.test", &root, false);
    let chain = vec![good.der.clone()];
    // A SHA2-512 record for (3, 1) pushes out the SHA2-256 ones, even
    // the matching one (RFC 7671 §9).
    assert!(verify(&[rec(3, 1, 1, &good.spki), wrong(3, 1, 2)], &chain).is_err());
    assert!(verify(&[wrong(3, 1, 1), rec(3, 1, 2, &good.spki)], &chain).is_ok());
    // Only within the same usage and selector.
    assert!(verify(&[rec(3, 0, 1, &good.der), wrong(3, 1, 2)], &chain).is_ok());
    let selected = select(&[
        wrong(3, 1, 1),
        wrong(3, 1, 2),
        wrong(3, 0, 1),
        wrong(1, 1, 1),
    ]);
    let kinds: Vec<(u8, u8, u8)> = selected
        .iter()
        .map(|t| (t.usage, t.selector, t.matching))
        .collect();
    assert_eq!(kinds, vec![(3, 1, 2), (3, 0, 1)]);
}

#[test]
fn dane_ee_checks_neither_name_nor_dates() {
    let root = ca("Test Root");
    let other = leaf("elsewhere.example", &root, true);
    assert!(
        verify(
            &[rec(3, 1, 1, &other.spki)],
            std::slice::from_ref(&other.der)
        )
        .is_ok()
    );
}

#[test]
fn dane_ta_checks_chain_name_and_dates() {
    let root = ca("Test Root");
    let ta = rec(2, 1, 1, &root.spki);
    let root_der = root.issuer.der().clone();
    // The anchor must be in the chain the server sends (RFC 7672 §3.1.2).
    let good = leaf("mx1.secure.test", &root, false);
    assert!(verify(std::slice::from_ref(&ta), std::slice::from_ref(&good.der)).is_err());
    // The TLSA base domain is a reference identifier too.
    let base = leaf("secure.test", &root, false);
    assert!(
        verify(
            std::slice::from_ref(&ta),
            &[base.der.clone(), root_der.clone()]
        )
        .is_ok()
    );
    // Another name.
    let named = leaf("mx9.elsewhere.test", &root, false);
    let Err(Verdict::Failed(why)) = verify(
        std::slice::from_ref(&ta),
        &[named.der.clone(), root_der.clone()],
    ) else {
        panic!("wrong name accepted");
    };
    assert!(
        why.contains("names none of mx1.secure.test, secure.test"),
        "{why}"
    );
    // Expired under a TA.
    let old = leaf("mx1.secure.test", &root, true);
    assert!(
        verify(
            std::slice::from_ref(&ta),
            &[old.der.clone(), root_der.clone()]
        )
        .is_err()
    );
    // A leaf from another CA, with the real anchor copied into its chain.
    let evil = ca("Test Root");
    let forged = leaf("mx1.secure.test", &evil, false);
    assert!(
        verify(
            std::slice::from_ref(&ta),
            &[forged.der.clone(), root_der.clone()]
        )
        .is_err()
    );
    // Through an intermediate that the anchor signed.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "Test Intermediate");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mid = CertifiedIssuer::signed_by(p, key, &root.issuer).unwrap();
    let mid_spki = mid.key().subject_public_key_info();
    let mid = Ca {
        issuer: mid,
        spki: mid_spki,
    };
    let deep = leaf("mx1.secure.test", &mid, false);
    let chain = [deep.der.clone(), mid.issuer.der().clone(), root_der.clone()];
    assert!(verify(std::slice::from_ref(&ta), &chain).is_ok());
    // The intermediate itself as the anchor.
    assert!(verify(&[rec(2, 1, 1, &mid.spki)], &chain).is_ok());
}

#[test]
fn a_mismatch_says_what_was_tried_and_what_was_presented() {
    let root = ca("Test Root");
    let good = leaf("mx1.secure.test", &root, false);
    let tried = wrong(3, 1, 1);
    let Err(Verdict::Failed(why)) = verify(
        std::slice::from_ref(&tried),
        std::slice::from_ref(&good.der),
    ) else {
        panic!("a wrong record matched");
    };
    let spki_sha256 = hex(digest(&SHA256, &good.spki).as_ref());
    assert!(why.contains(&tried.to_string()), "{why}");
    assert!(why.contains(&format!("3 1 1 {spki_sha256}")), "{why}");
}
