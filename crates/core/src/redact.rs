//! Masking secret values in a run's output: every form a value can take there (as is, line by
//! line, base64, URL-encoded, JSON-escaped) is replaced with [`MASK`], in a whole text at once
//! ([`Redactor::redact`]) or in a stream that may split a value between two reads
//! ([`StreamRedactor`]).

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeSet, VecDeque};
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::ErrorCode;

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Forms shorter than this are not searched for: they would mask ordinary text. Secret values
/// this short are refused when they are set.
const MIN_PATTERN_BYTES: usize = 4;

/// Finds the secret values given to one run, in every form they can take in its output.
pub struct Redactor {
    values: usize,
    patterns: usize,
    /// `None` when there is nothing to search for.
    matcher: Option<AhoCorasick>,
    prefixes: Prefixes,
}

/// The secret values are too large to search output for.
#[derive(Debug, thiserror::Error)]
#[error("{patterns} forms of secret values are too many or too long to search a run's output for")]
pub struct RedactorError {
    patterns: usize,
}

impl ErrorCode for RedactorError {
    fn code(&self) -> &'static str {
        "redact.too_large"
    }

    fn http_status(&self) -> u16 {
        500
    }

    fn help(&self) -> String {
        "Give the run fewer or shorter secret values.".into()
    }
}

impl Redactor {
    /// A redactor for `values`. Empty values and values shorter than 4 bytes are ignored, and
    /// so is any form of a value shorter than that.
    pub fn new<I, S>(values: I) -> Result<Self, RedactorError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let values: BTreeSet<String> = values
            .into_iter()
            .map(|value| value.as_ref().to_owned())
            .filter(|value| value.len() >= MIN_PATTERN_BYTES)
            .collect();
        let mut patterns = BTreeSet::new();
        for value in &values {
            patterns.extend(forms(value).into_iter().filter(|form| form.len() >= MIN_PATTERN_BYTES));
        }
        let patterns: Vec<Vec<u8>> = patterns.into_iter().collect();
        let too_large = || RedactorError { patterns: patterns.len() };
        let matcher = if patterns.is_empty() {
            None
        } else {
            let built = AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&patterns);
            Some(built.map_err(|_| too_large())?)
        };
        let prefixes = Prefixes::new(&patterns).ok_or_else(too_large)?;
        Ok(Self { values: values.len(), patterns: patterns.len(), matcher, prefixes })
    }

    /// Whether there is nothing to mask, so output can pass untouched.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every form of every value replaced with [`MASK`]. Where forms overlap, the
    /// one that starts first wins, and of those the longest.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.redact_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Every form is whole UTF-8 characters, so masking keeps the text valid.
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// [`Redactor::redact`] over bytes that need not be UTF-8.
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(bytes);
        };
        let mut matches = matcher.find_iter(bytes).peekable();
        if matches.peek().is_none() {
            return Cow::Borrowed(bytes);
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut done = 0;
        for found in matches {
            out.extend_from_slice(&bytes[done..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            done = found.end();
        }
        out.extend_from_slice(&bytes[done..]);
        Cow::Owned(out)
    }

    /// A stream of output to mask as it comes.
    pub fn stream(&self) -> StreamRedactor<&Redactor> {
        StreamRedactor::new(self)
    }
}

impl fmt::Debug for Redactor {
    // Never the values or their forms: only how many there are.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor").field("values", &self.values).field("patterns", &self.patterns).finish()
    }
}

/// Masks one stream of output that arrives in pieces, such as a process's stdout, so that a
/// value split between two pieces is masked all the same.
///
/// What [`StreamRedactor::push`] returns is final. It holds back only the end of what it was
/// given that could still become a match: the longest suffix that is a proper prefix of some
/// form. Output that ends anywhere else comes out at once, in full.
///
/// The concatenation of what `push` and [`StreamRedactor::finish`] return is what
/// [`Redactor::redact_bytes`] makes of the whole stream at once.
///
/// `R` is how it holds its [`Redactor`]: `&Redactor`, or `Arc<Redactor>` for a stream that
/// must own it.
pub struct StreamRedactor<R> {
    redactor: R,
    /// Bytes given but not yet returned, unmasked: the held-back suffix.
    pending: Vec<u8>,
    /// The node of `redactor.prefixes` for the longest suffix of the whole stream that is a
    /// prefix of some form.
    state: u32,
}

