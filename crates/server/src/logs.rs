//! Run output: every line gets a sequence number, is stored in batches, and is broadcast to
//! whoever follows the run live. A follower subscribes first and then reads the store, so no
//! line falls between the two.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plinth_core::time::Timestamp;
use plinth_store::{LogLine, Store};
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
    live: Mutex<HashMap<i64, broadcast::Sender<Live>>>,
}

impl LogHub {
    pub fn new(store: Arc<dyn Store>) -> Self {
        LogHub { store, live: Mutex::new(HashMap::new()) }
    }

    /// Opens a run's log for writing, continuing after the lines already stored.
    pub async fn open(&self, run_id: i64) -> Result<RunLog, plinth_store::StoreError> {
        let seq = self.store.last_log_seq(run_id).await?;
        let sender = {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            live.entry(run_id).or_insert_with(|| broadcast::channel(4096).0).clone()
        };
        Ok(RunLog { run_id, seq, buffer: Vec::new(), sender, store: self.store.clone(), last_flush: Instant::now() })
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
}

/// Lines are stored at least this often, and whenever this many are waiting.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
const FLUSH_LINES: usize = 256;

impl RunLog {
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Adds a line from `stream` (`stdout`, `stderr` or `plinth`).
    pub async fn line(&mut self, stream: &str, text: &str, at: Timestamp) {
        self.seq += 1;
        let line = LogLine { seq: self.seq, stream: stream.to_owned(), text: text.to_owned(), at };
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

    /// Stores the rest and tells followers this phase is over.
    pub async fn finish(mut self, hub: &LogHub) {
        for _ in 0..5 {
            self.flush().await;
            if self.buffer.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.sender.send(Live::End);
        hub.close(self.run_id);
    }
}
