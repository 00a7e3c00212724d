//! The SQLite store against a real database file in a temp dir.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod environments;

use std::collections::BTreeMap;

use plinth_core::run::{PlanSummary, RunMode, RunStatus};
use plinth_core::time::Timestamp;
use plinth_store::{
    AuditFilter, LogLine, NewAudit, NewEvent, NewRun, NewToken, RunFilter, RunPatch, SqliteStore, Start, Store,
    StoreError, UnlockOutcome,
};

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("plinth.db")).await.unwrap();
    (dir, store)
}

fn event(branch: &str, commit: &str) -> NewEvent {
    NewEvent {
        branch: Some(branch.into()),
        commit: commit.into(),
        trigger: "poll".into(),
        created_by: "poll".into(),
        note: None,
        advance_ref: Some((branch.into(), commit.into())),
        supersede: true,
    }
}

fn run(stack: &str, waits_for: &[&str]) -> NewRun {
    NewRun {
        stack: stack.into(),
        path: format!("terraform/{stack}"),
        workspace: None,
        environment: Some("stg".into()),
        lock_key: format!("{stack}@default"),
        terraform: "terraform".into(),
        mode: RunMode::Apply,
        wave: if waits_for.is_empty() { 1 } else { 2 },
        waits_for: waits_for.iter().map(|s| s.to_string()).collect(),
        destroy: false,
        provisioned_env: None,
        approved_by: None,
    }
}

const T0: Timestamp = Timestamp(1_767_225_600_000);

#[tokio::test]
async fn events_record_runs_with_dependencies_and_refs() {
    let (_dir, s) = store().await;
    let recorded =
        s.record_event(event("main", "aaaa"), vec![run("common", &[]), run("app", &["common"])], T0).await.unwrap();
    assert_eq!(recorded.runs.len(), 2);
    let common = recorded.runs.iter().find(|r| r.stack == "common").unwrap();
    let app = recorded.runs.iter().find(|r| r.stack == "app").unwrap();
    assert_eq!(app.depends_on, [common.id]);
    assert_eq!(app.status, RunStatus::Queued);
    assert_eq!(app.commit, "aaaa");
    assert_eq!(s.refs().await.unwrap(), BTreeMap::from([("main".to_owned(), "aaaa".to_owned())]));
    assert_eq!(s.events(10).await.unwrap()[0].commit, "aaaa");
    assert_eq!(s.unfinished_runs().await.unwrap().len(), 2);
}

#[tokio::test]
async fn newer_commits_supersede_waiting_runs_on_the_same_lock_and_branch() {
    let (_dir, s) = store().await;
    let first = s.record_event(event("main", "aaaa"), vec![run("app", &[])], T0).await.unwrap().runs[0].clone();
    let other_branch =
        s.record_event(event("feature", "ffff"), vec![run("app", &[])], T0).await.unwrap().runs[0].clone();
    let second = s.record_event(event("main", "bbbb"), vec![run("app", &[])], T0).await.unwrap();
    assert_eq!(second.superseded.len(), 1);
    let stale = &second.superseded[0];
    assert_eq!(stale.id, first.id);
    assert_eq!(stale.status, RunStatus::Stale);
    assert!(stale.reason.as_deref().unwrap().contains(&format!("#{}", second.runs[0].id)));
    // Another branch's run is not touched.
    assert_eq!(s.run(other_branch.id).await.unwrap().unwrap().status, RunStatus::Queued);
}

#[tokio::test]
async fn starting_takes_the_lock_and_final_statuses_release_it() {
    let (_dir, s) = store().await;
    let runs = s.record_event(event("main", "aaaa"), vec![run("app", &[])], T0).await.unwrap().runs;
    let id = runs[0].id;
    let Start::Started(started) = s.start_run(id, T0).await.unwrap() else { panic!("not started") };
    assert_eq!(started.status, RunStatus::Planning);
    assert!(started.started_at.is_some());
    assert_eq!(s.locks().await.unwrap().len(), 1);
    // A second run on the same lock cannot start while the first plans.
    let other = s.record_event(event("feature", "ffff"), vec![run("app", &[])], T0).await.unwrap().runs[0].id;
    assert_eq!(s.start_run(other, T0).await.unwrap(), Start::Busy(id));
    assert_eq!(s.start_run(id, T0).await.unwrap(), Start::NotQueued);

    let plan = PlanSummary { add: 1, ..Default::default() };
    let planned = s
        .transition(id, RunStatus::Planned, RunPatch { plan: Some(plan.clone()), ..Default::default() }, T0)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(planned.plan, Some(plan));
    // A move the status does not allow is refused.
    assert!(s.transition(id, RunStatus::Applied, RunPatch::default(), T0).await.unwrap().is_none());
    s.transition(id, RunStatus::Applying, RunPatch::default(), T0).await.unwrap().unwrap();
    let applied = s.transition(id, RunStatus::Applied, RunPatch::default(), T0).await.unwrap().unwrap();
    assert!(applied.finished_at.is_some());
    assert!(s.locks().await.unwrap().is_empty());
    assert!(matches!(s.start_run(other, T0).await.unwrap(), Start::Started(_)));
}

