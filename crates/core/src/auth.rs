//! Who may do what: the built-in roles, custom approver roles from plinth.toml, and the one
//! function that decides every permission.

use serde::{Deserialize, Serialize};

use crate::config::{Config, is_identifier};

/// Can do everything, including managing tokens and unlocking stacks.
pub const ADMIN: &str = "admin";
/// Can read, plan, and cancel the runs it started.
pub const DEVELOPER: &str = "developer";
/// Can publish releases for the services it is scoped to (nothing else yet).
pub const CI: &str = "ci";

/// Something a token wants to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Read stacks, runs and logs.
    Read,
    /// Ask for a plan of a revision.
    Plan,
    /// Cancel a run; `own` says whether the token started it.
    Cancel {
        own: bool,
    },
    /// Approve or reject a run in an environment.
    Approve {
        environment: Option<String>,
    },
    /// Release a stack's lock after an interrupted apply, or Terraform's own state lock.
    Unlock,
    ManageTokens,
    ReadAudit,
    /// Set, remove and rotate secrets. Nobody can read a value back.
    ManageSecrets,
    /// Create, update and destroy environments from templates (S4.1). Their applies still
    /// follow the template environment's policy, approvals included.
    Provision,
}

impl Action {
    /// A short name for audit entries and messages.
    pub fn describe(&self) -> String {
        match self {
            Action::Read => "read".into(),
            Action::Plan => "plan".into(),
            Action::Cancel { .. } => "cancel runs".into(),
            Action::Approve { environment: Some(env) } => format!("approve runs in `{env}`"),
            Action::Approve { environment: None } => "approve runs".into(),
            Action::Unlock => "unlock stacks".into(),
            Action::ManageTokens => "manage tokens".into(),
            Action::ReadAudit => "read the audit log".into(),
            Action::ManageSecrets => "manage secrets".into(),
            Action::Provision => "create, update or destroy environments".into(),
        }
    }
}

/// Whether a token holding `roles` may perform `action`. Approver roles come from the
/// environments in `config`.
pub fn allowed(roles: &[String], action: &Action, config: Option<&Config>) -> bool {
    let has = |role: &str| roles.iter().any(|r| r == role);
    if has(ADMIN) {
        return true;
    }
    let approver_role = roles.iter().any(|r| r != CI && r != DEVELOPER);
    match action {
        Action::Read => has(DEVELOPER) || approver_role,
        Action::Plan | Action::Provision => has(DEVELOPER),
        Action::Cancel { own } => *own && has(DEVELOPER),
        Action::Approve { environment } => {
            let Some(env) = environment.as_deref().and_then(|e| config?.environments.get(e)) else {
                return false;
            };
            env.approval && env.approvers.iter().any(|a| has(a))
        }
        Action::Unlock | Action::ManageTokens | Action::ReadAudit | Action::ManageSecrets => false,
    }
}

/// Whether a token may publish a release of `service`: admins may; `ci` tokens may for the
/// services they are scoped to, and nothing else.
pub fn may_publish(roles: &[String], services: &[String], service: &str) -> bool {
    let has = |role: &str| roles.iter().any(|r| r == role);
    has(ADMIN) || (has(CI) && services.iter().any(|s| s == service))
}

/// Checks the services a new token is scoped to: only `ci` tokens have them, and a `ci` token
/// needs at least one.
pub fn check_token_services(roles: &[String], services: &[String]) -> Result<(), String> {
    let ci = roles.iter().any(|r| r == CI);
    if ci && services.is_empty() {
        return Err("a `ci` token publishes releases only for the services it is scoped to; pass --service NAME (repeat for several)".into());
    }
    if !ci && !services.is_empty() {
        return Err("only `ci` tokens are scoped to services; remove --service, or add --role ci".into());
    }
    if let Some(bad) = services.iter().find(|s| !is_identifier(s) || s.len() > 64) {
        return Err(format!("`{bad}` is not a valid service name; use letters, digits, `_` and `-`"));
    }
    Ok(())
}

/// Checks a role name for a new token: a built-in role or a plain identifier.
pub fn check_role(role: &str) -> Result<(), String> {
    if is_identifier(role) && role.len() <= 64 {
        Ok(())
    } else {
        Err(format!("`{role}` is not a valid role name; use letters, digits, `_` and `-`, such as `sre`"))
    }
}

/// Checks a token name: a plain identifier that is safe in URLs and logs.
pub fn check_token_name(name: &str) -> Result<(), String> {
    if is_identifier(name) && name.len() <= 64 {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid token name; use letters, digits, `_` and `-`, such as `ci-main`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[environments.stg]
[environments.prd]
approval = true
approvers = ["sre"]
[environments.dev]
approvers = ["lead"]
[stacks.x]
path = "x"
"#;

    #[test]
    fn roles_allow_what_the_issue_says() {
        let (config, _) = crate::config::Config::parse("plinth.toml", CONFIG).unwrap();
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let approve = |env: &str| Action::Approve { environment: Some(env.into()) };
        let cases: Vec<(Vec<String>, Action, bool)> = vec![
            (roles(&["admin"]), Action::ManageTokens, true),
            (roles(&["admin"]), approve("prd"), true),
            (roles(&["developer"]), Action::Read, true),
            (roles(&["developer"]), Action::Plan, true),
            (roles(&["developer"]), Action::Cancel { own: true }, true),
            (roles(&["developer"]), Action::Cancel { own: false }, false),
            (roles(&["developer"]), approve("prd"), false),
            (roles(&["developer"]), Action::Unlock, false),
            (roles(&["developer"]), Action::ManageSecrets, false),
            (roles(&["ci"]), Action::ManageSecrets, false),
            (roles(&["admin"]), Action::ManageSecrets, true),
            (roles(&["sre"]), approve("prd"), true),
            (roles(&["sre"]), approve("stg"), false),
            (roles(&["sre"]), approve("nope"), false),
            (roles(&["sre"]), Action::Read, true),
            (roles(&["sre"]), Action::Plan, false),
            // approvers without approval = true approve nothing.
            (roles(&["lead"]), approve("dev"), false),
            (roles(&["ci"]), Action::Read, false),
            (roles(&["ci"]), approve("prd"), false),
            (roles(&[]), Action::Read, false),
        ];
        for (roles, action, expected) in cases {
            assert_eq!(allowed(&roles, &action, Some(&config)), expected, "{roles:?} {action:?}");
        }
    }

    #[test]
    fn ci_publishes_only_for_its_services() {
        let roles = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let api = vec!["api".to_owned()];
        assert!(may_publish(&roles(&["ci"]), &api, "api"));
        assert!(!may_publish(&roles(&["ci"]), &api, "web"));
        assert!(!may_publish(&roles(&["developer"]), &api, "api"));
        assert!(may_publish(&roles(&["admin"]), &[], "web"));
        assert!(check_token_services(&roles(&["ci"]), &[]).is_err());
        assert!(check_token_services(&roles(&["developer"]), &api).is_err());
        assert!(check_token_services(&roles(&["ci"]), &api).is_ok());
        assert!(check_token_services(&roles(&["ci"]), &["a b".to_owned()]).is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_role("sre").is_ok());
        assert!(check_role("../x").is_err());
        assert!(check_token_name("ci-main").is_ok());
        assert!(check_token_name("a b").is_err());
        assert!(check_token_name("").is_err());
    }
}
