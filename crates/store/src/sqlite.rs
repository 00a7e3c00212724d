//! The SQLite backend: one file in the data dir, in WAL mode, with migrations from
//! `migrations/sqlite`.

mod environments;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use plinth_core::cidr::Cidr;
use plinth_core::deploy::{DeploymentKind, DeploymentStatus};
use plinth_core::environment::{EnvStatus, RequestKind, RequestStatus};
use plinth_core::run::{PlanSummary, Run, RunMode, RunStatus};
use plinth_core::secret::Scope;
use plinth_core::time::Timestamp;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::{
    AuditEntry, AuditFilter, Deployment, DeploymentEvent, EnvFilter, EnvPatch, EnvRecord, EnvRequest, Event, Lock,
    LogLine, NewAudit, NewDeployment, NewEnv, NewEvent, NewRelease, NewRun, NewSecretVersion, NewToken, Recorded,
    Release, Result, Rewrapped, RunFilter, RunPatch, SealedSecret, SecretKey, SecretMeta, Start, Store, StoreError,
    Token, UnlockOutcome,
};

/// plinth's state in a SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

const RUN_COLUMNS: &str = "id, event_id, stack, path, workspace, environment, lock_key, terraform, commit_sha, branch, \
     mode, status, wave, depends_on, created_by, approved_by, reason, plan, created_at, started_at, finished_at, updated_at, \
     destroy, provisioned_env";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn run_from_row(row: &SqliteRow) -> Result<Run> {
    let status: String = row.try_get("status")?;
    let mode: String = row.try_get("mode")?;
    let depends_on: String = row.try_get("depends_on")?;
    let plan: Option<String> = row.try_get("plan")?;
    let ts = |col: &str| -> Result<Option<Timestamp>> { Ok(row.try_get::<Option<i64>, _>(col)?.map(Timestamp)) };
    Ok(Run {
        id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        stack: row.try_get("stack")?,
        path: row.try_get("path")?,
        workspace: row.try_get("workspace")?,
        environment: row.try_get("environment")?,
        lock_key: row.try_get("lock_key")?,
        terraform: row.try_get("terraform")?,
        commit: row.try_get("commit_sha")?,
        branch: row.try_get("branch")?,
        mode: RunMode::from_str(&mode).map_err(|e| corrupt("run mode", e))?,
        status: RunStatus::from_str(&status).map_err(|e| corrupt("run status", e))?,
        wave: row.try_get::<i64, _>("wave")?.try_into().map_err(|e| corrupt("run wave", e))?,
        depends_on: serde_json::from_str(&depends_on).map_err(|e| corrupt("run dependencies", e))?,
        created_by: row.try_get("created_by")?,
        approved_by: row.try_get("approved_by")?,
        reason: row.try_get("reason")?,
        plan: plan.map(|p| serde_json::from_str::<PlanSummary>(&p)).transpose().map_err(|e| corrupt("run plan", e))?,
        destroy: row.try_get::<i64, _>("destroy")? != 0,
        provisioned_env: row.try_get("provisioned_env")?,
        created_at: Timestamp(row.try_get("created_at")?),
        started_at: ts("started_at")?,
        finished_at: ts("finished_at")?,
        updated_at: Timestamp(row.try_get("updated_at")?),
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event> {
    Ok(Event {
        id: row.try_get("id")?,
        branch: row.try_get("branch")?,
        commit: row.try_get("commit_sha")?,
        trigger: row.try_get("trigger")?,
        created_by: row.try_get("created_by")?,
        created_at: Timestamp(row.try_get("created_at")?),
        note: row.try_get("note")?,
    })
}

fn lock_from_row(row: &SqliteRow) -> Result<Lock> {
    Ok(Lock {
        lock_key: row.try_get("lock_key")?,
        stack: row.try_get("stack")?,
        run_id: row.try_get("run_id")?,
        since: Timestamp(row.try_get("since")?),
        reason: row.try_get("reason")?,
    })
}

fn token_from_row(row: &SqliteRow) -> Result<Token> {
    let roles: String = row.try_get("roles")?;
    Ok(Token {
        name: row.try_get("name")?,
        roles: serde_json::from_str(&roles).map_err(|e| corrupt("token roles", e))?,
        services: serde_json::from_str(&row.try_get::<String, _>("services")?)
            .map_err(|e| corrupt("token services", e))?,
        created_by: row.try_get("created_by")?,
        created_at: Timestamp(row.try_get("created_at")?),
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(Timestamp),
    })
}

fn deployment_from_row(row: &SqliteRow) -> Result<Deployment> {
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    Ok(Deployment {
        id: row.try_get("id")?,
        release_id: row.try_get("release_id")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        kind: DeploymentKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("deployment kind `{kind}`")))?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        reason: row.try_get("reason")?,
        created_by: row.try_get("created_by")?,
        approved_by: row.try_get("approved_by")?,
        created_at: Timestamp(row.try_get("created_at")?),
        started_at: row.try_get::<Option<i64>, _>("started_at")?.map(Timestamp),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(Timestamp),
    })
}

fn release_from_row(row: &SqliteRow) -> Result<Release> {
    let images: String = row.try_get("images")?;
    Ok(Release {
        id: row.try_get("id")?,
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        images: serde_json::from_str(&images).map_err(|e| corrupt("release images", e))?,
        commit: row.try_get("commit_sha")?,
        source: row.try_get("source")?,
        published_by: row.try_get("published_by")?,
        created_at: Timestamp(row.try_get("created_at")?),
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditEntry> {
    let details: String = row.try_get("details")?;
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: Timestamp(row.try_get("at")?),
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        object: row.try_get("object")?,
        result: row.try_get("result")?,
        details: serde_json::from_str(&details).map_err(|e| corrupt("audit details", e))?,
    })
}

const SECRET_META: &str =
    "environment, scope_kind, scope_name, name, version, key_id, created_by, created_at, updated_by, updated_at";

fn secret_meta_from_row(row: &SqliteRow) -> Result<SecretMeta> {
    let kind: String = row.try_get("scope_kind")?;
    let target: String = row.try_get("scope_name")?;
    Ok(SecretMeta {
        environment: row.try_get("environment")?,
        scope: Scope::from_parts(&kind, &target)
            .ok_or_else(|| StoreError::Corrupt(format!("secret scope `{kind}` is not one plinth knows")))?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        key_id: row.try_get("key_id")?,
        created_by: row.try_get("created_by")?,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_by: row.try_get("updated_by")?,
        updated_at: Timestamp(row.try_get("updated_at")?),
    })
}

fn sealed_from_row(row: &SqliteRow) -> Result<SealedSecret> {
    Ok(SealedSecret {
        id: row.try_get("id")?,
        meta: secret_meta_from_row(row)?,
        wrapped_key: row.try_get("wrapped_key")?,
        nonce: row.try_get("nonce")?,
        ciphertext: row.try_get("ciphertext")?,
    })
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(format!("encoding JSON: {e}")))
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted and replaced rows (old secret ciphertexts among them) are overwritten with
            // zeros, not left in free pages.
            .pragma("secure_delete", "ON");
        let open_error = |e: &dyn std::fmt::Display| StoreError::Open {
            url: format!("sqlite://{}", path.display()),
            reason: e.to_string(),
        };
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(|e| open_error(&e))?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await.map_err(|e| open_error(&e))?;
        Ok(SqliteStore { pool })
    }

    /// A write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so that a
    /// transaction that reads before it writes waits its turn (busy timeout) instead of failing
    /// with "database is locked" when another writer got in between.
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn run_in<'e, E>(executor: E, id: i64) -> Result<Option<Run>>
    where
        E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
    {
        let row = sqlx::query(sql_text(format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?")))
            .bind(id)
            .fetch_optional(executor)
            .await?;
        row.as_ref().map(run_from_row).transpose()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn record_event(&self, event: NewEvent, runs: Vec<NewRun>, now: Timestamp) -> Result<Recorded> {
        let mut tx = self.write().await?;
        let event_id: i64 = sqlx::query(
            "INSERT INTO events (branch, commit_sha, trigger, created_by, created_at, note) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&event.branch)
        .bind(&event.commit)
        .bind(&event.trigger)
        .bind(&event.created_by)
        .bind(now.0)
        .bind(&event.note)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        let mut ids: BTreeMap<String, i64> = BTreeMap::new();
        for run in &runs {
            let id: i64 = sqlx::query(
                "INSERT INTO runs (event_id, stack, path, workspace, environment, lock_key, terraform, commit_sha, branch, mode, \
                 status, wave, depends_on, created_by, created_at, updated_at, destroy, provisioned_env, approved_by) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, '[]', ?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(event_id)
            .bind(&run.stack)
            .bind(&run.path)
            .bind(&run.workspace)
            .bind(&run.environment)
            .bind(&run.lock_key)
            .bind(&run.terraform)
            .bind(&event.commit)
            .bind(&event.branch)
            .bind(run.mode.as_str())
            .bind(i64::from(run.wave))
            .bind(&event.created_by)
            .bind(now.0)
            .bind(now.0)
            .bind(i64::from(run.destroy))
            .bind(run.provisioned_env)
            .bind(&run.approved_by)
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
            ids.insert(run.stack.clone(), id);
        }
        for run in &runs {
            let deps: Vec<i64> = run.waits_for.iter().filter_map(|s| ids.get(s).copied()).collect();
            if !deps.is_empty() {
                sqlx::query("UPDATE runs SET depends_on = ? WHERE id = ?")
                    .bind(json(&deps)?)
                    .bind(ids[&run.stack])
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // Older runs on the same lock and branch that have not started, or wait for approval,
        // are superseded by the new ones.
        let mut superseded = Vec::new();
        for run in runs.iter().filter(|_| event.supersede) {
            let id = ids[&run.stack];
            let rows = sqlx::query(sql_text(format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE lock_key = ? AND branch IS ? AND id < ? \
                 AND status IN ('queued', 'awaiting_approval') \
                 AND event_id IN (SELECT id FROM events WHERE trigger != 'manual') ORDER BY id"
            )))
            .bind(&run.lock_key)
            .bind(&event.branch)
            .bind(id)
            .fetch_all(&mut *tx)
            .await?;
            for row in &rows {
                let old = run_from_row(row)?;
                let reason = format!("superseded by run #{id} for commit {}", short(&event.commit));
                sqlx::query(
                    "UPDATE runs SET status = 'stale', reason = ?, finished_at = ?, updated_at = ? WHERE id = ?",
                )
                .bind(&reason)
                .bind(now.0)
                .bind(now.0)
                .bind(old.id)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM locks WHERE run_id = ?").bind(old.id).execute(&mut *tx).await?;
                if let Some(updated) = Self::run_in(&mut *tx, old.id).await? {
                    superseded.push(updated);
                }
            }
        }
        if let Some((branch, sha)) = &event.advance_ref {
            sqlx::query(
                "INSERT INTO refs (branch, sha, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT(branch) DO UPDATE SET sha = excluded.sha, updated_at = excluded.updated_at",
            )
            .bind(branch)
            .bind(sha)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        let mut created = Vec::new();
        for id in ids.values() {
            if let Some(run) = Self::run_in(&mut *tx, *id).await? {
                created.push(run);
            }
        }
        created.sort_by_key(|r| r.id);
        let row = sqlx::query("SELECT * FROM events WHERE id = ?").bind(event_id).fetch_one(&mut *tx).await?;
        let recorded_event = event_from_row(&row)?;
        tx.commit().await?;
        Ok(Recorded { event: recorded_event, runs: created, superseded })
    }

    async fn events(&self, limit: u32) -> Result<Vec<Event>> {
        let rows = sqlx::query("SELECT * FROM events ORDER BY id DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn refs(&self) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT branch, sha FROM refs").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("branch")?, r.try_get("sha")?))).collect()
    }

    async fn set_refs(&self, refs: &BTreeMap<String, Option<String>>, now: Timestamp) -> Result<()> {
        let mut tx = self.write().await?;
        for (branch, sha) in refs {
            match sha {
                Some(sha) => {
                    sqlx::query(
                        "INSERT INTO refs (branch, sha, updated_at) VALUES (?, ?, ?) \
                         ON CONFLICT(branch) DO UPDATE SET sha = excluded.sha, updated_at = excluded.updated_at",
                    )
                    .bind(branch)
                    .bind(sha)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM refs WHERE branch = ?").bind(branch).execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn run(&self, id: i64) -> Result<Option<Run>> {
        Self::run_in(&self.pool, id).await
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let mut text = format!("SELECT {RUN_COLUMNS} FROM runs WHERE 1 = 1");
        if filter.stack.is_some() {
            text.push_str(" AND stack = ?");
        }
        if filter.status.is_some() {
            text.push_str(" AND status = ?");
        }
        if filter.event_id.is_some() {
            text.push_str(" AND event_id = ?");
        }
        if filter.before.is_some() {
            text.push_str(" AND id < ?");
        }
        text.push_str(" ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(sql_text(text));
        if let Some(stack) = &filter.stack {
            query = query.bind(stack);
        }
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(event) = filter.event_id {
            query = query.bind(event);
        }
        if let Some(before) = filter.before {
            query = query.bind(before);
        }
        let rows = query.bind(i64::from(filter.limit.unwrap_or(100).min(1000))).fetch_all(&self.pool).await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn unfinished_runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(sql_text(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'planning', 'awaiting_approval', 'applying') \
             OR (status = 'planned' AND mode = 'apply') ORDER BY id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn outcomes(&self, ids: &[i64]) -> Result<Vec<(i64, RunStatus, RunMode)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = vec!["?"; ids.len()].join(", ");
        let mut query =
            sqlx::query(sql_text(format!("SELECT id, status, mode FROM runs WHERE id IN ({placeholders})")));
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                let mode: String = r.try_get("mode")?;
                Ok((
                    r.try_get("id")?,
                    RunStatus::from_str(&status).map_err(|e| corrupt("run status", e))?,
                    RunMode::from_str(&mode).map_err(|e| corrupt("run mode", e))?,
                ))
            })
            .collect()
    }

    async fn latest_runs(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(sql_text(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT MAX(id) FROM runs GROUP BY stack) ORDER BY stack"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn start_run(&self, id: i64, now: Timestamp) -> Result<Start> {
        let mut tx = self.write().await?;
        let Some(run) = Self::run_in(&mut *tx, id).await? else { return Ok(Start::NotQueued) };
        if run.status != RunStatus::Queued {
            return Ok(Start::NotQueued);
        }
        let busy = sqlx::query(
            "SELECT id FROM runs WHERE lock_key = ? AND id != ? \
             AND (status IN ('planning', 'applying') OR (status = 'planned' AND mode = 'apply')) LIMIT 1",
        )
        .bind(&run.lock_key)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = busy {
            return Ok(Start::Busy(row.try_get("id")?));
        }
        if run.mode == RunMode::Apply {
            let held = sqlx::query("SELECT * FROM locks WHERE lock_key = ?")
                .bind(&run.lock_key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = held {
                let lock = lock_from_row(&row)?;
                if lock.run_id != id {
                    return Ok(Start::Locked(lock));
                }
            }
            sqlx::query(
                "INSERT INTO locks (lock_key, stack, run_id, since, reason) VALUES (?, ?, ?, ?, 'running') \
                 ON CONFLICT(lock_key) DO UPDATE SET reason = 'running'",
            )
            .bind(&run.lock_key)
            .bind(&run.stack)
            .bind(id)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE runs SET status = 'planning', started_at = COALESCE(started_at, ?), updated_at = ? WHERE id = ?",
        )
        .bind(now.0)
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let started = Self::run_in(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(started.map_or(Start::NotQueued, |run| Start::Started(Box::new(run))))
    }

    async fn transition(&self, id: i64, to: RunStatus, patch: RunPatch, now: Timestamp) -> Result<Option<Run>> {
        let mut tx = self.write().await?;
        let Some(run) = Self::run_in(&mut *tx, id).await? else { return Ok(None) };
        if !run.status.can_move_to(to) {
            return Ok(None);
        }
        let finished = to.is_final(run.mode).then_some(now.0);
        let plan = patch.plan.as_ref().map(json).transpose()?;
        sqlx::query(
            "UPDATE runs SET status = ?, reason = COALESCE(?, reason), plan = COALESCE(?, plan), \
             approved_by = COALESCE(?, approved_by), finished_at = COALESCE(?, finished_at), updated_at = ? \
             WHERE id = ? AND status = ?",
        )
        .bind(to.as_str())
        .bind(&patch.reason)
        .bind(&plan)
        .bind(&patch.approved_by)
        .bind(finished)
        .bind(now.0)
        .bind(id)
        .bind(run.status.as_str())
        .execute(&mut *tx)
        .await?;
        match to {
            RunStatus::Interrupted => {
                sqlx::query("UPDATE locks SET reason = 'interrupted' WHERE run_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            RunStatus::AwaitingApproval => {
                sqlx::query("UPDATE locks SET reason = 'awaiting_approval' WHERE run_id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            RunStatus::Applying => {
                sqlx::query("UPDATE locks SET reason = 'running' WHERE run_id = ?").bind(id).execute(&mut *tx).await?;
            }
            // Back in the queue (the server restarted mid-plan): it takes the lock again later.
            RunStatus::Queued => {
                sqlx::query("DELETE FROM locks WHERE run_id = ?").bind(id).execute(&mut *tx).await?;
            }
            _ if finished.is_some() => {
                sqlx::query("DELETE FROM locks WHERE run_id = ?").bind(id).execute(&mut *tx).await?;
            }
            _ => {}
        }
        let updated = Self::run_in(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn append_logs(&self, run_id: i64, lines: &[LogLine]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for line in lines {
            sqlx::query("INSERT OR IGNORE INTO run_logs (run_id, seq, stream, line, at) VALUES (?, ?, ?, ?, ?)")
                .bind(run_id)
                .bind(line.seq as i64)
                .bind(&line.stream)
                .bind(&line.text)
                .bind(line.at.0)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn last_log_seq(&self, run_id: i64) -> Result<u64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM run_logs WHERE run_id = ?")
            .bind(run_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<i64, _>("seq")?.max(0) as u64)
    }

    async fn logs(&self, run_id: i64, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        let rows =
            sqlx::query("SELECT seq, stream, line, at FROM run_logs WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?")
                .bind(run_id)
                .bind(after as i64)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    stream: r.try_get("stream")?,
                    text: r.try_get("line")?,
                    at: Timestamp(r.try_get("at")?),
                })
            })
            .collect()
    }

    async fn locks(&self) -> Result<Vec<Lock>> {
        let rows = sqlx::query("SELECT * FROM locks ORDER BY lock_key").fetch_all(&self.pool).await?;
        rows.iter().map(lock_from_row).collect()
    }

    async fn unlock_stack(&self, stack: &str) -> Result<UnlockOutcome> {
        let mut tx = self.write().await?;
        let rows = sqlx::query("SELECT * FROM locks WHERE stack = ?").bind(stack).fetch_all(&mut *tx).await?;
        let locks: Vec<Lock> = rows.iter().map(lock_from_row).collect::<Result<_>>()?;
        if locks.is_empty() {
            return Ok(UnlockOutcome::NotLocked);
        }
        if let Some(busy) = locks.iter().find(|l| l.reason != "interrupted") {
            return Ok(UnlockOutcome::Busy(busy.clone()));
        }
        sqlx::query("DELETE FROM locks WHERE stack = ? AND reason = 'interrupted'")
            .bind(stack)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(UnlockOutcome::Unlocked(locks))
    }

    async fn create_token(&self, token: NewToken, now: Timestamp) -> Result<Token> {
        let result = sqlx::query(
            "INSERT INTO tokens (name, hash, roles, services, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&token.name)
        .bind(&token.hash)
        .bind(json(&token.roles)?)
        .bind(json(&token.services)?)
        .bind(&token.created_by)
        .bind(now.0)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::TokenExists(token.name));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Token {
            name: token.name,
            roles: token.roles,
            services: token.services,
            created_by: token.created_by,
            created_at: now,
            revoked_at: None,
        })
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE hash = ? AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn tokens(&self) -> Result<Vec<Token>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY name, id").fetch_all(&self.pool).await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_token(&self, name: &str, now: Timestamp) -> Result<bool> {
        let done = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(now.0)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn append_audit(&self, entry: NewAudit, now: Timestamp) -> Result<AuditEntry> {
        let row = sqlx::query(
            "INSERT INTO audit (at, actor, action, object, result, details) VALUES (?, ?, ?, ?, ?, ?) RETURNING *",
        )
        .bind(now.0)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.object)
        .bind(&entry.result)
        .bind(json(&entry.details)?)
        .fetch_one(&self.pool)
        .await?;
        audit_from_row(&row)
    }

    async fn secrets(&self, environment: Option<&str>) -> Result<Vec<SecretMeta>> {
        let rows = sqlx::query(sql_text(format!(
            "SELECT {SECRET_META} FROM secrets WHERE (?1 IS NULL OR environment = ?1) \
             ORDER BY environment, scope_kind, scope_name, name"
        )))
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(secret_meta_from_row).collect()
    }

    async fn secret(&self, key: &SecretKey) -> Result<Option<SealedSecret>> {
        let row = sqlx::query(sql_text(format!(
            "SELECT id, {SECRET_META}, wrapped_key, nonce, ciphertext FROM secrets \
             WHERE environment = ? AND scope_kind = ? AND scope_name = ? AND name = ?"
        )))
        .bind(&key.environment)
        .bind(key.scope.kind())
        .bind(key.scope.target())
        .bind(&key.name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(sealed_from_row).transpose()
    }

    async fn sealed_secrets(&self, environment: &str) -> Result<Vec<SealedSecret>> {
        let rows = sqlx::query(sql_text(format!(
            "SELECT id, {SECRET_META}, wrapped_key, nonce, ciphertext FROM secrets WHERE environment = ? \
             ORDER BY scope_kind, scope_name, name"
        )))
        .bind(environment)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(sealed_from_row).collect()
    }

    async fn put_secret(&self, secret: NewSecretVersion, now: Timestamp) -> Result<SecretMeta> {
        let key = &secret.key;
        let mut tx = self.write().await?;
        let current: Option<i64> = sqlx::query(
            "SELECT version FROM secrets WHERE environment = ? AND scope_kind = ? AND scope_name = ? AND name = ?",
        )
        .bind(&key.environment)
        .bind(key.scope.kind())
        .bind(key.scope.target())
        .bind(&key.name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get("version"))
        .transpose()?;
        if current != secret.replaces {
            return Err(StoreError::SecretChanged(key.name.clone()));
        }
        let row = match current {
            None => {
                sqlx::query(sql_text(format!(
                    "INSERT INTO secrets (environment, scope_kind, scope_name, name, version, key_id, wrapped_key, \
                     nonce, ciphertext, created_by, created_at, updated_by, updated_at) \
                     VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {SECRET_META}"
                )))
                .bind(&key.environment)
                .bind(key.scope.kind())
                .bind(key.scope.target())
                .bind(&key.name)
                .bind(&secret.key_id)
                .bind(&secret.wrapped_key)
                .bind(&secret.nonce)
                .bind(&secret.ciphertext)
                .bind(&secret.by)
                .bind(now.0)
                .bind(&secret.by)
                .bind(now.0)
                .fetch_one(&mut *tx)
                .await?
            }
            Some(version) => {
                sqlx::query(sql_text(format!(
                    "UPDATE secrets SET version = ?, key_id = ?, wrapped_key = ?, nonce = ?, ciphertext = ?, \
                     updated_by = ?, updated_at = ? \
                     WHERE environment = ? AND scope_kind = ? AND scope_name = ? AND name = ? RETURNING {SECRET_META}"
                )))
                .bind(version + 1)
                .bind(&secret.key_id)
                .bind(&secret.wrapped_key)
                .bind(&secret.nonce)
                .bind(&secret.ciphertext)
                .bind(&secret.by)
                .bind(now.0)
                .bind(&key.environment)
                .bind(key.scope.kind())
                .bind(key.scope.target())
                .bind(&key.name)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let meta = secret_meta_from_row(&row)?;
        tx.commit().await?;
        Ok(meta)
    }

    async fn remove_secret(&self, key: &SecretKey) -> Result<Option<SecretMeta>> {
        let row = sqlx::query(sql_text(format!(
            "DELETE FROM secrets WHERE environment = ? AND scope_kind = ? AND scope_name = ? AND name = ? \
             RETURNING {SECRET_META}"
        )))
        .bind(&key.environment)
        .bind(key.scope.kind())
        .bind(key.scope.target())
        .bind(&key.name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(secret_meta_from_row).transpose()
    }

    async fn wrapped_keys(&self) -> Result<Vec<(i64, String, Vec<u8>)>> {
        let rows = sqlx::query("SELECT id, key_id, wrapped_key FROM secrets ORDER BY id").fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("key_id")?, row.try_get("wrapped_key")?))).collect()
    }

    async fn rewrap_secrets(&self, rows: &[Rewrapped]) -> Result<usize> {
        let mut tx = self.write().await?;
        let mut changed = 0;
        for row in rows {
            let done = sqlx::query("UPDATE secrets SET key_id = ?, wrapped_key = ? WHERE id = ? AND key_id = ?")
                .bind(&row.key_id)
                .bind(&row.wrapped_key)
                .bind(row.id)
                .bind(&row.from_key_id)
                .execute(&mut *tx)
                .await?;
            changed += done.rows_affected() as usize;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn secrets_wrapped_by(&self, key_id: &str) -> Result<u64> {
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM secrets WHERE key_id = ?")
            .bind(key_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(count.max(0) as u64)
    }

    async fn create_releases(&self, releases: &[NewRelease], now: Timestamp) -> Result<Vec<Release>> {
        let mut tx = self.write().await?;
        let mut out = Vec::new();
        for r in releases {
            let row = sqlx::query(
                "INSERT INTO releases (service, environment, images, commit_sha, source, published_by, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            )
            .bind(&r.service)
            .bind(&r.environment)
            .bind(json(&r.images)?)
            .bind(&r.commit)
            .bind(&r.source)
            .bind(&r.published_by)
            .bind(now.0)
            .fetch_one(&mut *tx)
            .await?;
            out.push(release_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn releases(
        &self,
        service: &str,
        environment: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Release>> {
        let rows = sqlx::query(
            "SELECT * FROM releases WHERE service = ? AND environment = ? AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?",
        )
        .bind(service)
        .bind(environment)
        .bind(before)
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(release_from_row).collect()
    }

    async fn release(&self, id: i64) -> Result<Option<Release>> {
        let row = sqlx::query("SELECT * FROM releases WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(release_from_row).transpose()
    }

    async fn create_deployment(&self, new: NewDeployment, now: Timestamp) -> Result<(Deployment, Vec<Deployment>)> {
        let mut tx = self.write().await?;
        let superseded_rows = sqlx::query(
            "UPDATE deployments SET status = 'superseded', finished_at = ?, reason = 'a newer release came first' \
             WHERE service = ? AND environment = ? AND status IN ('queued', 'awaiting_approval') RETURNING *",
        )
        .bind(now.0)
        .bind(&new.service)
        .bind(&new.environment)
        .fetch_all(&mut *tx)
        .await?;
        let status = if new.needs_approval { DeploymentStatus::AwaitingApproval } else { DeploymentStatus::Queued };
        let row = sqlx::query(
            "INSERT INTO deployments (release_id, service, environment, kind, status, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
        )
        .bind(new.release_id)
        .bind(&new.service)
        .bind(&new.environment)
        .bind(new.kind.as_str())
        .bind(status.as_str())
        .bind(&new.created_by)
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await?;
        let created = deployment_from_row(&row)?;
        let superseded = superseded_rows.iter().map(deployment_from_row).collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok((created, superseded))
    }

    async fn deployment(&self, id: i64) -> Result<Option<Deployment>> {
        let row = sqlx::query("SELECT * FROM deployments WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    async fn deployments(&self, service: &str, environment: &str, limit: u32) -> Result<Vec<Deployment>> {
        let rows =
            sqlx::query("SELECT * FROM deployments WHERE service = ? AND environment = ? ORDER BY id DESC LIMIT ?")
                .bind(service)
                .bind(environment)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn unfinished_deployments(&self) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE status IN ('queued', 'awaiting_approval', 'in_progress') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn current_deployments(&self) -> Result<Vec<Deployment>> {
        let rows = sqlx::query(
            "SELECT * FROM deployments WHERE id IN (SELECT MAX(id) FROM deployments WHERE status = 'succeeded' \
             GROUP BY service, environment) ORDER BY service, environment",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(deployment_from_row).collect()
    }

    async fn move_deployment(
        &self,
        id: i64,
        to: DeploymentStatus,
        reason: Option<String>,
        approved_by: Option<String>,
        now: Timestamp,
    ) -> Result<Option<Deployment>> {
        let mut tx = self.write().await?;
        let Some(row) = sqlx::query("SELECT * FROM deployments WHERE id = ?").bind(id).fetch_optional(&mut *tx).await?
        else {
            return Ok(None);
        };
        let current = deployment_from_row(&row)?;
        if !current.status.can_move_to(to) {
            return Ok(None);
        }
        let started = (to == DeploymentStatus::InProgress).then_some(now.0);
        let finished = to.is_final().then_some(now.0);
        let row = sqlx::query(
            "UPDATE deployments SET status = ?, reason = COALESCE(?, reason), approved_by = COALESCE(?, approved_by), \
             started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at) WHERE id = ? RETURNING *",
        )
        .bind(to.as_str())
        .bind(reason)
        .bind(approved_by)
        .bind(started)
        .bind(finished)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let moved = deployment_from_row(&row)?;
        tx.commit().await?;
        Ok(Some(moved))
    }

    async fn append_deployment_event(&self, id: i64, message: &str, now: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO deployment_events (deployment_id, seq, at, message) VALUES \
             (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployment_events WHERE deployment_id = ?1), ?2, ?3)",
        )
        .bind(id)
        .bind(now.0)
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deployment_events(&self, id: i64) -> Result<Vec<DeploymentEvent>> {
        let rows = sqlx::query("SELECT seq, at, message FROM deployment_events WHERE deployment_id = ? ORDER BY seq")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeploymentEvent {
                    seq: row.try_get("seq")?,
                    at: Timestamp(row.try_get("at")?),
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }

    async fn create_environment(&self, new: NewEnv, now: Timestamp) -> Result<(EnvRecord, EnvRequest)> {
        self.env_create(new, now).await
    }

    async fn request_environment_change(
        &self,
        environment_id: i64,
        kind: RequestKind,
        requested_by: &str,
        params: serde_json::Value,
        now: Timestamp,
    ) -> Result<EnvRequest> {
        self.env_request_change(environment_id, kind, requested_by, params, now).await
    }

    async fn environment_by_id(&self, id: i64) -> Result<Option<EnvRecord>> {
        self.env_by_id(id).await
    }

    async fn environment(&self, name: &str) -> Result<Option<EnvRecord>> {
        self.env_by_name(name).await
    }

    async fn environments(&self, filter: &EnvFilter) -> Result<Vec<EnvRecord>> {
        self.env_list(filter).await
    }

    async fn live_environment_names(&self) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT name FROM environments WHERE status NOT IN ('destroyed', 'failed') ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(|r| r.try_get("name").map_err(StoreError::from)).collect()
    }

    async fn move_environment(
        &self,
        id: i64,
        to: EnvStatus,
        patch: EnvPatch,
        now: Timestamp,
    ) -> Result<Option<EnvRecord>> {
        self.env_move(id, to, patch, now).await
    }

    async fn set_environment_outputs(&self, id: i64, outputs: serde_json::Value, now: Timestamp) -> Result<()> {
        self.env_set_outputs(id, outputs, now).await
    }

    async fn touch_review(&self, id: i64, head: &str, now: Timestamp) -> Result<()> {
        self.env_touch_review(id, head, now).await
    }

    async fn environment_request(&self, id: i64) -> Result<Option<EnvRequest>> {
        self.env_request(id).await
    }

    async fn environment_requests(&self, environment_id: Option<i64>, limit: u32) -> Result<Vec<EnvRequest>> {
        self.env_requests(environment_id, limit).await
    }

    async fn unfinished_environment_requests(&self) -> Result<Vec<EnvRequest>> {
        self.env_unfinished_requests().await
    }

    async fn move_environment_request(
        &self,
        id: i64,
        to: RequestStatus,
        outcome: Option<String>,
        now: Timestamp,
    ) -> Result<Option<EnvRequest>> {
        self.env_move_request(id, to, outcome, now).await
    }

    async fn add_request_run(&self, id: i64, run_id: i64) -> Result<()> {
        self.env_add_request_run(id, run_id).await
    }

    async fn cidr_allocations(&self, pool: &str) -> Result<Vec<(Cidr, String)>> {
        self.env_cidr_allocations(pool).await
    }

    async fn last_applies(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(sql_text(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN \
             (SELECT MAX(id) FROM runs WHERE status = 'applied' GROUP BY stack) ORDER BY stack"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row).collect()
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let mut text = String::from("SELECT * FROM audit WHERE id > ?");
        if filter.actor.is_some() {
            text.push_str(" AND actor = ?");
        }
        text.push_str(" ORDER BY id LIMIT ?");
        let mut query = sqlx::query(sql_text(text)).bind(filter.after.unwrap_or(0));
        if let Some(actor) = &filter.actor {
            query = query.bind(actor);
        }
        let rows = query.bind(i64::from(filter.limit.unwrap_or(1000).min(10_000))).fetch_all(&self.pool).await?;
        rows.iter().map(audit_from_row).collect()
    }
}

/// Marks SQL built from constants and placeholders (never from input) as safe to run.
fn sql_text(text: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(text)
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}