impl<R: Borrow<Redactor>> StreamRedactor<R> {
    pub fn new(redactor: R) -> Self {
        Self { redactor, pending: Vec::new(), state: 0 }
    }

    /// Takes the next bytes of the stream and returns those that are safe to pass on now, with
    /// every match replaced with [`MASK`].
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        let prefixes = &self.redactor.borrow().prefixes;
        if self.redactor.borrow().is_empty() {
            return bytes.to_vec();
        }
        for &byte in bytes {
            self.state = prefixes.next(self.state, byte);
        }
        self.pending.extend_from_slice(bytes);
        // Why what comes before the held-back suffix is final: a match that starts there
        // cannot be extended, nor can one appear there, by bytes still to come, because then
        // the text from its start to the end of `pending` would be a proper prefix of a form,
        // and a longer suffix than the one held back. Leftmost-longest search thus finds the
        // same matches there now as it will in the whole stream. A match that starts before
        // the suffix may end inside it; it is passed on, and the search goes on after it, as
        // it does over the whole stream.
        let held = prefixes.held(self.state, self.pending.len());
        self.emit(self.pending.len() - held)
    }

    /// Ends the stream: returns what was held back, masked where it matches. The redactor can
    /// then start a new stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.emit(self.pending.len());
        self.state = 0;
        out
    }

    /// Masks the matches that start before `cut` in `pending`, and returns `pending` up to
    /// `cut` or to the end of the last of them.
    fn emit(&mut self, cut: usize) -> Vec<u8> {
        let Some(matcher) = &self.redactor.borrow().matcher else {
            return std::mem::take(&mut self.pending);
        };
        let mut out = Vec::with_capacity(cut);
        let mut done = 0;
        for found in matcher.find_iter(&self.pending) {
            if found.start() >= cut {
                break;
            }
            out.extend_from_slice(&self.pending[done..found.start()]);
            out.extend_from_slice(MASK.as_bytes());
            done = found.end();
        }
        let end = done.max(cut);
        out.extend_from_slice(&self.pending[done..end]);
        self.pending.drain(..end);
        out
    }
}

impl<R: Borrow<Redactor>> fmt::Debug for StreamRedactor<R> {
    // Neither the values nor the held-back bytes, which may be the start of one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamRedactor").field("redactor", self.redactor.borrow()).finish_non_exhaustive()
    }
}

/// Every form `value` can take in output, short ones included.
fn forms(value: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![value.as_bytes().to_vec()];
    // Terraform prefixes each line a provisioner prints with the resource's address, so the
    // lines of a value never appear next to each other.
    if value.contains('\n') {
        for line in value.split('\n') {
            forms.push(line.strip_suffix('\r').unwrap_or(line).as_bytes().to_vec());
        }
    }
    for alphabet in [BASE64_STANDARD, BASE64_URL_SAFE] {
        let encoded = base64(value.as_bytes(), alphabet);
        let padding = (3 - value.len() % 3) % 3;
        forms.push([encoded.as_bytes(), &b"=="[..padding]].concat());
        forms.push(encoded.into_bytes());
        forms.extend(base64_runs(value.as_bytes(), alphabet).map(String::into_bytes));
    }
    for space in [Space::Percent, Space::Plus] {
        for case in [HexCase::Upper, HexCase::Lower] {
            forms.push(percent_encoded(value, space, case).into_bytes());
        }
    }
    let json = json_escaped(value);
    // Go's encoding/json, which terraform uses, also escapes these for HTML.
    let go_json = json
        .replace('<', r"\u003c")
        .replace('>', r"\u003e")
        .replace('&', r"\u0026")
        .replace('\u{2028}', r"\u2028")
        .replace('\u{2029}', r"\u2029");
    forms.push(json.into_bytes());
    forms.push(go_json.into_bytes());
    forms
}

