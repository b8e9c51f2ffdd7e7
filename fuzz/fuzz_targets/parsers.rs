//! Arbitrary bytes into the parsers of what remote servers send outside
//! SMTP: MTA-STS TXT records and policy files (RFC 8461 §3), HTTP
//! responses, certificates summarised for tls-check, and PROXY protocol
//! headers. None may panic,
//! and no body may pass the HTTP parser's size cap.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 5 {
        0 => {
            if let Ok(p) = postern::sts::parse_policy(&text) {
                assert!(p.max_age <= 31_557_600);
                for host in ["mx.example", "a.b.example", "example"] {
                    let _ = p.mx_matches(host);
                }
            }
        }
        1 => {
            let records: Vec<String> = text.split('\n').map(str::to_string).collect();
            if let Ok(id) = postern::sts::txt_id(&records) {
                assert!(!id.is_empty() && id.len() <= 32);
            }
        }
        2 => {
            let whole = postern::https::parse(rest, 1024, true);
            // Prefixes, as the reads arrive.
            for cut in [rest.len() / 3, rest.len() / 2] {
                if let Ok(Some(r)) = postern::https::parse(&rest[..cut], 1024, false) {
                    assert!(r.body.len() <= 1024);
                }
            }
            if let Ok(Some(r)) = whole {
                assert!(r.body.len() <= 1024);
            }
        }
        3 => {
            let _ = postern::tls::x509::summary(rest);
        }
        _ => {
            // A complete header is never longer than its input, and every
            // prefix of a complete header is incomplete, not an error.
            if let Ok(Some((_, used))) = postern::net::proxy::parse(rest) {
                assert!(used <= rest.len());
                for cut in [0, used / 2, used.saturating_sub(1)] {
                    assert_eq!(postern::net::proxy::parse(&rest[..cut]), Ok(None));
                }
            }
        }
    }
});
