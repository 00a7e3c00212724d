//! The local module graph: which directories a Terraform directory uses through `module`
//! blocks whose `source` is a local path, found by parsing `.tf` and `.tf.json` files.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::{HashMap, HashSet};

use crate::tree::{EntryKind, Tree, TreeError, join};

/// Whether a file holds Terraform (or OpenTofu) configuration.
pub fn is_terraform_file(name: &str) -> bool {
    [".tf", ".tf.json", ".tofu", ".tofu.json"].iter().any(|ext| name.ends_with(ext))
}

/// The `source` of every `module` block in one file, as written. Errors carry a position.
pub fn module_sources(file_name: &str, bytes: &[u8]) -> Result<Vec<String>, String> {
    // Most files have no module blocks; skip parsing those.
    if memchr::memmem::find(bytes, b"module").is_none() {
        return Ok(Vec::new());
    }
    let text =
        std::str::from_utf8(bytes).map_err(|e| format!("{file_name}: not UTF-8 (at byte {})", e.valid_up_to()))?;
    if file_name.ends_with(".json") {
        json_module_sources(text).map_err(|e| format!("{file_name}:{}:{}: {e}", e.line(), e.column()))
    } else {
        hcl_module_sources(text).map_err(|e| {
            let at = e.location();
            format!("{file_name}:{}:{}: {}", at.line(), at.column(), e.message())
        })
    }
}

fn hcl_module_sources(text: &str) -> Result<Vec<String>, hcl_edit::parser::Error> {
    let body = hcl_edit::parser::parse_body(text)?;
    Ok(body
        .get_blocks("module")
        .filter_map(|block| match &block.body.get_attribute("source")?.value {
            hcl_edit::expr::Expression::String(s) => Some(s.value().clone()),
            _ => None,
        })
        .collect())
}

