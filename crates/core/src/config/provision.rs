//! The parts of plinth.toml for environments on request: products (whom environments belong
//! to), CIDR pools (where their networks come from) and `[review]` (an environment per
//! branch).
//!
//! ```toml
//! [products.shop]
//! owner = "team-shop"
//!
//! [cidr_pools.sandbox]
//! ranges = ["10.20.0.0/16"]
//!
//! [review]
//! template = "review-app"
//! branches = ["feature/*"]
//! domain = "review.localhost"
//! ttl = "72h"
//! max = 10
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cidr::Cidr;
use crate::error::{Diagnostic, Diagnostics};
use crate::pattern::Glob;
use crate::template::{is_domain, is_template_name};

/// Whom environments belong to, for the catalog.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Product {
    pub name: String,
    pub owner: String,
    pub description: String,
}

/// Network ranges that environments get blocks from, without overlaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrPool {
    pub name: String,
    pub ranges: Vec<Cidr>,
    pub span: Range<usize>,
}

/// Review environments: one per branch matching `branches`, made from `template`, served at
/// `SLUG.DOMAIN`, destroyed when the branch goes or after `ttl` without a push.
#[derive(Clone, Debug)]
pub struct Review {
    pub template: String,
    pub branches: Vec<Glob>,
    pub domain: String,
    pub ttl: Duration,
    pub max: u32,
    pub product: Option<String>,
    pub span: Range<usize>,
}

