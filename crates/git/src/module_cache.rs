//! The local module graph, cached per root tree so that a run touching a few files re-reads only
//! the directories those files are in, however large the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gix::ObjectId;
use plinth_core::changes::PathChange;
use plinth_core::modules::{IndexSource, ModuleGraph, ModuleIndex, ModuleLookup, is_terraform_file};
use plinth_core::tree::{Tree, TreeError, parent};

/// How many cached graphs to keep; older ones are removed.
const KEEP: usize = 16;

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

    fn file(&self, tree: ObjectId) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{tree}.bin")))
    }

    /// Opens the cached graph of a tree. Only its header is read now; lookups read the rest.
    pub fn load(&self, tree: ObjectId) -> Option<ModuleIndex<FileSource>> {
        let file = std::fs::File::open(self.file(tree)?).ok()?;
        let len = file.metadata().ok()?.len();
        let index = ModuleIndex::open(FileSource { file, len });
        if index.is_none() {
            tracing::debug!(%tree, "Ignoring a damaged module cache entry.");
            self.forget(tree);
        }
        index
    }

    /// Removes a tree's entry, after it turned out damaged.
    pub fn forget(&self, tree: ObjectId) {
        if let Some(file) = self.file(tree) {
            let _ = std::fs::remove_file(file);
        }
    }

    pub fn store(&self, tree: ObjectId, graph: &ModuleGraph) {
        let (Some(dir), Some(file)) = (&self.dir, self.file(tree)) else { return };
        if file.exists() {
            return;
        }
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{tree}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, graph.encode())?;
            std::fs::rename(&tmp, &file)?;
            prune(dir)
        };
        if let Err(e) = write() {
            tracing::debug!(dir = %dir.display(), error = %e, "Could not write the module cache; going on without it.");
        }
    }
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

/// Keeps the newest [`KEEP`] entries.
fn prune(dir: &Path) -> std::io::Result<()> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if entries.len() <= KEEP {
        return Ok(());
    }
    entries.sort();
    for (_, path) in &entries[..entries.len() - KEEP] {
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

/// A module graph as a run holds it: read from the cache, or built in memory.
pub(crate) enum Graph {
    Cached(Box<ModuleIndex<FileSource>>),
    Built(ModuleGraph),
}

impl Graph {
    pub(crate) fn lookup(&self) -> &dyn ModuleLookup {
        match self {
            Graph::Cached(index) => index.as_ref(),
            Graph::Built(graph) => graph,
        }
    }

    /// Whether a cached graph turned out damaged while it was read.
    pub(crate) fn is_damaged(&self) -> bool {
        matches!(self, Graph::Cached(index) if index.is_damaged())
    }

    fn to_graph(&self) -> Option<ModuleGraph> {
        match self {
            Graph::Cached(index) => index.to_graph(),
            Graph::Built(graph) => Some(graph.clone()),
        }
    }
}

/// The module graphs of head and, when asked, base: from the cache, by updating the other
/// side's graph with the changed directories, or by walking the tree.
pub(crate) fn graphs(
    cache: &ModuleCache,
    (base_id, base_tree): (ObjectId, &dyn Tree),
    (head_id, head_tree): (ObjectId, &dyn Tree),
    changes: &[PathChange],
    want_base: bool,
) -> Result<(Graph, Option<Graph>), TreeError> {
    let dirty = dirty_dirs(changes);
    let head = match cache.load(head_id) {
        Some(index) => Graph::Cached(Box::new(index)),
        None => {
            let from_base = cache.load(base_id).and_then(|base| base.to_graph());
            let graph = match from_base {
                Some(mut graph) => {
                    graph.update(head_tree, dirty.iter().copied())?;
                    graph
                }
                None => ModuleGraph::build(head_tree)?,
            };
            cache.store(head_id, &graph);
            Graph::Built(graph)
        }
    };
    if !want_base {
        return Ok((head, None));
    }
    let base = match cache.load(base_id) {
        Some(index) => Graph::Cached(Box::new(index)),
        None => {
            let mut graph = match head.to_graph() {
                Some(graph) => graph,
                None => ModuleGraph::build(head_tree)?,
            };
            graph.update(base_tree, dirty.iter().copied())?;
            cache.store(base_id, &graph);
            Graph::Built(graph)
        }
    };
    Ok((head, Some(base)))
}
