//! The little JSON postern writes (tls-check, TLS reports): strings
//! escaped per RFC 8259 §7; objects and arrays are put together with
//! `format!` by their callers.

use std::fmt::Write as _;

/// `s` as a JSON string, quotes included.
pub fn string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON array of strings.
pub fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let each: Vec<String> = items.into_iter().map(string).collect();
    format!("[{}]", each.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        assert_eq!(strings(["x", "y\""]), "[\"x\",\"y\\\"\"]");
        assert_eq!(strings(std::iter::empty()), "[]");
    }
}
