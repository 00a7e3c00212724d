//! What a saved plan would do, read from `terraform show -json`: resource changes counted the
//! way Terraform's own "Plan: N to add" line counts them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a plan found anything to do (`plan -detailed-exitcode` exits 0 or 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanOutcome {
    NoChanges,
    Changes,
}

pub use plinth_core::run::{PlanSummary, ResourceChange};

/// The few parts of Terraform's JSON plan representation that the summary needs. Everything
/// else, including planned values that may be sensitive, is skipped while parsing.
#[derive(Deserialize)]
struct PlanJson {
    /// Always present; a new major version would mean a format this code cannot read.
    format_version: String,
    #[serde(default)]
    resource_changes: Vec<ResourceChangeJson>,
    #[serde(default)]
    output_changes: BTreeMap<String, ChangeJson>,
}

#[derive(Deserialize)]
struct ResourceChangeJson {
    address: String,
    change: ChangeJson,
}

#[derive(Deserialize)]
struct ChangeJson {
    actions: Vec<String>,
}

/// Reads the output of `terraform show -json PLANFILE`.
pub fn summarize(json: &[u8]) -> Result<PlanSummary, serde_json::Error> {
    let plan: PlanJson = serde_json::from_slice(json)?;
    if plan.format_version.split('.').next() != Some("1") {
        return Err(serde::de::Error::custom(format!(
            "plan format version {} is not supported (expected 1.x)",
            plan.format_version
        )));
    }
    let mut summary = PlanSummary::default();
    for rc in plan.resource_changes {
        let actions: Vec<&str> = rc.change.actions.iter().map(String::as_str).collect();
        match actions.as_slice() {
            [] | ["no-op"] | ["read"] => continue,
            ["create"] => summary.add += 1,
            ["update"] => summary.change += 1,
            ["delete"] => summary.destroy += 1,
            ["delete", "create"] | ["create", "delete"] => {
                summary.add += 1;
                summary.destroy += 1;
            }
            // Actions Terraform adds later (such as `forget`) are listed but not counted,
            // as its own summary line does not count them as adds, changes or destroys.
            _ => {}
        }
        summary.resources.push(ResourceChange { address: rc.address, actions: rc.change.actions });
    }
    summary.output_changes = plan
        .output_changes
        .values()
        .filter(|c| !matches!(c.actions.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), [] | ["no-op"]))
        .count();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn plan(changes: &[(&str, &[&str])], outputs: &[&[&str]]) -> Vec<u8> {
        let resource_changes: Vec<serde_json::Value> = changes
            .iter()
            .map(|(address, actions)| {
                serde_json::json!({
                    "address": address,
                    "mode": "managed",
                    "change": { "actions": actions, "before": null, "after": { "secret": "hunter2" } },
                })
            })
            .collect();
        let output_changes: serde_json::Map<String, serde_json::Value> = outputs
            .iter()
            .enumerate()
            .map(|(i, actions)| (format!("o{i}"), serde_json::json!({ "actions": actions })))
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "format_version": "1.2",
            "resource_changes": resource_changes,
            "output_changes": output_changes,
        }))
        .unwrap()
    }

    #[test]
    fn actions_are_counted_like_terraform() {
        // (actions, add, change, destroy, listed)
        let cases: &[(&[&str], usize, usize, usize, bool)] = &[
            (&["create"], 1, 0, 0, true),
            (&["update"], 0, 1, 0, true),
            (&["delete"], 0, 0, 1, true),
            (&["delete", "create"], 1, 0, 1, true),
            (&["create", "delete"], 1, 0, 1, true),
            (&["no-op"], 0, 0, 0, false),
            (&["read"], 0, 0, 0, false),
            (&["forget"], 0, 0, 0, true),
        ];
        for (actions, add, change, destroy, listed) in cases {
            let summary = summarize(&plan(&[("terraform_data.x", actions)], &[])).unwrap();
            assert_eq!((summary.add, summary.change, summary.destroy), (*add, *change, *destroy), "{actions:?}");
            assert_eq!(summary.resources.len(), usize::from(*listed), "{actions:?}");
        }
    }

    #[test]
    fn a_mixed_plan_sums_up() {
        let json = plan(
            &[
                ("terraform_data.a", &["create"]),
                ("terraform_data.b", &["no-op"]),
                ("terraform_data.c", &["delete", "create"]),
                ("module.m.terraform_data.d[0]", &["update"]),
            ],
            &[&["create"], &["no-op"], &["update"]],
        );
        let summary = summarize(&json).unwrap();
        assert_eq!(
            summary,
            PlanSummary {
                add: 2,
                change: 1,
                destroy: 1,
                resources: vec![
                    ResourceChange { address: "terraform_data.a".into(), actions: vec!["create".into()] },
                    ResourceChange {
                        address: "terraform_data.c".into(),
                        actions: vec!["delete".into(), "create".into()]
                    },
                    ResourceChange { address: "module.m.terraform_data.d[0]".into(), actions: vec!["update".into()] },
                ],
                output_changes: 2,
            }
        );
        assert!(summary.has_changes());
        assert_eq!(summary.to_string(), "Plan: 2 to add, 1 to change, 1 to destroy; 2 outputs change.");
    }

    #[test]
    fn an_empty_plan_has_no_changes() {
        let summary = summarize(br#"{"format_version":"1.2"}"#).unwrap();
        assert_eq!(summary, PlanSummary::default());
        assert!(!summary.has_changes());
        assert_eq!(summary.to_string(), "Plan: 0 to add, 0 to change, 0 to destroy.");
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        assert!(summarize(b"").is_err());
        assert!(summarize(b"{\"resource_changes\": [{\"address\": 1}]}").is_err());
        assert!(summarize(b"[]").is_err());
        assert!(summarize(b"{}").is_err());
        let future = summarize(br#"{"format_version":"2.0"}"#).unwrap_err();
        assert!(future.to_string().contains("2.0"), "{future}");
    }
}
