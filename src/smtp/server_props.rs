//! Property tests: random byte streams against the parser and the state
//! machine. No panic, every reply from the table (or one of the few built at
//! run time), and no message begun without an accepted MAIL and RCPT.

use proptest::prelude::*;

use super::*;
use crate::smtp::reply::ALL;

struct AnyPolicy;

impl Policy for AnyPolicy {
    fn check_rcpt(&self, _: &Client, rcpt: &Mailbox) -> Result<String, Reply> {
        if rcpt.local.starts_with('x') {
            Err(reply::RELAY_DENIED)
        } else {
            Ok("local".into())
        }
    }
    fn check_auth(&self, user: &str, pass: &[u8]) -> bool {
        user == "alice" && pass == b"secret"
    }
}

const PIECES: &[&[u8]] = &[
    b"EHLO a.test\r\n",
    b"HELO a.test\r\n",
    b"MAIL FROM:<s@a.test>\r\n",
    b"MAIL FROM:<s@a.test> SIZE=99999999\r\n",
    b"RCPT TO:<bob@b.test>\r\n",
    b"RCPT TO:<xbob@b.test>\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"body text\r\n",
    b"..dot\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    b"AUTH LOGIN\r\n",
    b"*\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"\r",
    b"\n",
    b"\0",
];

fn stream() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let piece = prop_oneof![
        3 => proptest::sample::select(PIECES).prop_map(|p| p.to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(piece, 0..60)
}

fn params(tls: TlsMode) -> Params {
    Params {
        hostname: "mx.test".into(),
        tls,
        tls_available: true,
        auth: true,
        max_message_size: 4096,
        max_recipients: 3,
        max_errors: 20,
        max_auth_failures: 3,
        auth_failure_delay: Duration::ZERO,
        max_hops: 50,
        bare_newline: BareNewline::Reject,
        auth_failures_per_ip: 10,
        junk_commands: 100,
    }
}

fn check_stream(tls: TlsMode, chunks: Vec<Vec<u8>>, cut: usize) -> Result<(), TestCaseError> {
    let implicit = (tls == TlsMode::Implicit).then(|| TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "X".into(),
        sni: None,
        client_cert: None,
    });
    let mut s = Session::new(
        params(tls),
        Arc::new(AnyPolicy),
        "192.0.2.1".parse().unwrap(),
        implicit,
    );
    let bytes: Vec<u8> = chunks.concat();
    // Feed in two parts split at an arbitrary point, as reads would.
    let cut = cut.min(bytes.len());
    let mut began = false;
    for part in [&bytes[..cut], &bytes[cut..]] {
        s.feed(part);
        // Bounded: each step consumes input or ends in NeedInput.
        for _ in 0..100_000 {
            match s.next_action() {
                Action::NeedInput => break,
                Action::Reply(r) => {
                    let dynamic =
                        matches!(r.code, 220 | 250 | 334) || r.text.starts_with("Ok: queued as ");
                    prop_assert!(
                        dynamic || ALL.contains(&&r),
                        "reply not in the table: {}",
                        r
                    );
                    if r.code == 354 {
                        prop_assert!(began, "354 without a begun message");
                    }
                }
                Action::BeginMessage => {
                    let tx = s.transaction();
                    prop_assert!(tx.rcpts.iter().all(|r| !r.addr.local.starts_with('x')));
                    prop_assert!(!tx.rcpts.is_empty(), "DATA accepted without RCPT");
                    began = true;
                    s.message_opened(Ok(("ID".into(), "DATE".into())));
                }
                Action::Commit => {
                    began = false;
                    s.queued(Ok(()));
                }
                Action::StartTls { .. } => s.tls_started(TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "X".into(),
                    sni: None,
                    client_cert: None,
                }),
                Action::Abort => began = false,
                Action::Body(_) | Action::Sleep(_) | Action::Close => {}
            }
        }
    }
    Ok(())
}

/// Bytes at the end of `stored` after the last commit or abort marker.
fn unsaved(stored: &[u8]) -> usize {
    let marks = [&b"<commit>"[..], b"<abort>"];
    (0..=stored.len())
        .rev()
        .find(|&i| marks.iter().any(|m| stored[..i].ends_with(m)))
        .map_or(stored.len(), |i| stored.len() - i)
}

/// Play `parts` as successive reads; the replies and the bytes stored.
fn play(parts: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
    play_with(BareNewline::Reject, parts)
}