const BASE64_STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64_URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `bytes` in base64 without padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let word = group.iter().enumerate().fold(0u32, |word, (i, &byte)| word | u32::from(byte) << (16 - 8 * i));
        // One character per six bits that the group holds, the last one padded with zeros.
        for i in 0..=group.len() {
            out.push(char::from(alphabet[(word >> (18 - 6 * i) & 0x3F) as usize]));
        }
    }
    out
}

/// The base64 characters that `value` alone decides when it sits inside a larger encoded
/// blob, at each of the three offsets it can have from a 3-byte boundary. Characters that also
/// hold bits of the bytes before or after it are left out.
fn base64_runs(value: &[u8], alphabet: &[u8; 64]) -> impl Iterator<Item = String> {
    (0..3).filter_map(move |filler: usize| {
        let encoded = base64(&[&[0; 2][..filler], value].concat(), alphabet);
        // Characters cover six bits each: skip those holding a bit of the filler, stop before
        // the first holding a bit of what follows.
        let start = (8 * filler).div_ceil(6);
        let end = 8 * (filler + value.len()) / 6;
        encoded.get(start..end).map(str::to_owned)
    })
}

#[derive(Clone, Copy)]
enum Space {
    Percent,
    Plus,
}

#[derive(Clone, Copy)]
enum HexCase {
    Upper,
    Lower,
}

/// `value` percent-encoded: RFC 3986 unreserved characters kept, every other byte `%XX`, and a
/// space as `+` in form encoding.
fn percent_encoded(value: &str, space: Space, case: HexCase) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match (byte, space) {
            (b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~', _) => out.push(char::from(byte)),
            (b' ', Space::Plus) => out.push('+'),
            (_, _) => {
                let hex = match case {
                    HexCase::Upper => format!("%{byte:02X}"),
                    HexCase::Lower => format!("%{byte:02x}"),
                };
                out.push_str(&hex);
            }
        }
    }
    out
}

/// What `serde_json::to_string(value)` puts between the quotes.
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::to_string(value).unwrap_or_default();
    quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')).unwrap_or_default().to_owned()
}

/// The forms in a trie with failure links (Aho-Corasick's automaton without its outputs),
/// to tell how much of the end of a stream could still grow into a match. Node 0 is the root,
/// the empty prefix; every other node is a nonempty prefix of some form.
struct Prefixes {
    /// The edges leaving node `n` are `edge_bytes[starts[n]..starts[n + 1]]`, sorted, leading
    /// to the nodes at the same places in `edge_targets`.
    starts: Vec<u32>,
    edge_bytes: Vec<u8>,
    edge_targets: Vec<u32>,
    /// The node for the longest proper suffix of a node's prefix that is a node too.
    fail: Vec<u32>,
    /// The length of a node's prefix.
    depth: Vec<u32>,
}

