//! Run output: every line gets a sequence number, is stored in batches, and is broadcast to
//! whoever follows the run live. A follower subscribes first and then reads the store, so no
//! line falls between the two.
//!
//! Batching would lose up to a batch if the server were killed, so each line is first appended
//! to a per-run spool file (`<data>/log-spool/<run>.jsonl`), and only then broadcast. Whatever a
//! follower saw is in the kernel's hands; on the next start [`LogHub::recover_spools`] stores
//! the lines the database never got, and the spool of a finished phase is removed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plinth_core::redact::Redactor;
use plinth_core::time::Timestamp;
use plinth_store::{LogLine, Store};
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

/// What a live follower receives.
#[derive(Clone, Debug)]
pub enum Live {
    Line(LogLine),
    /// The run's current phase is over; no more lines until it resumes (after approval).
    End,
}

/// The live channels of runs in progress.
#[derive(Debug)]
pub struct LogHub {
    store: Arc<dyn Store>,
    spool_dir: PathBuf,
    live: Mutex<HashMap<i64, broadcast::Sender<Live>>>,
}

impl LogHub {
    pub fn new(store: Arc<dyn Store>, spool_dir: PathBuf) -> Self {
        LogHub { store, spool_dir, live: Mutex::new(HashMap::new()) }
    }

    /// Opens a run's log for writing, continuing after the lines already stored.
    pub async fn open(&self, run_id: i64) -> Result<RunLog, plinth_store::StoreError> {
        let seq = self.store.last_log_seq(run_id).await?;
        let sender = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.entry(run_id).or_insert_with(|| broadcast::channel(LIVE_LINES).0).clone()
        };
        let spool = Spool::open(self.spool_path(run_id)).await;
        Ok(RunLog {
            run_id,
            seq,
            buffer: Vec::new(),
            sender,
            store: self.store.clone(),
            last_flush: Instant::now(),
            spool,
            watch_for: &[],
            noticed: false,
            redactor: None,
        })
    }

    fn spool_path(&self, run_id: i64) -> PathBuf {
        self.spool_dir.join(format!("{run_id}.jsonl"))
    }

    /// Stores the spooled lines a previous process never got to store, and removes the spools.
    /// Runs at startup, before any run writes its log. Returns how many lines it saved.
    pub async fn recover_spools(&self) -> Result<usize, plinth_store::StoreError> {
        let Ok(mut entries) = tokio::fs::read_dir(&self.spool_dir).await else { return Ok(0) };
        let mut saved = 0;
        while let Ok(Some(entry)) = entries.next_entry().await {
            let path = entry.path();
            let run_id = path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<i64>().ok());
            let Some(run_id) = run_id.filter(|_| path.extension().is_some_and(|e| e == "jsonl")) else {
                continue;
            };
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(run = run_id, error = %e, path = %path.display(), "Could not read a log spool.");
                    continue;
                }
            };
            if self.store.run(run_id).await?.is_some() {
                let stored = self.store.last_log_seq(run_id).await?;
                // The last line may be cut short by the kill; it is the only one that can be.
                let lines: Vec<LogLine> = bytes
                    .split(|b| *b == b'\n')
                    .filter_map(|line| serde_json::from_slice::<LogLine>(line).ok())
                    .filter(|line| line.seq > stored)
                    .collect();
                self.store.append_logs(run_id, &lines).await?;
                if !lines.is_empty() {
                    tracing::warn!(
                        run = run_id,
                        lines = lines.len(),
                        "Stored run output the last process had not stored."
                    );
                }
                saved += lines.len();
            } else {
                tracing::warn!(run = run_id, "Dropping the log spool of a run the database does not have.");
            }
            let _ = tokio::fs::remove_file(&path).await;
        }
        Ok(saved)
    }

    /// Follows a run's new lines, if it is writing any now.
    pub fn subscribe(&self, run_id: i64) -> Option<broadcast::Receiver<Live>> {
        self.live.lock().ok()?.get(&run_id).map(|s| s.subscribe())
    }

    fn close(&self, run_id: i64) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&run_id);
        }
    }
}

