//! Placeholders in plinth.toml values: `{env}` captures in stack paths, templates that reuse
//! the captures, and globs (with captures) for `watch` and branch patterns.

use std::fmt;

use crate::glob::{Token, matches, tokenize};

/// Values captured by a path pattern, in the order the placeholders appear in the path.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Captures(Vec<(String, String)>);

impl Captures {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The values joined with `-`, as used in the default name of a pattern stack.
    pub fn joined(&self) -> String {
        self.0.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>().join("-")
    }
}

/// A problem with a pattern or template, at a byte offset inside the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternError {
    pub offset: usize,
    pub message: String,
    pub help: &'static str,
}

impl PatternError {
    fn new(offset: usize, message: impl Into<String>, help: &'static str) -> Self {
        Self { offset, message: message.into(), help }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// A `{name}` placeholder; `offset` is the byte offset of its `{` in the raw value.
    Capture {
        name: String,
        offset: usize,
    },
    /// A glob alternation `{a,b}`, only allowed where globs are.
    Alternation(Vec<String>),
}

/// A string with `{capture}` placeholders, such as `environment = "{env}"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

fn is_capture_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_parts(raw: &str, allow_alternation: bool) -> Result<Vec<Part>, PatternError> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = raw;
    let mut offset = 0;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let at = offset + i;
        if rest[i..].starts_with('}') {
            return Err(PatternError::new(
                at,
                "`}` without a matching `{`",
                "placeholders look like `{env}`; remove the stray brace",
            ));
        }
        let Some(close) = rest[i..].find('}') else {
            return Err(PatternError::new(
                at,
                "`{` is never closed",
                "placeholders look like `{env}`; close it with `}` or remove it",
            ));
        };
        let inner = &rest[i + 1..i + close];
        if inner.contains('{') {
            return Err(PatternError::new(at, "placeholders cannot be nested", "write `{env}`, not `{{env}}`"));
        }
        if allow_alternation && inner.contains(',') {
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Alternation(inner.split(',').map(str::to_owned).collect()));
        } else if is_capture_name(inner) {
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Capture { name: inner.to_owned(), offset: at });
        } else {
            return Err(PatternError::new(
                at,
                format!("`{{{inner}}}` is not a valid placeholder"),
                "placeholder names use lowercase letters, digits and `_`, such as `{env}`",
            ));
        }
        rest = &rest[i + close + 1..];
        offset = at + close + 1;
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

impl Template {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        Ok(Self { raw: raw.to_owned(), parts: parse_parts(raw, false)? })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The placeholders used, with the byte offset of each.
    pub fn captures(&self) -> impl Iterator<Item = (&str, usize)> {
        self.parts.iter().filter_map(|p| match p {
            Part::Capture { name, offset } => Some((name.as_str(), *offset)),
            _ => None,
        })
    }

    pub fn has_captures(&self) -> bool {
        self.captures().next().is_some()
    }

    /// The first placeholder that `captures` does not define.
    pub fn undefined_capture<'a>(&'a self, defined: &[&str]) -> Option<(&'a str, usize)> {
        self.captures().find(|(name, _)| !defined.contains(name))
    }

    /// Fills in the placeholders. Undefined ones stay as written; validation reports them.
    pub fn render(&self, captures: &Captures) -> String {
        let mut out = String::with_capacity(self.raw.len());
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Capture { name, .. } => match captures.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        out.push('{');
                        out.push_str(name);
                        out.push('}');
                    }
                },
                Part::Alternation(options) => {
                    out.push('{');
                    out.push_str(&options.join(","));
                    out.push('}');
                }
            }
        }
        out
    }
}

impl Template {
    /// Every way of filling in the placeholders that renders to `text`, up to `limit`. Used
    /// to find which stack a name or dependency refers to.
    pub fn invert(&self, text: &str, limit: usize) -> Vec<Captures> {
        let mut tokens = Vec::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => tokenize(s, true, &mut tokens),
                Part::Capture { name, .. } => tokens.push(Token::Capture(name.clone())),
                Part::Alternation(options) => tokenize(&format!("{{{}}}", options.join(",")), true, &mut tokens),
            }
        }
        matches(&tokens, text, limit)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// One `/`-separated piece of a [`PathPattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Capture { prefix: String, name: String, suffix: String },
}

