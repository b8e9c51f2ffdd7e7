//! postern.conf tokens with their line numbers.
//!
//! One directive per line; a trailing `\` or an open `{` continues it on the
//! next line. `#` starts a comment outside quotes. `<name>` is a table
//! reference, as in OpenSMTPD's smtpd.conf.

use super::ConfigError;

/// One token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// A bare word.
    Word(String),
    /// A `"quoted string"`.
    Quoted(String),
    /// `<name>`.
    TableRef(String),
    /// `{`.
    Open,
    /// `}`.
    Close,
    /// `,`.
    Comma,
}

impl Token {
    /// The text of a word or quoted string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Token::Word(s) | Token::Quoted(s) => Some(s),
            _ => None,
        }
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Word(s) => write!(f, "{s}"),
            Token::Quoted(s) => write!(f, "\"{s}\""),
            Token::TableRef(s) => write!(f, "<{s}>"),
            Token::Open => f.write_str("{"),
            Token::Close => f.write_str("}"),
            Token::Comma => f.write_str(","),
        }
    }
}

/// A directive: its tokens and the line it starts on.
#[derive(Clone, Debug)]
pub struct Line {
    /// 1-based line number.
    pub line: usize,
    /// Tokens, comments removed.
    pub tokens: Vec<Token>,
}

/// Split a whole file into directives.
pub fn lex(file: &str, text: &str) -> Result<Vec<Line>, ConfigError> {
    let mut out = Vec::new();
    let mut current: Option<Line> = None;
    let mut depth = 0usize;
    for (i, raw) in text.lines().enumerate() {
        let lineno = i + 1;
        let err = |msg: String| ConfigError::at(file, lineno, msg);
        let mut tokens = Vec::new();
        let mut chars = raw.chars().peekable();
        let mut continued = false;
        while let Some(&c) = chars.peek() {
            match c {
                ' ' | '\t' => {
                    chars.next();
                }
                '#' => break,
                '{' | '}' | ',' => {
                    chars.next();
                    tokens.push(match c {
                        '{' => {
                            depth += 1;
                            Token::Open
                        }
                        '}' => {
                            depth = depth
                                .checked_sub(1)
                                .ok_or_else(|| err("unmatched '}'".into()))?;
                            Token::Close
                        }
                        _ => Token::Comma,
                    });
                }
                '"' => {
                    chars.next();
                    let mut s = String::new();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(c) => s.push(c),
                                None => return Err(err("unterminated quoted string".into())),
                            },
                            Some(c) => s.push(c),
                            None => return Err(err("unterminated quoted string".into())),
                        }
                    }
                    tokens.push(Token::Quoted(s));
                }
                '\\' => {
                    chars.next();
                    if chars.clone().all(char::is_whitespace) {
                        continued = true;
                        break;
                    }
                    return Err(err("'\\' is only allowed at the end of a line".into()));
                }
                _ => {
                    let mut w = String::new();
                    while let Some(&c) = chars.peek() {
                        if c.is_whitespace() || "#{},\"".contains(c) {
                            break;
                        }
                        w.push(c);
                        chars.next();
                    }
                    tokens.push(
                        match w.strip_prefix('<').and_then(|w| w.strip_suffix('>')) {
                            Some(name) if !name.is_empty() => Token::TableRef(name.to_string()),
                            _ => Token::Word(w),
                        },
                    );
                }
            }
        }
        let cur = current.get_or_insert_with(|| Line {
            line: lineno,
            tokens: Vec::new(),
        });
        cur.tokens.extend(tokens);
        if !continued
            && depth == 0
            && let Some(done) = current.take().filter(|l| !l.tokens.is_empty())
        {
            out.push(done);
        }
    }
    if let Some(open) = current.filter(|l| !l.tokens.is_empty()) {
        return Err(ConfigError::at(
            file,
            open.line,
            "unterminated '{' or '\\' continuation".into(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(l: &Line) -> Vec<String> {
        l.tokens.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn tokens_and_comments() {
        let l = lex(
            "f",
            "listen on 127.0.0.1 port 25 auth <users> # comment\n\n# only\n",
        )
        .unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].line, 1);
        assert_eq!(
            words(&l[0]),
            ["listen", "on", "127.0.0.1", "port", "25", "auth", "<users>"]
        );
        assert_eq!(l[0].tokens[6], Token::TableRef("users".into()));
    }

    #[test]
    fn quoted_and_continued() {
        let l = lex(
            "f",
            "queue \"/var/spool/my # queue\"\naction \"x\" \\\n  maildir \"/m\"\n",
        )
        .unwrap();
        assert_eq!(
            l[0].tokens[1],
            Token::Quoted("/var/spool/my # queue".into())
        );
        assert_eq!(l[1].line, 2);
        assert_eq!(words(&l[1]), ["action", "\"x\"", "maildir", "\"/m\""]);
    }

    #[test]
    fn braces_span_lines() {
        let l = lex("f", "table t {\n a,\n b }\nhostname x\n").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(words(&l[0]), ["table", "t", "{", "a", ",", "b", "}"]);
        assert_eq!(l[1].line, 4);
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            lex("p.conf", "a\nqueue \"x\n").unwrap_err().to_string(),
            "p.conf:2: unterminated quoted string"
        );
        assert_eq!(
            lex("p.conf", "a }\n").unwrap_err().to_string(),
            "p.conf:1: unmatched '}'"
        );
        assert!(
            lex("p.conf", "table t {\na\n")
                .unwrap_err()
                .to_string()
                .starts_with("p.conf:1:")
        );
    }
}
