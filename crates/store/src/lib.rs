//! plinth's state behind one trait, [`Store`]: commit events and their runs, run logs, locks,
//! API tokens, the append-only audit log, and the branch heads seen so far. Each backend lives
//! in its own module with its own migrations; the URL scheme picks one at start-up. SQLite,
//! in the data dir, is the embedded default.

mod sqlite;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use plinth_core::ErrorCode;
use plinth_core::cidr::Cidr;
use plinth_core::deploy::{DeploymentKind, DeploymentStatus};
use plinth_core::environment::{EnvStatus, RequestKind, RequestStatus};
use plinth_core::run::{PlanSummary, Run, RunMode, RunStatus};
use plinth_core::secret::Scope;
use plinth_core::time::Timestamp;
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database failed: {0}")]
    Database(String),
    #[error("the database at {url} could not be opened: {reason}")]
    Open { url: String, reason: String },
    #[error("`{0}` is not a database URL plinth knows")]
    UnknownScheme(String),
    #[error("a token named `{0}` already exists")]
    TokenExists(String),
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    #[error("secret `{0}` was changed by someone else meanwhile")]
    SecretChanged(String),
    #[error("an environment named `{0}` already exists")]
    EnvironmentExists(String),
    #[error("no network for the environment: pool `{pool}`: {reason}")]
    PoolExhausted { pool: String, reason: String },
}

impl ErrorCode for StoreError {
    fn code(&self) -> &'static str {
        match self {
            StoreError::Database(_) => "store.failed",
            StoreError::Open { .. } => "store.open_failed",
            StoreError::UnknownScheme(_) => "store.unknown_scheme",
            StoreError::TokenExists(_) => "token.exists",
            StoreError::Corrupt(_) => "store.corrupt",
            StoreError::SecretChanged(_) => "secret.conflict",
            StoreError::EnvironmentExists(_) => "environment.exists",
            StoreError::PoolExhausted { .. } => "environment.pool_exhausted",
        }
    }

    fn http_status(&self) -> u16 {
        match self {
            StoreError::TokenExists(_)
            | StoreError::SecretChanged(_)
            | StoreError::EnvironmentExists(_)
            | StoreError::PoolExhausted { .. } => 409,
            _ => 500,
        }
    }

    fn help(&self) -> String {
        match self {
            StoreError::Database(_) | StoreError::Corrupt(_) => {
                "Check the server's log and the disk holding the data dir; the request can be retried.".into()
            }
            StoreError::Open { .. } => "Check that the data dir exists and is writable by the server's user.".into(),
            StoreError::UnknownScheme(_) => "Use a `sqlite://PATH` URL.".into(),
            StoreError::TokenExists(_) => "Pick another name, or revoke the existing token first.".into(),
            StoreError::SecretChanged(_) => "Check `plinth secrets list`, then set the value again.".into(),
            StoreError::EnvironmentExists(_) => {
                "Pick another name, or see the existing one with `plinth env show NAME`.".into()
            }
            StoreError::PoolExhausted { pool, .. } => format!(
                "Destroy environments that are no longer needed (`plinth env list`), or add ranges to [cidr_pools.{pool}] in plinth.toml."
            ),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A commit seen on a branch, or a plan asked for by hand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub branch: Option<String>,
    pub commit: String,
    /// `poll`, `webhook` or `manual`.
    pub trigger: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub note: Option<String>,
}

/// An event to record.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub branch: Option<String>,
    pub commit: String,
    pub trigger: String,
    pub created_by: String,
    pub note: Option<String>,
    /// The branch head to remember once the event is recorded.
    pub advance_ref: Option<(String, String)>,
    /// Whether the new runs supersede older waiting runs on the same locks and branch. Commits
    /// do; plans asked for by hand do not.
    pub supersede: bool,
}

/// A run to create with an event.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub stack: String,
    pub path: String,
    pub workspace: Option<String>,
    pub environment: Option<String>,
    pub lock_key: String,
    pub terraform: String,
    pub mode: RunMode,
    pub wave: u32,
    /// Stacks of the same event this run waits for.
    pub waits_for: Vec<String>,
    /// Plan a destroy instead of an apply.
    pub destroy: bool,
    /// The environment on request whose kept root the run works on.
    pub provisioned_env: Option<i64>,
    /// Approved at creation: the run applies without waiting for an approver (the cleanup of
    /// a failed apply, which puts things back as they were).
    pub approved_by: Option<String>,
}

/// What an event recorded: its runs, and the older runs they superseded.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub event: Event,
    pub runs: Vec<Run>,
    pub superseded: Vec<Run>,
}