fn json_module_sources(text: &str) -> Result<Vec<String>, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let mut out = Vec::new();
    // Terraform's JSON syntax allows a block type to be an object or an array of objects.
    let objects = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        match v {
            serde_json::Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        }
    };
    if let Some(modules) = value.get("module") {
        for group in objects(modules) {
            let Some(map) = group.as_object() else {
                continue;
            };
            for block in map.values() {
                for body in objects(block) {
                    if let Some(source) = body.get("source").and_then(|s| s.as_str()) {
                        out.push(source.to_owned());
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Whether Terraform files configure a backend (or Terraform Cloud) for their state. Files
/// that do not parse count as not configuring one; Terraform reports those errors itself.
pub fn declares_backend(files: &[(String, Vec<u8>)]) -> bool {
    files.iter().any(|(name, bytes)| {
        if memchr::memmem::find(bytes, b"backend").is_none() && memchr::memmem::find(bytes, b"cloud").is_none() {
            return false;
        }
        let Ok(text) = std::str::from_utf8(bytes) else { return false };
        if name.ends_with(".json") {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else { return false };
            let blocks = match value.get("terraform") {
                Some(serde_json::Value::Array(items)) => items.clone(),
                Some(other) => vec![other.clone()],
                None => Vec::new(),
            };
            blocks.iter().any(|b| b.get("backend").is_some() || b.get("cloud").is_some())
        } else {
            let Ok(body) = hcl_edit::parser::parse_body(text) else { return false };
            body.get_blocks("terraform").any(|t| t.body.has_blocks("backend") || t.body.has_blocks("cloud"))
        }
    })
}

/// The repo directory a local module source names, relative to the directory `dir` using it.
/// `None` for registry, git and other remote sources, and for paths that leave the repo.
pub fn resolve_local_source(dir: &str, source: &str) -> Option<String> {
    if !(source.starts_with("./") || source.starts_with("../")) {
        return None;
    }
    crate::tree::resolve_relative(dir, source)
}

/// What one directory's Terraform files say about modules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirModules {
    /// Directories used as local modules, resolved and sorted. They may not exist.
    pub uses: Vec<String>,
    /// Files that could not be parsed, with the reason and position.
    pub problems: Vec<String>,
}

/// Answers about the module graph, whether it is held in memory ([`ModuleGraph`]) or read
/// from a cache file ([`ModuleIndex`]).
pub trait ModuleLookup {
    /// Whether some directory uses `dir` as a local module.
    fn is_module(&self, dir: &str) -> bool;
    /// The directories that use `module` directly.
    fn direct_users(&self, module: &str) -> Vec<String>;
    /// The local modules `dir` uses directly.
    fn uses(&self, dir: &str) -> Vec<String>;
    /// Files in `dir` whose module blocks could not be read.
    fn problems(&self, dir: &str) -> Vec<String>;

    /// Every directory that uses `module`, directly or through other modules, in no particular
    /// order (`module` itself only when a cycle leads back to it).
    fn transitive_users(&self, module: &str) -> Vec<String> {
        self.transitive_users_given(module, &|_| None)
    }

    /// [`transitive_users`](Self::transitive_users), taking a user's own transitive users from
    /// `known` when it has them instead of walking past that user: everything reachable from a
    /// user is in its answer, so the walk stops there. Up a chain of nested modules, each
    /// level then costs one lookup instead of one per level above it.
    fn transitive_users_given<'k>(&self, module: &str, known: &dyn Fn(&str) -> Option<&'k [String]>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::default();
        let mut pending = self.direct_users(module);
        while let Some(user) = pending.pop() {
            if !seen.insert(user.clone()) {
                continue;
            }
            match known(&user) {
                Some(reachable) => {
                    for further in reachable {
                        if seen.insert(further.clone()) {
                            out.push(further.clone());
                        }
                    }
                }
                None => pending.extend(self.direct_users(&user)),
            }
            out.push(user);
        }
        out
    }

    /// The local modules `dir` uses, directly or through other modules, sorted. Cycles on
    /// disk are allowed by Terraform's parser; each directory is visited once.
    fn modules_of(&self, dir: &str) -> Vec<String> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut pending: Vec<String> = vec![dir.to_owned()];
        while let Some(current) = pending.pop() {
            for used in self.uses(&current) {
                if used != dir && seen.insert(used.clone()) {
                    pending.push(used);
                }
            }
        }
        seen.into_iter().collect()
    }
}

/// Every directory holding Terraform files, and the local modules each uses directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModuleGraph {
    dirs: BTreeMap<String, DirModules>,
    /// The reverse edges, kept in step with `dirs`.
    users: BTreeMap<String, Vec<String>>,
}

/// Directory names a walk never enters: hidden ones (`.git`, `.terraform` with its downloaded
/// modules) and package caches.
fn skip_dir(name: &str) -> bool {
    name.starts_with('.') || name == "node_modules"
}

impl ModuleGraph {
    /// Walks the whole tree.
    pub fn build(tree: &dyn Tree) -> Result<Self, TreeError> {
        let mut graph = ModuleGraph::default();
        let mut pending = vec![String::new()];
        while let Some(dir) = pending.pop() {
            let Some(entries) = tree.read_dir(&dir)? else {
                continue;
            };
            for entry in &entries {
                if entry.kind == EntryKind::Dir && !skip_dir(&entry.name) {
                    pending.push(join(&dir, &entry.name));
                }
            }
            if let Some(modules) = Self::scan_dir(tree, &dir, &entries)? {
                graph.dirs.insert(dir, modules);
            }
        }
        graph.rebuild_users();
        Ok(graph)
    }

    fn rebuild_users(&mut self) {
        self.users = users_of(self.dirs.iter().map(|(dir, modules)| (dir, Some(modules))));
    }

    /// Re-reads the given directories, after the files in them changed.
    pub fn update<'a>(&mut self, tree: &dyn Tree, dirs: impl IntoIterator<Item = &'a str>) -> Result<(), TreeError> {
        self.apply(&ModulePatch::read(tree, dirs)?);
        Ok(())
    }

    /// Takes in the directories a patch re-read.
    pub fn apply(&mut self, patch: &ModulePatch) {
        for (dir, modules) in &patch.dirs {
            match modules {
                Some(modules) => self.dirs.insert(dir.clone(), modules.clone()),
                None => self.dirs.remove(dir),
            };
        }
        self.rebuild_users();
    }

    pub(crate) fn scan_dir(
        tree: &dyn Tree,
        dir: &str,
        entries: &[crate::tree::DirEntry],
    ) -> Result<Option<DirModules>, TreeError> {
        let mut found = false;
        let mut modules = DirModules::default();
        for entry in entries.iter().filter(|e| e.kind == EntryKind::File && is_terraform_file(&e.name)) {
            found = true;
            let path = join(dir, &entry.name);
            let Some(bytes) = tree.read_file(&path)? else {
                continue;
            };
            match module_sources(&path, &bytes) {
                Ok(sources) => modules.uses.extend(sources.iter().filter_map(|s| resolve_local_source(dir, s))),
                Err(problem) => modules.problems.push(problem),
            }
        }
        modules.uses.retain(|m| m != dir);
        modules.uses.sort();
        modules.uses.dedup();
        Ok(found.then_some(modules))
    }

    /// Directories holding Terraform files.
    pub fn dirs(&self) -> impl Iterator<Item = (&str, &DirModules)> {
        self.dirs.iter().map(|(d, m)| (d.as_str(), m))
    }

    pub fn get(&self, dir: &str) -> Option<&DirModules> {
        self.dirs.get(dir)
    }

    /// Directories that no other directory uses as a module: the Terraform roots.
    pub fn roots(&self) -> Vec<&str> {
        let used: HashSet<&str> = self.dirs.values().flat_map(|m| m.uses.iter().map(String::as_str)).collect();
        self.dirs.keys().map(String::as_str).filter(|d| !used.contains(d)).collect()
    }

    /// The compact binary form that [`ModuleIndex`] reads, for caching between runs.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let dirs = write_table(&mut body, self.dirs.iter().map(|(d, m)| (d.as_str(), m.uses.as_slice())));
        let users = write_table(&mut body, self.users.iter().map(|(m, u)| (m.as_str(), u.as_slice())));
        let problems = write_table(
            &mut body,
            self.dirs.iter().filter(|(_, m)| !m.problems.is_empty()).map(|(d, m)| (d.as_str(), m.problems.as_slice())),
        );
        let mut header = Vec::new();
        for table in [dirs, users, problems] {
            table.write(&mut header);
        }
        for block in body.chunks(INDEX_BLOCK) {
            header.extend_from_slice(&checksum(block).to_le_bytes());
        }
        let mut file = Vec::with_capacity(INDEX_MAGIC.len() + 12 + header.len() + body.len());
        file.extend_from_slice(INDEX_MAGIC);
        file.extend_from_slice(&(header.len() as u32).to_le_bytes());
        file.extend_from_slice(&checksum(&header).to_le_bytes());
        file.extend_from_slice(&header);
        file.extend_from_slice(&body);
        file
    }
}

impl ModuleLookup for ModuleGraph {
    fn is_module(&self, dir: &str) -> bool {
        self.users.contains_key(dir)
    }

    fn direct_users(&self, module: &str) -> Vec<String> {
        self.users.get(module).cloned().unwrap_or_default()
    }

    fn uses(&self, dir: &str) -> Vec<String> {
        self.dirs.get(dir).map(|m| m.uses.clone()).unwrap_or_default()
    }

