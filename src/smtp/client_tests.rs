use std::collections::VecDeque;

use super::*;
use crate::smtp::response;

/// A server played from a script: each command line the client sends must
/// start with the next expected prefix, and makes that step's reply
/// available. A reply asked for before its command was sent is an error,
/// so a client that waits where it should have pipelined (or pipelines
/// where it must wait) fails here as it would deadlock on a real server.
struct ScriptedPeer {
    script: VecDeque<(&'static str, &'static str)>,
    ready: VecDeque<Response>,
    /// Inside DATA: the body so far, until CRLF.CRLF.
    body: Option<Vec<u8>>,
    partial: Vec<u8>,
    /// Command lines received, in order.
    seen: Vec<String>,
    /// Bodies received, as sent (still dot-stuffed), without the final `.` line.
    bodies: Vec<Vec<u8>>,
    /// Writes received (to tell a pipelined batch from single commands).
    writes: usize,
}

fn reply(text: &str) -> Response {
    let raw = text.replace('\n', "\r\n") + "\r\n";
    match response::parse(raw.as_bytes()) {
        Ok(Some((r, _))) => r,
        other => panic!("bad scripted reply {text:?}: {other:?}"),
    }
}

impl ScriptedPeer {
    fn new(script: &[(&'static str, &'static str)]) -> ScriptedPeer {
        ScriptedPeer {
            script: script.iter().copied().collect(),
            ready: VecDeque::new(),
            body: None,
            partial: Vec::new(),
            seen: Vec::new(),
            bodies: Vec::new(),
            writes: 0,
        }
    }

    fn step(&mut self, line: &str) -> Result<(), String> {
        self.seen.push(line.to_string());
        let Some((expect, answer)) = self.script.pop_front() else {
            return Err(format!("unscripted command {line:?}"));
        };
        if !line.starts_with(expect) {
            return Err(format!("expected {expect:?}, got {line:?}"));
        }
        if line == "DATA" && answer.starts_with("354") {
            self.body = Some(Vec::new());
        }
        self.ready.push_back(reply(answer));
        Ok(())
    }

    /// Everything was used.
    fn done(&self) -> bool {
        self.script.is_empty() && self.ready.is_empty()
    }
}

impl Wire for ScriptedPeer {
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writes += 1;
        for &b in bytes {
            if let Some(body) = &mut self.body {
                body.push(b);
                if body.ends_with(b"\r\n.\r\n") || body.as_slice() == b".\r\n" {
                    let mut body = self.body.take().unwrap_or_default();
                    body.truncate(body.len() - 3);
                    self.bodies.push(body);
                    self.step(".")?;
                }
                continue;
            }
            self.partial.push(b);
            if self.partial.ends_with(b"\r\n") {
                let line =
                    String::from_utf8_lossy(&self.partial[..self.partial.len() - 2]).into_owned();
                self.partial.clear();
                self.step(&line)?;
            }
        }
        Ok(())
    }

    fn reply(&mut self) -> Result<Response, String> {
        self.ready
            .pop_front()
            .ok_or_else(|| "waited for a reply to a command not yet sent".to_string())
    }
}

const EHLO_ALL: &str =
    "250-mx.test\n250-PIPELINING\n250-SIZE 1000000\n250-8BITMIME\n250 AUTH PLAIN LOGIN";
const EHLO_NONE: &str = "250 mx.test";

fn caps(ehlo: &str) -> Capabilities {
    Capabilities::from_ehlo(&reply(ehlo))
}