/// Fields a status change may set along with the status.
#[derive(Clone, Debug, Default)]
pub struct RunPatch {
    pub reason: Option<String>,
    pub plan: Option<PlanSummary>,
    pub approved_by: Option<String>,
}

/// Which runs to list.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub stack: Option<String>,
    pub status: Option<RunStatus>,
    pub event_id: Option<i64>,
    /// Only runs with a smaller id, for paging backwards.
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

/// One line of a run's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    /// `stdout`, `stderr`, or `plinth` for plinth's own notes.
    pub stream: String,
    pub text: String,
    pub at: Timestamp,
}

/// A held lock on one state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub lock_key: String,
    pub stack: String,
    pub run_id: i64,
    pub since: Timestamp,
    /// `running`, `awaiting_approval` or `interrupted`.
    pub reason: String,
}

/// An API token, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub name: String,
    pub roles: Vec<String>,
    /// The services a `ci` token may publish releases for.
    #[serde(default)]
    pub services: Vec<String>,
    pub created_by: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A token to create; only the hash of its secret is stored.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub name: String,
    pub hash: String,
    pub roles: Vec<String>,
    pub services: Vec<String>,
    pub created_by: String,
}

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub result: String,
    pub details: serde_json::Value,
}

/// An audit entry to append.
#[derive(Clone, Debug)]
pub struct NewAudit {
    pub actor: String,
    pub action: String,
    pub object: String,
    pub result: String,
    pub details: serde_json::Value,
}

/// Which audit entries to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub after: Option<i64>,
    pub actor: Option<String>,
    pub limit: Option<u32>,
}

/// A secret's identity: its environment, scope and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SecretKey {
    pub environment: String,
    pub scope: Scope,
    pub name: String,
}

/// What anyone may know about a secret: everything but its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    pub environment: String,
    pub scope: Scope,
    pub name: String,
    pub version: i64,
    /// Which master key wraps its data key (`local:…`, or a KMS key).
    pub key_id: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_by: String,
    pub updated_at: Timestamp,
}

/// A secret's current version, sealed: its value encrypted under a data key of its own, and
/// that data key wrapped by the master key. `Debug` shows sizes, never bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub id: i64,
    pub meta: SecretMeta,
    pub wrapped_key: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("id", &self.id)
            .field("meta", &self.meta)
            .field("wrapped_key_len", &self.wrapped_key.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

/// A new version of a secret to store, already sealed.
#[derive(Clone)]
pub struct NewSecretVersion {
    pub key: SecretKey,
    /// The version this one replaces (`None` for a new secret); the write fails with
    /// [`StoreError::SecretChanged`] if the stored version is another.
    pub replaces: Option<i64>,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub by: String,
}

impl std::fmt::Debug for NewSecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecretVersion")
            .field("key", &self.key)
            .field("replaces", &self.replaces)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A data key wrapped again under another master key, for rotation.
#[derive(Clone)]
pub struct Rewrapped {
    pub id: i64,
    /// The key the row must still be wrapped with, or the update is skipped.
    pub from_key_id: String,
    pub key_id: String,
    pub wrapped_key: Vec<u8>,
}

impl std::fmt::Debug for Rewrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewrapped").field("id", &self.id).field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

/// A release: the images CI published for a service in one environment. Immutable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub id: i64,
    pub service: String,
    pub environment: String,
    /// Container name -> image.
    pub images: BTreeMap<String, String>,
    pub commit: Option<String>,
    /// What picked the environment: `env`, `branch:NAME` or `tag:NAME`.
    pub source: String,
    pub published_by: String,
    pub created_at: Timestamp,
}

/// A release to record.
#[derive(Clone, Debug)]
pub struct NewRelease {
    pub service: String,
    pub environment: String,
    pub images: BTreeMap<String, String>,
    pub commit: Option<String>,
    pub source: String,
    pub published_by: String,
}

/// A deployment of a release to its service and environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: i64,
    pub release_id: i64,
    pub service: String,
    pub environment: String,
    pub kind: DeploymentKind,
    pub status: DeploymentStatus,
    pub reason: Option<String>,
    pub created_by: String,
    pub approved_by: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// One step of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentEvent {
    pub seq: i64,
    pub at: Timestamp,
    pub message: String,
}

/// A deployment to create.
#[derive(Clone, Debug)]
pub struct NewDeployment {
    pub release_id: i64,
    pub service: String,
    pub environment: String,
    pub kind: DeploymentKind,
    /// Whether it waits for an approver first.
    pub needs_approval: bool,
    pub created_by: String,
}