impl Prefixes {
    /// `None` if the trie has more nodes than a `u32` can number.
    fn new(patterns: &[Vec<u8>]) -> Option<Self> {
        // Built as first-child and next-sibling links, then frozen into sorted edge lists.
        const NONE: u32 = u32::MAX;
        struct Node {
            byte: u8,
            first_child: u32,
            next_sibling: u32,
        }
        let mut nodes = vec![Node { byte: 0, first_child: NONE, next_sibling: NONE }];
        let mut depth = vec![0u32];
        for pattern in patterns {
            let mut node = 0;
            for &byte in pattern {
                let mut child = nodes[node].first_child;
                while child != NONE && nodes[child as usize].byte != byte {
                    child = nodes[child as usize].next_sibling;
                }
                if child == NONE {
                    child = u32::try_from(nodes.len()).ok().filter(|&id| id != NONE)?;
                    nodes.push(Node { byte, first_child: NONE, next_sibling: nodes[node].first_child });
                    nodes[node].first_child = child;
                    depth.push(depth[node] + 1);
                }
                node = child as usize;
            }
        }

        let mut starts = Vec::with_capacity(nodes.len() + 1);
        let mut edge_bytes = Vec::with_capacity(nodes.len() - 1);
        let mut edge_targets = Vec::with_capacity(nodes.len() - 1);
        let mut children = Vec::new();
        starts.push(0);
        for node in &nodes {
            children.clear();
            let mut child = node.first_child;
            while child != NONE {
                children.push((nodes[child as usize].byte, child));
                child = nodes[child as usize].next_sibling;
            }
            children.sort_unstable();
            edge_bytes.extend(children.iter().map(|&(byte, _)| byte));
            edge_targets.extend(children.iter().map(|&(_, child)| child));
            starts.push(u32::try_from(edge_bytes.len()).ok()?);
        }
        let count = nodes.len();
        drop(nodes);

        let mut prefixes = Self { starts, edge_bytes, edge_targets, fail: vec![0; count], depth };
        // Breadth first, so that the links of shallower nodes, which `next` follows, are set.
        let mut queue = VecDeque::from([0u32]);
        while let Some(node) = queue.pop_front() {
            for edge in prefixes.edges(node) {
                let (byte, child) = (prefixes.edge_bytes[edge], prefixes.edge_targets[edge]);
                prefixes.fail[child as usize] =
                    if node == 0 { 0 } else { prefixes.next(prefixes.fail[node as usize], byte) };
                queue.push_back(child);
            }
        }
        Some(prefixes)
    }

    fn edges(&self, node: u32) -> std::ops::Range<usize> {
        self.starts[node as usize] as usize..self.starts[node as usize + 1] as usize
    }

    fn child(&self, node: u32, byte: u8) -> Option<u32> {
        let edges = self.edges(node);
        let start = edges.start;
        self.edge_bytes[edges].binary_search(&byte).ok().map(|i| self.edge_targets[start + i])
    }

    /// The node after `node` once `byte` follows: the longest suffix of its prefix plus
    /// `byte` that is a node.
    fn next(&self, mut node: u32, byte: u8) -> u32 {
        loop {
            if let Some(child) = self.child(node, byte) {
                return child;
            }
            if node == 0 {
                return 0;
            }
            node = self.fail[node as usize];
        }
    }

