//! The local module graph: which directories a Terraform directory uses through `module`
//! blocks whose `source` is a local path, found by parsing `.tf` and `.tf.json` files.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

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

    /// Every directory that uses `module`, directly or through other modules.
    fn transitive_users(&self, module: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut next = 0;
        for user in self.direct_users(module) {
            if seen.insert(user.clone()) {
                out.push(user);
            }
        }
        while next < out.len() {
            let current = out[next].clone();
            next += 1;
            for user in self.direct_users(&current) {
                if seen.insert(user.clone()) {
                    out.push(user);
                }
            }
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
        self.users.clear();
        for (dir, modules) in &self.dirs {
            for used in &modules.uses {
                self.users.entry(used.clone()).or_default().push(dir.clone());
            }
        }
    }

    /// Re-reads the given directories, after the files in them changed.
    pub fn update<'a>(&mut self, tree: &dyn Tree, dirs: impl IntoIterator<Item = &'a str>) -> Result<(), TreeError> {
        for dir in dirs {
            if dir.split('/').any(skip_dir) {
                continue;
            }
            let scanned = match tree.read_dir(dir)? {
                Some(entries) => Self::scan_dir(tree, dir, &entries)?,
                None => None,
            };
            match scanned {
                Some(modules) => self.dirs.insert(dir.to_owned(), modules),
                None => self.dirs.remove(dir),
            };
        }
        self.rebuild_users();
        Ok(())
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
        let mut strings = StringTable::default();
        let mut refs: Vec<u32> = Vec::new();
        let mut forward: Vec<[u32; 5]> = Vec::with_capacity(self.dirs.len());
        for (dir, modules) in &self.dirs {
            let dir_id = strings.id(dir);
            let uses_start = refs.len() as u32;
            refs.extend(modules.uses.iter().map(|m| strings.id(m)));
            let problems_start = refs.len() as u32;
            refs.extend(modules.problems.iter().map(|p| strings.id(p)));
            forward.push([
                dir_id,
                uses_start,
                modules.uses.len() as u32,
                problems_start,
                modules.problems.len() as u32,
            ]);
        }
        let mut reverse: Vec<[u32; 3]> = Vec::with_capacity(self.users.len());
        for (module, users) in &self.users {
            let module_id = strings.id(module);
            let start = refs.len() as u32;
            refs.extend(users.iter().map(|u| strings.id(u)));
            reverse.push([module_id, start, users.len() as u32]);
        }
        let mut body = Vec::with_capacity(strings.pool.len() + 4 * (refs.len() + 5 * forward.len() + 8));
        for word in forward.iter().flatten().chain(reverse.iter().flatten()).chain(refs.iter()) {
            body.extend_from_slice(&word.to_le_bytes());
        }
        for (offset, len) in &strings.spans {
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
        }
        body.extend_from_slice(strings.pool.as_bytes());

        let mut header = Vec::new();
        for n in [forward.len(), reverse.len(), refs.len(), strings.spans.len(), strings.pool.len()] {
            header.extend_from_slice(&(n as u32).to_le_bytes());
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

const INDEX_MAGIC: &[u8] = b"plinth-modules-v4\n";

/// The body of an index is checked in blocks of this size, each when first read.
const INDEX_BLOCK: usize = 4096;

/// Interns strings into one pool while encoding.
#[derive(Default)]
struct StringTable {
    ids: HashMap<String, u32>,
    spans: Vec<(u32, u32)>,
    pool: String,
}

impl StringTable {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.spans.len() as u32;
        self.spans.push((self.pool.len() as u32, s.len() as u32));
        self.pool.push_str(s);
        self.ids.insert(s.to_owned(), id);
        id
    }
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

/// A cached module graph, read on demand: opening it reads and checks only a small header, each
/// block of the body is read and checked the first time a lookup needs it, and lookups are
/// binary searches. So the cost of a run does not grow with the size of the repository.
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
    /// Reverse-table lookups so far: a change's paths share most of their ancestors.
    seen_modules: std::cell::RefCell<HashMap<String, Option<[u32; 3]>>>,
    forward: (usize, usize),
    reverse: (usize, usize),
    refs: (usize, usize),
    strings: (usize, usize),
    /// Where the string pool starts in the body.
    pool: usize,
}

impl<S: IndexSource> std::fmt::Debug for ModuleIndex<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleIndex").field("dirs", &self.forward.1).field("modules", &self.reverse.1).finish()
    }
}

