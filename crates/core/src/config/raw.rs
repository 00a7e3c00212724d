//! plinth.toml as written: the serde model, with spans for every value an error can point at.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub main_branch: Option<Spanned<String>>,
    #[serde(default)]
    pub environments: BTreeMap<Spanned<String>, Spanned<RawEnvironment>>,
    #[serde(default)]
    pub stacks: BTreeMap<Spanned<String>, Spanned<RawStack>>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, Spanned<super::service::RawService>>,
    #[serde(default)]
    pub products: BTreeMap<Spanned<String>, Spanned<super::provision::RawProduct>>,
    #[serde(default)]
    pub cidr_pools: BTreeMap<Spanned<String>, Spanned<super::provision::RawPool>>,
    pub review: Option<Spanned<super::provision::RawReview>>,
    pub provisioning: Option<Spanned<super::provision::RawProvisioning>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnvironment {
    #[serde(default)]
    pub branches: Vec<Spanned<String>>,
    #[serde(default)]
    pub approval: Option<Spanned<bool>>,
    #[serde(default)]
    pub approvers: Vec<Spanned<String>>,
    /// Release tags (globs such as `v*.*.*`) that release to this environment.
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStack {
    pub path: Spanned<String>,
    pub name: Option<Spanned<String>>,
    pub environment: Option<Spanned<String>>,
    pub workspace: Option<Spanned<String>>,
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    pub watch: Vec<Spanned<String>>,
    pub terraform: Option<Spanned<String>>,
}
