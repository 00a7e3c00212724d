//! `[services.NAME]`: long-running apps that plinth releases and rolls out, with settings per
//! environment. Parsed with the rest of plinth.toml; every error points at file:line:column.
//!
//! ```toml
//! [services.api]
//! containers = ["app"]
//! command = ["plinth", "demo-app", "--port", "{port}", "--version", "{image.app}"]
//! count = 3
//! health = { path = "/healthz", interval = "500ms", timeout = "1s", healthy = 2, unhealthy = 3 }
//! strategy = { kind = "rolling", max_surge = "100%", max_unavailable = "0%" }
//! drain_timeout = "30s"
//! pre_stop = ["sh", "-c", "echo flushing > /tmp/flush-$PLINTH_INSTANCE"]
//! hosts = ["api.{env}.localhost"]
//! env = { RUST_LOG = "info" }
//!
//! [services.api.environments.prd]
//! count = 4
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Diagnostic, Diagnostics};

/// Most instances one service may run in one environment.
pub const MAX_COUNT: u32 = 1000;

/// A service as plinth.toml defines it, before an environment is chosen.
#[derive(Clone, Debug)]
pub struct ServiceDef {
    pub name: String,
    /// The container names a release must give an image for, as in `imagedefinitions.json`.
    pub containers: Vec<String>,
    base: Settings,
    overrides: BTreeMap<String, Settings>,
    pub span: Range<usize>,
}

/// A service's settings in one environment, every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub environment: String,
    /// The plinth.toml environment whose settings, policy and secrets apply: the environment
    /// itself, or for an environment made from a template, the template's environment.
    pub policy_environment: String,
    pub containers: Vec<String>,
    /// The command; placeholders are filled in by [`Service::command_for`].
    pub command: Vec<String>,
    pub count: u32,
    pub health: Health,
    pub strategy: Strategy,
    pub drain_timeout: Duration,
    pub pre_stop: Option<Vec<String>>,
    /// Host names routed to the service, `{env}` and `{service}` filled in, lowercase.
    pub hosts: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// How an instance is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passing checks before an instance takes traffic.
    pub healthy: u32,
    /// Consecutive failing checks before an instance counts as unhealthy.
    pub unhealthy: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

/// How a new release replaces the old one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Replace instances a few at a time.
    Rolling { max_surge: Amount, max_unavailable: Amount },
    /// Start `count` new instances at once, then drain all the old ones.
    Double,
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Rolling { max_surge: Amount::Percent(100), max_unavailable: Amount::Count(0) }
    }
}

/// A number of instances, or a share of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// How many instances this is out of `count`. A surge rounds up, so `1%` of 3 is 1; an
    /// unavailable share rounds down, so it never takes more away than it says.
    pub fn of(self, count: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let scaled = u64::from(count) * u64::from(p);
                let n = if round_up { scaled.div_ceil(100) } else { scaled / 100 };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    fn parse(text: &str) -> Option<Amount> {
        match text.strip_suffix('%') {
            Some(p) => p.trim().parse().ok().filter(|p| *p <= 100).map(Amount::Percent),
            None => text.trim().parse().ok().map(Amount::Count),
        }
    }
}

impl Service {
    /// The command for one instance: `{port}`, `{image.NAME}`, `{env}`, `{service}` and
    /// `{instance}` filled in, `{{` and `}}` as literal braces. `images` maps every container
    /// to its image (a release always names all of them).
    pub fn command_for(&self, port: u16, images: &BTreeMap<String, String>, instance: &str) -> Vec<String> {
        self.command
            .iter()
            .map(|word| {
                fill(word, |name| match name {
                    "port" => Some(port.to_string()),
                    "env" => Some(self.environment.clone()),
                    "service" => Some(self.name.clone()),
                    "instance" => Some(instance.to_owned()),
                    other => other.strip_prefix("image.").and_then(|c| images.get(c).cloned()),
                })
                .unwrap_or_else(|_| word.clone())
            })
            .collect()
    }
}

