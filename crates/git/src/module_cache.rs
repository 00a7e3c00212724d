//! The local module graph, cached per root tree so that a run touching a few files re-reads only
//! the directories those files are in, however large the repository.
//!
//! An entry is either a whole graph (`{tree}.bin`, a [`ModuleIndex`]) or a patch
//! (`{tree}.patch`): the directories re-read since a tree that has a whole entry, named in the
//! patch. A new commit's graph is derived from its base's as a patch, so deriving it costs the
//! size of the change, not of the repository; patches are laid one over another up to
//! [`MAX_PATCH`] directories, and past that the whole graph is written again.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use gix::ObjectId;
use plinth_core::changes::PathChange;
use plinth_core::modules::{
    IndexSource, ModuleGraph, ModuleIndex, ModuleLookup, ModulePatch, Patched, is_terraform_file,
};
use plinth_core::tree::{Tree, TreeError, parent};

/// How many cached whole graphs to keep; older ones are removed.
const KEEP: usize = 16;
/// How many patches to keep; they are small, and each needs its whole graph kept too.
const KEEP_PATCHES: usize = 256;
/// A patch that has re-read more directories than this is written as a whole graph instead.
const MAX_PATCH: usize = 2000;

/// Where cached module graphs live; a cache that cannot be written is skipped silently.
#[derive(Clone, Debug)]
pub struct ModuleCache {
    dir: Option<PathBuf>,
}

impl ModuleCache {
    /// A cache in `dir`.
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: Some(dir.into()) }
    }

    /// No caching: every run walks the whole tree.
    pub fn disabled() -> Self {
        Self { dir: None }
    }

    /// The default place for a repository: `plinth/modules` inside its git directory, which
    /// exists in bare repos too and is never committed.
    pub fn for_git_dir(git_dir: &Path) -> Self {
        Self::at(git_dir.join("plinth").join("modules"))
    }

    fn file(&self, tree: ObjectId, extension: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{tree}.{extension}")))
    }

    /// Opens the cached whole graph of a tree. Only its header is read now; lookups read the
    /// rest.
    fn load(&self, tree: ObjectId) -> Option<ModuleIndex<FileSource>> {
        let file = std::fs::File::open(self.file(tree, "bin")?).ok()?;
        let len = file.metadata().ok()?.len();
        let index = ModuleIndex::open(FileSource { file, len });
        if index.is_none() {
            tracing::debug!(%tree, "Ignoring a damaged module cache entry.");
            self.forget(tree);
        }
        index
    }

    /// The cached graph of a tree, whole or as a patch over another tree's.
    pub(crate) fn graph(&self, tree: ObjectId) -> Option<Graph> {
        if let Some(index) = self.load(tree) {
            return Some(Graph::Cached(Rc::new(index), tree));
        }
        let bytes = std::fs::read(self.file(tree, "patch")?).ok()?;
        let Some((base, patch)) = decode_patch_entry(&bytes) else {
            tracing::debug!(%tree, "Ignoring a damaged module cache patch.");
            self.forget(tree);
            return None;
        };
        match self.load(base) {
            Some(index) => Some(Graph::Patched(Patched { base: Rc::new(index), patch }, base)),
            None => {
                // Its whole graph was pruned or damaged; the patch is no use without it.
                self.forget(tree);
                None
            }
        }
    }

    /// Removes a tree's entries, after one turned out damaged.
    fn forget(&self, tree: ObjectId) {
        for extension in ["bin", "patch"] {
            if let Some(file) = self.file(tree, extension) {
                let _ = std::fs::remove_file(file);
            }
        }
    }

    /// Forgets the entries a graph was read from.
    pub(crate) fn forget_graph(&self, tree: ObjectId, graph: &Graph) {
        self.forget(tree);
        if let Graph::Cached(_, whole) | Graph::Patched(_, whole) = graph {
            self.forget(*whole);
        }
    }

    /// Keeps a tree's graph for later runs: a built graph whole, a patched one as its patch.
    pub(crate) fn store(&self, tree: ObjectId, graph: &Graph) {
        match graph {
            Graph::Cached(..) => {}
            Graph::Built(graph) => self.write(tree, "bin", &graph.encode()),
            Graph::Patched(patched, base) => {
                if let Some(whole) = self.file(*base, "bin") {
                    // Touched, so that pruning by age keeps the whole graph its patches need.
                    let _ = std::fs::File::options()
                        .append(true)
                        .open(whole)
                        .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                }
                self.write(tree, "patch", &encode_patch_entry(*base, &patched.patch));
            }
        }
    }

    fn write(&self, tree: ObjectId, extension: &str, bytes: &[u8]) {
        let (Some(dir), Some(file)) = (&self.dir, self.file(tree, extension)) else { return };
        if file.exists() {
            return;
        }
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            // Unique per write: the server's threads may keep the same tree at once.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(".{tree}.{extension}.{}.{n}.tmp", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &file)?;
            prune(dir, "bin", KEEP)?;
            prune(dir, "patch", KEEP_PATCHES)
        };
        if let Err(e) = write() {
            tracing::debug!(dir = %dir.display(), error = %e, "Could not write the module cache; going on without it.");
        }
    }
}

