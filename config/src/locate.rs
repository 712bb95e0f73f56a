//! Turning a byte position in the TOML text into a line, a column and a
//! field path such as `service[1].weight`, so schema errors from the `toml`
//! crate (which only carry a span) name the field like validation errors do.
//!
//! The path is best effort: it reads the nearest table header above the
//! position and the keys on the position's line (including inline tables).
//! It returns `None` rather than guess when the position is not on a
//! `key = value` line it understands, e.g. inside a multi-line array.

use std::ops::Range;

use crate::error::entry_labels;

/// 1-based line and column (in characters) of byte offset `pos`.
pub(crate) fn line_column(src: &str, pos: usize) -> (usize, usize) {
    let before = prefix(src, pos);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The longest prefix of `src` of at most `pos` bytes ending on a char
/// boundary (spans from the parser always are, but never panic on input).
fn prefix(src: &str, pos: usize) -> &str {
    let mut end = pos.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    &src[..end]
}

/// Best-effort path of the field at `span`.
pub(crate) fn field_path(src: &str, span: Range<usize>) -> Option<String> {
    let before = prefix(src, span.start);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[line_start..].find('\n').map_or(src.len(), |i| line_start + i);
    let line = &src[line_start..line_end];

    let mut parts: Vec<String> = Vec::new();
    // A header line is its own table: `[[service]]` missing a field, or an
    // unknown `[section]`.
    let header_line = if parse_header(line).is_some() { line_start + line.len() } else { line_start };
    if let Some(table) = table_path(&src[..header_line], src) {
        parts.push(table);
    }
    if header_line == line_start {
        let in_line = &before[line_start..];
        match keys_at(in_line) {
            Some(mut keys) => {
                // An unknown key is reported with the key itself as span.
                let spanned = src.get(span.clone()).unwrap_or("");
                let rest = src.get(span.end..line_end).unwrap_or("");
                if is_bare_key(spanned) && rest.trim_start().starts_with(['=', '.']) {
                    keys.push(spanned.to_owned());
                }
                parts.extend(keys);
            }
            None => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

/// The table of the last header in `text`: `store` for `[store]`; for the
/// third `[[service]]`, `service["name"]` or `service[2]` by the rule of
/// [`entry_labels`], reading the `name` keys from all of `src`.
fn table_path(text: &str, src: &str) -> Option<String> {
    let (name, is_array) = text.lines().rev().find_map(parse_header)?;
    if !is_array {
        return Some(name);
    }
    let index = text
        .lines()
        .filter_map(parse_header)
        .filter(|(n, array)| *array && *n == name)
        .count()
        .saturating_sub(1);
    let names = entry_names(src, &name);
    let labels = entry_labels(&name, names.iter().map(Option::as_deref));
    Some(labels.get(index).cloned().unwrap_or_else(|| format!("{name}[{index}]")))
}

/// The `name = "..."` of every `[[kind]]` entry in `src`, in order.
fn entry_names(src: &str, kind: &str) -> Vec<Option<String>> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in src.lines() {
        if let Some((header, is_array)) = parse_header(line) {
            inside = is_array && header == kind;
            if inside {
                names.push(None);
            }
            continue;
        }
        let Some((key, value)) = strip_comment(line).split_once('=') else {
            continue;
        };
        if inside && key.trim() == "name" {
            let value = value.trim();
            let unquoted = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')));
            if let (Some(last), Some(name)) = (names.last_mut(), unquoted) {
                *last = Some(name.to_owned());
            }
        }
    }
    names
}

/// `Some((name, is_array))` if the line is a table header.
fn parse_header(line: &str) -> Option<(String, bool)> {
    let line = strip_comment(line).trim();
    let (inner, is_array) = if let Some(rest) = line.strip_prefix("[[") {
        (rest.strip_suffix("]]")?, true)
    } else {
        (line.strip_prefix('[')?.strip_suffix(']')?, false)
    };
    let name: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let looks_like_key = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'));
    looks_like_key.then(|| (name.replace('"', ""), is_array))
}

fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) if !line[..i].contains(['"', '\'']) => &line[..i],
        _ => line,
    }
}

/// The keys leading to the value at the end of `prefix` (one line up to
/// the error position): `["max_bytes"]` for `max_bytes = `, and
/// `["retention", "max_age"]` for `retention = { max_age = `. `None` if
/// the line holds no `key =` before the position.
fn keys_at(prefix: &str) -> Option<Vec<String>> {
    let mut stack: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut last_key: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut saw_equals = false;
    for c in prefix.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q == '"' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' => quote = Some(c),
            '=' => {
                last_key = Some(token.trim().replace(['"', '\''], ""));
                saw_equals = true;
                token.clear();
            }
            '{' => {
                if let Some(key) = last_key.take() {
                    stack.push(key);
                }
                token.clear();
            }
            '}' => {
                stack.pop();
                last_key = None;
            }
            ',' => {
                last_key = None;
                token.clear();
            }
            '[' | ']' => {}
            _ => token.push(c),
        }
    }
    if !saw_equals && stack.is_empty() && !is_bare_key(token.trim()) && !token.trim().is_empty() {
        return None;
    }
    stack.extend(last_key);
    Some(stack)
}

fn is_bare_key(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_at(src: &str, needle: &str) -> Option<String> {
        let start = src.find(needle).expect("needle in source");
        field_path(src, start..start + needle.len())
    }

    #[test]
    fn lines_and_columns_are_one_based() {
        assert_eq!(line_column("a = 1\nbb = 2", 6), (2, 1));
        assert_eq!(line_column("a = 1\nbb = 2", 11), (2, 6));
        assert_eq!(line_column("µ = 1", 2), (1, 2));
        assert_eq!(line_column("x", 99), (1, 2));
    }

    #[test]
    fn paths_of_values_and_keys() {
        let src = "[store]\nmax_bytes = \"2XB\"\n\n[[service]]\nname = \"a\"\n\
                   [[service]]\nname = \"b\"\nwieght = 3\n[[topic]]\nname = \"t\"\n\
                   retention = { max_age = \"7x\", max_bytes = \"1q\" }\n";
        assert_eq!(path_at(src, "\"2XB\"").as_deref(), Some("store.max_bytes"));
        assert_eq!(path_at(src, "wieght").as_deref(), Some("service[\"b\"].wieght"));
        assert_eq!(path_at(src, "\"7x\"").as_deref(), Some("topic[\"t\"].retention.max_age"));
        assert_eq!(path_at(src, "\"1q\"").as_deref(), Some("topic[\"t\"].retention.max_bytes"));
        assert_eq!(path_at(src, "[[topic]]").as_deref(), Some("topic[\"t\"]"));
        // Without a (valid, unique) name the position is used.
        let dup = "[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"\nweight = \"x\"\n";
        assert_eq!(path_at(dup, "\"x\"").as_deref(), Some("service[1].weight"));
    }

    #[test]
    fn top_level_and_unknown_positions() {
        assert_eq!(path_at("nodes = 1\n", "nodes").as_deref(), Some("nodes"));
        assert_eq!(path_at("[nod]\nid = 1\n", "[nod]").as_deref(), Some("nod"));
        let src = "[[uplink]]\nbrokers = [\n  \"a\",\n  7,\n]\n";
        assert_eq!(path_at(src, "7").as_deref(), Some("uplink[0]"));
    }
}