    fn problems(&self, dir: &str) -> Vec<String> {
        self.dirs.get(dir).map(|m| m.problems.clone()).unwrap_or_default()
    }
}

/// Directories re-read after their files changed, to be laid over the graph of the commit they
/// changed from. A new commit's graph is then its base's (often a cached [`ModuleIndex`], read
/// only where a lookup goes) plus a patch the size of the change, instead of a copy of the
/// whole graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModulePatch {
    /// What each re-read directory says now; `None` when it holds no Terraform files any more.
    dirs: BTreeMap<String, Option<DirModules>>,
    /// For each module, the re-read directories that use it now, sorted.
    users: BTreeMap<String, Vec<String>>,
}

impl ModulePatch {
    /// Reads the given directories from `tree`. Hidden directories are skipped, as a walk of
    /// the whole tree skips them.
    pub fn read<'a>(tree: &dyn Tree, dirs: impl IntoIterator<Item = &'a str>) -> Result<Self, TreeError> {
        let mut patch = ModulePatch::default();
        for dir in dirs {
            if dir.split('/').any(skip_dir) {
                continue;
            }
            let scanned = match tree.read_dir(dir)? {
                Some(entries) => ModuleGraph::scan_dir(tree, dir, &entries)?,
                None => None,
            };
            patch.dirs.insert(dir.to_owned(), scanned);
        }
        patch.rebuild_users();
        Ok(patch)
    }

    /// This patch with a later one laid over it: for a directory both re-read, the later
    /// reading wins.
    pub fn then(mut self, later: ModulePatch) -> ModulePatch {
        self.dirs.extend(later.dirs);
        self.rebuild_users();
        self
    }

    /// How many directories were re-read.
    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    fn rebuild_users(&mut self) {
        self.users = users_of(self.dirs.iter().map(|(dir, modules)| (dir, modules.as_ref())));
    }

    /// `[magic][checksum of the rest][records]`, each record
    /// `[dir][1 if it holds Terraform files, else 0][uses][problems]`, as in the index.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (dir, modules) in &self.dirs {
            push_str(&mut body, dir);
            body.push(u8::from(modules.is_some()));
            for list in modules.iter().flat_map(|m| [&m.uses, &m.problems]) {
                push_u32(&mut body, list.len());
                list.iter().for_each(|item| push_str(&mut body, item));
            }
        }
        let mut out = Vec::with_capacity(PATCH_MAGIC.len() + 8 + body.len());
        out.extend_from_slice(PATCH_MAGIC);
        out.extend_from_slice(&checksum(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Reads what [`encode`](Self::encode) wrote; `None` if it is damaged.
    pub fn decode(bytes: &[u8]) -> Option<ModulePatch> {
        let rest = bytes.strip_prefix(PATCH_MAGIC)?;
        let (sum, body) = rest.split_first_chunk::<8>()?;
        if u64::from_le_bytes(*sum) != checksum(body) {
            return None;
        }
        let mut cursor = Cursor { bytes: body, at: 0 };
        let mut patch = ModulePatch::default();
        let string = |cursor: &mut Cursor<'_>| -> Option<String> {
            let len = cursor.u32()?;
            let range = cursor.skip(len)?;
            Some(std::str::from_utf8(&body[range]).ok()?.to_owned())
        };
        while cursor.at < body.len() {
            let dir = string(&mut cursor)?;
            let present = *body.get(cursor.at)?;
            cursor.at += 1;
            let modules = match present {
                0 => None,
                1 => {
                    let mut lists = [Vec::new(), Vec::new()];
                    for list in &mut lists {
                        let count = cursor.u32()?;
                        for _ in 0..count {
                            list.push(string(&mut cursor)?);
                        }
                    }
                    let [uses, problems] = lists;
                    Some(DirModules { uses, problems })
                }
                _ => return None,
            };
            patch.dirs.insert(dir, modules);
        }
        patch.rebuild_users();
        Some(patch)
    }
}

/// The reverse edges of `dirs`, given in key order: for each module, the directories using it,
/// sorted.
fn users_of<'a>(dirs: impl Iterator<Item = (&'a String, Option<&'a DirModules>)>) -> BTreeMap<String, Vec<String>> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (dir, modules) in dirs {
        for used in modules.iter().flat_map(|m| &m.uses) {
            users.entry(used.clone()).or_default().push(dir.clone());
        }
    }
    users
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    push_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

const PATCH_MAGIC: &[u8] = b"plinth-modules-patch-v1\n";

/// A graph with a patch laid over it: the graph of the commit the patch's directories were
/// re-read from.
#[derive(Debug)]
pub struct Patched<G> {
    pub base: G,
    pub patch: ModulePatch,
}

impl<G: std::ops::Deref<Target: ModuleLookup>> ModuleLookup for Patched<G> {
    fn is_module(&self, dir: &str) -> bool {
        !self.direct_users(dir).is_empty()
    }

    fn direct_users(&self, module: &str) -> Vec<String> {
        let mut users = self.base.direct_users(module);
        let added = self.patch.users.get(module);
        if users.is_empty() && added.is_none() {
            return users;
        }
        users.retain(|user| !self.patch.dirs.contains_key(user));
        users.extend(added.into_iter().flatten().cloned());
        users.sort();
        users
    }

    fn uses(&self, dir: &str) -> Vec<String> {
        match self.patch.dirs.get(dir) {
            Some(modules) => modules.as_ref().map(|m| m.uses.clone()).unwrap_or_default(),
            None => self.base.uses(dir),
        }
    }

    fn problems(&self, dir: &str) -> Vec<String> {
        match self.patch.dirs.get(dir) {
            Some(modules) => modules.as_ref().map(|m| m.problems.clone()).unwrap_or_default(),
            None => self.base.problems(dir),
        }
    }
}

