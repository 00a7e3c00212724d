//! Where a benchmark keeps its repos, data dirs and logs: the directory `--keep` names, kept
//! afterwards for a look, or a temp dir removed when the benchmark ends.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub struct WorkDir {
    path: PathBuf,
    /// Removes the temp dir when dropped; `None` for a `--keep` directory.
    _temp: Option<tempfile::TempDir>,
}

impl WorkDir {
    /// `keep` if given (created if missing, as an absolute path, since children run
    /// elsewhere), else a new temp dir named after the benchmark.
    pub fn new(keep: Option<&Path>, bench: &str) -> Result<WorkDir> {
        match keep {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                Ok(WorkDir { path: std::fs::canonicalize(dir)?, _temp: None })
            }
            None => {
                let temp = tempfile::Builder::new().prefix(&format!("plinth-bench-{bench}-")).tempdir()?;
                Ok(WorkDir { path: temp.path().to_path_buf(), _temp: Some(temp) })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir`, which must not exist yet (`--keep` pointing at an earlier run).
pub fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        bail!("{} exists already; remove it or keep this run somewhere else", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The plinth binary a benchmark times, as an absolute path.
pub fn plinth_binary(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("{} (build it first)", path.display()))
}

/// `/proc/loadavg`, for the report: how busy the machine was before and after.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}