/// One run's log being written.
#[derive(Debug)]
pub struct RunLog {
    run_id: i64,
    seq: u64,
    buffer: Vec<LogLine>,
    sender: broadcast::Sender<Live>,
    store: Arc<dyn Store>,
    last_flush: Instant,
    spool: Spool,
    /// Text to look out for in the output, and whether it has shown up.
    watch_for: &'static [&'static str],
    noticed: bool,
    /// Masks the values of the secrets handed to the run in every line, plinth's own included.
    redactor: Option<Arc<Redactor>>,
}

/// Lines a live follower may fall behind before it catches up from the store instead. Each
/// run in progress holds a ring of this many lines.
const LIVE_LINES: usize = 1024;

/// Lines are stored at least this often, and whenever this many are waiting.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const FLUSH_LINES: usize = 256;

impl RunLog {
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Looks out for any of `needles` in the lines from now on; see [`RunLog::noticed`].
    pub fn watch_for(&mut self, needles: &'static [&'static str]) {
        self.watch_for = needles;
    }

    /// Whether a line held one of the texts given to [`RunLog::watch_for`].
    pub fn noticed(&self) -> bool {
        self.noticed
    }

    /// Masks these secrets' values in every line from now on.
    pub fn set_redactor(&mut self, redactor: Option<Arc<Redactor>>) {
        self.redactor = redactor;
    }

    /// Masks the run's secrets in text bound elsewhere: a reason, a plan summary.
    pub fn redact(&self, text: &str) -> String {
        match &self.redactor {
            Some(redactor) => redactor.redact(text).into_owned(),
            None => text.to_owned(),
        }
    }

    /// Adds a line from `stream` (`stdout`, `stderr` or `plinth`). Terraform's output comes
    /// masked already, even across reads; this masks once more, and plinth's own notes.
    pub async fn line(&mut self, stream: &str, text: &str, at: Timestamp) {
        let redacted = match &self.redactor {
            Some(redactor) => redactor.redact(text),
            None => std::borrow::Cow::Borrowed(text),
        };
        let text: &str = &redacted;
        if !self.noticed && self.watch_for.iter().any(|needle| text.contains(needle)) {
            self.noticed = true;
        }
        self.seq += 1;
        let line = LogLine { seq: self.seq, stream: stream.to_owned(), text: text.to_owned(), at };
        self.spool.append(self.run_id, &line).await;
        let _ = self.sender.send(Live::Line(line.clone()));
        self.buffer.push(line);
        if self.buffer.len() >= FLUSH_LINES || self.last_flush.elapsed() >= FLUSH_EVERY {
            self.flush().await;
        }
    }

    /// Stores what is buffered. A store failure is logged, and the lines are kept for the next
    /// attempt, so nothing is lost while the database recovers.
    pub async fn flush(&mut self) {
        self.last_flush = Instant::now();
        if self.buffer.is_empty() {
            return;
        }
        match self.store.append_logs(self.run_id, &self.buffer).await {
            Ok(()) => self.buffer.clear(),
            Err(e) => {
                tracing::error!(run = self.run_id, error = %e, lines = self.buffer.len(), "Could not store run output; will retry.")
            }
        }
    }

    /// Stores the rest and tells followers this phase is over. The spool goes once the store
    /// has every line; if the store is down, it stays for the next start to recover.
    pub async fn finish(mut self, hub: &LogHub) {
        for _ in 0..5 {
            self.flush().await;
            if self.buffer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if self.buffer.is_empty() {
            self.spool.remove().await;
        }
        let _ = self.sender.send(Live::End);
        hub.close(self.run_id);
    }
}

/// The append-only file a run's lines reach before anything else, one JSON object per line.
#[derive(Debug)]
struct Spool {
    path: PathBuf,
    /// `None` once writing failed: the log goes on without it, as it did before spools.
    file: Option<tokio::fs::File>,
}

impl Spool {
    async fn open(path: PathBuf) -> Spool {
        let file = tokio::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&path).await;
        match file {
            Ok(file) => Spool { path, file: Some(file) },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Could not open the log spool; a crash may lose the last lines.");
                Spool { path, file: None }
            }
        }
    }

    async fn append(&mut self, run_id: i64, line: &LogLine) {
        let Some(file) = &mut self.file else { return };
        let mut bytes = match serde_json::to_vec(line) {
            Ok(bytes) => bytes,
            Err(_) => return,
        };
        bytes.push(b'\n');
        // `flush` waits for tokio's background write, so the line is in the kernel before
        // anyone is shown it.
        if let Err(e) = async {
            file.write_all(&bytes).await?;
            file.flush().await
        }
        .await
        {
            tracing::warn!(run = run_id, error = %e, "Could not write the log spool; a crash may lose the last lines.");
            self.file = None;
        }
    }

    async fn remove(&mut self) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