const INDEX_MAGIC: &[u8] = b"plinth-modules-v5\n";

/// The body of an index is checked in blocks of this size, each when first read. A record that
/// fits in a block never straddles two, so most lookups read one block.
const INDEX_BLOCK: usize = 4096;

/// The index's tables, in the order they are written: every directory with the modules it uses,
/// every module with the directories using it, and the directories whose files did not parse.
#[derive(Clone, Copy, Debug)]
enum Table {
    Dirs = 0,
    Users = 1,
    Problems = 2,
}

/// One table as it is written: records sorted by key, each
/// `[key length][key][list length in bytes][each item: [length][bytes]]`, lengths as `u32`
/// little-endian, padded so that a record never crosses into the next block when it fits in
/// one. A fence is kept for the first record starting in each block, so that a lookup can
/// find its block from the header alone.
struct TableWriter<'a> {
    start: usize,
    end: usize,
    records: usize,
    /// `(offset in the body, records from here to the next fence, key)`.
    fences: Vec<(usize, usize, &'a str)>,
    last: &'a str,
}

fn push_u32(out: &mut Vec<u8>, n: usize) {
    // Lengths come from paths and parser messages; none comes near 4 GiB.
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn write_table<'a>(body: &mut Vec<u8>, records: impl Iterator<Item = (&'a str, &'a [String])>) -> TableWriter<'a> {
    let mut table = TableWriter { start: body.len(), end: 0, records: 0, fences: Vec::new(), last: "" };
    for (key, items) in records {
        let items_len: usize = items.iter().map(|i| 4 + i.len()).sum();
        let len = 8 + key.len() + items_len;
        let room = INDEX_BLOCK - body.len() % INDEX_BLOCK;
        if len <= INDEX_BLOCK && len > room {
            body.resize(body.len() + room, 0);
        }
        let block = body.len() / INDEX_BLOCK;
        match table.fences.last_mut() {
            Some((offset, count, _)) if *offset / INDEX_BLOCK == block => *count += 1,
            _ => table.fences.push((body.len(), 1, key)),
        }
        push_u32(body, key.len());
        body.extend_from_slice(key.as_bytes());
        push_u32(body, items_len);
        for item in items {
            push_u32(body, item.len());
            body.extend_from_slice(item.as_bytes());
        }
        table.records += 1;
        table.last = key;
    }
    table.end = body.len();
    table
}

impl TableWriter<'_> {
    /// `[start][end][records][fence count][each fence: [offset][records][key length][key]]`
    /// `[last key length][last key]`.
    fn write(&self, header: &mut Vec<u8>) {
        for n in [self.start, self.end, self.records, self.fences.len()] {
            push_u32(header, n);
        }
        for (offset, count, key) in &self.fences {
            push_u32(header, *offset);
            push_u32(header, *count);
            push_u32(header, key.len());
            header.extend_from_slice(key.as_bytes());
        }
        push_u32(header, self.last.len());
        header.extend_from_slice(self.last.as_bytes());
    }
}

/// Reads a header or a record front to back; `None` past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<usize> {
        let b = self.bytes.get(self.at..self.at.checked_add(4)?)?;
        self.at += 4;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// The next `len` bytes, as a range of the whole.
    fn skip(&mut self, len: usize) -> Option<std::ops::Range<usize>> {
        let end = self.at.checked_add(len).filter(|end| *end <= self.bytes.len())?;
        let range = self.at..end;
        self.at = end;
        Some(range)
    }

    /// The next record: its key, and its list's bytes.
    fn record(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        let key_len = self.u32()?;
        let key = self.skip(key_len)?;
        let items_len = self.u32()?;
        let items = self.skip(items_len)?;
        Some((&self.bytes[key], &self.bytes[items]))
    }
}

/// A record's list: the items, or `None` if they do not parse.
fn items(bytes: &[u8]) -> Option<Vec<String>> {
    let mut cursor = Cursor { bytes, at: 0 };
    let mut out = Vec::new();
    while cursor.at < bytes.len() {
        let len = cursor.u32()?;
        let item = cursor.skip(len)?;
        out.push(std::str::from_utf8(&bytes[item]).ok()?.to_owned());
    }
    Some(out)
}

/// Where a table's records are, and its fences; keys are ranges of the header.
#[derive(Debug, Default)]
struct TableIndex {
    start: usize,
    end: usize,
    records: usize,
    /// `(offset in the body, records from here to the next fence, key)`.
    fences: Vec<(usize, usize, std::ops::Range<usize>)>,
    last: std::ops::Range<usize>,
}

impl TableIndex {
    fn read(header: &mut Cursor<'_>, start: usize) -> Option<Self> {
        let (table_start, end, records, fence_count) = (header.u32()?, header.u32()?, header.u32()?, header.u32()?);
        if table_start != start || end < start {
            return None;
        }
        let mut fences = Vec::with_capacity(fence_count.min(header.bytes.len() / 12));
        let mut counted = 0;
        for _ in 0..fence_count {
            let (offset, count) = (header.u32()?, header.u32()?);
            let key_len = header.u32()?;
            let key = header.skip(key_len)?;
            if offset < fences.last().map_or(start, |f: &(usize, usize, _)| f.0 + 1) || offset >= end {
                return None;
            }
            counted += count;
            fences.push((offset, count, key));
        }
        let last_len = header.u32()?;
        let last = header.skip(last_len)?;
        (counted == records).then_some(TableIndex { start, end, records, fences, last })
    }
}

/// Fills `buf` from `offset` of a source; used by [`ModuleIndex`].
fn fill(source: &impl IndexSource, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    source.read_exact_at(offset, &mut buf).then_some(buf)
}