/// An environment made on request from a template: the catalog's main entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRecord {
    pub id: i64,
    pub name: String,
    pub product: String,
    pub template: String,
    /// The main branch commit its template was read at.
    pub template_commit: String,
    /// The plinth.toml environment whose policy (approvals) and secrets apply.
    pub policy_environment: String,
    pub account: String,
    /// The parameters it was made (or last updated) with.
    pub params: serde_json::Value,
    pub status: EnvStatus,
    pub reason: Option<String>,
    pub owner: String,
    pub requested_by: String,
    pub fqdn: Option<String>,
    pub services: Vec<String>,
    pub cidr: Option<String>,
    pub cidr_pool: Option<String>,
    /// Terraform outputs after the last apply; sensitive ones are shown as `(sensitive)`.
    pub outputs: serde_json::Value,
    pub workspace: Option<String>,
    pub terraform: String,
    /// Set for a review environment: its branch, slug, and the head last seen.
    pub review: Option<ReviewInfo>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub destroyed_at: Option<Timestamp>,
}

impl EnvRecord {
    /// The run stack name of its kept root.
    pub fn stack(&self) -> String {
        format!("env/{}", self.name)
    }

    /// The hosts a service of this environment is served at: the first service at the FQDN,
    /// the others at `SERVICE.FQDN`.
    pub fn hosts_for(&self, service: &str) -> Vec<String> {
        let Some(fqdn) = &self.fqdn else { return Vec::new() };
        match self.services.iter().position(|s| s == service) {
            Some(0) => vec![fqdn.clone()],
            Some(_) => vec![format!("{service}.{fqdn}")],
            None => Vec::new(),
        }
    }
}

/// What makes an environment a review environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewInfo {
    pub branch: String,
    pub slug: String,
    pub head: Option<String>,
    pub pushed_at: Timestamp,
}

/// A block to take from a pool for a new environment.
#[derive(Clone, Debug)]
pub struct CidrAsk {
    pub pool: String,
    pub ranges: Vec<Cidr>,
    pub prefix: u8,
}

/// An environment to create, with its create request.
#[derive(Clone, Debug)]
pub struct NewEnv {
    pub name: String,
    pub product: String,
    pub template: String,
    pub template_commit: String,
    pub policy_environment: String,
    pub account: String,
    pub params: serde_json::Value,
    pub owner: String,
    pub requested_by: String,
    pub fqdn: Option<String>,
    pub services: Vec<String>,
    pub workspace: Option<String>,
    pub terraform: String,
    pub review: Option<ReviewInfo>,
    /// A block to allocate in the same transaction; the create fails if the pool has none.
    pub cidr: Option<CidrAsk>,
}

/// Fields a status change may set with the status.
#[derive(Clone, Debug, Default)]
pub struct EnvPatch {
    /// Replaces the reason (`None` clears it).
    pub reason: Option<String>,
    pub params: Option<serde_json::Value>,
    pub template_commit: Option<String>,
}

/// Which environments to list.
#[derive(Clone, Debug, Default)]
pub struct EnvFilter {
    pub product: Option<String>,
    pub template: Option<String>,
    pub status: Option<EnvStatus>,
    /// Only those that still exist (not destroyed, not a failed create).
    pub live: bool,
    /// Only review environments.
    pub review: bool,
    /// A substring of the name.
    pub query: Option<String>,
    /// Names after this one, for paging.
    pub after: Option<String>,
    pub limit: Option<u32>,
}

/// One create, update or destroy of an environment: who asked, with what, and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRequest {
    pub id: i64,
    pub environment_id: i64,
    pub environment: String,
    pub kind: RequestKind,
    pub status: RequestStatus,
    pub account: String,
    pub requested_by: String,
    pub template: String,
    pub params: serde_json::Value,
    pub outcome: Option<String>,
    /// The runs it made, in order: the apply (or destroy), then a cleanup destroy if any.
    pub runs: Vec<i64>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

/// What a start attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    Started(Box<Run>),
    /// The lock is held by another run.
    Locked(Lock),
    /// Another run on the same lock is planning or applying right now.
    Busy(i64),
    /// The run is no longer queued.
    NotQueued,
}