impl<S: IndexSource> ModuleIndex<S> {
    /// Opens [`ModuleGraph::encode`]'s output; `None` if its header is damaged or from another
    /// version.
    pub fn open(source: S) -> Option<Self> {
        let mut fixed = vec![0u8; INDEX_MAGIC.len() + 12];
        if !source.read_exact_at(0, &mut fixed) || !fixed.starts_with(INDEX_MAGIC) {
            return None;
        }
        let rest = &fixed[INDEX_MAGIC.len()..];
        let header_len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let header_sum = u64::from_le_bytes([rest[4], rest[5], rest[6], rest[7], rest[8], rest[9], rest[10], rest[11]]);
        if header_len < 20 || !(header_len - 20).is_multiple_of(8) || header_len as u64 > source.size() {
            return None;
        }
        let mut header = vec![0u8; header_len];
        if !source.read_exact_at(fixed.len() as u64, &mut header) || checksum(&header) != header_sum {
            return None;
        }
        let n: Vec<usize> =
            header[..20].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize).collect();
        let (n_forward, n_reverse, n_refs, n_strings, pool_len) = (n[0], n[1], n[2], n[3], n[4]);
        let checksums: Vec<u64> = header[20..]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        let word_count = n_forward.checked_mul(5)? + n_reverse.checked_mul(3)? + n_refs + n_strings.checked_mul(2)?;
        let pool = word_count.checked_mul(4)?;
        let body = (fixed.len() + header_len) as u64;
        let body_len = (pool + pool_len) as u64;
        if body.checked_add(body_len)? != source.size() || checksums.len() != (body_len as usize).div_ceil(INDEX_BLOCK)
        {
            return None;
        }
        let forward = (0, n_forward);
        let reverse = (n_forward * 5, n_reverse);
        let refs = (reverse.0 + n_reverse * 3, n_refs);
        let strings = (refs.0 + n_refs, n_strings);
        let blocks = std::cell::RefCell::new(vec![None; checksums.len()]);
        Some(ModuleIndex {
            source,
            body,
            body_len,
            checksums,
            blocks,
            damaged: Default::default(),
            seen_modules: Default::default(),
            forward,
            reverse,
            refs,
            strings,
            pool,
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
        let mut buf = vec![0u8; len];
        let ok = len > 0
            && self.source.read_exact_at(self.body + start as u64, &mut buf)
            && self.checksums.get(index) == Some(&checksum(&buf));
        if !ok {
            self.damaged.set(true);
        }
        if let Some(slot) = self.blocks.borrow_mut().get_mut(index) {
            *slot = Some(ok.then(|| buf.into_boxed_slice()));
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

    fn word(&self, i: usize) -> Option<u32> {
        self.with_bytes(i.checked_mul(4)?, 4, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string_span(&self, id: u32) -> Option<(usize, usize)> {
        if id as usize >= self.strings.1 {
            return None;
        }
        let at = self.strings.0 + 2 * id as usize;
        Some((self.pool.checked_add(self.word(at)? as usize)?, self.word(at + 1)? as usize))
    }

    fn string(&self, id: u32) -> Option<String> {
        let (offset, len) = self.string_span(id)?;
        self.with_bytes(offset, len, |b| std::str::from_utf8(b).ok().map(str::to_owned))?
    }

    fn entry<const N: usize>(&self, table: (usize, usize), i: usize) -> Option<[u32; N]> {
        let at = table.0 + N * i;
        let mut out = [0u32; N];
        for (k, slot) in out.iter_mut().enumerate() {
            *slot = self.word(at + k)?;
        }
        Some(out)
    }

    fn list(&self, start: u32, len: u32) -> Option<Vec<String>> {
        if start as usize + len as usize > self.refs.1 {
            self.damaged.set(true);
            return None;
        }
        (0..len as usize).map(|k| self.string(self.word(self.refs.0 + start as usize + k)?)).collect()
    }

    /// Binary search of a table whose first column is a string id, sorted by string.
    fn find<const N: usize>(&self, table: (usize, usize), wanted: &str) -> Option<[u32; N]> {
        let (mut lo, mut hi) = (0, table.1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let entry: [u32; N] = self.entry(table, mid)?;
            let (offset, len) = self.string_span(entry[0])?;
            match self.with_bytes(offset, len, |b| b.cmp(wanted.as_bytes()))? {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(entry),
            }
        }
        None
    }

    /// Reads the whole index back into a graph that can be updated; `None` if damaged.
    pub fn to_graph(&self) -> Option<ModuleGraph> {
        let mut graph = ModuleGraph::default();
        for i in 0..self.forward.1 {
            let e: [u32; 5] = self.entry(self.forward, i)?;
            let dir = self.string(e[0])?;
            graph.dirs.insert(dir, DirModules { uses: self.list(e[1], e[2])?, problems: self.list(e[3], e[4])? });
        }
        graph.rebuild_users();
        Some(graph)
    }
}

impl<S: IndexSource> ModuleIndex<S> {
    fn module_entry(&self, dir: &str) -> Option<[u32; 3]> {
        if let Some(found) = self.seen_modules.borrow().get(dir) {
            return *found;
        }
        let found = self.find::<3>(self.reverse, dir);
        self.seen_modules.borrow_mut().insert(dir.to_owned(), found);
        found
    }
}

impl<S: IndexSource> ModuleLookup for ModuleIndex<S> {
    fn is_module(&self, dir: &str) -> bool {
        self.module_entry(dir).is_some()
    }

    fn direct_users(&self, module: &str) -> Vec<String> {
        self.module_entry(module).and_then(|e| self.list(e[1], e[2])).unwrap_or_default()
    }

    fn uses(&self, dir: &str) -> Vec<String> {
        self.find::<5>(self.forward, dir).and_then(|e| self.list(e[1], e[2])).unwrap_or_default()
    }

    fn problems(&self, dir: &str) -> Vec<String> {
        self.find::<5>(self.forward, dir).and_then(|e| self.list(e[3], e[4])).unwrap_or_default()
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