/// A fast checksum that catches damaged cache files; not meant to resist tampering.
fn checksum(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7]]);
        hash = (hash ^ word).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
    }
    for &byte in chunks.remainder() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^ bytes.len() as u64
}

/// Where a [`ModuleIndex`] reads its bytes: memory, or a file read piece by piece.
pub trait IndexSource {
    /// The size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`, or fails.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool;
}

impl IndexSource for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        let Ok(start) = usize::try_from(offset) else { return false };
        match self.get(start..start.saturating_add(buf.len())) {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// A body block: `None` until read, then `Some(None)` if it failed its check.
type BlockState = Option<Option<Box<[u8]>>>;

/// A cached module graph, read on demand: opening it reads and checks the header, which holds
/// the first key of each block of each table; each block of the body is read and checked the
/// first time a lookup needs it, and a lookup reads the one block its key can be in. So the cost
/// of a run does not grow with the size of the repository.
///
/// A block that fails its check marks the index damaged; callers check
/// [`ModuleIndex::is_damaged`] after their lookups and start over without the cache.
pub struct ModuleIndex<S: IndexSource = Vec<u8>> {
    source: S,
    /// Where the body starts in the source.
    body: u64,
    body_len: u64,
    checksums: Vec<u64>,
    /// Blocks read so far, by number: `None` unread, `Some(None)` damaged.
    blocks: std::cell::RefCell<Vec<BlockState>>,
    damaged: std::cell::Cell<bool>,
    /// The header, which holds the fences' keys.
    header: Box<[u8]>,
    tables: [TableIndex; 3],
    /// Modules looked up so far, with their users: a change's paths share most of their
    /// ancestors, and the users of a module are asked again for each module below it.
    seen_modules: std::cell::RefCell<HashMap<String, Option<Vec<String>>>>,
}

impl<S: IndexSource> std::fmt::Debug for ModuleIndex<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleIndex")
            .field("dirs", &self.tables[Table::Dirs as usize].records)
            .field("modules", &self.tables[Table::Users as usize].records)
            .finish()
    }
}

impl<S: IndexSource> ModuleIndex<S> {
    /// Opens [`ModuleGraph::encode`]'s output; `None` if its header is damaged or from another
    /// version.
    pub fn open(source: S) -> Option<Self> {
        let fixed = fill(&source, 0, INDEX_MAGIC.len() + 12)?;
        let rest = fixed.strip_prefix(INDEX_MAGIC)?;
        let header_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let header_sum = u64::from_le_bytes([rest[4], rest[5], rest[6], rest[7], rest[8], rest[9], rest[10], rest[11]]);
        if header_len as u64 > source.size() {
            return None;
        }
        let header = fill(&source, fixed.len() as u64, header_len)?;
        if checksum(&header) != header_sum {
            return None;
        }
        let mut cursor = Cursor { bytes: &header, at: 0 };
        let dirs = TableIndex::read(&mut cursor, 0)?;
        let users = TableIndex::read(&mut cursor, dirs.end)?;
        let problems = TableIndex::read(&mut cursor, users.end)?;
        let body_len = problems.end;
        let checksums: Vec<u64> = header[cursor.at..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let body = (fixed.len() + header_len) as u64;
        if !(header.len() - cursor.at).is_multiple_of(8)
            || body.checked_add(body_len as u64)? != source.size()
            || checksums.len() != body_len.div_ceil(INDEX_BLOCK)
        {
            return None;
        }
        let blocks = std::cell::RefCell::new(vec![None; checksums.len()]);
        Some(ModuleIndex {
            source,
            body,
            body_len: body_len as u64,
            checksums,
            blocks,
            damaged: Default::default(),
            header: header.into_boxed_slice(),
            tables: [dirs, users, problems],
            seen_modules: Default::default(),
        })
    }

    /// Whether a block failed its check during lookups, so that their answers cannot be
    /// trusted.
    pub fn is_damaged(&self) -> bool {
        self.damaged.get()
    }

    /// Reads and checks block `index` unless that happened already; whether it is sound.
    fn load(&self, index: usize) -> bool {
        if let Some(Some(found)) = self.blocks.borrow().get(index) {
            return found.is_some();
        }
        let start = index * INDEX_BLOCK;
        let len = (self.body_len as usize).saturating_sub(start).min(INDEX_BLOCK);
        let read = fill(&self.source, self.body + start as u64, len)
            .filter(|buf| len > 0 && self.checksums.get(index) == Some(&checksum(buf)));
        if read.is_none() {
            self.damaged.set(true);
        }
        let ok = read.is_some();
        if let Some(slot) = self.blocks.borrow_mut().get_mut(index) {
            *slot = Some(read.map(Vec::into_boxed_slice));
        }
        ok
    }

    /// Runs `f` on body bytes `offset..offset + len`, reading and checking their blocks.
    fn with_bytes<R>(&self, offset: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let end = offset.checked_add(len)?;
        if end as u64 > self.body_len {
            self.damaged.set(true);
            return None;
        }
        if len == 0 {
            return Some(f(&[]));
        }
        let (first, last) = (offset / INDEX_BLOCK, (end - 1) / INDEX_BLOCK);
        if !(first..=last).all(|index| self.load(index)) {
            return None;
        }
        let blocks = self.blocks.borrow();
        let block = |index: usize| blocks.get(index).and_then(|b| b.as_ref()).and_then(|b| b.as_deref());
        if first == last {
            let from = offset - first * INDEX_BLOCK;
            return Some(f(block(first)?.get(from..from + len)?));
        }
        let mut joined = Vec::with_capacity(len);
        for index in first..=last {
            let bytes = block(index)?;
            let from = offset.saturating_sub(index * INDEX_BLOCK);
            let to = (end - index * INDEX_BLOCK).min(bytes.len());
            joined.extend_from_slice(bytes.get(from..to)?);
        }
        Some(f(&joined))
    }

    /// Runs `f` on the list of the record keyed `wanted`, if there is one: the fences say
    /// which block it is in, and only that block is read.
    fn find<R>(&self, table: Table, wanted: &str, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let t = &self.tables[table as usize];
        let key = |range: &std::ops::Range<usize>| self.header.get(range.clone()).unwrap_or_default();
        let wanted = wanted.as_bytes();
        if t.records == 0 || wanted > key(&t.last) {
            return None;
        }
        let at = t.fences.partition_point(|(_, _, k)| key(k) <= wanted).checked_sub(1)?;
        let (offset, count, _) = t.fences[at];
        let end = t.fences.get(at + 1).map_or(t.end, |next| next.0);
        let found = self.with_bytes(offset, end - offset, |bytes| {
            let mut cursor = Cursor { bytes, at: 0 };
            for _ in 0..count {
                let Some((k, list)) = cursor.record() else {
                    return Err(());
                };
                match k.cmp(wanted) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => return Ok(Some(f(list))),
                    std::cmp::Ordering::Greater => return Ok(None),
                }
            }
            Ok(None)
        })?;
        found.unwrap_or_else(|()| {
            self.damaged.set(true);
            None
        })
    }