fn play_with(bare: BareNewline, parts: &[&[u8]]) -> (Vec<String>, Vec<u8>) {
    let mut p = params(TlsMode::Off);
    p.max_message_size = 1 << 20;
    p.bare_newline = bare;
    let mut s = Session::new(p, Arc::new(AnyPolicy), "192.0.2.1".parse().unwrap(), None);
    let (mut replies, mut stored) = (Vec::new(), Vec::new());
    for part in parts {
        s.feed(part);
        for _ in 0..100_000 {
            match s.next_action() {
                Action::NeedInput => break,
                Action::Reply(r) => replies.push(r.to_string()),
                Action::BeginMessage => s.message_opened(Ok(("ID".into(), "DATE".into()))),
                Action::Body(b) => stored.extend_from_slice(&b),
                Action::Commit => {
                    stored.extend_from_slice(b"<commit>");
                    s.queued(Ok(()));
                }
                // What an aborted message had stored is thrown away with
                // it; how much it was depends on the reads.
                Action::Abort => {
                    stored.truncate(stored.len() - unsaved(&stored));
                    stored.extend_from_slice(b"<abort>");
                }
                _ => {}
            }
        }
    }
    (replies, stored)
}

const DATA_TOKENS: &[&[u8]] = &[
    b"\r",
    b"\n",
    b"\r\n",
    b".",
    b"\r.\r\n",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\r\n",
    b"..x\r\n",
];

/// Bytes around the 16 KiB piece boundary: runs long enough to be taken
/// in pieces, and every line-end and dot combination between them.
fn data_stream() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        2 => (16_370usize..16_400).prop_map(|n| vec![b'A'; n]),
        1 => (1usize..40).prop_map(|n| vec![b'b'; n]),
        4 => proptest::sample::select(DATA_TOKENS).prop_map(|t| t.to_vec()),
    ];
    proptest::collection::vec(token, 1..8).prop_map(|ts| {
        let mut all =
            b"EHLO a.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n".to_vec();
        all.extend(ts.concat());
        all.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
        all
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Where reads split the stream changes nothing, neither
    /// the replies nor a byte of what is stored.
    #[test]
    fn data_verdict_does_not_depend_on_read_boundaries(
        bytes in data_stream(),
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>(), 0usize..3), 1..4),
        normalize in any::<bool>(),
    ) {
        let mode = if normalize { BareNewline::Normalize } else { BareNewline::Reject };
        let whole = play_with(mode, &[&bytes]);
        // Half the cuts fall just before, at or after a CR or LF, where the
        // line state has to cross from one read to the next.
        let ends: Vec<usize> = (0..bytes.len()).filter(|&i| matches!(bytes[i], b'\r' | b'\n')).collect();
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|(c, near_end, off)| match near_end {
                true => (ends[c.index(ends.len())] + off).min(bytes.len()),
                false => c.index(bytes.len() + 1),
            })
            .collect();
        at.sort_unstable();
        let mut parts = Vec::new();
        let mut from = 0;
        for c in at {
            parts.push(&bytes[from..c]);
            from = c;
        }
        parts.push(&bytes[from..]);
        prop_assert_eq!(play_with(mode, &parts), whole);
    }
}

#[test]
fn data_split_at_every_offset_around_the_piece_boundary() {
    // The smuggling reproductions, each cut at every offset near the
    // boundary: the smuggling attempt is refused and the legitimate long
    // line with a split CRLF is accepted, whatever the split.
    let head = b"EHLO a.test\r\nMAIL FROM:<s@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\nSubject: x\r\n\r\n";
    let cases: [(Vec<u8>, &str); 2] = [
        (
            [
                &[b'A'; 16384][..],
                b"\r.\r\nMAIL FROM:<ceo@a.test>\r\n\r\n.\r\n",
            ]
            .concat(),
            "554",
        ),
        ([&[b'A'; 20000][..], b"\r\n.\r\n"].concat(), "250 2.0.0"),
    ];
    for (body, want) in cases {
        let bytes = [&head[..], &body].concat();
        let whole = play(&[&bytes]);
        assert!(whole.0.iter().any(|r| r.starts_with(want)), "{:?}", whole.0);
        for cut in bytes.len() - 4100..bytes.len() {
            for second in [cut, cut + 1, bytes.len() - 3] {
                let second = second.clamp(cut, bytes.len());
                let parts = [&bytes[..cut], &bytes[cut..second], &bytes[second..]];
                assert_eq!(play(&parts), whole, "cut at {cut} and {second}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = command::parse(&line);
    }

    #[test]
    fn paths_never_panic(s in "\\PC{0,80}") {
        let _ = crate::smtp::address::parse_path(&s);
        let _ = crate::smtp::address::parse_mailbox(&s);
    }

    #[test]
    fn sessions_hold_their_invariants(chunks in stream(), cut in 0usize..4000, mode in 0u8..4) {
        let tls = [TlsMode::Off, TlsMode::Optional, TlsMode::Required, TlsMode::Implicit][mode as usize];
        check_stream(tls, chunks, cut)?;
    }

    #[test]
    fn replies_parse_back(lines in proptest::collection::vec("[ -~]{0,40}", 1..5), code in 200u16..600) {
        let r = Reply::dynamic(code, "", &lines);
        let mut wire = Vec::new();
        r.write_to(&mut wire);
        let (back, used) = crate::smtp::response::parse(&wire).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(back.code, code);
        prop_assert_eq!(back.lines, lines);
    }
}
