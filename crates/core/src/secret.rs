//! Secrets as the domain sees them: where a secret applies (its scope), which names and values
//! are acceptable, and which secrets a run gets. Encryption lives in plinth-secrets; this module
//! never sees a value except to check its shape.

use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Values shorter than this cannot be redacted from output without masking ordinary text too.
pub const MIN_VALUE_CHARS: usize = 4;
/// Environment variables beyond this size are refused by some systems; secrets are not files.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
const MAX_NAME_LEN: usize = 128;

/// Names plinth sets for every terraform process itself; a secret must not replace them.
const RESERVED: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "TF_IN_AUTOMATION",
    "TF_INPUT",
    "TF_CLI_CONFIG_FILE",
    "TF_PLUGIN_CACHE_DIR",
    "TF_DATA_DIR",
    "TF_WORKSPACE",
    "CHECKPOINT_DISABLE",
    "TF_VAR_plinth_state_dir",
];

/// Where a secret applies, inside its environment.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Scope {
    /// Every stack (and service) of the environment.
    Environment,
    /// One stack; it wins over an environment secret of the same name.
    Stack(String),
    /// The instances of one service; they get environment secrets too.
    Service(String),
}

impl Scope {
    /// `environment`, `stack` or `service`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Environment => "environment",
            Scope::Stack(_) => "stack",
            Scope::Service(_) => "service",
        }
    }

    /// The stack or service name; empty for the environment.
    pub fn target(&self) -> &str {
        match self {
            Scope::Environment => "",
            Scope::Stack(name) | Scope::Service(name) => name,
        }
    }

    /// Rebuilds a scope from its stored parts.
    pub fn from_parts(kind: &str, target: &str) -> Option<Scope> {
        match kind {
            "environment" => Some(Scope::Environment),
            "stack" => Some(Scope::Stack(target.to_owned())),
            "service" => Some(Scope::Service(target.to_owned())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Environment => f.write_str("environment"),
            Scope::Stack(name) => write!(f, "stack {name}"),
            Scope::Service(name) => write!(f, "service {name}"),
        }
    }
}

/// Checks a secret's name: it becomes an environment variable, so it must be one.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME_LEN;
    if !valid {
        return Err(format!(
            "`{}` is not a valid environment variable name; use letters, digits and `_`, not starting with a digit, such as `TF_VAR_db_password` or `AWS_ACCESS_KEY_ID` (at most {MAX_NAME_LEN} characters)",
            name.escape_debug()
        ));
    }
    if RESERVED.contains(&name) || name.starts_with("PLINTH_") {
        return Err(format!(
            "`{name}` is set by plinth for every terraform process and cannot be a secret; pick another name"
        ));
    }
    Ok(())
}

/// Checks a value's shape. The message never quotes the value.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("the value is empty; pipe the value in on standard input".to_owned());
    }
    let chars = value.chars().count();
    if chars < MIN_VALUE_CHARS {
        return Err(format!(
            "the value has {chars} character(s), fewer than {MIN_VALUE_CHARS}: plinth masks every secret in run output, and a value this short would mask ordinary text (or be guessed from what is left around the mask); use a longer value"
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes, more than the {MAX_VALUE_BYTES} an environment variable may hold here",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err("the value contains a NUL byte, which no environment variable can hold".to_owned());
    }
    Ok(())
}

/// Checks that a scope names something that exists in the environment: a stack of the config
/// that belongs to `environment`. Services are checked when plinth.toml declares them.
pub fn check_scope(
    config: &Config,
    environment: &str,
    scope: &Scope,
    stack_environment: Option<Option<&str>>,
) -> Result<(), String> {
    if !config.environments.contains_key(environment) {
        let known: Vec<&str> = config.environments.keys().map(String::as_str).collect();
        return Err(if known.is_empty() {
            format!(
                "environment `{environment}` is not declared: plinth.toml on the main branch declares no environments"
            )
        } else {
            format!(
                "environment `{environment}` is not declared in plinth.toml on the main branch; known: {}",
                known.join(", ")
            )
        });
    }
    match (scope, stack_environment) {
        (Scope::Stack(name), None) => Err(format!("there is no stack `{name}` in plinth.toml on the main branch")),
        (Scope::Stack(name), Some(env)) if env != Some(environment) => Err(format!(
            "stack `{name}` is in environment `{}`, not `{environment}`, so its runs would never get this secret",
            env.unwrap_or("(none)")
        )),
        (Scope::Service(name), _) if !crate::config::is_identifier(name) => {
            Err(format!("`{name}` is not a valid service name; use letters, digits, `_` and `-`"))
        }
        _ => Ok(()),
    }
}

/// Whether a run of a stack in `environment`, from a commit on `branch`, may get that
/// environment's secrets: only if the trusted policy (plinth.toml on the main branch) says the
/// branch releases there. Plans of other branches, and of bare commits, get none.
pub fn may_receive(policy: &Config, branch: Option<&str>, environment: Option<&str>) -> bool {
    match (branch, environment.and_then(|e| policy.environments.get(e))) {
        (Some(branch), Some(env)) => env.releases_from(branch),
        _ => false,
    }
}

/// Picks, from the secrets of one environment, those a stack's run gets: environment-wide ones
/// and the stack's own, the stack's winning where both have a name. `scoped` yields the scope
/// and name of each candidate, in any order; returns the indexes of the chosen ones.
pub fn for_stack<'a>(stack: &str, scoped: impl IntoIterator<Item = (&'a Scope, &'a str)>) -> Vec<usize> {
    choose(&Scope::Stack(stack.to_owned()), scoped)
}