    /// The list of the record keyed `wanted`; empty when there is none.
    fn list(&self, table: Table, wanted: &str) -> Vec<String> {
        self.find(table, wanted, items)
            .map(|list| {
                list.unwrap_or_else(|| {
                    self.damaged.set(true);
                    Vec::new()
                })
            })
            .unwrap_or_default()
    }

    /// Every record of a table, in key order; `None` if damaged.
    fn all(&self, table: Table) -> Option<Vec<(String, Vec<String>)>> {
        let t = &self.tables[table as usize];
        let records = self.with_bytes(t.start, t.end - t.start, |bytes| {
            let mut out = Vec::with_capacity(t.records);
            for (offset, count, _) in &t.fences {
                let mut cursor = Cursor { bytes, at: offset - t.start };
                for _ in 0..*count {
                    let (key, list) = cursor.record()?;
                    out.push((std::str::from_utf8(key).ok()?.to_owned(), items(list)?));
                }
            }
            Some(out)
        })?;
        if records.is_none() {
            self.damaged.set(true);
        }
        records
    }

    /// Reads the whole index back into a graph that can be updated; `None` if damaged.
    pub fn to_graph(&self) -> Option<ModuleGraph> {
        let mut graph = ModuleGraph::default();
        for (dir, uses) in self.all(Table::Dirs)? {
            graph.dirs.insert(dir, DirModules { uses, problems: Vec::new() });
        }
        for (dir, problems) in self.all(Table::Problems)? {
            graph.dirs.get_mut(&dir)?.problems = problems;
        }
        graph.rebuild_users();
        Some(graph)
    }
}

impl<S: IndexSource> ModuleIndex<S> {
    /// Runs `f` on the users of `module`, or on `None` if it is not a module.
    fn with_users<R>(&self, module: &str, f: impl FnOnce(Option<&Vec<String>>) -> R) -> R {
        if let Some(found) = self.seen_modules.borrow().get(module) {
            return f(found.as_ref());
        }
        let found = self.find(Table::Users, module, items).map(|list| {
            list.unwrap_or_else(|| {
                self.damaged.set(true);
                Vec::new()
            })
        });
        let result = f(found.as_ref());
        self.seen_modules.borrow_mut().insert(module.to_owned(), found);
        result
    }
}

impl<S: IndexSource> ModuleLookup for ModuleIndex<S> {
    fn is_module(&self, dir: &str) -> bool {
        self.with_users(dir, |users| users.is_some())
    }

    fn direct_users(&self, module: &str) -> Vec<String> {
        self.with_users(module, |users| users.cloned().unwrap_or_default())
    }

    fn uses(&self, dir: &str) -> Vec<String> {
        self.list(Table::Dirs, dir)
    }