/// A stack's `path`: a directory relative to the repo root, with optional placeholders that
/// each stand for one directory name (`terraform/{env}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    raw: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::new(
                0,
                "the path is empty",
                "use `.` for the repo root, or a directory such as `terraform/stg`",
            ));
        }
        if raw == "." || raw == "./" {
            return Ok(Self { raw: raw.to_owned(), segments: Vec::new() });
        }
        if raw.starts_with('/') || raw.as_bytes().get(1) == Some(&b':') {
            return Err(PatternError::new(
                0,
                format!("`{raw}` is an absolute path"),
                "paths are relative to the repo root, such as `terraform/stg`",
            ));
        }
        if let Some(i) = raw.find('\\') {
            return Err(PatternError::new(i, "paths use `/`, not `\\`", "write `terraform/stg`, not `terraform\\stg`"));
        }
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        let mut segments = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        let mut offset = 0;
        for piece in trimmed.split('/') {
            match piece {
                "" => {
                    return Err(PatternError::new(
                        offset,
                        "the path has an empty segment (`//`)",
                        "remove the doubled `/`",
                    ));
                }
                "." => {
                    return Err(PatternError::new(
                        offset,
                        "the path has a `.` segment",
                        "remove the `./`; paths are relative to the repo root",
                    ));
                }
                ".." => {
                    return Err(PatternError::new(
                        offset,
                        "the path leaves the repo (`..`)",
                        "stacks must live inside the repo; use a path relative to its root",
                    ));
                }
                _ => {}
            }
            let parts = parse_parts(piece, false).map_err(|e| PatternError { offset: e.offset + offset, ..e })?;
            let segment = match parts.as_slice() {
                [Part::Literal(s)] => Segment::Literal(s.clone()),
                _ => {
                    let mut prefix = String::new();
                    let mut suffix = String::new();
                    let mut capture: Option<String> = None;
                    for part in &parts {
                        match part {
                            Part::Literal(s) if capture.is_none() => prefix.push_str(s),
                            Part::Literal(s) => suffix.push_str(s),
                            Part::Capture { name, offset: at } => {
                                if capture.is_some() {
                                    return Err(PatternError::new(
                                        offset + at,
                                        "a path segment can hold only one placeholder",
                                        "split the directory names, such as `{region}/{env}`",
                                    ));
                                }
                                if seen.contains(name) {
                                    return Err(PatternError::new(
                                        offset + at,
                                        format!("`{{{name}}}` appears twice in the path"),
                                        "give each placeholder its own name",
                                    ));
                                }
                                seen.push(name.clone());
                                capture = Some(name.clone());
                            }
                            Part::Alternation(_) => {
                                return Err(PatternError::new(
                                    offset,
                                    "paths cannot hold `{a,b}`",
                                    "declare one stack per path",
                                ));
                            }
                        }
                    }
                    match capture {
                        Some(name) => Segment::Capture { prefix, name, suffix },
                        None => Segment::Literal(prefix),
                    }
                }
            };
            segments.push(segment);
            offset += piece.len() + 1;
        }
        Ok(Self { raw: raw.to_owned(), segments })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    pub fn is_literal(&self) -> bool {
        self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The placeholder names, in path order.
    pub fn capture_names(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Capture { name, .. } => Some(name.as_str()),
                Segment::Literal(_) => None,
            })
            .collect()
    }

    /// The directory for a literal pattern (`""` for the repo root).
    pub fn literal_dir(&self) -> Option<String> {
        self.is_literal().then(|| {
            self.segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.as_str(),
                    Segment::Capture { .. } => "",
                })
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    /// The leading literal directories, before the first placeholder.
    pub fn fixed_prefix(&self) -> String {
        self.segments
            .iter()
            .map_while(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                Segment::Capture { .. } => None,
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether `name` fits segment `index`, and the capture it yields.
    pub(crate) fn match_segment<'a>(&self, index: usize, name: &'a str) -> Option<Option<(&str, &'a str)>> {
        match &self.segments[index] {
            Segment::Literal(literal) => (literal == name).then_some(None),
            Segment::Capture { prefix, name: capture, suffix } => {
                let value = name.strip_prefix(prefix.as_str())?.strip_suffix(suffix.as_str())?;
                (!value.is_empty() && !value.starts_with('.')).then_some(Some((capture.as_str(), value)))
            }
        }
    }

    /// The directory name segment `index` must have, when it is literal or its capture is
    /// known.
    pub(crate) fn fixed_segment(&self, index: usize, known: &Captures) -> Option<String> {
        match &self.segments[index] {
            Segment::Literal(literal) => Some(literal.clone()),
            Segment::Capture { prefix, name, suffix } => known.get(name).map(|v| format!("{prefix}{v}{suffix}")),
        }
    }

    /// The directory this pattern names for the given captures; `None` if one is missing.
    pub fn render(&self, captures: &Captures) -> Option<String> {
        let mut parts = Vec::with_capacity(self.segments.len());
        for index in 0..self.segments.len() {
            parts.push(self.fixed_segment(index, captures)?);
        }
        Some(parts.join("/"))
    }

    /// Whether `dir` (repo-relative, `""` for the root) is a directory this pattern names.
    pub fn match_dir(&self, dir: &str) -> Option<Captures> {
        // Counted before anything is split: most directories a change reaches have another depth.
        let depth = if dir.is_empty() { 0 } else { memchr::memchr_iter(b'/', dir.as_bytes()).count() + 1 };
        if depth != self.segments.len() {
            return None;
        }
        let mut captures = Captures::default();
        for (i, name) in dir.split('/').take(depth).enumerate() {
            if let Some((capture, value)) = self.match_segment(i, name)? {
                captures.push(capture, value);
            }
        }
        Some(captures)
    }
}

/// A glob over repo paths, with optional `{capture}` placeholders: `*` stays inside one
/// directory, `**` spans any number of them, `?` is one character, `[abc]` a class and `{a,b}`
/// an alternation.
#[derive(Clone, Debug)]
pub struct Glob {
    raw: String,
    /// One token list per combination of alternatives.
    variants: Vec<Vec<Token>>,
    captures: Vec<String>,
}

impl Glob {
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.is_empty() {
            return Err(PatternError::new(0, "the glob is empty", "write a glob such as `shared/*.json`"));
        }
        if raw.starts_with('/') {
            return Err(PatternError::new(0, "globs are relative to the repo root", "remove the leading `/`"));
        }
        let parts = parse_parts(raw, true)?;
        let mut variants: Vec<Vec<Token>> = vec![Vec::new()];
        let mut captures = Vec::new();
        for part in &parts {
            match part {
                Part::Literal(text) => variants.iter_mut().for_each(|v| tokenize(text, false, v)),
                Part::Capture { name, .. } => {
                    variants.iter_mut().for_each(|v| v.push(Token::Capture(name.clone())));
                    if !captures.contains(name) {
                        captures.push(name.clone());
                    }
                }
                Part::Alternation(options) => {
                    if variants.len() * options.len() > 256 {
                        return Err(PatternError::new(
                            0,
                            "the glob has too many alternatives",
                            "split it into several globs",
                        ));
                    }
                    variants = variants
                        .iter()
                        .flat_map(|v| {
                            options.iter().map(move |option| {
                                let mut v = v.clone();
                                tokenize(option, false, &mut v);
                                v
                            })
                        })
                        .collect();
                }
            }
        }
        Ok(Self { raw: raw.to_owned(), variants, captures })
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The placeholders this glob uses.
    pub fn capture_names(&self) -> impl Iterator<Item = &str> {
        self.captures.iter().map(String::as_str)
    }

    pub fn is_match(&self, path: &str) -> bool {
        self.captures(path).is_some()
    }

    /// The directory every match lies under: the glob's text up to its first wildcard,
    /// placeholder or alternation, cut back to a `/` (`""` when that is the repo root).
    pub fn fixed_dir(&self) -> &str {
        let end = self.raw.find(['*', '?', '[', '{', '\\']).unwrap_or(self.raw.len());
        let literal = &self.raw[..end];
        literal.rfind('/').map_or("", |i| &literal[..i])
    }

    /// Matches a path and returns the captured placeholders. A placeholder used twice must
    /// capture the same value both times.
    pub fn captures(&self, path: &str) -> Option<Captures> {
        self.variants.iter().find_map(|tokens| matches(tokens, path, 1).into_iter().next())
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for Glob {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_parse_or_explain() {
        let cases: &[(&str, Result<&[&str], usize>)] = &[
            ("terraform/stg", Ok(&[])),
            ("terraform/{env}", Ok(&["env"])),
            ("terraform/{region}/env-{env}", Ok(&["region", "env"])),
            (".", Ok(&[])),
            ("terraform/stg/", Ok(&[])),
            ("", Err(0)),
            ("/etc", Err(0)),
            ("../other", Err(0)),
            ("terraform/../../x", Err(10)),
            ("a//b", Err(2)),
            ("a/./b", Err(2)),
            ("a\\b", Err(1)),
            ("terraform/{env", Err(10)),
            ("terraform/env}", Err(13)),
            ("terraform/{Env}", Err(10)),
            ("terraform/{a}{b}", Err(13)),
            ("{env}/x/{env}", Err(8)),
        ];
        for (raw, expected) in cases {
            let got = PathPattern::parse(raw);
            match (expected, got) {
                (Ok(names), Ok(p)) => assert_eq!(p.capture_names(), *names, "{raw}"),
                (Err(offset), Err(e)) => assert_eq!(e.offset, *offset, "{raw}: {}", e.message),
                (expected, got) => panic!("{raw}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn path_patterns_match_directories() {
        let p = PathPattern::parse("terraform/{region}/env-{env}").unwrap();
        let caps = p.match_dir("terraform/ap/env-stg").unwrap();
        assert_eq!(caps.joined(), "ap-stg");
        assert_eq!(caps.get("env"), Some("stg"));
        assert!(p.match_dir("terraform/ap/stg").is_none());
        assert!(p.match_dir("terraform/ap/env-").is_none());
        assert!(p.match_dir("terraform/.hidden/env-stg").is_none());
        assert!(p.match_dir("terraform/ap/env-stg/sub").is_none());
        assert_eq!(PathPattern::parse(".").unwrap().literal_dir().as_deref(), Some(""));
        assert_eq!(PathPattern::parse("a/b/").unwrap().literal_dir().as_deref(), Some("a/b"));
        assert_eq!(p.fixed_prefix(), "terraform");
    }

    #[test]
    fn templates_render_and_report_undefined_captures() {
        let t = Template::parse("{env}-app").unwrap();
        let mut caps = Captures::default();
        caps.push("env", "stg");
        assert_eq!(t.render(&caps), "stg-app");
        assert_eq!(t.undefined_capture(&["env"]), None);
        let t = Template::parse("app-{region}").unwrap();
        assert_eq!(t.undefined_capture(&["env"]), Some(("region", 4)));
        assert!(Template::parse("{a,b}").is_err());
    }

    #[test]
    fn globs_match_like_git() {
        let cases: &[(&str, &str, bool)] = &[
            ("shared/*.json", "shared/a.json", true),
            ("shared/*.json", "shared/sub/a.json", false),
            ("shared/**/*.json", "shared/a.json", true),
            ("shared/**/*.json", "shared/x/y/a.json", true),
            ("**/*.md", "README.md", true),
            ("**/*.md", "docs/x/README.md", true),
            ("docs/**", "docs/a/b", true),
            ("docs/**", "docsx/a", false),
            ("file?.txt", "file1.txt", true),
            ("file?.txt", "file/.txt", false),
            ("[abc].txt", "b.txt", true),
            ("[!abc].txt", "b.txt", false),
            ("*.{json,yaml}", "a.yaml", true),
            ("*.{json,yaml}", "a.toml", false),
            ("a+b (1).txt", "a+b (1).txt", true),
            ("feature/*", "feature/x", true),
            ("feature/*", "feature/x/y", false),
            ("feature/**", "feature/x/y", true),
        ];
        for (glob, path, expected) in cases {
            assert_eq!(Glob::parse(glob).unwrap().is_match(path), *expected, "{glob} ~ {path}");
        }
    }

    #[test]
    fn globs_capture_placeholders() {
        let g = Glob::parse("config/{env}/*.json").unwrap();
        assert_eq!(g.captures("config/stg/a.json").unwrap().get("env"), Some("stg"));
        assert!(g.captures("config/stg/x/a.json").is_none());
        let twice = Glob::parse("{env}/{env}.tfvars").unwrap();
        assert!(twice.captures("stg/stg.tfvars").is_some());
        assert!(twice.captures("stg/prd.tfvars").is_none());
    }
}