#[tokio::test]
async fn an_interrupted_apply_keeps_its_lock_until_unlocked() {
    let (_dir, s) = store().await;
    let id = s.record_event(event("main", "aaaa"), vec![run("app", &[])], T0).await.unwrap().runs[0].id;
    s.start_run(id, T0).await.unwrap();
    s.transition(id, RunStatus::Planned, RunPatch::default(), T0).await.unwrap().unwrap();
    s.transition(id, RunStatus::Applying, RunPatch::default(), T0).await.unwrap().unwrap();
    assert!(matches!(s.unlock_stack("app").await.unwrap(), UnlockOutcome::Busy(_)));
    s.transition(id, RunStatus::Interrupted, RunPatch::default(), T0).await.unwrap().unwrap();
    let locks = s.locks().await.unwrap();
    assert_eq!(locks[0].reason, "interrupted");
    let next = s.record_event(event("main", "bbbb"), vec![run("app", &[])], T0).await.unwrap().runs[0].id;
    assert!(matches!(s.start_run(next, T0).await.unwrap(), Start::Locked(_)));
    // A plan-only run needs no lock: it may plan beside an interrupted or waiting apply.
    let mut plan_only = run("app", &[]);
    plan_only.mode = RunMode::Plan;
    let plan = s.record_event(event("feature", "cccc"), vec![plan_only], T0).await.unwrap().runs[0].id;
    assert!(matches!(s.start_run(plan, T0).await.unwrap(), Start::Started(_)));
    assert_eq!(s.locks().await.unwrap().len(), 1, "no lock row for a plan");
    s.transition(plan, RunStatus::Planned, RunPatch::default(), T0).await.unwrap().unwrap();
    assert!(matches!(s.unlock_stack("app").await.unwrap(), UnlockOutcome::Unlocked(l) if l.len() == 1));
    assert_eq!(s.unlock_stack("app").await.unwrap(), UnlockOutcome::NotLocked);
    assert!(matches!(s.start_run(next, T0).await.unwrap(), Start::Started(_)));
}

#[tokio::test]
async fn logs_page_in_order() {
    let (_dir, s) = store().await;
    let id = s.record_event(event("main", "aaaa"), vec![run("app", &[])], T0).await.unwrap().runs[0].id;
    let lines: Vec<LogLine> =
        (1..=5).map(|seq| LogLine { seq, stream: "stdout".into(), text: format!("line {seq}"), at: T0 }).collect();
    s.append_logs(id, &lines[..3]).await.unwrap();
    s.append_logs(id, &lines[2..]).await.unwrap(); // overlapping appends are idempotent
    let got = s.logs(id, 0, 100).await.unwrap();
    assert_eq!(got, lines);
    assert_eq!(s.logs(id, 3, 1).await.unwrap(), lines[3..4]);
}

#[tokio::test]
async fn tokens_are_unique_by_name_while_active() {
    let (_dir, s) = store().await;
    let token = NewToken {
        name: "ci".into(),
        hash: "h1".into(),
        roles: vec!["ci".into()],
        services: vec!["api".into()],
        created_by: "admin".into(),
    };
    s.create_token(token.clone(), T0).await.unwrap();
    assert!(matches!(
        s.create_token(NewToken { hash: "h2".into(), ..token.clone() }, T0).await,
        Err(StoreError::TokenExists(name)) if name == "ci"
    ));
    assert_eq!(s.token_by_hash("h1").await.unwrap().unwrap().roles, ["ci"]);
    assert!(s.revoke_token("ci", T0).await.unwrap());
    assert!(!s.revoke_token("ci", T0).await.unwrap());
    assert!(s.token_by_hash("h1").await.unwrap().is_none());
    // The name is free again once revoked; the old one stays listed as revoked.
    s.create_token(NewToken { hash: "h3".into(), ..token }, T0).await.unwrap();
    let all = s.tokens().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().filter(|t| t.revoked_at.is_some()).count(), 1);
}

#[tokio::test]
async fn the_audit_log_cannot_be_changed() {
    let (dir, s) = store().await;
    for i in 0..3 {
        s.append_audit(
            NewAudit {
                actor: "admin".into(),
                action: "token.create".into(),
                object: format!("token/t{i}"),
                result: "ok".into(),
                details: serde_json::json!({"roles": ["developer"]}),
            },
            T0,
        )
        .await
        .unwrap();
    }
    let all = s.audit(&AuditFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(s.audit(&AuditFilter { after: Some(all[0].id), ..Default::default() }).await.unwrap().len(), 2);
    // Even with direct SQL, rows cannot be updated or deleted.
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("plinth.db").display())).await.unwrap();
    assert!(sqlx::query("UPDATE audit SET actor = 'x'").execute(&pool).await.is_err());
    assert!(sqlx::query("DELETE FROM audit").execute(&pool).await.is_err());
}