/// The same for a service's instances: environment-wide secrets and the service's own.
pub fn for_service<'a>(service: &str, scoped: impl IntoIterator<Item = (&'a Scope, &'a str)>) -> Vec<usize> {
    choose(&Scope::Service(service.to_owned()), scoped)
}

fn choose<'a>(target: &Scope, scoped: impl IntoIterator<Item = (&'a Scope, &'a str)>) -> Vec<usize> {
    let mut chosen: std::collections::BTreeMap<&str, (usize, bool)> = std::collections::BTreeMap::new();
    for (i, (scope, name)) in scoped.into_iter().enumerate() {
        let specific = match scope {
            Scope::Environment => false,
            own if own == target => true,
            _ => continue,
        };
        match chosen.get(name) {
            Some((_, true)) if !specific => {}
            _ => {
                chosen.insert(name, (i, specific));
            }
        }
    }
    chosen.into_values().map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_must_be_environment_variables_plinth_does_not_own() {
        for good in ["TF_VAR_db_password", "AWS_ACCESS_KEY_ID", "_x", "a1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "é", "PATH", "PLINTH_RUN", "TF_CLI_CONFIG_FILE"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"A".repeat(129)).is_err());
    }

    #[test]
    fn values_must_be_long_enough_to_redact() {
        assert!(check_value("").unwrap_err().contains("empty"));
        let short = check_value("abc").unwrap_err();
        assert!(short.contains("fewer than 4") && !short.contains("abc"), "{short}");
        assert!(check_value("abcd").is_ok());
        assert!(check_value("ééé").is_err(), "characters, not bytes");
        assert!(check_value("ab\0cd").is_err());
        assert!(check_value(&"x".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn a_stack_secret_wins_over_an_environment_secret() {
        let env = Scope::Environment;
        let app = Scope::Stack("app/prd".into());
        let other = Scope::Stack("db/prd".into());
        let svc = Scope::Service("api".into());
        let rows = [(&app, "TOKEN"), (&env, "TOKEN"), (&env, "REGION"), (&other, "DB"), (&svc, "X")];
        let chosen = for_stack("app/prd", rows.iter().map(|(s, n)| (*s, *n)));
        assert_eq!(chosen, vec![2, 0]);
        let chosen = for_service("api", rows.iter().map(|(s, n)| (*s, *n)));
        assert_eq!(chosen, vec![2, 1, 4]);
    }

    #[test]
    fn only_releasing_branches_get_secrets() {
        let (config, _) = Config::parse(
            "plinth.toml",
            "[environments.prd]\nbranches = [\"main\"]\n[environments.dev]\nbranches = [\"feature/*\"]\n[stacks.x]\npath = \"x\"\n",
        )
        .unwrap();
        assert!(may_receive(&config, Some("main"), Some("prd")));
        assert!(!may_receive(&config, Some("feature/a"), Some("prd")));
        assert!(may_receive(&config, Some("feature/a"), Some("dev")));
        assert!(!may_receive(&config, None, Some("prd")));
        assert!(!may_receive(&config, Some("main"), None));
        assert!(!may_receive(&config, Some("main"), Some("nope")));
    }
}
