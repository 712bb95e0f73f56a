//! Tokens of the expression language, with their byte positions.

use super::ExprError;

/// One token and where it starts (byte offset into the source).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Token {
    pub(super) kind: Tok,
    pub(super) at: usize,
}

/// The kinds of token.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Num(f64),
    Str(String),
    Ident(String),
    /// Operators and punctuation, spelled as in the source.
    Op(&'static str),
    End,
}

/// Operators, longest first so `<=` wins over `<`.
const OPS: [&str; 22] = [
    "&&", "||", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "%", "(", ")", "[", "]", ".", ",",
    "?", ":",
];

/// Splits `src` into tokens, ending with [`Tok::End`].
pub(super) fn tokens(src: &str) -> Result<Vec<Token>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let at = i;
        if c.is_ascii_digit() {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                // An exponent sign: `1e-3`.
                if matches!(bytes[i], b'e' | b'E') && matches!(bytes.get(i + 1), Some(b'+' | b'-')) {
                    i += 1;
                }
                i += 1;
            }
            let text = &src[at..i];
            let n: f64 =
                text.parse().map_err(|_| ExprError::at(src, at, format!("{text:?} is not a number")))?;
            out.push(Token { kind: Tok::Num(n), at });
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Token { kind: Tok::Ident(src[at..i].to_owned()), at });
        } else if c == b'"' || c == b'\'' {
            let (s, end) = string(src, at)?;
            out.push(Token { kind: Tok::Str(s), at });
            i = end;
        } else if let Some(op) = OPS.iter().find(|op| src[i..].starts_with(*op)) {
            out.push(Token { kind: Tok::Op(op), at });
            i += op.len();
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            let hint = match ch {
                '=' => " (compare with ==)",
                '&' => " (and is &&)",
                '|' => " (or is ||)",
                _ => "",
            };
            return Err(ExprError::at(src, at, format!("unexpected character {ch:?}{hint}")));
        }
    }
    out.push(Token { kind: Tok::End, at: src.len() });
    Ok(out)
}

/// A quoted string starting at `at`; returns it and the offset after the
/// closing quote. Escapes: `\\`, `\"`, `\'`, `\n`, `\t`.
fn string(src: &str, at: usize) -> Result<(String, usize), ExprError> {
    let mut chars = src[at..].char_indices();
    let quote = chars.next().map(|(_, q)| q).unwrap_or('"');
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, at + i + c.len_utf8())),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, c @ ('\\' | '"' | '\''))) => out.push(c),
                Some((j, c)) => return Err(ExprError::at(src, at + j, format!("unknown escape \\{c}"))),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(ExprError::at(src, at, "string is not closed"))
}