#[cfg(test)]
mod tests {
    use plinth_core::run::RunMode;
    use plinth_store::{NewEvent, NewRun};

    use super::*;

    async fn store_with_a_run(dir: &std::path::Path) -> (Arc<dyn Store>, i64) {
        let store = plinth_store::open(&format!("sqlite://{}", dir.join("plinth.db").display())).await.unwrap();
        let event = NewEvent {
            branch: Some("main".into()),
            commit: "0".repeat(40),
            trigger: "poll".into(),
            created_by: "test".into(),
            note: None,
            advance_ref: None,
            supersede: true,
        };
        let run = NewRun {
            stack: "app".into(),
            path: "app".into(),
            workspace: None,
            environment: None,
            lock_key: "app".into(),
            terraform: "terraform".into(),
            mode: RunMode::Apply,
            wave: 0,
            waits_for: Vec::new(),
            destroy: false,
            provisioned_env: None,
            approved_by: None,
        };
        let recorded = store.record_event(event, vec![run], Timestamp(0)).await.unwrap();
        (store, recorded.runs[0].id)
    }

    /// A process killed between batches: the lines it had broadcast but not stored come back
    /// from the spool on the next start, after the ones already stored and in order.
    #[tokio::test]
    async fn lines_a_killed_process_never_stored_are_recovered_from_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("log-spool");
        std::fs::create_dir_all(&spool_dir).unwrap();
        let (store, run) = store_with_a_run(dir.path()).await;

        let hub = LogHub::new(store.clone(), spool_dir.clone());
        let mut log = hub.open(run).await.unwrap();
        log.line("stdout", "stored", Timestamp(1)).await;
        log.flush().await;
        log.line("stdout", "only in the spool", Timestamp(2)).await;
        log.line("stderr", "also only in the spool", Timestamp(3)).await;
        // The kill: neither flush nor finish happens, and a write is cut short.
        drop(log);
        let spool = spool_dir.join(format!("{run}.jsonl"));
        let mut bytes = std::fs::read(&spool).unwrap();
        bytes.extend_from_slice(br#"{"seq":4,"stream":"std"#);
        std::fs::write(&spool, bytes).unwrap();
        assert_eq!(store.logs(run, 0, 100).await.unwrap().len(), 1);

        let restarted = LogHub::new(store.clone(), spool_dir.clone());
        assert_eq!(restarted.recover_spools().await.unwrap(), 2);
        let texts: Vec<(u64, String)> =
            store.logs(run, 0, 100).await.unwrap().into_iter().map(|l| (l.seq, l.text)).collect();
        assert_eq!(
            texts,
            [(1, "stored".into()), (2, "only in the spool".into()), (3, "also only in the spool".into())]
        );
        assert!(!spool.exists(), "a recovered spool is removed");
        // The next phase continues after the recovered lines.
        let mut log = restarted.open(run).await.unwrap();
        log.line("plinth", "next", Timestamp(4)).await;
        log.finish(&restarted).await;
        assert_eq!(store.logs(run, 3, 100).await.unwrap()[0].seq, 4);
        assert!(!spool.exists(), "a finished phase leaves no spool");
    }

    #[tokio::test]
    async fn the_spool_of_a_run_the_database_does_not_have_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("log-spool");
        std::fs::create_dir_all(&spool_dir).unwrap();
        let (store, run) = store_with_a_run(dir.path()).await;
        let stray = spool_dir.join(format!("{}.jsonl", run + 100));
        std::fs::write(&stray, b"{\"seq\":1,\"stream\":\"stdout\",\"text\":\"x\",\"at\":0}\n").unwrap();
        std::fs::write(spool_dir.join("notes.txt"), b"not a spool").unwrap();
        let hub = LogHub::new(store, spool_dir.clone());
        assert_eq!(hub.recover_spools().await.unwrap(), 0);
        assert!(!stray.exists());
        assert!(spool_dir.join("notes.txt").exists(), "files that are not spools are left alone");
    }
}