/// Everything the server keeps, behind one trait so that backends can be swapped.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Records an event and its runs in one transaction, remembers the branch head, and (when
    /// the event supersedes) marks older commit runs that have not started, or wait for
    /// approval, on the same lock and branch as stale. Plans asked for by hand are never
    /// superseded: someone asked for them.
    async fn record_event(&self, event: NewEvent, runs: Vec<NewRun>, now: Timestamp) -> Result<Recorded>;
    async fn events(&self, limit: u32) -> Result<Vec<Event>>;
    async fn refs(&self) -> Result<BTreeMap<String, String>>;
    /// Remembers branch heads without events (the first start, and deleted branches as `None`).
    async fn set_refs(&self, refs: &BTreeMap<String, Option<String>>, now: Timestamp) -> Result<()>;

    async fn run(&self, id: i64) -> Result<Option<Run>>;
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>>;
    /// Every run that has not finished.
    async fn unfinished_runs(&self) -> Result<Vec<Run>>;
    /// Statuses and modes of the given runs, for dependency checks.
    async fn outcomes(&self, ids: &[i64]) -> Result<Vec<(i64, RunStatus, RunMode)>>;
    /// The newest run of each stack.
    async fn latest_runs(&self) -> Result<Vec<Run>>;

    /// Moves a run from queued to planning, in one transaction, if no other run on its lock is
    /// planning or applying. An apply run also takes the lock (and needs it free); a plan-only
    /// run takes no lock, and may plan while an apply run waiting for approval holds it.
    async fn start_run(&self, id: i64, now: Timestamp) -> Result<Start>;
    /// Moves a run to `to` if its current status allows that move
    /// ([`RunStatus::can_move_to`]); `None` if it does not (another actor got there first).
    /// Final statuses release the run's lock, except `interrupted`, which keeps it.
    async fn transition(&self, id: i64, to: RunStatus, patch: RunPatch, now: Timestamp) -> Result<Option<Run>>;

    async fn append_logs(&self, run_id: i64, lines: &[LogLine]) -> Result<()>;
    /// The highest log sequence number stored for a run (0 when none).
    async fn last_log_seq(&self, run_id: i64) -> Result<u64>;
    async fn logs(&self, run_id: i64, after: u64, limit: u32) -> Result<Vec<LogLine>>;

    async fn locks(&self) -> Result<Vec<Lock>>;
    /// Removes the locks of a stack whose holder has finished (an interrupted apply). Returns
    /// what was removed; refuses (returns the holder) while a holder is still active.
    async fn unlock_stack(&self, stack: &str) -> Result<UnlockOutcome>;

    async fn create_token(&self, token: NewToken, now: Timestamp) -> Result<Token>;
    /// The active token with this secret hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>>;
    async fn tokens(&self) -> Result<Vec<Token>>;
    /// Revokes the active token of that name; `false` if there is none.
    async fn revoke_token(&self, name: &str, now: Timestamp) -> Result<bool>;

    async fn append_audit(&self, entry: NewAudit, now: Timestamp) -> Result<AuditEntry>;
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>>;

    /// The secrets of one environment (or all), without values, ordered by environment, scope
    /// and name.
    async fn secrets(&self, environment: Option<&str>) -> Result<Vec<SecretMeta>>;
    /// One secret, sealed.
    async fn secret(&self, key: &SecretKey) -> Result<Option<SealedSecret>>;
    /// Every sealed secret of an environment: the candidates for a run or an instance there.
    async fn sealed_secrets(&self, environment: &str) -> Result<Vec<SealedSecret>>;
    /// Stores a new version of a secret, replacing the row's ciphertext.
    async fn put_secret(&self, secret: NewSecretVersion, now: Timestamp) -> Result<SecretMeta>;
    /// Deletes a secret; what it was, if it existed.
    async fn remove_secret(&self, key: &SecretKey) -> Result<Option<SecretMeta>>;
    /// Every secret's id, key id and wrapped data key, for rotation.
    async fn wrapped_keys(&self) -> Result<Vec<(i64, String, Vec<u8>)>>;
    /// Replaces wrapped data keys in one transaction; rows no longer wrapped with `from_key_id`
    /// are left alone. Returns how many rows changed.
    async fn rewrap_secrets(&self, rows: &[Rewrapped]) -> Result<usize>;
    /// How many secrets' data keys `key_id` wraps.
    async fn secrets_wrapped_by(&self, key_id: &str) -> Result<u64>;

    /// Records releases (one per environment of a publish) in one transaction.
    async fn create_releases(&self, releases: &[NewRelease], now: Timestamp) -> Result<Vec<Release>>;
    /// A service's releases in an environment, newest first, with ids below `before` if given.
    async fn releases(&self, service: &str, environment: &str, before: Option<i64>, limit: u32)
    -> Result<Vec<Release>>;
    async fn release(&self, id: i64) -> Result<Option<Release>>;

    /// Creates a deployment, and marks the waiting (queued or awaiting approval) deployments of
    /// the same service and environment superseded, in one transaction. Returns the new one and
    /// those it superseded.
    async fn create_deployment(&self, new: NewDeployment, now: Timestamp) -> Result<(Deployment, Vec<Deployment>)>;
    async fn deployment(&self, id: i64) -> Result<Option<Deployment>>;
    /// A service's deployments in an environment, newest first.
    async fn deployments(&self, service: &str, environment: &str, limit: u32) -> Result<Vec<Deployment>>;
    /// Every deployment that has not finished, oldest first.
    async fn unfinished_deployments(&self) -> Result<Vec<Deployment>>;
    /// The newest succeeded deployment of each service and environment.
    async fn current_deployments(&self) -> Result<Vec<Deployment>>;
    /// Moves a deployment to `to` if its status allows it (compare-and-set); `None` if not.
    /// `in_progress` sets `started_at`; final statuses set `finished_at`.
    async fn move_deployment(
        &self,
        id: i64,
        to: DeploymentStatus,
        reason: Option<String>,
        approved_by: Option<String>,
        now: Timestamp,
    ) -> Result<Option<Deployment>>;
    async fn append_deployment_event(&self, id: i64, message: &str, now: Timestamp) -> Result<()>;
    async fn deployment_events(&self, id: i64) -> Result<Vec<DeploymentEvent>>;

    /// Creates an environment (status `queued`) and its create request, taking its CIDR block
    /// if it asks for one, in one transaction: two concurrent creates never get overlapping
    /// blocks. Fails with [`StoreError::EnvironmentExists`] if a live environment has the name,
    /// and [`StoreError::PoolExhausted`] if no block is free.
    async fn create_environment(&self, new: NewEnv, now: Timestamp) -> Result<(EnvRecord, EnvRequest)>;
    /// Queues an update or destroy request of an environment.
    async fn request_environment_change(
        &self,
        environment_id: i64,
        kind: RequestKind,
        requested_by: &str,
        params: serde_json::Value,
        now: Timestamp,
    ) -> Result<EnvRequest>;
    async fn environment_by_id(&self, id: i64) -> Result<Option<EnvRecord>>;
    /// The live environment of that name, else the newest that had it.
    async fn environment(&self, name: &str) -> Result<Option<EnvRecord>>;
    /// Environments by name, then id.
    async fn environments(&self, filter: &EnvFilter) -> Result<Vec<EnvRecord>>;
    /// The names of the environments that still exist.
    async fn live_environment_names(&self) -> Result<Vec<String>>;
    /// Moves an environment to `to` if [`EnvStatus::can_move_to`] allows it (compare-and-set).
    /// Leaving it with nothing (destroyed, or a failed create) frees its CIDR block.
    async fn move_environment(
        &self,
        id: i64,
        to: EnvStatus,
        patch: EnvPatch,
        now: Timestamp,
    ) -> Result<Option<EnvRecord>>;
    async fn set_environment_outputs(&self, id: i64, outputs: serde_json::Value, now: Timestamp) -> Result<()>;
    /// A review environment's branch moved to `head`.
    async fn touch_review(&self, id: i64, head: &str, now: Timestamp) -> Result<()>;
    async fn environment_request(&self, id: i64) -> Result<Option<EnvRequest>>;
    /// Requests, newest first: of one environment, or all.
    async fn environment_requests(&self, environment_id: Option<i64>, limit: u32) -> Result<Vec<EnvRequest>>;
    /// Requests queued or running, oldest first.
    async fn unfinished_environment_requests(&self) -> Result<Vec<EnvRequest>>;
    /// Moves a request (compare-and-set from a status that is not final); `running` sets
    /// `started_at`, final statuses `finished_at`.
    async fn move_environment_request(
        &self,
        id: i64,
        to: RequestStatus,
        outcome: Option<String>,
        now: Timestamp,
    ) -> Result<Option<EnvRequest>>;
    /// Remembers a run a request made.
    async fn add_request_run(&self, id: i64, run_id: i64) -> Result<()>;
    /// The blocks handed out from a pool, with the environment holding each.
    async fn cidr_allocations(&self, pool: &str) -> Result<Vec<(Cidr, String)>>;
    /// The newest applied run of each stack.
    async fn last_applies(&self) -> Result<Vec<Run>>;

    /// Closes the connections once the work in flight is done; for a clean stop (SQLite folds
    /// its write-ahead log back into the database file).
    async fn close(&self);
}

/// What unlocking a stack did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    Unlocked(Vec<Lock>),
    /// A run still holds the lock and is active or waiting; it must end first.
    Busy(Lock),
    NotLocked,
}

/// Opens the store a URL names (`sqlite://PATH`), applying migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(Arc::new(SqliteStore::open(std::path::Path::new(path)).await?));
    }
    Err(StoreError::UnknownScheme(url.to_owned()))
}