impl ServiceDef {
    /// The service's settings in `environment`: its overrides over the base.
    pub fn for_environment(&self, environment: &str) -> Service {
        let mut s = self.base.clone();
        if let Some(o) = self.overrides.get(environment) {
            s.overlay(o);
        }
        let placeholders = |text: &str| {
            fill(text, |name| match name {
                "env" => Some(environment.to_owned()),
                "service" => Some(self.name.clone()),
                _ => None,
            })
            .unwrap_or_else(|_| text.to_owned())
            .to_ascii_lowercase()
        };
        Service {
            name: self.name.clone(),
            environment: environment.to_owned(),
            policy_environment: environment.to_owned(),
            containers: self.containers.clone(),
            command: s.command.unwrap_or_default(),
            count: s.count.unwrap_or(1),
            health: s.health.unwrap_or_default(),
            strategy: s.strategy.unwrap_or_default(),
            drain_timeout: s.drain_timeout.unwrap_or(Duration::from_secs(30)),
            pre_stop: s.pre_stop,
            hosts: s.hosts.unwrap_or_default().iter().map(|h| placeholders(h)).collect(),
            env: s.env.unwrap_or_default(),
        }
    }

    /// The service's settings in an environment made from a template: those of the template's
    /// environment (`policy_environment`), served at `hosts`.
    pub fn for_provisioned(&self, environment: &str, policy_environment: &str, hosts: Vec<String>) -> Service {
        let mut s = self.for_environment(policy_environment);
        s.environment = environment.to_owned();
        s.hosts = hosts;
        s
    }

    /// The environments with their own settings.
    pub fn overridden_in(&self) -> impl Iterator<Item = &str> {
        self.overrides.keys().map(String::as_str)
    }

    /// Where the override for `environment` is written, for errors.
    pub fn override_span(&self, environment: &str) -> Option<Range<usize>> {
        self.overrides.get(environment).map(|o| o.span.clone())
    }
}

/// Settings that the base and an environment's override both may set.
#[derive(Clone, Debug, Default)]
struct Settings {
    command: Option<Vec<String>>,
    count: Option<u32>,
    health: Option<Health>,
    strategy: Option<Strategy>,
    drain_timeout: Option<Duration>,
    pre_stop: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    span: Range<usize>,
}

impl Settings {
    fn overlay(&mut self, o: &Settings) {
        macro_rules! take {
            ($($field:ident),*) => { $( if o.$field.is_some() { self.$field = o.$field.clone(); } )* };
        }
        take!(command, count, health, strategy, drain_timeout, pre_stop, hosts);
        if let Some(env) = &o.env {
            self.env.get_or_insert_with(BTreeMap::new).extend(env.clone());
        }
    }
}

