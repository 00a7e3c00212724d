//! Environment statuses, the per-account queue and the review decisions, table by table.

use super::*;
use crate::config::Config;

#[test]
fn statuses_round_trip_and_move_sanely() {
    for status in EnvStatus::ALL {
        assert_eq!(status.as_str().parse::<EnvStatus>(), Ok(status));
    }
    use EnvStatus::*;
    for (from, to) in [(Queued, Provisioning), (Provisioning, Ready), (Provisioning, Failed), (Ready, Destroying)] {
        assert!(from.can_move_to(to), "{from} -> {to}");
    }
    for (from, to) in [(Destroyed, Provisioning), (Failed, Ready), (Ready, Provisioning), (Destroying, Ready)] {
        assert!(!from.can_move_to(to), "{from} -> {to}");
    }
    assert!(EnvStatus::ALL.iter().all(|&to| !Destroyed.can_move_to(to)));
    assert!(!Failed.is_live() && !Destroyed.is_live() && CleanupFailed.is_live() && DestroyFailed.is_live());
}

#[test]
fn names_are_dns_labels() {
    for ok in ["dev1", "shop-sandbox", "a", &"x".repeat(63)] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in ["", "Dev", "a_b", "-a", "a-", "a.b", "a/b", &"x".repeat(64), "日本"] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
}

fn p(id: i64, account: &str, status: RequestStatus) -> Pending {
    Pending { id, account: account.into(), status }
}

#[test]
fn one_request_at_a_time_per_account_in_order() {
    use RequestStatus::*;
    let cases: Vec<(Vec<Pending>, Vec<i64>)> = vec![
        (vec![], vec![]),
        (vec![p(1, "a", Queued), p(2, "a", Queued), p(3, "b", Queued)], vec![1, 3]),
        (vec![p(1, "a", Running), p(2, "a", Queued), p(3, "b", Queued)], vec![3]),
        (vec![p(5, "a", Queued), p(2, "a", Queued)], vec![2]),
        (vec![p(1, "a", Succeeded), p(2, "a", Queued)], vec![2]),
    ];
    for (pending, expected) in cases {
        assert_eq!(startable(&pending), expected, "{pending:?}");
    }
    let pending = vec![p(1, "a", Running), p(2, "b", Queued), p(3, "a", Queued), p(4, "a", Queued)];
    assert_eq!(queue_position(&pending, 4), 2);
    assert_eq!(queue_position(&pending, 2), 0);
}

fn review() -> Review {
    let text = r#"
[review]
template = "review-app"
branches = ["feature/*"]
domain = "review.localhost"
ttl = "1h"
max = 2
"#;
    Config::parse("plinth.toml", text).unwrap().0.review.unwrap()
}

fn env(branch: &str, head: &str, pushed_at: i64, status: EnvStatus) -> ReviewEnv {
    let slug = crate::slug::slug(branch);
    ReviewEnv {
        name: review_name(&slug),
        branch: branch.into(),
        slug,
        head: Some(head.into()),
        pushed_at: Timestamp(pushed_at),
        status,
    }
}

fn branches(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter().map(|(b, h)| (b.to_string(), h.to_string())).collect()
}

#[test]
fn review_environments_follow_branches() {
    use EnvStatus::*;
    let review = review();
    let hour = 3_600_000;
    let create =
        |b: &str, slug: &str, h: &str| ReviewAction::Create { branch: b.into(), slug: slug.into(), head: h.into() };
    let destroy = |n: &str, why: &str| ReviewAction::Destroy { name: n.into(), reason: why.into() };
    /// What the case is, the branches and their heads, the review environments, now, and what
    /// should happen.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<ReviewEnv>, i64, Vec<ReviewAction>);
    let cases: Vec<Case> = vec![
        ("a matching branch appears", vec![("main", "1"), ("feature/x", "2")], vec![], 0, vec![create("feature/x", "feature-x", "2")]),
        ("it exists already", vec![("feature/x", "2")], vec![env("feature/x", "2", 0, Ready)], 10, vec![]),
        (
            "the branch moved",
            vec![("feature/x", "3")],
            vec![env("feature/x", "2", 0, Ready)],
            2 * hour,
            vec![ReviewAction::Touch { name: "review-feature-x".into(), head: "3".into() }],
        ),
        (
            "the branch was deleted",
            vec![],
            vec![env("feature/x", "2", 0, Ready)],
            10,
            vec![destroy("review-feature-x", "branch `feature/x` was deleted")],
        ),
        (
            "stacked branches both go",
            vec![("main", "1")],
            vec![env("feature/base", "2", 0, Ready), env("feature/stacked", "3", 0, Ready)],
            10,
            vec![
                destroy("review-feature-base", "branch `feature/base` was deleted"),
                destroy("review-feature-stacked", "branch `feature/stacked` was deleted"),
            ],
        ),
        (
            "no push for longer than the TTL",
            vec![("feature/x", "2")],
            vec![env("feature/x", "2", 0, Ready)],
            hour + 1000,
            vec![destroy("review-feature-x", "no push to `feature/x` for 1h 1s, longer than the review TTL")],
        ),
        ("already being destroyed", vec![], vec![env("feature/x", "2", 0, Destroying)], 10, vec![]),
        (
            "a failed create waits for the next push",
            vec![("feature/x", "2")],
            vec![env("feature/x", "2", 0, Failed)],
            10,
            vec![],
        ),
        (
            "an expired one comes back with the next push only",
            vec![("feature/x", "2")],
            vec![env("feature/x", "2", 0, Destroyed)],
            10,
            vec![],
        ),
        (
            "and is tried again when the branch moves",
            vec![("feature/x", "3")],
            vec![env("feature/x", "2", 0, Failed)],
            10,
            vec![create("feature/x", "feature-x", "3")],
        ),
        (
            "the maximum is enforced, after deletions make room",
            vec![("feature/a", "1"), ("feature/b", "2"), ("feature/c", "3")],
            vec![env("feature/a", "1", 0, Ready), env("feature/gone", "9", 0, Ready)],
            10,
            vec![
                destroy("review-feature-gone", "branch `feature/gone` was deleted"),
                create("feature/b", "feature-b", "2"),
                ReviewAction::Refuse {
                    branch: "feature/c".into(),
                    reason: "2 review environments exist, the most [review] max allows; destroy one (`plinth env destroy NAME`) or raise `max`".into(),
                },
            ],
        ),
    ];
    for (what, list, envs, now, expected) in cases {
        assert_eq!(review_actions(&review, &branches(&list), &envs, Timestamp(now)), expected, "{what}");
    }
}

#[test]
fn colliding_branches_get_distinct_slugs() {
    let review = review();
    let got = review_actions(&review, &branches(&[("feature/a", "1"), ("feature/A", "2")]), &[], Timestamp(0));
    let slugs: Vec<&str> = got
        .iter()
        .map(|a| match a {
            ReviewAction::Create { slug, .. } => slug.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(slugs.len(), 2);
    assert_ne!(slugs[0], slugs[1]);
    assert!(slugs.iter().all(|s| s.starts_with("feature-a")));
}