#[test]
fn ehlo_is_parsed_and_helo_is_the_fallback() {
    let mut p = ScriptedPeer::new(&[("EHLO me.test", EHLO_ALL)]);
    let Ok(Hello::Ehlo(c)) = hello(&mut p, "me.test") else {
        panic!("EHLO")
    };
    assert!(c.pipelining && c.eight_bit && !c.starttls);
    assert_eq!(c.size, Some(1_000_000));
    assert_eq!(c.auth, ["PLAIN", "LOGIN"]);

    let mut p = ScriptedPeer::new(&[("EHLO", "502 5.5.1 no"), ("HELO me.test", "250 ok")]);
    assert!(matches!(hello(&mut p, "me.test"), Ok(Hello::Helo)));
    assert!(p.done());

    let mut p = ScriptedPeer::new(&[("EHLO", "502 no"), ("HELO", "550 go away")]);
    match hello(&mut p, "me.test") {
        Ok(Hello::Refused(r)) => assert_eq!(r.code, 550),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auth_plain_sends_the_initial_response() {
    // RFC 4616 §2: NUL user NUL password, base64.
    let mut p = ScriptedPeer::new(&[("AUTH PLAIN AHVzZXIAcGFzcw==", "235 2.7.0 ok")]);
    assert_eq!(auth_plain(&mut p, "user", "pass").map(|r| r.code), Ok(235));
    let mut p = ScriptedPeer::new(&[("AUTH PLAIN", "535 5.7.8 no")]);
    assert_eq!(auth_plain(&mut p, "user", "bad").map(|r| r.code), Ok(535));
}

/// (EHLO reply, rcpts, script after EHLO, expected final code per rcpt,
/// expected writes for the envelope).
type Case = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
    &'static [u16],
);

#[test]
fn transactions_as_a_table() {
    let cases: &[Case] = &[
        // Pipelined, all accepted.
        (
            EHLO_ALL,
            &["a@x", "b@x"],
            &[
                ("MAIL FROM:<s@y> SIZE=5 BODY=8BITMIME", "250 ok"),
                ("RCPT TO:<a@x>", "250 ok"),
                ("RCPT TO:<b@x>", "250 ok"),
                ("DATA", "354 go"),
                (".", "250 2.0.0 queued"),
            ],
            &[250, 250],
        ),
        // One recipient refused: the other goes on.
        (
            EHLO_ALL,
            &["a@x", "b@x"],
            &[
                ("MAIL", "250 ok"),
                ("RCPT TO:<a@x>", "550 5.1.1 unknown"),
                ("RCPT TO:<b@x>", "250 ok"),
                ("DATA", "354 go"),
                (".", "250 2.0.0 queued"),
            ],
            &[550, 250],
        ),
        // MAIL refused in a pipelined batch: the RCPT replies are read,
        // every recipient gets the MAIL reply, RSET cleans up.
        (
            EHLO_ALL,
            &["a@x"],
            &[
                ("MAIL", "452 4.3.1 full"),
                ("RCPT", "503 5.5.1 no MAIL"),
                ("RSET", "250 ok"),
            ],
            &[452],
        ),
        // Without pipelining a refused MAIL sends no RCPT.
        (
            EHLO_NONE,
            &["a@x", "b@x"],
            &[("MAIL FROM:<s@y>", "550 5.7.1 not you"), ("RSET", "250 ok")],
            &[550, 550],
        ),
        // Every recipient refused: no DATA.
        (
            EHLO_NONE,
            &["a@x"],
            &[
                ("MAIL", "250 ok"),
                ("RCPT", "450 4.2.0 greylisted"),
                ("RSET", "250 ok"),
            ],
            &[450],
        ),
        // DATA refused: the accepted recipients get its reply.
        (
            EHLO_NONE,
            &["a@x"],
            &[
                ("MAIL", "250 ok"),
                ("RCPT", "250 ok"),
                ("DATA", "554 5.5.1 no valid recipients"),
                ("RSET", "250 ok"),
            ],
            &[554],
        ),
        // The message refused after the data.
        (
            EHLO_NONE,
            &["a@x", "b@x"],
            &[
                ("MAIL", "250 ok"),
                ("RCPT", "250 ok"),
                ("RCPT", "250 ok"),
                ("DATA", "354 go"),
                (".", "554 5.7.1 spam"),
            ],
            &[554, 554],
        ),
    ];
    for (n, &(ehlo, rcpts, script, want)) in cases.iter().enumerate() {
        let mut p = ScriptedPeer::new(script);
        let env = Envelope {
            from: "s@y",
            size: 5,
            eight_bit: true,
            requiretls: false,
            rcpts,
        };
        let r = send_message(&mut p, &caps(ehlo), &env, &mut &b"hi\r\n"[..])
            .unwrap_or_else(|e| panic!("case {n}: {e} after {:?}", p.seen));
        let got: Vec<u16> = (0..rcpts.len()).map(|i| r.for_rcpt(i).code).collect();
        assert_eq!(got, want, "case {n}: {:?}", p.seen);
        assert!(p.done(), "case {n}: script left over: {:?}", p.script);
    }
}

#[test]
fn pipelining_sends_mail_and_rcpts_in_one_write() {
    let script = [
        ("MAIL", "250 ok"),
        ("RCPT", "250 ok"),
        ("RCPT", "250 ok"),
        ("RCPT", "250 ok"),
    ];
    let env = Envelope {
        from: "",
        size: 0,
        eight_bit: false,
        requiretls: false,
        rcpts: &["a@x", "b@x", "c@x"],
    };
    let mut p = ScriptedPeer::new(&script);
    // Stops at DATA (unscripted): only the batch matters here.
    let _ = send_message(&mut p, &caps(EHLO_ALL), &env, &mut &b""[..]);
    assert_eq!(
        p.seen[..4],
        [
            "MAIL FROM:<> SIZE=0",
            "RCPT TO:<a@x>",
            "RCPT TO:<b@x>",
            "RCPT TO:<c@x>"
        ]
    );
    assert_eq!(p.writes, 2, "one batch, then DATA: {:?}", p.seen);

    // Without PIPELINING, one command per write, each after its reply
    // (the peer refuses a reply asked for before its command).
    let mut p = ScriptedPeer::new(&script);
    let _ = send_message(&mut p, &caps(EHLO_NONE), &env, &mut &b""[..]);
    assert_eq!(p.writes, 5, "{:?}", p.seen);

    // REQUIRETLS goes on MAIL FROM when the message asks for it.
    let env = Envelope {
        requiretls: true,
        ..env
    };
    let mut p = ScriptedPeer::new(&script);
    let _ = send_message(&mut p, &caps(EHLO_ALL), &env, &mut &b""[..]);
    assert_eq!(p.seen[0], "MAIL FROM:<> SIZE=0 REQUIRETLS");
}

#[test]
fn the_body_is_dot_stuffed_wherever_it_is_cut() {
    let body: &[u8] = b".leading\r\nmid.dle\r\n..two\r\n.\r\nlast line without CRLF";
    let want: &[u8] = b"..leading\r\nmid.dle\r\n...two\r\n..\r\nlast line without CRLF\r\n";
    // Every split point: the stuffer keeps its state across pieces.
    for cut in 0..body.len() {
        let mut out = Vec::new();
        let mut d = DotStuffer::default();
        d.push(&body[..cut], &mut out);
        d.push(&body[cut..], &mut out);
        d.finish(&mut out);
        assert_eq!(&out[..out.len() - 3], want, "cut at {cut}");
        assert!(out.ends_with(b"\r\n.\r\n"));
    }
    // And through the dialogue, against the peer that unstuffs nothing.
    let mut p = ScriptedPeer::new(&[
        ("MAIL", "250 ok"),
        ("RCPT", "250 ok"),
        ("DATA", "354 go"),
        (".", "250 ok"),
    ]);
    let env = Envelope {
        from: "s@y",
        size: body.len() as u64,
        eight_bit: false,
        requiretls: false,
        rcpts: &["a@x"],
    };
    send_message(&mut p, &caps(EHLO_NONE), &env, &mut &body[..]).unwrap();
    assert_eq!(p.bodies, [want.to_vec()]);
    // An empty body is just the final dot.
    let mut out = Vec::new();
    DotStuffer::default().finish(&mut out);
    assert_eq!(out, b".\r\n");
}

#[test]
fn a_broken_connection_is_an_error_not_a_reply() {
    // The script ends after MAIL: the RCPT reply never comes.
    let mut p = ScriptedPeer::new(&[("MAIL", "250 ok")]);
    let env = Envelope {
        from: "s@y",
        size: 1,
        eight_bit: false,
        requiretls: false,
        rcpts: &["a@x"],
    };
    assert!(send_message(&mut p, &caps(EHLO_NONE), &env, &mut &b"x"[..]).is_err());
    let mut p = ScriptedPeer::new(&[("RSET", "250 ok"), ("QUIT", "221 bye")]);
    assert!(rset(&mut p));
    quit(&mut p);
    assert!(p.done());
    let mut p = ScriptedPeer::new(&[("RSET", "421 4.4.2 closing")]);
    assert!(!rset(&mut p));
    // A refusal stands even when the RSET after it finds the connection
    // gone; the connection is then not used again.
    let mut p = ScriptedPeer::new(&[("MAIL", "250 ok"), ("RCPT", "451 4.7.1 later")]);
    let r = send_message(&mut p, &caps(EHLO_NONE), &env, &mut &b"x"[..]).unwrap();
    assert_eq!((r.for_rcpt(0).code, r.reusable), (451, false));
}