/// Fills `{name}` placeholders; `{{` and `}}` are literal braces. Fails with the byte offset
/// and name of the first placeholder `value` does not know (or an unclosed brace).
fn fill(text: &str, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.char_indices().peekable();
    while let Some((i, c)) = rest.next() {
        match c {
            '{' if rest.peek().map(|(_, c)| *c) == Some('{') => {
                rest.next();
                out.push('{');
            }
            '}' if rest.peek().map(|(_, c)| *c) == Some('}') => {
                rest.next();
                out.push('}');
            }
            '{' => {
                let Some(end) = text[i..].find('}') else { return Err((i, String::new())) };
                let name = &text[i + 1..i + end];
                match value(name) {
                    Some(v) => out.push_str(&v),
                    None => return Err((i, name.to_owned())),
                }
                while rest.peek().is_some_and(|(j, _)| *j <= i + end) {
                    rest.next();
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

// --- parsing -------------------------------------------------------------------------------

/// `[services.NAME]` as written. (serde cannot deny unknown fields through `flatten`, so the
/// settings are repeated here and moved into a [`RawSettings`].)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawService {
    #[serde(default)]
    containers: Vec<Spanned<String>>,
    command: Option<Vec<Spanned<String>>>,
    count: Option<Spanned<i64>>,
    health: Option<Spanned<RawHealth>>,
    strategy: Option<Spanned<RawStrategy>>,
    drain_timeout: Option<Spanned<String>>,
    pre_stop: Option<Vec<Spanned<String>>>,
    hosts: Option<Vec<Spanned<String>>>,
    env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
    #[serde(default)]
    environments: BTreeMap<Spanned<String>, Spanned<RawSettings>>,
}

impl RawService {
    fn settings(&mut self) -> RawSettings {
        RawSettings {
            command: self.command.take(),
            count: self.count.take(),
            health: self.health.take(),
            strategy: self.strategy.take(),
            drain_timeout: self.drain_timeout.take(),
            pre_stop: self.pre_stop.take(),
            hosts: self.hosts.take(),
            env: self.env.take(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSettings {
    command: Option<Vec<Spanned<String>>>,
    count: Option<Spanned<i64>>,
    health: Option<Spanned<RawHealth>>,
    strategy: Option<Spanned<RawStrategy>>,
    drain_timeout: Option<Spanned<String>>,
    pre_stop: Option<Vec<Spanned<String>>>,
    hosts: Option<Vec<Spanned<String>>>,
    env: Option<BTreeMap<Spanned<String>, Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy: Option<Spanned<i64>>,
    unhealthy: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    kind: Spanned<String>,
    max_surge: Option<Spanned<String>>,
    max_unavailable: Option<Spanned<String>>,
}

/// Parses `[services.*]`, pushing every problem to `diagnostics`. `environments` are the
/// declared ones, for overrides.
pub(crate) fn parse_services(
    raw: BTreeMap<Spanned<String>, Spanned<RawService>>,
    environments: &[&str],
    diagnostics: &mut Diagnostics,
) -> Vec<ServiceDef> {
    let mut services = Vec::new();
    for (name, raw) in raw {
        let span = raw.span();
        let mut raw = raw.into_inner();
        let errors_before = diagnostics.errors().count();
        let mut p = ServiceParser { service: name.get_ref(), containers: Vec::new(), diagnostics };
        if !super::is_identifier(name.get_ref()) {
            p.error(
                "config.invalid_name",
                format!("`{}` is not a valid service name", name.get_ref()),
                name.span(),
                "service names use letters, digits, `_` and `-`, such as `[services.api]`",
            );
        }
        if raw.containers.is_empty() {
            p.error(
                "config.service_without_containers",
                format!("service `{}` names no containers", name.get_ref()),
                name.span(),
                "list the container names its releases give images for, such as `containers = [\"app\"]`",
            );
        }
        let mut containers: Vec<String> = Vec::new();
        for c in &raw.containers {
            if !super::is_identifier(c.get_ref()) {
                p.error(
                    "config.invalid_name",
                    format!("`{}` is not a valid container name", c.get_ref()),
                    c.span(),
                    "container names use letters, digits, `_` and `-`, as in imagedefinitions.json",
                );
            } else if containers.contains(c.get_ref()) {
                p.error(
                    "config.duplicate_container",
                    format!("container `{}` is listed twice", c.get_ref()),
                    c.span(),
                    "list each container once",
                );
            } else {
                containers.push(c.get_ref().clone());
            }
        }
        p.containers = containers.clone();
        let settings = raw.settings();
        let base = p.settings(settings, span.clone());
        if base.command.is_none() {
            p.error(
                "config.service_without_command",
                format!("service `{}` has no `command`", name.get_ref()),
                name.span(),
                "give the command that starts one instance, with `{port}` where it listens, such as `command = [\"./server\", \"--port\", \"{port}\"]`",
            );
        }
        let mut overrides = BTreeMap::new();
        for (env, settings) in raw.environments {
            if !environments.contains(&env.get_ref().as_str()) {
                p.error(
                    "config.unknown_environment",
                    format!(
                        "service `{}` has settings for environment `{}`, which is not declared ({})",
                        name.get_ref(),
                        env.get_ref(),
                        if environments.is_empty() {
                            "none are".to_owned()
                        } else {
                            format!("declared: {}", environments.join(", "))
                        }
                    ),
                    env.span(),
                    "declare it under `[environments.NAME]`, or fix the name",
                );
            }
            let span = settings.span();
            let parsed = p.settings(settings.into_inner(), span);
            overrides.insert(env.into_inner(), parsed);
        }
        if diagnostics.errors().count() > errors_before {
            continue;
        }
        services.push(ServiceDef { name: name.into_inner(), containers, base, overrides, span });
    }
    services
}

struct ServiceParser<'a> {
    service: &'a str,
    containers: Vec<String>,
    diagnostics: &'a mut Diagnostics,
}

impl ServiceParser<'_> {
    fn error(&mut self, code: &'static str, message: String, span: Range<usize>, help: &str) {
        self.diagnostics.push(Diagnostic::error(code, message).at(span).help(help));
    }

    fn settings(&mut self, raw: RawSettings, span: Range<usize>) -> Settings {
        let command = raw.command.map(|words| self.command("command", &words));
        let pre_stop = raw.pre_stop.map(|words| self.command("pre_stop", &words));
        let count = raw.count.and_then(|c| self.count("count", &c, 1));
        let health = raw.health.map(|h| self.health(h));
        let strategy = raw.strategy.map(|s| self.strategy(s));
        let drain_timeout = raw.drain_timeout.and_then(|d| self.duration("drain_timeout", &d));
        let hosts = raw.hosts.map(|hosts| hosts.iter().filter_map(|h| self.host(h)).collect());
        let env = raw.env.map(|env| {
            let mut out = BTreeMap::new();
            for (k, v) in env {
                if let Err(e) = crate::secret::check_name(k.get_ref()) {
                    self.error("config.invalid_env", e, k.span(), "rename the variable");
                }
                out.insert(k.into_inner(), v.into_inner());
            }
            out
        });
        Settings { command, count, health, strategy, drain_timeout, pre_stop, hosts, env, span }
    }

    fn command(&mut self, what: &str, words: &[Spanned<String>]) -> Vec<String> {
        if words.is_empty() {
            self.diagnostics.push(
                Diagnostic::error("config.empty_command", format!("`{what}` of service `{}` is empty", self.service))
                    .help("give the program and its arguments as a list of strings"),
            );
        }
        for word in words {
            let containers = self.containers.clone();
            let known = |name: &str| match name {
                "port" | "env" | "service" | "instance" => Some(String::new()),
                other => {
                    other.strip_prefix("image.").filter(|c| containers.iter().any(|k| k == c)).map(|_| String::new())
                }
            };
            if let Err((offset, name)) = fill(word.get_ref(), known) {
                let at = super::inner_span(&self.diagnostics.file.text.clone(), &word.span(), word.get_ref(), offset);
                let message = if name.is_empty() {
                    format!("`{what}` has a `{{` that is not closed")
                } else {
                    format!("`{what}` uses `{{{name}}}`, which plinth does not know")
                };
                let images: Vec<String> = self.containers.iter().map(|c| format!("`{{image.{c}}}`")).collect();
                self.diagnostics.push(Diagnostic::error("config.invalid_placeholder", message).at(at).help(format!(
                    "use `{{port}}`, `{{env}}`, `{{service}}`, `{{instance}}`{}{}; write `{{{{` for a literal brace",
                    if images.is_empty() { "" } else { ", " },
                    images.join(", ")
                )));
            }
        }
        words.iter().map(|w| w.get_ref().clone()).collect()
    }

    fn count(&mut self, what: &str, value: &Spanned<i64>, min: i64) -> Option<u32> {
        let n = *value.get_ref();
        if n < min || n > i64::from(MAX_COUNT) {
            self.error(
                "config.invalid_number",
                format!("`{what}` is {n}; it must be between {min} and {MAX_COUNT}"),
                value.span(),
                "fix the number",
            );
            return None;
        }
        u32::try_from(n).ok()
    }

    fn duration(&mut self, what: &str, value: &Spanned<String>) -> Option<Duration> {
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.error(
                    "config.invalid_duration",
                    format!("`{what}` is zero"),
                    value.span(),
                    "give a duration such as `500ms` or `30s`",
                );
                None
            }
            Err(e) => {
                self.error(
                    "config.invalid_duration",
                    format!("`{what}` is not a duration: {e}"),
                    value.span(),
                    "give a duration such as `500ms` or `30s`",
                );
                None
            }
        }
    }

    fn health(&mut self, raw: Spanned<RawHealth>) -> Health {
        let span = raw.span();
        let raw = raw.into_inner();
        let mut health = Health::default();
        if let Some(path) = &raw.path {
            if path.get_ref().starts_with('/') && !path.get_ref().chars().any(char::is_whitespace) {
                health.path = path.get_ref().clone();
            } else {
                self.error(
                    "config.invalid_health",
                    format!("health check path `{}` does not start with `/`", path.get_ref()),
                    path.span(),
                    "give the path the app answers health checks on, such as `/healthz`",
                );
            }
        }
        if let Some(d) = raw.interval.as_ref().and_then(|d| self.duration("health.interval", d)) {
            health.interval = d;
        }
        if let Some(d) = raw.timeout.as_ref().and_then(|d| self.duration("health.timeout", d)) {
            health.timeout = d;
        }
        if let Some(n) = raw.healthy.as_ref().and_then(|n| self.count("health.healthy", n, 1)) {
            health.healthy = n;
        }
        if let Some(n) = raw.unhealthy.as_ref().and_then(|n| self.count("health.unhealthy", n, 1)) {
            health.unhealthy = n;
        }
        if health.timeout > health.interval {
            self.diagnostics.push(
                Diagnostic::warning(
                    "config.health_timeout_over_interval",
                    "the health check's timeout is longer than its interval",
                )
                .at(span)
                .help(
                    "checks never overlap, so a slow check delays the next one; make the timeout at most the interval",
                ),
            );
        }
        health
    }

    fn strategy(&mut self, raw: Spanned<RawStrategy>) -> Strategy {
        let raw = raw.into_inner();
        let mut amount = |what: &str, value: &Option<Spanned<String>>, default: Amount| match value {
            None => default,
            Some(v) => Amount::parse(v.get_ref()).unwrap_or_else(|| {
                self.error(
                    "config.invalid_strategy",
                    format!("`{what}` is `{}`, not a number of instances or a percentage", v.get_ref()),
                    v.span(),
                    "write a count such as `1` or a share such as `25%` (at most `100%`)",
                );
                default
            }),
        };
        match raw.kind.get_ref().as_str() {
            "rolling" => {
                let max_surge = amount("max_surge", &raw.max_surge, Amount::Percent(100));
                let max_unavailable = amount("max_unavailable", &raw.max_unavailable, Amount::Count(0));
                let none = |a: Amount| matches!(a, Amount::Count(0) | Amount::Percent(0));
                if none(max_surge) && none(max_unavailable) {
                    self.error(
                        "config.invalid_strategy",
                        "with `max_surge` and `max_unavailable` both zero, a rollout can never make progress".into(),
                        raw.kind.span(),
                        "allow a surge (`max_surge = \"25%\"`) for zero-downtime rollouts, or some unavailability",
                    );
                }
                Strategy::Rolling { max_surge, max_unavailable }
            }
            "double" => {
                for (what, value) in [("max_surge", &raw.max_surge), ("max_unavailable", &raw.max_unavailable)] {
                    if let Some(v) = value {
                        self.error(
                            "config.invalid_strategy",
                            format!("`{what}` does not apply to `kind = \"double\"`"),
                            v.span(),
                            "remove it: `double` starts `count` new instances at once, then drains the old ones",
                        );
                    }
                }
                Strategy::Double
            }
            other => {
                self.error(
                    "config.invalid_strategy",
                    format!("`{other}` is not a rollout strategy"),
                    raw.kind.span(),
                    "use `kind = \"rolling\"` or `kind = \"double\"`",
                );
                Strategy::default()
            }
        }
    }

    fn host(&mut self, host: &Spanned<String>) -> Option<String> {
        let check = fill(host.get_ref(), |name| match name {
            "env" | "service" => Some("x".to_owned()),
            _ => None,
        });
        match check {
            Ok(filled) => {
                let body = filled.strip_prefix("*.").unwrap_or(&filled);
                let valid = !body.is_empty()
                    && body.len() <= 253
                    && body.split('.').all(|label| {
                        !label.is_empty()
                            && label.len() <= 63
                            && !label.starts_with('-')
                            && !label.ends_with('-')
                            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    });
                if valid {
                    return Some(host.get_ref().clone());
                }
                self.error(
                    "config.invalid_host",
                    format!("`{}` is not a host name", host.get_ref()),
                    host.span(),
                    "use letters, digits, `-` and dots, with `{env}` or `{service}` if needed, such as `api.{env}.example.com`; a leading `*.` matches any one name in front",
                );
                None
            }
            Err((offset, name)) => {
                let at = super::inner_span(&self.diagnostics.file.text.clone(), &host.span(), host.get_ref(), offset);
                self.diagnostics.push(
                    Diagnostic::error(
                        "config.invalid_placeholder",
                        format!("host uses `{{{name}}}`, which plinth does not know"),
                    )
                    .at(at)
                    .help("hosts may use `{env}` and `{service}`"),
                );
                None
            }
        }
    }
}

/// Checks that no two services share a host in one environment.
pub(crate) fn check_hosts(services: &[ServiceDef], environments: &[&str], diagnostics: &mut Diagnostics) {
    for env in environments {
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for def in services {
            for host in def.for_environment(env).hosts {
                if let Some(other) = seen.insert(host.clone(), &def.name)
                    && other != def.name
                {
                    diagnostics.push(
                        Diagnostic::error(
                            "config.duplicate_host",
                            format!("services `{other}` and `{}` both route `{host}` in `{env}`", def.name),
                        )
                        .at(def.span.clone())
                        .help("give each service its own host names, for example with `{service}` in them"),
                    );
                }
            }
        }
    }
}