#[tokio::test]
async fn runs_filter_and_latest_per_stack() {
    let (_dir, s) = store().await;
    s.record_event(event("main", "aaaa"), vec![run("app", &[]), run("db", &[])], T0).await.unwrap();
    s.record_event(event("feature", "bbbb"), vec![run("app", &[])], T0).await.unwrap();
    let apps = s.runs(&RunFilter { stack: Some("app".into()), ..Default::default() }).await.unwrap();
    assert_eq!(apps.len(), 2);
    assert!(apps[0].id > apps[1].id, "newest first");
    let latest = s.latest_runs().await.unwrap();
    assert_eq!(
        latest.iter().map(|r| (r.stack.as_str(), r.commit.as_str())).collect::<Vec<_>>(),
        [("app", "bbbb"), ("db", "aaaa")]
    );
    let queued = s.runs(&RunFilter { status: Some(RunStatus::Queued), ..Default::default() }).await.unwrap();
    assert_eq!(queued.len(), 3);
}

#[tokio::test]
async fn releases_are_recorded_together_and_never_change() {
    let (dir, s) = store().await;
    let images: BTreeMap<String, String> = [("app".to_owned(), "v1".to_owned())].into();
    let new = |env: &str| plinth_store::NewRelease {
        service: "api".into(),
        environment: env.into(),
        images: images.clone(),
        commit: Some("abcdef1".into()),
        source: "branch:main".into(),
        published_by: "ci".into(),
    };
    let created = s.create_releases(&[new("prd"), new("stg")], T0).await.unwrap();
    assert_eq!(created.iter().map(|r| r.environment.as_str()).collect::<Vec<_>>(), ["prd", "stg"]);
    s.create_releases(&[new("stg")], T0).await.unwrap();
    let stg = s.releases("api", "stg", None, 10).await.unwrap();
    assert_eq!(stg.len(), 2);
    assert!(stg[0].id > stg[1].id, "newest first");
    assert_eq!(s.releases("api", "stg", Some(stg[0].id), 10).await.unwrap(), vec![stg[1].clone()]);
    assert_eq!(s.release(created[0].id).await.unwrap().unwrap(), created[0]);
    // Even with direct SQL, releases cannot be changed or removed.
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("plinth.db").display())).await.unwrap();
    assert!(sqlx::query("UPDATE releases SET images = '{}'").execute(&pool).await.is_err());
    assert!(sqlx::query("DELETE FROM releases").execute(&pool).await.is_err());
}

#[tokio::test]
async fn a_newer_release_supersedes_waiting_deployments_and_statuses_move_forward() {
    use plinth_core::deploy::{DeploymentKind, DeploymentStatus};
    use plinth_store::NewDeployment;
    let (_dir, s) = store().await;
    let images: BTreeMap<String, String> = [("app".to_owned(), "v1".to_owned())].into();
    let release = |env: &str| plinth_store::NewRelease {
        service: "api".into(),
        environment: env.into(),
        images: images.clone(),
        commit: None,
        source: "env".into(),
        published_by: "ci".into(),
    };
    let r = s.create_releases(&[release("prd"), release("prd"), release("prd")], T0).await.unwrap();
    let new = |id: i64, approval: bool| NewDeployment {
        release_id: id,
        service: "api".into(),
        environment: "prd".into(),
        kind: DeploymentKind::Release,
        needs_approval: approval,
        created_by: "ci".into(),
    };
    let (first, none) = s.create_deployment(new(r[0].id, false), T0).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(first.status, DeploymentStatus::Queued);
    let started = s.move_deployment(first.id, DeploymentStatus::InProgress, None, None, T0).await.unwrap().unwrap();
    assert!(started.started_at.is_some());
    let (second, none) = s.create_deployment(new(r[1].id, true), T0).await.unwrap();
    assert!(none.is_empty(), "a deployment in progress is not superseded");
    assert_eq!(second.status, DeploymentStatus::AwaitingApproval);
    let (third, superseded) = s.create_deployment(new(r[2].id, false), T0).await.unwrap();
    assert_eq!(
        superseded.iter().map(|d| (d.id, d.status)).collect::<Vec<_>>(),
        [(second.id, DeploymentStatus::Superseded)]
    );
    // Moves the rules do not allow are refused.
    assert!(s.move_deployment(second.id, DeploymentStatus::Queued, None, None, T0).await.unwrap().is_none());
    let done = s.move_deployment(first.id, DeploymentStatus::Succeeded, None, None, T0).await.unwrap().unwrap();
    assert!(done.finished_at.is_some());
    assert_eq!(s.current_deployments().await.unwrap(), vec![done.clone()]);
    assert_eq!(s.unfinished_deployments().await.unwrap().iter().map(|d| d.id).collect::<Vec<_>>(), [third.id]);
    s.append_deployment_event(third.id, "started 1 new instance", T0).await.unwrap();
    s.append_deployment_event(third.id, "instance healthy", T0).await.unwrap();
    let events = s.deployment_events(third.id).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.seq, e.message.as_str())).collect::<Vec<_>>(),
        [(1, "started 1 new instance"), (2, "instance healthy")]
    );
    assert_eq!(
        s.deployments("api", "prd", 10).await.unwrap().iter().map(|d| d.id).collect::<Vec<_>>(),
        [third.id, second.id, first.id]
    );
}