impl Review {
    pub fn applies_to(&self, branch: &str) -> bool {
        self.branches.iter().any(|g| g.is_match(branch))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProduct {
    owner: Option<String>,
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    ranges: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProvisioning {
    commit_branch: Option<Spanned<String>>,
}

/// `[provisioning] commit_branch`: the branch the kept roots are also committed to, checked.
pub(crate) fn parse_provisioning(
    raw: Option<Spanned<RawProvisioning>>,
    main_branch: &str,
    d: &mut Diagnostics,
) -> Option<String> {
    let branch = raw?.into_inner().commit_branch?;
    let name = branch.get_ref();
    let valid = !name.is_empty()
        && !name.starts_with(['-', '/'])
        && !name.ends_with(['/', '.'])
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && !name.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if !valid {
        d.push(
            Diagnostic::error("config.invalid_branch", format!("`{name}` is not a branch name git accepts"))
                .at(branch.span())
                .help("use letters, digits, `-`, `_`, `.` and `/`, such as `plinth/environments`"),
        );
        return None;
    }
    if name == main_branch {
        d.push(
            Diagnostic::error("config.invalid_branch", "`commit_branch` is the main branch")
                .at(branch.span())
                .help("plinth commits generated code there on its own; give it a branch of its own, such as `plinth/environments`"),
        );
        return None;
    }
    Some(branch.into_inner())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReview {
    template: Spanned<String>,
    branches: Vec<Spanned<String>>,
    domain: Spanned<String>,
    ttl: Option<Spanned<String>>,
    max: Option<Spanned<i64>>,
    product: Option<Spanned<String>>,
}

/// The default time a review environment lives without a push.
pub const DEFAULT_REVIEW_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The default number of review environments at once.
pub const DEFAULT_REVIEW_MAX: u32 = 20;

pub(crate) fn parse_products(
    raw: BTreeMap<Spanned<String>, Spanned<RawProduct>>,
    d: &mut Diagnostics,
) -> BTreeMap<String, Product> {
    let mut out = BTreeMap::new();
    for (name, product) in raw {
        if !crate::config::is_identifier(name.get_ref()) {
            d.push(
                Diagnostic::error("config.invalid_name", format!("`{}` is not a valid product name", name.get_ref()))
                    .at(name.span())
                    .help("use letters, digits, `_` and `-`, such as `shop`"),
            );
            continue;
        }
        let product = product.into_inner();
        out.insert(
            name.get_ref().clone(),
            Product {
                name: name.into_inner(),
                owner: product.owner.unwrap_or_default(),
                description: product.description.unwrap_or_default(),
            },
        );
    }
    out
}

pub(crate) fn parse_pools(
    raw: BTreeMap<Spanned<String>, Spanned<RawPool>>,
    d: &mut Diagnostics,
) -> BTreeMap<String, CidrPool> {
    let mut out: BTreeMap<String, CidrPool> = BTreeMap::new();
    for (name, pool) in raw {
        let span = pool.span();
        if !crate::config::is_identifier(name.get_ref()) {
            d.push(
                Diagnostic::error("config.invalid_name", format!("`{}` is not a valid pool name", name.get_ref()))
                    .at(name.span())
                    .help("use letters, digits, `_` and `-`, such as `sandbox`"),
            );
            continue;
        }
        let mut ranges: Vec<(Cidr, Range<usize>)> = Vec::new();
        for text in &pool.get_ref().ranges {
            match text.get_ref().parse::<Cidr>() {
                Ok(cidr) => {
                    if let Some((other, at)) = ranges.iter().find(|(r, _)| r.overlaps(cidr)) {
                        d.push(
                            Diagnostic::error("config.overlapping_ranges", format!("`{cidr}` overlaps `{other}`"))
                                .at(text.span())
                                .note(Some(at.clone()), "the other range")
                                .help("list each address range once"),
                        );
                    } else {
                        ranges.push((cidr, text.span()));
                    }
                }
                Err(e) => d.push(
                    Diagnostic::error("config.invalid_cidr", e)
                        .at(text.span())
                        .help("write ranges as ADDRESS/PREFIX, such as `10.20.0.0/16`"),
                ),
            }
        }
        if pool.get_ref().ranges.is_empty() {
            d.push(
                Diagnostic::error("config.empty_pool", format!("pool `{}` has no ranges", name.get_ref()))
                    .at(span.clone())
                    .help("add `ranges = [\"10.20.0.0/16\"]`"),
            );
        }
        for (other_name, other) in &out {
            for (cidr, at) in &ranges {
                if let Some(o) = other.ranges.iter().find(|o| o.overlaps(*cidr)) {
                    d.push(
                        Diagnostic::error(
                            "config.overlapping_ranges",
                            format!("`{cidr}` overlaps `{o}` of pool `{other_name}`"),
                        )
                        .at(at.clone())
                        .help("pools must not share addresses, or two environments could get the same network"),
                    );
                }
            }
        }
        out.insert(
            name.get_ref().clone(),
            CidrPool { name: name.into_inner(), ranges: ranges.into_iter().map(|(c, _)| c).collect(), span },
        );
    }
    out
}

pub(crate) fn parse_review(
    raw: Spanned<RawReview>,
    products: &BTreeMap<String, Product>,
    d: &mut Diagnostics,
) -> Option<Review> {
    let span = raw.span();
    let raw = raw.into_inner();
    let before = d.errors().count();
    if !is_template_name(raw.template.get_ref()) {
        d.push(
            Diagnostic::error("config.invalid_name", format!("`{}` is not a template name", raw.template.get_ref()))
                .at(raw.template.span())
                .help("name a directory under `templates/`, such as `review-app`"),
        );
    }
    let mut branches = Vec::new();
    for b in &raw.branches {
        match Glob::parse(b.get_ref()) {
            Ok(g) => branches.push(g),
            Err(e) => d.push(
                Diagnostic::error("config.invalid_glob", format!("branch pattern: {}", e.message))
                    .at(b.span())
                    .help(e.help),
            ),
        }
    }
    if raw.branches.is_empty() {
        d.push(
            Diagnostic::error("config.missing_key", "`[review]` lists no `branches`")
                .at(span.clone())
                .help("add the branches that get a review environment, such as `branches = [\"feature/*\"]`"),
        );
    }
    let domain = raw.domain.get_ref().to_ascii_lowercase();
    if !is_domain(&domain) {
        d.push(
            Diagnostic::error("config.invalid_domain", format!("`{}` is not a domain name", raw.domain.get_ref()))
                .at(raw.domain.span())
                .help("give the domain review environments are served under, such as `review.example.com`"),
        );
    }
    let ttl = match &raw.ttl {
        None => DEFAULT_REVIEW_TTL,
        Some(t) => match humantime::parse_duration(t.get_ref()) {
            Ok(ttl) if !ttl.is_zero() => ttl,
            Ok(_) => {
                d.push(
                    Diagnostic::error("config.invalid_duration", "`ttl` is zero")
                        .at(t.span())
                        .help("give how long a review environment lives without a push, such as `72h`"),
                );
                DEFAULT_REVIEW_TTL
            }
            Err(e) => {
                d.push(
                    Diagnostic::error("config.invalid_duration", format!("`ttl` is not a duration: {e}"))
                        .at(t.span())
                        .help("give a duration such as `72h` or `7days`"),
                );
                DEFAULT_REVIEW_TTL
            }
        },
    };
    let max = match &raw.max {
        None => DEFAULT_REVIEW_MAX,
        Some(m) if (1..=10_000).contains(m.get_ref()) => *m.get_ref() as u32,
        Some(m) => {
            d.push(
                Diagnostic::error("config.invalid_number", format!("`max = {}` is out of range", m.get_ref()))
                    .at(m.span())
                    .help("give how many review environments may exist at once, from 1 to 10000"),
            );
            DEFAULT_REVIEW_MAX
        }
    };
    if let Some(p) = &raw.product
        && !products.contains_key(p.get_ref())
    {
        d.push(
            Diagnostic::error("config.unknown_product", format!("product `{}` is not declared", p.get_ref()))
                .at(p.span())
                .help("declare it as `[products.NAME]`, or remove `product`"),
        );
    }
    if d.errors().count() > before {
        return None;
    }
    Some(Review {
        template: raw.template.into_inner(),
        branches,
        domain,
        ttl,
        max,
        product: raw.product.map(Spanned::into_inner),
        span,
    })
}