    fn problems(&self, dir: &str) -> Vec<String> {
        self.list(Table::Problems, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::MemTree;

    #[test]
    fn sources_are_read_from_hcl_and_json() {
        let hcl = r#"
            # a module "commented" { source = "./no" }
            module "app" {
              source = "../../modules/app"
              name   = "x"
            }
            module "registry" { source = "terraform-aws-modules/vpc/aws" }
            resource "terraform_data" "x" {}
        "#;
        assert_eq!(
            module_sources("main.tf", hcl.as_bytes()).unwrap(),
            ["../../modules/app", "terraform-aws-modules/vpc/aws"]
        );
        let json = r#"{"module": {"a": {"source": "./a"}, "b": [{"source": "../b"}]}}"#;
        assert_eq!(module_sources("main.tf.json", json.as_bytes()).unwrap(), ["./a", "../b"]);
        assert_eq!(module_sources("x.tf", b"resource \"a\" \"b\" {}").unwrap(), Vec::<String>::new());
        let err = module_sources("bad.tf", b"module \"x\" {\n  source = \n").unwrap_err();
        assert!(err.starts_with("bad.tf:"), "{err}");
    }

    #[test]
    fn backends_are_noticed_in_hcl_and_json() {
        let file = |name: &str, text: &str| (name.to_owned(), text.as_bytes().to_vec());
        assert!(declares_backend(&[file("main.tf", "terraform {\n  backend \"s3\" {}\n}\n")]));
        assert!(declares_backend(&[file("x.tf", "terraform {\n  cloud {\n organization = \"o\"\n }\n}\n")]));
        assert!(declares_backend(&[file("b.tf.json", r#"{"terraform": {"backend": {"local": {}}}}"#)]));
        assert!(!declares_backend(&[file("main.tf", "resource \"terraform_data\" \"backend\" {}\n")]));
        assert!(!declares_backend(&[file("main.tf", "terraform {\n  required_version = \">= 1.5\"\n}\n")]));
        assert!(!declares_backend(&[]));
    }

    #[test]
    fn local_sources_resolve_inside_the_repo() {
        let cases = [
            ("terraform/stg", "../../modules/app", Some("modules/app")),
            ("terraform/stg", "./sub", Some("terraform/stg/sub")),
            ("terraform/stg", "./sub/", Some("terraform/stg/sub")),
            ("misoca-dev-envs", "../modules/misoca-environment", Some("modules/misoca-environment")),
            ("", "./modules/x", Some("modules/x")),
            ("a", "../../outside", None),
            ("a", "hashicorp/consul/aws", None),
            ("a", "git::https://example.com/x.git", None),
        ];
        for (dir, source, expected) in cases {
            assert_eq!(resolve_local_source(dir, source).as_deref(), expected, "{dir} + {source}");
        }
    }

    fn seed_000() -> MemTree {
        MemTree::new()
            .with("terraform/stg/main.tf", r#"module "app" { source = "../../modules/app" }"#)
            .with("terraform/prd/main.tf", r#"module "app" { source = "../../modules/app" }"#)
            .with("modules/app/main.tf", r#"module "net" { source = "../net" }"#)
            .with("modules/net/main.tf", r#"module "app" { source = "../app" }"#)
            .with(".terraform/modules/x/main.tf", "")
            .with("README.md", "")
    }

    #[test]
    fn graph_follows_modules_transitively_and_survives_cycles() {
        let graph = ModuleGraph::build(&seed_000()).unwrap();
        assert_eq!(graph.modules_of("terraform/stg"), ["modules/app", "modules/net"]);
        assert_eq!(graph.modules_of("modules/app"), ["modules/net"]);
        assert_eq!(graph.roots(), ["terraform/prd", "terraform/stg"]);
        let mut got = graph.transitive_users("modules/net");
        got.sort();
        assert_eq!(got, ["modules/app", "modules/net", "terraform/prd", "terraform/stg"]);
        // Given what `modules/app` reaches, the walk stops there with the same answer.
        let app = graph.transitive_users("modules/app");
        let mut given = graph.transitive_users_given("modules/net", &|dir| (dir == "modules/app").then_some(&app[..]));
        given.sort();
        assert_eq!(given, got);
        assert!(graph.get(".terraform/modules/x").is_none());
    }

    #[test]
    fn update_rereads_changed_directories() {
        let mut tree = seed_000();
        let mut graph = ModuleGraph::build(&tree).unwrap();
        tree.insert("terraform/stg/main.tf", "");
        tree.remove("modules/net/main.tf");
        graph.update(&tree, ["terraform/stg", "modules/net"]).unwrap();
        assert_eq!(graph, ModuleGraph::build(&tree).unwrap());
        assert_eq!(graph.modules_of("terraform/stg"), Vec::<String>::new());
    }

    /// Every answer `lookup` gives about the directories of `tree` and the modules they name.
    fn answers(lookup: &dyn ModuleLookup, tree: &MemTree) -> Vec<String> {
        let graph = ModuleGraph::build(tree).unwrap();
        let mut dirs: BTreeSet<String> = graph.dirs().map(|(d, _)| d.to_owned()).collect();
        dirs.extend(graph.dirs().flat_map(|(_, m)| m.uses.clone()));
        dirs.extend(["terraform/stg", "terraform/prd", "modules/app", "modules/net", "modules/db"].map(String::from));
        dirs.into_iter()
            .map(|d| {
                let (module, users, uses, problems) =
                    (lookup.is_module(&d), lookup.direct_users(&d), lookup.uses(&d), lookup.problems(&d));
                format!("{d}: module {module}, users {users:?}, uses {uses:?}, problems {problems:?}")
            })
            .collect()
    }

    #[test]
    fn a_patched_index_answers_like_the_graph_of_the_new_tree() {
        let before = seed_000();
        let index = ModuleIndex::open(ModuleGraph::build(&before).unwrap().encode()).unwrap();
        // stg leaves the module, prd moves to a new one, net goes away, a file stops parsing.
        let mut after = before.clone();
        after.insert("terraform/stg/main.tf", "resource \"terraform_data\" \"own\" {}");
        after.insert("terraform/prd/main.tf", r#"module "db" { source = "../../modules/db" }"#);
        after.insert("modules/db/main.tf", r#"module "app" { source = "../app" }"#);
        after.insert("modules/app/broken.tf", "module {");
        after.remove("modules/net/main.tf");
        let dirs = ["terraform/stg", "terraform/prd", "modules/db", "modules/app", "modules/net"];
        let patched = Patched { base: &index, patch: ModulePatch::read(&after, dirs).unwrap() };
        let expected = ModuleGraph::build(&after).unwrap();
        assert_eq!(answers(&patched, &after), answers(&expected, &after));
        assert!(patched.is_module("modules/db") && patched.uses("terraform/stg").is_empty());
        assert_eq!(patched.direct_users("modules/app"), ["modules/db"]);
        assert_eq!(patched.problems("modules/app").len(), 1);

        // A second change, laid over the first, and through the patch's own encoding.
        let mut later = after.clone();
        later.insert("terraform/stg/main.tf", r#"module "app" { source = "../../modules/app" }"#);
        let patch =
            ModulePatch::read(&after, dirs).unwrap().then(ModulePatch::read(&later, ["terraform/stg"]).unwrap());
        let patch = ModulePatch::decode(&patch.encode()).unwrap();
        let patched = Patched { base: &index, patch };
        assert_eq!(answers(&patched, &later), answers(&ModuleGraph::build(&later).unwrap(), &later));
        let mut graph = ModuleGraph::build(&before).unwrap();
        graph.apply(&patched.patch);
        assert_eq!(graph, ModuleGraph::build(&later).unwrap());
    }

    #[test]
    fn a_damaged_patch_is_rejected() {
        let patch = ModulePatch::read(&seed_000(), ["terraform/stg", "modules/gone"]).unwrap();
        assert_eq!(patch.len(), 2);
        let bytes = patch.encode();
        assert_eq!(ModulePatch::decode(&bytes), Some(patch));
        for at in [0, PATCH_MAGIC.len() + 3, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x20;
            assert_eq!(ModulePatch::decode(&damaged), None, "damage at byte {at} went unnoticed");
        }
        assert_eq!(ModulePatch::decode(&bytes[..bytes.len() - 2]), None);
    }

    /// An index source that counts the reads made after opening.
    struct Counted {
        bytes: Vec<u8>,
        reads: std::cell::Cell<usize>,
    }

    impl IndexSource for Counted {
        fn size(&self) -> u64 {
            self.bytes.size()
        }

        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
            self.reads.set(self.reads.get() + 1);
            self.bytes.read_exact_at(offset, buf)
        }
    }

    #[test]
    fn a_large_index_answers_like_the_graph_reading_one_block_a_lookup() {
        let mut graph = ModuleGraph::default();
        for m in 0..100 {
            graph.dirs.insert(format!("modules/m{m:03}"), DirModules::default());
        }
        for i in 0..3000 {
            // The first 400 stacks share a module whose list of users is longer than a block.
            let mut uses = vec![format!("modules/m{:03}", i % 100)];
            if i < 400 {
                uses.push("modules/shared".to_owned());
            }
            graph.dirs.insert(format!("stacks/s{i:04}"), DirModules { uses, problems: Vec::new() });
        }
        graph.dirs.get_mut("stacks/s0007").unwrap().problems.push(format!("main.tf:1:1: {}", "x".repeat(5000)));
        graph.dirs.get_mut("stacks/s2999").unwrap().problems.push("main.tf:2:1: broken".to_owned());
        graph.rebuild_users();
        let bytes = graph.encode();
        let open = || ModuleIndex::open(Counted { bytes: bytes.clone(), reads: Default::default() }).unwrap();

        let index = open();
        let mut dirs: Vec<String> = graph.dirs.keys().cloned().collect();
        dirs.extend(
            ["", "a", "modules", "modules/m0500", "modules/shared", "stacks/s0001/config", "zzz"].map(String::from),
        );
        for dir in &dirs {
            assert_eq!(index.uses(dir), graph.uses(dir), "{dir}");
            assert_eq!(index.direct_users(dir), graph.direct_users(dir), "{dir}");
            assert_eq!(index.is_module(dir), graph.is_module(dir), "{dir}");
            assert_eq!(index.problems(dir), graph.problems(dir), "{dir}");
        }
        assert!(!index.is_damaged());
        assert_eq!(index.to_graph(), Some(graph.clone()));

        // Reads after opening, per lookup: one block, or none when the key is past a table's
        // last one.
        type Lookup = fn(&ModuleIndex<Counted>);
        let lookups: [(&str, Lookup, usize); 5] = [
            (
                "a module and its users",
                |i| assert!(i.is_module("modules/m050") && i.direct_users("modules/m050").len() == 30),
                1,
            ),
            ("a stack's modules", |i| assert_eq!(i.uses("stacks/s1234"), ["modules/m034"]), 1),
            ("a directory under a stack", |i| assert!(!i.is_module("stacks/s1234/config")), 0),
            ("problems in a directory", |i| assert_eq!(i.problems("stacks/s2999").len(), 1), 1),
            ("past the end", |i| assert!(i.uses("zzz").is_empty()), 0),
        ];
        for (what, lookup, blocks) in lookups {
            let index = open();
            index.source.reads.set(0);
            lookup(&index);
            assert_eq!(index.source.reads.get(), blocks, "{what}");
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_damage() {
        let mut tree = seed_000();
        tree.insert("broken/main.tf", "module \"x\" {");
        let graph = ModuleGraph::build(&tree).unwrap();
        assert_eq!(graph.get("broken").unwrap().problems.len(), 1);
        let bytes = graph.encode();
        let index = ModuleIndex::open(bytes.clone()).unwrap();
        assert_eq!(index.to_graph(), Some(graph.clone()));
        for dir in ["terraform/stg", "modules/app", "modules/net", "broken", "missing", ""] {
            assert_eq!(index.uses(dir), graph.uses(dir), "{dir}");
            assert_eq!(index.direct_users(dir), graph.direct_users(dir), "{dir}");
            assert_eq!(index.is_module(dir), graph.is_module(dir), "{dir}");
            assert_eq!(index.problems(dir), graph.problems(dir), "{dir}");
        }
        assert!(!index.is_damaged());
        assert!(ModuleIndex::open(bytes[..bytes.len() - 1].to_vec()).is_none());
        assert!(ModuleIndex::open(b"something else".to_vec()).is_none());
        // Any flipped byte is refused when opening or noticed by the lookups that read it,
        // and nothing panics.
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x5a;
            if let Some(index) = ModuleIndex::open(damaged) {
                let graph_back = index.to_graph();
                assert!(index.is_damaged(), "byte {i} flipped unnoticed");
                assert!(graph_back.is_none(), "byte {i}");
            }
        }
    }
}