    /// How many bytes to hold back when the stream is at `node` and `available` bytes have not
    /// been passed on: the length of the longest suffix that is a proper prefix of some form
    /// (a node with children) and fits in what is available. Going along the failure links
    /// visits every suffix that is a node, longest first.
    fn held(&self, mut node: u32, available: usize) -> usize {
        loop {
            let depth = self.depth[node as usize] as usize;
            if !self.edges(node).is_empty() && depth <= available {
                return depth;
            }
            if node == 0 {
                return 0;
            }
            node = self.fail[node as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "abcdef-ghi";

    fn redactor(values: &[&str]) -> Redactor {
        Redactor::new(values).unwrap()
    }

    /// Streams `pieces` and returns everything that came out.
    fn streamed(redactor: &Redactor, pieces: &[&[u8]]) -> Vec<u8> {
        let mut stream = redactor.stream();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(stream.push(piece));
        }
        out.extend(stream.finish());
        out
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes(), BASE64_STANDARD), encoded);
        }
        assert_eq!(base64(&[0xFB, 0xFF], BASE64_STANDARD), "+/8");
        assert_eq!(base64(&[0xFB, 0xFF], BASE64_URL_SAFE), "-_8");
    }

    #[test]
    fn every_form_is_masked() {
        let value = r#"p@ss w/"q"<&>"#;
        let r = redactor(&[value]);
        // (form as it appears in output, why)
        let cases = [
            (value, "as is"),
            ("cEBzcyB3LyJxIjwmPg==", "base64"),
            ("cEBzcyB3LyJxIjwmPg", "base64 without padding"),
            ("p%40ss%20w%2F%22q%22%3C%26%3E", "percent-encoded"),
            ("p%40ss+w%2F%22q%22%3C%26%3E", "form-encoded"),
            ("p%40ss%20w%2f%22q%22%3c%26%3e", "percent-encoded, lower-case hex"),
            (r#"p@ss w/\"q\"<&>"#, "JSON string"),
            (r#"p@ss w/\"q\"\u003c\u0026\u003e"#, "JSON string from Go"),
        ];
        for (form, why) in cases {
            assert_eq!(r.redact(&format!("[{form}]")), "[***]", "{why}");
        }
        // The URL-safe alphabet differs only where the standard one has `+` or `/`.
        let r = redactor(&["??>>??>>"]);
        assert_eq!(base64(b"??>>??>>", BASE64_STANDARD), "Pz8+Pj8/Pj4");
        assert_eq!(r.redact("a Pz8+Pj8/Pj4= b Pz8-Pj8_Pj4= c"), "a *** b *** c");
    }

    #[test]
    fn base64_inside_a_larger_blob_is_masked_at_every_offset() {
        for filler in ["", "x", "xy"] {
            let doc = format!(r#"{filler}{{"user":"deploy","password":"{SECRET}","port":5432}}"#);
            let blob = base64(doc.as_bytes(), BASE64_STANDARD);
            let offset = doc.find(SECRET).unwrap();
            let run = base64_runs(SECRET.as_bytes(), BASE64_STANDARD).nth(offset % 3).unwrap();
            assert!(blob.contains(&run), "the run is in the blob (offset {offset})");
            let masked = redactor(&[SECRET]).redact(&blob).into_owned();
            assert!(masked.contains(MASK) && !masked.contains(&run), "offset {offset}: {masked}");
            // At most the two characters at each end that share bits with the neighbours stay.
            assert!(masked.len() <= blob.len() - run.len() + MASK.len(), "offset {offset}: {masked}");
        }
    }

    #[test]
    fn the_lines_of_a_multi_line_value_are_masked_one_by_one() {
        let value = "-----BEGIN KEY-----\r\nMIIBVwIBADANBgkq\r\nhkiG9w0BAQEFAASC\r\n-----END KEY-----";
        let r = redactor(&[value]);
        let printed: String = value.lines().map(|line| format!("terraform_data.x (local-exec): {line}\n")).collect();
        let masked = text(&streamed(&r, &[printed.as_bytes()]));
        assert_eq!(masked, "terraform_data.x (local-exec): ***\n".repeat(4));
        assert_eq!(r.redact(&format!("<{value}>")), "<***>");
    }

    #[test]
    fn a_value_split_between_two_pushes_is_masked_at_every_split() {
        let r = redactor(&[SECRET]);
        let input = format!("before {SECRET} after\n");
        for split in 0..=input.len() {
            let (a, b) = input.as_bytes().split_at(split);
            assert_eq!(text(&streamed(&r, &[a, b])), "before *** after\n", "split at {split}");
        }
    }

    #[test]
    fn a_value_split_three_ways_is_masked() {
        let r = redactor(&[SECRET]);
        let input = format!("{SECRET}{SECRET} x {SECRET}");
        let bytes = input.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let pieces = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                assert_eq!(text(&streamed(&r, &pieces)), "****** x ***", "splits at {i} and {j}");
            }
        }
    }

    #[test]
    fn a_line_without_a_pending_prefix_comes_out_at_once() {
        let r = redactor(&[SECRET]);
        let mut stream = r.stream();
        assert_eq!(text(&stream.push(b"Plan: 1 to add, 0 to change.\n")), "Plan: 1 to add, 0 to change.\n");
        // Even without a newline, and even ending with bytes that occur in the value but do
        // not start it.
        assert_eq!(text(&stream.push(b"Still creating... bcdef")), "Still creating... bcdef");
        // A value's start is held back only as long as it could still become the value.
        assert_eq!(text(&stream.push(b" abcd")), " ");
        assert_eq!(text(&stream.push(b"x\n")), "abcdx\n");
        assert_eq!(stream.finish(), b"");
    }

    #[test]
    fn finish_passes_on_a_pending_prefix() {
        let r = redactor(&[SECRET]);
        let mut stream = r.stream();
        assert_eq!(text(&stream.push(b"last words: abcdef")), "last words: ");
        assert_eq!(text(&stream.finish()), "abcdef");
        // The stream can start over.
        assert_eq!(text(&stream.push(SECRET.as_bytes())), "***");
    }

    #[test]
    fn a_stream_can_own_its_redactor() {
        let mut stream = StreamRedactor::new(std::sync::Arc::new(redactor(&[SECRET])));
        assert_eq!(text(&stream.push(b"x abc")), "x ");
        assert_eq!(text(&stream.push(b"def-ghi y")), "*** y");
    }

    #[test]
    fn the_longest_of_overlapping_values_wins() {
        let r = redactor(&["abcd", "abcdefgh", "cdxy"]);
        // (input, masked)
        let cases = [
            ("1 abcdefgh 2", "1 *** 2"),
            ("1 abcdefg 2", "1 ***efg 2"),
            ("1 abcdxy 2", "1 ***xy 2"),
            ("1 abcdabcdefgh", "1 ******"),
            ("1 abcdefgabcd", "1 ***efg***"),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact(input), want, "{input}");
            for split in 0..=input.len() {
                let (a, b) = input.as_bytes().split_at(split);
                assert_eq!(text(&streamed(&r, &[a, b])), want, "{input} split at {split}");
            }
        }
    }

    #[test]
    fn text_without_values_passes_untouched() {
        let r = redactor(&[SECRET]);
        assert!(matches!(r.redact("abcde-ghi abc"), Cow::Borrowed("abcde-ghi abc")));
        let bytes = b"bad \xff\xfe bytes \xc3";
        assert!(matches!(r.redact_bytes(bytes), Cow::Borrowed(b) if b == bytes));
        assert_eq!(streamed(&r, &[&bytes[..5], &bytes[5..]]), bytes);
        // Matches among invalid bytes are masked all the same.
        assert_eq!(r.redact_bytes(b"\xff\xfeabcdef-ghi\xc3").as_ref(), b"\xff\xfe***\xc3");
    }

    #[test]
    fn short_and_empty_values_are_ignored() {
        for values in [&[][..], &[""], &["abc"], &["", "ab"]] {
            let r = redactor(values);
            assert!(r.is_empty(), "{values:?}");
            assert_eq!(r.redact("abc ab"), "abc ab");
            assert_eq!(streamed(&r, &[b"abc", b" ab"]), b"abc ab");
        }
        // A long value's short lines are left alone; its long lines are not.
        let r = redactor(&["abc\nlonger line"]);
        assert_eq!(r.redact("abc\nlonger line abc"), "*** abc");
        assert_eq!(r.redact("abc longer line"), "abc ***");
    }

    #[test]
    fn debug_shows_no_value() {
        let r = redactor(&[SECRET, "hunter22"]);
        let mut stream = r.stream();
        let _ = stream.push(b"abcdef");
        for shown in [format!("{r:?}"), format!("{stream:?}")] {
            assert!(shown.contains("values: 2"), "{shown}");
            for hidden in [SECRET, "abcdef", "hunter22", "aHVudGVyMjI"] {
                assert!(!shown.contains(hidden), "{shown}");
            }
        }
    }

    /// xorshift64: a fixed sequence, so that a failure can be run again.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn streaming_random_splits_matches_redacting_the_whole() {
        let values = ["abcd", "abcdefgh", "xyzxyz", "ab\ncd12", "zz\u{e9}zz"];
        let r = redactor(&values);
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for round in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..rng.below(12) {
                let value = values[rng.below(values.len())].as_bytes();
                match rng.below(4) {
                    0 => input.extend_from_slice(value),
                    1 => input.extend_from_slice(&value[..rng.below(value.len())]),
                    _ => {
                        for _ in 0..rng.below(6) {
                            input.push(b"abcdxyz\n \xff\xc3"[rng.below(11)]);
                        }
                    }
                }
            }
            let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| rng.below(input.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut start = 0;
            for cut in cuts {
                pieces.push(&input[start..cut]);
                start = cut;
            }
            pieces.push(&input[start..]);
            assert_eq!(
                text(&streamed(&r, &pieces)),
                text(&r.redact_bytes(&input)),
                "round {round}: {:?}",
                pieces.iter().map(|p| text(p)).collect::<Vec<_>>()
            );
        }
    }
}
