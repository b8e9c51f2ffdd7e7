//! Shared by the `make bench` programs.

use std::path::Path;

use postern::spool::envelope::{EnvRcpt, Envelope, RcptState};

/// The envelope of a message from `from` to one pending recipient `to`,
/// routed to `action`, arrived now.
pub fn envelope(from: &str, to: &str, action: &str) -> Envelope {
    Envelope {
        arrival: postern::time::unix_now(),
        from: from.into(),
        helo: "bench".into(),
        client: "127.0.0.1".into(),
        rcpts: vec![EnvRcpt {
            addr: to.into(),
            action: action.into(),
            state: RcptState::Pending,
            attempts: 0,
            next_try: 0,
            error: String::new(),
        }],
        ..Envelope::default()
    }
}

/// Replace the line of bench/RESULTS.md (written by the load bench) that
/// starts with `prefix`, so each program fills in its own figure.
pub fn set_result_line(prefix: &str, line: &str) {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
    let Ok(md) = std::fs::read_to_string(&results) else {
        return;
    };
    let md: Vec<&str> = md
        .lines()
        .map(|l| if l.starts_with(prefix) { line } else { l })
        .collect();
    let _ = std::fs::write(&results, md.join("\n") + "\n");
}
