//! Environments on request in the SQLite store: names, CIDR blocks under concurrent creates,
//! the request log and status moves.

use std::collections::BTreeSet;
use std::sync::Arc;

use plinth_core::cidr::Cidr;
use plinth_core::environment::{EnvStatus, RequestKind, RequestStatus};
use plinth_core::time::Timestamp;
use plinth_store::{CidrAsk, EnvFilter, EnvPatch, NewEnv, SqliteStore, Store, StoreError};

use crate::{T0, store};

fn new_env(name: &str, pool: Option<(&str, u8)>) -> NewEnv {
    NewEnv {
        name: name.into(),
        product: "shop".into(),
        template: "web".into(),
        template_commit: "abc".into(),
        policy_environment: "sandbox".into(),
        account: "sandbox-a".into(),
        params: serde_json::json!({"app_name": name}),
        owner: "team-shop".into(),
        requested_by: "dev".into(),
        fqdn: Some(format!("{name}.sandbox.localhost")),
        services: vec!["api".into(), "worker".into()],
        workspace: None,
        terraform: "terraform".into(),
        review: None,
        cidr: pool.map(|(p, prefix)| CidrAsk { pool: p.into(), ranges: vec!["10.0.0.0/22".parse().unwrap()], prefix }),
    }
}

#[tokio::test]
async fn environments_are_created_with_their_request_and_a_block() {
    let (_dir, s) = store().await;
    let (env, request) = s.create_environment(new_env("dev1", Some(("sandbox", 24))), T0).await.unwrap();
    assert_eq!(env.status, EnvStatus::Queued);
    assert_eq!(env.cidr.as_deref(), Some("10.0.0.0/24"));
    assert_eq!(env.hosts_for("api"), ["dev1.sandbox.localhost"]);
    assert_eq!(env.hosts_for("worker"), ["worker.dev1.sandbox.localhost"]);
    assert!(env.hosts_for("other").is_empty());
    assert_eq!(
        (request.kind, request.status, request.environment.as_str()),
        (RequestKind::Create, RequestStatus::Queued, "dev1")
    );
    assert_eq!(request.params, serde_json::json!({"app_name": "dev1"}));

    let again = s.create_environment(new_env("dev1", None), T0).await.unwrap_err();
    assert!(matches!(again, StoreError::EnvironmentExists(ref n) if n == "dev1"), "{again}");

    // A failed create leaves nothing: the name and the block are free again.
    s.move_environment(env.id, EnvStatus::Provisioning, EnvPatch::default(), T0).await.unwrap().unwrap();
    let failed = s
        .move_environment(
            env.id,
            EnvStatus::Failed,
            EnvPatch { reason: Some("apply failed".into()), ..Default::default() },
            T0,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.reason.as_deref(), Some("apply failed"));
    assert!(s.cidr_allocations("sandbox").await.unwrap().is_empty());
    let (second, _) = s.create_environment(new_env("dev1", Some(("sandbox", 24))), T0).await.unwrap();
    assert_eq!(second.cidr.as_deref(), Some("10.0.0.0/24"));
    assert_eq!(s.environment("dev1").await.unwrap().unwrap().id, second.id, "the live one wins");
    assert!(
        s.move_environment(second.id, EnvStatus::Ready, EnvPatch::default(), T0).await.unwrap().is_none(),
        "queued cannot jump to ready"
    );
}

#[tokio::test]
async fn concurrent_creates_never_get_overlapping_blocks() {
    let (_dir, s) = store().await;
    let s: Arc<SqliteStore> = Arc::new(s);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = s.clone();
        let prefix = if i % 3 == 0 { 23 } else { 25 };
        tasks.push(tokio::spawn(async move {
            s.create_environment(new_env(&format!("e{i}"), Some(("sandbox", prefix))), T0).await
        }));
    }
    let mut blocks: Vec<Cidr> = Vec::new();
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok((env, _)) => blocks.push(env.cidr.unwrap().parse().unwrap()),
            Err(StoreError::PoolExhausted { pool, reason }) => {
                assert_eq!(pool, "sandbox");
                assert!(reason.contains("no free"), "{reason}");
                exhausted += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    for (i, a) in blocks.iter().enumerate() {
        for b in &blocks[i + 1..] {
            assert!(!a.overlaps(*b), "{a} overlaps {b}");
        }
    }
    let pool: Cidr = "10.0.0.0/22".parse().unwrap();
    let used: u64 = blocks.iter().map(|b| b.size()).sum();
    assert!(used <= pool.size());
    assert!(exhausted > 0, "12 requests cannot all fit in a /22: {blocks:?}");
    assert_eq!(s.cidr_allocations("sandbox").await.unwrap().len(), blocks.len());
}

#[tokio::test]
async fn requests_queue_and_record_their_runs() {
    let (_dir, s) = store().await;
    let (env, create) = s.create_environment(new_env("dev2", None), T0).await.unwrap();
    let destroy =
        s.request_environment_change(env.id, RequestKind::Destroy, "ops", serde_json::json!({}), T0).await.unwrap();
    let pending: Vec<i64> = s.unfinished_environment_requests().await.unwrap().iter().map(|r| r.id).collect();
    assert_eq!(pending, [create.id, destroy.id]);
    let running = s
        .move_environment_request(create.id, RequestStatus::Running, None, Timestamp(T0.0 + 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(running.started_at, Some(Timestamp(T0.0 + 5)));
    assert!(s.move_environment_request(create.id, RequestStatus::Running, None, T0).await.unwrap().is_none());
    s.add_request_run(create.id, 7).await.unwrap();
    s.add_request_run(create.id, 9).await.unwrap();
    s.add_request_run(create.id, 7).await.unwrap();
    let done = s
        .move_environment_request(create.id, RequestStatus::Succeeded, Some("applied".into()), Timestamp(T0.0 + 9))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.runs, [7, 9]);
    assert_eq!(done.outcome.as_deref(), Some("applied"));
    assert!(
        s.move_environment_request(create.id, RequestStatus::Failed, None, T0).await.unwrap().is_none(),
        "final stays final"
    );
    let log: Vec<RequestKind> =
        s.environment_requests(Some(env.id), 10).await.unwrap().iter().map(|r| r.kind).collect();
    assert_eq!(log, [RequestKind::Destroy, RequestKind::Create], "newest first");
}

#[tokio::test]
async fn environments_filter_for_the_catalog() {
    let (_dir, s) = store().await;
    for name in ["alpha", "beta", "gamma_x", "gamma%y"] {
        let mut new = new_env(name, None);
        if name == "beta" {
            new.product = "blog".into();
        }
        s.create_environment(new, T0).await.unwrap();
    }
    let names = |list: Vec<plinth_store::EnvRecord>| list.into_iter().map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(names(s.environments(&EnvFilter::default()).await.unwrap()), ["alpha", "beta", "gamma%y", "gamma_x"]);
    let shop = EnvFilter { product: Some("shop".into()), ..Default::default() };
    assert_eq!(names(s.environments(&shop).await.unwrap()), ["alpha", "gamma%y", "gamma_x"]);
    let like = EnvFilter { query: Some("a_".into()), ..Default::default() };
    assert_eq!(names(s.environments(&like).await.unwrap()), ["gamma_x"], "LIKE wildcards are literal");
    let page = EnvFilter { after: Some("beta".into()), limit: Some(1), ..Default::default() };
    assert_eq!(names(s.environments(&page).await.unwrap()), ["gamma%y"]);
    let statuses: BTreeSet<EnvStatus> =
        s.environments(&EnvFilter::default()).await.unwrap().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [EnvStatus::Queued].into_iter().collect());
}
