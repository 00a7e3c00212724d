//! A small glob matcher with `{capture}` placeholders, used for `watch` globs, branch patterns
//! and for reading captures back out of names. It compiles nothing: matching walks the pattern,
//! so a config with many globs costs nothing until a path is matched.

use crate::pattern::Captures;

/// One piece of a compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Token {
    Literal(String),
    /// `*`: any run of characters within one directory name.
    Star,
    /// `**/`: zero or more whole directories.
    AnyDirs,
    /// `**` at the end: anything, across directories.
    AnyRest,
    /// `?`: one character other than `/`.
    One,
    /// `[abc]`, `[a-z]`, `[!abc]`.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `{name}`: one or more characters other than `/`.
    Capture(String),
}

/// Whether the next token starts a directory name: at the very start, or after a `/`.
fn at_segment_start(out: &[Token], literal: &str) -> bool {
    if !literal.is_empty() {
        return literal.ends_with('/');
    }
    match out.last() {
        None => true,
        Some(Token::Literal(l)) => l.ends_with('/'),
        Some(Token::AnyDirs) => true,
        Some(_) => false,
    }
}

/// Appends the tokens of glob text (without placeholders or alternations) to `out`. With
/// `literal_only`, every character stands for itself.
pub(crate) fn tokenize(text: &str, literal_only: bool, out: &mut Vec<Token>) {
    let chars: Vec<char> = text.chars().collect();
    let mut literal = String::new();
    let mut i = 0;
    let flush = |literal: &mut String, out: &mut Vec<Token>| {
        if !literal.is_empty() {
            out.push(Token::Literal(std::mem::take(literal)));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if literal_only {
            literal.push(c);
            i += 1;
            continue;
        }
        match c {
            '*' if chars.get(i + 1) == Some(&'*') => {
                let at_start = at_segment_start(out, &literal);
                flush(&mut literal, out);
                if at_start && chars.get(i + 2) == Some(&'/') {
                    out.push(Token::AnyDirs);
                    i += 3;
                } else if at_start && i + 2 == chars.len() {
                    out.push(Token::AnyRest);
                    i += 2;
                } else {
                    out.push(Token::Star);
                    i += 2;
                }
            }
            '*' => {
                flush(&mut literal, out);
                out.push(Token::Star);
                i += 1;
            }
            '?' => {
                flush(&mut literal, out);
                out.push(Token::One);
                i += 1;
            }
            '[' => match chars[i + 1..].iter().position(|&c| c == ']') {
                Some(len) if len > 0 => {
                    flush(&mut literal, out);
                    let mut body: &[char] = &chars[i + 1..i + 1 + len];
                    let negated = matches!(body.first(), Some('!') | Some('^'));
                    if negated {
                        body = &body[1..];
                    }
                    let mut ranges = Vec::new();
                    let mut k = 0;
                    while k < body.len() {
                        if k + 2 < body.len() && body[k + 1] == '-' {
                            ranges.push((body[k], body[k + 2]));
                            k += 3;
                        } else {
                            ranges.push((body[k], body[k]));
                            k += 1;
                        }
                    }
                    out.push(Token::Class { negated, ranges });
                    i += len + 2;
                }
                _ => {
                    literal.push('[');
                    i += 1;
                }
            },
            _ => {
                literal.push(c);
                i += 1;
            }
        }
    }
    flush(&mut literal, out);
}

/// Every way `tokens` can match all of `text`, each as the captures it makes; stops after
/// `limit` matches. A placeholder used twice must capture the same value both times.
pub(crate) fn matches(tokens: &[Token], text: &str, limit: usize) -> Vec<Captures> {
    let mut out = Vec::new();
    let mut captures = Vec::new();
    walk(tokens, text, &mut captures, &mut out, limit);
    out
}

fn walk<'t>(
    tokens: &'t [Token],
    text: &'t str,
    captures: &mut Vec<(&'t str, &'t str)>,
    out: &mut Vec<Captures>,
    limit: usize,
) {
    if out.len() >= limit {
        return;
    }
    let Some((first, rest)) = tokens.split_first() else {
        if text.is_empty() {
            let mut found = Captures::default();
            for (name, value) in captures.iter() {
                if found.get(name).is_none() {
                    found.push(*name, *value);
                }
            }
            out.push(found);
        }
        return;
    };
    match first {
        Token::Literal(lit) => {
            if let Some(after) = text.strip_prefix(lit.as_str()) {
                walk(rest, after, captures, out, limit);
            }
        }
        Token::Star => {
            let stop = text.find('/').unwrap_or(text.len());
            for end in (0..=stop).filter(|&e| text.is_char_boundary(e)) {
                walk(rest, &text[end..], captures, out, limit);
            }
        }
        Token::AnyDirs => {
            // Zero directories, then after each `/`.
            walk(rest, text, captures, out, limit);
            for (i, _) in text.match_indices('/') {
                walk(rest, &text[i + 1..], captures, out, limit);
            }
        }
        Token::AnyRest => walk(rest, "", captures, out, limit),
        Token::One => {
            if let Some(c) = text.chars().next().filter(|&c| c != '/') {
                walk(rest, &text[c.len_utf8()..], captures, out, limit);
            }
        }
        Token::Class { negated, ranges } => {
            if let Some(c) = text.chars().next().filter(|&c| c != '/') {
                let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                if inside != *negated {
                    walk(rest, &text[c.len_utf8()..], captures, out, limit);
                }
            }
        }
        Token::Capture(name) => {
            if let Some(&(_, earlier)) = captures.iter().find(|(n, _)| n == name) {
                if let Some(after) = text.strip_prefix(earlier) {
                    walk(rest, after, captures, out, limit);
                }
                return;
            }
            let stop = text.find('/').unwrap_or(text.len());
            for end in (1..=stop).filter(|&e| text.is_char_boundary(e)) {
                captures.push((name.as_str(), &text[..end]));
                walk(rest, &text[end..], captures, out, limit);
                captures.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Token> {
        let mut out = Vec::new();
        tokenize(text, false, &mut out);
        out
    }

    #[test]
    fn tokens_for_double_stars() {
        assert_eq!(toks("a/**/b"), [Token::Literal("a/".into()), Token::AnyDirs, Token::Literal("b".into())]);
        assert_eq!(toks("**/b"), [Token::AnyDirs, Token::Literal("b".into())]);
        assert_eq!(toks("a/**"), [Token::Literal("a/".into()), Token::AnyRest]);
        assert_eq!(toks("a**b"), [Token::Literal("a".into()), Token::Star, Token::Literal("b".into())]);
    }

    #[test]
    fn captures_enumerate_every_split() {
        let tokens = vec![Token::Capture("a".into()), Token::Literal("-".into()), Token::Capture("b".into())];
        let found = matches(&tokens, "x-y-z", 10);
        let splits: Vec<(String, String)> =
            found.iter().map(|c| (c.get("a").unwrap().to_owned(), c.get("b").unwrap().to_owned())).collect();
        assert_eq!(splits, [("x".into(), "y-z".into()), ("x-y".into(), "z".into())]);
        assert_eq!(matches(&tokens, "x-y-z", 1).len(), 1);
    }
}