/// `[whole graph's tree id, as hex, with its length][the patch]`.
fn encode_patch_entry(base: ObjectId, patch: &ModulePatch) -> Vec<u8> {
    let hex = base.to_string();
    let mut out = vec![hex.len() as u8];
    out.extend_from_slice(hex.as_bytes());
    out.extend_from_slice(&patch.encode());
    out
}

fn decode_patch_entry(bytes: &[u8]) -> Option<(ObjectId, ModulePatch)> {
    let (&len, rest) = bytes.split_first()?;
    let hex = rest.get(..usize::from(len))?;
    let base = ObjectId::from_hex(hex).ok()?;
    Some((base, ModulePatch::decode(&rest[usize::from(len)..])?))
}

/// A cache file read in pieces, as lookups need them. Entries are replaced by renaming a new
/// file over them, never rewritten in place, so an open file stays whole.
#[derive(Debug)]
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

impl IndexSource for FileSource {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> bool {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset).is_ok()
    }
}

/// Keeps the newest `keep` entries with the given extension.
fn prune(dir: &Path, extension: &str, keep: usize) -> std::io::Result<()> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == extension))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if entries.len() <= keep {
        return Ok(());
    }
    entries.sort();
    for (_, path) in &entries[..entries.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Directories whose Terraform files changed, on either side.
pub(crate) fn dirty_dirs(changes: &[PathChange]) -> BTreeSet<&str> {
    changes
        .iter()
        .filter(|c| c.path.rsplit('/').next().is_some_and(is_terraform_file))
        .map(|c| parent(&c.path))
        .collect()
}

/// A module graph as a run holds it: read from the cache (whole, or a patch over a whole graph,
/// with the tree the whole graph is of), or built in memory.
pub(crate) enum Graph {
    Cached(Rc<ModuleIndex<FileSource>>, ObjectId),
    Patched(Patched<Rc<ModuleIndex<FileSource>>>, ObjectId),
    Built(ModuleGraph),
}

impl Graph {
    pub(crate) fn lookup(&self) -> &dyn ModuleLookup {
        match self {
            Graph::Cached(index, _) => index.as_ref(),
            Graph::Patched(patched, _) => patched,
            Graph::Built(graph) => graph,
        }
    }

    /// Whether a cached graph turned out damaged while it was read.
    pub(crate) fn is_damaged(&self) -> bool {
        match self {
            Graph::Cached(index, _) => index.is_damaged(),
            Graph::Patched(patched, _) => patched.base.is_damaged(),
            Graph::Built(_) => false,
        }
    }

    /// The graph of `tree`, which differs from this graph's tree only in `dirty` directories.
    fn derive(&self, tree: &dyn Tree, dirty: &BTreeSet<&str>) -> Result<Option<Graph>, TreeError> {
        let patch = ModulePatch::read(tree, dirty.iter().copied())?;
        let (base, whole, patch) = match self {
            Graph::Cached(index, whole) => (index, whole, patch),
            Graph::Patched(patched, whole) => (&patched.base, whole, patched.patch.clone().then(patch)),
            Graph::Built(graph) => {
                let mut graph = graph.clone();
                graph.apply(&patch);
                return Ok(Some(Graph::Built(graph)));
            }
        };
        if patch.len() <= MAX_PATCH {
            return Ok(Some(Graph::Patched(Patched { base: Rc::clone(base), patch }, *whole)));
        }
        Ok(base.to_graph().map(|mut graph| {
            graph.apply(&patch);
            Graph::Built(graph)
        }))
    }
}

/// The module graphs of head and, when asked, base: from the cache, by laying the changed
/// directories over the other side's graph, or by walking the tree.
pub(crate) fn graphs(
    cache: &ModuleCache,
    (base_id, base_tree): (ObjectId, &dyn Tree),
    (head_id, head_tree): (ObjectId, &dyn Tree),
    changes: &[PathChange],
    want_base: bool,
) -> Result<(Graph, Option<Graph>), TreeError> {
    let dirty = dirty_dirs(changes);
    let cached_head = cache.graph(head_id);
    // Read once: the base's entry may serve both to derive the head and as the base itself.
    let cached_base = if cached_head.is_none() || want_base { cache.graph(base_id) } else { None };
    let head = match cached_head {
        Some(graph) => graph,
        None => {
            let derived = match &cached_base {
                Some(base) => base.derive(head_tree, &dirty)?,
                None => None,
            };
            let graph = match derived {
                Some(graph) => graph,
                None => Graph::Built(ModuleGraph::build(head_tree)?),
            };
            cache.store(head_id, &graph);
            graph
        }
    };
    if !want_base {
        return Ok((head, None));
    }
    let base = match cached_base {
        Some(graph) => graph,
        None => {
            let graph = match head.derive(base_tree, &dirty)? {
                Some(graph) => graph,
                None => Graph::Built(ModuleGraph::build(base_tree)?),
            };
            cache.store(base_id, &graph);
            graph
        }
    };
    Ok((head, Some(base)))
}
