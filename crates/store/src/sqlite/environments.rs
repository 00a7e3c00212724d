//! Environments on request in SQLite: the environments, their requests (the request log) and
//! the CIDR blocks handed out. The [`Store`](crate::Store) methods delegate here.

use plinth_core::cidr::{Cidr, allocate};
use plinth_core::environment::{EnvStatus, RequestKind, RequestStatus};
use plinth_core::time::Timestamp;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{SqliteStore, corrupt, json};
use crate::{CidrAsk, EnvFilter, EnvPatch, EnvRecord, EnvRequest, NewEnv, Result, ReviewInfo, StoreError};

fn env_from_row(row: &SqliteRow) -> Result<EnvRecord> {
    let status: String = row.try_get("status")?;
    let text = |col: &str| -> Result<String> { row.try_get(col).map_err(StoreError::from) };
    let parse = |col: &str| -> Result<serde_json::Value> {
        serde_json::from_str(&text(col)?).map_err(|e| corrupt(&format!("environment {col}"), e))
    };
    let review = match row.try_get::<Option<String>, _>("review_branch")? {
        Some(branch) => Some(ReviewInfo {
            branch,
            slug: row.try_get::<Option<String>, _>("review_slug")?.unwrap_or_default(),
            head: row.try_get("review_head")?,
            pushed_at: Timestamp(row.try_get::<Option<i64>, _>("pushed_at")?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(EnvRecord {
        id: row.try_get("id")?,
        name: text("name")?,
        product: text("product")?,
        template: text("template")?,
        template_commit: text("template_commit")?,
        policy_environment: text("policy_environment")?,
        account: text("account")?,
        params: parse("params")?,
        status: status.parse().map_err(|e: String| corrupt("environment status", e))?,
        reason: row.try_get("reason")?,
        owner: text("owner")?,
        requested_by: text("requested_by")?,
        fqdn: row.try_get("fqdn")?,
        services: serde_json::from_str(&text("services")?).map_err(|e| corrupt("environment services", e))?,
        cidr: row.try_get("cidr")?,
        cidr_pool: row.try_get("cidr_pool")?,
        outputs: parse("outputs")?,
        workspace: row.try_get("workspace")?,
        terraform: text("terraform")?,
        review,
        created_at: Timestamp(row.try_get("created_at")?),
        updated_at: Timestamp(row.try_get("updated_at")?),
        destroyed_at: row.try_get::<Option<i64>, _>("destroyed_at")?.map(Timestamp),
    })
}

fn request_from_row(row: &SqliteRow) -> Result<EnvRequest> {
    let kind: String = row.try_get("kind")?;
    let status: String = row.try_get("status")?;
    let params: String = row.try_get("params")?;
    let runs: String = row.try_get("runs")?;
    Ok(EnvRequest {
        id: row.try_get("id")?,
        environment_id: row.try_get("environment_id")?,
        environment: row.try_get("environment")?,
        kind: kind.parse().map_err(|e: String| corrupt("request kind", e))?,
        status: status.parse().map_err(|e: String| corrupt("request status", e))?,
        account: row.try_get("account")?,
        requested_by: row.try_get("requested_by")?,
        template: row.try_get("template")?,
        params: serde_json::from_str(&params).map_err(|e| corrupt("request params", e))?,
        outcome: row.try_get("outcome")?,
        runs: serde_json::from_str(&runs).map_err(|e| corrupt("request runs", e))?,
        created_at: Timestamp(row.try_get("created_at")?),
        started_at: row.try_get::<Option<i64>, _>("started_at")?.map(Timestamp),
        finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(Timestamp),
    })
}

const REQUEST_SELECT: &str =
    "SELECT r.*, e.name AS environment FROM environment_requests r JOIN environments e ON e.id = r.environment_id";

type Tx = sqlx::Transaction<'static, Sqlite>;

impl SqliteStore {
    async fn env_in(tx: &mut Tx, id: i64) -> Result<Option<EnvRecord>> {
        let row = sqlx::query("SELECT * FROM environments WHERE id = ?").bind(id).fetch_optional(&mut **tx).await?;
        row.as_ref().map(env_from_row).transpose()
    }

    async fn request_in(tx: &mut Tx, id: i64) -> Result<Option<EnvRequest>> {
        let row = sqlx::query(super::sql_text(format!("{REQUEST_SELECT} WHERE r.id = ?")))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    async fn insert_request(
        tx: &mut Tx,
        env: &EnvRecord,
        kind: RequestKind,
        requested_by: &str,
        params: &serde_json::Value,
        now: Timestamp,
    ) -> Result<EnvRequest> {
        let id: i64 = sqlx::query(
            "INSERT INTO environment_requests (environment_id, kind, status, account, requested_by, template, params, created_at) \
             VALUES (?, ?, 'queued', ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(env.id)
        .bind(kind.as_str())
        .bind(&env.account)
        .bind(requested_by)
        .bind(&env.template)
        .bind(json(params)?)
        .bind(now.0)
        .fetch_one(&mut **tx)
        .await?
        .try_get("id")?;
        Self::request_in(tx, id).await?.ok_or_else(|| StoreError::Database("the new request vanished".into()))
    }

    async fn take_block(tx: &mut Tx, ask: &CidrAsk) -> Result<Cidr> {
        let rows = sqlx::query("SELECT cidr FROM cidr_allocations WHERE pool = ?")
            .bind(&ask.pool)
            .fetch_all(&mut **tx)
            .await?;
        let mut taken = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: String = row.try_get("cidr")?;
            taken.push(text.parse::<Cidr>().map_err(|e| corrupt("allocated block", e))?);
        }
        allocate(&ask.ranges, &taken, ask.prefix)
            .map_err(|e| StoreError::PoolExhausted { pool: ask.pool.clone(), reason: e.to_string() })
    }

    pub(super) async fn env_create(&self, new: NewEnv, now: Timestamp) -> Result<(EnvRecord, EnvRequest)> {
        let mut tx = self.write().await?;
        let exists =
            sqlx::query("SELECT id FROM environments WHERE name = ? AND status NOT IN ('destroyed', 'failed')")
                .bind(&new.name)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_some() {
            return Err(StoreError::EnvironmentExists(new.name));
        }
        let block = match &new.cidr {
            Some(ask) => Some(Self::take_block(&mut tx, ask).await?),
            None => None,
        };
        let review = new.review.as_ref();
        let id: i64 = sqlx::query(
            "INSERT INTO environments (name, product, template, template_commit, policy_environment, account, params, status, \
             owner, requested_by, fqdn, services, cidr, cidr_pool, workspace, terraform, review_branch, review_slug, review_head, \
             pushed_at, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&new.name)
        .bind(&new.product)
        .bind(&new.template)
        .bind(&new.template_commit)
        .bind(&new.policy_environment)
        .bind(&new.account)
        .bind(json(&new.params)?)
        .bind(&new.owner)
        .bind(&new.requested_by)
        .bind(&new.fqdn)
        .bind(json(&new.services)?)
        .bind(block.map(|b| b.to_string()))
        .bind(new.cidr.as_ref().map(|c| c.pool.clone()))
        .bind(&new.workspace)
        .bind(&new.terraform)
        .bind(review.map(|r| r.branch.clone()))
        .bind(review.map(|r| r.slug.clone()))
        .bind(review.and_then(|r| r.head.clone()))
        .bind(review.map(|r| r.pushed_at.0))
        .bind(now.0)
        .bind(now.0)
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        if let (Some(block), Some(ask)) = (block, &new.cidr) {
            sqlx::query("INSERT INTO cidr_allocations (pool, cidr, environment_id) VALUES (?, ?, ?)")
                .bind(&ask.pool)
                .bind(block.to_string())
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let env = Self::env_in(&mut tx, id)
            .await?
            .ok_or_else(|| StoreError::Database("the new environment vanished".into()))?;
        let request =
            Self::insert_request(&mut tx, &env, RequestKind::Create, &new.requested_by, &new.params, now).await?;
        tx.commit().await?;
        Ok((env, request))
    }

    pub(super) async fn env_request_change(
        &self,
        environment_id: i64,
        kind: RequestKind,
        requested_by: &str,
        params: serde_json::Value,
        now: Timestamp,
    ) -> Result<EnvRequest> {
        let mut tx = self.write().await?;
        let env = Self::env_in(&mut tx, environment_id)
            .await?
            .ok_or_else(|| StoreError::Database(format!("environment #{environment_id} does not exist")))?;
        let request = Self::insert_request(&mut tx, &env, kind, requested_by, &params, now).await?;
        tx.commit().await?;
        Ok(request)
    }

    pub(super) async fn env_by_id(&self, id: i64) -> Result<Option<EnvRecord>> {
        let row = sqlx::query("SELECT * FROM environments WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(env_from_row).transpose()
    }

    pub(super) async fn env_by_name(&self, name: &str) -> Result<Option<EnvRecord>> {
        let row = sqlx::query(
            "SELECT * FROM environments WHERE name = ? \
             ORDER BY (status NOT IN ('destroyed', 'failed')) DESC, id DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(env_from_row).transpose()
    }

    pub(super) async fn env_list(&self, filter: &EnvFilter) -> Result<Vec<EnvRecord>> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM environments WHERE 1 = 1");
        if let Some(product) = &filter.product {
            q.push(" AND product = ").push_bind(product.clone());
        }
        if let Some(template) = &filter.template {
            q.push(" AND template = ").push_bind(template.clone());
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if filter.live {
            q.push(" AND status NOT IN ('destroyed', 'failed')");
        }
        if filter.review {
            q.push(" AND review_branch IS NOT NULL");
        }
        if let Some(query) = &filter.query {
            let escaped = query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            q.push(" AND name LIKE ").push_bind(format!("%{escaped}%")).push(" ESCAPE '\\'");
        }
        if let Some(after) = &filter.after {
            q.push(" AND name > ").push_bind(after.clone());
        }
        q.push(" ORDER BY name, id");
        if let Some(limit) = filter.limit {
            q.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter().map(env_from_row).collect()
    }

    pub(super) async fn env_move(
        &self,
        id: i64,
        to: EnvStatus,
        patch: EnvPatch,
        now: Timestamp,
    ) -> Result<Option<EnvRecord>> {
        let mut tx = self.write().await?;
        let Some(current) = Self::env_in(&mut tx, id).await? else { return Ok(None) };
        if !current.status.can_move_to(to) {
            return Ok(None);
        }
        let gone = !to.is_live();
        sqlx::query(
            "UPDATE environments SET status = ?, reason = ?, params = COALESCE(?, params), \
             template_commit = COALESCE(?, template_commit), updated_at = ?, \
             destroyed_at = CASE WHEN ? THEN ? ELSE destroyed_at END WHERE id = ?",
        )
        .bind(to.as_str())
        .bind(&patch.reason)
        .bind(patch.params.as_ref().map(json).transpose()?)
        .bind(&patch.template_commit)
        .bind(now.0)
        .bind(gone && to == EnvStatus::Destroyed)
        .bind(now.0)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if gone {
            sqlx::query("DELETE FROM cidr_allocations WHERE environment_id = ?").bind(id).execute(&mut *tx).await?;
        }
        let moved = Self::env_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(moved)
    }

    pub(super) async fn env_set_outputs(&self, id: i64, outputs: serde_json::Value, now: Timestamp) -> Result<()> {
        sqlx::query("UPDATE environments SET outputs = ?, updated_at = ? WHERE id = ?")
            .bind(json(&outputs)?)
            .bind(now.0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn env_touch_review(&self, id: i64, head: &str, now: Timestamp) -> Result<()> {
        sqlx::query("UPDATE environments SET review_head = ?, pushed_at = ?, updated_at = ? WHERE id = ?")
            .bind(head)
            .bind(now.0)
            .bind(now.0)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn env_request(&self, id: i64) -> Result<Option<EnvRequest>> {
        let row = sqlx::query(super::sql_text(format!("{REQUEST_SELECT} WHERE r.id = ?")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    pub(super) async fn env_requests(&self, environment_id: Option<i64>, limit: u32) -> Result<Vec<EnvRequest>> {
        let rows = sqlx::query(super::sql_text(format!(
            "{REQUEST_SELECT} WHERE (?1 IS NULL OR r.environment_id = ?1) ORDER BY r.id DESC LIMIT ?2"
        )))
        .bind(environment_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_from_row).collect()
    }

    pub(super) async fn env_unfinished_requests(&self) -> Result<Vec<EnvRequest>> {
        let rows = sqlx::query(super::sql_text(format!(
            "{REQUEST_SELECT} WHERE r.status IN ('queued', 'running') ORDER BY r.id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(request_from_row).collect()
    }

    pub(super) async fn env_move_request(
        &self,
        id: i64,
        to: RequestStatus,
        outcome: Option<String>,
        now: Timestamp,
    ) -> Result<Option<EnvRequest>> {
        let mut tx = self.write().await?;
        let Some(current) = Self::request_in(&mut tx, id).await? else { return Ok(None) };
        let allowed = match (current.status, to) {
            (RequestStatus::Queued, RequestStatus::Running | RequestStatus::Cancelled | RequestStatus::Failed) => true,
            (RequestStatus::Running, to) => to.is_final(),
            _ => false,
        };
        if !allowed {
            return Ok(None);
        }
        let started = (to == RequestStatus::Running).then_some(now.0);
        let finished = to.is_final().then_some(now.0);
        sqlx::query(
            "UPDATE environment_requests SET status = ?, outcome = COALESCE(?, outcome), \
             started_at = COALESCE(?, started_at), finished_at = COALESCE(?, finished_at) WHERE id = ?",
        )
        .bind(to.as_str())
        .bind(outcome)
        .bind(started)
        .bind(finished)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let moved = Self::request_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(moved)
    }

    pub(super) async fn env_add_request_run(&self, id: i64, run_id: i64) -> Result<()> {
        let mut tx = self.write().await?;
        let Some(mut request) = Self::request_in(&mut tx, id).await? else {
            return Err(StoreError::Database(format!("request #{id} does not exist")));
        };
        if !request.runs.contains(&run_id) {
            request.runs.push(run_id);
        }
        sqlx::query("UPDATE environment_requests SET runs = ? WHERE id = ?")
            .bind(json(&request.runs)?)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn env_cidr_allocations(&self, pool: &str) -> Result<Vec<(Cidr, String)>> {
        let rows = sqlx::query(
            "SELECT a.cidr, e.name FROM cidr_allocations a JOIN environments e ON e.id = a.environment_id \
             WHERE a.pool = ? ORDER BY a.cidr",
        )
        .bind(pool)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let text: String = row.try_get("cidr")?;
            out.push((text.parse::<Cidr>().map_err(|e| corrupt("allocated block", e))?, row.try_get("name")?));
        }
        Ok(out)
    }
}
